//! The default policy: fit the hottest pages to the DRAM budget.
//!
//! Pages are ranked by decayed frequency, then recency (as MEMTIS sizes its hot set to the
//! fast tier); the top `dram_pages` are decided for tier 1. Of the rest, pages idle for longer
//! than `cold_after` go to tier 3, the others to tier 2 — except that a page already in tier 3
//! comes back up only once it is warm (frequency at least [`WARM`], i.e. seen twice recently),
//! so a single touch of a cold page does not cost a tier-3 read, a tier-2 write and, later, a
//! tier-3 write again. Zero pages stay where they are (nowhere).
//!
//! The ranking needs no per-page memory. The first pass counts pages in a histogram of scores,
//! frequency (0–100) times a log-scaled idle time (0, 1, 2–3, 4–7, … ticks): 101 × 32 counters,
//! 13 KiB whatever the guest's size. Walking it down from the hottest score gives the threshold
//! score of the top `dram_pages`, and how many pages of the threshold's own bucket still fit.
//! The second pass decides each page against the threshold; pages of the threshold bucket are
//! taken in page order until it is full. So the pages chosen are those a sort would choose, up
//! to ties within one bucket (same frequency, idle times within a factor of two).

use super::{PageStats, Policy, PolicyContext, Tier};

/// Frequency at which a tier-3 page is worth moving up to tier 2: two observations close together
/// (one observation gives 50 with the default gain of 0.5).
pub const WARM: u8 = 60;

/// Idle-time buckets: 0 ticks, then one per power of two up to `u32::MAX / 2` (never seen).
const IDLE_BUCKETS: usize = 32;
/// Score buckets: every frequency 0–100 times every idle bucket.
const BUCKETS: usize = 101 * IDLE_BUCKETS;

/// The histogram bucket of a page: higher is hotter (frequency first, then recency).
fn bucket(p: &PageStats) -> usize {
    let idle = if p.idle_ticks == 0 { 0 } else { (u32::BITS - p.idle_ticks.leading_zeros()) as usize };
    usize::from(p.frequency.min(100)) * IDLE_BUCKETS + (IDLE_BUCKETS - 1 - idle.min(IDLE_BUCKETS - 1))
}

/// Hot set sized to DRAM.
#[derive(Debug)]
pub struct HotsetPolicy {
    /// Non-zero pages per score bucket, counted by the first pass.
    histogram: Box<[u32; BUCKETS]>,
    /// The round's threshold, computed at its first decision: pages in buckets above it go to
    /// DRAM, and `(bucket, room)` pages of the threshold bucket itself. `None` until computed.
    threshold: Option<Threshold>,
}

#[derive(Debug, Clone, Copy)]
enum Threshold {
    /// No page goes to DRAM.
    Nothing,
    /// Buckets above `bucket` go to DRAM, and the first `room` pages of `bucket`.
    At { bucket: usize, room: u32 },
}

impl Default for HotsetPolicy {
    fn default() -> Self {
        Self { histogram: Box::new([0; BUCKETS]), threshold: None }
    }
}

impl HotsetPolicy {
    /// The threshold that admits the hottest `k` pages counted in the histogram.
    fn threshold(&self, k: usize) -> Threshold {
        let mut above = 0usize;
        for b in (0..BUCKETS).rev() {
            let n = self.histogram[b] as usize;
            if above + n >= k {
                return if k == 0 { Threshold::Nothing } else { Threshold::At { bucket: b, room: (k - above) as u32 } };
            }
            above += n;
        }
        // Fewer non-zero pages than DRAM: all of them fit.
        Threshold::At { bucket: 0, room: u32::MAX }
    }
}

