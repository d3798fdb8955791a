//! The engine over faulty storage (faults injected under the real tier code with
//! `Engine::start_with_io`): a demotion that cannot be written leaves the page in DRAM, a read
//! that fails is an error or a retry, a flipped bit is caught and never served, and a full
//! tier 2 stops demotions to it without losing a page or hanging the guest.
//!
//! After every fault the guest's view of each page is checked word by word.

mod common;

use std::sync::Arc;
use std::time::Duration;

use vmtier_engine::page_table::POISONED;
use vmtier_engine::{Engine, EngineConfig, StorageIo, Tier};
use vmtier_storage::fault::{FaultKind, FaultPlan, Op, Rule, SmallTmpfs};
use vmtier_storage::ssd::FaultyIo;

use common::{check_page, config, page_bytes, read_host, with_deadline, write_page};

const PAGES: u64 = 128;
const DRAM_PAGES: u64 = 64;

struct Faulty {
    engine: Engine,
    tier2: Arc<FaultPlan>,
    tier3: Arc<FaultPlan>,
    _dir: tempfile::TempDir,
}

fn start_with(cfg: EngineConfig, dir: tempfile::TempDir) -> Faulty {
    let tier2 = Arc::new(FaultPlan::new());
    let tier3 = Arc::new(FaultPlan::new());
    let io = StorageIo { tier2: Some(Arc::new(FaultyIo::new(Arc::clone(&tier2)))), tier3: Some(Arc::clone(&tier3)) };
    let engine = Engine::start_with_io(cfg, io).expect("start engine");
    Faulty { engine, tier2, tier3, _dir: dir }
}

fn start() -> Faulty {
    let (cfg, dir) = config(PAGES, DRAM_PAGES);
    start_with(cfg, dir)
}

fn tier(e: &Engine, page: usize) -> u8 {
    e.page(page).expect("page").tier()
}

/// `move_page`, retried while the page is busy for a moment (a fault handler still holds it).
fn move_to(e: &Engine, page: usize, to: Tier) -> Result<bool, vmtier_engine::EngineError> {
    for _ in 0..10_000 {
        match e.move_page(page, to) {
            Ok(false) | Err(vmtier_engine::EngineError::Busy { .. }) => std::thread::sleep(Duration::from_millis(1)),
            r => return r,
        }
    }
    panic!("page {page} stayed busy");
}

fn poisoned(e: &Engine, page: usize) -> bool {
    e.page(page).expect("page").word & POISONED != 0
}

#[test]
fn a_demotion_that_cannot_be_written_leaves_the_page_in_dram() {
    let f = start();
    let e = &f.engine;
    let mem = e.guest_words();
    for p in 0..8 {
        write_page(mem, p, p as u64 + 1);
    }
    let failing = [FaultKind::Eio, FaultKind::Enospc, FaultKind::ShortWrite];
    for (i, kind) in failing.into_iter().enumerate() {
        let p = i;
        f.tier2.add(Rule::new(kind).on(Op::Write).nth(1));
        let err = move_to(e, p, Tier::Ssd).expect_err("tier-2 write fails");
        assert!(!err.is_corruption(), "{kind:?}: {err}");
        assert!(vmtier_engine::chain(&err).contains("cannot write slot"), "{kind:?}: {}", vmtier_engine::chain(&err));
        assert_eq!(tier(e, p), 1, "{kind:?}: page {p} stays in DRAM");
        assert_eq!(read_host(e, p).expect("host read"), page_bytes(p, p as u64 + 1));
        check_page(mem, p, p as u64 + 1);
        // Still writable: the guest's next write is not lost.
        write_page(mem, p, p as u64 + 100);
        check_page(mem, p, p as u64 + 100);
        // With the device healthy again the same demotion works, and the content survives.
        assert!(e.move_page(p, Tier::Ssd).expect("demotion after the fault"));
        assert_eq!(tier(e, p), 2);
        check_page(mem, p, p as u64 + 100);
    }
    // Tier 3: a failed PUT, a lost PUT response.
    for (i, kind) in [FaultKind::Eio, FaultKind::EioAfter].into_iter().enumerate() {
        let p = 4 + i;
        f.tier3.add(Rule::new(kind).on(Op::Write).nth(1));
        let err = move_to(e, p, Tier::Object).expect_err("tier-3 PUT fails");
        assert!(!err.is_corruption(), "{err}");
        assert_eq!(tier(e, p), 1, "{kind:?}: page {p} stays in DRAM");
        check_page(mem, p, p as u64 + 1);
        assert!(e.move_page(p, Tier::Object).expect("demotion after the fault"));
        assert_eq!(tier(e, p), 3);
        check_page(mem, p, p as u64 + 1);
    }
    assert_eq!(e.snapshot().corrupt_pages, 0);
}

