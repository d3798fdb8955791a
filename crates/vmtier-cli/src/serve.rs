//! `vmtier serve`: the out-of-process page server (see docs/page-server.md). A Firecracker VMM
//! restoring a snapshot with the `Uffd` memory backend gets its pages from `--mem-file`; a
//! vmtier VMM that hands over its memfd gets vmtier's tiering engine over its memory.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tracing::info;
use vmtier_engine::ByteSize;
use vmtier_vm::page_server::{ConnEnd, PageServer, ServerConfig, TerminationSignals};

use crate::run_config::RunConfig;

/// `vmtier serve` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Unix socket to listen on (created with mode 0600; a stale socket file is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// Snapshot memory file to serve Firecracker's handshake (snapshot restore) from.
    #[arg(long)]
    mem_file: Option<PathBuf>,
    /// Configuration file whose `[engine]` section configures tiers mode (`memory` is taken
    /// from each VM); defaults as for `demo` without one.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Tiers mode: directory for tier 2 and tier 3 (each VM gets its own subdirectory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Tiers mode: DRAM budget per VM, e.g. 256MiB (capped at the VM's memory).
    #[arg(long)]
    dram: Option<ByteSize>,
    /// Memory-file mode: most pages one fault copies (the faulting page and the following ones
    /// not served yet); 1 turns prefetch off.
    #[arg(long, default_value_t = 16)]
    fault_around: usize,
}

/// Serves until SIGINT or SIGTERM, then shuts down cleanly (connections ended, socket removed).
pub fn run(args: &Args) -> anyhow::Result<()> {
    // Before any thread exists, so every thread inherits the mask and the signal comes here.
    let signals = TerminationSignals::block().context("blocking SIGINT and SIGTERM")?;
    let mut run_cfg = match &args.config {
        Some(path) => RunConfig::load(path)?,
        None => RunConfig::default(),
    };
    if let Some(d) = &args.data_dir {
        run_cfg.data_dir = d.clone();
    }
    if let Some(d) = args.dram {
        run_cfg.set_dram(d);
    }
    // Each VM brings its own memory size; only the budget and the rest are checked here.
    run_cfg.engine.memory = run_cfg.engine.memory.max(run_cfg.engine.dram);
    run_cfg.finish().context("tiers-mode configuration")?;
    anyhow::ensure!(args.fault_around >= 1, "invalid --fault-around 0: at least 1 (1 = no prefetch)");

    let mut cfg = ServerConfig::new(&args.socket);
    cfg.mem_file = args.mem_file.clone();
    cfg.fault_around_pages = args.fault_around;
    cfg.engine = run_cfg.engine;
    let tier2 = cfg.engine.tier2.dir.clone();
    let server = PageServer::start(cfg).context("starting the page server")?;
    let file_mode = match &args.mem_file {
        Some(f) => format!("from {}", f.display()),
        None => "refused (no --mem-file)".into(),
    };
    eprintln!(
        "vmtier serve: listening on {}; Firecracker handshakes served {file_mode}; vmtier handshakes served by \
         the engine (tier 2 under {}). Ctrl-C to stop.",
        args.socket.display(),
        tier2.display()
    );
    let signal = loop {
        if let Some(s) = signals.wait(Duration::from_secs(1)) {
            break s;
        }
    };
    info!(signal, "shutting down");
    let reports = server.shutdown();
    let failed = reports.iter().filter(|r| matches!(r.end, ConnEnd::Failed(_))).count();
    eprintln!(
        "vmtier serve: {signal}: stopped after {} connection(s) ({failed} failed); socket removed",
        reports.len()
    );
    Ok(())
}
