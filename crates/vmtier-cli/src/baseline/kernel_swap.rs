//! The Linux kernel's answer: the guest in a child process whose memory cgroup (v1) is limited to
//! the DRAM share, swapping to a swap file on the same disk as vmtier's tiers.
//!
//! One [`run`]:
//! 1. checks it can: root, a cgroup-v1 memory controller, room for the swap file — otherwise
//!    returns an [`Unavailable`] that says why and what would make it work;
//! 2. removes groups and swap files left by benches killed outright ([`cgroup::remove_stale`],
//!    [`swapfile::remove_stale`]);
//! 3. creates `/sys/fs/cgroup/memory/vmtier-bench-<pid>` (limit, swappiness) and
//!    `<dir>/vmtier-bench-<pid>.swap` (footprint + 25%, at least 64 MiB more), `swapon` at the
//!    highest priority; swap areas the machine already has are noted, and are used only after
//!    ours fills;
//! 4. runs the child, which joins the group before it allocates;
//! 5. reads the group's counters; a child killed by SIGKILL with an OOM kill recorded in
//!    `memory.oom_control` is a result ("killed by the OOM killer at limit X"), not an error;
//! 6. disables and deletes the swap file and removes the group — on success, on error and on
//!    SIGINT/SIGTERM/SIGHUP (the guards' `Drop` does it when an early return or panic skips the
//!    explicit teardown).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cgroup::{self, CgroupStats, MemCgroup};
use super::child::{self, ChildEnd, ChildReport, ChildSpec};
use super::swapfile::{self, SwapEntry, SwapFile};
use super::{BaselineError, Unavailable, UnavailableKind, human_bytes};

/// One kernel-swap run.
#[derive(Debug, Clone)]
pub struct KernelSwapConfig {
    /// Where the swap file goes (the bench directory: the same disk as vmtier's tiers).
    pub dir: PathBuf,
    /// The cgroup-v1 memory hierarchy ([`cgroup::MEMORY_ROOT`]).
    pub cgroup_root: PathBuf,
    /// `memory.limit_in_bytes`: the DRAM share.
    pub limit_bytes: u64,
    /// `memory.swappiness`.
    pub swappiness: u32,
    /// Size of the swap file ([`swap_bytes_for`] the footprint, normally).
    pub swap_bytes: u64,
    /// The child's guest.
    pub child: ChildSpec,
}

/// What was set up for a run.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// The memory cgroup.
    pub cgroup: PathBuf,
    /// The swap file.
    pub swap_file: PathBuf,
    /// Its size.
    pub swap_bytes: u64,
    /// Swap areas that were enabled already.
    pub other_swaps: Vec<SwapEntry>,
}

/// How the child ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It finished, every read verified.
    Completed(Box<ChildReport>),
    /// The OOM killer killed it.
    OomKilled {
        /// The limit it ran under.
        limit_bytes: u64,
        /// OOM kills the group recorded.
        oom_kills: u64,
    },
}

impl Outcome {
    /// A one-line description of an OOM kill.
    pub fn describe_oom(limit_bytes: u64, oom_kills: u64) -> String {
        format!(
            "killed by the OOM killer at limit {} (memory.oom_control oom_kill = {oom_kills})",
            human_bytes(limit_bytes)
        )
    }
}

/// A finished kernel-swap run.
#[derive(Debug, Clone)]
pub struct KernelRun {
    /// The result.
    pub outcome: Outcome,
    /// What was set up (and torn down).
    pub setup: Setup,
    /// The group's counters at the end.
    pub stats: CgroupStats,
    /// Remarks: swap the machine already had, leftovers removed.
    pub notes: Vec<String>,
}

/// The swap file size for a footprint: all of it could be swapped out, plus the child's own
/// memory and page tables.
pub fn swap_bytes_for(footprint: u64) -> u64 {
    footprint + (footprint / 4).max(64 << 20)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no memory effects.
    unsafe { libc::geteuid() == 0 }
}

/// Checks, without side effects, that a run can be set up.
pub fn preflight(dir: &Path, cgroup_root: &Path, swap_bytes: u64) -> Result<(), Unavailable> {
    if !is_root() {
        return Err(Unavailable {
            kind: UnavailableKind::NotRoot,
            reason: "not root: creating a memory cgroup and swapon need root".into(),
            remedy: "run the bench as root (e.g. with sudo), or pass --skip-kernel".into(),
        });
    }
    if !cgroup::controller_available(cgroup_root) {
        return Err(cgroup::no_controller(cgroup_root));
    }
    let need = swap_bytes + (64 << 20);
    match swapfile::free_bytes(dir) {
        Ok(free) if free < need => Err(Unavailable {
            kind: UnavailableKind::NoSpace,
            reason: format!(
                "{} has {} free, the swap file needs {}",
                dir.display(),
                human_bytes(free),
                human_bytes(need)
            ),
            remedy: "free space there, point --dir elsewhere, or pass --skip-kernel".into(),
        }),
        _ => Ok(()),
    }
}

