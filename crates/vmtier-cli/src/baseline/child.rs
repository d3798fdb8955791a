//! The baseline child: `vmtier __baseline-child` runs vmtier's in-process guest over plain
//! anonymous memory (4 KiB pages: `MADV_NOHUGEPAGE`, as vmtier's memory has no huge pages) and prints a
//! [`ChildReport`] as JSON on stdout. The same child is the all-DRAM reference (no limit) and,
//! placed in a memory cgroup, the kernel-swap baseline, so both run exactly the guest vmtier runs.
//!
//! [`run_child`] starts it from the bench: optionally joining a cgroup between fork and exec (so
//! every page it ever allocates is charged to the group), forwarding its stderr, and collecting
//! its report — or how it died.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmtier_engine::ByteSize;
use vmtier_uffd::AnonMapping;
use vmtier_workload::{Phase, Progress, WorkloadConfig, WorkloadKind, WorkloadReport};

use super::{BaselineError, signals, watch};

/// Arguments of `vmtier __baseline-child` (a hidden subcommand; the bench builds them with
/// [`ChildSpec::args`]).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Guest memory (anonymous, private).
    #[arg(long)]
    memory: ByteSize,
    /// Workload with its parameters, e.g. `zipf:0.99`.
    #[arg(long)]
    workload: WorkloadKind,
    /// Accesses of the access stage.
    #[arg(long)]
    accesses: u64,
    /// Guest threads.
    #[arg(long)]
    threads: usize,
    /// Seed.
    #[arg(long)]
    seed: u64,
    /// Fraction of accesses that write.
    #[arg(long)]
    write_fraction: f64,
    /// Prefix of the progress lines on stderr.
    #[arg(long, default_value = "baseline child")]
    label: String,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    progress_secs: u64,
}

/// What the child prints on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildReport {
    /// The guest's report (every read verified, or there would be none).
    pub report: WorkloadReport,
    /// Major faults (pages read from swap) during the access stage.
    pub access_major_faults: u64,
    /// Minor faults during the access stage.
    pub access_minor_faults: u64,
    /// Major faults over the whole run.
    pub major_faults: u64,
    /// Peak resident set, bytes.
    pub max_rss_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    major: u64,
    minor: u64,
    max_rss_kib: u64,
}

fn faults() -> Faults {
    // SAFETY: plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live rusage for the kernel to fill.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    Faults { major: ru.ru_majflt as u64, minor: ru.ru_minflt as u64, max_rss_kib: ru.ru_maxrss as u64 }
}

/// The workload the bench's options describe (the child and the bench build it the same way).
pub fn workload_config(
    kind: &WorkloadKind,
    accesses: u64,
    threads: usize,
    seed: u64,
    write_fraction: f64,
) -> WorkloadConfig {
    WorkloadConfig { kind: kind.clone(), accesses, threads, seed, write_fraction, ..WorkloadConfig::default() }
}

/// Runs the child's side: allocate, run the guest, print the report. Returns whether it verified.
pub fn run(args: &Args) -> anyhow::Result<bool> {
    let wl = workload_config(&args.workload, args.accesses, args.threads, args.seed, args.write_fraction);
    let mem = AnonMapping::new(args.memory.0 as usize)?;
    // 4 KiB pages, as vmtier's guest memory has, whatever the system's THP default.
    // SAFETY: advice on this process's own fresh mapping; it changes no contents.
    if unsafe { libc::madvise(mem.base() as *mut libc::c_void, mem.len(), libc::MADV_NOHUGEPAGE) } != 0 {
        anyhow::bail!("madvise(MADV_NOHUGEPAGE): {}", std::io::Error::last_os_error());
    }
    let progress = Progress::new();
    let (mut at_access, mut after_access) = (None, None);
    let report = std::thread::scope(|s| {
        let h = s.spawn(|| vmtier_workload::run(mem.as_words(), &wl, &progress));
        watch::watch(
            &progress,
            &args.label,
            Duration::from_secs(args.progress_secs.max(1)),
            || h.is_finished(),
            |phase| match phase {
                Phase::Access => at_access = Some(faults()),
                Phase::FinalCheck | Phase::Done if after_access.is_none() => after_access = Some(faults()),
                _ => {}
            },
        );
        h.join().map_err(|_| anyhow::anyhow!("the guest panicked"))
    })??;
    let end = faults();
    let a = at_access.unwrap_or_default();
    let b = after_access.unwrap_or(end);
    let out = ChildReport {
        report,
        access_major_faults: b.major - a.major,
        access_minor_faults: b.minor - a.minor,
        major_faults: end.major,
        max_rss_bytes: end.max_rss_kib * 1024,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(out.report.verified)
}

/// The workload as `--workload` takes it, parameters included (`Display` prints the bare name).
pub fn kind_arg(kind: &WorkloadKind) -> String {
    match kind {
        WorkloadKind::Zipf { skew } => format!("zipf:{skew}"),
        WorkloadKind::Scan { passes } => format!("scan:{passes}"),
        WorkloadKind::Stride { stride, passes } => format!("stride:{stride}:{passes}"),
        WorkloadKind::Uniform => "uniform".into(),
        WorkloadKind::Phases { hot_fraction, phases } => format!("phases:{hot_fraction}:{phases}"),
        // Relative paths resolve in the child as here: it inherits the working directory.
        WorkloadKind::Trace { path } => format!("trace:{}", path.to_string_lossy()),
    }
}

/// One child run, as the bench asks for it.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Guest memory, bytes (whole pages).
    pub memory: u64,
    /// The guest's workload.
    pub workload: WorkloadConfig,
    /// Prefix of its progress lines.
    pub label: String,
    /// Seconds between its progress lines.
    pub progress_secs: u64,
}

