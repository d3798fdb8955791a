//! The concept's `TierPage`, exactly:
//!
//! ```text
//! if frequency > high (80) && priority > priority_high (5)  -> tier 1
//! else if frequency < low (20) && priority < priority_low (3) -> tier 3
//! else                                                        -> tier 2
//! ```
//!
//! All four numbers are configurable. The replication priority comes from a [`PrioritySource`];
//! until replication supplies one it is a constant (`default_priority`, 2: no page is critical
//! for a failover that nobody replicates to), under which tier 1 is reached only by faults and
//! cold pages are sent to tier 3 eagerly.

use super::{PageStats, Policy, PolicyContext, Tier};
use crate::config::ThresholdConfig;

/// Where a page's replication priority comes from.
pub trait PrioritySource: Send + std::fmt::Debug {
    /// Priority of `page` (higher matters more for failover).
    fn priority(&self, page: u64) -> u8;
}

/// The same priority for every page.
#[derive(Debug, Clone, Copy)]
pub struct ConstantPriority(pub u8);

impl PrioritySource for ConstantPriority {
    fn priority(&self, _page: u64) -> u8 {
        self.0
    }
}

/// `TierPage` with configurable thresholds.
#[derive(Debug)]
pub struct ThresholdPolicy {
    t: ThresholdConfig,
    priority: Box<dyn PrioritySource>,
}

impl ThresholdPolicy {
    /// A policy with thresholds `t` and priorities from `priority`.
    pub fn new(t: ThresholdConfig, priority: Box<dyn PrioritySource>) -> Self {
        Self { t, priority }
    }

    /// The concept's `TierPage(pageAddress, accessFrequency, replicationMetadata)`.
    pub fn tier_page(&self, frequency: u8, priority: u8) -> Tier {
        if frequency > self.t.high && priority > self.t.priority_high {
            Tier::Dram
        } else if frequency < self.t.low && priority < self.t.priority_low {
            Tier::Object
        } else {
            Tier::Ssd
        }
    }
}

impl Policy for ThresholdPolicy {
    fn name(&self) -> &'static str {
        "threshold"
    }

    fn decide(&mut self, _ctx: &PolicyContext, p: &PageStats) -> Tier {
        self.tier_page(p.frequency, self.priority.priority(p.page))
    }

    fn eager_demotion(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(t: ThresholdConfig) -> ThresholdPolicy {
        ThresholdPolicy::new(t, Box::new(ConstantPriority(t.default_priority)))
    }

    #[test]
    fn matches_the_concept_pseudocode() {
        let p = policy(ThresholdConfig::default());
        // Boundaries are strict, as in the pseudocode.
        assert_eq!(p.tier_page(81, 6), Tier::Dram);
        assert_eq!(p.tier_page(80, 6), Tier::Ssd);
        assert_eq!(p.tier_page(81, 5), Tier::Ssd);
        assert_eq!(p.tier_page(19, 2), Tier::Object);
        assert_eq!(p.tier_page(20, 2), Tier::Ssd);
        assert_eq!(p.tier_page(19, 3), Tier::Ssd);
        assert_eq!(p.tier_page(50, 4), Tier::Ssd);
        assert_eq!(p.tier_page(100, 255), Tier::Dram);
        assert_eq!(p.tier_page(0, 0), Tier::Object);
    }

    #[test]
    fn thresholds_are_configurable() {
        let p = policy(ThresholdConfig { high: 50, low: 10, priority_high: 1, priority_low: 9, default_priority: 2 });
        assert_eq!(p.tier_page(51, 2), Tier::Dram);
        assert_eq!(p.tier_page(9, 8), Tier::Object);
        assert_eq!(p.tier_page(30, 8), Tier::Ssd);
    }

    #[test]
    fn decide_uses_the_priority_source() {
        #[derive(Debug)]
        struct EvenHigh;
        impl PrioritySource for EvenHigh {
            fn priority(&self, page: u64) -> u8 {
                if page.is_multiple_of(2) { 9 } else { 0 }
            }
        }
        let mut p = ThresholdPolicy::new(ThresholdConfig::default(), Box::new(EvenHigh));
        let pages: Vec<_> = [(0, 90), (1, 90), (2, 10), (3, 10)]
            .iter()
            .map(|&(page, frequency)| PageStats {
                page,
                frequency,
                idle_ticks: 0,
                resident: true,
                zero: false,
                home_tier: 2,
            })
            .collect();
        let ctx = PolicyContext { dram_pages: 10, cold_after_ticks: 10 };
        let out = crate::policy::decide_all(&mut p, &ctx, &pages);
        assert_eq!(out, vec![Tier::Dram, Tier::Ssd, Tier::Ssd, Tier::Object]);
    }
}
