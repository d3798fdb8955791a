//! The page server end to end: Firecracker's handshake restoring a snapshot from its memory
//! file, vmtier's extension running the tiering engine over a VMM's memfd, and peer death in
//! both directions. The server runs in a thread of the test, or — where it has to die or the
//! VMM has to — in a child process: this test binary re-executed with `--exact child_…`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmtier_engine::{ByteSize, EngineConfig};
use vmtier_uffd::uffd::{feature, mode};
use vmtier_uffd::{AlignedBuf, AnonMapping, Event, FaultKind, Memfd, PAGE_SIZE, SharedMapping, Uffd};
use vmtier_vm::abi::{self, GuestReport};
use vmtier_vm::page_server::{
    ConnEnd, Mode, PageServer, PageServerClient, PageServerError, ServerConfig, WatchOptions,
};
use vmtier_vm::{GuestEvent, GuestImage, GuestRam, MicroVm, RunExit, VmError, VmOptions, snapshot};

const MEM: usize = 32 << 20;
const CHILD_SERVER: &str = "VMTIER_TEST_CHILD_SERVER";
const CHILD_VMM: &str = "VMTIER_TEST_CHILD_VMM";
const CHILD_FIRECRACKER: &str = "VMTIER_TEST_CHILD_FIRECRACKER";

fn boot_zipf(vm: &MicroVm<'_>, ops: u64, seed: u64) {
    let mut boot = vm.boot_info();
    boot.workload = abi::workload::ZIPF;
    boot.ops = ops;
    boot.write_ppm = 300_000;
    boot.seed = seed;
    boot.progress_every = 1000;
    vm.boot(&GuestImage::parse(vmtier_vm::GUEST_ELF).unwrap(), &boot).unwrap();
}

/// Runs to the end; returns the exit, the report, and the first access-phase progress seen.
fn run(vm: &mut MicroVm<'_>) -> (Result<RunExit, VmError>, Option<Box<GuestReport>>, Option<u64>) {
    let mut report = None;
    let mut first = None;
    let exit = vm.run(&mut |e| match e {
        GuestEvent::Report(r) => report = Some(r),
        GuestEvent::Progress { done, phase: abi::phase::ACCESS, .. } if first.is_none() => first = Some(done),
        _ => {}
    });
    (exit, report, first)
}

fn tiers_config(dir: &Path, dram: u64) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.dram = ByteSize(dram);
    cfg.tier2.dir = dir.join("tier2");
    cfg.tier3.url = dir.join("tier3").to_string_lossy().into_owned();
    cfg
}

