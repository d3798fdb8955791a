//! Integration tests for the `vmtier` binary: each runs it as a child process with its working
//! directory set to a fresh temporary directory, so `./vmtier-data` lands there.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{describe, json_ok};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn vmtier(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmtier"));
    cmd.current_dir(dir).env_remove("VMTIER_LOG");
    cmd
}

fn run(dir: &Path, args: &[&str]) -> Output {
    vmtier(dir).args(args).output().expect("vmtier runs")
}

fn u64_key(m: &serde_json::Map<String, Value>, k: &str) -> u64 {
    m.get(k).and_then(Value::as_u64).unwrap_or_else(|| panic!("`{k}` missing or not an unsigned integer in {m:?}"))
}

/// Exit code 2; returns stderr.
fn fails_with_2(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{}", describe(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn demo_json_summary() {
    let dir = tempdir();
    let out = run(
        dir.path(),
        &["demo", "--json", "--memory", "16MiB", "--dram", "4MiB", "--accesses", "30000", "--workload", "zipf"],
    );
    let m = json_ok(&out);
    assert_eq!(u64_key(&m, "guest_bytes"), 16 * MIB);
    let budget = u64_key(&m, "dram_budget_bytes");
    assert_eq!(budget, 4 * MIB);
    let peak = u64_key(&m, "peak_resident_bytes");
    assert!(peak <= budget, "peak_resident_bytes {peak} exceeds the DRAM budget {budget}");
    assert!(u64_key(&m, "faults") > 0);
    let tiers = m["pages_in_tier"].as_object().expect("pages_in_tier is an object");
    for t in ["1", "2", "3"] {
        assert!(tiers.get(t).and_then(Value::as_u64).is_some(), "pages_in_tier lacks tier {t}: {tiers:?}");
    }
    u64_key(&m, "promotions");
    u64_key(&m, "demotions");
    let lat = m["fault_latency_us"].as_object().expect("fault_latency_us is an object");
    for q in ["p50", "p99"] {
        assert!(lat.get(q).and_then(Value::as_f64).is_some(), "fault_latency_us lacks {q}: {lat:?}");
    }
    assert_eq!(m["verified"], Value::Bool(true));
    assert!(dir.path().join("vmtier-data/tier2").is_dir(), "./vmtier-data/tier2 not created");
}

#[test]
fn run_config_file_with_threshold_policy() {
    let dir = tempdir();
    let cfg = dir.path().join("small.toml");
    std::fs::write(
        &cfg,
        "[engine]\nmemory = \"16MiB\"\ndram = \"4MiB\"\n\n[engine.mtm]\npolicy = \"threshold\"\n\n\
         [workload]\nkind = \"scan\"\npasses = 2\n",
    )
    .unwrap();
    let out = run(dir.path(), &["run", "--config", cfg.to_str().unwrap(), "--json"]);
    let m = json_ok(&out);
    assert_eq!(m["verified"], Value::Bool(true));
    assert_eq!(m["policy"], "threshold");
    assert_eq!(m["workload"], "scan");
    assert_eq!(u64_key(&m, "guest_bytes"), 16 * MIB);
}

#[test]
fn config_errors_exit_2_and_name_the_problem() {
    let dir = tempdir();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };

    // DRAM budget above the (default 1 GiB) guest.
    let f = write("dram.toml", "[engine]\ndram = \"8GiB\"\n");
    let err = fails_with_2(&run(dir.path(), &["run", "--config", &f]));
    assert!(err.contains("engine.dram") && err.contains("8GiB") && err.contains("cannot exceed the guest"), "{err}");

    // Misspelt key.
    let f = write("typo.toml", "[engine]\nmemroy = \"1GiB\"\n");
    let err = fails_with_2(&run(dir.path(), &["run", "--config", &f]));
    assert!(err.contains("memroy"), "{err}");

    // Missing file.
    let missing = dir.path().join("does-not-exist.toml");
    let err = fails_with_2(&run(dir.path(), &["run", "--config", missing.to_str().unwrap()]));
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    // Bad size on the command line: a clap error.
    let err = fails_with_2(&run(dir.path(), &["demo", "--memory", "12parsecs"]));
    assert!(err.contains("12parsecs") && err.contains("--memory"), "{err}");

    // Unknown workload kind, in the file and on the command line.
    let f = write("kind.toml", "[workload]\nkind = \"random\"\n");
    for args in [vec!["run", "--config", &f], vec!["demo", "--workload", "random"]] {
        let err = fails_with_2(&run(dir.path(), &args));
        assert!(err.contains("workload.kind") && err.contains("random"), "{err}");
        for k in ["zipf", "scan", "uniform", "phases"] {
            assert!(err.contains(k), "allowed kind {k} not listed: {err}");
        }
    }

    // None of these may have started an engine.
    assert!(!dir.path().join("vmtier-data").exists(), "a rejected configuration created ./vmtier-data");
}

