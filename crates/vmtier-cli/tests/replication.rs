//! `vmtier primary` / `secondary` / `failover` / `status` as separate processes sharing a
//! directory: the secondary follows, the primary is killed (SIGKILL) mid-run, the secondary
//! resumes the VM from the last committed checkpoint and the guest — which checks every value
//! it reads against what it wrote, and keeps that bookkeeping in guest memory — finishes
//! verified. A primary that was only stopped (SIGSTOP) and comes back after the failover is
//! fenced: it can never commit again.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::describe;

/// A small replicated VM: 32 MiB guest, checkpoints every 50 ms, a 400 ms lease.
fn write_config(dir: &Path, accesses: u64) -> std::path::PathBuf {
    let cfg = dir.join("ha.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
data_dir = "{data}"
[engine]
memory = "32MiB"
dram = "12MiB"
[engine.tier2]
direct_io = false
[workload]
guest = "vm"
kind = "zipf"
accesses = {accesses}
write_fraction = 0.5
[replication]
interval_ms = 50
heartbeat_ms = 50
lease_timeout_ms = 400
secondary_dram = "8MiB"
"#,
            data = dir.join("data").display()
        ),
    )
    .expect("write config");
    cfg
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vmtier"))
        .current_dir(dir)
        .env("VMTIER_LOG", "warn")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmtier starts")
}

/// Waits for `child` at most `limit`, killing it on timeout.
fn wait(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("{what} did not finish within {limit:?}\n{}", describe(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Polls `vmtier status --json` until the secondary has applied a checkpoint and warmed pages.
fn wait_until_following(dir: &Path, cfg: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = common::vmtier_in(dir, &["status", "-c", cfg.to_str().unwrap(), "--json"]);
        let v = common::json_ok(&out);
        let warm = v.get("secondary").and_then(|s| s.get("warm_pages")).and_then(|w| w.as_u64()).unwrap_or(0);
        let applied = v.get("secondary").and_then(|s| s.get("applied_seq")).and_then(|w| w.as_u64()).unwrap_or(0);
        if warm > 0 && applied >= 5 {
            return serde_json::Value::Object(v);
        }
        assert!(Instant::now() < deadline, "the secondary did not start following within 60 s: {v:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kvm_or_skip() -> bool {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED: /dev/kvm is missing");
        return false;
    }
    true
}

#[test]
fn secondary_resumes_a_killed_primary_and_the_guest_verifies() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 600_000);
    let cfg_s = cfg.to_str().unwrap();
    let mut primary = spawn(dir.path(), &["primary", "-c", cfg_s]);
    let secondary = spawn(dir.path(), &["secondary", "-c", cfg_s, "--json"]);
    let status = wait_until_following(dir.path(), &cfg);
    eprintln!("status before the kill: {status}");
    primary.kill().expect("SIGKILL the primary");
    let _ = primary.wait();
    let out = wait(secondary, Duration::from_secs(120), "the secondary after the failover");
    let v = common::json_ok(&out);
    let f = &v["failover"];
    assert_eq!(f["reason"], "lease-expired", "{}", describe(&out));
    assert!(f["epoch"].as_u64().unwrap() >= 2);
    assert!(f["warm_pages"].as_u64().unwrap() > 0, "nothing was warm at failover: {f}");
    let after = &v["after"];
    assert_eq!(after["verified"], true, "the resumed guest found a wrong value: {}", describe(&out));
    assert!(after["replication"]["committed"].as_u64().unwrap() > 0, "the new primary replicates too");
}

#[test]
fn manual_failover_fences_a_stopped_primary() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 600_000);
    let cfg_s = cfg.to_str().unwrap();
    let primary = spawn(dir.path(), &["primary", "-c", cfg_s, "--json"]);
    let secondary = spawn(dir.path(), &["secondary", "-c", cfg_s, "--manual", "--json"]);
    wait_until_following(dir.path(), &cfg);
    // The primary stops answering (a long GC pause, a partition): the operator fails over.
    let pid = primary.id() as i32;
    // SAFETY: sending a signal to our own child process by pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let out = common::vmtier_in(dir.path(), &["failover", "-c", cfg_s, "--wait-secs", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // It comes back: its next commit finds the log taken, and it stops for good.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let p = wait(primary, Duration::from_secs(60), "the fenced primary");
    assert_ne!(p.status.code(), Some(0), "a fenced primary must not report success\n{}", describe(&p));
    let text = String::from_utf8_lossy(&p.stdout).to_string() + &String::from_utf8_lossy(&p.stderr);
    assert!(text.contains("fenced"), "the fenced primary does not say so:\n{}", describe(&p));
    let out = wait(secondary, Duration::from_secs(120), "the secondary after the failover");
    let v = common::json_ok(&out);
    assert_eq!(v["failover"]["reason"], "requested");
    assert_eq!(v["after"]["verified"], true, "{}", describe(&out));
}
