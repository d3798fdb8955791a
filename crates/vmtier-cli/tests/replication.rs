//! `vmtier primary` / `secondary` / `failover` / `status` as separate processes sharing a
//! directory: the secondary follows, the primary is killed (SIGKILL) mid-run, the secondary
//! resumes the VM from the last committed checkpoint and the guest — which checks every value
//! it reads against what it wrote, and keeps that bookkeeping in guest memory — finishes
//! verified. A primary that was only stopped (SIGSTOP) and comes back after the failover is
//! fenced: it can never commit again. The same failover runs with the log, the lease and tier 3
//! in a real S3 server (s3s-fs).

mod common;
#[path = "../../vmtier-storage/tests/common/s3.rs"]
mod s3;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::describe;

/// A small replicated VM: 32 MiB guest, checkpoints every 50 ms, a 1 s lease (a heartbeat
/// written to a directory waits for its fsync behind every other write of a busy machine).
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
key_file = "{key}"
interval_ms = 50
heartbeat_ms = 50
lease_timeout_ms = 1000
secondary_dram = "8MiB"
"#,
            data = dir.join("data").display(),
            key = keygen(dir).display()
        ),
    )
    .expect("write config");
    cfg
}

/// Makes the cluster key `dir/cluster.key` with `vmtier keygen` (once) and returns its path.
fn keygen(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("cluster.key");
    if !key.exists() {
        let out = common::vmtier_in(dir, &["keygen", key.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
    key
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
    kill_primary_and_resume(dir.path(), &cfg);
}

/// Runs a primary and a secondary on `cfg`, SIGKILLs the primary once the secondary follows, and
/// checks that the secondary took over on lease expiry with pages warm, that the resumed guest
/// verified, and that the new primary replicates.
fn kill_primary_and_resume(dir: &Path, cfg: &Path) {
    let cfg_s = cfg.to_str().unwrap();
    let mut primary = spawn(dir, &["primary", "-c", cfg_s]);
    let secondary = spawn(dir, &["secondary", "-c", cfg_s, "--json"]);
    let status = wait_until_following(dir, cfg);
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

/// The log, the lease and tier 3 in an S3 bucket (s3s-fs): the secondary follows through S3,
/// the primary is SIGKILLed, the resumed guest verifies. s3s-fs makes every exclusive write (a
/// commit, a claim) wait 250 ms to settle, so the lease is longer than a commit.
#[test]
fn over_s3_the_secondary_resumes_a_killed_primary() {
    if !kvm_or_skip() {
        return;
    }
    let Some(server) = s3::S3Server::start_or_skip("over_s3_the_secondary_resumes_a_killed_primary") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let o = server.config("vm-0");
    let s3_keys = format!(
        "endpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nallow_http = true\n",
        o.endpoint.as_deref().unwrap(),
        s3::ACCESS_KEY,
        s3::SECRET_KEY
    );
    let cfg = dir.path().join("ha-s3.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
data_dir = "{data}"
[engine]
memory = "16MiB"
dram = "8MiB"
[engine.tier2]
direct_io = false
[engine.tier3]
url = "s3://{bucket}/vm-0/tier3"
{s3_keys}
[workload]
guest = "vm"
kind = "zipf"
accesses = 400000
write_fraction = 0.5
[replication]
shared = "s3://{bucket}/vm-0/ha"
key_file = "{key}"
{s3_keys}
interval_ms = 100
heartbeat_ms = 100
lease_timeout_ms = 2000
secondary_dram = "4MiB"
"#,
            data = dir.path().join("data").display(),
            bucket = s3::BUCKET,
            key = keygen(dir.path()).display(),
        ),
    )
    .expect("write config");
    kill_primary_and_resume(dir.path(), &cfg);
    // The log really is in the bucket.
    let logs = server.bucket_dir().join("vm-0/ha/log");
    assert!(std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0) > 0, "no log records under {}", logs.display());
}

/// Every tier-2 page of the newest checkpoint in `dir`'s log, replaced by bytes with the same
/// crc32c (anyone who can write the shared directory can compute them) but no keyed tag.
/// Returns how many pages were forged.
fn forge_checkpoint_pages(dir: &Path) -> usize {
    let store = vmtier_repl::open_store(&vmtier_storage::object::ObjectConfig::new(
        dir.join("data/shared").to_string_lossy().into_owned(),
    ))
    .expect("open the log");
    let key = vmtier_repl::ClusterKey::load(&dir.join("cluster.key")).expect("key");
    let mut map = vmtier_repl::ReplicaMap::new();
    for r in vmtier_repl::LogReader::open(store, &key).expect("open the log").poll().expect("read the log") {
        map.apply_record(&r).expect("apply");
    }
    let mut forged = 0;
    for e in map.entries() {
        let vmtier_repl::Location::Ssd { store, slot } = e.loc else { continue };
        let spf = 16384u32;
        let file = dir.join(format!("data/tier2/e{store:06}/slots-{:05}.dat", slot / spf));
        let mut page = vec![0u8; 4096];
        for (i, b) in page.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xA5;
        }
        vmtier_storage::fault::force_crc32c(&mut page, e.crc);
        let f = std::fs::OpenOptions::new().write(true).open(&file).expect("slot file");
        std::os::unix::fs::FileExt::write_all_at(&f, &page, u64::from(slot % spf) * 4096).expect("forge");
        forged += 1;
    }
    forged
}

/// A page of the failed primary's checkpoint replaced on shared storage by one with the right
/// crc32c but without the cluster key's tag never reaches the guest: the new primary refuses
/// the copy, says so, and stops rather than run the guest on it.
#[test]
fn a_forged_page_with_a_valid_crc_never_reaches_the_guest_on_failover() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 600_000);
    let cfg_s = cfg.to_str().unwrap();
    let mut primary = spawn(dir.path(), &["primary", "-c", cfg_s]);
    let secondary = spawn(dir.path(), &["secondary", "-c", cfg_s, "--manual", "--json"]);
    wait_until_following(dir.path(), &cfg);
    primary.kill().expect("SIGKILL the primary");
    let _ = primary.wait();
    let forged = forge_checkpoint_pages(dir.path());
    assert!(forged > 0, "no tier-2 page in the checkpoint to forge");
    let out = common::vmtier_in(dir.path(), &["failover", "-c", cfg_s, "--wait-secs", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = wait(secondary, Duration::from_secs(120), "the secondary after the failover");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("fails authentication") || text.contains("keyed tag"),
        "{forged} forged pages were not refused by their tag:\n{}",
        describe(&out)
    );
    // Whatever the guest did, it never verified a run on forged data.
    assert!(!text.contains("\"verified\":true") && !text.contains("\"verified\": true"), "{}", describe(&out));
}
