//! Strided sweep: each thread walks its pages `stride` apart, several times.

use crate::pattern::{Access, AccessPattern};
use crate::scan::ScanPattern;

/// Per pass, pages `0, k, 2k, …`, then `1, 1+k, 1+2k, …`, up to `k-1, 2k-1, …`: every page of
/// `0..pages` once, each step `k` pages after the previous one except where a sweep restarts.
/// Repeated `passes` times: the `j`-th access of a scan's pass becomes the `j`-th page of this
/// order.
#[derive(Debug)]
pub struct StridePattern {
    scan: ScanPattern,
    stride: usize,
    /// Sweeps `0..long` have `per_sweep + 1` pages, the others `per_sweep`.
    per_sweep: usize,
    long: usize,
}

impl StridePattern {
    /// `passes` strided passes over `0..pages` with a stride of `stride` (≥ 1) pages.
    pub fn new(pages: usize, stride: u32, passes: u32) -> Self {
        let stride = (stride.max(1) as usize).min(pages.max(1));
        Self { scan: ScanPattern::new(pages, passes), stride, per_sweep: pages / stride, long: pages % stride }
    }

    /// The page at position `j` of a pass.
    fn page_at(&self, j: usize) -> usize {
        let in_long = self.long * (self.per_sweep + 1);
        let (sweep, i) = if j < in_long {
            (j / (self.per_sweep + 1), j % (self.per_sweep + 1))
        } else {
            (self.long + (j - in_long) / self.per_sweep, (j - in_long) % self.per_sweep)
        };
        sweep + i * self.stride
    }
}

impl AccessPattern for StridePattern {
    fn total(&self) -> u64 {
        self.scan.total()
    }

    fn next_access(&mut self) -> Option<Access> {
        let a = self.scan.next_access()?;
        Some(Access { page: self.page_at(a.page), ..a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(mut p: StridePattern) -> Vec<usize> {
        std::iter::from_fn(|| p.next_access().map(|a| a.page)).collect()
    }

    #[test]
    fn sweeps_every_page_once_per_pass() {
        assert_eq!(pages(StridePattern::new(7, 3, 2)), [0, 3, 6, 1, 4, 2, 5, 0, 3, 6, 1, 4, 2, 5]);
        // Stride 1 is a scan; a stride wider than the pages visits them in order too.
        assert_eq!(pages(StridePattern::new(4, 1, 1)), [0, 1, 2, 3]);
        assert_eq!(pages(StridePattern::new(3, 10, 2)), [0, 1, 2, 0, 1, 2]);
        let p = pages(StridePattern::new(1000, 3, 1));
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert!(p.windows(2).filter(|w| w[1] != w[0] + 3).count() == 2, "two sweep restarts");
    }
}