impl Policy for HotsetPolicy {
    fn name(&self) -> &'static str {
        "hotset"
    }

    fn scratch_bytes(&self) -> usize {
        size_of_val(&*self.histogram)
    }

    fn observes_all(&self) -> bool {
        true
    }

    fn begin(&mut self, _ctx: &PolicyContext) {
        self.histogram.fill(0);
        self.threshold = None;
    }

    fn observe(&mut self, p: &PageStats) {
        if !p.zero {
            self.histogram[bucket(p)] += 1;
        }
    }

    fn decide(&mut self, ctx: &PolicyContext, p: &PageStats) -> Tier {
        let threshold = match self.threshold {
            Some(t) => t,
            None => *self.threshold.insert(self.threshold(ctx.dram_pages)),
        };
        if !p.zero
            && let Threshold::At { bucket: t, room } = threshold
        {
            let b = bucket(p);
            if b > t {
                return Tier::Dram;
            }
            if b == t && room > 0 {
                self.threshold = Some(Threshold::At { bucket: t, room: room - 1 });
                return Tier::Dram;
            }
        }
        let cold = p.idle_ticks >= ctx.cold_after_ticks || (p.home_tier == 3 && p.frequency < WARM);
        if cold { Tier::Object } else { Tier::Ssd }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::decide_all;

    #[test]
    fn top_k_by_frequency_then_recency() {
        let mk = |page, frequency, idle_ticks| PageStats {
            page,
            frequency,
            idle_ticks,
            resident: false,
            zero: false,
            home_tier: 2,
        };
        let pages = vec![mk(0, 10, 5), mk(1, 90, 1), mk(2, 50, 1), mk(3, 50, 0), mk(4, 0, 100), mk(5, 70, 2)];
        let out =
            decide_all(&mut HotsetPolicy::default(), &PolicyContext { dram_pages: 3, cold_after_ticks: 50 }, &pages);
        assert_eq!(out, vec![Tier::Ssd, Tier::Dram, Tier::Ssd, Tier::Dram, Tier::Object, Tier::Dram]);
    }

    #[test]
    fn tier3_pages_come_up_only_when_warm() {
        let mk =
            |page, frequency| PageStats { page, frequency, idle_ticks: 1, resident: false, zero: false, home_tier: 3 };
        let pages = vec![mk(0, 50), mk(1, 75), mk(2, 100)];
        let out =
            decide_all(&mut HotsetPolicy::default(), &PolicyContext { dram_pages: 1, cold_after_ticks: 50 }, &pages);
        assert_eq!(out, vec![Tier::Object, Tier::Ssd, Tier::Dram]);
    }

    #[test]
    fn zero_pages_never_take_dram() {
        let pages = vec![PageStats { page: 0, frequency: 0, idle_ticks: 0, resident: false, zero: true, home_tier: 0 }];
        let out =
            decide_all(&mut HotsetPolicy::default(), &PolicyContext { dram_pages: 3, cold_after_ticks: 50 }, &pages);
        assert_eq!(out, vec![Tier::Ssd]);
    }

    /// A fixed pseudo-random sequence.
    fn lcg(s: &mut u64) -> u64 {
        *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *s >> 33
    }

    #[test]
    fn picks_exactly_the_hot_pages_of_a_known_distribution() {
        // 20,000 pages: 1,500 hot ones scattered at random, seen recently and often; the rest
        // lukewarm or cold. A DRAM of 1,500 pages takes exactly the hot ones.
        let mut seed = 7;
        let mut hot = vec![false; 20_000];
        let mut n = 0;
        while n < 1500 {
            let i = lcg(&mut seed) as usize % hot.len();
            n += usize::from(!hot[i]);
            hot[i] = true;
        }
        let pages: Vec<PageStats> = (0..hot.len())
            .map(|i| {
                let r = lcg(&mut seed);
                let (frequency, idle_ticks) =
                    if hot[i] { (85 + (r % 16) as u8, (r % 3) as u32) } else { ((r % 80) as u8, 1 + (r % 500) as u32) };
                PageStats { page: i as u64, frequency, idle_ticks, resident: false, zero: false, home_tier: 2 }
            })
            .collect();
        let ctx = PolicyContext { dram_pages: 1500, cold_after_ticks: 400 };
        let out = decide_all(&mut HotsetPolicy::default(), &ctx, &pages);
        for (i, (&h, &t)) in hot.iter().zip(&out).enumerate() {
            assert_eq!(t == Tier::Dram, h, "page {i} ({:?}) decided {t:?}", pages[i]);
        }
        // The others are placed by idleness alone.
        assert!(out.iter().zip(&pages).all(|(&t, p)| t == Tier::Dram || (t == Tier::Object) == (p.idle_ticks >= 400)));
    }

    #[test]
    fn takes_exactly_dram_pages_and_never_a_colder_bucket_first() {
        // Random scores with many ties: exactly `dram_pages` pages are chosen, every chosen page is
        // at least as hot (by bucket) as every page left out, and a sort by the exact score agrees
        // except within the threshold's bucket.
        let mut seed = 11;
        let pages: Vec<PageStats> = (0..50_000)
            .map(|i| {
                let r = lcg(&mut seed);
                PageStats {
                    page: i,
                    frequency: (r % 101) as u8,
                    idle_ticks: if r.is_multiple_of(97) { u32::MAX / 2 } else { (r >> 8) as u32 % 5000 },
                    resident: r.is_multiple_of(3),
                    zero: r.is_multiple_of(10),
                    home_tier: 2,
                }
            })
            .collect();
        for k in [0, 1, 999, 12_345, 44_000, 60_000] {
            let ctx = PolicyContext { dram_pages: k, cold_after_ticks: 100 };
            let mut policy = HotsetPolicy::default();
            let out = decide_all(&mut policy, &ctx, &pages);
            let nonzero = pages.iter().filter(|p| !p.zero).count();
            let chosen: Vec<&PageStats> =
                pages.iter().zip(&out).filter(|&(_, &t)| t == Tier::Dram).map(|(p, _)| p).collect();
            assert_eq!(chosen.len(), k.min(nonzero), "k = {k}");
            assert!(chosen.iter().all(|p| !p.zero));
            let coldest_in = chosen.iter().map(|p| bucket(p)).min().unwrap_or(usize::MAX);
            let hottest_out =
                pages.iter().zip(&out).filter(|&(p, &t)| !p.zero && t != Tier::Dram).map(|(p, _)| bucket(p)).max();
            assert!(hottest_out.is_none_or(|b| b <= coldest_in), "k = {k}: {hottest_out:?} left out, {coldest_in} in");
            let exact = |p: &PageStats| (u64::from(p.frequency) << 32) | u64::from(u32::MAX - p.idle_ticks);
            let mut sorted: Vec<&PageStats> = pages.iter().filter(|p| !p.zero).collect();
            sorted.sort_by_key(|p| std::cmp::Reverse(exact(p)));
            for p in &sorted[..k.min(nonzero)] {
                assert!(out[p.page as usize] == Tier::Dram || bucket(p) == coldest_in, "k = {k}: {p:?} left out");
            }
            // The round's working memory is the histogram alone.
            assert_eq!(policy.scratch_bytes(), BUCKETS * 4);
        }
    }
}
