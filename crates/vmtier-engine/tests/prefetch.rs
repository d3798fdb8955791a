//! Prefetching end to end: predictions are installed ahead of the guest, used pages are
//! counted, and prefetched pages never break the DRAM budget.

mod common;

use common::{check_page, config, retry_busy, write_page};
use vmtier_engine::{Engine, PrefetcherKind, Tier};

/// Writes `pages` pages, sends them all to tier 2, then reads them in order `order`.
fn run(
    kind: PrefetcherKind,
    pages: u64,
    dram: u64,
    order: &[usize],
    mtm: bool,
    work_us: u64,
) -> vmtier_engine::Snapshot {
    let (mut cfg, _dir) = config(pages, dram);
    cfg.prefetch.kind = kind;
    cfg.prefetch.max_window_pages = 32;
    cfg.fault.fault_around_pages = 1; // measure the predictor, not fault-around
    if mtm {
        cfg.mtm.enabled = true;
        cfg.mtm.tick_ms = 20;
        cfg.mtm.decide_every_ticks = 1;
        cfg.mtm.headroom_pages = 64;
    }
    let engine = Engine::start(cfg).unwrap();
    let mem = engine.guest_words();
    for p in 0..pages as usize {
        write_page(mem, p, p as u64 + 1);
    }
    for p in 0..pages as usize {
        retry_busy("demote", || engine.move_page(p, Tier::Ssd)).unwrap();
    }
    let before = engine.snapshot();
    for &p in order {
        check_page(mem, p, p as u64 + 1);
        // A guest does some work per page (enough for single-page reads to keep up).
        if work_us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(work_us));
        }
    }
    let mut s = engine.shutdown();
    s.faults -= before.faults;
    s
}

#[test]
fn readahead_removes_most_faults_of_a_sequential_read() {
    let order: Vec<usize> = (0..1024).collect();
    let none = run(PrefetcherKind::None, 2048, 2048, &order, false, 0);
    let ra = run(PrefetcherKind::Readahead, 2048, 2048, &order, false, 0);
    eprintln!(
        "none: {} faults; readahead: {} faults, issued {} used {} late {}",
        none.faults, ra.faults, ra.prefetch_issued, ra.prefetch_used, ra.prefetch_late
    );
    assert_eq!(none.faults, 1024);
    assert!(ra.faults * 5 < none.faults, "readahead left {} of {} faults", ra.faults, none.faults);
    assert!(ra.prefetch_used > 800, "{ra:?}");
    assert!(ra.prefetch_accuracy > 0.9, "accuracy {}", ra.prefetch_accuracy);
    // A used prediction maps the predictions after it: most uses took no fault at all.
    eprintln!("mapped ahead {} of {} used", ra.prefetch_mapped_ahead, ra.prefetch_used);
    assert!(ra.prefetch_mapped_ahead * 2 > ra.prefetch_used, "{ra:?}");
}

#[test]
fn stride_and_leap_follow_a_stride() {
    let order: Vec<usize> = (0..600).map(|i| i * 3).collect();
    for kind in [PrefetcherKind::Stride, PrefetcherKind::Leap, PrefetcherKind::History] {
        let s = run(kind, 2048, 2048, &order, false, 150);
        eprintln!(
            "{kind}: {} faults ({} late), issued {} used {}",
            s.faults, s.prefetch_late, s.prefetch_issued, s.prefetch_used
        );
        // Strided pages are not neighbours on disk, so each is one read; late predictions still
        // count as predicted.
        // Leap prefetches on faults only (a hit just widens its next window), so it keeps
        // taking a fault every window; the others slide ahead on every use.
        let limit = if kind == PrefetcherKind::Leap { 120 } else { 60 };
        assert!(s.faults - s.prefetch_late < limit, "{kind}: {} faults of 600, {} late", s.faults, s.prefetch_late);
        assert!(s.prefetch_accuracy > 0.7, "{kind}: accuracy {}", s.prefetch_accuracy);
    }
}

#[test]
fn prefetched_pages_never_break_the_dram_budget() {
    // Two sequential passes over 8x the budget with the MTM making room: prefetch runs all the
    // time, every page is verified, the budget holds.
    let order: Vec<usize> = (0..2048).chain(0..2048).collect();
    let s = run(PrefetcherKind::Readahead, 2048, 256, &order, true, 0);
    eprintln!(
        "peak {} budget {} issued {} used {} wasted {} dropped {}",
        s.peak_resident_bytes,
        s.dram_budget_bytes,
        s.prefetch_issued,
        s.prefetch_used,
        s.prefetch_wasted,
        s.prefetch_dropped
    );
    assert!(
        s.peak_resident_bytes <= s.dram_budget_bytes,
        "peak {} > budget {}",
        s.peak_resident_bytes,
        s.dram_budget_bytes
    );
    assert!(s.prefetch_issued > 0, "prefetch ran");
    assert!(s.prefetch_used + s.prefetch_wasted <= s.prefetch_issued, "{s:?}");
}

#[test]
fn prefetched_pages_modified_last_time_come_back_writable() {
    // Pages written, stored, then read and rewritten in order: readahead brings them in ahead
    // of the guest, and because each was modified during its last residency its first touch
    // maps it writable, so the rewrite that follows costs no write-protect fault.
    let (mut cfg, _dir) = config(1024, 1024);
    cfg.prefetch.kind = PrefetcherKind::Readahead;
    cfg.fault.fault_around_pages = 1;
    let engine = Engine::start(cfg).unwrap();
    let mem = engine.guest_words();
    // Stored, then rewritten with new content and stored again: modified during the last
    // residency (a page stored for the first time does not count).
    for value in [1, 500] {
        for p in 0..512 {
            write_page(mem, p, p as u64 + value);
        }
        for p in 0..512 {
            retry_busy("demote", || engine.move_page(p, Tier::Ssd)).unwrap();
        }
    }
    let before = engine.snapshot();
    for p in 0..512 {
        check_page(mem, p, p as u64 + 500);
        write_page(mem, p, p as u64 + 1000);
    }
    let s = engine.snapshot();
    let used = s.prefetch_used - before.prefetch_used;
    let wp = s.write_faults - before.write_faults;
    eprintln!("used {used}, write-protect faults {wp}, faults {}", s.faults - before.faults);
    assert!(used > 300, "readahead brought pages in ahead: {used}");
    assert!(wp < 16, "{wp} write-protect faults for 512 rewrites");
    // Every rewrite reaches storage.
    for p in 0..512 {
        retry_busy("demote", || engine.move_page(p, Tier::Ssd)).unwrap();
    }
    for p in 0..512 {
        check_page(mem, p, p as u64 + 1000);
    }
}
