//! Predictive prefetching: predictors that turn the stream of demand faults (and uses of pages
//! they prefetched) into pages to bring into DRAM before the guest touches them.
//!
//! A [`Prefetcher`] only predicts. The fault handlers feed it and queue its predictions; one
//! prefetch thread ([`worker`]) installs them asynchronously. See `docs/prefetch.md`.
//!
//! | predictor | file | idea |
//! |---|---|---|
//! | `none` | [`none`] | never prefetches (the baseline) |
//! | `readahead` | [`readahead`] | the kernel's: a sequential window that doubles while the guest keeps reading into it and collapses on a random fault |
//! | `stride` | [`stride`] | a constant distance between consecutive faults, confirmed twice |
//! | `leap` | [`leap`] | Leap (ATC 2020): the majority delta of recent faults over a growing window, prefetch depth adapted to hits |
//! | `history` | [`history`] | vmtier's: concurrent sequential streams followed separately, then a stride, then a successor table learned from the access order, followed as a chain |

pub mod history;
pub mod leap;
pub mod none;
pub mod readahead;
pub mod streams;
pub mod stride;
pub(crate) mod worker;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A predictor of the pages the guest will touch next.
///
/// Both callbacks push predicted page numbers to `out`, most urgent first; the caller drops
/// pages that are already resident, already queued, never written (zero pages cost no I/O) or
/// outside guest memory, so a predictor need not check.
pub trait Prefetcher: Send + fmt::Debug {
    /// The name used in configs and reports.
    fn name(&self) -> &'static str;

    /// The guest faulted on `page` (it was not in DRAM).
    fn on_fault(&mut self, page: u64, out: &mut Vec<u64>);

    /// Bytes of tables the predictor keeps (for the metadata report).
    fn table_bytes(&self) -> usize {
        0
    }

    /// The guest touched `page` for the first time since this prefetcher had it brought in.
    fn on_use(&mut self, page: u64, out: &mut Vec<u64>) {
        let _ = (page, out);
    }
}

/// Which predictor runs (`[engine.prefetch] kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefetcherKind {
    /// No prefetching.
    #[default]
    None,
    /// Kernel-style sequential readahead.
    Readahead,
    /// Constant-stride detection.
    Stride,
    /// Leap's majority-trend detection.
    Leap,
    /// vmtier's successor-history predictor.
    History,
}

impl PrefetcherKind {
    /// Every kind, baseline first.
    pub const ALL: [PrefetcherKind; 5] = [Self::None, Self::Readahead, Self::Stride, Self::Leap, Self::History];

    /// The config and report name.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Readahead => "readahead",
            Self::Stride => "stride",
            Self::Leap => "leap",
            Self::History => "history",
        }
    }

    /// A fresh predictor of this kind for a guest of `pages` pages, prefetching at most
    /// `max_window` pages ahead.
    pub fn build(self, pages: u64, max_window: usize) -> Box<dyn Prefetcher> {
        let max = max_window.max(1) as u64;
        match self {
            Self::None => Box::new(none::NoPrefetch),
            Self::Readahead => Box::new(readahead::Readahead::new(max)),
            Self::Stride => Box::new(stride::Stride::new(max)),
            Self::Leap => Box::new(leap::Leap::new(max)),
            Self::History => Box::new(history::History::new(pages, max)),
        }
    }
}

impl fmt::Display for PrefetcherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PrefetcherKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|k| k.name()).collect();
            format!("unknown prefetcher \"{s}\": expected one of {}", names.join(", "))
        })
    }
}

/// Pushes `start + step·i` for `i` in `1..=n`, stopping at the ends of the page range.
pub(crate) fn push_run(out: &mut Vec<u64>, start: u64, step: i64, n: u64) {
    let mut p = start as i64;
    for _ in 0..n {
        p += step;
        if p < 0 {
            break;
        }
        out.push(p as u64);
    }
}

/// The timing-free replay of a fault sequence (tests, and the figures docs/prefetch.md quotes):
/// feeds `faults` one by one to `p`; a prediction the rest of the sequence touches counts as used
/// there (every prediction arrives in time), so each such touch is a fault avoided. Returns
/// (faults avoided, pages issued).
pub fn replay(p: &mut dyn Prefetcher, faults: &[u64]) -> (usize, usize) {
    let mut inflight = std::collections::HashSet::new();
    let mut out = Vec::new();
    let (mut avoided, mut issued) = (0, 0);
    for &a in faults {
        out.clear();
        if inflight.remove(&a) {
            avoided += 1;
            p.on_use(a, &mut out);
        } else {
            p.on_fault(a, &mut out);
        }
        issued += out.iter().filter(|&&q| inflight.insert(q)).count();
    }
    (avoided, issued)
}
