//! Placement policies: given each page's access statistics, the tier it should live in.
//!
//! One file per policy behind the [`Policy`] trait, which decides one page at a time (after an
//! optional pass that observes every page), so a decision needs no per-page scratch. The MTM
//! turns decisions into moves within the DRAM cap and the bandwidth budget: it promotes
//! non-resident pages decided for tier 1 while frames are free, demotes resident pages decided
//! for tier 2/3 (coldest first) when DRAM needs room — or at once if the policy asks for eager
//! demotion — and moves stored pages between tier 2 and tier 3.

mod hotset;
mod threshold;

pub use hotset::HotsetPolicy;
pub use threshold::{ConstantPriority, PrioritySource, ThresholdPolicy};

use crate::config::{EngineConfig, PolicyKind};

/// A tier decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// DRAM.
    Dram = 1,
    /// Tier-2 page store.
    Ssd = 2,
    /// Tier-3 object store.
    Object = 3,
}

/// What a policy sees of one page.
#[derive(Debug, Clone, Copy)]
pub struct PageStats {
    /// Guest page number.
    pub page: u64,
    /// Access frequency 0–100, decayed to now.
    pub frequency: u8,
    /// Ticks since the last observed access.
    pub idle_ticks: u32,
    /// In DRAM now.
    pub resident: bool,
    /// Never stored and not resident: all zeros, costs nothing anywhere.
    pub zero: bool,
    /// Tier of the stored copy: 0 none, 2 or 3.
    pub home_tier: u8,
}

/// Facts about the whole system a policy may use.
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext {
    /// DRAM budget in pages (minus the MTM's headroom).
    pub dram_pages: usize,
    /// Ticks without access after which a page counts as cold.
    pub cold_after_ticks: u32,
}

/// A placement policy.
///
/// A decision round is streamed over the page table, so the policy's working memory does not
/// grow with the guest: [`begin`](Self::begin), then — if [`observes_all`](Self::observes_all)
/// — one [`observe`](Self::observe) per page (a first pass, e.g. to size a hot set), then one
/// [`decide`](Self::decide) per page, in page order.
pub trait Policy: Send + std::fmt::Debug {
    /// Short name for reports.
    fn name(&self) -> &'static str;

    /// Whether the policy needs to see every page through [`observe`](Self::observe) before it
    /// decides any.
    fn observes_all(&self) -> bool {
        false
    }

    /// Starts a decision round.
    fn begin(&mut self, ctx: &PolicyContext) {
        let _ = ctx;
    }

    /// The first pass: sees one page (only if [`observes_all`](Self::observes_all)).
    fn observe(&mut self, page: &PageStats) {
        let _ = page;
    }

    /// The tier of one page.
    fn decide(&mut self, ctx: &PolicyContext, page: &PageStats) -> Tier;

    /// Bytes of working memory the policy keeps between decisions.
    fn scratch_bytes(&self) -> usize {
        0
    }

    /// Whether resident pages decided for tier 3 are demoted at once rather than only when DRAM
    /// needs room.
    fn eager_demotion(&self) -> bool {
        false
    }
}

/// One whole round over `pages` (held in memory): the tier of each, as the MTM would decide it
/// streaming over the page table. For tests and tools.
pub fn decide_all(policy: &mut dyn Policy, ctx: &PolicyContext, pages: &[PageStats]) -> Vec<Tier> {
    policy.begin(ctx);
    if policy.observes_all() {
        for p in pages {
            policy.observe(p);
        }
    }
    pages.iter().map(|p| policy.decide(ctx, p)).collect()
}

/// Builds the policy the configuration names.
pub fn from_config(cfg: &EngineConfig) -> Box<dyn Policy> {
    match cfg.mtm.policy {
        PolicyKind::Hotset => Box::new(HotsetPolicy::default()),
        PolicyKind::Threshold => {
            let t = cfg.mtm.threshold;
            Box::new(ThresholdPolicy::new(t, Box::new(ConstantPriority(t.default_priority))))
        }
    }
}
