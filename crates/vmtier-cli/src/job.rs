//! The main job: start the engine, run the in-process guest on it with a progress bar, report.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use vmtier_engine::{Engine, Snapshot};
use vmtier_workload::{Progress, WorkloadReport};

use crate::run_config::RunConfig;

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
    let wl = cfg.workload.to_config()?;
    let engine = Engine::start(cfg.engine.clone()).context("starting the engine")?;
    let progress = Progress::new();
    let started = Instant::now();
    let (report, snap) = std::thread::scope(|s| {
        let guest = s.spawn(|| vmtier_workload::run(engine.guest_words(), &wl, &progress));
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{spinner} {msg:10} [{bar:40}] {pos}/{len} accesses, {per_sec}, eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        if json_out {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        while !guest.is_finished() {
            bar.set_length(progress.total.load(Ordering::Relaxed));
            bar.set_position(progress.done.load(Ordering::Relaxed));
            bar.set_message(format!("{} {}MiB", progress.phase_name(), engine.resident_bytes() >> 20));
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
        let report = guest.join().map_err(|_| anyhow::anyhow!("the guest thread panicked"))?;
        anyhow::Ok((report, engine.snapshot()))
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(engine);
    let (report, verified, failure) = match report {
        Ok(r) => {
            let v = r.verified;
            (Some(r), v, None)
        }
        Err(e) => (None, false, Some(e.to_string())),
    };
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&snap, report.as_ref(), verified, failure.as_deref(), cfg, elapsed))?
        );
    } else {
        print_summary(&snap, report.as_ref(), verified, failure.as_deref(), cfg, elapsed);
    }
    Ok(verified)
}

fn to_json(
    snap: &Snapshot,
    report: Option<&WorkloadReport>,
    verified: bool,
    failure: Option<&str>,
    cfg: &RunConfig,
    elapsed: f64,
) -> Value {
    let mut v = serde_json::to_value(snap).expect("snapshot serializes");
    let m = v.as_object_mut().expect("snapshot is an object");
    m.insert("guest".into(), json!("in-process"));
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

fn print_summary(
    s: &Snapshot,
    report: Option<&WorkloadReport>,
    verified: bool,
    failure: Option<&str>,
    cfg: &RunConfig,
    elapsed: f64,
) {
    let t = |k: &str| s.pages_in_tier.get(k).copied().unwrap_or(0);
    println!(
        "vmtier: {} guest, {} DRAM budget, policy {}, workload {} (in-process guest)",
        mib(s.guest_bytes),
        mib(s.dram_budget_bytes),
        s.policy,
        cfg.workload.kind
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
    if let Some(r) = report {
        println!(
            "  throughput {:.0} accesses/s over {:.1} s (populate {:.1} s), total {:.1} s",
            r.access_throughput_per_sec, r.access_secs, r.populate_secs, elapsed
        );
    }
    if s.corrupt_pages > 0 || s.io_errors > 0 {
        println!("  corrupt stored pages {}, storage errors {}", s.corrupt_pages, s.io_errors);
    }
    match failure {
        Some(f) => println!("  verified: NO — {f}"),
        None => println!("  verified: {}", if verified { "yes, every read matched what was written" } else { "NO" }),
    }
}