/// Sets up, runs the child and tears down. `Ok(Err(_))`: the machine cannot run this baseline.
pub fn run(cfg: &KernelSwapConfig) -> Result<Result<KernelRun, Unavailable>, BaselineError> {
    let swap_bytes = cfg.swap_bytes;
    if let Err(u) = preflight(&cfg.dir, &cfg.cgroup_root, swap_bytes) {
        return Ok(Err(u));
    }
    let mut notes = cgroup::remove_stale(&cfg.cgroup_root);
    notes.extend(swapfile::remove_stale(&cfg.dir));
    let pid = std::process::id();
    let other_swaps = swapfile::active_swaps();
    if !other_swaps.is_empty() {
        let list: Vec<String> = other_swaps
            .iter()
            .map(|e| format!("{} ({}, priority {})", e.filename.display(), human_bytes(e.size_kib * 1024), e.priority))
            .collect();
        notes.push(format!(
            "swap was already enabled on this machine: {}; the bench's swap file has the highest priority, so the \
             child swaps to it first",
            list.join(", ")
        ));
    }

    let group = match MemCgroup::create(&cfg.cgroup_root, &cgroup::name_for(pid), cfg.limit_bytes, cfg.swappiness) {
        Ok(g) => g,
        Err(Ok(u)) => return Ok(Err(u)),
        Err(Err(e)) => return Err(e),
    };
    let swap_path = swapfile::path_for(&cfg.dir, pid);
    let mut swap = SwapFile::create(&swap_path, swap_bytes)?;
    match swap.enable(swapfile::MAX_PRIORITY) {
        Ok(()) => {}
        Err(Ok(u)) => return Ok(Err(u)),
        Err(Err(e)) => return Err(e),
    }
    let setup =
        Setup { cgroup: group.path().to_path_buf(), swap_file: swap.path().to_path_buf(), swap_bytes, other_swaps };

    let finished = child::run_child(&cfg.child, Some(&group.procs_file()))?;
    let stats = group.stats()?;
    let left = group.tasks()?;
    if !left.is_empty() {
        // The child has exited; anything else in the group is not ours to kill.
        return Err(BaselineError::RemoveCgroup {
            path: group.path().to_path_buf(),
            source: std::io::Error::other(format!("processes {left:?} are still in it")),
        });
    }
    swap.remove()?;
    group.remove()?;

    let outcome = match finished.end {
        ChildEnd::Report(r) => Outcome::Completed(r),
        ChildEnd::Killed { signal } if signal == libc::SIGKILL && stats.oom_kills > 0 => {
            Outcome::OomKilled { limit_bytes: stats.limit_bytes, oom_kills: stats.oom_kills }
        }
        ChildEnd::Killed { signal } => {
            return Err(BaselineError::ChildFailed {
                label: cfg.child.label.clone(),
                status: format!("killed by signal {signal}"),
                stderr_tail: finished.stderr_tail,
            });
        }
        ChildEnd::Failed { status } => {
            return Err(BaselineError::ChildFailed {
                label: cfg.child.label.clone(),
                status,
                stderr_tail: finished.stderr_tail,
            });
        }
    };
    Ok(Ok(KernelRun { outcome, setup, stats, notes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_is_sized_for_the_footprint() {
        assert_eq!(swap_bytes_for(64 << 20), 128 << 20);
        assert_eq!(swap_bytes_for(4 << 30), 5 << 30);
    }

    #[test]
    fn oom_description_names_the_limit() {
        let s = Outcome::describe_oom(2 << 30, 1);
        assert!(s.starts_with("killed by the OOM killer at limit 2GiB"), "{s}");
    }

    #[test]
    fn preflight_without_a_controller_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let u = preflight(dir.path(), dir.path(), 1 << 20).unwrap_err();
        let expected = if is_root() { UnavailableKind::NoCgroupV1Memory } else { UnavailableKind::NotRoot };
        assert_eq!(u.kind, expected, "{u}");
    }
}
