//! Scratch directories of source ops, removed unless kept.

use std::path::PathBuf;

/// A directory being written that goes away unless kept: a failed or
/// dropped download or checkout leaves nothing (and the cache's start-up
/// pass removes what a crash leaves).
pub(crate) struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    pub(crate) fn new(path: PathBuf) -> RemoveOnDrop {
        RemoveOnDrop(Some(path))
    }

    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }

    pub(crate) async fn remove(mut self) {
        if let Some(path) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await;
        }
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Some(path) = self.0.take() else {
            return;
        };
        // A checkout can be large: removed off the async threads.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || std::fs::remove_dir_all(path));
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
}
