//! `run_guest_with`: a guest paused from outside at intervals, checkpointed at one pause (vCPU
//! state and memory), and a second VM resumed from that checkpoint finishes with exactly the
//! report of the uninterrupted run — the guest program is deterministic, so any state lost or
//! torn by the checkpoint would show.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmtier_engine::{ByteSize, Engine, EngineConfig};
use vmtier_vm::{GuestRam, GuestSpec, GuestWorkload, MicroVm, Start, VcpuState, VmOptions, run_guest_with};
use vmtier_workload::Progress;

const MEMORY: u64 = 32 << 20;

fn engine(dir: &tempfile::TempDir) -> Engine {
    let mut cfg = EngineConfig::default();
    cfg.memory = ByteSize(MEMORY);
    cfg.dram = ByteSize(MEMORY);
    cfg.tier2.dir = dir.path().join("tier2");
    cfg.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
    cfg.tier2.direct_io = false;
    Engine::start(cfg).expect("engine starts")
}

#[test]
fn a_guest_resumed_from_a_checkpoint_finishes_as_if_never_stopped() {
    let spec = GuestSpec { workload: GuestWorkload::Zipf, ops: 400_000, write_fraction: 0.3, ..GuestSpec::default() };
    let dir = tempfile::tempdir().unwrap();
    let a = engine(&dir);
    let mut vm = MicroVm::new(GuestRam::new(a.guest_words()), VmOptions::default()).unwrap();
    let pauser = vm.pauser();
    let done = Arc::new(AtomicBool::new(false));
    let timer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut pauses = 0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                pauser.pause();
                pauses += 1;
            }
            pauses
        })
    };
    let checkpoint: Mutex<Option<(VcpuState, Vec<u8>)>> = Mutex::new(None);
    let mut seen = 0;
    let out = run_guest_with(&mut vm, &spec, &Progress::new(), Start::Boot, &mut |vm| {
        seen += 1;
        if seen == 4 {
            let state = vm.save_vcpu()?;
            let mut mem = vec![0u8; MEMORY as usize];
            vm.ram().read(0, &mut mem)?;
            *checkpoint.lock().unwrap() = Some((state, mem));
        }
        Ok(())
    })
    .expect("first run");
    done.store(true, Ordering::Relaxed);
    let pauses = timer.join().unwrap();
    assert!(out.verified(), "first run: {:?}", out.failure());
    let (state, mem) = checkpoint.into_inner().unwrap().expect("the run was paused at least 4 times");
    assert!(pauses >= 4);

    let dir2 = tempfile::tempdir().unwrap();
    let b = engine(&dir2);
    let mut vm2 = MicroVm::new(GuestRam::new(b.guest_words()), VmOptions::default()).unwrap();
    vm2.ram().write(0, &mem).unwrap();
    let resumed = run_guest_with(&mut vm2, &spec, &Progress::new(), Start::Resume(Box::new(state)), &mut |_| Ok(()))
        .expect("resumed run");
    assert!(resumed.verified(), "resumed run: {:?}", resumed.failure());
    let (r1, r2) = (out.report.as_ref().unwrap(), resumed.report.as_ref().unwrap());
    let computed =
        |r: &vmtier_vm::abi::GuestReport| [r.pages, r.ops, r.reads_verified, r.writes, r.pages_touched, r.result];
    assert_eq!(computed(r1), computed(r2), "the resumed guest computed something else");
}