impl ChildSpec {
    /// The command line after `vmtier`.
    pub fn args(&self) -> Vec<String> {
        let w = &self.workload;
        vec![
            "__baseline-child".into(),
            "--memory".into(),
            self.memory.to_string(),
            "--workload".into(),
            kind_arg(&w.kind),
            "--accesses".into(),
            w.accesses.to_string(),
            "--threads".into(),
            w.threads.to_string(),
            "--seed".into(),
            w.seed.to_string(),
            "--write-fraction".into(),
            w.write_fraction.to_string(),
            "--label".into(),
            self.label.clone(),
            "--progress-secs".into(),
            self.progress_secs.to_string(),
        ]
    }
}

/// How a child ended.
#[derive(Debug)]
pub enum ChildEnd {
    /// It exited 0 with a report.
    Report(Box<ChildReport>),
    /// A signal killed it (SIGKILL from the OOM killer, typically).
    Killed {
        /// The signal.
        signal: i32,
    },
    /// It exited non-zero.
    Failed {
        /// The exit status.
        status: String,
    },
}

/// A finished child: how it ended and the end of its stderr.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub end: ChildEnd,
    /// Its last lines on stderr.
    pub stderr_tail: String,
}

/// Lines of the child's stderr kept for error messages.
const TAIL_LINES: usize = 20;

/// Runs the child to completion. With `join_cgroup` (a `cgroup.procs` file) the child moves
/// itself into that group between fork and exec, before it allocates anything. Its stderr is
/// forwarded to ours. On SIGINT/SIGTERM/SIGHUP ([`signals::interrupted`]) the child is killed and
/// `Interrupted` returned.
pub fn run_child(spec: &ChildSpec, join_cgroup: Option<&Path>) -> Result<Finished, BaselineError> {
    // /proc/self/exe works even when the binary was replaced on disk while the bench ran (a
    // rebuild); `current_exe` would then name a deleted file.
    let proc_exe = Path::new("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        std::env::current_exe().map_err(|source| BaselineError::Child { exe: "vmtier".into(), source })?
    };
    let err = |source| BaselineError::Child { exe: exe.display().to_string(), source };
    let mut cmd = Command::new(&exe);
    cmd.args(spec.args()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(procs) = join_cgroup {
        let procs = CString::new(procs.as_os_str().as_bytes())
            .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        let join = move || -> std::io::Result<()> {
            // Between fork and exec only async-signal-safe calls: open, write, close; no
            // allocation (`last_os_error` builds an `Os` variant without one).
            // SAFETY: `procs` is a NUL-terminated path owned by this closure.
            let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: writes one byte from a static buffer to the descriptor opened above.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            let e = std::io::Error::last_os_error();
            // SAFETY: closes the descriptor opened above, once.
            unsafe { libc::close(fd) };
            if n == 1 { Ok(()) } else { Err(e) }
        };
        // SAFETY: the closure only makes async-signal-safe calls (see above) and touches no state
        // shared with the parent.
        unsafe { cmd.pre_exec(join) };
    }
    let mut child = cmd.spawn().map_err(err)?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut tail = std::collections::VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  {line}");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    });
    let status = loop {
        if signals::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_reader.join();
            let _ = err_reader.join();
            return Err(BaselineError::Interrupted);
        }
        if let Some(st) = child.try_wait().map_err(err)? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr_tail = err_reader.join().unwrap_or_default();
    if signals::interrupted() {
        return Err(BaselineError::Interrupted);
    }
    let end = if status.success() {
        let report: ChildReport = serde_json::from_str(stdout.trim())
            .map_err(|source| BaselineError::ChildReport { label: spec.label.clone(), source })?;
        ChildEnd::Report(Box::new(report))
    } else if let Some(signal) = status.signal() {
        ChildEnd::Killed { signal }
    } else {
        ChildEnd::Failed { status: status.to_string() }
    };
    Ok(Finished { end, stderr_tail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_args_round_trip() {
        for k in [
            WorkloadKind::zipf(),
            WorkloadKind::Zipf { skew: 1.25 },
            WorkloadKind::Scan { passes: 5 },
            WorkloadKind::Stride { stride: 7, passes: 2 },
            WorkloadKind::Uniform,
            WorkloadKind::Phases { hot_fraction: 0.2, phases: 8 },
            WorkloadKind::Trace { path: "traces/a b.vtt".into() },
        ] {
            assert_eq!(kind_arg(&k).parse::<WorkloadKind>().unwrap(), k);
        }
    }

    #[test]
    fn spec_args_parse_as_the_child_subcommand() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: Cmd,
        }
        #[derive(clap::Subcommand)]
        enum Cmd {
            #[command(name = "__baseline-child")]
            Child(Args),
        }
        let spec = ChildSpec {
            memory: 64 << 20,
            workload: WorkloadConfig {
                kind: WorkloadKind::Zipf { skew: 0.99 },
                accesses: 1234,
                threads: 2,
                seed: 9,
                write_fraction: 0.5,
                ..WorkloadConfig::default()
            },
            label: "kernel-swap 50%".into(),
            progress_secs: 3,
        };
        let mut argv = vec!["vmtier".to_string()];
        argv.extend(spec.args());
        let Cmd::Child(a) = <Cli as clap::Parser>::try_parse_from(argv).unwrap().cmd;
        assert_eq!(a.memory.0, 64 << 20);
        assert_eq!(a.workload, WorkloadKind::Zipf { skew: 0.99 });
        assert_eq!((a.accesses, a.threads, a.seed, a.write_fraction), (1234, 2, 9, 0.5));
        assert_eq!(a.label, "kernel-swap 50%");
    }
}