fn conn_dirs(dir: &Path) -> Vec<PathBuf> {
    ["tier2", "tier3"]
        .iter()
        .filter_map(|t| std::fs::read_dir(dir.join(t)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("conn-"))
        .collect()
}

/// In a child: die with the parent test thread, so no child outlives a failed test.
fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// A child process killed when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This test binary, re-executed to run only the named `child_…` entry point.
fn spawn_child(entry: &str, var: &str, value: &Path) -> ChildGuard {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([entry, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, value)
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary");
    ChildGuard(child)
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "no server came up on {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn firecracker_handshake_restores_a_snapshot_from_the_memory_file() {
    let dir = tempfile::tempdir().unwrap();
    // A guest in plain anonymous memory (no userfaultfd), paused in its access phase.
    let ram = AnonMapping::new(MEM).unwrap();
    let mut vm = MicroVm::new(GuestRam::new(ram.as_words()), VmOptions::default()).unwrap();
    boot_zipf(&vm, 20_000, 11);
    let pauser = vm.pauser();
    let mut paused_at = 0;
    let exit = vm
        .run(&mut |e| {
            if let GuestEvent::Progress { done, phase: abi::phase::ACCESS, .. } = e
                && done >= 8_000
                && paused_at == 0
            {
                paused_at = done;
                pauser.request();
            }
        })
        .unwrap();
    assert_eq!(exit, RunExit::Paused);
    let files = snapshot::write(&dir.path().join("snap"), vm.ram(), &vm.save_vcpu().unwrap()).unwrap();
    drop(vm);
    drop(ram);

    let mut cfg = ServerConfig::new(dir.path().join("pager.sock"));
    cfg.mem_file = Some(files.memory.clone());
    let server = PageServer::start(cfg).unwrap();

    // A fresh VMM: anonymous private RAM registered with a userfaultfd, Firecracker's handshake.
    let t = Instant::now();
    let ram = AnonMapping::new(MEM).unwrap();
    let mut client = PageServerClient::connect_anon(server.socket(), &ram, 0).unwrap();
    let mut vm = MicroVm::new(GuestRam::new(ram.as_words()), VmOptions::default()).unwrap();
    client.watch(Some(vm.pauser()), WatchOptions::default()).unwrap();
    let saved = snapshot::read_state(&files.state).unwrap();
    assert_eq!(saved.ram_bytes, MEM as u64);
    vm.restore_vcpu(&saved.vcpu).unwrap();
    let (exit, report, first) = run(&mut vm);
    assert_eq!(exit.unwrap(), RunExit::Exited(abi::status::OK));
    assert_eq!(report.expect("report").status, abi::status::OK, "the guest verified every page it read");
    assert!(first.unwrap() > paused_at, "the restored guest continued where it was paused");
    let copied = server.stats().pages_copied;
    eprintln!("restored run took {:?}; {copied} pages copied", t.elapsed());
    assert!(copied > 1000, "the guest's memory came from the server ({copied} pages)");
    drop(vm);
    drop(client);

    let reports = server.wait_finished(1, Duration::from_secs(10)).expect("the connection ends");
    let r = &reports[0];
    eprintln!("{r:?}");
    assert_eq!(r.mode, Some(Mode::MemFile));
    assert_eq!(r.end, ConnEnd::PeerClosed);
    assert_eq!(r.guest_bytes, MEM as u64);
    assert!(r.file.pages_copied >= copied);
    assert!(r.file.copies * 2 < r.file.pages_copied, "fault-around copied runs of pages: {:?}", r.file);
    server.shutdown();
    assert!(!dir.path().join("pager.sock").exists(), "the socket file is removed");
}

#[test]
fn remove_events_turn_discarded_pages_into_zero_pages() {
    let dir = tempfile::tempdir().unwrap();
    let pages = 64;
    let content: Vec<u8> = (0..pages * PAGE_SIZE).map(|i| (i / PAGE_SIZE) as u8 + 1).collect();
    let mem_file = dir.path().join("memory");
    std::fs::write(&mem_file, &content).unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("s.sock"));
    cfg.mem_file = Some(mem_file);
    cfg.fault_around_pages = 4;
    let server = PageServer::start(cfg).unwrap();
    let ram = AnonMapping::new(pages * PAGE_SIZE).unwrap();
    let client = PageServerClient::connect_anon(server.socket(), &ram, 0).unwrap();
    let words = ram.as_words();
    let byte_of = |page: usize| words[page * PAGE_SIZE / 8].load(Ordering::SeqCst) as u8;
    assert_eq!(byte_of(10), 11);
    assert_eq!(byte_of(13), 14, "served by the fault on page 10 (fault-around of 4)");
    ram.discard(10 * PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
    assert_eq!(byte_of(10), 0, "a removed page comes back as zeros");
    assert_eq!(byte_of(11), 0);
    assert_eq!(byte_of(12), 13, "pages outside the removed range keep the file's content");
    assert_eq!(byte_of(40), 41);
    drop(client);
    let r = &server.wait_finished(1, Duration::from_secs(10)).unwrap()[0];
    eprintln!("{:?}", r.file);
    assert_eq!(r.file.remove_events, 1);
    assert_eq!(r.file.removed_pages, 2);
    assert_eq!(r.file.zero_pages, 2);
    assert_eq!(r.file.pages_copied, 8);
}

#[test]
fn tiers_mode_runs_the_engine_over_the_vmms_memfd() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("pager.sock"));
    cfg.engine = tiers_config(dir.path(), 8 << 20);
    let server = PageServer::start(cfg).unwrap();

    let memfd = Memfd::create("vmtier-test-guest", MEM as u64).unwrap();
    let map = SharedMapping::new(&memfd).unwrap();
    let mut client = PageServerClient::connect_tiers(server.socket(), &memfd, &map).unwrap();
    let mut vm = MicroVm::new(GuestRam::new(map.as_words()), VmOptions::default()).unwrap();
    client.watch(Some(vm.pauser()), WatchOptions::default()).unwrap();
    boot_zipf(&vm, 20_000, 5);
    let t = Instant::now();
    let (exit, report, _) = run(&mut vm);
    assert_eq!(exit.unwrap(), RunExit::Exited(abi::status::OK));
    assert_eq!(report.expect("report").status, abi::status::OK);
    eprintln!("tiers run took {:?}", t.elapsed());
    drop(vm);
    drop(client);

    let r = &server.wait_finished(1, Duration::from_secs(10)).expect("the connection ends")[0];
    assert_eq!(r.mode, Some(Mode::Tiers));
    assert_eq!(r.end, ConnEnd::PeerClosed);
    let s = r.engine.as_ref().expect("engine snapshot");
    eprintln!(
        "faults {} tier2 hits {} tier3 hits {} demotions {} peak {} written {}",
        s.faults, s.tier2_hits, s.tier3_hits, s.demotions, s.peak_resident_bytes, s.tier2_bytes_written
    );
    assert!(s.peak_resident_bytes <= 8 << 20, "the DRAM budget held: {}", s.peak_resident_bytes);
    assert!(s.demotions > 0 && s.tier2_bytes_written > 0, "pages went down to tier 2");
    assert!(s.tier2_hits + s.tier3_hits > 0, "pages came back from tier 2/3");
    assert_eq!(s.sample_faults, 0, "external memory is not sampled");
    assert!(conn_dirs(dir.path()).is_empty(), "the connection's tier directories are removed");
}

