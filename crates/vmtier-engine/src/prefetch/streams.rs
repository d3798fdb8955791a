//! A table of concurrent access streams, the first stage of the `history` predictor.
//!
//! Real programs walk several regions at once: a merge reads two runs and writes a third, a
//! compiler walks its input while it appends to its output. Between one stream's faults come
//! the others', so the deltas between consecutive faults (all that `stride` and `leap` look at)
//! show no trend, yet each stream on its own is a plain sequence. The table keeps the most
//! recent [`STREAMS`] streams, each with its last page, its step and how far ahead it has been
//! predicted. An access continues a stream if it lands within [`MAX_GAP`] steps after the
//! stream's last page in its direction (pages in between may have been resident), or at any
//! distance along its confirmed step; otherwise it starts a new stream, replacing the least
//! recently used. A stream whose step has repeated is confirmed: it predicts `depth` pages
//! ahead, and its depth doubles each time one of its predictions is used, like the kernel's
//! readahead window, up to the maximum.

use super::push_run;

/// Streams tracked at once.
pub const STREAMS: usize = 16;
/// Largest step, in pages, that starts or changes a stream's step.
pub const MAX_GAP: i64 = 8;
/// Pages predicted when a stream is first confirmed.
const INITIAL_DEPTH: u64 = 4;

#[derive(Debug, Clone, Copy)]
struct Stream {
    last: u64,
    step: i64,
    confirmed: bool,
    depth: u64,
    /// The furthest page predicted along the stream.
    ahead: Option<u64>,
    /// Tick of the last access, for LRU replacement.
    used: u64,
}

/// The stream table.
#[derive(Debug)]
pub struct Streams {
    max: u64,
    streams: Vec<Stream>,
    clock: u64,
}

impl Streams {
    /// A table predicting at most `max` pages ahead per stream.
    pub fn new(max: u64) -> Self {
        Self { max, streams: Vec::with_capacity(STREAMS), clock: 0 }
    }

    /// The stream `page` continues, if any.
    fn find(&self, page: u64) -> Option<usize> {
        let d_of = |s: &Stream| page as i64 - s.last as i64;
        // A confirmed stream whose step (or prediction window) the access lands on.
        let on_step = self.streams.iter().position(|s| {
            let d = d_of(s);
            s.confirmed
                && d != 0
                && d % s.step == 0
                && d.signum() == s.step.signum()
                && (d / s.step <= MAX_GAP || s.ahead.is_some_and(|a| within(s.last, a, page)))
        });
        on_step.or_else(|| {
            self.streams.iter().position(|s| {
                let d = d_of(s);
                d != 0 && d.abs() <= MAX_GAP
            })
        })
    }

    /// Records an access to `page` (`used` = the page had been predicted and was touched) and
    /// pushes the pages its stream predicts next. Returns whether a confirmed stream predicted.
    pub fn access(&mut self, page: u64, used: bool, out: &mut Vec<u64>) -> bool {
        self.clock += 1;
        let Some(i) = self.find(page) else {
            let fresh = Stream { last: page, step: 0, confirmed: false, depth: 0, ahead: None, used: self.clock };
            if self.streams.len() < STREAMS {
                self.streams.push(fresh);
            } else if let Some(lru) = self.streams.iter_mut().min_by_key(|s| s.used) {
                *lru = fresh;
            }
            return false;
        };
        let max = self.max;
        let s = &mut self.streams[i];
        let d = page as i64 - s.last as i64;
        s.used = self.clock;
        if s.confirmed && d % s.step == 0 && d.signum() == s.step.signum() {
            // Along the stream: a use of its prediction widens the window.
            if used {
                s.depth = (s.depth * 2).min(max);
            }
        } else if s.step != 0 && d.signum() == s.step.signum() && d.abs() <= MAX_GAP {
            // Same direction, another step: keep going at the smaller of the two, so pages the
            // new step would skip are still predicted (a walk with holes that were resident).
            s.step = if d.abs() < s.step.abs() { d } else { s.step };
            s.confirmed = true;
            s.depth = s.depth.max(INITIAL_DEPTH.min(max));
        } else {
            // A new direction or a second access: the step is a candidate until it repeats.
            s.confirmed = s.step == d;
            s.step = d;
            s.depth = if s.confirmed { INITIAL_DEPTH.min(max) } else { 0 };
            s.ahead = None;
        }
        s.last = page;
        if !s.confirmed {
            return false;
        }
        // Top up: keep `depth` steps ahead of `page`, issuing only what is new.
        let target = page as i64 + s.step * s.depth as i64;
        let from = match s.ahead {
            Some(a) if within(page, a, target as u64) || a as i64 == target => a as i64,
            _ => page as i64,
        };
        let n = ((target - from) / s.step).max(0) as u64;
        let start = out.len();
        if from >= 0 && target >= 0 {
            push_run(out, from as u64, s.step, n);
        }
        if let Some(&last) = out[start..].last() {
            s.ahead = Some(last);
        }
        true
    }
}

/// Whether `x` lies strictly after `from` and no further than `to`, in the direction from
/// `from` to `to`.
fn within(from: u64, to: u64, x: u64) -> bool {
    if to >= from { x > from && x <= to } else { x < from && x >= to }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut Streams, pages: &[u64]) -> Vec<u64> {
        let mut out = Vec::new();
        for &p in pages {
            s.access(p, false, &mut out);
        }
        out
    }

    #[test]
    fn interleaved_streams_are_followed_separately() {
        let mut s = Streams::new(16);
        // Two descending streams and one ascending, interleaved.
        let mut pages = Vec::new();
        for i in 0..4 {
            pages.extend([1000 - i, 5000 - i, 9000 + i]);
        }
        let out = feed(&mut s, &pages);
        for want in [996, 4996, 9004] {
            assert!(out.contains(&want), "{want} not predicted in {out:?}");
        }
    }

    #[test]
    fn a_gap_keeps_the_stream_and_the_smaller_step() {
        let mut s = Streams::new(16);
        let out = feed(&mut s, &[100, 101, 103]);
        assert!(out.contains(&104) && out.contains(&105), "{out:?}");
    }

    #[test]
    fn random_pages_predict_nothing() {
        let mut s = Streams::new(16);
        let pages: Vec<u64> = (0..200u64).map(|i| (i * 7919 * 104_729) % 100_000).collect();
        assert!(feed(&mut s, &pages).len() < 10);
    }
}
