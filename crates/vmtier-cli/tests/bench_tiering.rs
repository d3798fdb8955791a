//! `vmtier bench tiering` end to end, with the kernel-swap baseline for real: a memory cgroup
//! (v1) and a swap file, set up and torn down by the bench. On a machine that cannot (not root,
//! no cgroup-v1 memory controller) the tests print why and pass; there the bench must report the
//! documented reason. Where it can, any failure to set up is a test failure, and every test
//! asserts that no cgroup, swap file or enabled swap area is left behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

/// Swap is machine-wide: the kernel stripes pages across swap areas of equal priority, so two
/// benches at once would swap into each other's files, and one's `swapoff` would have to bring in
/// pages of the other's child, charged to a cgroup at its limit (ENOMEM). The tests take turns.
static SWAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SWAP.lock().unwrap_or_else(|e| e.into_inner())
}

fn vmtier() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmtier"));
    cmd.env_remove("VMTIER_LOG");
    cmd
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether this machine can run the kernel baseline: root and a cgroup-v1 memory controller.
/// `Err` says why not.
fn machine_allows() -> Result<(), String> {
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    if !Path::new(MEMORY_ROOT).join("memory.limit_in_bytes").is_file() {
        return Err(format!("no cgroup-v1 memory controller at {MEMORY_ROOT}"));
    }
    Ok(())
}

/// A directory on the same file system as the build (not a tmpfs /tmp, which cannot swap).
fn workdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

fn swaps() -> String {
    std::fs::read_to_string("/proc/swaps").unwrap_or_default()
}

/// Nothing of bench process `pid` is left: no cgroup, no swap file in `data`, no enabled swap
/// area in `data`. `output` is what the bench printed, shown on failure.
fn assert_clean(pid: u32, data: &Path, output: &str) {
    let group = PathBuf::from(MEMORY_ROOT).join(format!("vmtier-bench-{pid}"));
    assert!(!group.exists(), "memory cgroup {} left behind; the bench printed:\n{output}", group.display());
    let swap_file = data.join(format!("vmtier-bench-{pid}.swap"));
    let s = swaps();
    assert!(
        !swap_file.exists(),
        "swap file {} left behind; /proc/swaps:\n{s}\nthe bench printed:\n{output}",
        swap_file.display()
    );
    let data = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
    assert!(
        !s.contains(&*data.to_string_lossy()),
        "a swap area under {} is still enabled:\n{s}\nthe bench printed:\n{output}",
        data.display()
    );
    if let Ok(entries) = std::fs::read_dir(&data) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".swap"),
                "swap file {name} left in {}; the bench printed:\n{output}",
                data.display()
            );
        }
    }
}

/// Runs the bench with `extra` arguments; returns its JSON and pid.
fn bench(dir: &Path, extra: &[&str]) -> (serde_json::Map<String, Value>, u32) {
    let data = dir.join("data");
    let child = vmtier()
        .args(["bench", "tiering", "--memory", "64MiB", "--dram-fractions", "0.5", "--disk-probe", "16MiB", "--json"])
        .arg("--dir")
        .arg(&data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmtier runs");
    let pid = child.id();
    let out = child.wait_with_output().expect("vmtier runs");
    assert_clean(pid, &data, &describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", describe(&out)));
    match v {
        Value::Object(m) => (m, pid),
        other => panic!("not a JSON object: {other}"),
    }
}

/// On a machine that cannot run the kernel baseline, the bench must say so with a documented
/// reason. Returns whether the test should stop here.
fn skipped_as_documented(m: &serde_json::Map<String, Value>) -> bool {
    if let Err(why) = machine_allows() {
        let kind = m["kernel_unavailable"]["kind"].as_str().unwrap_or_default();
        assert!(["not-root", "no-cgroup-v1-memory"].contains(&kind), "{why}, but the bench said {m:?}");
        eprintln!("skipped: the kernel-swap baseline cannot run here ({why}): {}", m["kernel_skipped"]);
        return true;
    }
    if let Some(u) = m["kernel_unavailable"].as_object() {
        // Root with the controller: only a container's refusals are acceptable.
        let kind = u["kind"].as_str().unwrap_or_default();
        assert!(
            ["swapon-refused", "swap-unsupported-fs", "cgroup-not-writable"].contains(&kind),
            "the kernel baseline was skipped on a machine that allows it: {u:?}"
        );
        eprintln!("skipped: {}", u["reason"]);
        return true;
    }
    false
}

fn runs_of<'a>(m: &'a serde_json::Map<String, Value>, system: &str) -> Vec<&'a Value> {
    m["runs"].as_array().expect("runs").iter().filter(|r| r["system"] == system).collect()
}

