//! `none`: the baseline that never prefetches.

use super::Prefetcher;

/// Predicts nothing.
#[derive(Debug, Default)]
pub struct NoPrefetch;

impl Prefetcher for NoPrefetch {
    fn name(&self) -> &'static str {
        "none"
    }

    fn on_fault(&mut self, _page: u64, _out: &mut Vec<u64>) {}
}
