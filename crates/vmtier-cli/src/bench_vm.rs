//! `vmtier bench vm-fault`: page-fault latency as the guest sees it.
//!
//! The same experiment three ways, interleaved in rounds in one run: guest memory is populated
//! (every page written once) with DRAM at an eighth of it, so most pages are evicted to tier 2;
//! then the guest reads uniformly random pages and times the first word of each access. An access
//! slower than 5 µs is a fault; its latency is the whole path from the access back to the
//! guest. The MTM and access sampling are off, so every fault is a tier-2 hit or a zero page
//! and nothing else competes.
//!
//! - `host-thread`: a thread of this process is the guest (vmtier's in-process guest);
//! - `micro-vm`: the KVM micro-VM's guest program, the engine in the VMM process;
//! - `micro-vm-page-server`: the micro-VM with its memory served by `vmtier serve` in another
//!   process (the extended handshake: the server runs the engine over the VMM's memfd).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use vmtier_engine::{ByteSize, Engine, EngineConfig};
use vmtier_uffd::{Memfd, SharedMapping};
use vmtier_vm::page_server::{PageServerClient, WatchOptions};
use vmtier_vm::{GuestLatency, GuestRam, GuestSpec, GuestWorkload, MicroVm, VmOptions};
use vmtier_workload::{Progress, WORDS_PER_PAGE};

/// Arguments of `vmtier bench vm-fault`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest memory (a multiple of 2 MiB).
    #[arg(long, default_value = "256MiB")]
    memory: ByteSize,
    /// Random page reads per run.
    #[arg(long, default_value_t = 40_000)]
    accesses: u64,
    /// Interleaved rounds of every mode.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Directory for tier 2 and tier 3.
    #[arg(long, default_value = "vmtier-data/bench")]
    dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Latency figures of one mode.
#[derive(Debug, Clone, Serialize)]
struct Row {
    mode: &'static str,
    round: u32,
    faults: u64,
    p50_us: f64,
    p99_us: f64,
    p50_vs_host_thread: f64,
    p99_vs_host_thread: f64,
}

fn engine_config(args: &Args) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.memory = args.memory;
    cfg.dram = ByteSize((args.memory.0 / 8) & !4095);
    cfg.mtm.enabled = false;
    cfg.mtm.headroom_pages = 0;
    cfg.tracker.sample_pages_per_sec = 0;
    cfg.tier2.dir = args.dir.join("tier2");
    cfg.tier3.url = args.dir.join("tier3").to_string_lossy().into_owned();
    cfg
}

/// The threshold above which an access counts as a fault, as in the guest program.
const FAULT_NS: u64 = 5_000;

fn host_thread(args: &Args) -> anyhow::Result<GuestLatency> {
    let engine = Engine::start(engine_config(args))?;
    let words = engine.guest_words();
    let pages = words.len() / WORDS_PER_PAGE;
    for p in 0..pages {
        for w in &words[p * WORDS_PER_PAGE..(p + 1) * WORDS_PER_PAGE] {
            w.store(p as u64 + 1, Ordering::Relaxed);
        }
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut rng = vmtier_workload::rng::Xoshiro256::new(7);
    for _ in 0..args.accesses {
        let p = rng.below(pages as u64) as usize;
        let t0 = Instant::now();
        let v = words[p * WORDS_PER_PAGE].load(Ordering::Relaxed);
        let ns = t0.elapsed().as_nanos() as u64;
        anyhow::ensure!(v == p as u64 + 1, "page {p} holds {v}, expected {}", p + 1);
        if ns > FAULT_NS {
            hist.record(ns)?;
        }
    }
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    Ok(GuestLatency { count: hist.len(), p50_us: q(0.5), p99_us: q(0.99) })
}

fn micro_vm(args: &Args) -> anyhow::Result<GuestLatency> {
    let engine = Engine::start(engine_config(args))?;
    let mut vm = MicroVm::new(GuestRam::new(engine.guest_words()), VmOptions::default())?;
    let out = vmtier_vm::run_guest(&mut vm, &uniform_reads(args), &Progress::new())?;
    if let Some(f) = out.failure() {
        anyhow::bail!("micro-VM guest: {f}");
    }
    Ok(out.fault_latency())
}

/// The micro-VM with its memory served by `vmtier serve` in a child process (tiers mode: the
/// server runs the engine over this process's memfd).
fn micro_vm_page_server(args: &Args) -> anyhow::Result<GuestLatency> {
    let cfg = engine_config(args);
    let dir = args.dir.join("page-server");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[engine]\ndram = \"{}\"\n[engine.mtm]\nenabled = false\nheadroom_pages = 0\n\
             [engine.tracker]\nsample_pages_per_sec = 0\n",
            dir.to_string_lossy(),
            cfg.dram
        ),
    )?;
    let socket = dir.join("pager.sock");
    let _ = std::fs::remove_file(&socket);
    let mut child = ServerChild(
        Command::new(std::env::current_exe()?)
            .args(["serve", "--socket"])
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting `vmtier serve`")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Some(status) = child.0.try_wait()? {
            anyhow::bail!("`vmtier serve` exited before listening: {status}");
        }
        anyhow::ensure!(Instant::now() < deadline, "`vmtier serve` did not listen on {} within 10 s", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let memfd = Memfd::create("vmtier-bench-guest", cfg.memory.0)?;
    let map = SharedMapping::new(&memfd)?;
    let mut client = PageServerClient::connect_tiers(&socket, &memfd, &map)?;
    let mut vm = MicroVm::new(GuestRam::new(map.as_words()), VmOptions::default())?;
    client.watch(Some(vm.pauser()), WatchOptions::default())?;
    let out = vmtier_vm::run_guest(&mut vm, &uniform_reads(args), &Progress::new())?;
    drop(vm);
    drop(client);
    child.stop();
    if let Some(f) = out.failure() {
        anyhow::bail!("micro-VM guest served by the page server: {f}");
    }
    Ok(out.fault_latency())
}

