//! Every workload of the guest program, run in the micro-VM over vmtier's tiered memory while
//! pages really move to tiers 2 and 3 and back, and the guest verifies everything it reads.
//! Also: the guest notices a word of its data changed behind its back.

use std::time::Instant;

use vmtier_engine::{ByteSize, Engine, EngineConfig, EngineError, Snapshot, Tier};
use vmtier_vm::abi::{self, BootInfo, GuestReport, status, workload};
use vmtier_vm::{GuestEvent, GuestImage, GuestRam, MicroVm, RunExit, VmOptions};
use vmtier_workload::content::expected_word;

/// Guest RAM of every test.
const MEMORY: u64 = 32 << 20;
/// DRAM budget: less than half the heap.
const DRAM: u64 = 12 << 20;

/// How pages leave DRAM during a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pressure {
    /// A DRAM budget of [`DRAM`], well below the heap; pages idle for a second go to tier 3, so
    /// short runs reach it too.
    Budget,
    /// Everything fits in DRAM; when the access stage begins the test moves every heap page
    /// out by hand, alternately to tier 2 and tier 3.
    ByHand,
}

/// An engine over a fresh temporary directory.
fn engine(dir: &tempfile::TempDir, pressure: Pressure) -> Engine {
    let mut cfg = EngineConfig::default();
    cfg.memory = ByteSize(MEMORY);
    cfg.tier2.dir = dir.path().join("tier2");
    cfg.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
    match pressure {
        Pressure::Budget => {
            cfg.dram = ByteSize(DRAM);
            cfg.mtm.cold_after_ms = 1000;
        }
        Pressure::ByHand => cfg.dram = ByteSize(MEMORY),
    }
    // These tests check content, not device speed: the page cache may stand in for the disk.
    cfg.tier2.direct_io = false;
    Engine::start(cfg).expect("engine starts")
}

/// What a guest run produced.
struct Outcome {
    exit: RunExit,
    report: Option<Box<GuestReport>>,
    lines: Vec<String>,
}

impl Outcome {
    fn report(&self) -> &GuestReport {
        self.report.as_deref().expect("the guest sent its report")
    }

    /// The first number after `prefix` in a line the guest printed.
    fn printed_number(&self, prefix: &str) -> u64 {
        let line = self.lines.iter().find_map(|l| l.split_once(prefix)).unwrap_or_else(|| {
            panic!("the guest printed no line with {prefix:?}: {:?}", self.lines);
        });
        let digits = line.1.trim_start().split(|c: char| !c.is_ascii_alphanumeric()).next().unwrap_or_default();
        match digits.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => digits.parse(),
        }
        .unwrap_or_else(|e| panic!("bad number after {prefix:?} in {line:?}: {e}"))
    }
}

/// Runs `vm` until the guest exits or the callback asks for a pause, collecting what it says.
/// `on_progress` sees every progress hypercall.
fn run(vm: &mut MicroVm<'_>, out: &mut Outcome, on_progress: &mut dyn FnMut(u64, u64)) {
    out.exit = vm
        .run(&mut |e| match e {
            GuestEvent::Print(s) => {
                eprintln!("guest: {s}");
                out.lines.push(s.to_string());
            }
            GuestEvent::Progress { done, phase, .. } => on_progress(done, phase),
            GuestEvent::Report(r) => out.report = Some(r),
        })
        .expect("the VM runs");
}

/// Boots the guest with `workload` and `set` applied to its boot block, runs it to its exit and
/// returns what it produced with the engine's counters afterwards.
fn run_to_exit(workload: u32, pressure: Pressure, set: impl FnOnce(&mut BootInfo)) -> (Outcome, Snapshot) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let eng = engine(&dir, pressure);
    let mut vm = MicroVm::new(GuestRam::new(eng.guest_words()), VmOptions::default()).unwrap();
    let mut boot = vm.boot_info();
    boot.workload = workload;
    boot.seed = 11;
    boot.progress_every = 1024;
    set(&mut boot);
    vm.boot(&GuestImage::parse(vmtier_vm::GUEST_ELF).unwrap(), &boot).unwrap();
    let mut out = Outcome { exit: RunExit::Paused, report: None, lines: Vec::new() };
    let pauser = vm.pauser();
    run(&mut vm, &mut out, &mut |_, phase| {
        if pressure == Pressure::ByHand && phase == abi::phase::ACCESS {
            pauser.request();
        }
    });
    if pressure == Pressure::ByHand {
        assert_eq!(out.exit, RunExit::Paused, "paused as the access stage began; guest said: {:?}", out.lines);
        let heap = boot.heap_start / abi::PAGE..boot.heap_end / abi::PAGE;
        let (pages, mut moved) = (heap.end - heap.start, 0);
        for page in heap {
            let to = if page % 2 == 0 { Tier::Ssd } else { Tier::Object };
            match eng.move_page(page as usize, to) {
                Ok(m) => moved += u64::from(m),
                Err(EngineError::Busy { .. }) => {} // the MTM holds it this instant
                Err(e) => panic!("moving page {page} to {to:?}: {e}"),
            }
        }
        // Pages the guest has not written yet are zeros, stored nowhere: they do not move.
        assert!(moved > pages / 2, "moved {moved} of {pages} heap pages out of DRAM");
        pauser.clear();
        run(&mut vm, &mut out, &mut |_, _| {});
    }
    let snap = eng.snapshot();
    let r = out.report();
    eprintln!(
        "workload {workload}: {:?} in {:.1?}: pages {} ops {} reads {} writes {} result {} slow {} stage ticks {:?}; \
         tier2 hits {} tier3 hits {} pages per tier {:?}",
        out.exit,
        started.elapsed(),
        r.pages,
        r.ops,
        r.reads_verified,
        r.writes,
        r.result,
        r.slow_accesses,
        r.stage_ticks,
        snap.tier2_hits,
        snap.tier3_hits,
        snap.pages_in_tier
    );
    (out, snap)
}

