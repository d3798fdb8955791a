//! A swap file on the bench directory's file system, enabled for one kernel-swap run.
//!
//! The file is `<dir>/vmtier-bench-<pid>.swap`, mode 0600, allocated with `fallocate` (zeros
//! written where the file system cannot), formatted as below (what `mkswap` writes) and enabled
//! with `swapon(2)` at the highest priority, so the child's pages go to it before any swap the
//! machine already has. [`SwapFile::remove`] (or drop) disables and deletes it.
//!
//! The header is the first page of the file (`union swap_header` in `linux/swap.h`), native
//! endian:
//!
//! | offset          | size | field                                      |
//! |-----------------|------|--------------------------------------------|
//! | 0               | 1024 | boot bits (zero)                           |
//! | 1024            | 4    | version = 1                                |
//! | 1028            | 4    | last page = pages in the file − 1          |
//! | 1032            | 4    | bad pages = 0                              |
//! | 1036            | 16   | UUID                                       |
//! | 1052            | 16   | volume label (`vmtier-bench`)              |
//! | 1068            | …    | zero                                       |
//! | page size − 10  | 10   | magic `SWAPSPACE2`                         |

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cgroup::{pid_alive, pid_of_name};
use super::{BaselineError, Unavailable, UnavailableKind};

/// Magic at the end of the header page.
pub const MAGIC: &[u8; 10] = b"SWAPSPACE2";
/// `SWAP_FLAG_PREFER`: use the priority in the low bits.
const SWAP_FLAG_PREFER: libc::c_int = 0x8000;
/// The highest swap priority.
pub const MAX_PRIORITY: libc::c_int = 0x7fff;
/// Fewest pages `mkswap` accepts.
const MIN_PAGES: u64 = 10;

/// The system's page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// The swap header page for a file of `pages` pages of `page_size` bytes.
pub fn header(page_size: usize, pages: u64, uuid: [u8; 16]) -> Vec<u8> {
    assert!(page_size >= 2048 && pages >= 2, "a swap file needs a header page and a data page");
    let mut h = vec![0u8; page_size];
    h[1024..1028].copy_from_slice(&1u32.to_ne_bytes());
    let last = u32::try_from(pages - 1).unwrap_or(u32::MAX);
    h[1028..1032].copy_from_slice(&last.to_ne_bytes());
    h[1036..1052].copy_from_slice(&uuid);
    h[1052..1052 + 12].copy_from_slice(b"vmtier-bench");
    h[page_size - 10..].copy_from_slice(MAGIC);
    h
}

fn uuid() -> [u8; 16] {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let a = vmtier_workload::rng::mix64(t.as_nanos() as u64 ^ u64::from(std::process::id()));
    let b = vmtier_workload::rng::mix64(a);
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&a.to_ne_bytes());
    u[8..].copy_from_slice(&b.to_ne_bytes());
    // A random (version 4, variant 1) UUID, as mkswap makes.
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// The swap file of bench process `pid` in `dir`.
pub fn path_for(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("{}.swap", super::cgroup::name_for(pid)))
}

/// One line of `/proc/swaps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwapEntry {
    /// The device or file.
    pub filename: PathBuf,
    /// `file` or `partition`.
    pub kind: String,
    /// Size, KiB.
    pub size_kib: u64,
    /// Used, KiB.
    pub used_kib: u64,
    /// Priority.
    pub priority: i32,
}

/// Undoes the octal escapes (`\040` for a space, …) the kernel writes in `/proc/swaps` names.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// Parses `/proc/swaps` (a header line, then one line per swap area).
pub fn parse_proc_swaps(text: &str) -> Vec<SwapEntry> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 {
                return None;
            }
            Some(SwapEntry {
                filename: unescape(f[0]),
                kind: f[1].to_string(),
                size_kib: f[2].parse().ok()?,
                used_kib: f[3].parse().ok()?,
                priority: f[4].parse().ok()?,
            })
        })
        .collect()
}

/// The swap areas enabled now (empty if `/proc/swaps` cannot be read).
pub fn active_swaps() -> Vec<SwapEntry> {
    std::fs::read_to_string("/proc/swaps").map(|t| parse_proc_swaps(&t)).unwrap_or_default()
}

