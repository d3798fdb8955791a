//! The shared store: a tiny key → bytes store with atomic, exclusive publish, shared by the
//! primary and the secondary host. The checkpoint log and the lease live in it.
//!
//! One file per implementation behind [`SharedStore`]:
//!
//! | implementation         | url form                            | exclusive publish                      |
//! |------------------------|-------------------------------------|----------------------------------------|
//! | [`DirStore`]           | `/abs/dir`, `rel/dir`, `file:///abs/dir` | temp file, fsync, `link(2)`; atomic on local file systems and NFS |
//! | [`ObjectStoreShared`]  | `s3://bucket[/prefix]`              | `PUT` with `If-None-Match: *`, then, by default, a settle-and-read-back check ([`ExclusiveWrites`]) |
//! | [`MemStore`]           | (tests only)                        | a mutex                                |
//! | [`FaultyStore`]        | (tests only) around any other       | the inner store's, with injected faults |
//!
//! # Keys
//!
//! A key is one or more `/`-separated segments of ASCII letters, digits, `-`, `_` and `.`; a
//! segment is not empty and does not start with `.` (names starting with `.` are the stores' own
//! temporary files and are never listed). At most 512 bytes. Examples: `log/00000000000000000001.rec`,
//! `lease/heartbeat`.
//!
//! # Guarantees
//!
//! - A reader sees a value entirely or not at all (no torn values).
//! - [`put_exclusive`](SharedStore::put_exclusive) publishes only if the key does not exist: of
//!   several racing writers of one key exactly one gets [`Created::Yes`]. (On an S3 server whose
//!   conditional PUT is not atomic this holds under the timing assumption described at
//!   [`ExclusiveWrites::Verified`].)
//! - [`put`](SharedStore::put) replaces a value atomically.
//! - A value published by `put`/`put_exclusive` is durable when the call returns.

use std::sync::Arc;
use std::time::Duration;

use vmtier_storage::ObjectConfig;

pub mod dir;
pub mod faulty;
pub mod mem;
pub mod object;

pub use dir::DirStore;
pub use faulty::FaultyStore;
pub use mem::MemStore;
pub use object::{ExclusiveWrites, ObjectStoreShared};

/// Longest key.
pub const MAX_KEY_LEN: usize = 512;

/// Outcome of [`SharedStore::put_exclusive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The value was published by this call.
    Yes,
    /// The key already existed; nothing was written.
    AlreadyExists,
}

/// The error of a store backend: a file-system or an object-store error.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A file-system call failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An object-store request failed (boxed: the error is large).
    #[error(transparent)]
    Object(Box<object_store::Error>),
}

impl From<object_store::Error> for BackendError {
    fn from(e: object_store::Error) -> Self {
        BackendError::Object(Box::new(e))
    }
}

/// Errors of the shared store. Each names the store and the key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key or prefix outside the allowed alphabet (see the [module docs](self)).
    #[error("invalid shared-store key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The url is not one of the accepted forms.
    #[error("shared store url {url:?} is not supported: use a directory path, file:///abs/path, or s3://bucket/prefix")]
    ParseUrl {
        /// The url.
        url: String,
    },
    /// The object store could not be set up from the configuration.
    #[error("cannot open the shared store {url:?}")]
    Open {
        /// The url.
        url: String,
        /// Cause (boxed: the error is large).
        #[source]
        source: Box<vmtier_storage::ObjectError>,
    },
    /// The store's directory could not be created.
    #[error("cannot create shared-store directory {}; check the path and its permissions", dir.display())]
    CreateDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The store's tokio runtime could not be started.
    #[error("cannot start the shared-store I/O runtime")]
    Runtime {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A blocking store call was made from inside a tokio runtime.
    #[error(
        "shared-store calls block and cannot run inside a tokio runtime; call them from a plain thread (e.g. spawn_blocking)"
    )]
    InsideRuntime,
    /// Writing a value failed.
    #[error("cannot write {key} to {store}; check the store is reachable and writable")]
    Put {
        /// The store ([`SharedStore::describe`]).
        store: String,
        /// The key.
        key: String,
        /// Cause.
        #[source]
        source: BackendError,
    },
    /// Reading a value failed.
    #[error("cannot read {key} from {store}; check the store is reachable and readable")]
    Get {
        /// The store.
        store: String,
        /// The key.
        key: String,
        /// Cause.
        #[source]
        source: BackendError,
    },
    /// Listing keys failed.
    #[error("cannot list {prefix:?} in {store}; check the store is reachable and may be listed")]
    List {
        /// The store.
        store: String,
        /// The prefix.
        prefix: String,
        /// Cause.
        #[source]
        source: BackendError,
    },
    /// Deleting a value failed.
    #[error("cannot delete {key} from {store}")]
    Delete {
        /// The store.
        store: String,
        /// The key.
        key: String,
        /// Cause.
        #[source]
        source: BackendError,
    },
    /// An exclusive write succeeded but its value was gone when read back to verify it.
    #[error(
        "{key} in {store} vanished right after this process created it; another process is deleting log or lease keys"
    )]
    Vanished {
        /// The store.
        store: String,
        /// The key.
        key: String,
    },
}

/// A key → bytes store shared by the primary and the secondary. See the [module docs](self).
pub trait SharedStore: Send + Sync + std::fmt::Debug {
    /// Publishes `bytes` under `key` only if `key` does not exist; atomic (readers see all or
    /// nothing).
    fn put_exclusive(&self, key: &str, bytes: &[u8]) -> Result<Created, StoreError>;

