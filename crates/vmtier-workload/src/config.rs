//! Workload configuration and its validation.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::WorkloadError;
use crate::verify::WORDS_PER_PAGE;

/// Default Zipf skew (YCSB's).
pub const DEFAULT_SKEW: f64 = 0.99;
/// Default number of sequential passes of `scan` (and of strided passes of `stride`).
pub const DEFAULT_PASSES: u32 = 3;
/// Default stride of `stride`, in pages.
pub const DEFAULT_STRIDE: u32 = 3;
/// Default hot-set size of `phases`, as a fraction of the pages.
pub const DEFAULT_HOT_FRACTION: f64 = 0.1;
/// Default number of phases of `phases`.
pub const DEFAULT_PHASES: u32 = 4;

fn default_skew() -> f64 {
    DEFAULT_SKEW
}
fn default_passes() -> u32 {
    DEFAULT_PASSES
}
fn default_stride() -> u32 {
    DEFAULT_STRIDE
}
fn default_hot_fraction() -> f64 {
    DEFAULT_HOT_FRACTION
}
fn default_phases() -> u32 {
    DEFAULT_PHASES
}

/// Which access pattern the guest runs.
///
/// Parsed from `zipf`, `scan`, `stride`, `uniform`, `phases` (defaults), or with parameters:
/// `zipf:1.2` (skew), `scan:5` (passes), `stride:4:2` (stride, passes), `phases:0.2:8` (hot
/// fraction, phases), and `trace:FILE`. `Display` prints the bare name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Page popularity follows Zipf(`skew`); hot pages are scattered over the region.
    Zipf {
        /// Exponent `s` > 0; 0.99 is YCSB's default.
        #[serde(default = "default_skew")]
        skew: f64,
    },
    /// Each thread walks its pages in order, `passes` times.
    Scan {
        /// Number of full passes; the access count is `passes × pages`.
        #[serde(default = "default_passes")]
        passes: u32,
    },
    /// Each thread sweeps its pages `stride` apart (`0, k, 2k, …`, then `1, 1+k, …`), every
    /// page once per pass, `passes` times. The in-process guest only.
    Stride {
        /// Pages between consecutive accesses (≥ 1; 1 is a scan).
        #[serde(default = "default_stride")]
        stride: u32,
        /// Number of full passes; the access count is `passes × pages`.
        #[serde(default = "default_passes")]
        passes: u32,
    },
    /// Every page equally likely.
    Uniform,
    /// A hot set that moves to a different region each phase.
    Phases {
        /// Hot-set size as a fraction of the pages, in (0, 1].
        #[serde(default = "default_hot_fraction")]
        hot_fraction: f64,
        /// Number of phases (≥ 1); the accesses are split evenly between them.
        #[serde(default = "default_phases")]
        phases: u32,
    },
    /// Replays a recorded page trace over its footprint (the first `footprint` pages): a
    /// binary trace from `vmtier trace import`, or valgrind lackey output (plain or `.gz`)
    /// imported on load. See [`crate::trace`].
    Trace {
        /// The trace file.
        path: PathBuf,
    },
}

impl WorkloadKind {
    /// The names of the generated patterns, each accepted by `FromStr` alone (`trace` needs a
    /// file: `trace:FILE`).
    pub const NAMES: [&'static str; 5] = ["zipf", "scan", "stride", "uniform", "phases"];

    /// Zipf with the default skew.
    pub fn zipf() -> Self {
        WorkloadKind::Zipf { skew: DEFAULT_SKEW }
    }

    /// Scan with the default number of passes.
    pub fn scan() -> Self {
        WorkloadKind::Scan { passes: DEFAULT_PASSES }
    }

    /// Stride with the default stride and number of passes.
    pub fn stride() -> Self {
        WorkloadKind::Stride { stride: DEFAULT_STRIDE, passes: DEFAULT_PASSES }
    }

    /// Phases with the default hot fraction and phase count.
    pub fn phases() -> Self {
        WorkloadKind::Phases { hot_fraction: DEFAULT_HOT_FRACTION, phases: DEFAULT_PHASES }
    }

    /// The bare name: `zipf`, `scan`, `stride`, `uniform`, `phases` or `trace`.
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadKind::Zipf { .. } => "zipf",
            WorkloadKind::Scan { .. } => "scan",
            WorkloadKind::Stride { .. } => "stride",
            WorkloadKind::Uniform => "uniform",
            WorkloadKind::Phases { .. } => "phases",
            WorkloadKind::Trace { .. } => "trace",
        }
    }

    /// Number of phases the access stage reports throughput for.
    pub fn phase_count(&self) -> usize {
        match self {
            WorkloadKind::Phases { phases, .. } => (*phases).max(1) as usize,
            _ => 1,
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        match *self {
            WorkloadKind::Zipf { skew } if !(skew.is_finite() && skew > 0.0) => {
                Err(config_err("zipf skew", skew, "a finite number > 0"))
            }
            WorkloadKind::Scan { passes: 0 } => Err(config_err("scan passes", 0, "≥ 1")),
            WorkloadKind::Stride { stride: 0, .. } => Err(config_err("stride pages", 0, "≥ 1")),
            WorkloadKind::Stride { passes: 0, .. } => Err(config_err("stride passes", 0, "≥ 1")),
            WorkloadKind::Phases { hot_fraction, .. } if !(hot_fraction > 0.0 && hot_fraction <= 1.0) => {
                Err(config_err("phases hot fraction", hot_fraction, "in (0, 1]"))
            }
            WorkloadKind::Phases { phases: 0, .. } => Err(config_err("phases count", 0, "≥ 1")),
            WorkloadKind::Trace { ref path } if path.as_os_str().is_empty() => {
                Err(config_err("trace file", "\"\"", "a page trace or lackey file"))
            }
            _ => Ok(()),
        }
    }
}

