//! vmtier-workload: an in-process guest that touches a guest-memory region with realistic
//! access patterns and verifies every byte it reads.
//!
//! The region is a `&[AtomicU64]` (in vmtier, the words of a userfaultfd-registered memfd;
//! any access may block in a page fault). Each page has a version kept in the guest's private
//! memory; its content is a function of (page, version, word) — see [`verify`] — and version 0
//! means all zeros. An access reads and verifies all 512 words of the page, then (for a write
//! access) writes the next version. Any corruption, loss, stale copy or misplacement of a page
//! by the tiering engine is therefore reported as [`WorkloadError::Mismatch`] naming the page.
//!
//! Besides generated patterns, the guest replays page traces of real programs ([`trace`]:
//! valgrind lackey import, a compact binary format, statistics).
//!
//! ```
//! use std::sync::atomic::AtomicU64;
//! use vmtier_workload::{run, Progress, WorkloadConfig, WorkloadKind, WORDS_PER_PAGE};
//!
//! let mem: Vec<AtomicU64> = (0..64 * WORDS_PER_PAGE).map(|_| AtomicU64::new(0)).collect();
//! let cfg = WorkloadConfig { kind: WorkloadKind::zipf(), accesses: 1000, threads: 2, ..Default::default() };
//! let report = run(&mem, &cfg, &Progress::new()).unwrap();
//! assert!(report.verified);
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod content;
pub mod error;
pub mod guest;
pub mod pattern;
pub mod phases;
pub mod progress;
pub mod report;
pub mod rng;
pub mod scan;
pub mod stride;
pub mod trace;
pub mod uniform;
pub mod verify;
pub mod zipf;

pub use config::{WorkloadConfig, WorkloadKind, region_pages};
pub use error::WorkloadError;
pub use guest::{Guest, run};
pub use pattern::{Access, AccessPattern};
pub use progress::{Phase, Progress};
pub use report::WorkloadReport;
pub use trace::{PageTrace, TraceAccess, TraceError};
pub use verify::{PAGE_SIZE, WORDS_PER_PAGE, verify_all};
pub use zipf::ZipfSampler;
