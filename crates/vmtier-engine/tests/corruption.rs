//! A corrupt stored copy is never served: a flipped byte in a tier-2 slot file or inside a
//! tier-3 segment object makes `read_page` fail with a corruption error, a promotion fails and
//! poisons the page, and the snapshot counts it. Neighbouring pages are unaffected.
//!
//! The corrupt page is never touched through guest memory: a poisoned page raises SIGBUS.

mod common;

use vmtier_engine::page_table::POISONED;
use vmtier_engine::{Engine, Home, Tier};

use common::{
    TestAuth, check_page, config, flip_byte, page_bytes, read_host, retry_busy, tier2_location, tier3_location,
    write_page,
};

const PAGES: u64 = 128;
const DRAM_PAGES: u64 = 64;

fn start() -> (Engine, tempfile::TempDir) {
    let (cfg, dir) = config(PAGES, DRAM_PAGES);
    (Engine::start(cfg).expect("start engine"), dir)
}

fn poisoned(engine: &Engine, page: usize) -> bool {
    engine.page(page).expect("page").word & POISONED != 0
}

/// Pages 10..13 written and moved to `tier`; returns the engine with page 11 as the victim.
fn setup(tier: Tier) -> (Engine, tempfile::TempDir) {
    let (engine, dir) = start();
    let mem = engine.guest_words();
    for p in 10..13 {
        write_page(mem, p, p as u64 + 100);
    }
    for p in 10..13 {
        assert!(engine.move_page(p, tier).expect("move"), "page {p} moved to {tier:?}");
        let want = if tier == Tier::Ssd { 2 } else { 3 };
        assert_eq!(engine.page(p).unwrap().tier(), want, "page {p}");
    }
    (engine, dir)
}

fn check_corrupt_page(engine: &Engine, corrupt_before: u64) {
    // Host read: a corruption error, never data; it does not poison by itself.
    let e = read_host(engine, 11).expect_err("corrupt copy must not be read");
    assert!(e.is_corruption(), "read_page error should be corruption: {e}");
    assert!(!poisoned(engine, 11));
    // Promotion: fails, poisons.
    let e = engine.move_page(11, Tier::Dram).expect_err("promoting a corrupt page must fail");
    assert!(e.is_corruption(), "promotion error should be corruption: {e}");
    assert!(poisoned(engine, 11), "page 11 must be poisoned: {:?}", engine.page(11).unwrap());
    assert!(!engine.page(11).unwrap().resident());
    assert_eq!(engine.snapshot().corrupt_pages, corrupt_before + 1);
    assert_eq!(engine.snapshot().resident_bytes, 0, "the failed promotion returned its frame");
    // A poisoned page stays unreadable and is never moved or promoted again.
    assert!(read_host(engine, 11).expect_err("still corrupt").is_corruption());
    assert!(!engine.move_page(11, Tier::Dram).expect("no-op on a poisoned page"));
    assert!(!engine.move_page(11, Tier::Object).expect("no-op on a poisoned page"));
    assert!(poisoned(engine, 11));
    // Neighbours: fine from the host and through the guest (faulted in from their own copies).
    for p in [10, 12] {
        assert_eq!(read_host(engine, p).expect("neighbour"), page_bytes(p, p as u64 + 100), "page {p}");
        check_page(engine.guest_words(), p, p as u64 + 100);
        assert!(!poisoned(engine, p));
    }
    assert_eq!(engine.snapshot().corrupt_pages, corrupt_before + 1, "neighbours are not counted");
}

#[test]
fn corrupt_tier2_slot_is_detected_and_poisoned() {
    let (engine, dir) = setup(Tier::Ssd);
    let (file, offset) = tier2_location(&engine, 11);
    assert!(file.starts_with(dir.path()));
    flip_byte(&file, offset + 1234);
    check_corrupt_page(&engine, 0);
    let snap = engine.shutdown();
    assert_eq!(snap.corrupt_pages, 1, "{snap:?}");
}

#[test]
fn corrupt_tier3_segment_is_detected_and_poisoned() {
    let (engine, _dir) = setup(Tier::Object);
    // `move_page` packs one page per segment: the neighbours live in other objects.
    assert!(matches!(engine.page(11).unwrap().home(), Home::Object(_)));
    let (name, offset) = tier3_location(&engine, 11);
    let file = std::path::Path::new(&engine.config().tier3.url).join(name);
    flip_byte(&file, offset + 4095);
    check_corrupt_page(&engine, 0);
    let snap = engine.shutdown();
    assert_eq!(snap.corrupt_pages, 1, "{snap:?}");
}

