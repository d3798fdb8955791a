//! The baselines `vmtier bench tiering` compares vmtier against, measured in the same run.
//!
//! - [`child`]: the `vmtier __baseline-child` process — vmtier's in-process guest
//!   ([`vmtier_workload::run`]) over plain anonymous memory, reporting as JSON on stdout. Without a
//!   limit it is the **all-DRAM** reference; in a memory cgroup it is the kernel-swap baseline.
//! - [`kernel_swap`]: **Linux swap** — the child in a cgroup-v1 memory cgroup ([`cgroup`]) limited
//!   to the DRAM share, with a swap file ([`swapfile`]) on the bench directory's file system; set
//!   up and torn down around every run, also when it fails or is interrupted ([`signals`]).
//! - [`disk`]: the disk's sequential read rate with `O_DIRECT`, for the disk-bandwidth bound.
//!
//! See `docs/bench-tiering.md`.

pub mod cgroup;
pub mod child;
pub mod disk;
pub mod kernel_swap;
pub mod signals;
pub mod swapfile;
pub mod watch;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Errors of the baselines. Each names the operation and the file it failed on.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// `mkdir` of the memory cgroup failed for a reason other than "not permitted".
    #[error("creating memory cgroup {}", path.display())]
    CreateCgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a control file of the memory cgroup failed.
    #[error("writing {value:?} to {}", path.display())]
    WriteCgroup {
        /// The control file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a control file of the memory cgroup failed.
    #[error("reading {}", path.display())]
    ReadCgroup {
        /// The control file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The memory cgroup could not be removed.
    #[error("removing memory cgroup {} (remove it by hand with rmdir once its tasks are gone)", path.display())]
    RemoveCgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Creating or formatting the swap file failed.
    #[error("creating swap file {}", path.display())]
    CreateSwapFile {
        /// The swap file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `swapon` failed for a reason other than "not permitted" or "not supported here".
    #[error("swapon {}", path.display())]
    Swapon {
        /// The swap file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `swapoff` failed: the swap file is still enabled.
    #[error("swapoff {0}; it is still enabled: run `swapoff {0} && rm {0}`", path.display())]
    Swapoff {
        /// The swap file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Deleting the (disabled) swap file failed.
    #[error("deleting swap file {}", path.display())]
    RemoveSwapFile {
        /// The swap file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Starting or waiting for the baseline child failed.
    #[error("running the baseline child `{exe} __baseline-child`")]
    Child {
        /// The executable.
        exe: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The baseline child exited without a report (not an OOM kill).
    #[error("the baseline child ({label}) failed: {status}; its last output:\n{stderr_tail}")]
    ChildFailed {
        /// Which run.
        label: String,
        /// How it ended.
        status: String,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// The baseline child's stdout was not its JSON report.
    #[error("the baseline child ({label}) printed no valid report")]
    ChildReport {
        /// Which run.
        label: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An I/O of the disk probe failed.
    #[error("disk probe: {op} {}", path.display())]
    DiskProbe {
        /// The operation.
        op: &'static str,
        /// The probe file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// SIGINT, SIGTERM or SIGHUP arrived; everything set up was torn down.
    #[error("interrupted; the bench stopped its runs and removed what it had set up")]
    Interrupted,
}

/// Why the kernel-swap baseline cannot run on this machine (a result, not an error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Unavailable {
    /// Which documented case.
    pub kind: UnavailableKind,
    /// What is missing, in one line.
    pub reason: String,
    /// What would make it work.
    pub remedy: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.reason, self.remedy)
    }
}

/// The documented cases in which the kernel-swap baseline is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnavailableKind {
    /// Not running as root (cgroups and swapon need it).
    NotRoot,
    /// No cgroup-v1 memory controller mounted at `/sys/fs/cgroup/memory`.
    NoCgroupV1Memory,
    /// The memory cgroup hierarchy exists but cannot be written (read-only, a container).
    CgroupNotWritable,
    /// `swapon` refused with EPERM (a container without the host's CAP_SYS_ADMIN).
    SwaponRefused,
    /// The bench directory's file system cannot hold a swap file (EINVAL from swapon).
    SwapUnsupportedFs,
    /// Too little free space in the bench directory for the swap file.
    NoSpace,
}

/// Formats a byte count the way `ByteSize` does (e.g. `512MiB`, `1.5GiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if b >= size {
            let v = b as f64 / size as f64;
            return if b.is_multiple_of(size) { format!("{}{unit}", b / size) } else { format!("{v:.2}{unit}") };
        }
    }
    format!("{b}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(4 << 30), "4GiB");
        assert_eq!(human_bytes(3 << 29), "1.50GiB");
        assert_eq!(human_bytes(64 << 20), "64MiB");
        assert_eq!(human_bytes(100), "100B");
    }

    #[test]
    fn unavailable_display_names_the_remedy() {
        let u = Unavailable { kind: UnavailableKind::NotRoot, reason: "not root".into(), remedy: "run as root".into() };
        assert_eq!(u.to_string(), "not root; run as root");
        assert_eq!(serde_json::to_value(u.kind).unwrap(), "not-root");
    }
}
