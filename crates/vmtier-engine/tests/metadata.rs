//! The snapshot's metadata report adds up: the hot part (kept for every page all the time) is
//! the 16-byte page table, the rest appears once the MTM has decided and pages were stored, and
//! the per-page figures are the sums over the guest's pages. The MTM's decision scratch does
//! not grow with the guest.

mod common;

use std::time::{Duration, Instant};

use vmtier_engine::{Engine, Snapshot};

use common::{config, write_page};

/// Waits until the MTM has reported its scratch, then for a few more decisions (10 ms apart)
/// and snapshots.
fn after_decisions(engine: &Engine) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.snapshot().metadata_bytes.mtm_scratch == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    engine.snapshot()
}

#[test]
fn metadata_report_adds_up() {
    let (mut cfg, _dir) = config(1024, 256);
    cfg.mtm.enabled = true;
    cfg.mtm.tick_ms = 10;
    cfg.mtm.decide_every_ticks = 1;
    cfg.tracker.half_life_ms = 100;
    cfg.prefetch.kind = vmtier_engine::PrefetcherKind::History;
    let engine = Engine::start(cfg).expect("start engine");
    for p in 0..512 {
        write_page(engine.guest_words(), p, p as u64 + 1);
    }
    let s = after_decisions(&engine);
    let m = &s.metadata_bytes;
    assert_eq!(m.page_table, 1024 * 16);
    assert_eq!(m.hot, m.page_table, "the page table is the hot metadata: {m:?}");
    assert_eq!(s.hot_metadata_bytes_per_page, 16.0);
    assert!(m.mtm_scratch > 0, "the MTM reports its scratch: {m:?}");
    assert!(m.prefetch > 0, "history keeps a successor table: {m:?}");
    assert!(m.tier2_allocator > 0, "pages were stored in tier 2: {m:?}");
    assert_eq!(m.other, m.mtm_scratch + m.prefetch + m.tier2_allocator + m.replication);
    let sum = (m.page_table + m.mtm_scratch + m.prefetch + m.tier2_allocator) as f64 / 1024.0;
    assert!((s.metadata_bytes_per_page - sum).abs() < 1e-9, "{} vs {sum}", s.metadata_bytes_per_page);
}

/// The MTM's scratch for a guest of `pages` pages with 256 pages of DRAM, every page written
/// (so there are candidates of every kind: resident pages to demote, stored pages to promote or
/// move between tiers).
fn mtm_scratch(pages: u64) -> u64 {
    let (mut cfg, _dir) = config(pages, 256);
    cfg.mtm.enabled = true;
    cfg.mtm.tick_ms = 10;
    cfg.mtm.decide_every_ticks = 1;
    cfg.mtm.cold_after_ms = 50;
    // 50 MB/s for 10 ms: a budget of 122 pages a decision, far below either guest's size.
    cfg.mtm.bandwidth_mbps = 50;
    cfg.tracker.half_life_ms = 100;
    cfg.tracker.sample_pages_per_sec = 10_000;
    let engine = Engine::start(cfg).expect("start engine");
    for p in 0..pages as usize {
        write_page(engine.guest_words(), p, p as u64 + 1);
    }
    let s = after_decisions(&engine);
    assert!(s.metadata_bytes.mtm_scratch > 0, "the MTM decided: {:?}", s.metadata_bytes);
    s.metadata_bytes.mtm_scratch
}

#[test]
fn mtm_scratch_stays_constant_when_the_guest_grows_16x() {
    let small = mtm_scratch(1024);
    let large = mtm_scratch(16 * 1024);
    assert_eq!(small, large, "MTM scratch: {small} bytes for 1024 pages, {large} for 16384");
    // Far below the old per-page scratch (21 bytes a page).
    assert!(large < 16 * 1024 * 4, "{large} bytes");
}
