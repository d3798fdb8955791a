//! Running a guest program to completion over guest RAM: choose the workload, boot, turn the
//! guest's hypercalls into [`Progress`] a caller can poll, and collect the guest's report.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use vmtier_workload::{PageTrace, Phase, Progress, WorkloadReport};

use crate::abi::{self, GuestReport, phase, workload};
use crate::elf::GuestImage;
use crate::error::VmError;
use crate::state::VcpuState;
use crate::vm::{GuestEvent, MicroVm, RunExit};

/// The workloads of the built-in guest program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestWorkload {
    /// Zipf-distributed page accesses.
    Zipf,
    /// Sequential passes.
    Scan,
    /// A hot set that moves each phase.
    Phases,
    /// Uniformly random page accesses.
    Uniform,
    /// Key-value store with a hash index.
    Kv,
    /// Breadth-first search over a generated graph.
    Bfs,
    /// Replays a page trace ([`GuestSpec::trace`]).
    Trace,
}

impl GuestWorkload {
    /// Every workload, in documentation order.
    pub const ALL: [GuestWorkload; 7] =
        [Self::Zipf, Self::Scan, Self::Phases, Self::Uniform, Self::Kv, Self::Bfs, Self::Trace];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zipf => "zipf",
            Self::Scan => "scan",
            Self::Phases => "phases",
            Self::Uniform => "uniform",
            Self::Kv => "kv",
            Self::Bfs => "bfs",
            Self::Trace => "trace",
        }
    }

    fn abi(self) -> u32 {
        match self {
            Self::Zipf => workload::ZIPF,
            Self::Scan => workload::SCAN,
            Self::Phases => workload::PHASES,
            Self::Uniform => workload::UNIFORM,
            Self::Kv => workload::KV,
            Self::Bfs => workload::BFS,
            Self::Trace => workload::TRACE,
        }
    }
}

impl fmt::Display for GuestWorkload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GuestWorkload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|w| w.name()).collect();
            format!("unknown guest workload \"{s}\": expected one of {}", names.join(", "))
        })
    }
}

/// What the guest should do.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The workload.
    pub workload: GuestWorkload,
    /// Operations of the access stage (page accesses, kv operations, BFS runs). For `scan`,
    /// 0 means `rounds` full passes.
    pub ops: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Fraction of accesses that write (kv: puts).
    pub write_fraction: f64,
    /// Zipf exponent (`zipf`, `kv`).
    pub zipf_s: f64,
    /// Passes (`scan`) or phases (`phases`).
    pub rounds: u32,
    /// Skip the final re-read of everything touched.
    pub skip_final_check: bool,
    /// The page trace the `trace` workload replays (`ops` is then the trace's length).
    pub trace: Option<Arc<PageTrace>>,
    /// Operations between the guest's progress reports (each one port-I/O exit, 8–22 µs).
    pub progress_every: u64,
}

impl Default for GuestSpec {
    fn default() -> Self {
        Self {
            workload: GuestWorkload::Zipf,
            ops: 100_000,
            seed: 1,
            write_fraction: 0.3,
            zipf_s: 0.99,
            rounds: 1,
            skip_final_check: false,
            trace: None,
            progress_every: 4096,
        }
    }
}

/// Latency of the guest's slow accesses (its page faults), as the guest measured them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GuestLatency {
    /// Accesses slower than the threshold (5 µs).
    pub count: u64,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

impl GuestLatency {
    /// Summarises a report's histogram.
    pub fn from_report(r: &GuestReport) -> Self {
        let count: u64 = r.fault_hist.iter().map(|&c| u64::from(c)).sum();
        let pct = |q: f64| {
            if count == 0 {
                return 0.0;
            }
            let rank = ((count as f64 * q).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, &c) in r.fault_hist.iter().enumerate() {
                seen += u64::from(c);
                if seen >= rank {
                    // The middle of the bucket.
                    let lo = abi::hist_bucket_floor(i) as f64;
                    let hi = abi::hist_bucket_floor(i + 1) as f64;
                    return (lo + hi) / 2.0 / 1000.0;
                }
            }
            0.0
        };
        Self { count, p50_us: pct(0.5), p99_us: pct(0.99) }
    }
}

/// How a guest run ended.
#[derive(Debug, Clone)]
pub struct GuestOutcome {
    /// The guest's exit status (`abi::status`).
    pub status: u64,
    /// The guest's report, if it sent one.
    pub report: Option<Box<GuestReport>>,
    /// Lines the guest printed.
    pub lines: Vec<String>,
    /// Wall time from the first instruction to the exit.
    pub elapsed: Duration,
    /// TSC ticks per millisecond used to convert the guest's timings.
    pub tsc_per_ms: u64,
}

