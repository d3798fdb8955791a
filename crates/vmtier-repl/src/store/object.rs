//! [`ObjectStoreShared`]: the shared store in an object store (S3 or an S3-compatible server),
//! through the `object_store` crate.
//!
//! A key is the object `<prefix>/<key>` of the url `s3://bucket/prefix` (url parsing, endpoint
//! and credentials exactly as tier 3: [`vmtier_storage::object::parse_store`]). PUTs are atomic in
//! S3 (a reader sees the old or the new object, never a part), so [`put`](SharedStore::put) is a
//! plain PUT.
//!
//! # Exclusive publish
//!
//! [`put_exclusive`](SharedStore::put_exclusive) is a PUT with `If-None-Match: *`
//! (`PutMode::Create`); `412 Precondition Failed` (and the crate's `AlreadyExists`, and `304`)
//! mean the key exists. How far that can be trusted depends on the server ([`ExclusiveWrites`]):
//!
//! - AWS S3 (since August 2024), MinIO and Cloudflare R2 evaluate the condition atomically with
//!   the write: of racing writers exactly one succeeds. [`ExclusiveWrites::Native`] trusts that.
//! - `s3s-fs` 0.14.1, the server vmtier's tests use, *honours* `If-None-Match: *` — a PUT to an
//!   existing key is refused with 412 — but checks it non-atomically: it tests whether the file
//!   exists when the request arrives, then streams the body to a temporary file and renames it
//!   over the key. Racing PUTs that all arrive before the first rename all succeed, and the last
//!   rename wins. [`ExclusiveWrites::Verified`] (the default) makes exclusive publish correct
//!   there too, under a timing assumption: after a successful PUT it waits `settle_ms`, reads the
//!   key back and reports [`Created::Yes`] only if the value is still byte-for-byte its own. Of
//!   racing writers only the last to rename can see its own bytes, so exactly one wins *provided
//!   every racing PUT finishes within `settle_ms` of the first one* (a PUT stalled for longer, e.g.
//!   by a long network stall while uploading, could land after the others verified). Log readers
//!   honour the same settle time ([`SharedStore::exclusive_settle`]).
//!
//! If the 412 came back but the key cannot be read (real S3 may answer `409 Conflict` to
//! concurrent conditional writes of which none lands), the PUT is retried.
//!
//! Writers of byte-identical values may both be told [`Created::Yes`] (the value is the same
//! either way); the log's records always differ between writers.

use std::sync::Arc;
use std::time::Duration;
use vmtier_storage::object::redact_url;

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Deserialize;
use vmtier_storage::ObjectConfig;

use super::{Created, SharedStore, StoreError, check_key, check_prefix, prefix_dir};

/// How [`ObjectStoreShared::put_exclusive`](SharedStore::put_exclusive) trusts the server's
/// conditional PUT. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExclusiveWrites {
    /// Trust `If-None-Match: *` to be atomic (AWS S3, MinIO, R2).
    Native,
    /// `If-None-Match: *`, then wait `settle_ms` and read the value back; only a writer that
    /// still finds its own bytes has created the key. For servers whose conditional PUT is not
    /// atomic (`s3s-fs`). Each exclusive write takes `settle_ms` longer.
    Verified {
        /// Wait before the read-back, in milliseconds: longer than any racing PUT may take.
        settle_ms: u64,
    },
}

impl ExclusiveWrites {
    /// The default settle time of [`ExclusiveWrites::Verified`].
    pub const DEFAULT_SETTLE_MS: u64 = 250;
}

impl Default for ExclusiveWrites {
    /// [`ExclusiveWrites::Verified`] with [`DEFAULT_SETTLE_MS`](Self::DEFAULT_SETTLE_MS): safe on
    /// every server vmtier is tested with.
    fn default() -> Self {
        ExclusiveWrites::Verified { settle_ms: Self::DEFAULT_SETTLE_MS }
    }
}

/// Exclusive PUTs whose 412 is not confirmed by a read (no object found) are retried this often.
const CREATE_ATTEMPTS: usize = 4;

/// The shared store in an object store. See the [module docs](self).
#[derive(Debug)]
pub struct ObjectStoreShared {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    exclusive: ExclusiveWrites,
    name: String,
}