#[test]
fn a_failed_read_is_an_error_or_a_retry_never_wrong_bytes() {
    let f = start();
    let e = &f.engine;
    let mem = e.guest_words();
    for p in 0..6 {
        write_page(mem, p, p as u64 + 1);
        let to = if p < 3 { Tier::Ssd } else { Tier::Object };
        assert!(move_to(e, p, to).expect("move"));
    }
    // Host reads and promotions: an I/O error, not corruption; the page is not poisoned.
    f.tier2.add(Rule::new(FaultKind::Eio).on(Op::Read).times(2));
    f.tier3.add(Rule::new(FaultKind::Eio).on(Op::Read).times(2));
    for p in [0, 3] {
        let err = read_host(e, p).expect_err("read fails");
        assert!(!err.is_corruption(), "{err}");
        let err = e.move_page(p, Tier::Dram).expect_err("promotion fails");
        assert!(!err.is_corruption(), "{err}");
        assert!(!poisoned(e, p));
        assert_eq!(tier(e, p), if p < 3 { 2 } else { 3 });
        assert_eq!(read_host(e, p).expect("retry"), page_bytes(p, p as u64 + 1));
    }
    assert_eq!(e.snapshot().resident_bytes, 0, "failed promotions return their frames");
    // Guest faults: the handler retries a failed read until it succeeds.
    f.tier2.add(Rule::new(FaultKind::Eio).on(Op::Read).times(5));
    f.tier3.add(Rule::new(FaultKind::Eio).on(Op::Read).times(5));
    for p in [1, 4] {
        check_page(mem, p, p as u64 + 1);
    }
    assert!(f.tier2.injected() >= 7 && f.tier3.injected() >= 7, "faults were injected");
    assert!(e.snapshot().io_errors > 0, "the fault handler counted its failed reads");
    // Latency spikes on reads: slow, right.
    f.tier2.add(Rule::new(FaultKind::Delay(Duration::from_millis(100))).on(Op::Read));
    f.tier3.add(Rule::new(FaultKind::Delay(Duration::from_millis(100))).on(Op::Read));
    for p in [2, 5] {
        check_page(mem, p, p as u64 + 1);
    }
    assert_eq!(e.snapshot().corrupt_pages, 0);
}

