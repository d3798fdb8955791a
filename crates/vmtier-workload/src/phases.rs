//! Phase-shifting working set: a hot set that moves to a different region each phase.
//!
//! The accesses are split evenly into `phases` phases. In phase `k` the hot set is the
//! contiguous window of `ceil(hot_fraction × pages)` pages starting at `k × pages / phases`
//! (wrapping around), like a program moving on to a new data structure. A fraction
//! [`HOT_ACCESS_PROBABILITY`] of accesses hit the hot set uniformly; the rest are uniform over
//! all pages.

use crate::pattern::{Access, AccessPattern};
use crate::rng::Xoshiro256;

/// Probability that an access goes to the current hot set.
pub const HOT_ACCESS_PROBABILITY: f64 = 0.9;

/// A hot set that moves each phase.
#[derive(Debug)]
pub struct PhasesPattern {
    pages: usize,
    hot: usize,
    phases: u32,
    next: u64,
    total: u64,
    rng: Xoshiro256,
}

impl PhasesPattern {
    /// `accesses` accesses over `0..pages` split into `phases` phases, with a hot set of
    /// `hot_fraction` of the pages.
    pub fn new(pages: usize, hot_fraction: f64, phases: u32, accesses: u64, seed: u64) -> Self {
        assert!(pages > 0, "phases pattern over zero pages");
        let hot = ((hot_fraction * pages as f64).ceil() as usize).clamp(1, pages);
        Self { pages, hot, phases: phases.max(1), next: 0, total: accesses, rng: Xoshiro256::new(seed) }
    }

    /// First page of the hot set of `phase`.
    pub fn hot_start(&self, phase: usize) -> usize {
        ((phase as u128 * self.pages as u128 / u128::from(self.phases)) as usize) % self.pages
    }

    /// The pages of the hot set of `phase`.
    pub fn hot_set(&self, phase: usize) -> impl Iterator<Item = usize> + '_ {
        let start = self.hot_start(phase);
        (0..self.hot).map(move |i| (start + i) % self.pages)
    }

    /// Number of pages in each hot set.
    pub fn hot_len(&self) -> usize {
        self.hot
    }

    /// The phase of access number `i` (0-based).
    fn phase_of(&self, i: u64) -> usize {
        (u128::from(i) * u128::from(self.phases) / u128::from(self.total.max(1))) as usize
    }
}

impl AccessPattern for PhasesPattern {
    fn total(&self) -> u64 {
        self.total
    }

    fn next_access(&mut self) -> Option<Access> {
        if self.next >= self.total {
            return None;
        }
        let phase = self.phase_of(self.next);
        self.next += 1;
        let page = if self.rng.chance(HOT_ACCESS_PROBABILITY) {
            (self.hot_start(phase) + self.rng.below(self.hot as u64) as usize) % self.pages
        } else {
            self.rng.below(self.pages as u64) as usize
        };
        Some(Access { page, phase, write: None })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn hot_set_moves_each_phase() {
        let pages = 1000;
        let phases = 4;
        let mut p = PhasesPattern::new(pages, 0.1, phases, 40_000, 2);
        assert_eq!(p.hot_len(), 100);
        let mut counts = vec![vec![0u32; pages]; phases as usize];
        let mut per_phase = vec![0u64; phases as usize];
        while let Some(a) = p.next_access() {
            counts[a.phase][a.page] += 1;
            per_phase[a.phase] += 1;
        }
        assert!(per_phase.iter().all(|&n| n == 10_000), "{per_phase:?}");
        // The empirically hottest pages of each phase are that phase's hot set, and the hot
        // sets of different phases are disjoint.
        let mut hot_sets: Vec<BTreeSet<usize>> = Vec::new();
        for (phase, c) in counts.iter().enumerate() {
            let mut order: Vec<usize> = (0..pages).collect();
            order.sort_by_key(|&pg| std::cmp::Reverse(c[pg]));
            let top: BTreeSet<usize> = order[..100].iter().copied().collect();
            let declared: BTreeSet<usize> = p.hot_set(phase).collect();
            assert_eq!(top, declared, "phase {phase}");
            for earlier in &hot_sets {
                assert!(earlier.is_disjoint(&top), "phase {phase} reuses a hot set");
            }
            hot_sets.push(top);
        }
    }

    #[test]
    fn hot_fraction_one_and_tiny_ranges() {
        let mut p = PhasesPattern::new(3, 1.0, 4, 100, 1);
        assert_eq!(p.hot_len(), 3);
        while let Some(a) = p.next_access() {
            assert!(a.page < 3 && a.phase < 4);
        }
        let p = PhasesPattern::new(1, 0.01, 2, 10, 1);
        assert_eq!(p.hot_set(1).collect::<Vec<_>>(), [0]);
    }
}