#[test]
fn abort_interrupts_a_vcpu_blocked_on_a_userfaultfd_fault() {
    // A handler that serves faults, then stops: the vCPU blocks inside KVM_RUN on a fault that
    // is never served. `Pauser::abort` must get it out.
    let memfd = Memfd::create("probe", MEM as u64).unwrap();
    let map = SharedMapping::new(&memfd).unwrap();
    let uffd = Arc::new(Uffd::new(feature::MISSING_SHMEM).unwrap());
    uffd.register(&map, mode::MISSING).unwrap();
    let serving = Arc::new(AtomicBool::new(true));
    let served = Arc::new(AtomicU64::new(0));
    let unserved = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handler = {
        let (uffd, serving, served, unserved, stop) =
            (uffd.clone(), serving.clone(), served.clone(), unserved.clone(), stop.clone());
        std::thread::spawn(move || {
            let zero = AlignedBuf::zeroed(PAGE_SIZE);
            let mut ev = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                ev.clear();
                uffd.read_events(&mut ev, 64, Some(Duration::from_millis(20))).unwrap();
                for e in &ev {
                    if let Event::Fault { address, kind: FaultKind::Missing, .. } = *e {
                        if serving.load(Ordering::SeqCst) {
                            uffd.copy(address, &zero, false, true).unwrap();
                            served.fetch_add(1, Ordering::SeqCst);
                        } else {
                            unserved.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        })
    };
    let mut vm = MicroVm::new(GuestRam::new(map.as_words()), VmOptions::default()).unwrap();
    let mut boot = vm.boot_info();
    boot.workload = abi::workload::UNIFORM;
    boot.ops = 1_000_000;
    vm.boot(&GuestImage::parse(vmtier_vm::GUEST_ELF).unwrap(), &boot).unwrap();
    let pauser = vm.pauser();
    let aborter = {
        let (served, serving, unserved) = (served.clone(), serving.clone(), unserved.clone());
        std::thread::spawn(move || {
            let base = served.load(Ordering::SeqCst);
            while served.load(Ordering::SeqCst) < base + 200 {
                std::thread::sleep(Duration::from_millis(1));
            }
            serving.store(false, Ordering::SeqCst);
            while unserved.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(200)); // blocked for a while
            let t = Instant::now();
            let stopped = pauser.abort("test: the page server is gone", Duration::from_secs(5));
            (stopped, t.elapsed())
        })
    };
    let exit = vm.run(&mut |_| {});
    let (stopped, took) = aborter.join().unwrap();
    stop.store(true, Ordering::SeqCst);
    handler.join().unwrap();
    eprintln!("abort took {took:?}; {} faults left unserved", unserved.load(Ordering::SeqCst));
    assert!(stopped, "the vCPU left KVM_RUN");
    assert!(took < Duration::from_secs(1), "{took:?}");
    match exit {
        Err(VmError::PageServerDied(reason)) => assert!(reason.contains("page server is gone")),
        other => panic!("expected PageServerDied, got {other:?}"),
    }
    // Sticky: the VM never runs again.
    assert!(matches!(vm.run(&mut |_| {}), Err(VmError::PageServerDied(_))));
}

/// Child entry point: a page server in tiers mode that runs until it is killed.
#[test]
fn child_page_server() {
    let Some(sock) = std::env::var_os(CHILD_SERVER) else { return };
    die_with_parent();
    let sock = PathBuf::from(sock);
    let mut cfg = ServerConfig::new(&sock);
    cfg.engine = tiers_config(sock.parent().unwrap(), 8 << 20);
    let _server = PageServer::start(cfg).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn killing_the_page_server_fails_the_vm_with_page_server_died() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pager.sock");
    let mut child = spawn_child("child_page_server", CHILD_SERVER, &sock);
    wait_for_socket(&sock);

    let memfd = Memfd::create("vmtier-test-guest", MEM as u64).unwrap();
    let map = SharedMapping::new(&memfd).unwrap();
    let mut client = PageServerClient::connect_tiers(&sock, &memfd, &map).unwrap();
    let mut vm = MicroVm::new(GuestRam::new(map.as_words()), VmOptions::default()).unwrap();
    client.watch(Some(vm.pauser()), WatchOptions::default()).unwrap();
    boot_zipf(&vm, 50_000_000, 3);
    let mut killed_at = None;
    let exit = vm.run(&mut |e| {
        if let GuestEvent::Progress { phase: abi::phase::ACCESS, .. } = e
            && killed_at.is_none()
        {
            child.0.kill().unwrap();
            killed_at = Some(Instant::now());
        }
    });
    let killed_at = killed_at.expect("the guest reached its access phase");
    let took = killed_at.elapsed();
    eprintln!("run returned {took:?} after the kill: {exit:?}");
    match exit {
        Err(VmError::PageServerDied(reason)) => assert!(reason.contains("closed the connection"), "{reason}"),
        other => panic!("expected PageServerDied, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(client.server_gone().is_some());
}

/// Child entry point: a VMM in tiers mode that runs a long guest until it is killed. Prints
/// `RUNNING` once the guest is in its access phase.
#[test]
fn child_vmm() {
    let Some(sock) = std::env::var_os(CHILD_VMM) else { return };
    die_with_parent();
    let memfd = Memfd::create("vmtier-test-guest", MEM as u64).unwrap();
    let map = SharedMapping::new(&memfd).unwrap();
    let _client = PageServerClient::connect_tiers(Path::new(&sock), &memfd, &map).unwrap();
    let mut vm = MicroVm::new(GuestRam::new(map.as_words()), VmOptions::default()).unwrap();
    boot_zipf(&vm, 50_000_000, 9);
    let mut said = false;
    let _ = vm.run(&mut |e| {
        if let GuestEvent::Progress { phase: abi::phase::ACCESS, .. } = e
            && !said
        {
            said = true;
            println!("RUNNING");
        }
    });
}

#[test]
fn a_vmm_that_dies_mid_run_is_cleaned_up_and_the_next_one_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("pager.sock"));
    cfg.engine = tiers_config(dir.path(), 8 << 20);
    let server = PageServer::start(cfg).unwrap();

    let mut child = spawn_child("child_vmm", CHILD_VMM, server.socket());
    let out = BufReader::new(child.0.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The harness prints `test child_vmm ... ` before the child's own output.
        for line in out.lines().map_while(Result::ok) {
            if line.contains("RUNNING") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the child VMM ran its guest");
    assert_eq!(server.stats().active, 1);
    let t = Instant::now();
    child.0.kill().unwrap();
    let r = server.wait_finished(1, Duration::from_secs(10)).expect("the server notices the VMM died")[0].clone();
    eprintln!("noticed after {:?}: {:?}", t.elapsed(), r.end);
    assert!(matches!(r.end, ConnEnd::PeerClosed | ConnEnd::PeerExited), "{:?}", r.end);
    assert_eq!(r.mode, Some(Mode::Tiers));
    assert!(r.engine.as_ref().unwrap().faults > 0);
    assert_eq!(server.stats().active, 0);
    assert!(conn_dirs(dir.path()).is_empty(), "the dead VM's tier directories are removed");

    // The server still serves the next VMM.
    let memfd = Memfd::create("vmtier-test-guest", MEM as u64).unwrap();
    let map = SharedMapping::new(&memfd).unwrap();
    let mut client = PageServerClient::connect_tiers(server.socket(), &memfd, &map).unwrap();
    let mut vm = MicroVm::new(GuestRam::new(map.as_words()), VmOptions::default()).unwrap();
    client.watch(Some(vm.pauser()), WatchOptions::default()).unwrap();
    boot_zipf(&vm, 5_000, 1);
    let (exit, report, _) = run(&mut vm);
    assert_eq!(exit.unwrap(), RunExit::Exited(abi::status::OK));
    assert_eq!(report.unwrap().status, abi::status::OK);
    drop(vm);
    drop(client);
    let reports = server.wait_finished(2, Duration::from_secs(10)).unwrap();
    assert_eq!(reports[1].end, ConnEnd::PeerClosed);
    assert_eq!(server.stats().failed, 0);
}

/// Child entry point: a VMM that behaves like Firecracker — Firecracker's handshake, then the
/// socket is closed and only the userfaultfd kept — and reads guest memory afterwards.
#[test]
fn child_firecracker_vmm() {
    let Some(sock) = std::env::var_os(CHILD_FIRECRACKER) else { return };
    die_with_parent();
    let ram = AnonMapping::new(64 * PAGE_SIZE).unwrap();
    let _uffd = PageServerClient::connect_anon(Path::new(&sock), &ram, 0).unwrap().detach();
    std::thread::sleep(Duration::from_millis(300)); // the server has seen the socket close
    let words = ram.as_words();
    let bytes: Vec<u8> = [3, 30, 63].iter().map(|&p| words[p * PAGE_SIZE / 8].load(Ordering::SeqCst) as u8).collect();
    println!("SERVED {bytes:?}");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_firecracker_peer_that_closes_its_socket_is_served_until_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..64 * PAGE_SIZE).map(|i| (i / PAGE_SIZE) as u8 + 1).collect();
    std::fs::write(dir.path().join("memory"), &content).unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("s.sock"));
    cfg.mem_file = Some(dir.path().join("memory"));
    let server = PageServer::start(cfg).unwrap();
    let mut child = spawn_child("child_firecracker_vmm", CHILD_FIRECRACKER, server.socket());
    let out = BufReader::new(child.0.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Some(i) = line.find("SERVED") {
                let _ = tx.send(line[i..].to_string());
            }
        }
    });
    let served = rx.recv_timeout(Duration::from_secs(30)).expect("the child read its memory");
    assert_eq!(served, "SERVED [4, 31, 64]", "pages served after the socket closed");
    assert_eq!(server.stats().active, 1, "still serving");
    child.0.kill().unwrap();
    let r = &server.wait_finished(1, Duration::from_secs(10)).expect("the server notices the exit")[0];
    assert_eq!(r.end, ConnEnd::PeerExited);
    assert!(r.file.pages_copied >= 3);
}

