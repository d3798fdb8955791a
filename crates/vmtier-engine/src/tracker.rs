//! Access tracking: per-page frequency (0–100, decayed over time), recency, read/write, and the
//! access-sequence history that prefetchers and replication consume.
//!
//! Signals: every MISSING fault (the guest touched a page not in DRAM), every WP fault (first
//! write since the page was stored), and MINOR faults on *sampled* resident pages: the MTM unmaps
//! a rotating sample of resident pages from the guest mapping (`MADV_DONTNEED`; the data stays in
//! the memfd) and the next touch reports itself. Time advances in ticks of the MTM loop.
//!
//! Frequency is an exponentially weighted indicator: an observation in a tick moves it `gain` of
//! the way to 100 (at most once per tick); between observations it halves every
//! `half_life_ticks`. So a page seen in every sampling round sits near 100, a page never seen
//! again decays towards 0 — the concept's 0–100 scale with its 80/20 thresholds.

use std::sync::atomic::{AtomicU32, Ordering};

use crossbeam_queue::ArrayQueue;
use serde::Serialize;

use crate::page_table::{PageEntry, REFERENCED, WRITTEN};

/// How an access was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    /// A MISSING fault: the page was not in DRAM.
    Fault,
    /// A MINOR fault on a sampled resident page.
    Sample,
    /// A WP fault: the first write to a stored page.
    Write,
    /// A page brought in by the MTM ahead of use.
    Prefetch,
}

/// One entry of the access history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AccessEvent {
    /// Guest page number.
    pub page: u64,
    /// MTM tick of the access.
    pub tick: u32,
    /// How it was seen.
    pub kind: AccessKind,
    /// Whether it was a write.
    pub write: bool,
}

/// Frequency arithmetic and the history ring.
#[derive(Debug)]
pub struct Tracker {
    gain: f32,
    /// decay[k] = 0.5^(k / half_life), for k ticks since the last observation.
    decay: Vec<f32>,
    tick: AtomicU32,
    history: ArrayQueue<AccessEvent>,
}

impl Tracker {
    /// A tracker with `gain` (0–1], a half-life in ticks, and room for `history` events.
    pub fn new(gain: f32, half_life_ticks: u32, history: usize) -> Self {
        let hl = half_life_ticks.max(1) as f32;
        let decay = (0..=u16::MAX as u32).map(|k| 0.5f32.powf(k as f32 / hl)).collect();
        Self { gain, decay, tick: AtomicU32::new(1), history: ArrayQueue::new(history.max(1)) }
    }

    /// The current tick.
    pub fn tick(&self) -> u32 {
        self.tick.load(Ordering::Relaxed)
    }

    /// Advances time by one tick (the MTM loop calls this).
    pub fn advance(&self) -> u32 {
        self.tick.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn ticks_since(now: u32, seen: u16) -> u16 {
        (now as u16).wrapping_sub(seen)
    }

    /// The frequency of a page with stored `freq` last seen at `seen`, decayed to tick `now`.
    /// A page unseen for 2^16 ticks or more may look recent again; at the default 100 ms tick
    /// that is 109 minutes, long after its frequency has decayed to 0.
    pub fn frequency(&self, freq: u8, seen: u16, now: u32) -> u8 {
        if freq == 0 {
            return 0;
        }
        (f32::from(freq) * self.decay[Self::ticks_since(now, seen) as usize]) as u8
    }

    /// Records an access to `page` (entry `e`).
    pub fn observe(&self, page: u64, e: &PageEntry, kind: AccessKind, write: bool) {
        let now = self.tick();
        let (freq, seen) = e.stats();
        let last = seen.load(Ordering::Relaxed);
        if last != now as u16 || freq.load(Ordering::Relaxed) == 0 {
            let f = f32::from(self.frequency(freq.load(Ordering::Relaxed), last, now));
            let boosted = (f + (100.0 - f) * self.gain).round().min(100.0) as u8;
            freq.store(boosted.max(1), Ordering::Relaxed);
            seen.store(now as u16, Ordering::Relaxed);
        }
        if write {
            e.set_hint(WRITTEN, true);
        }
        e.set_hint(REFERENCED, true);
        let ev = AccessEvent { page, tick: now, kind, write };
        // The history is a bounded ring: the oldest event makes room for the newest.
        if let Err(ev) = self.history.push(ev) {
            let _ = self.history.pop();
            let _ = self.history.push(ev);
        }
    }

    /// Takes all events recorded since the last call, oldest first.
    pub fn drain_history(&self, out: &mut Vec<AccessEvent>) {
        while let Some(ev) = self.history.pop() {
            out.push(ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_rises_with_observations_and_decays() {
        let t = Tracker::new(0.5, 10, 16);
        let e = PageEntry::default();
        let mut last = 0;
        for _ in 0..8 {
            t.observe(1, &e, AccessKind::Sample, false);
            let (f, s) = e.stats();
            let now = f.load(Ordering::Relaxed);
            assert!(now >= last);
            last = now;
            assert_eq!(s.load(Ordering::Relaxed), t.tick() as u16);
            t.advance();
        }
        // Steady state f = 100g / (1 - d(1-g)) with d = 0.5^(1/10): 93.8 for g = 0.5.
        assert!(last > 90, "a page seen every tick settles above 90, got {last}");
        // Seen twice in one tick counts once.
        t.observe(1, &e, AccessKind::Sample, false);
        let once = e.stats().0.load(Ordering::Relaxed);
        t.observe(1, &e, AccessKind::Sample, true);
        assert_eq!(e.stats().0.load(Ordering::Relaxed), once);
        // One half-life later the decayed frequency halves.
        let seen = e.stats().1.load(Ordering::Relaxed);
        let now = t.tick() + 10;
        assert_eq!(t.frequency(100, seen, now), 50);
        assert_eq!(t.frequency(80, seen, t.tick() + 1000), 0);
    }

    #[test]
    fn history_keeps_newest() {
        let t = Tracker::new(0.5, 10, 4);
        let e = PageEntry::default();
        for p in 0..10 {
            t.observe(p, &e, AccessKind::Fault, false);
        }
        let mut out = Vec::new();
        t.drain_history(&mut out);
        assert_eq!(out.iter().map(|e| e.page).collect::<Vec<_>>(), vec![6, 7, 8, 9]);
    }
}