#[test]
fn bad_input_everywhere_names_the_input_and_what_to_do() {
    let dir = tempdir();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let fails = |args: &[&str]| fails_with_2(&run(dir.path(), args));

    // TOML syntax: the file, the line and the column.
    let f = write("syntax.toml", "[engine]\nmemory = \"1GiB\nx = 1\n");
    let err = fails(&["run", "--config", &f]);
    assert!(err.contains("syntax.toml") && err.contains("line 2"), "{err}");

    // Wrong units, in the file and as a bare number.
    let f = write("units.toml", "[engine]\nmemory = \"1 gigabyte\"\n");
    let err = fails(&["run", "--config", &f]);
    assert!(err.contains("1 gigabyte") && err.contains("MiB"), "{err}");
    let f = write("bare.toml", "[engine]\nmemory = 12\n");
    let err = fails(&["run", "--config", &f]);
    assert!(err.contains("engine.memory") && err.contains("4KiB"), "{err}");

    // Contradictory: the DRAM budget on the command line above the guest in the file.
    let f = write("small.toml", "[engine]\nmemory = \"64MiB\"\n");
    let err = fails(&["run", "--config", &f, "--dram", "1GiB"]);
    assert!(err.contains("command-line") && err.contains("cannot exceed the guest"), "{err}");

    // Out of range.
    let f = write("tick.toml", "[engine.mtm]\ntick_ms = 0\n");
    let err = fails(&["run", "--config", &f]);
    assert!(err.contains("engine.mtm.tick_ms") && err.contains("1 to 60000"), "{err}");

    // A data directory that cannot be created (under a regular file: root cannot either).
    let file = write("plain-file", "x");
    let f = write("dir.toml", &format!("data_dir = \"{file}/sub\"\n[workload]\naccesses = 1000\n"));
    let err = fails(&["run", "--config", &f]);
    assert!(err.contains("plain-file/sub") && err.contains("tier-2"), "{err}");

    // A trace that is not lackey output, imported and replayed.
    let junk = write("junk.txt", "hello world\n");
    let out = dir.path().join("junk.vpt");
    let err = fails(&["trace", "import", &junk, "-o", out.to_str().unwrap()]);
    assert!(err.contains("junk.txt") && err.contains("not valgrind lackey output") && err.contains("line 1"), "{err}");
    let err = fails(&["run", "--config", &f, "--trace", &junk]);
    assert!(err.contains("junk.txt") && err.contains("not valgrind lackey output"), "{err}");

    // A page-server socket that is not a socket.
    let f = write("vm.toml", "[engine]\nmemory = \"64MiB\"\n[workload]\naccesses = 1000\n");
    let err = fails(&["vm", "run", "--config", &f, "--page-server", &junk]);
    assert!(err.contains("junk.txt") && err.contains("vmtier serve"), "{err}");

    // Replication commands on a log nobody follows, and inspect of something that is no store.
    let shared = dir.path().join("shared");
    let f = write("nokey.toml", &format!("[replication]\nshared = \"{}\"\n", shared.display()));
    let err = fails(&["failover", "--config", &f]);
    assert!(err.contains("replication.key_file") && err.contains("vmtier keygen"), "{err}");
    let key = dir.path().join("cluster.key");
    let out = run(dir.path(), &["keygen", key.to_str().unwrap()]);
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    let f = write(
        "ha.toml",
        &format!("[replication]\nshared = \"{}\"\nkey_file = \"{}\"\n", shared.display(), key.display()),
    );
    let err = fails(&["failover", "--config", &f]);
    assert!(err.contains("no secondary follows the log") && err.contains("vmtier secondary"), "{err}");
    let err = fails(&["inspect", &junk]);
    assert!(err.contains("junk.txt") && err.contains("not a directory"), "{err}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One plain HTTP/1.0 GET; `None` if nothing answers yet or the answer is not a 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.split_whitespace().nth(1).filter(|c| *c == "200")?;
    Some(body.to_owned())
}

/// Kills the child on drop so a failed assertion never leaves it running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn metrics_endpoint_serves_engine_metrics() {
    let dir = tempdir();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = vmtier(dir.path())
        .args(["demo", "--memory", "16MiB", "--dram", "4MiB", "--accesses", "300000", "--metrics-addr", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmtier demo");
    let mut child = KillOnDrop(child);

    let start = Instant::now();
    let mut last = String::new();
    let body = loop {
        if let Some(body) = http_get(port, "/metrics") {
            // The exporter may answer before the engine has recorded anything; wait for both.
            if body.contains("vmtier_resident_bytes") && body.contains("vmtier_faults_missing_total") {
                break body;
            }
            last = body;
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            let mut err = String::new();
            let _ = child.0.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!(
                "vmtier exited ({st}) before /metrics showed the engine metrics; last body:\n{last}\nstderr:\n{err}"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no usable /metrics on {addr} within 20 s; last body:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("vmtier_resident_bytes"), "{body}");
    assert!(body.contains("vmtier_faults_missing_total"), "{body}");

    // Drain stderr in the background so the child never blocks on a full pipe.
    let mut stderr = child.0.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            panic!("vmtier demo did not exit within 90 s; killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = drain.join().unwrap();
    assert!(status.success(), "vmtier demo exited {status}; stderr:\n{err}");
}

#[test]
fn bench_fault_json() {
    let dir = tempdir();
    let bench_dir = dir.path().join("b");
    let out = run(dir.path(), &["bench", "fault", "--pages", "500", "--dir", bench_dir.to_str().unwrap(), "--json"]);
    let m = json_ok(&out);
    let rows = m["rows"].as_array().expect("rows is an array");
    // The five measurements the ratio is built from; a newer build may append more rows.
    assert_eq!(rows.len(), 6, "expected 6 rows: {rows:?}");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().expect("row name")).collect();
    for (i, want) in
        ["raw copy 4K", "raw copy 64K", "device 4K", "vmtier zero-fill", "vmtier tier-2 hit"].iter().enumerate()
    {
        assert!(names[i].starts_with(want), "row {i} is {:?}, expected {want}…", names[i]);
    }
    for r in rows {
        for k in ["p50_us", "p99_us", "per_page_us"] {
            assert!(r[k].as_f64().is_some_and(|x| x.is_finite() && x >= 0.0), "row {r} has a bad {k}");
        }
    }
    let ratio = m["tier2_hit_p50_vs_floor_plus_device"].as_f64().expect("ratio is a number");
    assert!(ratio.is_finite() && ratio > 0.0, "tier2_hit_p50_vs_floor_plus_device = {ratio}");
    assert_eq!(u64_key(&m, "pages"), 500);
}

/// A metrics address other hosts can reach is refused unless explicitly allowed.
#[test]
fn metrics_refuse_a_non_loopback_address() {
    let dir = tempdir();
    let out = run(dir.path(), &["demo", "--memory", "16MiB", "--dram", "4MiB", "--metrics-addr", "0.0.0.0:9"]);
    let err = fails_with_2(&out);
    assert!(err.contains("metrics.addr") && err.contains("--metrics-allow-remote"), "{err}");
}

/// Credentials planted in a replicated VM's config (S3 keys, a URL with user:password, the
/// cluster key's bytes) appear in no output of `keygen`, `status`, `inspect`, with debug logs.
#[test]
fn planted_credentials_never_appear_in_output() {
    let dir = tempdir();
    let key = dir.path().join("cluster.key");
    let mut outputs = vec![run(dir.path(), &["keygen", key.to_str().unwrap()])];
    assert_eq!(outputs[0].status.code(), Some(0), "{}", describe(&outputs[0]));
    let key_hex: String = std::fs::read(&key).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let cfg = dir.path().join("vm.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {data:?}\n\
             [engine.tier3]\nendpoint = \"http://PLANTEDUSER:PLANTEDPASS@127.0.0.1:9\"\n\
             access_key_id = \"AKIAPLANTEDID\"\nsecret_access_key = \"PLANTEDSECRET\"\n\
             [replication]\nkey_file = {key:?}\nendpoint = \"http://PLANTEDUSER:PLANTEDPASS@127.0.0.1:9\"\n\
             access_key_id = \"AKIAPLANTEDID\"\nsecret_access_key = \"PLANTEDSECRET\"\n",
            data = dir.path().join("data").to_string_lossy(),
            key = key.to_string_lossy(),
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    for args in [&["status", "-c", c, "--json"][..], &["status", "-c", c], &["inspect", "--config", c, "--json"]] {
        outputs.push(vmtier(dir.path()).env("VMTIER_LOG", "debug").args(args).output().unwrap());
    }
    // The log in S3 at a URL with credentials: the error names the store, redacted.
    let s3 = dir.path().join("s3.toml");
    std::fs::write(
        &s3,
        format!(
            "data_dir = {data:?}\n[replication]\nkey_file = {key:?}\nshared = \"s3://PLANTEDUSER:PLANTEDPASS@bucket/ha\"\n\
             endpoint = \"http://PLANTEDUSER:PLANTEDPASS@127.0.0.1:9\"\nallow_http = true\nsecret_access_key = \"PLANTEDSECRET\"\n",
            data = dir.path().join("data").to_string_lossy(),
            key = key.to_string_lossy(),
        ),
    )
    .unwrap();
    let failed =
        vmtier(dir.path()).env("VMTIER_LOG", "debug").args(["status", "-c", s3.to_str().unwrap()]).output().unwrap();
    assert_ne!(failed.status.code(), Some(0), "{}", describe(&failed));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("s3://<redacted>@bucket/ha"), "{}", describe(&failed));
    outputs.push(failed);
    // A key file others can read is refused, and its bytes are not echoed.
    std::fs::write(dir.path().join("loose.key"), [0x5a; 40]).unwrap();
    outputs.push(run(dir.path(), &["inspect", dir.path().to_str().unwrap(), "--key-file", "loose.key"]));
    for out in &outputs {
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        for secret in ["PLANTEDSECRET", "AKIAPLANTEDID", "PLANTEDPASS", "PLANTEDUSER", &key_hex, "5a5a5a5a", "ZZZZ"] {
            assert!(!text.contains(secret), "{secret} appears in the output:\n{}", describe(out));
        }
    }
}
