//! `vmtier bench failover` end to end on a tiny configuration: a 32 MiB guest, the drifting
//! `phases` workload, every strategy. Checks the JSON document's fields and that the figures
//! agree with what each strategy is. Needs KVM (skipped with a message without it) and root
//! (userfaultfd).

mod common;

use common::{json_ok, vmtier_in};
use serde_json::Value;

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("`{key}` is not a whole number in {v}"))
}

#[test]
fn every_strategy_resumes_the_same_checkpoint_with_consistent_figures() {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED: /dev/kvm is missing; bench failover runs the micro-VM guest");
        return;
    }
    // Tier 2 uses O_DIRECT, which a tmpfs /tmp does not support: work beside the build.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let budget: u64 = 8 << 20;
    let out = vmtier_in(
        dir.path(),
        &[
            "bench",
            "failover",
            "--json",
            "--memory",
            "32MiB",
            "--secondary-dram",
            "8MiB",
            "--workloads",
            "phases",
            "--phase-accesses",
            "100000",
            "--warmup-s",
            "0.3",
            "--reap-window-s",
            "0.3",
            "--drift-s",
            "0.5",
            "--after-s",
            "0.5",
            "--dir",
            "data",
        ],
    );
    let doc = json_ok(&out);
    let rows = doc["rows"].as_array().expect("`rows` is an array");
    let names: Vec<&str> = rows.iter().map(|r| r["strategy"].as_str().expect("strategy")).collect();
    assert_eq!(names, ["hot", "eager", "lazy", "reap", "warm"], "one row per strategy, in order");
    for r in rows {
        assert_eq!(r["workload"], "phases");
        for key in ["time_to_first_progress_s", "time_to_90pct_s"] {
            assert!(r[key].is_f64() || r[key].is_null(), "`{key}` is neither seconds nor null in {r}");
        }
        let first = r["time_to_first_progress_s"].as_f64().unwrap_or_else(|| panic!("no guest progress in {r}"));
        assert!(first > 0.0 && first < 0.5, "first progress {first} s outside the measured window in {r}");
        if let Some(t90) = r["time_to_90pct_s"].as_f64() {
            assert!(t90 >= first, "back to 90% before the first progress in {r}");
        }
        for key in ["faults_after", "bytes_read", "secondary_dram_bytes"] {
            u(r, key);
        }
        assert!(r["pre_failure_accesses_per_s"].as_f64().is_some_and(|x| x > 0.0), "no pre-failure throughput in {r}");
    }
    let row = |s: &str| rows.iter().find(|r| r["strategy"] == s).expect("row");
    let (hot, eager, lazy, reap, warm) = (row("hot"), row("eager"), row("lazy"), row("reap"), row("warm"));
    let mapped = u(hot, "mapped_bytes");
    assert!(mapped > 16 << 20, "the checkpoint maps {mapped} bytes of a 32 MiB guest that wrote every page");
    // hot: everything resident, nothing faulted in after.
    assert_eq!(u(hot, "resident_pages_at_resume") * 4096, mapped);
    assert_eq!(u(hot, "secondary_dram_bytes"), mapped);
    for r in rows {
        assert!(u(hot, "faults_after") <= u(r, "faults_after"), "hot faulted more than {r}");
    }
    // eager: read every mapped page before resuming, held nothing before.
    assert!(u(eager, "bytes_read") >= mapped, "eager read less than the mapped pages: {eager}");
    assert_eq!(u(eager, "secondary_dram_bytes"), 0);
    // lazy: nothing resident, nothing held; the guest faults pages in.
    assert_eq!(u(lazy, "secondary_dram_bytes"), 0);
    assert_eq!(u(lazy, "resident_pages_at_resume"), 0);
    assert!(u(lazy, "faults_after") > 0, "lazy faulted nothing in: {lazy}");
    assert!(u(lazy, "bytes_read") >= u(lazy, "faults_after") * 4096, "lazy faults without reads: {lazy}");
    // reap: its recorded working set, read at resume; held nothing before.
    assert_eq!(u(reap, "secondary_dram_bytes"), 0);
    assert!(u(reap, "resident_pages_at_resume") > 0, "REAP recorded no working set: {reap}");
    // warm: the follower's warm set, within the budget.
    let w = u(warm, "secondary_dram_bytes");
    assert!(w > 0 && w <= budget, "warm holds {w} bytes with a budget of {budget}");
    assert_eq!(u(warm, "resident_pages_at_resume") * 4096, w);
}