/// Stops the server child when dropped, whatever happened.
struct ServerChild(Child);

impl ServerChild {
    fn stop(&mut self) {
        // SAFETY: kill(2) with the child's pid; no memory is passed.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// The guest's side of the experiment: uniformly random page reads, no final check.
fn uniform_reads(args: &Args) -> GuestSpec {
    GuestSpec {
        workload: GuestWorkload::Uniform,
        ops: args.accesses,
        write_fraction: 0.0,
        skip_final_check: true,
        ..GuestSpec::default()
    }
}

/// One way of running the experiment.
type Mode = fn(&Args) -> anyhow::Result<GuestLatency>;

/// Runs the comparison and prints it.
pub fn run(args: &Args) -> anyhow::Result<()> {
    vmtier_vm::kvm_usable()?;
    let modes: [(&'static str, Mode); 3] =
        [("host-thread", host_thread), ("micro-vm", micro_vm), ("micro-vm-page-server", micro_vm_page_server)];
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        let mut base = None;
        for (mode, f) in modes {
            eprintln!("bench vm-fault: round {round}, {mode}");
            let l = f(args)?;
            let b = *base.get_or_insert(l);
            rows.push(Row {
                mode,
                round,
                faults: l.count,
                p50_us: l.p50_us,
                p99_us: l.p99_us,
                p50_vs_host_thread: l.p50_us / b.p50_us,
                p99_vs_host_thread: l.p99_us / b.p99_us,
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "guest-visible fault latency, {} guest, DRAM {}, {} random reads, MTM and sampling off",
        args.memory,
        ByteSize(args.memory.0 / 8),
        args.accesses
    );
    println!(
        "{:<22} {:>5} {:>8} {:>10} {:>10} {:>12} {:>12}",
        "mode", "round", "faults", "p50 us", "p99 us", "p50 ratio", "p99 ratio"
    );
    for r in &rows {
        println!(
            "{:<22} {:>5} {:>8} {:>10.1} {:>10.1} {:>11.2}x {:>11.2}x",
            r.mode, r.round, r.faults, r.p50_us, r.p99_us, r.p50_vs_host_thread, r.p99_vs_host_thread
        );
    }
    for (mode, _) in modes {
        let mut p50: Vec<f64> = rows.iter().filter(|r| r.mode == mode).map(|r| r.p50_us).collect();
        let mut p99: Vec<f64> = rows.iter().filter(|r| r.mode == mode).map(|r| r.p99_us).collect();
        p50.sort_by(f64::total_cmp);
        p99.sort_by(f64::total_cmp);
        println!("median of rounds: {mode:<22} p50 {:.1} us, p99 {:.1} us", p50[p50.len() / 2], p99[p99.len() / 2]);
    }
    Ok(())
}