#[test]
fn kernel_swap_baseline_end_to_end() {
    let _turn = one_at_a_time();
    let dir = workdir();
    let report = dir.path().join("report");
    let (m, pid) = bench(
        dir.path(),
        &[
            "--accesses",
            "300000",
            "--policies",
            "hotset",
            "--progress-secs",
            "3600",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    for f in ["results.json", "slowdown.svg", "index.html"] {
        assert!(report.join(f).is_file(), "{f} missing from the report");
    }
    let all = runs_of(&m, "all-dram");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["verified"], true);
    assert_eq!(runs_of(&m, "vmtier-hotset")[0]["verified"], true);
    if skipped_as_documented(&m) {
        return;
    }
    let setup = &m["kernel_setup"];
    assert_eq!(setup["cgroup"], format!("{MEMORY_ROOT}/vmtier-bench-{pid}"));
    assert!(setup["swap_file"].as_str().unwrap().ends_with(&format!("vmtier-bench-{pid}.swap")));
    let k = runs_of(&m, "kernel-swap");
    assert_eq!(k.len(), 1, "{m:?}");
    let k = k[0];
    assert_eq!(k["dram_bytes"], 32 << 20);
    assert_eq!(k["counters"]["cgroup"]["limit_bytes"], 32 << 20);
    match k["status"].as_str().unwrap() {
        "ok" => {
            assert_eq!(k["verified"], true);
            assert_eq!(k["accesses"], 300_000);
            // Half of the zipf footprint does not fit: the kernel must have swapped pages back in.
            assert!(k["storage_reads"].as_u64().unwrap() > 0, "{k}");
            let s = m["summary"].as_array().unwrap().iter().find(|r| r["system"] == "vmtier-hotset").unwrap();
            assert!(s["speedup_vs_kernel"].as_f64().unwrap() > 0.0, "{s}");
        }
        // The kernel may OOM-kill even with swap free (reclaim gives up); that is a result.
        "oom-killed" => assert!(k["detail"].as_str().unwrap().contains("OOM killer at limit 32MiB"), "{k}"),
        other => panic!("unexpected status {other}: {k}"),
    }
}

#[test]
fn kernel_oom_kill_is_a_result_not_a_failure() {
    let _turn = one_at_a_time();
    let dir = workdir();
    // A swap file of ten pages: half of the footprint cannot go anywhere.
    let (m, _) = bench(
        dir.path(),
        &["--accesses", "10000", "--policies", "hotset", "--kernel-swap-size", "40KiB", "--progress-secs", "3600"],
    );
    if skipped_as_documented(&m) {
        return;
    }
    let k = runs_of(&m, "kernel-swap");
    assert_eq!(k[0]["status"], "oom-killed", "{m:?}");
    assert!(k[0]["detail"].as_str().unwrap().starts_with("killed by the OOM killer at limit 32MiB"), "{k:?}");
    assert!(k[0]["counters"]["cgroup"]["oom_kills"].as_u64().unwrap() >= 1);
    let s = m["summary"].as_array().unwrap().iter().find(|r| r["system"] == "kernel-swap").unwrap();
    assert_eq!(s["accesses_per_sec"], Value::Null);
    assert_eq!(s["ok_runs"], 0);
}

#[test]
fn sigterm_during_the_kernel_run_tears_everything_down() {
    let _turn = one_at_a_time();
    if let Err(why) = machine_allows() {
        eprintln!("skipped: the kernel-swap baseline cannot run here ({why})");
        return;
    }
    let dir = workdir();
    let data = dir.path().join("data");
    // Long enough that the kernel run is still going when the signal comes.
    let mut child = vmtier()
        .args(["bench", "tiering", "--memory", "128MiB", "--dram-fractions", "0.25", "--policies", "hotset"])
        .args(["--accesses", "2000000", "--disk-probe", "0", "--progress-secs", "3600", "--dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmtier runs");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let swap_file = data.join(format!("vmtier-bench-{pid}.swap"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut enabled = false;
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        if swaps().contains(&*swap_file.to_string_lossy())
            && Path::new(MEMORY_ROOT).join(format!("vmtier-bench-{pid}")).exists()
        {
            enabled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !enabled {
        let _ = child.kill();
        let _ = child.wait();
        let text = lines.join().unwrap().join("\n");
        assert_clean(pid, &data, &text);
        // Only a documented refusal excuses not getting this far.
        assert!(text.contains("kernel-swap baseline skipped"), "the swap file never appeared:\n{text}");
        eprintln!("skipped: {text}");
        return;
    }
    // Let the child get going, then stop the bench (not the child) as `kill` would.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let text = lines.join().unwrap().join("\n");
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    assert_clean(pid, &data, &text);
}
