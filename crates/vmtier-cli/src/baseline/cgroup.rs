//! A cgroup-v1 memory cgroup for the kernel-swap baseline's child.
//!
//! The group is `/sys/fs/cgroup/memory/vmtier-bench-<pid>` (pid of the bench), with
//! `memory.limit_in_bytes` = the DRAM share and `memory.swappiness` as configured. The child joins
//! it before it allocates (it writes `0` — "myself" — to `cgroup.procs` between fork and exec).
//! After the child has exited the group is empty and is removed with `rmdir`; a group left by a
//! bench that was killed outright is found by its name and removed by the next run
//! ([`remove_stale`]).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::{BaselineError, Unavailable, UnavailableKind};

/// Where the cgroup-v1 memory controller is mounted.
pub const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

/// Prefix of the groups (and swap files) a bench creates; the bench's pid follows.
pub const NAME_PREFIX: &str = "vmtier-bench-";

/// The group's name for bench process `pid`.
pub fn name_for(pid: u32) -> String {
    format!("{NAME_PREFIX}{pid}")
}

/// The pid in a name made by [`name_for`] (with an optional `.swap` suffix), if it is one.
pub fn pid_of_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits = rest.strip_suffix(".swap").unwrap_or(rest);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a cgroup-v1 memory controller is mounted at `root`.
pub fn controller_available(root: &Path) -> bool {
    root.join("memory.limit_in_bytes").is_file()
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// What the cgroup recorded about its child, read before the group is removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct CgroupStats {
    /// The limit the kernel applied (page-rounded).
    pub limit_bytes: u64,
    /// Peak memory charged (`memory.max_usage_in_bytes`).
    pub max_usage_bytes: u64,
    /// Peak memory + swap charged (`memory.memsw.max_usage_in_bytes`), where swap accounting is on.
    pub memsw_max_usage_bytes: Option<u64>,
    /// Times the limit was hit (`memory.failcnt`).
    pub failcnt: u64,
    /// Major faults (`pgmajfault` of `memory.stat`): pages read back from swap, over the whole run.
    pub major_faults: u64,
    /// Processes the OOM killer killed in the group (`oom_kill` of `memory.oom_control`).
    pub oom_kills: u64,
}

/// A memory cgroup this process created; removed on drop if not removed before.
#[derive(Debug)]
pub struct MemCgroup {
    path: PathBuf,
    removed: bool,
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

impl MemCgroup {
    /// Creates `root/name` with the limit and swappiness. Returns `Err(Ok(unavailable))` for the
    /// documented cases in which it cannot (no controller, not permitted).
    pub fn create(
        root: &Path,
        name: &str,
        limit_bytes: u64,
        swappiness: u32,
    ) -> Result<Self, Result<Unavailable, BaselineError>> {
        if !controller_available(root) {
            return Err(Ok(no_controller(root)));
        }
        let path = root.join(name);
        if let Err(e) = std::fs::create_dir(&path) {
            return Err(match e.kind() {
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => Ok(Unavailable {
                    kind: UnavailableKind::CgroupNotWritable,
                    reason: format!("cannot create memory cgroup {} ({e})", path.display()),
                    remedy: "run as root on the host (not in a container with a read-only cgroupfs), or pass \
                             --skip-kernel"
                        .into(),
                }),
                _ => Err(BaselineError::CreateCgroup { path, source: e }),
            });
        }
        let group = Self { path, removed: false };
        group.write("memory.swappiness", &swappiness.to_string()).map_err(Err)?;
        group.write("memory.limit_in_bytes", &limit_bytes.to_string()).map_err(Err)?;
        Ok(group)
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file a process writes a pid (or `0`, itself) to in order to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    fn write(&self, file: &str, value: &str) -> Result<(), BaselineError> {
        let path = self.path.join(file);
        write_file(&path, value).map_err(|source| BaselineError::WriteCgroup { path, value: value.into(), source })
    }

    fn read(&self, file: &str) -> Result<String, BaselineError> {
        let path = self.path.join(file);
        std::fs::read_to_string(&path).map_err(|source| BaselineError::ReadCgroup { path, source })
    }

    fn read_u64(&self, file: &str) -> Result<u64, BaselineError> {
        Ok(self.read(file)?.trim().parse().unwrap_or(0))
    }

    /// Reads the group's counters.
    pub fn stats(&self) -> Result<CgroupStats, BaselineError> {
        let stat = self.read("memory.stat")?;
        let stat = parse_flat_keyed(&stat);
        let oom = self.read("memory.oom_control")?;
        let oom = parse_flat_keyed(&oom);
        Ok(CgroupStats {
            limit_bytes: self.read_u64("memory.limit_in_bytes")?,
            max_usage_bytes: self.read_u64("memory.max_usage_in_bytes")?,
            memsw_max_usage_bytes: self
                .read("memory.memsw.max_usage_in_bytes")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            failcnt: self.read_u64("memory.failcnt")?,
            major_faults: stat.get("pgmajfault").copied().unwrap_or(0),
            oom_kills: oom.get("oom_kill").copied().unwrap_or(0),
        })
    }

    /// The pids still in the group.
    pub fn tasks(&self) -> Result<Vec<u32>, BaselineError> {
        Ok(self.read("cgroup.procs")?.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Removes the group. Its processes must have exited; an empty group can still be busy for a
    /// moment while the kernel finishes with it, so `rmdir` is retried for up to 5 s.
    pub fn remove(mut self) -> Result<(), BaselineError> {
        self.removed = true;
        remove_dir_retrying(&self.path)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = remove_dir_retrying(&self.path)
        {
            eprintln!("vmtier: warning: {}", vmtier_engine::chain(&e));
        }
    }
}

fn remove_dir_retrying(path: &Path) -> Result<(), BaselineError> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if tries < 100 && e.raw_os_error() == Some(libc::EBUSY) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => return Err(BaselineError::RemoveCgroup { path: path.to_path_buf(), source }),
        }
    }
}

/// The [`Unavailable`] for a missing controller.
pub fn no_controller(root: &Path) -> Unavailable {
    Unavailable {
        kind: UnavailableKind::NoCgroupV1Memory,
        reason: format!("no cgroup-v1 memory controller at {} (cgroup v2 only?)", root.display()),
        remedy: format!(
            "mount one (`mkdir -p {0} && mount -t cgroup -o memory none {0}`) or pass --skip-kernel",
            root.display()
        ),
    }
}

/// Parses a cgroup "flat keyed" file (`key value` per line) such as `memory.stat` or
/// `memory.oom_control`. Lines that do not parse are skipped.
pub fn parse_flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k, v))
        })
        .collect()
}

