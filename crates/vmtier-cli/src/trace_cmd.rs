//! `vmtier trace import` and `vmtier trace stats`: valgrind lackey output to a compact page
//! trace, and a trace's summary (see `docs/traces.md`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use vmtier_workload::trace::{ImportOptions, PageTrace, TraceStats, lackey};

/// `vmtier trace …`.
#[derive(Debug, clap::Subcommand)]
pub enum TraceCommand {
    /// Import valgrind lackey output (`valgrind --tool=lackey --trace-mem=yes`, plain or .gz)
    /// into a compact binary page trace.
    Import(ImportArgs),
    /// Summarise a page trace (or lackey output): footprint, read/write mix, address span,
    /// reuse distance.
    Stats(StatsArgs),
}

/// `vmtier trace import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The lackey output, plain text or gzip.
    file: PathBuf,
    /// Where to write the page trace.
    #[arg(long, short)]
    output: PathBuf,
    /// Count instruction fetches (`I` records) as page reads too.
    #[arg(long)]
    instructions: bool,
}

/// `vmtier trace stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// A page trace from `vmtier trace import`, or lackey output (imported on the fly).
    file: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs a `vmtier trace` command.
pub fn run(cmd: &TraceCommand) -> anyhow::Result<()> {
    match cmd {
        TraceCommand::Import(args) => import(args),
        TraceCommand::Stats(args) => stats(args),
    }
}

fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let file_len = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(file_len).with_style(
        ProgressStyle::with_template("{spinner} importing [{bar:30}] {bytes}/{total_bytes} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let opts = ImportOptions { instructions: args.instructions };
    let result = lackey::import_file(&args.file, &opts, &mut |p| {
        bar.set_position(p.bytes);
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{} lines, {:.0}k lines/s", group(p.lines), p.lines as f64 / secs / 1e3));
    });
    bar.finish_and_clear();
    let trace = result?;
    let secs = started.elapsed().as_secs_f64();
    let size = trace.save(&args.output)?;
    let c = trace.counts();
    let records = c.loads + c.stores + c.modifies + if c.instructions_included { c.instructions } else { 0 };
    println!(
        "imported {}: {} lines ({} records) -> {} page accesses ({:.1}% writes) over {} pages ({}) in {:.2} s \
         ({:.0}k lines/s); wrote {} ({} bytes, {:.2} bytes/access)",
        args.file.display(),
        group(c.lines),
        group(records),
        group(trace.len() as u64),
        100.0 * trace.writes() as f64 / trace.len() as f64,
        group(u64::from(trace.footprint_pages())),
        mib(trace.footprint_bytes()),
        secs,
        c.lines as f64 / secs.max(1e-9) / 1e3,
        args.output.display(),
        group(size),
        size as f64 / trace.len() as f64,
    );
    Ok(())
}

fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let trace = PageTrace::load(&args.file)?;
    let s = trace.stats();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s).context("serializing the statistics")?);
    } else {
        print_table(&s);
    }
    Ok(())
}

fn print_table(s: &TraceStats) {
    let c = &s.import;
    let row = |k: &str, v: String| println!("  {k:<16} {v}");
    println!("trace {}", s.source);
    row(
        "accesses",
        format!(
            "{} page accesses ({} before collapsing repeats; {} loads, {} stores, {} modifies, {} instruction \
             fetches{})",
            group(s.accesses),
            group(c.raw_accesses),
            group(c.loads),
            group(c.stores),
            group(c.modifies),
            group(c.instructions),
            if c.instructions_included { " included" } else { " left out" }
        ),
    );
    row(
        "reads / writes",
        format!("{} / {} ({:.1}% writes)", group(s.reads), group(s.writes), 100.0 * s.write_fraction),
    );
    row("footprint", format!("{} pages ({})", group(s.footprint_pages), mib(s.footprint_bytes)));
    if let Some(a) = &s.address_span {
        row(
            "address span",
            format!(
                "{:#x}..{:#x} ({}) in {} regions, the largest {} pages",
                a.first_address,
                a.end_address,
                mib(a.span_bytes),
                group(a.regions),
                group(a.largest_region_pages)
            ),
        );
    }
    let r = &s.reuse;
    let pages = |v: Option<u64>| v.map_or_else(|| "-".to_string(), group);
    row(
        "reuse distance",
        format!(
            "median {}, p90 {}, p99 {}, mean {} pages ({} re-accesses, {} first touches)",
            pages(r.median_pages),
            pages(r.p90_pages),
            pages(r.p99_pages),
            r.mean_pages.map_or_else(|| "-".to_string(), |m| format!("{m:.0}")),
            group(r.reuses),
            group(r.cold)
        ),
    );
    println!("  {:<16} {:>12} {:>10} {:>10}", "LRU memory", "pages", "footprint", "hit ratio");
    for p in &r.lru_hit_ratio {
        println!(
            "  {:<16} {:>12} {:>9.0}% {:>9.1}%",
            "",
            group(p.pages),
            100.0 * p.fraction_of_footprint,
            100.0 * p.hit_ratio
        );
    }
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(mib(12 << 20), "12.0 MiB");
        assert_eq!(mib(3 << 30), "3.0 GiB");
    }
}
