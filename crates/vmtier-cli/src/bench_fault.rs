//! `vmtier bench fault`: the cost of a fault served by vmtier, against the floor measured in the
//! same run.
//!
//! Every latency is what the *guest* sees: a host thread times each first access to a page with
//! the fault in it. Baselines:
//! - `raw copy 4K`: a bare userfaultfd handler resolving each fault with one 4 KiB `UFFDIO_COPY`
//!   from a ready buffer — the floor of any userfaultfd pager;
//! - `raw copy 64K`: the same with 64 KiB per fault (batched), per page;
//! - `device 4K`: one random 4 KiB `O_DIRECT` read from a file in the tier-2 directory.
//!
//! vmtier rows: a zero-fill first touch; a tier-2 hit (page stored in tier 2, read with
//! `O_DIRECT`, checksum checked, installed), one page per fault in random order; and the batched
//! path: the same pages touched in order with 16-page fault-around (one 64 KiB read and one
//! 64 KiB `UFFDIO_COPY` per fault), reported per page. Target: tier-2 hit p50 within 1.3x of
//! raw copy 4K p50 + device 4K p50.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use vmtier_engine::{Engine, EngineConfig, Tier};
use vmtier_uffd::uffd::{feature, mode};
use vmtier_uffd::{AlignedBuf, Event, Memfd, PAGE_SIZE, SharedMapping, Uffd};

/// Arguments of `vmtier bench fault`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pages faulted per measurement.
    #[arg(long, default_value_t = 20_000)]
    pages: usize,
    /// Directory for the tier-2 store and the device test file (same file system as tier 2).
    #[arg(long, default_value = "vmtier-data/bench")]
    dir: PathBuf,
    /// Rounds; every path is measured once per round, interleaved.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    name: &'static str,
    p50_us: f64,
    p99_us: f64,
    per_page_us: f64,
}

fn row(name: &'static str, h: &Histogram<u64>, pages_per_sample: usize) -> Row {
    let q = |p| h.value_at_quantile(p) as f64 / 1000.0;
    Row { name, p50_us: q(0.5), p99_us: q(0.99), per_page_us: h.mean() / 1000.0 / pages_per_sample as f64 }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds")
}

/// Times the first access to each page of `order` (word 0 of the page).
fn touch_all(words: &[std::sync::atomic::AtomicU64], order: &[usize], stride_pages: usize) -> Histogram<u64> {
    let mut h = hist();
    for &p in order {
        let t = Instant::now();
        let _ = words[p * stride_pages * (PAGE_SIZE / 8)].load(Ordering::Relaxed);
        let _ = h.record(t.elapsed().as_nanos() as u64);
    }
    h
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut s = seed | 1;
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(i, (s % (i as u64 + 1)) as usize);
    }
    v
}