#[test]
fn a_flipped_bit_is_caught_and_never_served() {
    let f = start();
    let e = &f.engine;
    let mem = e.guest_words();
    for p in 0..8 {
        write_page(mem, p, p as u64 + 1);
    }
    // Damaged on the way to tier 2 (the write reports success).
    f.tier2.add(Rule::new(FaultKind::FlipBit).on(Op::Write).nth(1));
    assert!(move_to(e, 1, Tier::Ssd).expect("move"));
    assert!(e.move_page(2, Tier::Ssd).expect("move"));
    let got = read_host(e, 1);
    assert!(got.as_ref().is_err_and(|err| err.is_corruption()), "{:?}", got.map(|_| "bytes"));
    let err = e.move_page(1, Tier::Dram).expect_err("promotion of a damaged copy");
    assert!(err.is_corruption(), "{err}");
    assert!(poisoned(e, 1), "page 1 poisoned, never mapped");
    check_page(mem, 2, 3);
    // Damaged on the way to tier 3, anywhere in the segment object (header, index, page or
    // padding): each read is the right page or refused.
    for seed in 0..4u64 {
        let p = 8 + seed as usize;
        write_page(mem, p, 50 + seed);
        f.tier3.add(Rule::new(FaultKind::FlipBit).on(Op::Write).probability(1.0, seed + 1).times(1));
        assert!(move_to(e, p, Tier::Object).expect("move"));
        match read_host(e, p) {
            Ok(bytes) => assert_eq!(bytes, page_bytes(p, 50 + seed), "page {p}"),
            Err(err) => assert!(err.is_corruption(), "{err}"),
        }
    }
    // Damaged on the way back, once (a flaky transfer): the engine reads the copy again and
    // serves the right bytes; nothing is poisoned.
    assert!(e.move_page(3, Tier::Ssd).expect("move"));
    assert!(move_to(e, 5, Tier::Object).expect("move"));
    f.tier2.add(Rule::new(FaultKind::FlipBit).on(Op::Read).nth(1));
    f.tier3.add(Rule::new(FaultKind::FlipBit).on(Op::Read).nth(1));
    assert_eq!(read_host(e, 3).expect("re-read after a transient flip"), page_bytes(3, 4));
    assert!(e.move_page(5, Tier::Dram).expect("promotion after a transient flip"));
    check_page(mem, 5, 6);
    assert!(!poisoned(e, 3) && !poisoned(e, 5));
    assert_eq!(f.tier2.injected(), 2, "the tier-2 read was flipped");
    assert_eq!(f.tier3.injected(), 5, "the tier-3 GET was flipped");
    // Damaged on every read (a device that corrupts what it returns): refused, counted, the page
    // poisoned, never mapped.
    assert!(move_to(e, 5, Tier::Object).expect("move"));
    f.tier3.add(Rule::new(FaultKind::FlipBit).on(Op::Read));
    let corrupt = e.snapshot().corrupt_pages;
    let err = e.move_page(5, Tier::Dram).expect_err("every GET flipped");
    assert!(err.is_corruption(), "{err}");
    assert!(poisoned(e, 5));
    assert_eq!(e.snapshot().corrupt_pages, corrupt + 1);
    f.tier2.add(Rule::new(FaultKind::FlipBit).on(Op::Read));
    assert!(read_host(e, 3).expect_err("every read flipped").is_corruption());
    f.tier2.clear();
    assert_eq!(read_host(e, 3).expect("clean read"), page_bytes(3, 4));
}

/// Tier 2 refuses every write with ENOSPC: the guest touches twice its DRAM budget, and the
/// engine keeps serving it (evictions go to tier 3) without losing a page.
#[test]
fn a_full_tier2_stops_demotions_to_it_and_nothing_is_lost() {
    let (cfg, dir) = config(2 * DRAM_PAGES, DRAM_PAGES);
    let f = start_with(cfg, dir);
    f.tier2.add(Rule::new(FaultKind::Enospc).on(Op::Write));
    let engine = Arc::new(f.engine);
    let e = Arc::clone(&engine);
    with_deadline("guest over a full tier 2", Duration::from_secs(60), move || {
        let mem = e.guest_words();
        for p in 0..2 * DRAM_PAGES as usize {
            write_page(mem, p, p as u64 + 7);
        }
        for p in 0..2 * DRAM_PAGES as usize {
            check_page(mem, p, p as u64 + 7);
        }
    });
    let s = engine.snapshot();
    assert_eq!(s.pages_in_tier.get("2").copied().unwrap_or(0), 0, "{:?}", s.pages_in_tier);
    assert!(s.pages_in_tier.get("3").copied().unwrap_or(0) > 0, "{:?}", s.pages_in_tier);
    assert!(s.resident_bytes <= DRAM_PAGES * 4096);
    assert_eq!(s.corrupt_pages, 0);
    assert!(s.tier2_refused > 0, "evictions went to tier 3 because tier 2 refused them");
}