impl Default for WorkloadKind {
    fn default() -> Self {
        Self::zipf()
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WorkloadKind {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            config_err(
                "workload",
                s,
                "zipf[:SKEW], scan[:PASSES], stride[:PAGES[:PASSES]], uniform, phases[:HOT_FRACTION[:PHASES]], \
                 trace:FILE",
            )
        };
        if let Some(path) = s.trim_start().strip_prefix("trace:") {
            let kind = WorkloadKind::Trace { path: PathBuf::from(path) };
            kind.validate()?;
            return Ok(kind);
        }
        let mut parts = s.trim().split(':');
        let name = parts.next().unwrap_or_default().to_ascii_lowercase();
        let args: Vec<&str> = parts.collect();
        let num = |i: usize| -> Result<Option<f64>, WorkloadError> {
            args.get(i).map(|a| a.trim().parse::<f64>().map_err(|_| bad())).transpose()
        };
        let int = |i: usize| -> Result<Option<u32>, WorkloadError> {
            args.get(i).map(|a| a.trim().parse::<u32>().map_err(|_| bad())).transpose()
        };
        let (kind, max_args) = match name.as_str() {
            "zipf" => (WorkloadKind::Zipf { skew: num(0)?.unwrap_or(DEFAULT_SKEW) }, 1),
            "scan" => (WorkloadKind::Scan { passes: int(0)?.unwrap_or(DEFAULT_PASSES) }, 1),
            "stride" => (
                WorkloadKind::Stride {
                    stride: int(0)?.unwrap_or(DEFAULT_STRIDE),
                    passes: int(1)?.unwrap_or(DEFAULT_PASSES),
                },
                2,
            ),
            "uniform" => (WorkloadKind::Uniform, 0),
            "phases" => (
                WorkloadKind::Phases {
                    hot_fraction: num(0)?.unwrap_or(DEFAULT_HOT_FRACTION),
                    phases: int(1)?.unwrap_or(DEFAULT_PHASES),
                },
                2,
            ),
            _ => return Err(bad()),
        };
        if args.len() > max_args {
            return Err(bad());
        }
        kind.validate()?;
        Ok(kind)
    }
}

/// Configuration of one guest run. `Default` works out of the box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadConfig {
    /// The access pattern.
    pub kind: WorkloadKind,
    /// Total page accesses of the access stage, over all threads (ignored by `scan`, whose
    /// count is `passes × pages`, likewise `stride`, and by `trace`, which replays the whole
    /// trace once).
    pub accesses: u64,
    /// Worker threads (≥ 1, at most one per page). Each owns a contiguous range of pages.
    pub threads: usize,
    /// Seed of every random choice; a run is reproducible from it.
    pub seed: u64,
    /// Write every page once before the access stage, like a guest allocating its data.
    pub populate: bool,
    /// Fraction of accesses that write a new version after verifying (1.0 = every access is
    /// a read-modify-write, 0.0 = read-only verification).
    pub write_fraction: f64,
    /// Re-read every touched page once after the access stage.
    pub final_check: bool,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            kind: WorkloadKind::default(),
            accesses: 1_000_000,
            threads: 1,
            seed: 0x766d_7469_6572, // "vmtier"
            populate: true,
            write_fraction: 1.0,
            final_check: true,
        }
    }
}

