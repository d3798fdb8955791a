//! The Memory Tier Manager loop: the concept's main loop made real.
//!
//! ```text
//! every tick:        advance time; unmap a sample of resident pages (access sampling)
//! every decide tick: gather access data -> policy.decide -> migrate within the bandwidth budget
//! every compact tick: compact tier 2 (move tail slots down, return space) and tier 3 segments
//! ```
//!
//! Migration order: demote (to restore the DRAM headroom and make room for promotions, coldest
//! first; eagerly for policies that ask), promote, then move stored pages between tier 2 and 3.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, error};
use vmtier_uffd::{AlignedBuf, PAGE_SIZE};

use crate::config::EngineConfig;
use crate::page_table::Home;
use crate::pager::Pager;
use crate::policy::{PageStats, Policy, PolicyContext, Tier};
use crate::stats::add;

/// State of the MTM between ticks.
#[derive(Debug)]
pub(crate) struct Mtm {
    cfg: EngineConfig,
    policy: Box<dyn Policy>,
    pages: Vec<PageStats>,
    targets: Vec<Tier>,
    sample_hand: usize,
    buf: AlignedBuf,
    budget_pages: usize,
}

impl Mtm {
    pub(crate) fn new(cfg: EngineConfig, policy: Box<dyn Policy>) -> Self {
        Self {
            cfg,
            policy,
            pages: Vec::new(),
            targets: Vec::new(),
            sample_hand: 0,
            buf: AlignedBuf::zeroed(PAGE_SIZE),
            budget_pages: 0,
        }
    }