/// A bare userfaultfd pager: faults resolved by `UFFDIO_COPY` of `batch` pages from a buffer.
fn raw_copy(pages: usize, batch: usize) -> anyhow::Result<Histogram<u64>> {
    let memfd = Memfd::create("bench-raw", (pages * batch * PAGE_SIZE) as u64)?;
    let map = Arc::new(SharedMapping::new(&memfd)?);
    let uffd = Arc::new(Uffd::new(feature::MISSING_SHMEM)?);
    uffd.register(&map, mode::MISSING)?;
    let stop = Arc::new(AtomicBool::new(false));
    let src = AlignedBuf::zeroed(batch * PAGE_SIZE);
    // As many handler threads as vmtier runs by default, so both pay the same wake-ups.
    let src = Arc::new(src);
    let handlers: Vec<_> = (0..EngineConfig::default().fault.handler_threads)
        .map(|_| {
            let (u, s, src, base) = (Arc::clone(&uffd), Arc::clone(&stop), Arc::clone(&src), map.base());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut ev = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    ev.clear();
                    u.read_events(&mut ev, 64, Some(Duration::from_millis(20)))?;
                    for e in &ev {
                        if let Event::Fault { address, .. } = *e {
                            let start = base + (address - base) / (batch * PAGE_SIZE) * (batch * PAGE_SIZE);
                            u.copy(start, &src, false, true)?;
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    let h = touch_all(map.as_words(), &(0..pages).collect::<Vec<_>>(), batch);
    stop.store(true, Ordering::Relaxed);
    for handler in handlers {
        handler.join().map_err(|_| anyhow::anyhow!("raw handler panicked"))??;
    }
    Ok(h)
}

/// Random 4 KiB O_DIRECT reads from a file of `pages` pages.
fn device_reads(dir: &std::path::Path, pages: usize) -> anyhow::Result<Histogram<u64>> {
    let path = dir.join("device-test.dat");
    let buf = AlignedBuf::zeroed(1 << 20);
    {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        for i in 0..(pages * PAGE_SIZE).div_ceil(buf.len()) {
            f.write_all_at(&buf, (i * buf.len()) as u64)?;
        }
        f.sync_all()?;
    }
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&path)?;
    let mut page = AlignedBuf::zeroed(PAGE_SIZE);
    let mut h = hist();
    for p in shuffled(pages, 7) {
        let t = Instant::now();
        f.read_exact_at(&mut page, (p * PAGE_SIZE) as u64)?;
        let _ = h.record(t.elapsed().as_nanos() as u64);
    }
    std::fs::remove_file(&path)?;
    Ok(h)
}

/// vmtier: zero-fill first touches, then the same pages stored in tier 2 and faulted back —
/// one page per fault in random order (`fault_around` 1), or in order with fault-around.
fn vmtier(
    dir: &std::path::Path,
    pages: usize,
    fault_around: usize,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut cfg = EngineConfig::default();
    cfg.memory.0 = (pages * PAGE_SIZE) as u64;
    cfg.dram.0 = cfg.memory.0;
    cfg.mtm.enabled = false;
    cfg.mtm.headroom_pages = 0;
    cfg.fault.fault_around_pages = fault_around;
    cfg.tier2.dir = dir.join("tier2");
    cfg.tier3.url = dir.join("tier3").to_string_lossy().into_owned();
    let engine = Engine::start(cfg)?;
    let words = engine.guest_words();
    let order: Vec<usize> = (0..pages).collect();
    let zero = touch_all(words, &order, 1);
    for p in 0..pages {
        words[p * (PAGE_SIZE / 8) + 1].store(p as u64 + 1, Ordering::Relaxed);
    }
    for p in 0..pages {
        engine.move_page(p, Tier::Ssd)?;
    }
    let order = if fault_around > 1 { order } else { shuffled(pages, 11) };
    let tier2 = touch_all(words, &order, 1);
    for p in 0..pages {
        anyhow::ensure!(
            words[p * (PAGE_SIZE / 8) + 1].load(Ordering::Relaxed) == p as u64 + 1,
            "page {p} came back wrong"
        );
    }
    drop(engine);
    Ok((zero, tier2))
}

/// Runs the bench and prints the table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let n = args.pages;
    eprintln!("bench fault: {n} pages per measurement, {} rounds, in {}", args.rounds, args.dir.display());
    // Rounds interleave every path, so drift of a noisy machine hits all of them alike; each
    // row pools its samples over the rounds.
    let mut h: Vec<Histogram<u64>> = (0..6).map(|_| hist()).collect();
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        eprintln!("  round {}/{}", round + 1, args.rounds);
        let raw4 = raw_copy(n, 1)?;
        let dev = device_reads(&args.dir, n)?;
        let (zero, tier2) = vmtier(&args.dir, n, 1)?;
        ratios.push(
            tier2.value_at_quantile(0.5) as f64 / (raw4.value_at_quantile(0.5) + dev.value_at_quantile(0.5)) as f64,
        );
        let raw64 = raw_copy(n / 16, 16)?;
        let (_, batched) = vmtier(&args.dir, n, 16)?;
        for (acc, x) in h.iter_mut().zip([raw4, raw64, dev, zero, tier2, batched]) {
            acc.add(&x).expect("same bounds");
        }
    }
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios[ratios.len() / 2];
    let rows = vec![
        row("raw copy 4K (floor)", &h[0], 1),
        row("raw copy 64K (per fault)", &h[1], 16),
        row("device 4K O_DIRECT read", &h[2], 1),
        row("vmtier zero-fill", &h[3], 1),
        row("vmtier tier-2 hit", &h[4], 1),
        row("vmtier tier-2, 64K around", &h[5], 1),
    ];
    let floor = rows[0].p50_us + rows[2].p50_us;
    let ratio = rows[4].p50_us / floor;
    let ratio99 = rows[4].p99_us / (rows[0].p99_us + rows[2].p99_us);
    if args.json {
        let out = serde_json::json!({
            "pages": n,
            "rows": rows,
            "tier2_hit_p50_vs_floor_plus_device": ratio,
            "tier2_hit_p50_ratio_per_round": ratios,
            "tier2_hit_p50_ratio_median_of_rounds": median_ratio,
            "tier2_hit_p99_vs_floor_plus_device": ratio99,
            "batched_speedup_per_page": rows[4].per_page_us / rows[5].per_page_us,
            "target": 1.3,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{:<28} {:>10} {:>10} {:>12}", "path", "p50 us", "p99 us", "mean/page us");
        for r in &rows {
            println!("{:<28} {:>10.1} {:>10.1} {:>12.2}", r.name, r.p50_us, r.p99_us, r.per_page_us);
        }
        println!();
        println!(
            "tier-2 hit p50 / (raw copy 4K p50 + device p50) = {:.1} / {:.1} = {ratio:.2}x (target <= 1.3x)",
            rows[4].p50_us, floor
        );
        println!("  per round: {ratios:.2?}, median {median_ratio:.2}x");
        println!("tier-2 hit p99 / (raw copy 4K p99 + device p99) = {ratio99:.2}x");
        println!(
            "batching: 64K copies cost {:.2} us per page vs {:.2} us for 4K",
            rows[1].per_page_us, rows[0].per_page_us
        );
    }
    Ok(())
}