impl WorkloadConfig {
    /// Checks the configuration against a region of `region_words` 64-bit words.
    /// Returns the number of pages in the region.
    pub fn validate(&self, region_words: usize) -> Result<usize, WorkloadError> {
        let pages = region_pages(region_words)?;
        self.kind.validate()?;
        if self.threads == 0 || self.threads > pages {
            return Err(config_err(
                "thread count",
                self.threads,
                &format!("1..={pages} (at most one thread per page)"),
            ));
        }
        if !(0.0..=1.0).contains(&self.write_fraction) {
            return Err(config_err("write fraction", self.write_fraction, "in [0, 1]"));
        }
        Ok(pages)
    }
}

/// The number of pages in a region of `words` words, or an error if it is empty or not a
/// whole number of pages.
pub fn region_pages(words: usize) -> Result<usize, WorkloadError> {
    if words == 0 || !words.is_multiple_of(WORDS_PER_PAGE) {
        return Err(config_err(
            "region length (words)",
            words,
            &format!("a non-zero multiple of {WORDS_PER_PAGE} (one 4 KiB page)"),
        ));
    }
    let pages = words / WORDS_PER_PAGE;
    if pages > u32::MAX as usize {
        return Err(config_err("region pages", pages, "at most 2^32 - 1"));
    }
    Ok(pages)
}

pub(crate) fn config_err(what: &'static str, value: impl fmt::Display, allowed: &str) -> WorkloadError {
    WorkloadError::Config { what, value: value.to_string(), allowed: allowed.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_and_params() {
        assert_eq!("zipf".parse::<WorkloadKind>().unwrap(), WorkloadKind::zipf());
        assert_eq!("scan".parse::<WorkloadKind>().unwrap(), WorkloadKind::scan());
        assert_eq!("uniform".parse::<WorkloadKind>().unwrap(), WorkloadKind::Uniform);
        assert_eq!("stride".parse::<WorkloadKind>().unwrap(), WorkloadKind::stride());
        assert_eq!("stride:5".parse::<WorkloadKind>().unwrap(), WorkloadKind::Stride { stride: 5, passes: 3 });
        assert_eq!("stride:2:1".parse::<WorkloadKind>().unwrap(), WorkloadKind::Stride { stride: 2, passes: 1 });
        assert_eq!("phases".parse::<WorkloadKind>().unwrap(), WorkloadKind::phases());
        assert_eq!("zipf:1.2".parse::<WorkloadKind>().unwrap(), WorkloadKind::Zipf { skew: 1.2 });
        assert_eq!(
            "phases:0.2:8".parse::<WorkloadKind>().unwrap(),
            WorkloadKind::Phases { hot_fraction: 0.2, phases: 8 }
        );
        assert_eq!(
            "trace:/tmp/a:b.vmtrace".parse::<WorkloadKind>().unwrap(),
            WorkloadKind::Trace { path: "/tmp/a:b.vmtrace".into() }
        );
        assert_eq!("trace:x".parse::<WorkloadKind>().unwrap().to_string(), "trace");
        for bad in [
            "",
            "lru",
            "zipf:0",
            "zipf:x",
            "scan:0",
            "stride:0",
            "stride:3:0",
            "stride:1:1:1",
            "phases:1.5",
            "uniform:3",
            "trace",
            "trace:",
        ] {
            assert!(bad.parse::<WorkloadKind>().is_err(), "{bad}");
        }
        for name in WorkloadKind::NAMES {
            assert_eq!(name.parse::<WorkloadKind>().unwrap().to_string(), name);
        }
    }

    #[test]
    fn validation() {
        let cfg = WorkloadConfig::default();
        assert_eq!(cfg.validate(4 * WORDS_PER_PAGE).unwrap(), 4);
        assert!(cfg.validate(0).is_err());
        assert!(cfg.validate(WORDS_PER_PAGE + 1).is_err());
        let zero_threads = WorkloadConfig { threads: 0, ..WorkloadConfig::default() };
        assert!(zero_threads.validate(WORDS_PER_PAGE).is_err());
        let too_many = WorkloadConfig { threads: 5, ..WorkloadConfig::default() };
        assert!(too_many.validate(4 * WORDS_PER_PAGE).is_err());
        let skew = WorkloadConfig { kind: WorkloadKind::Zipf { skew: 0.0 }, ..WorkloadConfig::default() };
        let err = skew.validate(WORDS_PER_PAGE).unwrap_err();
        assert!(err.to_string().contains("zipf skew"), "{err}");
        let hot =
            WorkloadConfig { kind: WorkloadKind::Phases { hot_fraction: 0.0, phases: 2 }, ..WorkloadConfig::default() };
        assert!(hot.validate(WORDS_PER_PAGE).is_err());
        let wf = WorkloadConfig { write_fraction: 1.5, ..WorkloadConfig::default() };
        assert!(wf.validate(WORDS_PER_PAGE).is_err());
    }
}
