//! The Memory Tier Manager loop: the concept's main loop made real.
//!
//! ```text
//! every tick:        advance time; unmap a sample of resident pages (access sampling)
//! every decide tick: [policy.observe every page] -> policy.decide each page, keeping bounded
//!                    candidate lists -> migrate within the bandwidth budget
//! every compact tick: compact tier 2 (move tail slots down, return space) and tier 3 segments
//! ```
//!
//! Migration order: demote (to restore the DRAM headroom and make room for promotions, coldest
//! first; eagerly for policies that ask), promote, then move stored pages between tier 2 and 3.
//! A decision streams over the page table; its working memory is set by the DRAM size and the
//! bandwidth budget, never by the number of guest pages.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, error};
use vmtier_uffd::{AlignedBuf, PAGE_SIZE};

use crate::config::EngineConfig;
use crate::page_table::{Home, PageView};
use crate::pager::Pager;
use crate::policy::{PageStats, Policy, PolicyContext, Tier};
use crate::stats::add;

/// Direct-reclaim victims published per decision (the coldest demotion candidates).
const VICTIMS: usize = 1 << 16;

/// What one page looks like to a policy at tick `now`.
fn page_stats(p: &Pager, page: usize, v: &PageView, now: u32) -> PageStats {
    let never = v.freq == 0 && v.seen == 0;
    PageStats {
        page: page as u64,
        frequency: p.tracker.frequency(v.freq, v.seen, now),
        idle_ticks: if never { u32::MAX / 2 } else { u32::from((now as u16).wrapping_sub(v.seen)) },
        resident: v.resident(),
        zero: !v.resident() && v.home() == Home::Zero,
        home_tier: v.home().tier(),
    }
}

/// The `cap` smallest items of a stream: a max-heap whose top is the largest kept, replaced by
/// any smaller newcomer once full. Its buffer is kept from round to round.
#[derive(Debug)]
struct Smallest<T: Ord> {
    heap: BinaryHeap<T>,
    cap: usize,
}

impl<T: Ord> Default for Smallest<T> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), cap: 0 }
    }
}

impl<T: Ord> Smallest<T> {
    /// Empties the heap for a round keeping at most `cap` items.
    fn reset(&mut self, cap: usize) {
        self.heap.clear();
        self.heap.reserve_exact(cap);
        self.cap = cap;
    }

    fn push(&mut self, item: T) {
        if self.heap.len() < self.cap {
            self.heap.push(item);
        } else if let Some(mut top) = self.heap.peek_mut()
            && item < *top
        {
            *top = item;
        }
    }

    /// The items kept, smallest first (hand the vector back with [`give_back`](Self::give_back)).
    fn take_sorted(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap).into_sorted_vec()
    }

    fn give_back(&mut self, mut v: Vec<T>) {
        v.clear();
        self.heap = BinaryHeap::from(v);
    }

    fn bytes(&self) -> usize {
        self.heap.capacity() * size_of::<T>()
    }
}

/// The bounded candidate lists of one decision.
#[derive(Debug, Default)]
struct Candidates {
    /// Resident pages decided for tier 2/3, coldest kept: (score, page, target).
    demote: Smallest<(u64, u32, Tier)>,
    /// Of those, the pages decided for tier 3 (for eager policies).
    demote_object: Smallest<(u64, u32, Tier)>,
    /// Non-resident pages decided for tier 1, hottest kept.
    promote: Smallest<Reverse<(u64, u32)>>,
    /// Tier-2 pages decided for tier 3, in page order.
    down: Vec<u32>,
    /// Tier-3 pages decided for tier 2, in page order.
    up: Vec<u32>,
}

impl Candidates {
    fn bytes(&self) -> usize {
        self.demote.bytes()
            + self.demote_object.bytes()
            + self.promote.bytes()
            + (self.down.capacity() + self.up.capacity()) * size_of::<u32>()
    }
}

/// State of the MTM between ticks.
#[derive(Debug)]
pub(crate) struct Mtm {
    cfg: EngineConfig,
    policy: Box<dyn Policy>,
    lists: Candidates,
    sample_hand: usize,
    buf: AlignedBuf,
    budget_pages: usize,
}

