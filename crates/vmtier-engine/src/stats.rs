//! Engine counters and the fault-latency histogram.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Live counters, bumped on the fault path and by the MTM.
#[derive(Debug)]
pub struct Stats {
    /// MISSING faults (page not in DRAM).
    pub faults_missing: AtomicU64,
    /// MINOR faults (sampled resident page touched).
    pub faults_minor: AtomicU64,
    /// WP faults (first write to a stored page).
    pub faults_wp: AtomicU64,
    /// MISSING faults served by zero-fill (no stored copy, no I/O).
    pub zero_fills: AtomicU64,
    /// MISSING faults served from tier 2.
    pub tier2_hits: AtomicU64,
    /// MISSING faults served from tier 3.
    pub tier3_hits: AtomicU64,
    /// Neighbouring pages installed together with a faulting tier-2 page.
    pub fault_around_pages: AtomicU64,
    /// Pages brought into DRAM by the MTM ahead of use.
    pub promotions: AtomicU64,
    /// Pages removed from DRAM (by the MTM or by direct reclaim).
    pub demotions: AtomicU64,
    /// Evictions done on the fault path because DRAM was full.
    pub direct_reclaims: AtomicU64,
    /// Stored pages moved from tier 2 to tier 3.
    pub moves_2_to_3: AtomicU64,
    /// Stored pages moved from tier 3 to tier 2.
    pub moves_3_to_2: AtomicU64,
    /// Bytes written to tier 2.
    pub tier2_bytes_written: AtomicU64,
    /// Bytes written to tier 3.
    pub tier3_bytes_written: AtomicU64,
    /// Bytes read from tier 2 and 3.
    pub bytes_read: AtomicU64,
    /// Evictions that skipped the write because the page was unchanged.
    pub clean_evictions: AtomicU64,
    /// Of those, `LOGGED` pages found equal to their inherited copy.
    pub unchanged_evictions: AtomicU64,
    /// Faults deferred because their page was being moved or DRAM could not be freed at once.
    pub parked: AtomicU64,
    /// Resident pages unmapped for access sampling.
    pub sampled: AtomicU64,
    /// Stored copies that failed their checksum (the page is poisoned, never served).
    pub corrupt: AtomicU64,
    /// Storage operations that failed.
    pub io_errors: AtomicU64,
    /// Evictions that tier 2 refused (full, or failing writes) and that went to tier 3 instead.
    pub tier2_refused: AtomicU64,
    /// Tier-2 slots moved by compaction.
    pub compacted_slots: AtomicU64,
    /// Tier-3 segments rewritten by compaction.
    pub compacted_segments: AtomicU64,
    /// Pages a prefetcher brought into DRAM.
    pub prefetch_issued: AtomicU64,
    /// Inherited pages a new primary's background fill installed (`Engine::install_inherited`).
    pub inherited_installed: AtomicU64,
    /// Prefetched pages the guest then touched.
    pub prefetch_used: AtomicU64,
    /// Predictions that arrived after the guest had already faulted on the page.
    pub prefetch_late: AtomicU64,
    /// Prefetched pages evicted before the guest touched them.
    pub prefetch_wasted: AtomicU64,
    /// Prefetched pages mapped together with a used neighbour, their use assumed (a subset of
    /// `prefetch_used`).
    pub prefetch_mapped_ahead: AtomicU64,
    /// Predictions dropped (queue full, or no free or cold frame to take).
    pub prefetch_dropped: AtomicU64,
    /// Captured checkpoint copies adopted as their page's home (the page became clean).
    pub checkpoint_adopted: AtomicU64,
    /// Dirty pages written to tier 2 ahead of their demotion (`Engine::preclean`).
    pub precleaned: AtomicU64,
    /// Bytes the MTM keeps for its decisions (per-page statistics, targets, the policy's own).
    pub mtm_scratch_bytes: AtomicU64,
    latency_ns: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        let z = || AtomicU64::new(0);
        Self {
            faults_missing: z(),
            faults_minor: z(),
            faults_wp: z(),
            zero_fills: z(),
            tier2_hits: z(),
            tier3_hits: z(),
            fault_around_pages: z(),
            promotions: z(),
            demotions: z(),
            direct_reclaims: z(),
            moves_2_to_3: z(),
            moves_3_to_2: z(),
            tier2_bytes_written: z(),
            tier3_bytes_written: z(),
            bytes_read: z(),
            clean_evictions: z(),
            unchanged_evictions: z(),
            parked: z(),
            sampled: z(),
            corrupt: z(),
            io_errors: z(),
            tier2_refused: z(),
            compacted_slots: z(),
            compacted_segments: z(),
            prefetch_issued: z(),
            inherited_installed: z(),
            prefetch_used: z(),
            prefetch_late: z(),
            prefetch_wasted: z(),
            prefetch_mapped_ahead: z(),
            prefetch_dropped: z(),
            checkpoint_adopted: z(),
            precleaned: z(),
            mtm_scratch_bytes: z(),
            latency_ns: Mutex::new(Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("valid histogram bounds")),
        }
    }
}

/// Adds one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    /// Records the service time of one MISSING fault, in nanoseconds.
    pub fn record_latency(&self, ns: u64) {
        let _ = self.latency_ns.lock().record(ns.max(1));
    }

    /// Fault latency percentiles in microseconds.
    pub fn latency_us(&self) -> LatencyUs {
        let h = self.latency_ns.lock();
        let q = |p: f64| {
            if h.is_empty() { 0.0 } else { h.value_at_quantile(p) as f64 / 1000.0 }
        };
        LatencyUs {
            p50: q(0.5),
            p99: q(0.99),
            max: if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
            count: h.len(),
        }
    }
}

/// Fault service latency, from reading the event to resolving it.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct LatencyUs {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
    /// Faults measured.
    pub count: u64,
}
