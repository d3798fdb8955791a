//! `vmtier bench replication` end to end on a tiny guest: both systems run as child processes,
//! the guest verifies in both, the replicated run commits checkpoints, and the JSON document
//! carries every run and a sane summary. Skipped, with the reason printed, where /dev/kvm is
//! missing.

mod common;

use std::process::Command;

use common::describe;
use serde_json::Value;

fn kvm_or_skip() -> bool {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED: /dev/kvm is missing");
        return false;
    }
    true
}

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or_else(|| panic!("no number `{k}` in {v}"))
}

#[test]
fn tiny_bench_reports_both_systems_and_sane_figures() {
    if !kvm_or_skip() {
        return;
    }
    // On the build's file system: tier 2 is opened with O_DIRECT, which a tmpfs /tmp refuses.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_vmtier"))
        .current_dir(dir.path())
        .env_remove("VMTIER_LOG")
        .env_remove("VMTIER_KVM_DEVICE")
        .args(["bench", "replication", "--memory", "32MiB", "--dram", "16MiB", "--accesses", "300000"])
        .args(["--write-fraction", "0.5", "--intervals", "50", "--runs", "1", "--json", "--dir"])
        .arg(&data)
        .output()
        .expect("vmtier runs");
    let doc = common::json_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("round 1/1, none") && stderr.contains("round 1/1, 50 ms"), "{}", describe(&out));

    let config = &doc["config"];
    assert_eq!(config["intervals_ms"], serde_json::json!([50]), "{config}");
    assert_eq!(config["runs"], 1, "{config}");

    let runs = doc["runs"].as_array().expect("runs is an array");
    assert_eq!(runs.len(), 2, "one run of each system: {runs:?}");
    let none = runs.iter().find(|r| r["interval_ms"].is_null()).expect("a run without replication");
    let repl = runs.iter().find(|r| r["interval_ms"] == 50).expect("a run at 50 ms");
    for r in [none, repl] {
        assert_eq!(r["verified"], true, "{r}");
        assert!(f(r, "throughput") > 0.0, "{r}");
        assert!(f(r, "faults") > 0.0, "{r}");
    }
    assert!(none["replication"].is_null(), "{none}");
    let rr = &repl["replication"];
    assert!(f(rr, "committed") >= 1.0, "the replicated run committed no checkpoint: {rr}");
    assert!(f(rr, "pages_copied") > 0.0 && f(rr, "log_bytes") > 0.0, "{rr}");
    assert!(f(rr, "pause_p99_us") >= f(rr, "pause_p50_us") && f(rr, "pause_p50_us") > 0.0, "{rr}");

    let summary = doc["summary"].as_array().expect("summary is an array");
    assert_eq!(summary.len(), 2, "{summary:?}");
    assert!(summary[0]["interval_ms"].is_null(), "none comes first: {summary:?}");
    assert_eq!(summary[0]["overhead_pct"], 0.0, "{summary:?}");
    let s = &summary[1];
    assert_eq!(s["interval_ms"], 50, "{s}");
    let overhead = f(s, "overhead_pct");
    assert!(overhead.is_finite() && overhead < 100.0, "overhead {overhead}: {s}");
    let expected = (f(&summary[0], "throughput") - f(s, "throughput")) / f(&summary[0], "throughput") * 100.0;
    assert!((overhead - expected).abs() < 1e-6, "overhead {overhead}, expected {expected}");
    // With one round, the paired overhead is the same comparison.
    assert!((f(repl, "overhead_pct_vs_round_none") - expected).abs() < 1e-6, "{repl}");
    assert!((f(s, "paired_overhead_pct") - expected).abs() < 1e-6, "{s}");
    assert!(f(s, "pause_p99_us") >= f(s, "pause_p50_us"), "{s}");
    assert!(f(s, "committed") >= 1.0, "{s}");
    // Not measured at 100 ms, so no verdict on the target.
    assert!(doc["target"].is_null(), "{}", doc["target"]);
    // Each run's data directory is removed when it ends.
    let left: Vec<_> = std::fs::read_dir(&data).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "run directories left behind: {left:?}");
}

#[test]
fn a_bad_flag_is_refused_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::vmtier_in(dir.path(), &["bench", "replication", "--intervals", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    if !kvm_or_skip() {
        assert!(err.contains("KVM"), "{err}");
        return;
    }
    assert!(err.contains("replication.interval_ms") && err.contains("5 to 60000"), "{err}");
    assert!(!err.contains("round 1"), "a run started: {err}");
}
