//! Every workload kind verifies on a small engine with the MTM running, and a run long enough
//! for cold pages to age out leaves pages in all three tiers; the threshold policy verifies too.

mod common;

use std::time::Duration;

use vmtier_engine::{Engine, EngineConfig, PolicyKind, Snapshot};
use vmtier_workload::{Progress, WorkloadConfig, WorkloadKind};

use common::config;

/// 8 MiB guest, 2 MiB DRAM.
const PAGES: u64 = 2048;
const DRAM_PAGES: u64 = 512;

fn engine_config(policy: PolicyKind) -> (EngineConfig, tempfile::TempDir) {
    let (mut cfg, dir) = config(PAGES, DRAM_PAGES);
    cfg.mtm.enabled = true;
    cfg.mtm.policy = policy;
    cfg.mtm.tick_ms = 10;
    cfg.mtm.cold_after_ms = 100;
    cfg.mtm.decide_every_ticks = 2;
    cfg.mtm.headroom_pages = 32;
    cfg.tracker.sample_pages_per_sec = 20_000;
    cfg.fault.handler_threads = 2;
    (cfg, dir)
}

fn workload(kind: WorkloadKind, accesses: u64, populate: bool) -> WorkloadConfig {
    WorkloadConfig { kind, accesses, threads: 2, seed: 7, populate, ..WorkloadConfig::default() }
}

fn check(what: &str, snap: &Snapshot) {
    assert!(snap.peak_resident_bytes <= snap.dram_budget_bytes, "{what}: DRAM cap exceeded: {snap:?}");
    assert_eq!(snap.corrupt_pages, 0, "{what}: {snap:?}");
    assert_eq!(snap.io_errors, 0, "{what}: {snap:?}");
}

#[test]
fn every_workload_kind_verifies_with_mtm() {
    for kind in [WorkloadKind::zipf(), WorkloadKind::scan(), WorkloadKind::Uniform, WorkloadKind::phases()] {
        let (cfg, _dir) = engine_config(PolicyKind::Hotset);
        let engine = Engine::start(cfg).expect("start engine");
        let report =
            vmtier_workload::run(engine.guest_words(), &workload(kind.clone(), 10_000, true), &Progress::new())
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert!(report.verified, "{kind}: {report:?}");
        check(kind.name(), &engine.shutdown());
    }
}

/// Populate everything, let the MTM age the cold pages out to tier 3, then run a skewed guest:
/// its hot pages are in DRAM, recently evicted ones in tier 2, long-cold ones in tier 3.
#[test]
fn pages_spread_over_all_three_tiers() {
    let (cfg, _dir) = engine_config(PolicyKind::Hotset);
    let engine = Engine::start(cfg).expect("start engine");
    let mut guest =
        vmtier_workload::Guest::new(engine.guest_words(), workload(WorkloadKind::zipf(), 20_000, true)).expect("guest");
    let progress = Progress::new();
    guest.populate(&progress).expect("populate");
    std::thread::sleep(Duration::from_millis(500));
    let aged = engine.snapshot();
    assert!(aged.pages_in_tier["3"] > 0, "cold pages reach tier 3 within 500 ms: {:?}", aged.pages_in_tier);
    guest.access(&progress).expect("zipf accesses verify");
    let snap = engine.snapshot();
    for t in ["1", "2", "3"] {
        assert!(snap.pages_in_tier[t] > 0, "tier {t} holds pages: {:?}", snap.pages_in_tier);
    }
    guest.final_check(&progress).expect("final check");
    check("spread", &engine.shutdown());
}

#[test]
fn threshold_policy_verifies() {
    for kind in [WorkloadKind::zipf(), WorkloadKind::phases()] {
        let (cfg, _dir) = engine_config(PolicyKind::Threshold);
        let engine = Engine::start(cfg).expect("start engine");
        let report =
            vmtier_workload::run(engine.guest_words(), &workload(kind.clone(), 10_000, true), &Progress::new())
                .unwrap_or_else(|e| panic!("threshold {kind}: {e}"));
        assert!(report.verified, "threshold {kind}: {report:?}");
        let snap = engine.shutdown();
        assert_eq!(snap.policy, "threshold");
        check("threshold", &snap);
    }
}