#[test]
fn a_refused_handshake_fails_the_vmm_with_the_servers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = PageServer::start(ServerConfig::new(dir.path().join("s.sock"))).unwrap();
    let ram = AnonMapping::new(4 << 20).unwrap();
    let mut client = PageServerClient::connect_anon(server.socket(), &ram, 0).unwrap();
    client.watch(None, WatchOptions::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = loop {
        if let Some(r) = client.server_gone() {
            break r;
        }
        assert!(Instant::now() < deadline, "the client noticed the server gave up");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(reason.contains("--mem-file"), "{reason}");
    let r = &server.wait_finished(1, Duration::from_secs(5)).unwrap()[0];
    assert!(matches!(&r.end, ConnEnd::Failed(m) if m.contains("no memory file")), "{:?}", r.end);
    assert_eq!(server.stats().failed, 1);
}

#[test]
fn the_socket_is_private_and_a_live_server_is_never_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let server = PageServer::start(ServerConfig::new(&sock)).unwrap();
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(matches!(PageServer::start(ServerConfig::new(&sock)), Err(PageServerError::SocketInUse { .. })));
    drop(server);
    assert!(!sock.exists());
    // A stale socket file (its server died without cleaning up) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let server = PageServer::start(ServerConfig::new(&sock)).unwrap();
    drop(server);
    // Anything else is left alone.
    std::fs::write(&sock, b"precious").unwrap();
    assert!(matches!(PageServer::start(ServerConfig::new(&sock)), Err(PageServerError::NotASocket { .. })));
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
}

