//! The default policy: fit the hottest pages to the DRAM budget.
//!
//! Pages are ranked by decayed frequency, then recency (as MEMTIS sizes its hot set to the
//! fast tier); the top `dram_pages` are decided for tier 1. Of the rest, pages idle for longer
//! than `cold_after` go to tier 3, the others to tier 2 — except that a page already in tier 3
//! comes back up only once it is warm (frequency at least [`WARM`], i.e. seen twice recently),
//! so a single touch of a cold page does not cost a tier-3 read, a tier-2 write and, later, a
//! tier-3 write again. Zero pages stay where they are (nowhere).

use super::{PageStats, Policy, PolicyContext, Tier};

/// Frequency at which a tier-3 page is worth moving up to tier 2: two observations close together
/// (one observation gives 50 with the default gain of 0.5).
pub const WARM: u8 = 60;

/// Hot set sized to DRAM.
#[derive(Debug, Default)]
pub struct HotsetPolicy {
    order: Vec<u32>,
}

fn score(p: &PageStats) -> u64 {
    // Frequency first, recency second; higher is hotter.
    (u64::from(p.frequency) << 32) | u64::from(u32::MAX - p.idle_ticks)
}

impl Policy for HotsetPolicy {
    fn name(&self) -> &'static str {
        "hotset"
    }

    fn scratch_bytes(&self) -> usize {
        self.order.capacity() * size_of::<u32>()
    }

    fn decide(&mut self, ctx: &PolicyContext, pages: &[PageStats], out: &mut [Tier]) {
        self.order.clear();
        for (i, (p, o)) in pages.iter().zip(out.iter_mut()).enumerate() {
            let cold = p.idle_ticks >= ctx.cold_after_ticks || (p.home_tier == 3 && p.frequency < WARM);
            *o = if cold { Tier::Object } else { Tier::Ssd };
            if !p.zero {
                self.order.push(i as u32);
            }
        }
        let k = ctx.dram_pages.min(self.order.len());
        if k == 0 {
            return;
        }
        if k < self.order.len() {
            self.order
                .select_nth_unstable_by(k - 1, |&a, &b| score(&pages[b as usize]).cmp(&score(&pages[a as usize])));
        }
        for &i in &self.order[..k] {
            out[i as usize] = Tier::Dram;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut out = vec![Tier::Ssd; pages.len()];
        HotsetPolicy::default().decide(&PolicyContext { dram_pages: 3, cold_after_ticks: 50 }, &pages, &mut out);
        assert_eq!(out, vec![Tier::Ssd, Tier::Dram, Tier::Ssd, Tier::Dram, Tier::Object, Tier::Dram]);
    }

    #[test]
    fn tier3_pages_come_up_only_when_warm() {
        let mk =
            |page, frequency| PageStats { page, frequency, idle_ticks: 1, resident: false, zero: false, home_tier: 3 };
        let pages = vec![mk(0, 50), mk(1, 75), mk(2, 100)];
        let mut out = vec![Tier::Ssd; 3];
        HotsetPolicy::default().decide(&PolicyContext { dram_pages: 1, cold_after_ticks: 50 }, &pages, &mut out);
        assert_eq!(out, vec![Tier::Object, Tier::Ssd, Tier::Dram]);
    }

    #[test]
    fn zero_pages_never_take_dram() {
        let pages = vec![PageStats { page: 0, frequency: 0, idle_ticks: 0, resident: false, zero: true, home_tier: 0 }];
        let mut out = vec![Tier::Ssd];
        HotsetPolicy::default().decide(&PolicyContext { dram_pages: 3, cold_after_ticks: 50 }, &pages, &mut out);
        assert_eq!(out, vec![Tier::Ssd]);
    }
}