impl GuestOutcome {
    /// Whether the guest exited with success after verifying everything it read.
    pub fn verified(&self) -> bool {
        self.status == abi::status::OK && self.report.as_ref().is_some_and(|r| r.status == abi::status::OK)
    }

    /// Seconds of stage `i` (0 populate, 1 access, 2 final check).
    pub fn stage_secs(&self, i: usize) -> f64 {
        self.report.as_ref().map_or(0.0, |r| r.stage_ticks[i] as f64 / (self.tsc_per_ms as f64 * 1000.0))
    }

    /// What the guest said went wrong, if anything.
    pub fn failure(&self) -> Option<String> {
        if self.verified() {
            return None;
        }
        let what = match self.status {
            abi::status::MISMATCH => {
                let m = self.report.as_ref().map_or([0; 4], |r| r.mismatch);
                format!(
                    "the guest read a wrong value: item {} word {}: expected {:#x}, found {:#x}",
                    m[0], m[1], m[2], m[3]
                )
            }
            abi::status::BAD_BOOT_INFO => "the guest rejected its boot block".to_string(),
            abi::status::PANIC => "the guest panicked".to_string(),
            s => format!("the guest exited with status {s}"),
        };
        Some(match self.lines.last() {
            Some(line) => format!("{what} ({line})"),
            None => what,
        })
    }

    /// The guest-measured latency of its page faults.
    pub fn fault_latency(&self) -> GuestLatency {
        self.report.as_deref().map(GuestLatency::from_report).unwrap_or_default()
    }

    /// The run as the in-process guest's report type, so both print the same way.
    pub fn to_workload_report(&self, workload: GuestWorkload) -> Option<WorkloadReport> {
        let r = self.report.as_ref()?;
        let access_secs = self.stage_secs(1);
        let tput = if access_secs > 0.0 { r.ops as f64 / access_secs } else { 0.0 };
        Some(WorkloadReport {
            kind: workload.name().to_string(),
            threads: 1,
            pages: r.pages,
            accesses: r.ops,
            reads_verified: r.reads_verified,
            writes: r.writes,
            pages_touched: r.pages_touched,
            final_checked_pages: r.final_checked_pages,
            populate_secs: self.stage_secs(0),
            access_secs,
            final_check_secs: self.stage_secs(2),
            access_throughput_per_sec: tput,
            phase_throughput: vec![tput],
            verified: self.verified() && r.final_checked_pages > 0,
        })
    }
}

/// The boot block for `spec` on `vm`.
pub fn boot_info_for(vm: &MicroVm<'_>, spec: &GuestSpec) -> abi::BootInfo {
    let mut boot = vm.boot_info();
    boot.workload = spec.workload.abi();
    boot.seed = spec.seed;
    boot.ops = spec.ops;
    if spec.workload == GuestWorkload::Scan && spec.ops == 0 {
        boot.ops = u64::from(spec.rounds.max(1)) * abi::page_region(boot.heap_start, boot.heap_end).2;
    }
    boot.write_ppm = (spec.write_fraction.clamp(0.0, 1.0) * 1e6) as u32;
    boot.zipf_s_milli = (spec.zipf_s * 1000.0).round() as u32;
    boot.rounds = spec.rounds.max(1);
    boot.skip_final_check = u32::from(spec.skip_final_check);
    boot.progress_every = spec.progress_every.max(1);
    boot
}

/// Guest RAM the `trace` workload needs for `trace`: the fixed layout, the footprint's data
/// pages and versions, and the access list (rounded up to 2 MiB, as the VM requires).
pub fn trace_ram_bytes(trace: &PageTrace) -> u64 {
    let pages = u64::from(trace.footprint_pages());
    let list = (trace.len() as u64 * 4).next_multiple_of(abi::PAGE);
    (abi::HEAP_GPA + 2 * abi::PAGE + pages * (abi::PAGE + 4) + list).next_multiple_of(2 << 20).max(abi::MIN_RAM)
}

