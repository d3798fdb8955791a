//! `vmtier`: tiered VM memory — demo, run, bench.

mod baseline;
mod bench_common;
mod bench_failover;
mod bench_fault;
mod bench_prefetch;
mod bench_replication;
mod bench_sampling;
mod bench_tiering;
mod bench_vm;
mod ha;
mod inspect;
mod job;
mod run_config;
mod serve;
mod trace_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmtier_engine::{ByteSize, PolicyKind, PrefetcherKind};

use crate::run_config::{GuestChoice, RunConfig};

#[derive(Debug, Parser)]
#[command(
    name = "vmtier",
    version,
    about = "Three-tier VM memory with a Memory Tier Manager, driven by real page faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a guest on the embedded default: ./vmtier-data, 1 GiB guest, 256 MiB DRAM budget.
    Demo {
        #[command(flatten)]
        opts: JobOpts,
    },
    /// Run a guest as a TOML configuration file describes (see examples/vmtier.toml).
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        opts: JobOpts,
    },
    /// The KVM micro-VM: run a guest program whose RAM is vmtier's tiered memory.
    Vm {
        #[command(subcommand)]
        vm: VmCommand,
    },
    /// Serve guest memory to VMMs over a Unix socket (Firecracker's userfaultfd handshake).
    Serve(serve::Args),
    /// Benchmarks that compare against baselines measured in the same run.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
    /// Page traces of real programs: import valgrind lackey output, summarise a trace.
    Trace {
        #[command(subcommand)]
        trace: trace_cmd::TraceCommand,
    },
    /// Run the micro-VM guest as a replicated primary: a checkpoint to shared storage every
    /// `replication.interval_ms` (see docs/replication.md).
    Primary {
        /// The configuration file (as for `vmtier run`, with a `[replication]` section).
        #[arg(long, short)]
        config: PathBuf,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
        /// Append the digest of guest memory at every checkpoint to this file (for crash tests;
        /// see docs/replication.md, "The check log").
        #[arg(long)]
        check_log: Option<PathBuf>,
    },
    /// Follow a primary's log, keep its hot pages warm, take over when its lease expires.
    Secondary(ha::secondary::Args),
    /// Ask the secondary to take over now (fencing the primary).
    Failover {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// How long to wait for the secondary to take over, seconds.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
    },
    /// Lease, checkpoint lag and warm-set coverage of a replicated VM.
    Status {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a new cluster key (32 random bytes, mode 0600) to FILE, for `replication.key_file`;
    /// copy the same file to every host of the replicated VM. Never overwrites.
    Keygen {
        /// The key file to create.
        file: PathBuf,
    },
    /// Validate a replication log (records, replay, lease, the pages of its newest checkpoint)
    /// or tier-3 segments: exit 0 clean, 1 corruption found, 2 bad usage.
    Inspect(inspect::Args),
    /// The baseline child of `bench tiering` (internal).
    #[command(name = "__baseline-child", hide = true)]
    BaselineChild(baseline::child::Args),
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Boot the guest program in a micro-VM and run a workload (zipf, scan, phases, uniform,
    /// kv, bfs, trace); prints the same summary and JSON as `demo`.
    Run {
        /// A configuration file (as for `vmtier run`); defaults as for `demo` without one.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Hand guest memory to the page server listening here (`vmtier serve`) instead of
        /// tiering it in this process; the server's engine and DRAM budget apply.
        #[arg(long)]
        page_server: Option<PathBuf>,
        #[command(flatten)]
        opts: JobOpts,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The fault path (4 KiB and batched) against the raw UFFDIO_COPY floor and the device.
    Fault(bench_fault::Args),
    /// What access sampling costs the guest: throughput with sampling off and on.
    Sampling(bench_sampling::Args),
    /// Page-fault latency as the guest measures it: host thread vs micro-VM (vs page server).
    VmFault(bench_vm::Args),
    /// One workload on all-DRAM, the kernel's swap and vmtier's policies at several DRAM shares.
    Tiering(bench_tiering::Args),
    /// Every prefetcher on every workload: accuracy, coverage, timeliness, runtime against none.
    Prefetch(bench_prefetch::Args),
    /// What replication costs the guest: throughput and checkpoint pauses at several intervals
    /// against no replication.
    Replication(bench_replication::Args),
    /// Failover strategies side by side (hot, eager, lazy, reap, warm): time back to speed.
    Failover(bench_failover::Args),
}

/// Options shared by `demo` and `run`; they override the file's values.
#[derive(Debug, clap::Args)]
struct JobOpts {
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// Guest memory size, e.g. 1GiB.
    #[arg(long)]
    memory: Option<ByteSize>,
    /// DRAM budget, e.g. 256MiB.
    #[arg(long)]
    dram: Option<ByteSize>,
    /// Workload: zipf, scan, uniform, phases or trace; kv or bfs with the micro-VM guest.
    #[arg(long)]
    workload: Option<String>,
    /// The page trace (`vmtier trace import`) or lackey output to replay; implies `--workload trace`.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Which guest runs it: the KVM micro-VM (`vm`), host threads (`in-process`), or `auto`
    /// (the micro-VM where /dev/kvm is usable).
    #[arg(long, value_enum)]
    guest: Option<GuestChoice>,
    /// Accesses in the access stage.
    #[arg(long)]
    accesses: Option<u64>,
    /// Placement policy: hotset or threshold.
    #[arg(long)]
    policy: Option<PolicyKind>,
    /// Prefetcher: none, readahead, stride, leap or history.
    #[arg(long)]
    prefetch: Option<PrefetcherKind>,
    /// Directory for tier 2 and tier 3.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at this address, e.g. 127.0.0.1:9898 (loopback only, unless
    /// --metrics-allow-remote).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Allow --metrics-addr to be a non-loopback address (the endpoint has no authentication).
    #[arg(long)]
    metrics_allow_remote: bool,
}

impl JobOpts {
    fn apply(&self, cfg: &mut RunConfig) -> anyhow::Result<()> {
        if let Some(m) = self.memory {
            cfg.engine.memory = m;
        }
        if let Some(d) = self.dram {
            cfg.set_dram(d);
        }
        if let Some(w) = &self.workload {
            cfg.workload.kind = w.clone();
        }
        if let Some(t) = &self.trace {
            anyhow::ensure!(
                self.workload.as_deref().is_none_or(|w| w == "trace"),
                "--trace replays a trace: it goes with --workload trace (or no --workload)"
            );
            cfg.workload.kind = "trace".into();
            cfg.workload.trace = Some(t.clone());
        }
        if let Some(g) = self.guest {
            cfg.workload.guest = g;
        }
        if let Some(a) = self.accesses {
            cfg.workload.accesses = a;
        }
        if let Some(p) = self.policy {
            cfg.engine.mtm.policy = p;
        }
        if let Some(p) = self.prefetch {
            cfg.engine.prefetch.kind = p;
        }
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        if let Some(a) = self.metrics_addr {
            cfg.metrics.addr = Some(a);
        }
        if self.metrics_allow_remote {
            cfg.metrics.allow_remote = true;
        }
        cfg.finish()
    }
}

/// A config for the replicated commands: the micro-VM guest is the only one that can resume
/// elsewhere (its whole state is guest memory and the vCPU).
fn load_vm_config(path: &std::path::Path) -> anyhow::Result<RunConfig> {
    let mut cfg = RunConfig::load(path)?;
    anyhow::ensure!(
        cfg.workload.guest != GuestChoice::InProcess,
        "config file {}: replication needs the micro-VM guest (`workload.guest` = \"vm\" or \"auto\"): \
         an in-process guest's state is not all in guest memory, so it cannot resume on another host",
        path.display()
    );
    cfg.workload.guest = GuestChoice::Vm;
    cfg.finish().map_err(|e| e.context(format!("config file {}", path.display())))?;
    Ok(cfg)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VMTIER_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmtier: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verified = match cli.command {
        Command::Demo { opts } => {
            let mut cfg = RunConfig::default();
            opts.apply(&mut cfg)?;
            job::run(&cfg, opts.json)?
        }
        Command::Run { config, opts } => {
            let mut cfg = RunConfig::load(&config)?;
            opts.apply(&mut cfg)
                .map_err(|e| e.context(format!("config file {} with command-line overrides", config.display())))?;
            job::run(&cfg, opts.json)?
        }
        Command::Vm { vm: VmCommand::Run { config, page_server, opts } } => {
            let mut cfg = match &config {
                Some(path) => RunConfig::load(path)?,
                None => RunConfig::default(),
            };
            cfg.workload.guest = GuestChoice::Vm;
            if page_server.is_some() {
                // The server's engine tiers the memory; a budget here would mean nothing.
                anyhow::ensure!(
                    opts.dram.is_none(),
                    "--dram does not apply with --page-server: the server's budget does (vmtier serve --dram)"
                );
                cfg.set_dram(opts.memory.unwrap_or(cfg.engine.memory));
            }
            opts.apply(&mut cfg)?;
            if cfg.workload.guest != GuestChoice::Vm {
                anyhow::bail!("`vmtier vm run` always uses the micro-VM guest; drop --guest");
            }
            match &page_server {
                Some(socket) => job::run_with_page_server(&cfg, socket, opts.json)?,
                None => job::run(&cfg, opts.json)?,
            }
        }
        Command::Serve(args) => {
            serve::run(&args)?;
            true
        }
        Command::Bench { bench: Bench::Fault(args) } => {
            bench_fault::run(&args)?;
            true
        }
        Command::Bench { bench: Bench::Sampling(args) } => {
            bench_sampling::run(&args)?;
            true
        }
        Command::Bench { bench: Bench::VmFault(args) } => {
            bench_vm::run(&args)?;
            true
        }
        Command::Bench { bench: Bench::Tiering(args) } => {
            bench_tiering::run(&args)?;
            true
        }
        Command::Bench { bench: Bench::Prefetch(args) } => {
            bench_prefetch::run(&args)?;
            true
        }
        Command::Bench { bench: Bench::Replication(args) } => {
            bench_replication::run(&args)?;
            true
        }
        Command::Bench { bench: Bench::Failover(args) } => {
            bench_failover::run(&args)?;
            true
        }
        Command::Trace { trace } => {
            trace_cmd::run(&trace)?;
            true
        }
        Command::Primary { config, json, check_log } => {
            ha::primary::run(&load_vm_config(&config)?, json, check_log.as_deref())?
        }
        Command::Secondary(args) => ha::secondary::run(&load_vm_config(&args.config)?, &args)?,
        Command::Failover { config, wait_secs } => {
            ha::control::failover(&RunConfig::load(&config)?, std::time::Duration::from_secs(wait_secs))?;
            true
        }
        Command::Status { config, json } => {
            ha::control::status(&RunConfig::load(&config)?, json)?;
            true
        }
        Command::Inspect(args) => inspect::run(&args)?,
        Command::Keygen { file } => {
            let key = vmtier_repl::ClusterKey::generate(&file)?;
            println!(
                "vmtier keygen: wrote a new cluster key to {} (mode 0600, key id {:08x}); set `replication.key_file` to it and copy it to every host",
                file.display(),
                key.id()
            );
            true
        }
        Command::BaselineChild(args) => baseline::child::run(&args)?,
    };
    Ok(if verified { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `{e:#}` without repeats: some libraries (object_store, reqwest) put their source's text into
/// their own message *and* return it as the source, so a plain chain says each cause three times.
/// A cause whose text the message already contains is left out.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(text.trim()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
