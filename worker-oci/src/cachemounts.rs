//! `--mount=type=cache`: directories kept between builds, by id.
//!
//! Each cache is a mutable snapshot of kind `exec.cachemount`, found again
//! by name (the id, and the snapshot that seeded it, if any). Sharing modes
//! decide what concurrent steps see: `shared` mounts one directory in all of
//! them, `locked` makes the next step wait, `private` gives a busy cache's
//! next user another instance (kept too, for the next build).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bk_cache::{CacheManager, RecordType, Ref};
use bk_proto::pb::CacheSharingOpt;

use crate::ExecError;

/// The caches of one worker.
#[derive(Default)]
pub struct CacheMounts {
    /// Per snapshot name: the lock `locked` and `private` users take.
    state: Mutex<HashMap<String, Arc<Instance>>>,
    creating: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Instance {
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// A cache directory in use by one step.
pub struct CacheMountLease {
    pub snapshot: Ref,
    _locked: Option<tokio::sync::OwnedMutexGuard<()>>,
    cache: CacheManager,
}

impl Drop for CacheMountLease {
    fn drop(&mut self) {
        // Size and last use, for du and prune; a database write, so off
        // the async threads. The clone of the ref keeps it held until then.
        let cache = self.cache.clone();
        let snapshot = self.snapshot.clone();
        let touch = move || {
            let _ = cache.touch(snapshot.id());
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(touch)),
            Err(_) => touch(),
        }
    }
}

fn name_for(id: &str, seed: Option<&Ref>, instance: usize) -> String {
    let mut name = format!("cachemount:{}", bk_llb::Digest::of(id.as_bytes()));
    if let Some(seed) = seed {
        name.push(':');
        name.push_str(seed.id());
    }
    if instance > 0 {
        name.push_str(&format!("#{instance}"));
    }
    name
}

impl CacheMounts {
    fn instance(&self, name: &str) -> Arc<Instance> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.entry(name.to_string()).or_default().clone()
    }

    /// The cache `id` for one step. `seed` fills a new cache; `description`
    /// is what `du` shows.
    pub async fn acquire(
        &self,
        cache: &CacheManager,
        id: &str,
        sharing: CacheSharingOpt,
        seed: Option<Ref>,
        description: String,
    ) -> Result<CacheMountLease, ExecError> {
        let mut index = 0;
        let (name, locked) = loop {
            let name = name_for(id, seed.as_ref(), index);
            let instance = self.instance(&name);
            match sharing {
                CacheSharingOpt::Shared => break (name, None),
                CacheSharingOpt::Locked => {
                    let guard = instance.lock.clone().lock_owned().await;
                    break (name, Some(guard));
                }
                CacheSharingOpt::Private => match instance.lock.clone().try_lock_owned() {
                    Ok(guard) => break (name, Some(guard)),
                    Err(_) => index += 1,
                },
            }
        };
        // Two first users must not both create the cache (one would be
        // lost): finding or creating happens under one lock.
        let _creating = self.creating.lock().await;
        let cache2 = cache.clone();
        let snapshot = tokio::task::spawn_blocking(move || -> Result<Ref, ExecError> {
            if let Some(existing) = cache2
                .named(&name)?
                .and_then(|id| cache2.get(&id).ok().flatten())
            {
                return Ok(existing);
            }
            let (new_id, path) = cache2.create_dir()?;
            if let Some(seed) = &seed
                && let Err(e) = bk_fileops::clone_tree(seed.path(), &path)
            {
                let _ = std::fs::remove_dir_all(&path);
                return Err(ExecError::Io(format!("seeding cache mount: {e}")));
            }
            let parents = seed.iter().map(|s| s.id().to_string()).collect();
            let held =
                cache2.commit(&new_id, RecordType::CacheMount, &description, parents, true)?;
            cache2.set_named(&name, &new_id)?;
            Ok(held)
        })
        .await
        .map_err(|e| ExecError::Io(e.to_string()))??;
        Ok(CacheMountLease {
            snapshot,
            _locked: locked,
            cache: cache.clone(),
        })
    }
}
