//! Sequential scan: each thread walks its pages in order, several times.

use crate::pattern::{Access, AccessPattern};

/// Pages `0, 1, …, pages-1`, repeated `passes` times.
#[derive(Debug)]
pub struct ScanPattern {
    pages: usize,
    next: u64,
    total: u64,
}

impl ScanPattern {
    /// `passes` sequential passes over `0..pages`.
    pub fn new(pages: usize, passes: u32) -> Self {
        Self { pages, next: 0, total: pages as u64 * u64::from(passes) }
    }
}

impl AccessPattern for ScanPattern {
    fn total(&self) -> u64 {
        self.total
    }

    fn next_access(&mut self) -> Option<Access> {
        if self.next >= self.total {
            return None;
        }
        let page = (self.next % self.pages as u64) as usize;
        self.next += 1;
        Some(Access { page, phase: 0, write: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_pages_in_order() {
        let mut p = ScanPattern::new(5, 3);
        let pages: Vec<usize> = std::iter::from_fn(|| p.next_access().map(|a| a.page)).collect();
        assert_eq!(pages, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
    }
}
