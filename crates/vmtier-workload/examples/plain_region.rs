//! Runs every workload over a plain in-memory region (no tiering) and prints the reports,
//! plus the raw speed of the Zipf sampler.
//!
//! `cargo run --release -p vmtier-workload --example plain_region [PAGES] [ACCESSES] [THREADS]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use vmtier_workload::rng::Xoshiro256;
use vmtier_workload::{Progress, WORDS_PER_PAGE, WorkloadConfig, WorkloadKind, ZipfSampler, run};

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numeric argument")).collect();
    let pages = args.first().copied().unwrap_or(16_384) as usize;
    let accesses = args.get(1).copied().unwrap_or(1_000_000);
    let threads = args.get(2).copied().unwrap_or(2) as usize;

    let n = 1_000_000;
    let samples = 10_000_000;
    let z = ZipfSampler::new(n, 0.99);
    let mut rng = Xoshiro256::new(1);
    let start = Instant::now();
    let mut sum = 0u64;
    for _ in 0..samples {
        sum = sum.wrapping_add(z.sample(&mut rng));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "zipf sampler: {samples} samples over {n} items in {secs:.3}s ({:.1} ns/sample, checksum {sum})",
        secs * 1e9 / samples as f64
    );

    let mem: Vec<AtomicU64> = (0..pages * WORDS_PER_PAGE).map(|_| AtomicU64::new(0)).collect();
    for kind in WorkloadKind::NAMES {
        for w in &mem {
            w.store(0, Ordering::Relaxed); // fresh, never-written region
        }
        let cfg =
            WorkloadConfig { kind: kind.parse().expect("known name"), accesses, threads, ..WorkloadConfig::default() };
        let report = run(&mem, &cfg, &Progress::new()).expect("plain memory verifies");
        println!(
            "{kind:>8}: {} accesses in {:.3}s = {:.0}/s, populate {:.3}s, phases {:?}, verified {}",
            report.accesses,
            report.access_secs,
            report.access_throughput_per_sec,
            report.populate_secs,
            report.phase_throughput.iter().map(|t| t.round()).collect::<Vec<_>>(),
            report.verified
        );
    }
}
