//! [`MemStore`]: a shared store in memory, for tests (of this crate and of its users).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{Created, SharedStore, StoreError, check_key, check_prefix};

/// A shared store in process memory: every guarantee of [`SharedStore`] holds trivially (one
/// mutex). Optionally reports a [`SharedStore::exclusive_settle`] time, to test readers' hold-back
/// of the newest record.
#[derive(Debug, Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
    settle: Option<Duration>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that reports `settle` as its [`SharedStore::exclusive_settle`].
    pub fn with_settle(settle: Duration) -> Self {
        Self { map: Mutex::default(), settle: Some(settle) }
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SharedStore for MemStore {
    fn put_exclusive(&self, key: &str, bytes: &[u8]) -> Result<Created, StoreError> {
        check_key(key)?;
        let mut m = self.map();
        if m.contains_key(key) {
            return Ok(Created::AlreadyExists);
        }
        m.insert(key.to_string(), bytes.to_vec());
        Ok(Created::Yes)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        self.map().insert(key.to_string(), bytes.to_vec());
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        Ok(self.map().get(key).cloned())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_prefix(prefix)?;
        Ok(self
            .map()
            .range(prefix.to_string()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.map().remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "in-memory store".to_string()
    }

    fn exclusive_settle(&self) -> Option<Duration> {
        self.settle
    }
}
