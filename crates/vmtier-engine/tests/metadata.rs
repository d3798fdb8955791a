//! The snapshot's metadata report adds up: the page table is 16 bytes a page, the MTM's scratch
//! appears once it has decided, and the per-page figure is the sum over the guest's pages.

mod common;

use std::time::{Duration, Instant};

use vmtier_engine::Engine;

use common::{config, write_page};

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
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = engine.snapshot();
        if s.metadata_bytes.mtm_scratch > 0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let m = &s.metadata_bytes;
    assert_eq!(m.page_table, 1024 * 16);
    assert_eq!(s.page_table_bytes_per_page, 16.0);
    assert!(m.mtm_scratch >= 1024 * 16, "the MTM keeps per-page statistics: {m:?}");
    assert!(m.prefetch > 0, "history keeps a successor table: {m:?}");
    assert!(m.tier2_allocator > 0, "pages were stored in tier 2: {m:?}");
    let sum = (m.page_table + m.mtm_scratch + m.prefetch + m.tier2_allocator) as f64 / 1024.0;
    assert!((s.metadata_bytes_per_page - sum).abs() < 1e-9, "{} vs {sum}", s.metadata_bytes_per_page);
}
