//! The micro-VM over vmtier's tiered memory: save/restore and the dirty log.

use std::collections::BTreeSet;

use vmtier_engine::{ByteSize, Engine, EngineConfig};
use vmtier_vm::{GuestEvent, GuestImage, GuestRam, MicroVm, RunExit, VcpuState, VmOptions, abi};

fn engine(memory: u64, dram: u64, dir: &tempfile::TempDir) -> Engine {
    let mut cfg = EngineConfig::default();
    cfg.memory = ByteSize(memory);
    cfg.dram = ByteSize(dram);
    cfg.tier2.dir = dir.path().join("tier2");
    cfg.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
    Engine::start(cfg).expect("engine starts")
}

/// The parts of a report that depend only on what the guest computed (not on timing).
fn computed(r: &abi::GuestReport) -> [u64; 8] {
    [r.status, r.pages, r.ops, r.reads_verified, r.writes, r.pages_touched, r.final_checked_pages, r.result]
}

/// crc32c of the heap (the workload's data and its bookkeeping), read through guest RAM.
fn heap_digest(ram: GuestRam<'_>) -> u32 {
    let mut crc = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut gpa = abi::HEAP_GPA;
    while gpa < ram.len() {
        let n = buf.len().min((ram.len() - gpa) as usize);
        ram.read(gpa, &mut buf[..n]).unwrap();
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        gpa += n as u64;
    }
    crc
}

fn boot_zipf(vm: &MicroVm<'_>) {
    let mut boot = vm.boot_info();
    boot.workload = abi::workload::ZIPF;
    boot.ops = 30_000;
    boot.write_ppm = 400_000;
    boot.seed = 42;
    boot.progress_every = 1000;
    vm.boot(&GuestImage::parse(vmtier_vm::GUEST_ELF).unwrap(), &boot).unwrap();
}

#[test]
fn save_and_restore_into_a_fresh_vm_gives_the_uninterrupted_result() {
    const MEM: u64 = 32 << 20;
    // Uninterrupted.
    let dir = tempfile::tempdir().unwrap();
    let eng = engine(MEM, 12 << 20, &dir);
    let ram = GuestRam::new(eng.guest_words());
    let mut vm = MicroVm::new(ram, VmOptions::default()).unwrap();
    boot_zipf(&vm);
    let mut want = None;
    let exit = vm
        .run(&mut |e| {
            if let GuestEvent::Report(r) = e {
                want = Some(r)
            }
        })
        .unwrap();
    assert_eq!(exit, RunExit::Exited(abi::status::OK));
    let want = want.expect("report");
    let want_digest = heap_digest(ram);
    drop(vm);
    drop(eng);

    // Paused in the middle of the access stage, saved, VM destroyed, restored into a new VM
    // over the same (tiered) memory.
    let dir = tempfile::tempdir().unwrap();
    let eng = engine(MEM, 12 << 20, &dir);
    let ram = GuestRam::new(eng.guest_words());
    let mut vm = MicroVm::new(ram, VmOptions::default()).unwrap();
    boot_zipf(&vm);
    let pauser = vm.pauser();
    let mut paused_at = 0;
    let exit = vm
        .run(&mut |e| {
            if let GuestEvent::Progress { done, phase: abi::phase::ACCESS, .. } = e
                && done >= 12_000
                && paused_at == 0
            {
                paused_at = done;
                pauser.request();
            }
        })
        .unwrap();
    assert_eq!(exit, RunExit::Paused);
    assert!(paused_at > 0);
    let saved = vm.save_vcpu().unwrap().to_bytes();
    drop(vm);

    let mut vm = MicroVm::new(ram, VmOptions::default()).unwrap();
    vm.restore_vcpu(&VcpuState::from_bytes(&saved).unwrap()).unwrap();
    let mut got = None;
    let mut first_progress = None;
    let exit = vm
        .run(&mut |e| match e {
            GuestEvent::Report(r) => got = Some(r),
            GuestEvent::Progress { done, phase: abi::phase::ACCESS, .. } if first_progress.is_none() => {
                first_progress = Some(done)
            }
            _ => {}
        })
        .unwrap();
    assert_eq!(exit, RunExit::Exited(abi::status::OK));
    assert!(first_progress.unwrap() > paused_at, "the restored guest continued, it did not start over");
    assert_eq!(computed(&got.expect("report")), computed(&want));
    assert_eq!(heap_digest(ram), want_digest, "memory differs from the uninterrupted run");
}

#[test]
fn dirty_log_reports_exactly_the_pages_the_guest_wrote() {
    const MEM: u64 = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::default();
    cfg.memory = ByteSize(MEM);
    cfg.dram = ByteSize(MEM);
    cfg.tracker.sample_pages_per_sec = 0; // no sampling zaps: only the guest's own accesses
    cfg.tier2.dir = dir.path().join("tier2");
    cfg.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
    let eng = Engine::start(cfg).unwrap();
    let ram = GuestRam::new(eng.guest_words());
    let mut vm = MicroVm::new(ram, VmOptions { dirty_log: true }).unwrap();
    let mut boot = vm.boot_info();
    let (_, data_gpa, pages) = abi::page_region(boot.heap_start, boot.heap_end);
    // A scattered list of data pages, written in the order given.
    let list: Vec<u64> = (0..300u64).map(|i| (i * 7919 + 13) % pages).collect();
    let list_gpa = abi::HEAP_GPA - 64 * 1024; // the top of the image area is free
    let bytes: Vec<u8> = list.iter().flat_map(|p| p.to_le_bytes()).collect();
    boot.workload = abi::workload::TOUCH;
    boot.touch_pages = list_gpa;
    boot.touch_count = list.len() as u64;
    vm.boot(&GuestImage::parse(vmtier_vm::GUEST_ELF).unwrap(), &boot).unwrap();
    ram.write(list_gpa, &bytes).unwrap();
    vm.take_dirty_pages().unwrap(); // nothing the guest did yet

    let data_first = data_gpa / abi::PAGE;
    let data_pages = |dirty: Vec<u64>| -> BTreeSet<u64> {
        dirty.into_iter().filter(|&p| p >= data_first && p < data_first + pages).map(|p| p - data_first).collect()
    };
    let pauser = vm.pauser();
    let mut rounds = Vec::new();
    loop {
        let exit = vm
            .run(&mut |e| {
                if let GuestEvent::Progress { .. } = e {
                    pauser.request();
                }
            })
            .unwrap();
        match exit {
            RunExit::Paused => {
                rounds.push(data_pages(vm.take_dirty_pages().unwrap()));
                pauser.clear();
            }
            RunExit::Exited(s) => {
                assert_eq!(s, abi::status::OK);
                break;
            }
        }
    }
    assert_eq!(rounds.len(), 2);
    let written1: BTreeSet<u64> = list.iter().copied().collect();
    let written2: BTreeSet<u64> = list.iter().step_by(3).copied().collect();
    assert_eq!(rounds[0], written1, "round 1: every listed page was written");
    assert_eq!(rounds[1], written2, "round 2: only every third page was rewritten; reads are not dirty");
}
