//! `readahead`: the Linux kernel's readahead, applied to guest page faults.
//!
//! A fault that continues the previous window (the page right after the last fault, or one
//! inside the window) is sequential: the window doubles, up to the maximum, and the pages after
//! the fault are read ahead. When the guest first touches the page that starts the second half
//! of the window (the kernel's `PG_readahead` mark), the next window is read ahead
//! asynchronously, so a steady sequential reader never faults. A fault anywhere else is random:
//! the window collapses to nothing until a sequence starts again.

use super::{Prefetcher, push_run};

/// Initial window once a sequence is seen.
const INITIAL: u64 = 4;

/// Kernel-style sequential readahead.
#[derive(Debug)]
pub struct Readahead {
    max: u64,
    /// Last page of the current window (or the last fault, with no window).
    last: Option<u64>,
    /// Pages in the current window.
    size: u64,
    /// The page whose first use triggers the next window.
    mark: Option<u64>,
}

impl Readahead {
    /// A readahead window of at most `max` pages.
    pub fn new(max: u64) -> Self {
        Self { max, last: None, size: 0, mark: None }
    }

    fn issue(&mut self, after: u64, out: &mut Vec<u64>) {
        push_run(out, after, 1, self.size);
        self.last = Some(after + self.size);
        self.mark = Some(after + self.size / 2 + 1);
    }
}

impl Prefetcher for Readahead {
    fn name(&self) -> &'static str {
        "readahead"
    }

    fn on_fault(&mut self, page: u64, out: &mut Vec<u64>) {
        let window_start = self.last.map(|l| l.saturating_sub(self.size));
        let sequential = match (self.last, window_start) {
            (Some(last), Some(start)) => page == last + 1 || (page > start && page <= last),
            _ => false,
        };
        if sequential {
            self.size = (self.size * 2).clamp(INITIAL, self.max);
            self.issue(page, out);
        } else {
            self.size = 0;
            self.last = Some(page);
            self.mark = None;
        }
    }

    fn on_use(&mut self, page: u64, out: &mut Vec<u64>) {
        if self.mark == Some(page) {
            let last = self.last.unwrap_or(page);
            self.size = (self.size * 2).clamp(INITIAL, self.max);
            self.issue(last, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::replay;

    #[test]
    fn a_sequential_reader_stops_faulting() {
        let seq: Vec<u64> = (1000..3000).collect();
        let (avoided, issued) = replay(&mut Readahead::new(64), &seq);
        assert!(avoided >= seq.len() - 10, "only {avoided} of {} faults avoided", seq.len());
        assert!(issued <= seq.len() + 64, "issued {issued}: no more than the sequence plus one window");
    }

    #[test]
    fn random_faults_issue_nothing() {
        let mut rng = 12345u64;
        let seq: Vec<u64> = (0..2000)
            .map(|_| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (rng >> 33) % 1_000_000
            })
            .collect();
        let (_, issued) = replay(&mut Readahead::new(64), &seq);
        assert!(issued < 20, "issued {issued} pages on random faults");
    }

    #[test]
    fn the_window_doubles_up_to_the_maximum() {
        let mut r = Readahead::new(16);
        let mut out = Vec::new();
        r.on_fault(10, &mut out);
        assert!(out.is_empty());
        r.on_fault(11, &mut out);
        assert_eq!(out, vec![12, 13, 14, 15]);
        out.clear();
        r.on_use(14, &mut out); // the mark: second half of the window
        assert_eq!(out, (16..24).collect::<Vec<_>>());
        out.clear();
        r.on_use(20, &mut out);
        assert_eq!(out, (24..40).collect::<Vec<_>>());
        out.clear();
        r.on_use(32, &mut out);
        assert_eq!(out.len(), 16, "capped at the maximum");
    }
}
