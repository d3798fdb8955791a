//! Uniform access: every page equally likely.

use crate::pattern::{Access, AccessPattern};
use crate::rng::Xoshiro256;

/// Uniformly random pages.
#[derive(Debug)]
pub struct UniformPattern {
    pages: u64,
    remaining: u64,
    total: u64,
    rng: Xoshiro256,
}

impl UniformPattern {
    /// `accesses` uniform accesses over `0..pages`.
    pub fn new(pages: usize, accesses: u64, seed: u64) -> Self {
        assert!(pages > 0, "uniform pattern over zero pages");
        Self { pages: pages as u64, remaining: accesses, total: accesses, rng: Xoshiro256::new(seed) }
    }
}

impl AccessPattern for UniformPattern {
    fn total(&self) -> u64 {
        self.total
    }

    fn next_access(&mut self) -> Option<Access> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        Some(Access { page: self.rng.below(self.pages) as usize, phase: 0, write: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_all_pages_evenly() {
        let mut p = UniformPattern::new(16, 160_000, 1);
        let mut counts = [0u32; 16];
        while let Some(a) = p.next_access() {
            counts[a.page] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
    }
}