    /// Runs ticks until `stop` is set.
    pub(crate) fn run(&mut self, p: &Pager, stop: &AtomicBool) {
        let tick = Duration::from_millis(self.cfg.mtm.tick_ms);
        let mut next = Instant::now() + tick;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(20)));
                continue;
            }
            next += tick;
            if next < now {
                next = now + tick;
            }
            self.tick(p);
        }
    }

    /// One tick of the loop.
    pub(crate) fn tick(&mut self, p: &Pager) {
        let now = p.tracker.advance();
        self.sample(p);
        if now.is_multiple_of(self.cfg.mtm.decide_every_ticks) {
            self.decide_and_migrate(p);
        }
        if now.is_multiple_of(self.cfg.mtm.compact_every_ticks) {
            self.compact(p);
        }
        crate::engine::publish_metrics(p);
    }

    /// Unmaps the next resident pages from the guest mapping so their next access is observed.
    /// External memory is not sampled: the guest mapping is another process's, whose page
    /// tables this process cannot zap.
    fn sample(&mut self, p: &Pager) {
        let Some(map) = &p.map else { return };
        let per_tick = (self.cfg.tracker.sample_pages_per_sec * self.cfg.mtm.tick_ms / 1000) as usize;
        let n = p.table.len();
        let mut zapped = 0;
        // Runs of consecutive resident pages are unmapped with one call: one TLB flush per run.
        let mut run: Option<(usize, usize)> = None;
        let zap = |(first, len): (usize, usize)| {
            map.zap(first * PAGE_SIZE, len * PAGE_SIZE).map_err(|e| {
                error!(page = first, pages = len, error = %crate::error::chain(&e), "sampling unmap failed");
            })
        };
        for _ in 0..n {
            if zapped >= per_tick {
                break;
            }
            let page = self.sample_hand;
            self.sample_hand = (self.sample_hand + 1) % n;
            if !p.table.get(page).view().resident() {
                continue;
            }
            zapped += 1;
            run = match run {
                Some((first, len)) if first + len == page => Some((first, len + 1)),
                Some(r) => {
                    if zap(r).is_err() {
                        return;
                    }
                    Some((page, 1))
                }
                None => Some((page, 1)),
            };
        }
        if let Some(r) = run
            && zap(r).is_err()
        {
            return;
        }
        add(&p.stats.sampled, zapped as u64);
    }

    fn spend(&mut self, pages: usize) -> bool {
        if self.budget_pages < pages {
            return false;
        }
        self.budget_pages -= pages;
        true
    }

    /// Gathers access data, asks the policy, and migrates.
    pub(crate) fn decide_and_migrate(&mut self, p: &Pager) {
        let now = p.tracker.tick();
        let cfg = &self.cfg.mtm;
        let interval_s = (cfg.tick_ms * u64::from(cfg.decide_every_ticks)) as f64 / 1000.0;
        self.budget_pages = ((cfg.bandwidth_mbps as f64 * 1e6 * interval_s) / PAGE_SIZE as f64) as usize;
        let cold_after_ticks = (cfg.cold_after_ms / cfg.tick_ms).max(1) as u32;
        self.pages.clear();
        for (i, e) in p.table.iter().enumerate() {
            let v = e.view();
            let never = v.freq == 0 && v.seen == 0;
            self.pages.push(PageStats {
                page: i as u64,
                frequency: p.tracker.frequency(v.freq, v.seen, now),
                idle_ticks: if never { u32::MAX / 2 } else { u32::from((now as u16).wrapping_sub(v.seen)) },
                resident: v.resident(),
                zero: !v.resident() && v.home() == Home::Zero,
                home_tier: v.home().tier(),
            });
        }
        self.targets.clear();
        self.targets.resize(self.pages.len(), Tier::Ssd);
        let headroom = cfg.headroom_pages;
        let ctx = PolicyContext { dram_pages: p.budget.cap().saturating_sub(headroom), cold_after_ticks };
        self.policy.decide(&ctx, &self.pages, &mut self.targets);
        let scratch = self.pages.capacity() * size_of::<PageStats>()
            + self.targets.capacity() * size_of::<Tier>()
            + self.policy.scratch_bytes();
        p.stats.mtm_scratch_bytes.store(scratch as u64, Ordering::Relaxed);

        let score = |s: &PageStats| (u64::from(s.frequency) << 32) | u64::from(u32::MAX - s.idle_ticks);
        let mut demote: Vec<(u64, usize)> = Vec::new();
        let mut promote: Vec<(u64, usize)> = Vec::new();
        let mut down: Vec<usize> = Vec::new();
        let mut up: Vec<usize> = Vec::new();
        for (s, &t) in self.pages.iter().zip(&self.targets) {
            let i = s.page as usize;
            match (s.resident, t) {
                (true, Tier::Dram) => {}
                (true, _) => demote.push((score(s), i)),
                (false, Tier::Dram) if !s.zero => promote.push((score(s), i)),
                (false, Tier::Object) if matches!(p.table.get(i).view().home(), Home::Ssd(_)) => down.push(i),
                (false, Tier::Ssd) if matches!(p.table.get(i).view().home(), Home::Object(_)) => up.push(i),
                _ => {}
            }
        }
        demote.sort_unstable();
        promote.sort_unstable_by(|a, b| b.cmp(a));
        // Direct reclaim on the fault path takes the coldest candidates first.
        p.publish_victims(demote.iter().take(1 << 16).rev().map(|&(_, i)| i as u32).collect());

        // 1. Demote: restore headroom plus room for promotions; eagerly too if the policy says so.
        let want_free = headroom + promote.len().min(self.budget_pages / 2);
        let need = want_free.saturating_sub(p.budget.free());
        let eager = self.policy.eager_demotion();
        let mut to_object = Vec::new();
        let mut to_ssd = Vec::new();
        let mut taken = 0;
        for &(_, page) in &demote {
            let target = self.targets[page];
            if taken >= need && !(eager && target == Tier::Object) {
                continue;
            }
            if !self.spend(1) {
                break;
            }
            taken += 1;
            if target == Tier::Object {
                to_object.push(page);
            } else {
                to_ssd.push(page);
            }
        }
        self.flush(p, &to_ssd, Tier::Ssd);
        self.flush(p, &to_object, Tier::Object);

        // 2. Promote while frames are free beyond the headroom.
        for &(_, page) in &promote {
            if p.budget.free() <= headroom || !self.spend(1) {
                break;
            }
            if let Err(e) = p.promote(page, &mut self.buf) {
                error!(page, error = %crate::error::chain(&e), "promotion failed");
            }
        }

        // 3. Stored pages: cold ones down to tier 3, warm ones up to tier 2.
        let n = down.len().min(self.budget_pages / 2);
        self.budget_pages -= n;
        self.flush(p, &down[..n], Tier::Object);
        for &page in &up {
            if p.tier2_is_full() || !self.spend(2) {
                break;
            }
            match p.move_to_ssd(page, &mut self.buf) {
                Err(e) if crate::pager::tier2_refused(&e) => p.note_tier2_refused(&e),
                Err(e) => error!(page, error = %crate::error::chain(&e), "move to tier 2 failed"),
                Ok(_) => {}
            }
        }
        debug!(demote = demote.len(), promote = promote.len(), down = down.len(), up = up.len(), "mtm decision");
    }

    /// Moves pages down to `to` in batches (one write per batch).
    fn flush(&mut self, p: &Pager, pages: &[usize], to: Tier) {
        let batch = if to == Tier::Object { self.cfg.tier3.segment_bytes.0 as usize / PAGE_SIZE } else { 256 };
        for chunk in pages.chunks(batch) {
            // Demotions to tier 2 go to tier 3 if tier 2 refuses them (full).
            let moved = if to == Tier::Ssd { p.evict_batch(chunk) } else { p.move_batch(chunk, to) };
            if let Err(e) = moved {
                error!(error = %crate::error::chain(&e), ?to, "batch move down failed");
            }
        }
    }

    /// The concept's `compactMemory`: tier-2 tail slots move down and space is returned; mostly
    /// dead tier-3 segments are rewritten.
    pub(crate) fn compact(&mut self, p: &Pager) {
        let plan = p.ssd.compaction_plan(4096);
        if !plan.is_empty() {
            let wanted: HashMap<u32, ()> = plan.iter().map(|s| (s.0, ())).collect();
            for (page, e) in p.table.iter().enumerate() {
                if let Home::Ssd(slot) = e.view().home()
                    && wanted.contains_key(&slot.0)
                    && let Err(e) = p.relocate_slot(page, slot, &mut self.buf)
                {
                    error!(page, error = %crate::error::chain(&e), "tier-2 compaction move failed");
                }
            }
        }
        if let Err(e) = p.ssd.shrink() {
            error!(error = %crate::error::chain(&e), "tier-2 shrink failed");
        }
        for segment in p.object.compaction_candidates() {
            if let Err(e) = p.compact_segment(segment) {
                error!(segment, error = %crate::error::chain(&e), "tier-3 compaction failed");
            }
        }
    }
}
