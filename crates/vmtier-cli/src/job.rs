//! The main job: start the engine, run a guest on it (the KVM micro-VM, or host threads in this
//! process) with a progress bar, report.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use vmtier_engine::{Engine, Snapshot};
use vmtier_uffd::{Memfd, SharedMapping};
use vmtier_vm::page_server::{PageServerClient, WatchOptions};
use vmtier_vm::{GuestLatency, GuestRam, MicroVm, VmOptions};
use vmtier_workload::{Progress, WorkloadReport};

use crate::run_config::{GuestChoice, RunConfig, check_vm_memory};

/// What a guest run produced, whichever guest ran it.
struct GuestResult {
    /// `micro-vm` or `in-process`.
    guest: &'static str,
    report: Option<WorkloadReport>,
    failure: Option<String>,
    /// Fault latency as the micro-VM guest measured it (rdtsc around its first touch of a page).
    guest_latency: Option<GuestLatency>,
}

/// Decides which guest runs: the micro-VM where KVM is usable (or demanded), else in-process.
fn choose_guest(cfg: &RunConfig, json_out: bool) -> anyhow::Result<bool> {
    match cfg.workload.guest {
        GuestChoice::InProcess => Ok(false),
        GuestChoice::Vm => {
            vmtier_vm::kvm_usable().context("the micro-VM guest was requested")?;
            Ok(true)
        }
        GuestChoice::Auto => match vmtier_vm::kvm_usable() {
            Ok(()) if check_vm_memory(cfg.engine.memory.0).is_ok() => Ok(true),
            Ok(()) => {
                if !json_out {
                    eprintln!("vmtier: guest memory is not a multiple of 2 MiB; using the in-process guest");
                }
                Ok(false)
            }
            Err(e) if cfg.workload.vm_only() => {
                Err(anyhow::anyhow!("workload {} needs the micro-VM: {e}", cfg.workload.kind))
            }
            Err(e) => {
                if !json_out {
                    eprintln!("vmtier: {e}; using the in-process guest instead");
                }
                Ok(false)
            }
        },
    }
}

/// Runs the configured guest to completion and prints the summary (or JSON). Returns whether
/// every read of the guest matched what it wrote.
pub fn run(cfg: &RunConfig, json_out: bool) -> anyhow::Result<bool> {
    if let Some(addr) = cfg.metrics.addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }
    let use_vm = choose_guest(cfg, json_out)?;
    let wl = if use_vm { None } else { Some(cfg.workload.to_config()?) };
    let spec = if use_vm { Some(cfg.workload.to_guest_spec()?) } else { None };
    let engine = Engine::start(cfg.engine.clone()).context("starting the engine")?;
    let progress = Progress::new();
    let started = Instant::now();
    let (result, snap) = std::thread::scope(|s| {
        let guest = s.spawn(|| -> anyhow::Result<GuestResult> {
            if let Some(spec) = &spec {
                let ram = GuestRam::new(engine.guest_words());
                let mut vm = MicroVm::new(ram, VmOptions::default()).context("creating the micro-VM")?;
                let out = vmtier_vm::run_guest(&mut vm, spec, &progress).context("running the micro-VM")?;
                Ok(GuestResult {
                    guest: "micro-vm",
                    report: out.to_workload_report(spec.workload),
                    failure: out.failure(),
                    guest_latency: Some(out.fault_latency()),
                })
            } else {
                let wl = wl.as_ref().expect("in-process config");
                let (report, failure) = match vmtier_workload::run(engine.guest_words(), wl, &progress) {
                    Ok(r) => (Some(r), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                Ok(GuestResult { guest: "in-process", report, failure, guest_latency: None })
            }
        });
        show_progress(
            &progress,
            json_out,
            || guest.is_finished(),
            || format!("{} {}MiB", progress.phase_name(), engine.resident_bytes() >> 20),
        );
        let result = guest.join().map_err(|_| anyhow::anyhow!("the guest thread panicked"))??;
        anyhow::Ok((result, engine.snapshot()))
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(engine);
    let verified = result.failure.is_none() && result.report.as_ref().is_some_and(|r| r.verified);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&to_json(&snap, &result, verified, cfg, elapsed))?);
    } else {
        print_summary(&snap, &result, verified, cfg, elapsed);
    }
    Ok(verified)
}

