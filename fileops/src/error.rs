//! The one error type of this crate. Messages follow BuildKit's: a Go
//! `PathError` (`lstat /foo: no such file or directory`) with the host root
//! trimmed off the path, wrapped in the same context strings fsutil and the
//! file backend add (`failed to copy files: …`).

use std::io;

/// Why a file action failed. Paths in messages are inside their tree
/// (`/etc/passwd`), never host paths.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileOpError {
    /// A system call failed on one path.
    #[error("{op} {path}: {}", errno_text(source))]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    /// `link`/`symlink` failed; Go's `LinkError` names both paths.
    #[error("{op} {old} {new}: {}", errno_text(source))]
    Link {
        op: &'static str,
        old: String,
        new: String,
        source: io::Error,
    },
    /// A bare errno under context (`failed to utime /x: operation not
    /// permitted`), where Go wraps a raw `Errno` rather than a `PathError`.
    #[error("{context}: {}", errno_text(source))]
    Os { context: String, source: io::Error },
    /// Context around another failure, as Go's `errors.Wrap` adds it.
    #[error("{context}: {source}")]
    Context {
        context: String,
        source: Box<FileOpError>,
    },
    /// Symlinks nested too deeply (continuity stops after 255).
    #[error("{path}: too many links")]
    TooManyLinks { path: String },
    /// A source or required path is absent (`/foo* not found`).
    #[error("{0}")]
    NotFound(String),
    /// The action is malformed: a bad mode string, pattern, index, or owner.
    #[error("{0}")]
    Invalid(String),
    /// BuildKit does this but this crate does not (unpacking archives).
    #[error("{0}")]
    Unsupported(String),
}

impl FileOpError {
    pub(crate) fn io(op: &'static str, path: impl Into<String>, source: io::Error) -> FileOpError {
        FileOpError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn os(context: impl Into<String>, source: io::Error) -> FileOpError {
        FileOpError::Os {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn context(self, context: impl Into<String>) -> FileOpError {
        FileOpError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// Whether the root cause is a missing file (`ENOENT`) or a missing
    /// source, so callers can map it to BuildKit's "not found".
    pub fn is_not_found(&self) -> bool {
        match self {
            FileOpError::Io { source, .. }
            | FileOpError::Link { source, .. }
            | FileOpError::Os { source, .. } => source.kind() == io::ErrorKind::NotFound,
            FileOpError::Context { source, .. } => source.is_not_found(),
            FileOpError::NotFound(_) => true,
            _ => false,
        }
    }

    /// The OS error number at the root of the failure, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            FileOpError::Io { source, .. }
            | FileOpError::Link { source, .. }
            | FileOpError::Os { source, .. } => source.raw_os_error(),
            FileOpError::Context { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// An errno as Go prints it: libc's text, first letter lowered, without
/// Rust's ` (os error N)` suffix.
pub(crate) fn errno_text(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match err.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map(str::to_string)
            .unwrap_or(text),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_like_go() {
        let e = FileOpError::io("lstat", "/foo", io::Error::from_raw_os_error(2));
        assert_eq!(e.to_string(), "lstat /foo: no such file or directory");
        assert!(e.is_not_found());
        let e = e.context("failed to copy files");
        assert_eq!(
            e.to_string(),
            "failed to copy files: lstat /foo: no such file or directory"
        );
        assert!(e.is_not_found());
        assert_eq!(e.raw_os_error(), Some(2));
        let e = FileOpError::Link {
            op: "symlink",
            old: "target".into(),
            new: "/l".into(),
            source: io::Error::from_raw_os_error(17),
        };
        assert_eq!(e.to_string(), "symlink target /l: file exists");
    }
}