/// After an ENOSPC the engine skips tier 2 for a second (no storm of failing writes), then tries
/// it again: once space is back, evictions land in tier 2 again.
#[test]
fn tier2_is_used_again_once_it_has_room() {
    let (cfg, dir) = config(4 * DRAM_PAGES, DRAM_PAGES);
    let f = start_with(cfg, dir);
    f.tier2.add(Rule::new(FaultKind::Enospc).on(Op::Write).nth(1));
    let e = &f.engine;
    let mem = e.guest_words();
    for p in 0..2 * DRAM_PAGES as usize {
        write_page(mem, p, p as u64 + 1);
    }
    let s = e.snapshot();
    assert_eq!(s.tier2_refused, 1);
    assert_eq!(f.tier2.ops(), 1, "one refused write, then tier 2 was skipped: no storm of failing writes");
    assert_eq!(s.tier2_bytes_written, 0);
    std::thread::sleep(Duration::from_millis(1100));
    for p in 2 * DRAM_PAGES as usize..4 * DRAM_PAGES as usize {
        write_page(mem, p, p as u64 + 1);
    }
    assert!(e.snapshot().tier2_bytes_written > 0, "tier 2 used again after the back-off");
    for p in 0..4 * DRAM_PAGES as usize {
        check_page(mem, p, p as u64 + 1);
    }
}

/// The same with the MTM and the background reclaimer running (policy demotions to tier 2 and
/// moves up to it are refused too): the guest runs, nothing is lost, the refusals are counted.
#[test]
fn a_full_tier2_under_the_mtm() {
    let (mut cfg, dir) = config(4 * DRAM_PAGES, DRAM_PAGES);
    cfg.mtm.enabled = true;
    cfg.mtm.headroom_pages = 8;
    cfg.mtm.tick_ms = 10;
    cfg.mtm.cold_after_ms = 50;
    let f = start_with(cfg, dir);
    f.tier2.add(Rule::new(FaultKind::Enospc).on(Op::Write));
    let engine = Arc::new(f.engine);
    let e = Arc::clone(&engine);
    with_deadline("guest under the MTM over a full tier 2", Duration::from_secs(60), move || {
        let mem = e.guest_words();
        for round in 0..3u64 {
            for p in 0..4 * DRAM_PAGES as usize {
                write_page(mem, p, p as u64 + round);
            }
            std::thread::sleep(Duration::from_millis(100));
            for p in 0..4 * DRAM_PAGES as usize {
                check_page(mem, p, p as u64 + round);
            }
        }
    });
    let s = engine.snapshot();
    assert_eq!(s.pages_in_tier.get("2").copied().unwrap_or(0), 0, "{:?}", s.pages_in_tier);
    assert!(s.tier2_refused > 0);
    assert_eq!(s.corrupt_pages, 0);
    assert!(s.peak_resident_bytes <= DRAM_PAGES * 4096);
}

/// The same on a really full file system: tier 2 on a 512 KiB tmpfs (128 pages) under a guest
/// that touches eight times its DRAM. Tier 2 fills, later evictions go to tier 3 (tier 2 is
/// skipped for a second after each ENOSPC), every page reads back right.
#[test]
fn a_really_full_tier2_file_system_stops_demotions_cleanly() {
    let mount = tempfile::tempdir().expect("tempdir");
    let Some(_tmpfs) =
        SmallTmpfs::mount(mount.path(), "512k", "a_really_full_tier2_file_system_stops_demotions_cleanly")
    else {
        return;
    };
    let pages = 8 * DRAM_PAGES as usize;
    let (mut cfg, dir) = config(pages as u64, DRAM_PAGES);
    cfg.tier2.dir = mount.path().join("tier2");
    cfg.tier2.slots_per_file = 16;
    let engine = Arc::new(Engine::start(cfg).expect("start engine with tier 2 on tmpfs"));
    let e = Arc::clone(&engine);
    with_deadline("guest over a full tier-2 file system", Duration::from_secs(60), move || {
        let mem = e.guest_words();
        for p in 0..pages {
            write_page(mem, p, p as u64 + 11);
        }
        for p in 0..pages {
            check_page(mem, p, p as u64 + 11);
        }
    });
    let s = engine.snapshot();
    let in_tier = |t: &str| s.pages_in_tier.get(t).copied().unwrap_or(0);
    // Tier 2 took what fitted; pages read back from it meanwhile and evicted again went to tier
    // 3 while tier 2 was known full.
    assert!(s.tier2_bytes_written > 0 && in_tier("2") <= 128, "{:?}", s.pages_in_tier);
    assert!(in_tier("3") > 0, "{:?}", s.pages_in_tier);
    assert!(s.tier2_refused > 0);
    assert_eq!(s.corrupt_pages, 0);
    drop(engine);
    drop(dir);
}

