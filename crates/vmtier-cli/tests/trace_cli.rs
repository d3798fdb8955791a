//! `vmtier trace import`, `vmtier trace stats`, and replaying a trace with `run` (in-process
//! guest) and `vm run` (micro-VM), each run as a child process in a temporary directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{describe, json_ok, vmtier_in as vmtier};

/// 400 lines of `sort.lackey.gz`, committed with the workload crate.
fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vmtier-workload/tests/data/sort-head.lackey")
}

/// Exit code 2; returns stderr.
fn fails_with_2(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{}", describe(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Imports the sample into `dir/sort.vmtrace`.
fn import_sample(dir: &Path) -> PathBuf {
    let out = vmtier(dir, &["trace", "import", sample().to_str().unwrap(), "-o", "sort.vmtrace"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("400 lines") && line.contains("338 page accesses") && line.contains("318 pages"), "{line}");
    dir.join("sort.vmtrace")
}

#[test]
fn import_then_stats() {
    let dir = tempfile::tempdir().unwrap();
    let trace = import_sample(dir.path());
    assert!(trace.is_file());
    let m = json_ok(&vmtier(dir.path(), &["trace", "stats", "sort.vmtrace", "--json"]));
    assert_eq!(m["source"], "sort-head.lackey");
    assert_eq!(m["footprint_pages"], 318);
    assert_eq!(m["accesses"], 338);
    assert_eq!(m["import"]["lines"], 400);
    assert_eq!(m["reads"].as_u64().unwrap() + m["writes"].as_u64().unwrap(), 338);
    assert_eq!(m["reuse"]["cold"], 318);
    assert!(m["reuse"]["median_pages"].as_u64().is_some(), "{m:?}");
    assert!(m["address_span"]["span_bytes"].as_u64().unwrap() >= 318 * 4096);
    // The table, and stats straight from lackey output.
    let out = vmtier(dir.path(), &["trace", "stats", sample().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    for row in ["footprint", "318 pages", "reads / writes", "address span", "reuse distance", "hit ratio"] {
        assert!(table.contains(row), "no {row:?} in\n{table}");
    }
}

#[test]
fn bad_input_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.lackey");
    std::fs::write(&bad, " L 04000000,8\n S 04001000,8\n L 04002000 8\n").unwrap();
    let err = fails_with_2(&vmtier(dir.path(), &["trace", "import", "bad.lackey", "-o", "bad.vmtrace"]));
    assert!(err.contains("bad.lackey line 3") && err.contains("04002000 8"), "{err}");
    assert!(!dir.path().join("bad.vmtrace").exists());
    std::fs::write(dir.path().join("data.csv"), "page,op\n1,r\n").unwrap();
    let err = fails_with_2(&vmtier(dir.path(), &["trace", "import", "data.csv", "-o", "x"]));
    assert!(err.contains("not valgrind lackey output"), "{err}");
    let err = fails_with_2(&vmtier(dir.path(), &["trace", "stats", "missing.vmtrace"]));
    assert!(err.contains("cannot open trace file missing.vmtrace"), "{err}");
    // A damaged binary trace.
    let trace = import_sample(dir.path());
    let mut bytes = std::fs::read(&trace).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&trace, &bytes).unwrap();
    let err = fails_with_2(&vmtier(dir.path(), &["trace", "stats", "sort.vmtrace"]));
    assert!(err.contains("corrupt") && err.contains("re-import"), "{err}");
    std::fs::write(&trace, &bytes[..n / 2]).unwrap();
    let err = fails_with_2(&vmtier(dir.path(), &["trace", "stats", "sort.vmtrace"]));
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn run_replays_a_trace_in_the_in_process_guest() {
    let dir = tempfile::tempdir().unwrap();
    import_sample(dir.path());
    std::fs::write(
        dir.path().join("trace.toml"),
        "[engine]\nmemory = \"16MiB\"\ndram = \"1MiB\"\n\n[engine.mtm]\nheadroom_pages = 64\n\n\
         [workload]\nguest = \"in-process\"\nkind = \"trace\"\ntrace = \"sort.vmtrace\"\n",
    )
    .unwrap();
    let m = json_ok(&vmtier(dir.path(), &["run", "--config", "trace.toml", "--json"]));
    assert_eq!(m["guest"], "in-process", "{m:?}");
    assert_eq!(m["workload"], "trace");
    assert_eq!(m["verified"], true, "{m:?}");
    let r = &m["workload_report"];
    assert_eq!((r["pages"].as_u64(), r["accesses"].as_u64()), (Some(318), Some(338)), "{r}");
    assert!(m["peak_resident_bytes"].as_u64().unwrap() <= 1 << 20);
    assert!(m["faults"].as_u64().unwrap() > 318, "pages came back from tiers 2 and 3: {m:?}");
}

#[test]
fn vm_run_replays_a_trace_in_the_micro_vm() {
    let dir = tempfile::tempdir().unwrap();
    import_sample(dir.path());
    let out =
        vmtier(dir.path(), &["vm", "run", "--json", "--memory", "16MiB", "--dram", "4MiB", "--trace", "sort.vmtrace"]);
    let m = json_ok(&out);
    assert_eq!(m["guest"], "micro-vm", "{m:?}");
    assert_eq!(m["workload"], "trace");
    assert_eq!(m["verified"], true, "{m:?}");
    let r = &m["workload_report"];
    assert_eq!((r["pages"].as_u64(), r["accesses"].as_u64()), (Some(318), Some(338)), "{r}");
}

#[test]
fn trace_configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails_with_2(&vmtier(dir.path(), &["demo", "--guest", "in-process", "--workload", "trace"]));
    assert!(err.contains("workload.trace") && err.contains("--trace FILE"), "{err}");
    let err = fails_with_2(&vmtier(dir.path(), &["demo", "--workload", "zipf", "--trace", "x.vmtrace"]));
    assert!(err.contains("--workload trace"), "{err}");
    let err = fails_with_2(&vmtier(dir.path(), &["demo", "--guest", "in-process", "--trace", "nope.vmtrace"]));
    assert!(err.contains("workload.trace") && err.contains("nope.vmtrace"), "{err}");
    // 3000 distinct pages (11.7 MiB) do not fit in 8 MiB of guest memory.
    let text: String = (0..3000u64).map(|i| format!(" S {:08x},8\n", 0x4000_0000 + i * 4096)).collect();
    std::fs::write(dir.path().join("big.lackey"), text).unwrap();
    let err = fails_with_2(&vmtier(
        dir.path(),
        &["demo", "--guest", "in-process", "--memory", "8MiB", "--dram", "4MiB", "--trace", "big.lackey"],
    ));
    assert!(err.contains("engine.memory") && err.contains("3000 pages") && err.contains("12MiB"), "{err}");
}