/// The checks every successful run passes.
fn assert_verified(out: &Outcome, snap: &Snapshot, ops: u64) {
    assert_eq!(out.exit, RunExit::Exited(status::OK), "guest said: {:?}", out.lines);
    let r = out.report();
    assert_eq!(r.status, status::OK);
    assert!(r.pages > 0);
    assert_eq!(r.ops, ops);
    assert!(r.reads_verified > 0 && r.writes > 0);
    assert!(r.pages_touched > 0 && r.final_checked_pages > 0);
    assert!(r.stage_ticks.iter().all(|&t| t > 0), "every stage took time: {:?}", r.stage_ticks);
    assert!(r.slow_accesses > 0, "the guest saw page faults");
    assert_eq!(r.slow_accesses, r.fault_hist.iter().map(|&c| u64::from(c)).sum::<u64>());
    assert!(snap.tier2_hits + snap.tier3_hits > 0, "pages came back from tier 2 or 3: {snap:?}");
}

/// A page workload: every access verifies a page; the final check re-reads every page.
fn page_workload(workload: u32, ops: u64) {
    let (out, snap) = run_to_exit(workload, Pressure::Budget, |b| {
        b.ops = ops;
        b.write_ppm = 300_000;
    });
    assert_verified(&out, &snap, ops);
    let r = out.report();
    let (_, _, pages) = abi::page_region(abi::HEAP_GPA, MEMORY);
    assert_eq!(r.pages, pages);
    assert_eq!(r.final_checked_pages, pages);
    assert_eq!(r.reads_verified, ops + pages, "one verified read per access and per page checked");
}

#[test]
fn zipf_verifies_over_tiers() {
    page_workload(workload::ZIPF, 20_000);
}

#[test]
fn scan_verifies_over_tiers() {
    let (_, _, pages) = abi::page_region(abi::HEAP_GPA, MEMORY);
    page_workload(workload::SCAN, pages);
}

#[test]
fn phases_verifies_over_tiers() {
    let (out, snap) = run_to_exit(workload::PHASES, Pressure::Budget, |b| {
        b.ops = 20_000;
        b.write_ppm = 300_000;
        b.rounds = 4;
    });
    assert_verified(&out, &snap, 20_000);
}

#[test]
fn uniform_verifies_over_tiers() {
    page_workload(workload::UNIFORM, 10_000);
}

#[test]
fn kv_verifies_over_tiers() {
    let ops = 10_000;
    let (out, snap) = run_to_exit(workload::KV, Pressure::Budget, |b| {
        b.ops = ops;
        b.write_ppm = 300_000;
    });
    assert_verified(&out, &snap, ops);
    let r = out.report();
    let keys = out.printed_number("kv:");
    // Every key was put, then about 0.3% of operations deleted one, some put back since (the
    // run is deterministic: with this seed some stay deleted).
    assert!(r.result < keys && r.result > keys - ops / 100, "live keys {} of {keys}", r.result);
    // Every live key once in the final check, plus the operations that found their key.
    assert!(r.reads_verified > r.result && r.reads_verified <= ops + keys, "{} records verified", r.reads_verified);
}

