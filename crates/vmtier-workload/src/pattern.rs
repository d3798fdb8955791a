//! The access-pattern trait and the factory for [`WorkloadKind`].
//!
//! A pattern produces page indices *local* to one thread's range (`0..pages`); the guest adds
//! the range's first page. Implementations: [`ZipfPattern`](crate::zipf::ZipfPattern),
//! [`ScanPattern`](crate::scan::ScanPattern), [`StridePattern`](crate::stride::StridePattern),
//! [`UniformPattern`](crate::uniform::UniformPattern),
//! [`PhasesPattern`](crate::phases::PhasesPattern), and [`TracePattern`](crate::trace::TracePattern)
//! replaying a recorded trace.

use std::fmt;

use crate::config::WorkloadKind;
use crate::phases::PhasesPattern;
use crate::scan::ScanPattern;
use crate::stride::StridePattern;
use crate::uniform::UniformPattern;
use crate::zipf::ZipfPattern;

/// One page access produced by a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Page index local to the thread's range.
    pub page: usize,
    /// Phase the access belongs to (always 0 except for `phases`).
    pub phase: usize,
    /// Whether the access writes, when the pattern decides (a trace); `None` lets the guest
    /// decide by its `write_fraction`.
    pub write: Option<bool>,
}

/// A finite, deterministic sequence of page accesses over `0..pages`.
pub trait AccessPattern: Send + fmt::Debug {
    /// How many accesses the pattern yields in total.
    fn total(&self) -> u64;

    /// The next access, or `None` once [`total`](Self::total) accesses were produced.
    fn next_access(&mut self) -> Option<Access>;
}

/// How many accesses a thread owning `pages` pages makes when asked for `accesses`
/// (`scan` and `stride` ignore `accesses` and make `passes × pages`; a `trace` makes as many as the trace
/// has in the thread's range, which only [`TracePattern`](crate::trace::TracePattern) knows).
pub fn planned_accesses(kind: &WorkloadKind, pages: usize, accesses: u64) -> u64 {
    match *kind {
        WorkloadKind::Scan { passes } | WorkloadKind::Stride { passes, .. } => u64::from(passes) * pages as u64,
        _ => accesses,
    }
}

/// Builds the pattern of a generated `kind` for one thread owning `pages` pages (`pages` ≥ 1);
/// `None` for `trace`, which replays a loaded file through
/// [`TracePattern`](crate::trace::TracePattern).
pub fn build(kind: &WorkloadKind, pages: usize, accesses: u64, seed: u64) -> Option<Box<dyn AccessPattern>> {
    Some(match *kind {
        WorkloadKind::Zipf { skew } => Box::new(ZipfPattern::new(pages, skew, accesses, seed)),
        WorkloadKind::Scan { passes } => Box::new(ScanPattern::new(pages, passes)),
        WorkloadKind::Stride { stride, passes } => Box::new(StridePattern::new(pages, stride, passes)),
        WorkloadKind::Uniform => Box::new(UniformPattern::new(pages, accesses, seed)),
        WorkloadKind::Phases { hot_fraction, phases } => {
            Box::new(PhasesPattern::new(pages, hot_fraction, phases, accesses, seed))
        }
        WorkloadKind::Trace { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_yields_total_in_range_accesses() {
        for kind in [
            WorkloadKind::zipf(),
            WorkloadKind::scan(),
            WorkloadKind::stride(),
            WorkloadKind::Uniform,
            WorkloadKind::phases(),
        ] {
            let mut p = build(&kind, 37, 1000, 5).unwrap();
            let total = planned_accesses(&kind, 37, 1000);
            assert_eq!(p.total(), total, "{kind}");
            let mut n = 0;
            while let Some(a) = p.next_access() {
                assert!(a.page < 37, "{kind}: {a:?}");
                assert!(a.phase < kind.phase_count(), "{kind}: {a:?}");
                assert_eq!(a.write, None, "{kind}: generated patterns leave writes to the guest");
                n += 1;
            }
            assert_eq!(n, total, "{kind}");
            assert_eq!(p.next_access(), None);
        }
    }
}
