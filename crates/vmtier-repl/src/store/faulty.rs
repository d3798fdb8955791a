//! [`FaultyStore`]: a [`SharedStore`] around a real one that injects the faults of a
//! [`FaultPlan`] (from `vmtier_storage::fault`), for tests of the log, the lease and their users.

use std::sync::Arc;

use vmtier_storage::fault::{Fault, FaultKind, FaultPlan, Op};

use super::{BackendError, Created, SharedStore, StoreError};

/// A [`SharedStore`] that forwards to `inner` and injects the faults of a [`FaultPlan`]; the key
/// is the store key (so a rule can aim at `log/` and spare `lease/`):
///
/// | fault        | `put`, `put_exclusive` (`Op::Write`)              | `get` (`Op::Read`)               | `list`, `delete`   |
/// |--------------|---------------------------------------------------|----------------------------------|--------------------|
/// | `Eio`        | `EIO`, nothing written                            | `EIO`                            | `EIO`              |
/// | `Enospc`     | `ENOSPC`, nothing written                         | `EIO`                            | `EIO`              |
/// | `ShortWrite` | the first half of the value published, then `ENOSPC` (a store without atomic publish) | `EIO` | `EIO`   |
/// | `EioAfter`   | written, then `EIO` (a lost acknowledgement)      | `EIO`                            | done, then `EIO`   |
/// | `Delay(d)`   | sleeps `d`, then runs                             | the same                         | the same           |
/// | `FlipBit`    | publishes the value with one bit flipped          | returns the value with one bit flipped | no fault     |
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn SharedStore>,
    plan: Arc<FaultPlan>,
}

impl FaultyStore {
    /// Wraps `inner` with the faults of `plan`.
    pub fn new(inner: Arc<dyn SharedStore>, plan: Arc<FaultPlan>) -> Self {
        Self { inner, plan }
    }

    /// The wrapped store (to look at what really got stored, without faults).
    pub fn inner(&self) -> &Arc<dyn SharedStore> {
        &self.inner
    }

    /// The plan deciding the faults.
    pub fn plan(&self) -> &Arc<FaultPlan> {
        &self.plan
    }

    fn source(f: &Fault) -> BackendError {
        BackendError::Io(f.io_error())
    }

    fn put_err(&self, key: &str, f: &Fault) -> StoreError {
        StoreError::Put { store: self.describe(), key: key.to_string(), source: Self::source(f) }
    }

    fn write<T>(
        &self,
        key: &str,
        bytes: &[u8],
        op: impl Fn(&dyn SharedStore, &[u8]) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(f) = self.plan.check(Op::Write, key) else {
            return op(&*self.inner, bytes);
        };
        match f.kind {
            FaultKind::Delay(_) => {
                f.delay();
                op(&*self.inner, bytes)
            }
            FaultKind::FlipBit => {
                let mut v = bytes.to_vec();
                f.flip(&mut v);
                op(&*self.inner, &v)
            }
            FaultKind::ShortWrite => {
                op(&*self.inner, &bytes[..bytes.len() / 2])?;
                Err(self.put_err(key, &f))
            }
            FaultKind::EioAfter => op(&*self.inner, bytes).and(Err(self.put_err(key, &f))),
            FaultKind::Eio | FaultKind::Enospc => Err(self.put_err(key, &f)),
        }
    }

    /// For `list` and `delete`: `Err` for a failing fault, after running `op` for `EioAfter`.
    fn other<T>(
        &self,
        op_kind: Op,
        key: &str,
        op: impl FnOnce() -> Result<T, StoreError>,
        err: impl FnOnce(BackendError) -> StoreError,
    ) -> Result<T, StoreError> {
        match self.plan.check(op_kind, key) {
            None => op(),
            Some(f) => match f.kind {
                FaultKind::Delay(_) | FaultKind::FlipBit => {
                    f.delay();
                    op()
                }
                FaultKind::EioAfter => op().and(Err(err(Self::source(&f)))),
                _ => Err(err(BackendError::Io(eio()))),
            },
        }
    }
}

/// `EIO`: what a failed read, list or delete reports.
fn eio() -> std::io::Error {
    Fault { kind: FaultKind::Eio, entropy: 0 }.io_error()
}

impl SharedStore for FaultyStore {
    fn put_exclusive(&self, key: &str, bytes: &[u8]) -> Result<Created, StoreError> {
        self.write(key, bytes, |s, b| s.put_exclusive(key, b))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.write(key, bytes, |s, b| s.put(key, b))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(f) = self.plan.check(Op::Read, key) else {
            return self.inner.get(key);
        };
        match f.kind {
            FaultKind::Delay(_) => {
                f.delay();
                self.inner.get(key)
            }
            FaultKind::FlipBit => {
                let mut v = self.inner.get(key)?;
                if let Some(v) = &mut v {
                    f.flip(v);
                }
                Ok(v)
            }
            _ => Err(StoreError::Get { store: self.describe(), key: key.to_string(), source: BackendError::Io(eio()) }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let store = self.describe();
        self.other(
            Op::List,
            prefix,
            || self.inner.list(prefix),
            |source| StoreError::List { store, prefix: prefix.to_string(), source },
        )
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let store = self.describe();
        self.other(
            Op::Delete,
            key,
            || self.inner.delete(key),
            |source| StoreError::Delete { store, key: key.to_string(), source },
        )
    }

    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }

    fn exclusive_settle(&self) -> Option<std::time::Duration> {
        self.inner.exclusive_settle()
    }
}
