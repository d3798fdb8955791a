//! Crash safety of replication (issue 5, item 7): primaries are SIGKILLed at random points, again
//! and again, each succeeded by a secondary that takes over from the log and is killed in turn.
//! Whatever the moment of a kill, every resume must be a checkpoint some primary captured, with
//! memory byte-identical to the primary's at that checkpoint, and never older than a checkpoint
//! already committed.
//!
//! The evidence is the check log (`--check-log`, see `src/ha/check.rs`): each primary appends
//! `capture E S DIGEST` (the digest of guest memory at the pause) before it commits record `S`,
//! and `commit E S` after; each secondary appends `resume E S DIGEST` with the digest of the bytes
//! it actually resumes with — its warm pages from its own DRAM, every other page read from shared
//! storage.
//!
//! `VMTIER_CRASH_KILLS=N` runs N kills (default 200); `VMTIER_CRASH_SEED=S` repeats a sequence of
//! kill delays (the seed is printed).

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills per test run unless `VMTIER_CRASH_KILLS` says otherwise.
const DEFAULT_KILLS: usize = 200;

/// A tiny replicated VM that checkpoints fast and fails over fast, and never finishes by itself.
fn write_config(dir: &Path) -> PathBuf {
    write_config_with_lease(dir, 150)
}

/// [`write_config`] with another lease timeout.
fn write_config_with_lease(dir: &Path, lease_timeout_ms: u64) -> PathBuf {
    let cfg = dir.join("crash.toml");
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
[workload]
guest = "vm"
kind = "zipf"
accesses = 1000000000000
write_fraction = 0.5
[replication]
key_file = "{key}"
interval_ms = 20
heartbeat_ms = 20
lease_timeout_ms = {lease_timeout_ms}
poll_ms = 10
full_every = 10
preclean = true
fill_after_failover = true
secondary_dram = "4MiB"
"#,
            data = dir.join("data").display(),
            key = key_file(dir).display()
        ),
    )
    .expect("write config");
    cfg
}

/// The cluster key of the chain, made once in `dir`.
fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("cluster.key");
    if !path.exists() {
        vmtier_repl::ClusterKey::generate(&path).expect("keygen");
    }
    path
}

/// splitmix64: the kill delays, repeatable from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The processes of the chain, each with its stderr in a file for diagnosis.
struct Chain {
    dir: PathBuf,
    cfg: PathBuf,
    check: PathBuf,
    spawned: usize,
    /// Processes spawned and not yet reaped, killed when the chain is dropped (a failed assertion
    /// must not leave a primary running). Unreaped, a pid cannot have been reused.
    pids: Vec<u32>,
}