    /// Publishes `bytes` under `key`, replacing any old value atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;

    /// The value of `key`, `None` if it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Keys under `prefix` (a plain string prefix, e.g. `"log/"`), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Deletes `key`; a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// The store for messages, e.g. `directory /srv/ha/vm-0`; never includes secrets.
    fn describe(&self) -> String;

    /// For a store whose exclusive publish is only safe after a settle time (an S3 server whose
    /// conditional PUT is not atomic, [`ExclusiveWrites::Verified`]): that time. A value written
    /// with `put_exclusive` may still be replaced by a racing writer within it, so log readers
    /// hold the newest record back until it has been stable that long. `None` (the default):
    /// exclusive publish is atomic.
    fn exclusive_settle(&self) -> Option<Duration> {
        None
    }
}

/// Checks `key` against the key rules of the [module docs](self).
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| Err(StoreError::InvalidKey { key: key.to_string(), reason });
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("longer than 512 bytes");
    }
    for seg in key.split('/') {
        check_segment(key, seg, false)?;
    }
    Ok(())
}

/// Checks a list prefix: complete segments as in [`check_key`], a possibly empty partial last one.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidKey { key: prefix.to_string(), reason: "longer than 512 bytes" });
    }
    let mut segs: Vec<&str> = prefix.split('/').collect();
    let last = segs.pop().unwrap_or_default();
    for seg in segs {
        check_segment(prefix, seg, false)?;
    }
    check_segment(prefix, last, true)
}

fn check_segment(key: &str, seg: &str, partial: bool) -> Result<(), StoreError> {
    let bad = |reason| Err(StoreError::InvalidKey { key: key.to_string(), reason });
    if seg.is_empty() {
        return if partial { Ok(()) } else { bad("empty path segment (leading, trailing or double '/')") };
    }
    if seg.starts_with('.') {
        return bad("a path segment starts with '.' (reserved for temporary files)");
    }
    if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return bad("only ASCII letters, digits, '-', '_', '.' and '/' are allowed");
    }
    Ok(())
}

/// The directory part of a list prefix (`"log/00"` → `"log"`), under which all its keys are.
pub(crate) fn prefix_dir(prefix: &str) -> &str {
    prefix.rsplit_once('/').map_or("", |(d, _)| d)
}

/// A token unique to this process and call: pid, a counter and the clock, mixed.
pub(crate) fn unique_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.finish()
}

/// Opens the shared store at `cfg.url` (only the url and the S3 fields of `cfg` are used) with
/// the default [`ExclusiveWrites`] for S3.
///
/// | url form                    | store                                               |
/// |-----------------------------|-----------------------------------------------------|
/// | `/abs/dir`, `rel/dir`       | [`DirStore`], the directory created if missing      |
/// | `file:///abs/dir`           | the same                                            |
/// | `s3://bucket[/prefix]`      | [`ObjectStoreShared`] (endpoint, region, keys from `cfg` or the environment, as tier 3) |
pub fn open_store(cfg: &ObjectConfig) -> Result<Arc<dyn SharedStore>, StoreError> {
    open_store_with(cfg, ExclusiveWrites::default())
}

/// [`open_store`] with an explicit [`ExclusiveWrites`] mode for S3 (ignored for directories).
pub fn open_store_with(cfg: &ObjectConfig, exclusive: ExclusiveWrites) -> Result<Arc<dyn SharedStore>, StoreError> {
    let url = cfg.url.as_str();
    if url.starts_with("s3://") {
        return Ok(Arc::new(ObjectStoreShared::open(cfg, exclusive)?));
    }
    let parse_err = || StoreError::ParseUrl { url: url.to_string() };
    let dir = match url.strip_prefix("file://") {
        Some(p) if p.starts_with('/') => p,
        Some(_) => return Err(parse_err()),
        None if url.contains("://") || url.is_empty() => return Err(parse_err()),
        None => url,
    };
    Ok(Arc::new(DirStore::open(dir)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        for ok in ["a", "log/00000000000000000001.rec", "lease/heartbeat", "a-b_c.d/e"] {
            check_key(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "/a", "a/", "a//b", ".tmp", "a/.x", "a b", "ä", "a\\b", &"x".repeat(513)] {
            assert!(matches!(check_key(bad), Err(StoreError::InvalidKey { .. })), "{bad:?}");
        }
        for ok in ["", "log/", "log/000", "lea"] {
            check_prefix(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["/", "a//", ".x", "log/.t", "a b/"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
        assert_eq!(prefix_dir("log/00"), "log");
        assert_eq!(prefix_dir("a/b/"), "a/b");
        assert_eq!(prefix_dir("lea"), "");
    }

    #[test]
    fn bad_urls_are_explained() {
        for url in ["http://x/y", "gs://b", "file://rel", ""] {
            let err = open_store(&ObjectConfig::new(url)).expect_err(url);
            assert!(matches!(err, StoreError::ParseUrl { .. }), "{url}: {err:?}");
            assert!(err.to_string().contains("s3://bucket/prefix"));
        }
        assert!(matches!(open_store(&ObjectConfig::new("s3://")), Err(StoreError::Open { .. })));
    }

    #[test]
    fn tokens_differ() {
        let a: std::collections::HashSet<u64> = (0..1000).map(|_| unique_token()).collect();
        assert_eq!(a.len(), 1000);
    }
}
