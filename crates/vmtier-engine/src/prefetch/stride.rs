//! `stride`: a constant distance between consecutive faults.
//!
//! When two consecutive deltas between faults are equal (and not zero), the next pages along
//! that stride are predicted; while the guest keeps using them, the prediction slides ahead so
//! that `depth` pages stay in flight, and the depth doubles up to the maximum. A fault off the
//! stride resets the detector.

use super::{Prefetcher, push_run};

/// Pages in flight once a stride is confirmed.
const INITIAL: u64 = 4;

/// Constant-stride detection.
#[derive(Debug)]
pub struct Stride {
    max: u64,
    last: Option<u64>,
    stride: i64,
    confirmed: bool,
    depth: u64,
    /// The furthest page predicted along the current stride.
    ahead: Option<u64>,
}

impl Stride {
    /// Stride detection prefetching at most `max` pages ahead.
    pub fn new(max: u64) -> Self {
        Self { max, last: None, stride: 0, confirmed: false, depth: 0, ahead: None }
    }

    fn issue_from(&mut self, page: u64, out: &mut Vec<u64>) {
        // Top up: keep `depth` strides ahead of `page`, issuing only what is new.
        let target = page as i64 + self.stride * self.depth as i64;
        let from = match self.ahead {
            Some(a) if self.is_ahead_along(page, a) => a as i64,
            _ => page as i64,
        };
        let n = ((target - from) / self.stride).max(0) as u64;
        if from >= 0 {
            push_run(out, from as u64, self.stride, n);
        }
        if let Some(&last) = out.last() {
            self.ahead = Some(last);
        }
    }

    /// Whether `ahead` lies on the stride after `page`, within the depth.
    fn is_ahead_along(&self, page: u64, ahead: u64) -> bool {
        let d = ahead as i64 - page as i64;
        d != 0 && d % self.stride == 0 && d / self.stride > 0 && (d / self.stride) as u64 <= self.depth
    }
}

impl Prefetcher for Stride {
    fn name(&self) -> &'static str {
        "stride"
    }

    fn on_fault(&mut self, page: u64, out: &mut Vec<u64>) {
        let Some(last) = self.last.replace(page) else { return };
        let d = page as i64 - last as i64;
        if d != 0 && d == self.stride {
            self.depth = if self.confirmed { (self.depth * 2).min(self.max) } else { INITIAL.min(self.max) };
            self.confirmed = true;
            self.issue_from(page, out);
        } else {
            self.stride = d;
            self.confirmed = false;
            self.depth = 0;
            self.ahead = None;
        }
    }

    fn on_use(&mut self, page: u64, out: &mut Vec<u64>) {
        if !self.confirmed {
            return;
        }
        let d = page as i64 - self.last.unwrap_or(page) as i64;
        if d != 0 && d % self.stride == 0 && d.signum() == self.stride.signum() {
            self.last = Some(page);
            self.depth = (self.depth * 2).min(self.max);
            self.issue_from(page, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::replay;

    #[test]
    fn a_strided_scan_stops_faulting() {
        for stride in [3i64, 17, -5] {
            let seq: Vec<u64> = (0..1500).map(|i| (100_000 + i * stride) as u64).collect();
            let (avoided, issued) = replay(&mut Stride::new(32), &seq);
            assert!(avoided >= seq.len() - 10, "stride {stride}: {avoided} of {} avoided", seq.len());
            assert!(issued <= seq.len() + 32, "stride {stride}: issued {issued}");
        }
    }

    #[test]
    fn the_prediction_follows_the_stride() {
        let mut s = Stride::new(8);
        let mut out = Vec::new();
        for p in [10, 13, 16] {
            out.clear();
            s.on_fault(p, &mut out);
        }
        assert_eq!(out, vec![19, 22, 25, 28]);
        out.clear();
        s.on_use(19, &mut out);
        assert_eq!(out, vec![31, 34, 37, 40, 43], "slides ahead to 8 strides past 19");
    }

    #[test]
    fn a_broken_stride_predicts_nothing() {
        let mut s = Stride::new(8);
        let mut out = Vec::new();
        for p in [10, 13, 50, 7, 1000] {
            s.on_fault(p, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }
}