impl Drop for Chain {
    fn drop(&mut self) {
        for &pid in &self.pids {
            // SAFETY: kill(2) on a child of this test not yet reaped, so the pid is still its.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

impl Chain {
    fn spawn(&mut self, role: &str) -> (Child, PathBuf) {
        self.spawned += 1;
        let err = self.dir.join(format!("{:04}-{role}.stderr", self.spawned));
        let child = Command::new(env!("CARGO_BIN_EXE_vmtier"))
            .current_dir(&self.dir)
            .env("VMTIER_LOG", "warn")
            .args([role, "-c", self.cfg.to_str().unwrap(), "--check-log", self.check.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .expect("vmtier starts");
        self.pids.push(child.id());
        (child, err)
    }

    /// Kills `child` (if it still runs) and reaps it.
    fn kill(&mut self, child: &mut Child) {
        let _ = child.kill();
        let _ = child.wait();
        self.pids.retain(|&p| p != child.id());
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.check).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

/// One line of the check log.
#[derive(Debug, Clone, PartialEq)]
enum Line {
    Capture { epoch: u64, seq: u64, digest: String },
    Commit { epoch: u64, seq: u64 },
    Claim { new_epoch: u64 },
    Resume { epoch: u64, seq: u64, digest: String, new_epoch: u64 },
}

fn parse(line: &str) -> Line {
    let f: Vec<&str> = line.split(' ').collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| panic!("bad line {line:?}"));
    let digest = || f.get(3).map(|s| s.to_string()).unwrap_or_else(|| panic!("bad line {line:?}"));
    match f[0] {
        "capture" => Line::Capture { epoch: num(1), seq: num(2), digest: digest() },
        "commit" => Line::Commit { epoch: num(1), seq: num(2) },
        "claim" => Line::Claim { new_epoch: num(1) },
        "resume" => Line::Resume { epoch: num(1), seq: num(2), digest: digest(), new_epoch: num(4) },
        _ => panic!("bad line {line:?}"),
    }
}

/// Figures of a checked log.
#[derive(Debug, Default)]
struct Checked {
    resumes: usize,
    commits: usize,
}

/// Every resume matches the newest capture of its checkpoint before it and is no older than any
/// commit before its claim. (A slow takeover can be overtaken by a newer one that claims,
/// resumes and commits before the first writes its resume line; the first is fenced and never
/// commits.) The error names the first line that breaks this.
fn check(lines: &[String]) -> Result<Checked, String> {
    let mut captures: HashMap<(u64, u64), String> = HashMap::new();
    let mut newest_commit = 0u64;
    // The newest commit logged before each claim.
    let mut at_claim: HashMap<u64, u64> = HashMap::new();
    let mut out = Checked::default();
    for (n, text) in lines.iter().enumerate() {
        // A SIGKILL can cut the file's last line short; it is not evidence of anything.
        if n + 1 == lines.len() && text.split(' ').count() < 2 {
            break;
        }
        let n = n + 1;
        match parse(text) {
            Line::Capture { epoch, seq, digest } => {
                captures.insert((epoch, seq), digest);
            }
            Line::Commit { seq, .. } => {
                newest_commit = newest_commit.max(seq);
                out.commits += 1;
            }
            Line::Claim { new_epoch } => {
                at_claim.insert(new_epoch, newest_commit);
            }
            Line::Resume { epoch, seq, digest, new_epoch } => {
                let Some(&committed) = at_claim.get(&new_epoch) else {
                    return Err(format!("line {n}: a resume by epoch {new_epoch}, which claimed nothing"));
                };
                let Some(captured) = captures.get(&(epoch, seq)) else {
                    return Err(format!("line {n}: resumed {text:?}, a checkpoint nobody captured"));
                };
                if *captured != digest {
                    return Err(format!(
                        "line {n}: resumed with different memory ({digest}) than the primary had at checkpoint \
                         {seq} of epoch {epoch} ({captured})"
                    ));
                }
                if seq < committed {
                    return Err(format!(
                        "line {n}: resumed checkpoint {seq}, older than checkpoint {committed} committed before the \
                         claim of epoch {new_epoch}"
                    ));
                }
                out.resumes += 1;
            }
        }
    }
    Ok(out)
}

#[test]
fn the_check_catches_a_wrong_resume() {
    let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ok = check(&lines(&["capture 1 1 aa", "commit 1 1", "capture 1 2 bb", "claim 2", "resume 1 1 aa 2"])).unwrap();
    assert_eq!(ok.resumes, 1);
    // Overtaken: epoch 3 claimed, resumed and committed before epoch 2 wrote its resume line.
    let overtaken = [
        "capture 1 1 aa",
        "commit 1 1",
        "claim 2",
        "claim 3",
        "resume 1 1 aa 3",
        "capture 3 3 cc",
        "commit 3 3",
        "resume 1 1 aa 2",
    ];
    assert_eq!(check(&lines(&overtaken)).unwrap().resumes, 2);
    for (bad, why) in [
        (["capture 1 1 aa", "commit 1 1", "claim 2", "resume 1 1 ab 2"], "different memory"),
        (["capture 1 1 aa", "commit 1 1", "claim 2", "resume 1 2 aa 2"], "nobody captured"),
        (["capture 1 2 aa", "commit 1 3", "claim 2", "resume 1 2 aa 2"], "committed before the claim"),
        (["capture 1 2 aa", "commit 1 2", "claim 2", "resume 1 2 aa 3"], "claimed nothing"),
    ] {
        let e = check(&lines(&bad)).expect_err(why);
        assert!(e.contains(why), "{e}");
    }
}

/// The tier-2 stores left are the last primary's own and those its first checkpoint (a full
/// one) still references: every other epoch's store was reclaimed.
fn assert_only_referenced_stores_left(dir: &Path, last_epoch: u64) {
    let store = vmtier_repl::open_store(&vmtier_storage::object::ObjectConfig::new(
        dir.join("data/shared").to_string_lossy().into_owned(),
    ))
    .expect("open the log");
    let key = vmtier_repl::ClusterKey::load(&key_file(dir)).expect("key");
    let records = vmtier_repl::LogReader::open(store, &key).expect("open the log").poll().expect("read the log");
    let first = records
        .iter()
        .find_map(|r| match r {
            vmtier_repl::Record::Checkpoint(c) if c.epoch == last_epoch => Some(c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no checkpoint of epoch {last_epoch} in the log"));
    assert!(first.full, "the first checkpoint of an epoch is full");
    let mut keep: std::collections::BTreeSet<u64> = first
        .pages
        .iter()
        .filter_map(|p| match p.loc {
            vmtier_repl::Location::Zero => None,
            vmtier_repl::Location::Ssd { store, .. } | vmtier_repl::Location::Object { store, .. } => Some(store),
        })
        .collect();
    keep.insert(last_epoch);
    let left: std::collections::BTreeSet<u64> = std::fs::read_dir(dir.join("data/tier2"))
        .expect("tier 2")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix('e').and_then(|n| n.parse().ok()))
        .collect();
    let stray: Vec<u64> = left.difference(&keep).copied().collect();
    assert!(
        stray.is_empty(),
        "stores of epochs {stray:?} are left though no checkpoint references them (kept: {keep:?})"
    );
    eprintln!("crash test: {} tier-2 stores left, all referenced: {left:?}", left.len());
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits until the check log has a `commit` line (the first primary's first checkpoint).
fn wait_for_commit(chain: &Chain, primary_err: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !chain.lines().iter().any(|l| l.starts_with("commit ")) {
        assert!(Instant::now() < deadline, "the primary committed nothing in 60 s:\n{}", tail(primary_err));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killed_primaries_never_lose_or_tear_a_checkpoint() {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED: /dev/kvm is missing");
        return;
    }
    let kills: usize = std::env::var("VMTIER_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_KILLS);
    let seed: u64 = std::env::var("VMTIER_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash test: {kills} kills, VMTIER_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut chain = Chain {
        dir: dir.path().to_path_buf(),
        cfg: write_config(dir.path()),
        check: dir.path().join("check.log"),
        spawned: 0,
        pids: Vec::new(),
    };
    let started = Instant::now();
    // The victim: the primary, or the secondary that is about to become it.
    let (mut victim, mut victim_err) = chain.spawn("primary");
    wait_for_commit(&chain, &victim_err);
    let (mut next, mut next_err) = chain.spawn("secondary");
    let mut since = Instant::now();
    let mut early = 0;
    for _ in 0..kills {
        // One kill in four lands in the victim's first 300 ms as the primary-to-be: while it still
        // waits for the lease, reads the log, claims it or resumes. The others hit a running
        // primary.
        let delay = if rng.below(4) == 0 {
            early += 1;
            rng.below(300)
        } else {
            300 + rng.below(500)
        };
        std::thread::sleep(Duration::from_millis(delay).saturating_sub(since.elapsed()));
        if let Some(status) = victim.try_wait().unwrap() {
            // Only a fenced primary (a slow one that a secondary took over from) stops by itself;
            // the check log says more precisely what went wrong, if anything did.
            check(&chain.lines()).unwrap_or_else(|e| panic!("{e}"));
            let err = std::fs::read_to_string(&victim_err).unwrap_or_default();
            assert!(
                err.contains("fenced"),
                "{} exited by itself ({status}):\n{}",
                victim_err.display(),
                tail(&victim_err)
            );
        }
        chain.kill(&mut victim);
        (victim, victim_err) = (next, next_err);
        (next, next_err) = chain.spawn("secondary");
        since = Instant::now();
    }
    // The last victim too; the last secondary takes over, and its resume is checked with the rest.
    chain.kill(&mut victim);
    let resumes_before = chain.lines().iter().filter(|l| l.starts_with("resume ")).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while chain.lines().iter().filter(|l| l.starts_with("resume ")).count() == resumes_before {
        assert!(Instant::now() < deadline, "the last secondary did not take over in 60 s:\n{}", tail(&next_err));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the last primary commit twice — its first commit counts the committed pages per store
    // and reclaims the stores of earlier epochs that hold none — then kill it too.
    let resumed_at = chain.lines().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let last_epoch = loop {
        let lines = chain.lines();
        let commits: Vec<u64> = lines[resumed_at..]
            .iter()
            .filter_map(|l| match parse(l) {
                Line::Commit { epoch, .. } => Some(epoch),
                _ => None,
            })
            .collect();
        if commits.len() >= 2 {
            break commits[0];
        }
        assert!(Instant::now() < deadline, "the last primary did not commit in 60 s:\n{}", tail(&next_err));
        std::thread::sleep(Duration::from_millis(20));
    };
    chain.kill(&mut next);
    assert_only_referenced_stores_left(dir.path(), last_epoch);
    let checked = check(&chain.lines()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "crash test: {kills} kills ({early} early), {} processes, {} resumes checked, {} checkpoints committed, {:.0} s",
        chain.spawned,
        checked.resumes,
        checked.commits,
        started.elapsed().as_secs_f64()
    );
    // Full checkpoints every 10: the log was truncated behind them, so secondaries started late
    // began from a full checkpoint, not from record 1.
    let log = dir.path().join("data/shared/log");
    let oldest = std::fs::read_dir(&log).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).min();
    assert!(
        oldest.as_deref().is_some_and(|o| o != "00000000000000000001.rec"),
        "the log at {} was never truncated (oldest record {oldest:?})",
        log.display()
    );
    // Most kills hit a primary that had resumed; a run where takeovers stopped is a failure.
    assert!(checked.resumes >= kills / 4, "only {} resumes in {kills} kills", checked.resumes);
}

/// Secondaries SIGKILLed again and again while they start, read the log and warm their pages
/// (issue 6, item 4): the primary never notices, each restarted secondary follows from the log's
/// committed state, and the last one still resumes the checkpoint the primary captured.
#[test]
fn killed_secondaries_leave_the_primary_alone_and_a_restarted_one_takes_over_correctly() {
    if std::fs::metadata("/dev/kvm").is_err() {
        eprintln!("SKIPPED: /dev/kvm is missing");
        return;
    }
    let kills: usize = std::env::var("VMTIER_CRASH_SECONDARY_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let seed: u64 = std::env::var("VMTIER_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("secondary kills: {kills}, VMTIER_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut chain = Chain {
        dir: dir.path().to_path_buf(),
        // A lease long enough that a loaded machine (a heartbeat thread starved for 150 ms) does
        // not make a secondary take over while the test means only to kill secondaries.
        cfg: write_config_with_lease(dir.path(), 3000),
        check: dir.path().join("check.log"),
        spawned: 0,
        pids: Vec::new(),
    };
    let (mut primary, primary_err) = chain.spawn("primary");
    wait_for_commit(&chain, &primary_err);
    for _ in 0..kills {
        let (mut secondary, secondary_err) = chain.spawn("secondary");
        std::thread::sleep(Duration::from_millis(rng.below(600)));
        assert!(
            secondary.try_wait().unwrap().is_none(),
            "a secondary exited by itself while its primary ran:\n{}",
            tail(&secondary_err)
        );
        chain.kill(&mut secondary);
        assert!(
            primary.try_wait().unwrap().is_none(),
            "the primary stopped while secondaries were killed:\n{}",
            tail(&primary_err)
        );
    }
    let lines = chain.lines();
    assert!(!lines.iter().any(|l| l.starts_with("claim ")), "a killed secondary claimed a live primary's log");
    let (_next, next_err) = chain.spawn("secondary");
    std::thread::sleep(Duration::from_millis(500 + rng.below(500)));
    chain.kill(&mut primary);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !chain.lines().iter().any(|l| l.starts_with("resume ")) {
        assert!(Instant::now() < deadline, "the secondary did not take over in 60 s:\n{}", tail(&next_err));
        std::thread::sleep(Duration::from_millis(20));
    }
    let checked = check(&chain.lines()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked.resumes, 1);
    eprintln!("secondary kills: {kills} killed, the next took over after {} commits", checked.commits);
}