/// Draws a progress bar (unless `json_out`) until `done()`.
fn show_progress(progress: &Progress, json_out: bool, done: impl Fn() -> bool, message: impl Fn() -> String) {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} {msg:10} [{bar:40}] {pos}/{len} operations, {per_sec}, eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    if json_out {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    while !done() {
        bar.set_length(progress.total.load(Ordering::Relaxed));
        bar.set_position(progress.done.load(Ordering::Relaxed));
        bar.set_message(message());
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

/// Runs the micro-VM with its memory served by the page server at `socket` (`vmtier serve`, tiers
/// mode): this process owns the memfd and the vCPU, the server's engine tiers the memory. Prints
/// the guest's side; the engine's figures are in the server's log. Returns whether the guest
/// verified everything it read.
pub fn run_with_page_server(cfg: &RunConfig, socket: &Path, json_out: bool) -> anyhow::Result<bool> {
    vmtier_vm::kvm_usable().context("the micro-VM guest was requested")?;
    let spec = cfg.workload.to_guest_spec()?;
    check_vm_memory(cfg.engine.memory.0)?;
    let memfd = Memfd::create("vmtier-guest", cfg.engine.memory.0).context("creating guest memory")?;
    let map = SharedMapping::new(&memfd).context("mapping guest memory")?;
    let mut client = PageServerClient::connect_tiers(socket, &memfd, &map)
        .with_context(|| format!("handing guest memory to the page server at {}", socket.display()))?;
    let mut vm = MicroVm::new(GuestRam::new(map.as_words()), VmOptions::default()).context("creating the micro-VM")?;
    let watch = WatchOptions::default();
    client.watch(Some(vm.pauser()), watch)?;
    let progress = Progress::new();
    let started = Instant::now();
    let out = std::thread::scope(|s| {
        let guest = s.spawn(|| vmtier_vm::run_guest(&mut vm, &spec, &progress));
        // Aborting stops a vCPU in KVM_RUN, but not the vCPU thread while it touches guest memory
        // from the host (loading the program, reading the report): that access waits on the
        // userfaultfd for a page that will never come. Nothing can free it; leave.
        let gone_since = std::cell::Cell::new(None::<Instant>);
        let stuck = || {
            if client.server_gone().is_none() {
                return false;
            }
            let since = gone_since.get().unwrap_or_else(Instant::now);
            gone_since.set(Some(since));
            since.elapsed() > watch.grace
        };
        show_progress(&progress, json_out, || guest.is_finished() || stuck(), || progress.phase_name().to_string());
        if !guest.is_finished() {
            let reason = client.server_gone().unwrap_or_default();
            eprintln!(
                "vmtier: error: running the micro-VM: {reason}; the guest is blocked on memory that will never \
                 arrive, exiting"
            );
            std::process::exit(2);
        }
        guest.join().map_err(|_| anyhow::anyhow!("the vCPU thread panicked"))
    })?
    .context("running the micro-VM")?;
    let elapsed = started.elapsed().as_secs_f64();
    let report = out.to_workload_report(spec.workload);
    let failure = out.failure();
    let verified = failure.is_none() && report.as_ref().is_some_and(|r| r.verified);
    let lat = out.fault_latency();
    if json_out {
        let v = json!({
            "guest": "micro-vm",
            "page_server": socket,
            "guest_bytes": cfg.engine.memory.0,
            "workload": cfg.workload.kind,
            "verified": verified,
            "elapsed_s": elapsed,
            "guest_fault_latency_us": {"count": lat.count, "p50": lat.p50_us, "p99": lat.p99_us},
            "throughput_accesses_per_s": report.as_ref().map(|r| r.access_throughput_per_sec),
            "workload_report": report,
            "failure": failure,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "vmtier: {} guest, workload {} (micro-vm guest), memory served by the page server at {}",
            mib(cfg.engine.memory.0),
            cfg.workload.kind,
            socket.display()
        );
        println!("  (tier statistics are the server's: run it with VMTIER_LOG=info)");
        println!("  guest-measured fault latency p50 {:.1} us, p99 {:.1} us (n={})", lat.p50_us, lat.p99_us, lat.count);
        if let Some(r) = &report {
            println!(
                "  throughput {:.0} accesses/s over {:.1} s (populate {:.1} s), total {:.1} s",
                r.access_throughput_per_sec, r.access_secs, r.populate_secs, elapsed
            );
        }
        match &failure {
            Some(f) => println!("  verified: NO — {f}"),
            None => {
                println!("  verified: {}", if verified { "yes, every read matched what was written" } else { "NO" })
            }
        }
    }
    Ok(verified)
}

fn to_json(snap: &Snapshot, result: &GuestResult, verified: bool, cfg: &RunConfig, elapsed: f64) -> Value {
    let (report, failure) = (result.report.as_ref(), result.failure.as_deref());
    let mut v = serde_json::to_value(snap).expect("snapshot serializes");
    let m = v.as_object_mut().expect("snapshot is an object");
    m.insert("guest".into(), json!(result.guest));
    if let Some(l) = &result.guest_latency {
        m.insert("guest_fault_latency_us".into(), json!({"count": l.count, "p50": l.p50_us, "p99": l.p99_us}));
    }
    m.insert("workload".into(), json!(cfg.workload.kind));
    m.insert("verified".into(), json!(verified));
    m.insert("elapsed_s".into(), json!(elapsed));
    if let Some(r) = report {
        m.insert("throughput_accesses_per_s".into(), json!(r.access_throughput_per_sec));
        m.insert("workload_report".into(), serde_json::to_value(r).expect("report serializes"));
    }
    if let Some(f) = failure {
        m.insert("failure".into(), json!(f));
    }
    v
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn print_summary(s: &Snapshot, result: &GuestResult, verified: bool, cfg: &RunConfig, elapsed: f64) {
    let (report, failure) = (result.report.as_ref(), result.failure.as_deref());
    let t = |k: &str| s.pages_in_tier.get(k).copied().unwrap_or(0);
    println!(
        "vmtier: {} guest, {} DRAM budget, policy {}, workload {} ({} guest)",
        mib(s.guest_bytes),
        mib(s.dram_budget_bytes),
        s.policy,
        cfg.workload.kind,
        result.guest
    );
    println!(
        "  tier 1 DRAM     {:>9} pages  ({} resident, peak {})",
        t("1"),
        mib(s.resident_bytes),
        mib(s.peak_resident_bytes)
    );
    println!("  tier 2 store    {:>9} pages  ({} files, {} on disk)", t("2"), s.tier2_files, mib(s.tier2_disk_bytes));
    println!("  tier 3 objects  {:>9} pages  ({} segments, {})", t("3"), s.tier3_segments, mib(s.tier3_bytes_stored));
    println!("  never written   {:>9} pages", s.zero_pages);
    println!(
        "  faults {} (zero-fill {}, tier 2 {}, tier 3 {}), write faults {}, sampling faults {}",
        s.faults, s.zero_fills, s.tier2_hits, s.tier3_hits, s.write_faults, s.sample_faults
    );
    println!(
        "  promotions {}, demotions {} (direct reclaim {}, unchanged {}), tier 2->3 {}, 3->2 {}",
        s.promotions, s.demotions, s.direct_reclaims, s.clean_evictions, s.moves_2_to_3, s.moves_3_to_2
    );
    println!(
        "  fault latency p50 {:.1} us, p99 {:.1} us (n={})",
        s.fault_latency_us.p50, s.fault_latency_us.p99, s.fault_latency_us.count
    );
    println!(
        "  metadata: hot {:.1} bytes/page (page table), total {:.1} bytes/page (MTM scratch {}, prefetch {}, tier-2 allocator {}, replication {})",
        s.hot_metadata_bytes_per_page,
        s.metadata_bytes_per_page,
        mib(s.metadata_bytes.mtm_scratch),
        mib(s.metadata_bytes.prefetch),
        mib(s.metadata_bytes.tier2_allocator),
        mib(s.metadata_bytes.replication)
    );
    if let Some(l) = &result.guest_latency {
        println!("  guest-measured fault latency p50 {:.1} us, p99 {:.1} us (n={})", l.p50_us, l.p99_us, l.count);
    }
    if let Some(r) = report {
        println!(
            "  throughput {:.0} accesses/s over {:.1} s (populate {:.1} s), total {:.1} s",
            r.access_throughput_per_sec, r.access_secs, r.populate_secs, elapsed
        );
    }
    if s.corrupt_pages > 0 || s.io_errors > 0 {
        println!("  corrupt stored pages {}, storage errors {}", s.corrupt_pages, s.io_errors);
    }
    if s.tier2_refused > 0 {
        println!(
            "  tier 2 refused {} writes (full disk or failing writes?); those evictions went to tier 3",
            s.tier2_refused
        );
    }
    match failure {
        Some(f) => println!("  verified: NO — {f}"),
        None => println!("  verified: {}", if verified { "yes, every read matched what was written" } else { "NO" }),
    }
}
