//! A trace's summary: footprint, read/write mix, address span and LRU reuse distances.
//!
//! The *reuse distance* (LRU stack distance) of an access is the number of distinct other pages
//! accessed since the previous access to the same page; a first access has none (a cold miss).
//! An LRU-managed memory of `C` pages hits exactly the accesses whose distance is below `C`, so
//! the distribution tells which DRAM budget a trace needs. Distances are computed in
//! `O(n log n)` with a Fenwick tree over access times marking each page's latest access.

use serde::Serialize;

use super::{PageTrace, TRACE_PAGE_SIZE, TraceCounts};

/// Marks a cold (first) access in [`reuse_distances`].
pub const COLD: u32 = u32::MAX;

/// Fractions of the footprint at which [`ReuseStats::lru_hit_ratio`] is reported.
pub const LRU_FRACTIONS: [f64; 4] = [0.1, 0.25, 0.5, 0.75];

/// The virtual address range a trace covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AddressSpan {
    /// Lowest address of the lowest page touched.
    pub first_address: u64,
    /// End (exclusive) of the highest page touched.
    pub end_address: u64,
    /// `end_address − first_address`.
    pub span_bytes: u64,
    /// Runs of contiguous pages (mapped regions, roughly: heap, stack, libraries, …).
    pub regions: u64,
    /// Pages in the largest run.
    pub largest_region_pages: u64,
}

/// The LRU hit ratio at one memory size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LruPoint {
    /// Memory size in pages.
    pub pages: u64,
    /// Fraction of the footprint.
    pub fraction_of_footprint: f64,
    /// Fraction of all accesses an LRU memory of `pages` pages hits (cold misses count as misses).
    pub hit_ratio: f64,
}

/// Reuse distances of the re-accesses (not the first access of each page).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReuseStats {
    /// Accesses that are not a page's first.
    pub reuses: u64,
    /// First accesses (= footprint pages).
    pub cold: u64,
    /// Median distance in pages (`None` without reuse).
    pub median_pages: Option<u64>,
    /// 90th percentile.
    pub p90_pages: Option<u64>,
    /// 99th percentile.
    pub p99_pages: Option<u64>,
    /// Mean.
    pub mean_pages: Option<f64>,
    /// The LRU hit ratio at [`LRU_FRACTIONS`] of the footprint.
    pub lru_hit_ratio: Vec<LruPoint>,
}

/// The summary `vmtier trace stats` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceStats {
    /// Where the trace came from.
    pub source: String,
    /// What the import saw.
    pub import: TraceCounts,
    /// Page accesses.
    pub accesses: u64,
    /// Accesses that only read.
    pub reads: u64,
    /// Accesses that write.
    pub writes: u64,
    /// `writes / accesses`.
    pub write_fraction: f64,
    /// Distinct pages.
    pub footprint_pages: u64,
    /// `footprint_pages × 4 KiB`.
    pub footprint_bytes: u64,
    /// The virtual addresses covered.
    pub address_span: Option<AddressSpan>,
    /// Reuse distances.
    pub reuse: ReuseStats,
}

/// A Fenwick (binary indexed) tree of counts.
struct Fenwick(Vec<i32>);

impl Fenwick {
    fn add(&mut self, i: usize, d: i32) {
        let mut i = i + 1;
        while i < self.0.len() {
            self.0[i] += d;
            i += i & i.wrapping_neg();
        }
    }

    /// Sum of positions `0..i`.
    fn prefix(&self, mut i: usize) -> i64 {
        let mut s = 0i64;
        while i > 0 {
            s += i64::from(self.0[i]);
            i &= i - 1;
        }
        s
    }
}