/// Corruption found by the MTM's own moves (tier 2 -> 3 and tier 3 -> 2) poisons the page too,
/// and both are counted.
#[test]
fn corruption_found_while_moving_between_tiers() {
    let (engine, dir) = setup(Tier::Ssd);
    // Tier 2 -> 3 of a corrupt slot: skipped, poisoned.
    let (file, offset) = tier2_location(&engine, 11);
    assert!(file.starts_with(dir.path()));
    flip_byte(&file, offset);
    assert!(!engine.move_page(11, Tier::Object).expect("corrupt page is skipped"));
    assert!(poisoned(&engine, 11));
    assert_eq!(engine.page(11).unwrap().tier(), 2);
    assert_eq!(engine.snapshot().corrupt_pages, 1);
    // Tier 3 -> 2 of a corrupt segment page: error, poisoned.
    assert!(engine.move_page(12, Tier::Object).expect("move"));
    let (name, offset) = tier3_location(&engine, 12);
    flip_byte(&std::path::Path::new(&engine.config().tier3.url).join(name), offset + 7);
    let e = engine.move_page(12, Tier::Ssd).expect_err("moving a corrupt page up must fail");
    assert!(e.is_corruption(), "{e}");
    assert!(poisoned(&engine, 12));
    assert_eq!(engine.snapshot().corrupt_pages, 2);
    // Page 10 is untouched by all of this.
    assert_eq!(read_host(&engine, 10).expect("page 10"), page_bytes(10, 110));
    check_page(engine.guest_words(), 10, 110);
}

/// Replaces `file` at `offset` with a page of other bytes but the same crc32c as what is there.
fn forge_page(file: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    let mut old = vec![0u8; 4096];
    f.read_exact_at(&mut old, offset).unwrap();
    let mut forged: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    vmtier_storage::fault::force_crc32c(&mut forged, crc32c::crc32c(&old));
    f.write_all_at(&forged, offset).unwrap();
}

/// Moves `page` to `tier`, retrying while a fault handler still holds it (a move that finds the
/// page locked reports `false` rather than wait).
fn move_until(engine: &Engine, page: usize, tier: Tier) -> bool {
    for _ in 0..1000 {
        if retry_busy("move", || engine.move_page(page, tier)).expect("move") {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    false
}

/// With page authentication on (a replicated primary, whose tiers are shared), a stored copy
/// replaced by other bytes with the same crc32c is refused and the page poisoned, in tier 2 and
/// tier 3; copies moved between tiers keep their tag and read fine.
#[test]
fn a_forged_copy_with_a_matching_crc_is_refused_when_pages_are_authenticated() {
    for tier in [Tier::Ssd, Tier::Object] {
        let (mut cfg, dir) = config(PAGES, DRAM_PAGES);
        cfg.page_auth = Some(vmtier_engine::PageAuthHandle(std::sync::Arc::new(TestAuth(0x5eed))));
        let engine = Engine::start(cfg).expect("start engine");
        let mem = engine.guest_words();
        for p in 10..13 {
            write_page(mem, p, p as u64 + 100);
            assert!(move_until(&engine, p, tier), "page {p} moved to {tier:?}");
        }
        // A move between tiers keeps the tag: page 12 goes the other way and still reads.
        let other = if tier == Tier::Ssd { Tier::Object } else { Tier::Ssd };
        assert!(move_until(&engine, 12, other), "page 12 moved to {other:?}");
        assert_eq!(read_host(&engine, 12).expect("moved page"), page_bytes(12, 112));
        // Forge page 11's copy.
        let (file, offset) = match tier {
            Tier::Ssd => tier2_location(&engine, 11),
            _ => {
                let (name, offset) = tier3_location(&engine, 11);
                (std::path::Path::new(&engine.config().tier3.url).join(name), offset)
            }
        };
        assert!(file.starts_with(dir.path()));
        forge_page(&file, offset);
        let e = read_host(&engine, 11).expect_err("a forged copy must not be read");
        assert!(matches!(e, vmtier_engine::EngineError::Unauthenticated { page: 11, .. }), "{tier:?}: {e}");
        assert!(e.to_string().contains("fails authentication"), "{e}");
        let e = engine.move_page(11, Tier::Dram).expect_err("promoting a forged copy must fail");
        assert!(e.is_corruption(), "{e}");
        assert!(poisoned(&engine, 11));
        for p in [10, 12] {
            check_page(engine.guest_words(), p, p as u64 + 100);
        }
        engine.shutdown();
    }
}
