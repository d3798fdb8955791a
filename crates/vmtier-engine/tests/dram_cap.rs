//! The DRAM cap holds under concurrent faults: a guest of 1024 pages with a budget of 64, four
//! guest threads and two fault handlers, with the MTM running and with faults alone reclaiming
//! (direct reclaim). Every read the guest makes verifies.

mod common;

use std::time::Duration;

use vmtier_engine::{Engine, EngineConfig, Snapshot};
use vmtier_workload::{Progress, WorkloadConfig, WorkloadKind, WorkloadReport};

use common::{config, with_deadline};

const PAGES: u64 = 1024;
const DRAM_PAGES: u64 = 64;

fn engine_config(mtm: bool) -> (EngineConfig, tempfile::TempDir) {
    let (mut cfg, dir) = config(PAGES, DRAM_PAGES);
    cfg.fault.handler_threads = 2;
    cfg.mtm.enabled = mtm;
    if mtm {
        cfg.mtm.tick_ms = 20;
        cfg.mtm.decide_every_ticks = 2;
        cfg.mtm.headroom_pages = 8;
        cfg.mtm.cold_after_ms = 200;
        cfg.tracker.sample_pages_per_sec = 2000;
    }
    (cfg, dir)
}

fn run_guest(cfg: EngineConfig, kind: WorkloadKind, accesses: u64) -> (WorkloadReport, Snapshot) {
    let engine = Engine::start(cfg).expect("start engine");
    let wl = WorkloadConfig { kind: kind.clone(), accesses, threads: 4, seed: 42, ..WorkloadConfig::default() };
    let report = vmtier_workload::run(engine.guest_words(), &wl, &Progress::new())
        .unwrap_or_else(|e| panic!("{kind} workload: {e}"));
    (report, engine.shutdown())
}

fn check(kind: WorkloadKind, report: &WorkloadReport, snap: &Snapshot) {
    assert!(report.verified, "{kind}: {report:?}");
    assert_eq!(report.pages, PAGES);
    assert!(snap.peak_resident_bytes <= snap.dram_budget_bytes, "{kind}: DRAM cap exceeded: {snap:?}");
    assert_eq!(snap.dram_budget_bytes, DRAM_PAGES * 4096);
    assert!(snap.demotions > 0, "{kind}: a guest 16x the budget must demote: {snap:?}");
    assert_eq!(snap.corrupt_pages, 0, "{kind}: {snap:?}");
    assert_eq!(snap.io_errors, 0, "{kind}: {snap:?}");
}

#[test]
fn cap_holds_with_mtm_uniform_and_zipf() {
    for kind in [WorkloadKind::Uniform, WorkloadKind::zipf()] {
        let (cfg, _dir) = engine_config(true);
        let k = kind.clone();
        let (report, snap) =
            with_deadline("guest with mtm", Duration::from_secs(60), move || run_guest(cfg, k, 20_000));
        check(kind, &report, &snap);
    }
}

#[test]
fn faults_alone_reclaim_without_mtm() {
    for kind in [WorkloadKind::Uniform, WorkloadKind::zipf()] {
        let (cfg, _dir) = engine_config(false);
        let k = kind.clone();
        let (report, snap) = with_deadline("guest without mtm (direct reclaim)", Duration::from_secs(60), move || {
            run_guest(cfg, k, 20_000)
        });
        check(kind.clone(), &report, &snap);
        assert!(snap.direct_reclaims > 0, "{kind}: without the MTM only faults reclaim: {snap:?}");
        assert!(snap.faults as usize >= PAGES as usize, "{kind}: {snap:?}");
    }
}
