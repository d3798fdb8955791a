//! [`DirStore`]: the shared store on a directory (local, or a shared file system such as NFS).
//!
//! A key is a file under the root; `/` in a key makes subdirectories, created on demand. Every
//! write goes to a temporary file `.tmp-<token>` in the key's directory, which is written,
//! fsynced and then published:
//!
//! - [`put_exclusive`](SharedStore::put_exclusive): `link(2)` temp → key. `link` fails with
//!   `EEXIST` if the key exists, atomically, on every POSIX file system including NFS; the temp
//!   file is then unlinked. (NFS may report `EEXIST` for a retransmitted `link` that did succeed;
//!   that case is recognised by comparing inode numbers.)
//! - [`put`](SharedStore::put): `rename(2)` temp → key, which replaces atomically.
//!
//! The directory is fsynced after publishing (and its parents after creating it), so a published
//! key survives a crash. A crash may leave a `.tmp-*` file behind; names starting with `.` are
//! never keys, so it is never listed or read, only wasted space. Deletes are not fsynced: a
//! deleted log record that reappears after a crash is harmless (readers start at the newest full
//! checkpoint).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{BackendError, Created, SharedStore, StoreError, check_key, check_prefix, prefix_dir, unique_token};

/// The shared store on a directory. See the [module docs](self).
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
}

/// Removes the temporary file when dropped (after an error, or after `link`), unless disarmed.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// The file was renamed away: nothing to remove.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl DirStore {
    /// Opens (creating it if missing) the store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| StoreError::CreateDir { dir: root.clone(), source })?;
        Ok(Self { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key`.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn put_err(&self, key: &str) -> impl FnOnce(io::Error) -> StoreError {
        let (store, key) = (self.describe(), key.to_string());
        move |e| StoreError::Put { store, key, source: BackendError::Io(e) }
    }

    /// Creates the key's directory if missing (fsyncing the parents of what was created).
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir)?;
        let mut d = dir;
        while let Some(parent) = d.parent() {
            sync_dir(parent)?;
            if parent == self.root {
                break;
            }
            d = parent;
        }
        Ok(())
    }

    /// Writes `bytes` to a new fsynced temporary file next to `path`.
    fn write_temp(&self, path: &Path, bytes: &[u8]) -> io::Result<TempFile> {
        let dir = path.parent().unwrap_or(&self.root);
        self.ensure_dir(dir)?;
        let tmp = TempFile { path: dir.join(format!(".tmp-{:016x}", unique_token())), armed: true };
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp.path)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(tmp)
    }

    fn collect(&self, dir: &Path, rel: &str, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if name.starts_with('.') {
                continue; // temporary files
            }
            let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if entry.file_type()?.is_dir() {
                // Only descend where keys with the prefix can be.
                if prefix.starts_with(&format!("{key}/")) || key.starts_with(prefix) {
                    self.collect(&entry.path(), &key, prefix, out)?;
                }
            } else if key.starts_with(prefix) && check_key(&key).is_ok() {
                out.push(key);
            }
        }
        Ok(())
    }
}

impl SharedStore for DirStore {
    fn put_exclusive(&self, key: &str, bytes: &[u8]) -> Result<Created, StoreError> {
        check_key(key)?;
        let path = self.path_of(key);
        let tmp = self.write_temp(&path, bytes).map_err(self.put_err(key))?;
        let created = match fs::hard_link(&tmp.path, &path) {
            Ok(()) => Created::Yes,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // A retransmitted NFS link may report EEXIST although it succeeded.
                let ours = fs::metadata(&tmp.path).map_err(self.put_err(key))?;
                match fs::metadata(&path) {
                    Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => Created::Yes,
                    _ => Created::AlreadyExists,
                }
            }
            Err(e) => return Err(self.put_err(key)(e)),
        };
        drop(tmp);
        if created == Created::Yes {
            sync_dir(path.parent().unwrap_or(&self.root)).map_err(self.put_err(key))?;
        }
        Ok(created)
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        let path = self.path_of(key);
        let tmp = self.write_temp(&path, bytes).map_err(self.put_err(key))?;
        fs::rename(&tmp.path, &path).map_err(self.put_err(key))?;
        tmp.disarm();
        sync_dir(path.parent().unwrap_or(&self.root)).map_err(self.put_err(key))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        match fs::read(self.path_of(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Get { store: self.describe(), key: key.to_string(), source: e.into() }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_prefix(prefix)?;
        let dir = prefix_dir(prefix);
        let mut out = Vec::new();
        self.collect(&self.root.join(dir), dir, prefix, &mut out).map_err(|e| StoreError::List {
            store: self.describe(),
            prefix: prefix.to_string(),
            source: e.into(),
        })?;
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        match fs::remove_file(self.path_of(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Delete { store: self.describe(), key: key.to_string(), source: e.into() }),
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}