impl ObjectStoreShared {
    /// Opens the store that `cfg.url` names (an `s3://` url; a directory url gives an
    /// object-store view of a local directory, useful for tests).
    pub fn open(cfg: &ObjectConfig, exclusive: ExclusiveWrites) -> Result<Self, StoreError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(StoreError::InsideRuntime);
        }
        let (store, prefix) = vmtier_storage::object::parse_store(cfg)
            .map_err(|e| StoreError::Open { url: redact_url(&cfg.url), source: Box::new(e) })?;
        let name = match &cfg.endpoint {
            Some(e) => format!("{} at {}", redact_url(&cfg.url), redact_url(e)),
            None => redact_url(&cfg.url),
        };
        Self::new(store, prefix, exclusive, name)
    }

    /// The store over any `object_store` implementation, keys under `prefix`; `name` is what
    /// [`describe`](SharedStore::describe) returns (no secrets).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: ObjPath,
        exclusive: ExclusiveWrites,
        name: impl Into<String>,
    ) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmtier-repl-store")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Runtime { source })?;
        Ok(Self { rt, store, prefix, exclusive, name: name.into() })
    }

    /// How exclusive writes are checked.
    pub fn exclusive_writes(&self) -> ExclusiveWrites {
        self.exclusive
    }

    fn path(&self, key: &str) -> ObjPath {
        key.split('/').filter(|s| !s.is_empty()).fold(self.prefix.clone(), |p, seg| p.join(seg))
    }

    fn key_of(&self, path: &ObjPath) -> Option<String> {
        let parts: Vec<String> = path.prefix_match(&self.prefix)?.map(|p| p.as_ref().to_string()).collect();
        Some(parts.join("/"))
    }

    fn block_on<F: Future>(&self, f: F) -> Result<F::Output, StoreError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(StoreError::InsideRuntime);
        }
        Ok(self.rt.block_on(f))
    }

    fn put_err(&self, key: &str, e: object_store::Error) -> StoreError {
        StoreError::Put { store: self.name.clone(), key: key.to_string(), source: e.into() }
    }

    /// After our write of `key` seemed to succeed: is the value (still) ours?
    fn verify(&self, key: &str, bytes: &[u8]) -> Result<Created, StoreError> {
        let ExclusiveWrites::Verified { settle_ms } = self.exclusive else {
            return Ok(Created::Yes);
        };
        std::thread::sleep(Duration::from_millis(settle_ms));
        match self.get(key)? {
            Some(v) if v == bytes => Ok(Created::Yes),
            Some(_) => {
                tracing::debug!(key, store = %self.name, "exclusive write lost a race on a non-atomic server");
                Ok(Created::AlreadyExists)
            }
            None => Err(StoreError::Vanished { store: self.name.clone(), key: key.to_string() }),
        }
    }
}

fn is_exists(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    )
}

impl SharedStore for ObjectStoreShared {
    fn put_exclusive(&self, key: &str, bytes: &[u8]) -> Result<Created, StoreError> {
        check_key(key)?;
        let path = self.path(key);
        let mut last = None;
        for _ in 0..CREATE_ATTEMPTS {
            let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
            match self.block_on(self.store.put_opts(&path, PutPayload::from(bytes.to_vec()), opts))? {
                Ok(_) => return self.verify(key, bytes),
                Err(e) if is_exists(&e) => match self.get(key)? {
                    // Our own earlier attempt (a request retried after a timeout) may have landed.
                    Some(v) if v == bytes => return self.verify(key, bytes),
                    Some(_) => return Ok(Created::AlreadyExists),
                    None => last = Some(e),
                },
                Err(e) => return Err(self.put_err(key, e)),
            }
        }
        let e = last.unwrap_or_else(|| object_store::Error::Generic {
            store: "vmtier-repl",
            source: "conditional PUT neither created nor found the object".into(),
        });
        Err(self.put_err(key, e))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        let path = self.path(key);
        self.block_on(self.store.put(&path, PutPayload::from(bytes.to_vec())))?
            .map(|_| ())
            .map_err(|e| self.put_err(key, e))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        let path = self.path(key);
        let r = self.block_on(async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        match r {
            Ok(b) => Ok(b.map(|b| b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None), // deleted between head and body
            Err(e) => Err(StoreError::Get { store: self.name.clone(), key: key.to_string(), source: e.into() }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_prefix(prefix)?;
        let base = self.path(prefix_dir(prefix));
        let list_base = (!base.as_ref().is_empty()).then_some(&base);
        let metas: Vec<_> = self
            .block_on(self.store.list(list_base).try_collect::<Vec<_>>())?
            .map_err(|e| StoreError::List { store: self.name.clone(), prefix: prefix.to_string(), source: e.into() })?;
        let mut keys: Vec<String> = metas
            .iter()
            .filter_map(|m| self.key_of(&m.location))
            .filter(|k| k.starts_with(prefix) && check_key(k).is_ok())
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let path = self.path(key);
        match self.block_on(self.store.delete(&path))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::Delete { store: self.name.clone(), key: key.to_string(), source: e.into() }),
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn exclusive_settle(&self) -> Option<Duration> {
        match self.exclusive {
            ExclusiveWrites::Native => None,
            ExclusiveWrites::Verified { settle_ms } => Some(Duration::from_millis(settle_ms)),
        }
    }
}
