//! Checkpoints of a running micro-VM through the engine's replication: at every pause, the map
//! the checkpoints produce (page → stored copy) reads back as exactly the VM's memory, while the
//! engine evicts, samples and moves pages; and the guest, which checks every value it reads,
//! finishes verified (a checkpoint that marked a page clean under a live writable mapping would
//! lose a write). Both ways of tracking the guest's writes: write-protection, and KVM's dirty
//! log (`Engine::capture_logged`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vmtier_engine::{ByteSize, Engine, EngineConfig, Home, PAGE_SIZE};
use vmtier_vm::{GuestRam, GuestSpec, GuestWorkload, MicroVm, Start, VmOptions, run_guest_with};
use vmtier_workload::Progress;

const MEMORY: u64 = 32 << 20;

#[test]
fn checkpoint_map_equals_vm_memory_at_each_pause() {
    checkpoints_equal_memory(false);
}

#[test]
fn dirty_log_checkpoint_map_equals_vm_memory_at_each_pause() {
    checkpoints_equal_memory(true);
}

fn checkpoints_equal_memory(dirty_log: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::default();
    cfg.memory = ByteSize(MEMORY);
    cfg.dram = ByteSize(12 << 20);
    cfg.tier2.dir = dir.path().join("tier2");
    cfg.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
    cfg.tier2.direct_io = false;
    cfg.replicate = true;
    let engine = Engine::start(cfg.clone()).unwrap();
    let spec = GuestSpec { workload: GuestWorkload::Zipf, ops: 300_000, write_fraction: 0.5, ..GuestSpec::default() };
    let mut vm = MicroVm::new(GuestRam::new(engine.guest_words()), VmOptions { dirty_log }).unwrap();
    let pauser = vm.pauser();
    let done = Arc::new(AtomicBool::new(false));
    let timer = {
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(25));
                pauser.pause();
            }
        })
    };
    let mut map: HashMap<u32, (Home, u32)> = HashMap::new();
    let mut checked = 0;
    let mut checkpoints = 0;
    let mut bad = Vec::new();
    let out = run_guest_with(&mut vm, &spec, &Progress::new(), Start::Boot, &mut |vm| {
        let cap =
            if dirty_log { engine.capture_logged(&vm.take_dirty_pages()?).unwrap() } else { engine.capture().unwrap() };
        checkpoints += 1;
        // Every checkpoint goes to the map; every 8th is compared with memory (the comparison
        // reads all of it, which would leave the guest no time to run if done at every pause).
        if checkpoints % 8 != 0 {
            let delta = engine.persist(cap).unwrap();
            engine.finish_checkpoint(true).unwrap();
            for d in delta {
                map.insert(d.page, (d.home, d.crc));
            }
            return Ok(());
        }
        // Memory as it is at the pause, read without faulting pages in.
        let mut mem = vec![0u8; MEMORY as usize];
        for (p, chunk) in mem.chunks_exact_mut(PAGE_SIZE).enumerate() {
            while let Err(e) = engine.read_page(p, chunk) {
                assert!(matches!(e, vmtier_engine::EngineError::Busy { .. }), "read_page {p}: {e}");
                std::thread::yield_now();
            }
        }
        let _ = vm;
        let delta = engine.persist(cap).unwrap();
        engine.finish_checkpoint(true).unwrap();
        for d in delta {
            map.insert(d.page, (d.home, d.crc));
        }
        for p in 0..(MEMORY as usize / PAGE_SIZE) {
            let want = &mem[p * PAGE_SIZE..(p + 1) * PAGE_SIZE];
            let (home, crc) = map.get(&(p as u32)).copied().unwrap_or((Home::Zero, 0));
            let ok = match home {
                Home::Zero => want.iter().all(|&b| b == 0),
                _ => crc32c::crc32c(want) == crc,
            };
            if !ok {
                bad.push((checked, p, home));
            }
        }
        checked += 1;
        Ok(())
    })
    .unwrap();
    done.store(true, Ordering::Relaxed);
    timer.join().unwrap();
    assert!(checked >= 5, "only {checked} checkpoints");
    assert!(
        bad.is_empty(),
        "{} pages differ from memory at their checkpoint, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
    assert!(out.verified(), "{:?}", out.failure());
    let s = engine.snapshot();
    eprintln!(
        "dirty_log={dirty_log}: {checkpoints} checkpoints, wp faults {}, adopted {}, demotions {}",
        s.write_faults, s.checkpoint_adopted, s.demotions
    );
}