/// The reuse distance of every access of `pages` (page numbers below `footprint`), [`COLD`] for
/// a page's first access.
pub fn reuse_distances(pages: impl ExactSizeIterator<Item = u32>, footprint: u32) -> Vec<u32> {
    let n = pages.len();
    let mut tree = Fenwick(vec![0; n + 1]);
    let mut last = vec![u32::MAX; footprint as usize];
    let mut out = Vec::with_capacity(n);
    for (t, p) in pages.enumerate() {
        let slot = &mut last[p as usize];
        if *slot == u32::MAX {
            out.push(COLD);
        } else {
            let s = *slot as usize;
            // Pages whose latest access lies strictly between s and t.
            out.push((tree.prefix(t) - tree.prefix(s + 1)) as u32);
            tree.add(s, -1);
        }
        tree.add(t, 1);
        *slot = t as u32;
    }
    out
}

/// Summarises `trace`.
pub fn compute(trace: &PageTrace) -> TraceStats {
    let accesses = trace.len() as u64;
    let writes = trace.writes();
    let footprint = u64::from(trace.footprint_pages());
    let address_span = match (trace.runs().first(), trace.runs().last()) {
        (Some(first), Some(last)) => {
            let first_address = first.first_vpage * TRACE_PAGE_SIZE;
            let end_address = (last.first_vpage + u64::from(last.pages)).saturating_mul(TRACE_PAGE_SIZE);
            Some(AddressSpan {
                first_address,
                end_address,
                span_bytes: end_address - first_address,
                regions: trace.runs().len() as u64,
                largest_region_pages: trace.runs().iter().map(|r| u64::from(r.pages)).max().unwrap_or(0),
            })
        }
        _ => None,
    };
    let mut dist = reuse_distances(trace.accesses().map(|a| a.page), trace.footprint_pages());
    dist.retain(|&d| d != COLD);
    dist.sort_unstable();
    let reuses = dist.len() as u64;
    let pct = |q: f64| -> Option<u64> {
        let last = dist.len().checked_sub(1)?;
        Some(u64::from(dist[((last as f64 * q).round() as usize).min(last)]))
    };
    let lru_hit_ratio = LRU_FRACTIONS
        .iter()
        .map(|&f| {
            let pages = ((footprint as f64 * f).round() as u64).max(1);
            let hits = dist.partition_point(|&d| u64::from(d) < pages) as u64;
            LruPoint {
                pages,
                fraction_of_footprint: f,
                hit_ratio: if accesses == 0 { 0.0 } else { hits as f64 / accesses as f64 },
            }
        })
        .collect();
    let mean_pages = (!dist.is_empty()).then(|| dist.iter().map(|&d| d as f64).sum::<f64>() / dist.len() as f64);
    TraceStats {
        source: trace.source().to_string(),
        import: *trace.counts(),
        accesses,
        reads: accesses - writes,
        writes,
        write_fraction: if accesses == 0 { 0.0 } else { writes as f64 / accesses as f64 },
        footprint_pages: footprint,
        footprint_bytes: trace.footprint_bytes(),
        address_span,
        reuse: ReuseStats {
            reuses,
            cold: accesses - reuses,
            median_pages: pct(0.5),
            p90_pages: pct(0.9),
            p99_pages: pct(0.99),
            mean_pages,
            lru_hit_ratio,
        },
    }
}