/// Writes `spec.trace`'s accesses at the top of guest RAM, shrinks the heap below them and
/// points `boot` at them.
fn place_trace(vm: &MicroVm<'_>, spec: &GuestSpec, boot: &mut abi::BootInfo) -> Result<(), VmError> {
    let trace = spec.trace.as_deref().ok_or(VmError::NoTrace)?;
    let list_bytes = (trace.len() as u64 * 4).next_multiple_of(abi::PAGE);
    let needed = trace_ram_bytes(trace);
    let gpa = boot.heap_end.checked_sub(list_bytes).filter(|&g| g > boot.heap_start);
    let region_pages = gpa.map_or(0, |g| abi::page_region(boot.heap_start, g).2);
    let (Some(gpa), true) = (gpa, region_pages >= u64::from(trace.footprint_pages())) else {
        return Err(VmError::TraceTooLarge {
            trace: trace.source().to_string(),
            pages: trace.footprint_pages(),
            accesses: trace.len() as u64,
            ram: vm.ram().len(),
            needed,
        });
    };
    for (i, chunk) in trace.packed().chunks(1 << 16).enumerate() {
        let bytes: Vec<u8> = chunk.iter().flat_map(|e| e.to_le_bytes()).collect();
        vm.ram().write(gpa + (i as u64) * (4 << 16), &bytes)?;
    }
    boot.heap_end = gpa;
    boot.trace_gpa = gpa;
    boot.trace_count = trace.len() as u64;
    boot.trace_pages = trace.footprint_pages();
    boot.ops = trace.len() as u64;
    Ok(())
}

/// Folds the guest's per-stage progress into a [`Progress`] (cumulative over stages).
#[derive(Debug, Default)]
pub struct ProgressSink {
    base: u64,
    stage: Option<u64>,
    stage_total: u64,
    /// When the guest first reported progress of its access stage, from the sink's creation.
    pub first_access_progress: Option<Duration>,
    started: Option<Instant>,
}

impl ProgressSink {
    /// A sink whose clock starts now.
    pub fn new() -> Self {
        Self { started: Some(Instant::now()), ..Self::default() }
    }

    /// Applies one progress hypercall.
    pub fn update(&mut self, progress: &Progress, done: u64, total: u64, ph: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.stage != Some(ph) {
            if self.stage.is_some() {
                self.base += self.stage_total;
            }
            self.stage = Some(ph);
            progress.set_phase(match ph {
                phase::POPULATE => Phase::Populate,
                phase::ACCESS => Phase::Access,
                _ => Phase::FinalCheck,
            });
        }
        if ph == phase::ACCESS && done > 0 && self.first_access_progress.is_none() {
            self.first_access_progress = self.started.map(|s| s.elapsed());
        }
        self.stage_total = total;
        progress.total.store(self.base + total, Relaxed);
        progress.done.store(self.base + done.min(total), Relaxed);
    }
}

/// Boots the built-in guest program on `vm` with `spec` and runs it to its exit, publishing
/// progress. Guest output lines are logged and kept in the outcome.
pub fn run_guest(vm: &mut MicroVm<'_>, spec: &GuestSpec, progress: &Progress) -> Result<GuestOutcome, VmError> {
    run_guest_with(vm, spec, progress, Start::Boot, &mut |_| Ok(()))
}

/// How [`run_guest_with`] starts the guest.
#[derive(Debug)]
pub enum Start {
    /// Boot the guest program from its ELF image.
    Boot,
    /// Resume from a saved vCPU state; guest memory already holds the running program (a
    /// failover resumes the failed primary's last checkpoint this way).
    Resume(Box<VcpuState>),
}

/// Like [`run_guest`], starting as `start` says, and calling `on_pause` on the vCPU thread each
/// time the VM is paused from outside ([`crate::Pauser::pause`]) — with the vCPU stopped, so a
/// checkpoint can save its state and capture guest memory — then resuming it. An error from
/// `on_pause` stops the run.
pub fn run_guest_with(
    vm: &mut MicroVm<'_>,
    spec: &GuestSpec,
    progress: &Progress,
    start: Start,
    on_pause: &mut dyn FnMut(&MicroVm<'_>) -> Result<(), VmError>,
) -> Result<GuestOutcome, VmError> {
    let mut boot = boot_info_for(vm, spec);
    match start {
        Start::Boot => {
            let image = GuestImage::parse(crate::GUEST_ELF)?;
            if spec.workload == GuestWorkload::Trace {
                place_trace(vm, spec, &mut boot)?;
            }
            vm.boot(&image, &boot)?;
        }
        Start::Resume(state) => vm.restore_vcpu(&state)?,
    }
    let started = Instant::now();
    let mut sink = ProgressSink::new();
    let mut lines = Vec::new();
    let mut report = None;
    let exit = loop {
        let exit = vm.run(&mut |ev| match ev {
            GuestEvent::Print(s) => {
                tracing::info!(target: "vmtier::guest", "{s}");
                lines.push(s.to_string());
            }
            GuestEvent::Progress { done, total, phase } => sink.update(progress, done, total, phase),
            GuestEvent::Report(r) => report = Some(r),
        })?;
        match exit {
            RunExit::Exited(status) => break status,
            RunExit::Paused => on_pause(vm)?,
        }
    };
    progress.set_phase(Phase::Done);
    Ok(GuestOutcome { status: exit, report, lines, elapsed: started.elapsed(), tsc_per_ms: boot.tsc_per_ms })
}