/// Tier 3 on the real S3 server, stopped under a running guest and restarted a second later:
/// demotions to tier 3 in the meantime fail and leave their pages in DRAM, guest faults on
/// tier-3 pages wait (the client and the fault handler retry), and every page reads back right.
#[test]
fn s3_server_restart_under_a_running_guest() {
    let Some(mut server) = common::s3::S3Server::start_or_skip("s3_server_restart_under_a_running_guest") else {
        return;
    };
    let (mut cfg, dir) = config(PAGES, DRAM_PAGES);
    common::configure_tier3(&mut cfg, &server, "engine-restart");
    let engine = Arc::new(Engine::start(cfg).expect("start engine"));
    let _dir = dir;
    let mem = engine.guest_words();
    for p in 0..16 {
        write_page(mem, p, p as u64 + 3);
    }
    for p in 0..8 {
        assert!(move_to(&engine, p, Tier::Object).expect("move to tier 3"));
    }
    server.stop();
    // A demotion while the server is down: an error after the client's retries; the page stays.
    let err = move_to(&engine, 8, Tier::Object).expect_err("S3 down");
    assert!(!err.is_corruption(), "{err}");
    assert_eq!(tier(&engine, 8), 1);
    check_page(mem, 8, 11);
    // Guest reads of tier-3 pages while the server is down, restarted a second later.
    let e = Arc::clone(&engine);
    let guest = std::thread::spawn(move || {
        let mem = e.guest_words();
        for p in 0..8 {
            check_page(mem, p, p as u64 + 3);
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    with_deadline("guest reads across the restart", Duration::from_secs(120), move || guest.join())
        .expect("guest thread");
    assert!(move_to(&engine, 8, Tier::Object).expect("demotion after the restart"));
    check_page(mem, 8, 11);
    for p in 0..16 {
        assert_eq!(read_host(&engine, p).expect("host read"), page_bytes(p, p as u64 + 3));
    }
    assert_eq!(engine.snapshot().corrupt_pages, 0);
}

/// Under replication, `fdatasync` of tier 2 failing makes `persist` fail: the checkpoint is
/// aborted (never committed), the guest's pages are intact, and the next checkpoint succeeds.
#[test]
fn a_failed_tier2_sync_aborts_the_checkpoint() {
    let (mut cfg, dir) = config(PAGES, DRAM_PAGES);
    cfg.replicate = true;
    let f = start_with(cfg, dir);
    let e = &f.engine;
    let mem = e.guest_words();
    for p in 0..16 {
        write_page(mem, p, p as u64 + 1);
    }
    let cap = e.capture().expect("capture");
    e.persist(cap).expect("persist");
    e.finish_checkpoint(true).expect("commit");
    for p in 0..4 {
        write_page(mem, p, p as u64 + 40);
    }
    f.tier2.add(Rule::new(FaultKind::Eio).on(Op::Sync).nth(1));
    let cap = e.capture().expect("capture");
    let err = e.persist(cap).expect_err("persist must fail when tier 2 cannot sync");
    assert!(vmtier_engine::chain(&err).contains("cannot sync slot file"), "{}", vmtier_engine::chain(&err));
    e.finish_checkpoint(false).expect("abort");
    for p in 0..16 {
        check_page(mem, p, if p < 4 { p as u64 + 40 } else { p as u64 + 1 });
    }
    let cap = e.capture().expect("capture after the abort");
    let delta = e.persist(cap).expect("persist");
    assert!(delta.iter().any(|d| d.page < 4), "the next checkpoint carries the pages the aborted one had");
    e.finish_checkpoint(true).expect("commit");
}

/// Randomized: a guest doing random reads and writes over four times its DRAM, with the MTM on,
/// while tier 2 and tier 3 fail reads and writes at random (EIO, lost responses, latency; on
/// tier 3 also ENOSPC and torn writes) and flip bits on reads now and then. Every read the guest makes is
/// checked against a model: no wrong byte ever, and nothing written is lost.
#[test]
fn random_storage_faults_never_show_the_guest_a_wrong_page() {
    for seed in [1u64, 2, 3] {
        let pages = 4 * DRAM_PAGES as usize;
        let (mut cfg, dir) = config(pages as u64, DRAM_PAGES);
        cfg.mtm.enabled = true;
        cfg.mtm.headroom_pages = 8;
        cfg.mtm.tick_ms = 10;
        cfg.mtm.cold_after_ms = 30;
        cfg.mtm.decide_every_ticks = 1;
        let f = start_with(cfg, dir);
        for (plan, salt) in [(&f.tier2, 0u64), (&f.tier3, 100)] {
            let s = seed * 1000 + salt;
            plan.add(Rule::new(FaultKind::Eio).on(Op::Write).probability(0.05, s + 1));
            plan.add(Rule::new(FaultKind::EioAfter).on(Op::Write).probability(0.03, s + 4));
            if salt != 0 {
                // Tier 2 reporting ENOSPC (also the end of a torn write) makes the engine skip it
                // for a second, which would leave tier 2 idle here: the dedicated tests cover it.
                plan.add(Rule::new(FaultKind::Enospc).on(Op::Write).probability(0.03, s + 2));
                plan.add(Rule::new(FaultKind::ShortWrite).on(Op::Write).probability(0.02, s + 3));
            }
            plan.add(Rule::new(FaultKind::Eio).on(Op::Read).probability(0.05, s + 5));
            plan.add(Rule::new(FaultKind::Delay(Duration::from_millis(2))).probability(0.02, s + 6));
            // Never two flips in a row: a flip on every read of a page would (rightly) poison it.
            plan.add(Rule::new(FaultKind::FlipBit).on(Op::Read).every(97));
        }
        let engine = Arc::new(f.engine);
        let e = Arc::clone(&engine);
        with_deadline("random faults", Duration::from_secs(120), move || {
            let mem = e.guest_words();
            let mut model = vec![0u64; pages];
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            for step in 0..6000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Skewed: half the accesses to an eighth of the pages.
                let p = if x & 1 == 0 { (x >> 8) as usize % (pages / 8) } else { (x >> 8) as usize % pages };
                if (x >> 4) % 3 == 0 {
                    model[p] = step + 1;
                    write_page(mem, p, step + 1);
                } else {
                    check_page(mem, p, model[p]);
                }
            }
            for (p, &v) in model.iter().enumerate() {
                check_page(mem, p, v);
            }
        });
        let s = engine.snapshot();
        assert_eq!(s.corrupt_pages, 0, "seed {seed}");
        assert!(f.tier2.injected() > 0, "seed {seed}: no tier-2 faults injected");
        assert!(s.pages_in_tier.get("2").copied().unwrap_or(0) > 0, "seed {seed}: tier 2 in use");
        eprintln!(
            "seed {seed}: {} tier-2 and {} tier-3 faults injected, {} io_errors, {} refused by tier 2, tiers {:?}",
            f.tier2.injected(),
            f.tier3.injected(),
            s.io_errors,
            s.tier2_refused,
            s.pages_in_tier
        );
    }
}