impl PageTrace {
    /// The trace's summary (see [`compute`]).
    pub fn stats(&self) -> TraceStats {
        compute(self)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::trace::{PageRun, TraceAccess};

    fn trace(pages: &[u32], footprint: u32) -> PageTrace {
        PageTrace::from_accesses("t", footprint, pages.iter().map(|&page| TraceAccess { page, write: page % 2 == 1 }))
            .unwrap()
    }

    /// Distances by definition: distinct pages since the previous access.
    fn naive(pages: &[u32]) -> Vec<u32> {
        (0..pages.len())
            .map(|t| match pages[..t].iter().rposition(|&p| p == pages[t]) {
                None => COLD,
                Some(s) => {
                    let mut between: Vec<u32> = pages[s + 1..t].to_vec();
                    between.sort_unstable();
                    between.dedup();
                    between.len() as u32
                }
            })
            .collect()
    }

    #[test]
    fn known_distances() {
        // A B C A B C: each re-access has the two others in between.
        let d = reuse_distances([0, 1, 2, 0, 1, 2].into_iter(), 3);
        assert_eq!(d, [COLD, COLD, COLD, 2, 2, 2]);
        // A B B A: B again right away (0), A with only B in between (1).
        let d = reuse_distances([0, 1, 1, 0].into_iter(), 2);
        assert_eq!(d, [COLD, COLD, 0, 1]);
        // A B C C B A: 0, then 1 (C), then 2 (B, C).
        let d = reuse_distances([0, 1, 2, 2, 1, 0].into_iter(), 3);
        assert_eq!(d, [COLD, COLD, COLD, 0, 1, 2]);
    }

    #[test]
    fn stats_of_a_hand_made_trace() {
        // Pages 0..4 cycled 5 times: 4 cold accesses, 16 reuses at distance 3.
        let pages: Vec<u32> = (0..20).map(|i| i % 4).collect();
        let s = trace(&pages, 4).stats();
        assert_eq!((s.accesses, s.writes, s.reads, s.footprint_pages), (20, 10, 10, 4));
        assert_eq!(s.write_fraction, 0.5);
        assert_eq!(s.footprint_bytes, 16384);
        assert_eq!((s.reuse.reuses, s.reuse.cold), (16, 4));
        assert_eq!((s.reuse.median_pages, s.reuse.p90_pages, s.reuse.p99_pages), (Some(3), Some(3), Some(3)));
        assert_eq!(s.reuse.mean_pages, Some(3.0));
        // LRU of 1, 1, 2, 3 pages (rounded fractions of 4) never hits a cyclic trace of 4 pages.
        assert!(s.reuse.lru_hit_ratio.iter().all(|p| p.hit_ratio == 0.0 && p.pages < 4), "{:?}", s.reuse);
        let span = s.address_span.unwrap();
        assert_eq!((span.first_address, span.end_address, span.regions), (0, 16384, 1));

        // Mixed distances: A B A C A B → A:1, A:1, B:2.
        let s = trace(&[0, 1, 0, 2, 0, 1], 3).stats();
        assert_eq!((s.reuse.reuses, s.reuse.median_pages, s.reuse.p90_pages), (3, Some(1), Some(2)));
        // A memory of 2 pages (0.75 × 3, rounded) hits the two reuses at distance 1.
        let two = s.reuse.lru_hit_ratio.iter().find(|p| p.pages == 2).unwrap();
        assert!((two.hit_ratio - 2.0 / 6.0).abs() < 1e-12, "{two:?}");

        // No reuse at all.
        let s = trace(&[0, 1, 2], 3).stats();
        assert_eq!((s.reuse.reuses, s.reuse.median_pages, s.reuse.mean_pages), (0, None, None));
    }

    #[test]
    fn span_of_sparse_runs() {
        let runs = vec![PageRun { first_vpage: 0x400, pages: 2 }, PageRun { first_vpage: 0x1000, pages: 5 }];
        let entries = vec![TraceAccess { page: 6, write: true }.pack()];
        let t = PageTrace::from_parts("s", Default::default(), runs, entries).unwrap();
        let span = t.stats().address_span.unwrap();
        assert_eq!(span.first_address, 0x40_0000);
        assert_eq!(span.end_address, 0x100_5000);
        assert_eq!((span.regions, span.largest_region_pages), (2, 5));
        assert_eq!(t.virtual_page(6), Some(0x1004));
    }

    proptest! {
        #[test]
        fn fenwick_matches_the_definition(pages in proptest::collection::vec(0u32..12, 0..200)) {
            prop_assert_eq!(reuse_distances(pages.iter().copied(), 12), naive(&pages));
        }
    }
}
