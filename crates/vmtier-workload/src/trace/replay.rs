//! A trace replayed by the in-process guest.
//!
//! The guest splits its pages between threads, each owning a contiguous range; thread `t`
//! replays, in trace order, the accesses that fall in its range (with one thread, the whole
//! trace). Each access reads and verifies the page and, if the trace says it writes, writes the
//! page's next version — the trace decides, not `write_fraction`.

use std::ops::Range;
use std::sync::Arc;

use super::PageTrace;
use crate::pattern::{Access, AccessPattern};

/// The accesses of a trace to one page range, as local page indices. See the [module docs](self).
#[derive(Debug)]
pub struct TracePattern {
    trace: Arc<PageTrace>,
    range: Range<u32>,
    pos: usize,
    total: u64,
}

impl TracePattern {
    /// The accesses of `trace` to pages `range` (local page `i` is trace page `range.start + i`).
    pub fn new(trace: Arc<PageTrace>, range: Range<usize>) -> Self {
        let range = range.start.min(u32::MAX as usize) as u32..range.end.min(u32::MAX as usize) as u32;
        let total = if range.start == 0 && range.end >= trace.footprint_pages() {
            trace.len() as u64
        } else {
            trace.accesses().filter(|a| range.contains(&a.page)).count() as u64
        };
        Self { trace, range, pos: 0, total }
    }
}

impl AccessPattern for TracePattern {
    fn total(&self) -> u64 {
        self.total
    }

    fn next_access(&mut self) -> Option<Access> {
        let packed = self.trace.packed();
        while let Some(&e) = packed.get(self.pos) {
            self.pos += 1;
            let page = e >> 1;
            if self.range.contains(&page) {
                return Some(Access { page: (page - self.range.start) as usize, phase: 0, write: Some(e & 1 == 1) });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceAccess;

    #[test]
    fn threads_replay_their_part_in_order() {
        let acc = [(3, true), (0, false), (5, false), (1, true), (4, true), (2, false)];
        let t = PageTrace::from_accesses("t", 6, acc.iter().map(|&(page, write)| TraceAccess { page, write })).unwrap();
        let t = Arc::new(t);
        let drain = |mut p: TracePattern| {
            let total = p.total();
            let v: Vec<(usize, Option<bool>)> =
                std::iter::from_fn(|| p.next_access().map(|a| (a.page, a.write))).collect();
            assert_eq!(v.len() as u64, total);
            v
        };
        assert_eq!(
            drain(TracePattern::new(Arc::clone(&t), 0..3)),
            [(0, Some(false)), (1, Some(true)), (2, Some(false))]
        );
        assert_eq!(
            drain(TracePattern::new(Arc::clone(&t), 3..6)),
            [(0, Some(true)), (2, Some(false)), (1, Some(true))]
        );
        assert_eq!(drain(TracePattern::new(t, 0..6)).len(), 6);
    }
}
