//! The `trace` guest workload: the VMM places a page trace above the heap, the guest replays
//! it over vmtier's tiered memory (a DRAM budget below the trace's footprint) and verifies
//! every page it reads.

use std::path::PathBuf;
use std::sync::Arc;

use vmtier_engine::{ByteSize, Engine, EngineConfig};
use vmtier_vm::{GuestRam, GuestSpec, GuestWorkload, MicroVm, VmError, VmOptions, run_guest};
use vmtier_workload::trace::{PageTrace, TraceAccess};
use vmtier_workload::{PAGE_SIZE, Progress};

const MEMORY: u64 = 32 << 20;

fn engine(dir: &tempfile::TempDir, dram: u64) -> Engine {
    let mut cfg = EngineConfig::default();
    cfg.memory = ByteSize(MEMORY);
    cfg.dram = ByteSize(dram);
    cfg.mtm.cold_after_ms = 500;
    cfg.tier2.dir = dir.path().join("tier2");
    cfg.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
    cfg.tier2.direct_io = false;
    Engine::start(cfg).expect("engine starts")
}

/// Untiered guest RAM (page aligned, as KVM wants).
fn plain_memory() -> vmtier_uffd::AnonMapping {
    vmtier_uffd::AnonMapping::new(MEMORY as usize).expect("anonymous mapping")
}

fn spec(trace: PageTrace) -> GuestSpec {
    GuestSpec { workload: GuestWorkload::Trace, trace: Some(Arc::new(trace)), ..GuestSpec::default() }
}

/// 3000 pages (12 MiB): two sequential passes, then a strided phase that writes every 4th access.
fn synthetic() -> PageTrace {
    let pages = 3000u32;
    let scan = (0..2 * pages).map(|i| TraceAccess { page: i % pages, write: i < pages });
    let strided = (0..20_000u32).map(|i| TraceAccess { page: (i * 37) % pages, write: i % 4 == 0 });
    PageTrace::from_accesses("synthetic", pages, scan.chain(strided)).unwrap()
}

#[test]
fn the_guest_replays_a_trace_over_tiered_memory() {
    let dir = tempfile::tempdir().unwrap();
    let eng = engine(&dir, 8 << 20); // below the 12 MiB footprint
    let trace = synthetic();
    let (len, writes, pages) = (trace.len() as u64, trace.writes(), u64::from(trace.footprint_pages()));
    let mut vm = MicroVm::new(GuestRam::new(eng.guest_words()), VmOptions::default()).unwrap();
    let out = run_guest(&mut vm, &spec(trace), &Progress::new()).unwrap();
    assert!(out.verified(), "{:?}: {:?}", out.failure(), out.lines);
    let r = out.report.as_deref().unwrap();
    assert_eq!((r.pages, r.ops, r.final_checked_pages), (pages, len, pages));
    assert_eq!(r.writes, pages + writes, "populate writes every page, then the trace's writes");
    assert_eq!(r.reads_verified, len + pages);
    let snap = eng.snapshot();
    assert!(snap.tier2_hits + snap.tier3_hits > 0, "pages came back from tier 2 or 3: {snap:?}");
    let report = out.to_workload_report(GuestWorkload::Trace).unwrap();
    assert_eq!(report.kind, "trace");
}

#[test]
fn the_guest_replays_imported_lackey_output() {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vmtier-workload/tests/data/sort-head.lackey");
    let trace = PageTrace::load(&sample).unwrap();
    let len = trace.len() as u64;
    let mem = plain_memory();
    let mut vm = MicroVm::new(GuestRam::new(mem.as_words()), VmOptions::default()).unwrap();
    let out = run_guest(&mut vm, &spec(trace), &Progress::new()).unwrap();
    assert!(out.verified(), "{:?}: {:?}", out.failure(), out.lines);
    assert_eq!(out.report.as_deref().unwrap().ops, len);
}

#[test]
fn a_trace_too_large_for_guest_ram_is_refused() {
    let mem = plain_memory();
    let mut vm = MicroVm::new(GuestRam::new(mem.as_words()), VmOptions::default()).unwrap();
    let pages = (MEMORY / PAGE_SIZE as u64) as u32; // as many pages as the whole RAM
    let trace = PageTrace::from_accesses("big", pages, [TraceAccess { page: pages - 1, write: true }]).unwrap();
    let needed = vmtier_vm::runner::trace_ram_bytes(&trace);
    let err = run_guest(&mut vm, &spec(trace), &Progress::new()).unwrap_err();
    assert!(matches!(err, VmError::TraceTooLarge { .. }), "{err}");
    assert!(err.to_string().contains(&format!("at least {} MiB", needed >> 20)), "{err}");
    let err =
        run_guest(&mut vm, &GuestSpec { workload: GuestWorkload::Trace, ..GuestSpec::default() }, &Progress::new())
            .unwrap_err();
    assert!(matches!(err, VmError::NoTrace), "{err}");
}