/// A peer on `path` that accepts one connection, reads the handshake, then does `then` with
/// the stream (answer something, close it, or keep silent).
fn fake_peer(
    path: &Path,
    then: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut s, &mut buf);
        then(s);
    })
}

#[test]
fn a_vmm_pointed_at_something_that_is_not_a_page_server_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let memfd = Memfd::create("vmtier-test-guest", MEM as u64).unwrap();
    let map = SharedMapping::new(&memfd).unwrap();
    let connect = |sock: &Path| {
        PageServerClient::connect_tiers_within(sock, &memfd, &map, Duration::from_millis(500))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };

    // Silent: accepts, reads, never answers — the VMM must not wait for its first page forever.
    let sock = dir.path().join("silent.sock");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let peer = fake_peer(&sock, move |_s| {
        let _ = rx.recv_timeout(Duration::from_secs(10));
    });
    let t = Instant::now();
    let e = connect(&sock);
    assert!(e.contains("did not answer the vmtier handshake within 500ms"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "bounded wait: {:?}", t.elapsed());
    tx.send(()).unwrap();
    peer.join().unwrap();

    // Another protocol's reply.
    let sock = dir.path().join("http.sock");
    let peer = fake_peer(&sock, |mut s| {
        std::io::Write::write_all(&mut s, b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
    });
    let e = connect(&sock);
    assert!(e.contains("not a vmtier page server's reply") && e.contains("HTTP/1.1 400"), "{e}");
    peer.join().unwrap();

    // Closes without a word.
    let sock = dir.path().join("closer.sock");
    let peer = fake_peer(&sock, drop);
    let e = connect(&sock);
    assert!(e.contains("closed the connection without answering"), "{e}");
    peer.join().unwrap();
}

#[test]
fn a_tiers_vmm_refused_by_the_server_gets_its_reason_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("pager.sock"));
    cfg.engine = tiers_config(dir.path(), 8 << 20);
    // The server cannot start an engine: its tier-2 directory cannot be created.
    cfg.engine.tier2.dir = PathBuf::from("/proc/vmtier-no-such-dir/tier2");
    let server = PageServer::start(cfg).unwrap();
    let memfd = Memfd::create("vmtier-test-guest", MEM as u64).unwrap();
    let map = SharedMapping::new(&memfd).unwrap();
    let e = PageServerClient::connect_tiers_within(server.socket(), &memfd, &map, Duration::from_secs(20))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused this VM") && e.contains("vmtier-no-such-dir"), "{e}");
    let r = &server.wait_finished(1, Duration::from_secs(10)).unwrap()[0];
    assert!(matches!(r.end, ConnEnd::Failed(_)), "{:?}", r.end);
}

