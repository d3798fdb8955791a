//! `leap`: Leap's prefetcher (Al Maruf and Chowdhury, "Effectively Prefetching Remote Memory
//! with Leap", USENIX ATC 2020).
//!
//! The deltas between recent faults are kept in a small history. The *trend* is the majority
//! delta (Boyer–Moore vote, checked for a strict majority) of the most recent `w` deltas, where
//! `w` starts small and doubles up to the whole history until a majority is found — so a short
//! burst of noise does not hide a long trend. The prefetch depth adapts: it doubles when pages
//! it prefetched were used since the last fault and halves when none were. Without a trend,
//! Leap keeps following the last one it found, at the shrunken depth.

use std::collections::VecDeque;

use super::{Prefetcher, push_run};

/// Deltas kept.
const HISTORY: usize = 32;
/// Smallest window the majority is looked for in.
const MIN_WINDOW: usize = 4;

/// Leap's majority-trend prefetcher.
#[derive(Debug)]
pub struct Leap {
    max: u64,
    last: Option<u64>,
    deltas: VecDeque<i64>,
    trend: Option<i64>,
    depth: u64,
    hits: u64,
}

impl Leap {
    /// Leap prefetching at most `max` pages ahead.
    pub fn new(max: u64) -> Self {
        Self { max, last: None, deltas: VecDeque::with_capacity(HISTORY), trend: None, depth: 1, hits: 0 }
    }

    /// The majority delta of the most recent deltas, searching windows of growing size.
    fn find_trend(&self) -> Option<i64> {
        let mut w = MIN_WINDOW;
        loop {
            let w_eff = w.min(self.deltas.len());
            if w_eff == 0 {
                return None;
            }
            let recent = self.deltas.iter().rev().take(w_eff);
            let (mut cand, mut count) = (0i64, 0usize);
            for &d in recent.clone() {
                if count == 0 {
                    cand = d;
                    count = 1;
                } else if d == cand {
                    count += 1;
                } else {
                    count -= 1;
                }
            }
            if cand != 0 && recent.filter(|&&d| d == cand).count() * 2 > w_eff {
                return Some(cand);
            }
            if w_eff == self.deltas.len() {
                return None;
            }
            w *= 2;
        }
    }
}

impl Prefetcher for Leap {
    fn name(&self) -> &'static str {
        "leap"
    }

    fn on_fault(&mut self, page: u64, out: &mut Vec<u64>) {
        if let Some(last) = self.last.replace(page) {
            if self.deltas.len() == HISTORY {
                self.deltas.pop_front();
            }
            self.deltas.push_back(page as i64 - last as i64);
        }
        self.depth = if self.hits > 0 { (self.depth * 2).min(self.max) } else { (self.depth / 2).max(1) };
        self.hits = 0;
        if let Some(t) = self.find_trend() {
            self.trend = Some(t);
        }
        if let Some(t) = self.trend {
            push_run(out, page, t, self.depth);
        }
    }

    fn on_use(&mut self, _page: u64, _out: &mut Vec<u64>) {
        self.hits += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::replay;

    #[test]
    fn finds_the_majority_trend_through_noise() {
        let mut l = Leap::new(16);
        let mut out = Vec::new();
        // Stride 5 with one outlier in every four faults.
        let mut p = 1000u64;
        for i in 0..12 {
            p = if i % 4 == 3 { p + 777 } else { p + 5 };
            out.clear();
            l.on_fault(p, &mut out);
        }
        assert_eq!(l.trend, Some(5));
        assert_eq!(out.first(), Some(&(p + 5)));
    }

    #[test]
    fn depth_grows_with_hits_and_shrinks_without() {
        let seq: Vec<u64> = (0..2000).map(|i| 50_000 + 2 * i).collect();
        let (avoided, _) = replay(&mut Leap::new(32), &seq);
        assert!(avoided > seq.len() * 8 / 10, "{avoided} of {} avoided", seq.len());
        let mut l = Leap::new(32);
        let mut out = Vec::new();
        for p in [10, 20, 30, 40, 50] {
            l.on_fault(p, &mut out);
        }
        assert_eq!(l.depth, 1, "no hits: depth stays at its minimum");
    }

    #[test]
    fn no_trend_in_random_faults() {
        let mut l = Leap::new(16);
        let mut out = Vec::new();
        for p in [5, 900, 13, 4000, 77, 12, 600_000, 3] {
            l.on_fault(p, &mut out);
        }
        assert_eq!(l.find_trend(), None);
    }
}