/// Removes groups under `root` left by benches that no longer run (killed with SIGKILL, say).
/// Groups of live benches are left alone. Returns a note per group removed or still there.
pub fn remove_stale(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut notes = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = pid_of_name(&name) else { continue };
        if pid == std::process::id() || pid_alive(pid) || !e.path().is_dir() {
            continue;
        }
        match remove_dir_retrying(&e.path()) {
            Ok(()) => notes.push(format!("removed memory cgroup {} left by an earlier bench", e.path().display())),
            Err(err) => notes.push(format!("could not remove stale memory cgroup {}: {err}", e.path().display())),
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(name_for(42), "vmtier-bench-42");
        assert_eq!(pid_of_name("vmtier-bench-42"), Some(42));
        assert_eq!(pid_of_name("vmtier-bench-42.swap"), Some(42));
        for bad in ["vmtier-bench-", "vmtier-bench-x1", "vmtier-bench-4 2", "other-42", "vmtier-bench-42.swp"] {
            assert_eq!(pid_of_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_oom_control_and_stat() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let m = parse_flat_keyed(oom);
        assert_eq!(m["oom_kill"], 3);
        assert_eq!(m["under_oom"], 0);
        let stat = "cache 0\nrss 1052672\npgmajfault 873000\nbogus\nweird x\n";
        let m = parse_flat_keyed(stat);
        assert_eq!(m["pgmajfault"], 873_000);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn a_directory_without_the_controller_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!controller_available(dir.path()));
        match MemCgroup::create(dir.path(), "vmtier-bench-1", 1 << 20, 60) {
            Err(Ok(u)) => {
                assert_eq!(u.kind, UnavailableKind::NoCgroupV1Memory);
                assert!(u.remedy.contains("--skip-kernel"), "{u}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn stale_groups_of_dead_pids_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        // A pid far above pid_max cannot be alive.
        let dead = 4_194_304 + 17;
        for n in [name_for(me), name_for(dead), "unrelated".into()] {
            std::fs::create_dir(dir.path().join(n)).unwrap();
        }
        let notes = remove_stale(dir.path());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(dir.path().join(name_for(me)).exists());
        assert!(!dir.path().join(name_for(dead)).exists());
        assert!(dir.path().join("unrelated").exists());
    }
}
