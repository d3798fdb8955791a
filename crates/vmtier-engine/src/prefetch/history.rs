//! `history`: vmtier's own predictor. Three sources of evidence, most direct first:
//!
//! 1. **Concurrent streams** ([`Streams`]): the table of up to 16 sequential walks the guest is
//!    making at once, each followed on its own with a readahead-style window. A merge, a copy,
//!    a compiler reading one buffer while writing another: between one stream's faults come the
//!    others', so `stride` and `leap`, which look at the deltas between consecutive faults, see
//!    noise where this sees two or three plain sequences.
//! 2. **A constant stride** between consecutive faults ([`Stride`]), for steps larger than a
//!    stream's gap.
//! 3. **A successor table** learned from the order in which the guest touches pages that were
//!    not in DRAM (its faults and its first uses of prefetched pages). Programs repeat
//!    themselves: a loop over a linked structure, a hash table probed in the same order every
//!    pass, a phase that comes back. None of that has a stride, but each page tends to be
//!    followed by the same page as last time. The table remembers, for each page, the page
//!    touched after it and a 2-bit confidence. On a fault the chain of successors is followed
//!    `depth` steps (stopping at an unknown or unconfident link, or a loop), and those pages are
//!    predicted. As with Leap, the depth doubles while predictions are used and halves when
//!    they are not; on a chain that keeps being used the predictor runs ahead of the guest by
//!    `depth` pages, so a repeated traversal stops faulting after its first pass.
//!
//! Streams and strides are evidence about *now*, while the table may remember a different order
//! from an earlier phase (say, memory written sequentially, now read with a stride), so they
//! win when they predict; when they do not, the chain predicts.
//!
//! The table is direct-mapped with 2^k entries of 9 bytes: a key tag, the successor and the
//! confidence. It has at most one entry per guest page and at most [`MAX_TABLE_ENTRIES`]
//! (2.25 MiB), so its size does not grow with the guest; a new link replaces the one it
//! collides with. The table needs about one entry per page of the repeated order to follow it:
//! replaying the `xz6` trace's faults (5,209 pages), a table of 4096 entries avoids 90% of
//! them, 2048 entries 51%, 1024 entries 12%; on `sort`, whose faults are mostly streams, even 64
//! entries avoid 95.8% against 96.9% with 4096.

use super::Prefetcher;
use super::streams::Streams;
use super::stride::Stride;

/// One table entry: a page and the page that followed it.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// The page this entry is for, plus one (0 = empty).
    key: u32,
    /// Its successor.
    next: u32,
}

/// Confidence bits live beside the table (one byte per entry).
const MAX_CONF: u8 = 3;

/// The largest successor table: 2^18 entries, 2.25 MiB, whatever the guest's size. It remembers
/// the order of up to 256 Ki faulting pages (1 GiB); a repeated traversal of more pages than
/// that loses links to collisions and is followed in parts.
pub const MAX_TABLE_ENTRIES: u64 = 1 << 18;

/// Successor-history prefetcher.
#[derive(Debug)]
pub struct History {
    max: u64,
    table: Vec<Entry>,
    conf: Vec<u8>,
    mask: usize,
    prev: Option<u64>,
    depth: u64,
    hits: u64,
    /// Concurrent sequential streams: evidence about now, so they predict first.
    streams: Streams,
    /// A constant stride between consecutive faults, larger than a stream's gap.
    stride: Stride,
    /// The furthest page predicted by the last chain walk, to continue from on a use.
    frontier: Option<u64>,
}

impl History {
    /// A predictor for `pages` guest pages, prefetching at most `max` pages ahead: a table of
    /// one entry per guest page, at least 1024 and at most [`MAX_TABLE_ENTRIES`].
    pub fn new(pages: u64, max: u64) -> Self {
        Self::with_table(pages.clamp(1024, MAX_TABLE_ENTRIES), max)
    }

    /// A predictor with a successor table of `entries` (rounded up to a power of two).
    pub fn with_table(entries: u64, max: u64) -> Self {
        let size = entries.max(1).next_power_of_two() as usize;
        Self {
            max,
            table: vec![Entry::default(); size],
            conf: vec![0; size],
            mask: size - 1,
            prev: None,
            depth: 2,
            hits: 0,
            streams: Streams::new(max),
            stride: Stride::new(max),
            frontier: None,
        }
    }

    fn slot(&self, page: u64) -> usize {
        (page.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as usize & self.mask
    }

    fn successor(&self, page: u64) -> Option<u64> {
        let i = self.slot(page);
        let e = self.table[i];
        (e.key == page as u32 + 1 && self.conf[i] > 0).then_some(u64::from(e.next))
    }

    /// Learns that `next` followed `prev`.
    fn learn(&mut self, prev: u64, next: u64) {
        let i = self.slot(prev);
        let e = &mut self.table[i];
        if e.key == prev as u32 + 1 {
            if u64::from(e.next) == next {
                self.conf[i] = (self.conf[i] + 1).min(MAX_CONF);
            } else if self.conf[i] > 1 {
                self.conf[i] -= 1;
            } else {
                e.next = next as u32;
                self.conf[i] = 1;
            }
        } else {
            *e = Entry { key: prev as u32 + 1, next: next as u32 };
            self.conf[i] = 1;
        }
    }

    /// Records a touch of `page` in the access order.
    fn touch(&mut self, page: u64) {
        if let Some(prev) = self.prev.replace(page)
            && prev != page
        {
            self.learn(prev, page);
        }
    }

    /// Follows the chain from `page` for up to `n` steps.
    fn walk(&mut self, page: u64, n: u64, out: &mut Vec<u64>) {
        let mut p = page;
        let start = out.len();
        for _ in 0..n {
            match self.successor(p) {
                Some(q) if q != page && !out[start..].contains(&q) => {
                    out.push(q);
                    p = q;
                }
                _ => break,
            }
        }
        self.frontier = out[start..].last().copied();
    }
}

impl Prefetcher for History {
    fn name(&self) -> &'static str {
        "history"
    }

