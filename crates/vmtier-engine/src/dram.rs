//! Tier 1: the DRAM budget, a hard cap on resident guest pages.
//!
//! Every install of a page into guest memory (fault, promotion, prefetch) first reserves a frame
//! here with a compare-and-swap, so the cap holds under any number of concurrent faults; every
//! removal (`PUNCH_HOLE`) releases one. The peak is recorded for the report.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The DRAM budget in pages.
#[derive(Debug)]
pub struct DramBudget {
    cap: usize,
    resident: AtomicUsize,
    peak: AtomicUsize,
}

impl DramBudget {
    /// A budget of `cap` pages, none used.
    pub fn new(cap: usize) -> Self {
        Self { cap, resident: AtomicUsize::new(0), peak: AtomicUsize::new(0) }
    }

    /// Reserves one frame; false if the budget is full.
    pub fn try_reserve(&self) -> bool {
        let ok = self
            .resident
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| (r < self.cap).then_some(r + 1))
            .is_ok();
        if ok {
            self.peak.fetch_max(self.resident.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        ok
    }

    /// Returns `n` frames.
    pub fn release(&self, n: usize) {
        let prev = self.resident.fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "DRAM budget released more frames than reserved");
    }

    /// The cap in pages.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Pages resident now.
    pub fn resident(&self) -> usize {
        self.resident.load(Ordering::Acquire)
    }

    /// Free frames now.
    pub fn free(&self) -> usize {
        self.cap.saturating_sub(self.resident())
    }

    /// Highest number of resident pages seen.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn cap_holds_under_contention() {
        let b = Arc::new(DramBudget::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let mut got = 0;
                    for i in 0..100_000 {
                        if b.try_reserve() {
                            got += 1;
                            assert!(b.resident() <= 1000);
                        }
                        if i % 3 == 0 && got > 0 {
                            b.release(1);
                            got -= 1;
                        }
                    }
                    got
                })
            })
            .collect();
        let held: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(b.resident(), held);
        assert!(b.peak() <= 1000);
    }
}
