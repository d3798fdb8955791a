use vmtier_engine::{ByteSize, Engine, EngineConfig};
use vmtier_vm::{GuestEvent, GuestImage, GuestRam, MicroVm, RunExit, VmOptions, abi};

#[test]
fn scan_on_engine() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::default();
    cfg.memory = ByteSize(64 << 20);
    cfg.dram = ByteSize(24 << 20);
    cfg.tier2.dir = dir.path().join("tier2");
    cfg.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
    let engine = Engine::start(cfg).unwrap();
    let ram = GuestRam::new(engine.guest_words());
    let mut vm = MicroVm::new(ram, VmOptions::default()).unwrap();
    let img = GuestImage::parse(vmtier_vm::GUEST_ELF).unwrap();
    let mut boot = vm.boot_info();
    boot.workload = abi::workload::ZIPF;
    boot.ops = 20000;
    boot.write_ppm = 300_000;
    boot.seed = 7;
    vm.boot(&img, &boot).unwrap();
    let mut rep = None;
    let t = std::time::Instant::now();
    let exit = vm
        .run(&mut |e| match e {
            GuestEvent::Print(s) => eprintln!("guest: {s}"),
            GuestEvent::Progress { done, total, phase } => {
                eprintln!("{:?} progress {done}/{total} phase {phase}", t.elapsed())
            }
            GuestEvent::Report(r) => rep = Some(r),
        })
        .unwrap();
    let r = rep.unwrap();
    eprintln!(
        "exit {exit:?} pages {} ops {} reads {} writes {} slow {} ticks {:?}",
        r.pages, r.ops, r.reads_verified, r.writes, r.slow_accesses, r.stage_ticks
    );
    eprintln!("{:?}", engine.snapshot().pages_in_tier);
    assert_eq!(exit, RunExit::Exited(0));
}
