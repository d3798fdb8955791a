//! `vmtier bench sampling`: what access sampling costs the guest.
//!
//! The same guest (zipf read-modify-write) runs with sampling off and at several sampling rates,
//! side by side in one run, with the whole guest in DRAM (so the only faults after populate are
//! the sampling's MINOR faults) and with DRAM at a quarter of the guest. Prints access throughput
//! relative to sampling off, and the MINOR faults the guest took.

use std::path::PathBuf;

use serde::Serialize;
use vmtier_engine::{ByteSize, Engine, EngineConfig};
use vmtier_workload::{Progress, WorkloadConfig, WorkloadKind};

/// Arguments of `vmtier bench sampling`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest memory.
    #[arg(long, default_value = "128MiB")]
    memory: ByteSize,
    /// Accesses per run.
    #[arg(long, default_value_t = 1_000_000)]
    accesses: u64,
    /// Sampling rates to compare, resident pages per second (0 = off is always included).
    #[arg(long, value_delimiter = ',', default_value = "8192,32768")]
    rates: Vec<u64>,
    /// Directory for tier 2 and tier 3.
    #[arg(long, default_value = "vmtier-data/bench")]
    dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    dram_fraction: f64,
    sample_pages_per_sec: u64,
    accesses_per_sec: f64,
    throughput_vs_off: f64,
    sample_faults: u64,
    verified: bool,
}

fn one(args: &Args, dram_fraction: f64, rate: u64) -> anyhow::Result<(f64, u64, bool)> {
    let mut cfg = EngineConfig::default();
    cfg.memory = args.memory;
    cfg.dram = ByteSize(((args.memory.0 as f64 * dram_fraction) as u64) & !4095);
    cfg.tracker.sample_pages_per_sec = rate;
    cfg.tier2.dir = args.dir.join("tier2");
    cfg.tier3.url = args.dir.join("tier3").to_string_lossy().into_owned();
    let engine = Engine::start(cfg)?;
    let wl = WorkloadConfig {
        kind: WorkloadKind::Zipf { skew: 0.99 },
        accesses: args.accesses,
        threads: 2,
        ..WorkloadConfig::default()
    };
    let report = vmtier_workload::run(engine.guest_words(), &wl, &Progress::new())?;
    let snap = engine.shutdown();
    Ok((report.access_throughput_per_sec, snap.sample_faults, report.verified))
}

/// Runs the comparison and prints it.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for dram_fraction in [1.0, 0.25] {
        let mut rates = vec![0];
        rates.extend(args.rates.iter().copied().filter(|&r| r > 0));
        let mut base = 0.0;
        for rate in rates {
            eprintln!("bench sampling: dram {:.0}%, {} pages/s", dram_fraction * 100.0, rate);
            let (tput, minor, verified) = one(args, dram_fraction, rate)?;
            if rate == 0 {
                base = tput;
            }
            rows.push(Row {
                dram_fraction,
                sample_pages_per_sec: rate,
                accesses_per_sec: tput,
                throughput_vs_off: tput / base,
                sample_faults: minor,
                verified,
            });
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:>6} {:>12} {:>14} {:>10} {:>14}", "dram", "pages/s", "accesses/s", "vs off", "MINOR faults");
        for r in &rows {
            println!(
                "{:>5.0}% {:>12} {:>14.0} {:>9.3}x {:>14}",
                r.dram_fraction * 100.0,
                r.sample_pages_per_sec,
                r.accesses_per_sec,
                r.throughput_vs_off,
                r.sample_faults
            );
        }
    }
    anyhow::ensure!(rows.iter().all(|r| r.verified), "a run did not verify");
    Ok(())
}