/// Whether `path` is an enabled swap area.
pub fn is_active(path: &Path) -> bool {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    active_swaps().iter().any(|e| e.filename == canon || e.filename == path)
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))
}

/// Attempts `swapoff` makes before giving up on a transient error.
const SWAPOFF_ATTEMPTS: u32 = 50;

/// `swapoff(2)`, retried on the transient errors: `EINTR` (the kernel abandons swapoff when any
/// signal is pending — a Ctrl-C arriving during the teardown), `EBUSY` and `ENOMEM` (pages still
/// being written back or freed by an exiting child).
fn swapoff(path: &Path) -> std::io::Result<()> {
    let c = cstring(path)?;
    let mut attempt = 1;
    loop {
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        if unsafe { libc::swapoff(c.as_ptr()) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        let transient = matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::ENOMEM));
        if !transient || attempt == SWAPOFF_ATTEMPTS {
            return Err(e);
        }
        attempt += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Bytes available in `dir`'s file system.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let c = cstring(dir)?;
    // SAFETY: plain data; zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a live statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The file system type of `dir` (`statfs` magic) and a name for the common ones.
pub fn fs_type(dir: &Path) -> std::io::Result<(i64, &'static str)> {
    let c = cstring(dir)?;
    // SAFETY: plain data; zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a live statfs to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let t = st.f_type as i64;
    let name = match t {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x2FC1_2FC1 => "zfs",
        0x6573_5546 => "fuse",
        _ => "unknown",
    };
    Ok((t, name))
}

/// File systems on which a fallocated swap file works; an EINVAL from swapon there is a bug,
/// not an unsupported file system.
fn swap_capable(name: &str) -> bool {
    matches!(name, "ext4" | "xfs")
}

/// A swap file this process created; disabled and deleted on drop if not before.
#[derive(Debug)]
pub struct SwapFile {
    path: PathBuf,
    enabled: bool,
    gone: bool,
}

impl SwapFile {
    /// Creates and formats a swap file of `bytes` (rounded down to whole pages) at `path`.
    pub fn create(path: &Path, bytes: u64) -> Result<Self, BaselineError> {
        let err = |source| BaselineError::CreateSwapFile { path: path.to_path_buf(), source };
        let page = page_size();
        let pages = (bytes / page).max(MIN_PAGES);
        let len = pages * page;
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(err)?;
        let me = Self { path: path.to_path_buf(), enabled: false, gone: false };
        // SAFETY: `file` is an open, writable descriptor for the duration of the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(err(e));
            }
            // No fallocate here: write zeros (swap files must not have holes).
            let zeros = vec![0u8; 1 << 20];
            let mut off = 0;
            while off < len {
                let n = (len - off).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], off).map_err(err)?;
                off += n as u64;
            }
        }
        file.write_all_at(&header(page as usize, pages, uuid()), 0).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        Ok(me)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `swapon` at `priority`. Returns `Err(Ok(unavailable))` where the machine does not allow it.
    pub fn enable(&mut self, priority: libc::c_int) -> Result<(), Result<Unavailable, BaselineError>> {
        let c = cstring(&self.path).map_err(|source| Err(BaselineError::Swapon { path: self.path.clone(), source }))?;
        let flags = SWAP_FLAG_PREFER | (priority & MAX_PRIORITY);
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        if unsafe { libc::swapon(c.as_ptr(), flags) } == 0 {
            self.enabled = true;
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        Err(match e.raw_os_error() {
            Some(libc::EPERM) => Ok(Unavailable {
                kind: UnavailableKind::SwaponRefused,
                reason: format!("swapon {} refused: {e}", self.path.display()),
                remedy:
                    "run on a host or VM as root (a container lacks CAP_SYS_ADMIN over swap), or pass --skip-kernel"
                        .into(),
            }),
            Some(libc::EINVAL) => match fs_type(dir) {
                Ok((_, name)) if !swap_capable(name) => Ok(Unavailable {
                    kind: UnavailableKind::SwapUnsupportedFs,
                    reason: format!("the {name} file system of {} cannot hold a swap file ({e})", dir.display()),
                    remedy: "point --dir at a directory on ext4 or xfs, or pass --skip-kernel".into(),
                }),
                _ => Err(BaselineError::Swapon { path: self.path.clone(), source: e }),
            },
            _ => Err(BaselineError::Swapon { path: self.path.clone(), source: e }),
        })
    }

    /// Disables (if enabled) and deletes the file.
    pub fn remove(mut self) -> Result<(), BaselineError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), BaselineError> {
        if self.enabled {
            swapoff(&self.path).map_err(|source| BaselineError::Swapoff { path: self.path.clone(), source })?;
            self.enabled = false;
        }
        if !self.gone {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(BaselineError::RemoveSwapFile { path: self.path.clone(), source }),
            }
            self.gone = true;
        }
        Ok(())
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("vmtier: warning: {}", vmtier_engine::chain(&e));
        }
    }
}