    fn table_bytes(&self) -> usize {
        self.table.len() * size_of::<Entry>() + self.conf.len()
    }

    fn on_fault(&mut self, page: u64, out: &mut Vec<u64>) {
        self.touch(page);
        self.depth = if self.hits > 0 { (self.depth * 2).min(self.max) } else { (self.depth / 2).max(2) };
        self.hits = 0;
        let mut strided = Vec::new();
        self.stride.on_fault(page, &mut strided);
        if self.streams.access(page, false, out) {
            self.frontier = None;
        } else if strided.is_empty() {
            self.walk(page, self.depth, out);
        } else {
            self.frontier = None;
            out.extend(strided);
        }
    }

    fn on_use(&mut self, page: u64, out: &mut Vec<u64>) {
        self.touch(page);
        self.hits += 1;
        let mut strided = Vec::new();
        self.stride.on_use(page, &mut strided);
        if self.streams.access(page, true, out) {
            self.frontier = None;
        } else if !strided.is_empty() {
            out.extend(strided);
        } else if let Some(f) = self.frontier {
            // Keep `depth` pages in flight along the chain: one step further per page used.
            self.walk(f, 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::replay;

    /// A fixed pseudo-random tour of `n` pages, as a pointer chase would make.
    fn tour(n: u64, seed: u64) -> Vec<u64> {
        let mut pages: Vec<u64> = (0..n).map(|i| 10_000 + i * 7).collect();
        let mut s = seed;
        for i in (1..pages.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            pages.swap(i, (s >> 33) as usize % (i + 1));
        }
        pages
    }

    #[test]
    fn a_repeated_pointer_chase_stops_faulting_after_one_pass() {
        let t = tour(500, 9);
        let seq: Vec<u64> = t.iter().chain(&t).chain(&t).copied().collect();
        let (avoided, issued) = replay(&mut History::new(1 << 20, 32), &seq);
        // The first pass faults everywhere; the next two are predicted.
        assert!(avoided >= 2 * t.len() - 40, "{avoided} of {} repeat touches avoided", 2 * t.len());
        assert!(issued <= avoided + 100, "accuracy: issued {issued}, used {avoided}");
    }

    #[test]
    fn no_stride_predictor_can_follow_a_tour() {
        let t = tour(500, 9);
        let seq: Vec<u64> = t.iter().chain(&t).copied().collect();
        let (avoided, _) = replay(&mut super::super::stride::Stride::new(32), &seq);
        assert!(avoided < 20, "stride avoided {avoided}");
    }

    #[test]
    fn a_stride_wins_over_a_stale_chain() {
        // Memory written sequentially (the table learns p -> p+1), then read with stride 3.
        let mut h = History::new(1 << 20, 32);
        let mut out = Vec::new();
        for p in 0..3000 {
            h.on_fault(p, &mut out);
        }
        let seq: Vec<u64> = (0..900).map(|i| 3 * i).collect();
        let (avoided, issued) = replay(&mut h, &seq);
        assert!(avoided > 850, "{avoided} of 900");
        assert!(issued < avoided + 60, "issued {issued}");
    }

    #[test]
    fn falls_back_to_the_stride_on_a_first_pass() {
        let seq: Vec<u64> = (0..1000).map(|i| 5000 + 3 * i).collect();
        let (avoided, _) = replay(&mut History::new(1 << 20, 32), &seq);
        assert!(avoided > 900, "{avoided}");
    }

    #[test]
    fn the_table_stops_growing_with_the_guest() {
        let small = History::new(MAX_TABLE_ENTRIES, 32).table_bytes();
        assert_eq!(small, MAX_TABLE_ENTRIES as usize * 9);
        assert_eq!(History::new(16 * MAX_TABLE_ENTRIES, 32).table_bytes(), small);
        assert_eq!(History::new(1 << 32, 32).table_bytes(), small);
        // A small guest keeps a small table.
        assert_eq!(History::new(2000, 32).table_bytes(), 2048 * 9);
    }

    #[test]
    fn a_huge_guest_with_the_capped_table_still_follows_a_tour() {
        // A pointer chase over 5,000 pages scattered over 2^30 pages (4 TiB) of a guest far
        // larger than the table: the table stays at its cap and the repeats are still predicted.
        let t: Vec<u64> = tour(5000, 3).iter().map(|p| p.wrapping_mul(0x9E37_79B9) % (1 << 30)).collect();
        let seq: Vec<u64> = t.iter().chain(&t).chain(&t).copied().collect();
        let mut h = History::new(1 << 42, 32);
        assert_eq!(h.table_bytes(), MAX_TABLE_ENTRIES as usize * 9);
        let (avoided, issued) = replay(&mut h, &seq);
        assert!(avoided >= 2 * t.len() - 200, "{avoided} of {} repeat touches avoided", 2 * t.len());
        assert!(issued <= avoided + 300, "accuracy: issued {issued}, used {avoided}");
    }
}