const CHILD_OTHER_USER: &str = "VMTIER_TEST_CHILD_OTHER_USER";

/// Child of `a_peer_of_another_user_is_refused`: connects (as `nobody`) and reports whether the
/// server closed the connection without a word.
#[test]
fn child_other_user() {
    let Some(path) = std::env::var_os(CHILD_OTHER_USER) else { return };
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 16];
    let n = s.read(&mut b).unwrap_or(usize::MAX);
    println!("read {n}");
}

/// A peer running as another user is refused by its credentials (SO_PEERCRED), even where the
/// socket's mode would let it connect. Needs root (to run the peer as `nobody`).
#[test]
fn a_peer_of_another_user_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to run a peer as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("s.sock");
    let server = PageServer::start(ServerConfig::new(&sock)).unwrap();
    // Open the socket up (as a careless mount or umask might): the credential check still holds.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args(["--exact", "child_other_user", "--nocapture", "--test-threads=1"])
        .env(CHILD_OTHER_USER, &sock)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run the peer as nobody");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("Permission denied") && !text.contains("read ") {
        eprintln!("SKIPPED: nobody cannot run the test binary here: {text}");
        return;
    }
    assert!(text.contains("read 0"), "the other user's connection was not closed at once:\n{text}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().refused == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = server.stats();
    assert_eq!((stats.refused, stats.accepted), (1, 0), "{stats:?}");
    // The server's own user is still served (connects, is accepted).
    let _own = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().accepted == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.stats().accepted, 1);
}