/// Disables and deletes swap files left by benches that no longer run: enabled ones named in
/// `/proc/swaps`, and disabled ones in `dir`. Returns a note per file.
pub fn remove_stale(dir: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let stale = |p: &Path| {
        p.file_name()
            .and_then(|n| pid_of_name(&n.to_string_lossy()))
            .is_some_and(|pid| pid != std::process::id() && !pid_alive(pid))
            && p.extension().is_some_and(|e| e == "swap")
    };
    for e in active_swaps() {
        if !stale(&e.filename) {
            continue;
        }
        match swapoff(&e.filename) {
            Ok(()) => {
                let _ = std::fs::remove_file(&e.filename);
                notes.push(format!("disabled and deleted swap file {} left by an earlier bench", e.filename.display()));
            }
            Err(err) => notes.push(format!("could not disable stale swap file {}: {err}", e.filename.display())),
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if stale(&p) && !is_active(&p) && std::fs::remove_file(&p).is_ok() {
                notes.push(format!("deleted swap file {} left by an earlier bench", p.display()));
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let h = header(4096, 1000, [7; 16]);
        assert_eq!(h.len(), 4096);
        assert!(h[..1024].iter().all(|&b| b == 0));
        assert_eq!(u32::from_ne_bytes(h[1024..1028].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(h[1028..1032].try_into().unwrap()), 999);
        assert_eq!(u32::from_ne_bytes(h[1032..1036].try_into().unwrap()), 0);
        assert_eq!(&h[1036..1052], &[7; 16]);
        assert_eq!(&h[1052..1064], b"vmtier-bench");
        assert_eq!(&h[4086..], MAGIC);
        let u = uuid();
        assert_eq!(u[6] >> 4, 4);
    }

    #[test]
    fn parses_proc_swaps_with_escapes() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /swapfile                               file\t\t1048572\t\t0\t\t-2\n\
                    /data/my\\040dir/vmtier-bench-7.swap     file\t\t65532\t\t128\t\t32767\n\
                    /dev/zram0                              partition\t4194300\t\t0\t\t100\n\
                    garbage\n";
        let e = parse_proc_swaps(text);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].filename, Path::new("/swapfile"));
        assert_eq!(e[0].priority, -2);
        assert_eq!(e[1].filename, Path::new("/data/my dir/vmtier-bench-7.swap"));
        assert_eq!((e[1].size_kib, e[1].used_kib, e[1].priority), (65532, 128, 32767));
        assert_eq!(e[2].kind, "partition");
        assert!(parse_proc_swaps("Filename Type Size Used Priority\n").is_empty());
    }

    #[test]
    fn create_formats_and_remove_deletes_without_swapon() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_for(dir.path(), 12345);
        assert!(p.ends_with("vmtier-bench-12345.swap"));
        let f = SwapFile::create(&p, 1 << 20).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let bytes = std::fs::read(&p).unwrap();
        let page = page_size() as usize;
        assert_eq!(&bytes[page - 10..page], MAGIC);
        f.remove().unwrap();
        assert!(!p.exists());
        // Dropping without remove deletes too.
        let f = SwapFile::create(&p, 1 << 20).unwrap();
        drop(f);
        assert!(!p.exists());
    }

    #[test]
    fn stale_disabled_files_of_dead_benches_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let dead = path_for(dir.path(), 4_194_304 + 99);
        let mine = path_for(dir.path(), std::process::id());
        std::fs::write(&dead, b"x").unwrap();
        std::fs::write(&mine, b"x").unwrap();
        let notes = remove_stale(dir.path());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(!dead.exists());
        assert!(mine.exists());
    }
}