#[test]
fn bfs_verifies_over_tiers() {
    // Searches visit the graph in random order, so with a DRAM budget below the graph nearly
    // every vertex of every search faults (minutes here). The whole graph leaves DRAM by hand
    // instead, and comes back as the first search reads it. A graph of 12 MiB keeps it short.
    let (out, snap) = run_to_exit(workload::BFS, Pressure::ByHand, |b| {
        b.ops = 2;
        b.heap_end = b.heap_start + (12 << 20);
    });
    assert_verified(&out, &snap, 2);
    assert!(snap.tier2_hits > 0 && snap.tier3_hits > 0, "the graph came back from both tiers: {snap:?}");
    let r = out.report();
    let vertices = out.printed_number("bfs:");
    // Vertices nobody links to (in-degree 0) are rare: a search reaches nearly all.
    assert!(r.result <= vertices && r.result > vertices * 99 / 100, "reached {} of {vertices}", r.result);
}

/// Runs `vm` into its access stage, pauses it, flips `mask` into the word at the address `locate`
/// returns, resumes it to its exit and returns the outcome and the word's value before the flip.
fn corrupt_during_access(vm: &mut MicroVm<'_>, locate: impl FnOnce(&Outcome) -> u64, mask: u64) -> (Outcome, u64) {
    let pauser = vm.pauser();
    let mut out = Outcome { exit: RunExit::Paused, report: None, lines: Vec::new() };
    run(vm, &mut out, &mut |done, phase| {
        if phase == abi::phase::ACCESS && done >= 2048 {
            pauser.request();
        }
    });
    assert_eq!(out.exit, RunExit::Paused, "paused in the access stage; guest said: {:?}", out.lines);
    let ram = vm.ram();
    let gpa = locate(&out);
    let before: u64 = ram.read_obj(gpa).unwrap();
    ram.write(gpa, &(before ^ mask).to_le_bytes()).unwrap();
    pauser.clear();
    run(vm, &mut out, &mut |_, _| {});
    (out, before)
}

#[test]
fn zipf_guest_catches_a_flipped_word() {
    let dir = tempfile::tempdir().unwrap();
    let eng = engine(&dir, Pressure::Budget);
    let mut vm = MicroVm::new(GuestRam::new(eng.guest_words()), VmOptions::default()).unwrap();
    let mut boot = vm.boot_info();
    boot.workload = workload::ZIPF;
    boot.ops = 20_000;
    boot.write_ppm = 300_000;
    boot.progress_every = 1024;
    vm.boot(&GuestImage::parse(vmtier_vm::GUEST_ELF).unwrap(), &boot).unwrap();
    let (versions, data, _) = abi::page_region(boot.heap_start, boot.heap_end);
    // Page 0 is the hottest (rank 0 scatters to page 0); word 7 of it.
    let (page, word, mask) = (0u64, 7u64, 1 << 40);
    let ram = vm.ram();
    let mut version = [0u8; 4];
    let (out, before) = corrupt_during_access(
        &mut vm,
        |_| {
            ram.read(versions + page * 4, &mut version).unwrap();
            data + page * abi::PAGE + word * 8
        },
        mask,
    );
    let version = u32::from_le_bytes(version);
    assert_eq!(before, expected_word(page as usize, version, word as usize), "the page held its version");
    assert_eq!(out.exit, RunExit::Exited(status::MISMATCH), "guest said: {:?}", out.lines);
    let r = out.report();
    assert_eq!(r.status, status::MISMATCH);
    assert_eq!(r.mismatch, [page, word, before, before ^ mask], "the report names the page, word and values");
    assert!(out.lines.iter().any(|l| l.contains("mismatch: page 0 word 7")), "{:?}", out.lines);
}

#[test]
fn kv_guest_catches_a_flipped_word() {
    let dir = tempfile::tempdir().unwrap();
    let eng = engine(&dir, Pressure::Budget);
    let mut vm = MicroVm::new(GuestRam::new(eng.guest_words()), VmOptions::default()).unwrap();
    let mut boot = vm.boot_info();
    boot.workload = workload::KV;
    boot.ops = 20_000;
    boot.write_ppm = 0; // gets only: no puts or deletes, so key k stays in record k
    boot.progress_every = 1024;
    vm.boot(&GuestImage::parse(vmtier_vm::GUEST_ELF).unwrap(), &boot).unwrap();
    // Key 0 is the hottest; payload word 5 of its record.
    let (key, word, mask) = (0u64, 5u64, 1 << 3);
    let (out, before) =
        corrupt_during_access(&mut vm, |out| out.printed_number("records at") + key * 256 + word * 8, mask);
    assert_eq!(out.exit, RunExit::Exited(status::MISMATCH), "guest said: {:?}", out.lines);
    let r = out.report();
    assert_eq!(r.status, status::MISMATCH);
    assert_eq!(r.mismatch, [key, word, before, before ^ mask], "the report names the key, word and values");
    assert!(out.lines.iter().any(|l| l.contains("mismatch: key 0 word 5")), "{:?}", out.lines);
}
