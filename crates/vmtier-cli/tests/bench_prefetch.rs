//! `vmtier bench prefetch` end to end on a tiny configuration: a scan and the committed lackey
//! sample, `none` plus two prefetchers, an 8 MiB guest. Checks the JSON document's shape and that
//! its figures agree with each other and with the metric definitions. Needs userfaultfd (root).

mod common;

use std::path::Path;

use common::{describe, json_ok, vmtier_in};
use serde_json::Value;

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("`{key}` is not a whole number in {v}"))
}

#[test]
fn every_prefetcher_on_every_workload_with_consistent_figures() {
    // Tier 2 uses O_DIRECT, which a tmpfs /tmp does not support: work beside the build.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmtier-workload/tests/data/sort-head.lackey");
    let out = vmtier_in(
        dir.path(),
        &[
            "bench",
            "prefetch",
            "--json",
            "--workloads",
            "scan:2",
            "--trace",
            sample.to_str().expect("utf-8 path"),
            "--prefetchers",
            "readahead,history",
            "--memory",
            "8MiB",
            "--dir",
            "data",
            "--out",
            "report",
        ],
    );
    let doc = json_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(doc["bench"], "prefetch");
    // `none` runs first even when not asked for: it is the baseline.
    assert_eq!(doc["config"]["prefetchers"], serde_json::json!(["none", "readahead", "history"]));

    let workloads = doc["workloads"].as_array().expect("workloads");
    let names: Vec<&str> = workloads.iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["scan:2", "sort-head"]);
    assert_eq!(workloads[0]["kind"], "scan");
    assert_eq!(u(&workloads[0], "footprint_pages"), 2048);
    assert_eq!(u(&workloads[0], "dram_bytes"), 2 << 20);
    assert_eq!(workloads[1]["kind"], "trace");
    assert_eq!(u(&workloads[1], "footprint_pages"), 318);

    let results = doc["results"].as_array().expect("results");
    assert_eq!(results.len(), 6, "{}", describe(&out));
    let find = |w: &str, p: &str| {
        results
            .iter()
            .find(|r| r["workload"] == w && r["prefetcher"] == p)
            .unwrap_or_else(|| panic!("no result for {p} on {w}"))
    };
    for r in results {
        for key in ["accuracy", "coverage"] {
            let x = f(r, key);
            assert!((0.0..=1.0).contains(&x), "{key} {x} out of 0..=1: {r}");
        }
        for key in ["faults", "issued", "used", "late", "wasted_bytes", "dropped", "accesses"] {
            u(r, key);
        }
        assert!(f(r, "runtime_s") > 0.0, "{r}");
        assert!(f(r, "runtime_ratio") > 0.0, "{r}");
        let (issued, used) = (u(r, "issued"), u(r, "used"));
        let expected = if issued == 0 { 0.0 } else { (used as f64 / issued as f64).min(1.0) };
        assert!((f(r, "accuracy") - expected).abs() < 1e-9, "accuracy is used / issued: {r}");
        let none = find(r["workload"].as_str().unwrap(), "none");
        if r["prefetcher"] == "none" {
            assert_eq!(f(r, "coverage"), 0.0, "{r}");
            assert_eq!(u(r, "issued"), 0, "{r}");
            assert_eq!(f(r, "runtime_ratio"), 1.0, "{r}");
        } else {
            let cov = (1.0 - u(r, "faults") as f64 / u(none, "faults") as f64).clamp(0.0, 1.0);
            assert!((f(r, "coverage") - cov).abs() < 1e-9, "coverage is 1 - faults / faults with none: {r}");
        }
        assert_eq!(u(r, "accesses"), u(none, "accesses"), "every prefetcher runs the same accesses: {r}");
    }
    // Two passes of a scan over 4x the DRAM budget: without prefetching, (nearly) every access
    // faults; readahead sees a sequential stream and prefetches pages the scan then uses.
    let none = find("scan:2", "none");
    assert_eq!(u(none, "accesses"), 4096);
    assert!(u(none, "faults") >= 3000, "{none}");
    let ra = find("scan:2", "readahead");
    assert!(u(ra, "issued") > 0 && u(ra, "used") > 0, "readahead prefetched nothing on a scan: {ra}");
    assert!(f(ra, "accuracy") >= 0.9, "readahead's predictions on a scan are right: {ra}");
    assert_eq!(u(find("sort-head", "none"), "accesses"), 338);

    // One verdict per workload; the scan gets the target, the trace none (leap did not run).
    let summary = doc["summary"].as_array().expect("summary");
    assert_eq!(summary.len(), 2);
    let scan_targets = summary[0]["targets"].as_array().unwrap();
    assert_eq!(scan_targets.len(), 1, "{}", summary[0]);
    assert!(scan_targets[0]["met"].is_boolean());
    assert!(scan_targets[0]["target"].as_str().unwrap().contains("coverage ≥ 80%"));
    assert_eq!(summary[1]["targets"], serde_json::json!([]));

    assert_eq!(doc["runs"].as_array().unwrap().len(), 6);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report/results.json")).expect("--out file"))
            .expect("results.json is JSON");
    assert_eq!(written, Value::Object(doc.clone()));
    for tier in ["tier2", "tier3"] {
        assert!(!dir.path().join("data").join(tier).exists(), "{tier} left behind");
    }
    assert!(stderr.contains("bench prefetch [6/6] sort-head with history"), "progress on stderr:\n{stderr}");
}

#[test]
fn a_missing_trace_or_unknown_workload_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = vmtier_in(dir.path(), &["bench", "prefetch", "--workloads", "scan", "--trace", "no-such.lackey"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such.lackey"), "{}", describe(&out));
    let out = vmtier_in(dir.path(), &["bench", "prefetch", "--workloads", "scan,bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bogus") && stderr.contains("sort, xz6"), "{}", describe(&out));
}