impl Mtm {
    pub(crate) fn new(cfg: EngineConfig, policy: Box<dyn Policy>) -> Self {
        Self {
            cfg,
            policy,
            lists: Candidates::default(),
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
    ///
    /// Streams over the page table (twice if the policy observes every page first) and keeps
    /// only what this round can act on: the coldest demotion candidates (at most the bandwidth
    /// budget, or the direct-reclaim victims if more, and never more than DRAM holds), the
    /// hottest promotion candidates and the first tier 2↔3 moves, each within the budget. So
    /// the working memory depends on the DRAM size and the bandwidth, not on the guest's.
    pub(crate) fn decide_and_migrate(&mut self, p: &Pager) {
        let started = Instant::now();
        let now = p.tracker.tick();
        let cfg = &self.cfg.mtm;
        let interval_s = (cfg.tick_ms * u64::from(cfg.decide_every_ticks)) as f64 / 1000.0;
        let budget = ((cfg.bandwidth_mbps as f64 * 1e6 * interval_s) / PAGE_SIZE as f64) as usize;
        self.budget_pages = budget;
        let cold_after_ticks = (cfg.cold_after_ms / cfg.tick_ms).max(1) as u32;
        let headroom = cfg.headroom_pages;
        let dram = p.budget.cap();
        let ctx = PolicyContext { dram_pages: dram.saturating_sub(headroom), cold_after_ticks };
        let eager = self.policy.eager_demotion();
        let pages = p.table.len();

        self.policy.begin(&ctx);
        if self.policy.observes_all() {
            for (i, e) in p.table.iter().enumerate() {
                self.policy.observe(&page_stats(p, i, &e.view(), now));
            }
        }

        let c = &mut self.lists;
        c.demote.reset(budget.max(VICTIMS).min(dram));
        c.demote_object.reset(if eager { budget.min(dram) } else { 0 });
        c.promote.reset(budget.min(dram));
        // Step 3 moves at most half the budget's pages down to tier 3, and at most half up (each
        // costs two): the first ones in page order are all it can use.
        let moves = (budget / 2).min(pages);
        c.down.clear();
        c.down.reserve_exact(moves);
        c.up.clear();
        c.up.reserve_exact(moves);
        let (mut n_demote, mut n_promote, mut n_down, mut n_up) = (0, 0, 0, 0);
        for (i, e) in p.table.iter().enumerate() {
            let v = e.view();
            let s = page_stats(p, i, &v, now);
            let t = self.policy.decide(&ctx, &s);
            let score = (u64::from(s.frequency) << 32) | u64::from(u32::MAX - s.idle_ticks);
            match (s.resident, t) {
                (true, Tier::Dram) => {}
                (true, _) => {
                    n_demote += 1;
                    c.demote.push((score, i as u32, t));
                    if t == Tier::Object {
                        c.demote_object.push((score, i as u32, t));
                    }
                }
                (false, Tier::Dram) if !s.zero => {
                    n_promote += 1;
                    c.promote.push(Reverse((score, i as u32)));
                }
                (false, Tier::Object) if matches!(v.home(), Home::Ssd(_)) => {
                    n_down += 1;
                    if c.down.len() < moves {
                        c.down.push(i as u32);
                    }
                }
                (false, Tier::Ssd) if matches!(v.home(), Home::Object(_)) => {
                    n_up += 1;
                    if c.up.len() < moves {
                        c.up.push(i as u32);
                    }
                }
                _ => {}
            }
        }
        let decided = started.elapsed();
        let demote = c.demote.take_sorted();
        let demote_object = c.demote_object.take_sorted();
        let promote = c.promote.take_sorted();
        let down = std::mem::take(&mut c.down);
        let up = std::mem::take(&mut c.up);
        // Direct reclaim on the fault path takes the coldest candidates first.
        p.publish_victims(demote.iter().take(VICTIMS).rev().map(|&(_, i, _)| i).collect());

        // 1. Demote: restore headroom plus room for promotions; eagerly too if the policy says so.
        // Coldest first: everything until enough room is free, then (eagerly) only pages decided
        // for tier 3 — those after the first part, in `demote_object`.
        let want_free = headroom + n_promote.min(budget / 2);
        let need = want_free.saturating_sub(p.budget.free());
        let mut to_object = Vec::new();
        let mut to_ssd = Vec::new();
        let mut last = None;
        for &(score, page, target) in demote.iter().take(need) {
            if !self.spend(1) {
                break;
            }
            last = Some((score, page));
            if target == Tier::Object { to_object.push(page as usize) } else { to_ssd.push(page as usize) }
        }
        if eager {
            for &(score, page, _) in &demote_object {
                if last.is_some_and(|l| (score, page) <= l) {
                    continue;
                }
                if !self.spend(1) {
                    break;
                }
                to_object.push(page as usize);
            }
        }
        self.flush(p, &to_ssd, Tier::Ssd);
        self.flush(p, &to_object, Tier::Object);

        // 2. Promote while frames are free beyond the headroom.
        for &Reverse((_, page)) in &promote {
            if p.budget.free() <= headroom || !self.spend(1) {
                break;
            }
            if let Err(e) = p.promote(page as usize, &mut self.buf) {
                error!(page, error = %crate::error::chain(&e), "promotion failed");
            }
        }

        // 3. Stored pages: cold ones down to tier 3, warm ones up to tier 2.
        let n = down.len().min(self.budget_pages / 2);
        self.budget_pages -= n;
        let down_pages: Vec<usize> = down[..n].iter().map(|&i| i as usize).collect();
        self.flush(p, &down_pages, Tier::Object);
        for &page in &up {
            if p.tier2_is_full() || !self.spend(2) {
                break;
            }
            match p.move_to_ssd(page as usize, &mut self.buf) {
                Err(e) if crate::pager::tier2_refused(&e) => p.note_tier2_refused(&e),
                Err(e) => error!(page, error = %crate::error::chain(&e), "move to tier 2 failed"),
                Ok(_) => {}
            }
        }
        let c = &mut self.lists;
        c.demote.give_back(demote);
        c.demote_object.give_back(demote_object);
        c.promote.give_back(promote);
        c.down = down;
        c.up = up;
        // The lists, the policy's own, and the victims handed to the pager.
        let scratch = self.lists.bytes() + self.policy.scratch_bytes() + VICTIMS.min(dram) * size_of::<u32>();
        p.stats.mtm_scratch_bytes.store(scratch as u64, Ordering::Relaxed);
        debug!(
            demote = n_demote,
            promote = n_promote,
            down = n_down,
            up = n_up,
            decide_us = decided.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "mtm decision"
        );
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
