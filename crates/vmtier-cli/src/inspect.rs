//! `vmtier inspect`: validates a replication log (with its lease and, given the config, every
//! page its newest committed checkpoint names) or a directory / prefix of tier-3 segments, and
//! says what is damaged and what can still be recovered (see docs/replication.md, "Inspecting a
//! log and its stores").
//!
//! Every record and segment is decoded with the decoders of `vmtier-repl` and `vmtier-storage`;
//! pages are read back through [`SharedPages`], which checks each page's crc32c.
//!
//! Exit status: 0 clean, 1 corruption found, 2 bad usage (an error from [`run`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use vmtier_repl::log::{HEARTBEAT_KEY, LEASE_PREFIX, LOG_PREFIX, epoch_key, log_key, read_claim, read_heartbeat};
use vmtier_repl::{ClusterKey, Location, Record, ReplicaMap, SharedStore};
use vmtier_storage::ObjectConfig;
use vmtier_storage::object::redact_url;
use vmtier_storage::segment;

use crate::ha::{Layout, SharedPages};
use crate::run_config::RunConfig;

/// Placeholder in a problem's `affects` while the log is being read (see `check_log`).
const LOST_MARK: &str = "\0lost:";
/// Print a progress line on stderr every this many pages read back.
const PROGRESS_EVERY: usize = 50_000;

/// Arguments of `vmtier inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A log directory (holds `log/`), a directory of tier-3 segments (`seg-XXXXXXXX.vts`), or an
    /// `s3://bucket/prefix` URL of either. Without it, `--config` names the log and the tiers.
    pub path: Option<String>,
    /// The replicated VM's config file: the log at `replication.shared`, tier 2 and tier 3 of
    /// every epoch, and the S3 settings.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// The cluster key file (`vmtier keygen`), to authenticate a log's records and pages; with
    /// `--config`, overrides `replication.key_file`. Not needed for tier-3 segments alone.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

/// One thing found wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What is wrong, in a few words.
    pub what: String,
    /// The log key, store key or page location concerned.
    pub key_or_location: String,
    /// The decoder's or reader's own message.
    pub detail: String,
    /// What cannot be used because of it.
    pub affects: String,
}

/// A store of an earlier epoch that no page of the newest checkpoint references.
#[derive(Debug, Clone, Serialize)]
struct Orphan {
    tier: &'static str,
    epoch: u64,
    location: String,
    bytes: u64,
}

/// A checkpoint, named by its log position and epoch.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
struct CkptId {
    seq: u64,
    epoch: u64,
}

#[derive(Debug, Default, Serialize)]
struct LogSummary {
    store: String,
    /// Record keys present.
    records: u64,
    /// Records that decoded.
    decoded: u64,
    checkpoints: u64,
    full_checkpoints: u64,
    fences: u64,
    first_seq: Option<u64>,
    head_seq: Option<u64>,
    epochs: Vec<u64>,
    bytes: u64,
    /// The newest checkpoint reached by an unbroken replay from a full checkpoint.
    newest_committed: Option<CkptId>,
    /// The full checkpoint the replay to `newest_committed` starts at.
    replay_from: Option<u64>,
    /// The first damaged or unreplayable record.
    first_damage: Option<u64>,
    /// The newest checkpoint replayed before the first damaged record (if any is damaged).
    newest_intact_before_damage: Option<CkptId>,
}

#[derive(Debug, Default, Serialize)]
struct LeaseSummary {
    claims: Vec<u64>,
    heartbeat: Option<HeartbeatSummary>,
}

#[derive(Debug, Serialize)]
struct HeartbeatSummary {
    epoch: u64,
    holder: String,
    counter: u64,
    unix_ms: u64,
    last_committed: u64,
}

#[derive(Debug, Default, Serialize)]
struct PageSummary {
    checkpoint: Option<CkptId>,
    pages: u64,
    tier2_own: u64,
    tier2_earlier: u64,
    tier3_own: u64,
    tier3_earlier: u64,
    read_back: u64,
    bad: u64,
    /// Pages that failed to read back but were changed by a checkpoint committed since (a
    /// running primary freed the old copy): not damage.
    superseded: u64,
    /// `false` when no config gave the tier locations (pages were not read).
    checked: bool,
}

#[derive(Debug, Default, Serialize)]
struct SegmentSummary {
    location: String,
    segments: u64,
    pages: u64,
    bytes: u64,
    bad_segments: u64,
    bad_pages: u64,
}

#[derive(Debug, Serialize)]
struct Recoverable {
    checkpoint: Option<CkptId>,
    detail: String,
}

/// The whole report: printed as text, or as one JSON object with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    kind: &'static str,
    target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<LogSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<LeaseSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pages: Option<PageSummary>,
    segments: Vec<SegmentSummary>,
    orphans: Vec<Orphan>,
    notes: Vec<String>,
    problems: Vec<Problem>,
    recoverable: Option<Recoverable>,
}

impl Report {
    fn new(kind: &'static str, target: String) -> Self {
        Self {
            ok: true,
            kind,
            target,
            log: None,
            lease: None,
            pages: None,
            segments: Vec::new(),
            orphans: Vec::new(),
            notes: Vec::new(),
            problems: Vec::new(),
            recoverable: None,
        }
    }

    fn problem(
        &mut self,
        what: impl Into<String>,
        key: impl Into<String>,
        detail: impl Into<String>,
        affects: impl Into<String>,
    ) {
        self.problems.push(Problem {
            what: what.into(),
            key_or_location: key.into(),
            detail: detail.into(),
            affects: affects.into(),
        });
    }
}

/// What a path given on the command line is.
enum Target {
    Log(ObjectConfig),
    Segments(ObjectConfig),
}

/// Runs `vmtier inspect`; `Ok(true)` if nothing is corrupt, `Ok(false)` if something is (exit 1);
/// an error is bad usage or an unreachable store (exit 2).
pub fn run(args: &Args) -> anyhow::Result<bool> {
    let mut cfg = match &args.config {
        Some(p) => Some(RunConfig::load(p)?),
        None => None,
    };
    if let (Some(c), Some(k)) = (cfg.as_mut(), &args.key_file) {
        c.replication.key_file = Some(k.clone());
    }
    let layout = match (&cfg, &args.config) {
        (Some(c), Some(p)) => Some(Layout::new(c).with_context(|| format!("config file {}", p.display()))?),
        _ => None,
    };
    // The key for a log: the layout's, or --key-file's.
    let key = |l: Option<&Layout>| -> anyhow::Result<vmtier_repl::ClusterKey> {
        match (l, &args.key_file) {
            (Some(l), _) => Ok(l.key.clone()),
            (None, Some(k)) => Ok(vmtier_repl::ClusterKey::load(k)?),
            (None, None) => Err(anyhow::anyhow!(
                "inspecting a replication log needs its cluster key to authenticate the records: \
                 give --key-file FILE (or --config with `replication.key_file`); `vmtier keygen FILE` makes a key"
            )),
        }
    };
    let report = match (&args.path, &layout) {
        (None, None) => anyhow::bail!(
            "nothing to inspect: give a PATH (a log directory, a tier-3 segment directory or an s3:// URL of either) or --config FILE"
        ),
        (None, Some(l)) => inspect_log(&l.shared, Some(l), &key(Some(l))?)?,
        (Some(path), l) => match classify(path, l.as_ref())? {
            Target::Log(shared) => inspect_log(&shared, l.as_ref(), &key(l.as_ref())?)?,
            Target::Segments(t3) => {
                let store = vmtier_repl::open_store(&t3).with_context(|| format!("opening {}", redact_url(&t3.url)))?;
                let mut r = Report::new("tier3", redact_url(&t3.url));
                let s = check_segments(&*store, "", &t3.url, &mut r)?;
                r.segments.push(s);
                r
            }
        },
    };
    finish(report, args.json)
}

/// S3 settings for `url`: the config's (tier 3's, else the replication section's), or none (the
/// environment's).
fn object_config(url: &str, layout: Option<&Layout>) -> ObjectConfig {
    match layout {
        Some(l) if l.engine.tier3.url.starts_with("s3://") => {
            let mut c = l.engine.tier3.object_config();
            c.url = url.to_string();
            c
        }
        Some(l) => {
            let mut c = l.shared.clone();
            c.url = url.to_string();
            c
        }
        None => ObjectConfig::new(url),
    }
}

fn is_segment_key(key: &str) -> bool {
    key.len() == "seg-00000000.vts".len()
        && key.starts_with("seg-")
        && key.ends_with(".vts")
        && key[4..12].bytes().all(|b| b.is_ascii_hexdigit())
}

fn classify(path: &str, layout: Option<&Layout>) -> anyhow::Result<Target> {
    let expected = "expected a replication log (a directory with log/ or lease/, as at replication.shared), \
                    a tier-3 directory of seg-XXXXXXXX.vts segments, or an s3:// URL of either";
    if path.starts_with("s3://") {
        let cfg = object_config(path, layout);
        let store = vmtier_repl::open_store(&cfg).with_context(|| format!("opening {path}"))?;
        if !store.list(LOG_PREFIX)?.is_empty() || !store.list(LEASE_PREFIX)?.is_empty() {
            return Ok(Target::Log(cfg));
        }
        if store.list("seg-")?.iter().any(|k| is_segment_key(k)) {
            return Ok(Target::Segments(cfg));
        }
        anyhow::bail!("{path} holds neither log/ nor lease/ keys nor seg-XXXXXXXX.vts segments: {expected}");
    }
    let dir = Path::new(path.strip_prefix("file://").unwrap_or(path));
    let meta = std::fs::metadata(dir).with_context(|| format!("{path} cannot be read: {expected}"))?;
    anyhow::ensure!(meta.is_dir(), "{path} is not a directory: {expected}");
    if dir.join("log").is_dir() || dir.join("lease").is_dir() {
        return Ok(Target::Log(object_config(path, layout)));
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {path}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    if names.iter().any(|n| is_segment_key(n)) {
        return Ok(Target::Segments(object_config(path, layout)));
    }
    if names.iter().any(|n| n.starts_with("slots-") && n.ends_with(".dat")) {
        anyhow::bail!(
            "{path} is a tier-2 store: its slot files carry no checksums of their own (the log keeps them); \
             inspect it through its log: `vmtier inspect --config FILE` reads back every slot the newest checkpoint names"
        );
    }
    if dir.join("shared").join("log").is_dir() {
        anyhow::bail!(
            "{path} looks like a data_dir: inspect its log with `vmtier inspect {}` or, to read back the pages too, `vmtier inspect --config FILE`",
            dir.join("shared").display()
        );
    }
    anyhow::bail!("{path} is none of the kinds vmtier inspect reads: {expected}");
}

/// Parses `key` as `prefix{n:020}suffix`, accepting only the exact form `make(n)` writes.
fn parse_key(key: &str, prefix: &str, suffix: &str, make: fn(u64) -> String) -> Option<u64> {
    let n: u64 = key.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()?;
    (make(n) == key).then_some(n)
}

fn ckpt_name(c: Option<CkptId>) -> String {
    match c {
        Some(c) => format!("checkpoint {} (epoch {}, {})", c.seq, c.epoch, log_key(c.seq)),
        None => "none".to_string(),
    }
}

/// Highest log position present.
fn log_head(store: &dyn SharedStore) -> anyhow::Result<u64> {
    let keys = store.list(LOG_PREFIX).context("listing the log")?;
    Ok(keys.iter().filter_map(|k| parse_key(k, LOG_PREFIX, ".rec", log_key)).max().unwrap_or(0))
}

fn inspect_log(shared: &ObjectConfig, layout: Option<&Layout>, key: &ClusterKey) -> anyhow::Result<Report> {
    let store = vmtier_repl::open_store(shared)
        .with_context(|| format!("opening the log store at {}", redact_url(&shared.url)))?;
    inspect_log_once(&*store, layout, key)
}

/// The log, the lease and the stores.
fn inspect_log_once(store: &dyn SharedStore, layout: Option<&Layout>, key: &ClusterKey) -> anyhow::Result<Report> {
    let mut r = Report::new("log", store.describe());
    let map = check_log(store, key, &mut r)?;
    check_lease(store, key, &mut r)?;
    let newest = r.log.as_ref().and_then(|l| l.newest_committed);
    let mut pages_ok = true;
    if let Some(map) = &map {
        pages_ok = check_pages(store, key, map, layout, &mut r)?;
    }
    if let Some(l) = layout {
        find_orphans(l, map.as_ref(), &mut r)?;
    } else {
        r.notes
            .push("no --config: the pages of the newest checkpoint were not read back (tier locations unknown)".into());
    }
    let first_damage = r.log.as_ref().and_then(|l| l.first_damage);
    let replay_from = r.log.as_ref().and_then(|l| l.replay_from).unwrap_or(0);
    let read = if layout.is_some() { ", and all its pages read back" } else { " (pages not read: no --config)" };
    let detail = match (newest, pages_ok, first_damage) {
        (None, _, _) => "no checkpoint can be replayed from this log: nothing to resume from".to_string(),
        (Some(c), false, _) => format!(
            "{} replays but some of its pages are unreadable (listed above): resuming from it would lose them",
            ckpt_name(Some(c))
        ),
        (Some(c), true, None) => format!("{} is intact{read}: a secondary resumes from it", ckpt_name(Some(c))),
        (Some(c), true, Some(d)) if c.seq > d => format!(
            "{} is intact{read}: a replay from full checkpoint {replay_from}, after the damage, reaches it, so a secondary \
             starting now resumes from it; only a reader still behind record {d} is affected",
            ckpt_name(Some(c))
        ),
        (Some(c), true, Some(d)) => format!(
            "{} is the newest checkpoint before the damage at record {d}{read}: it is the newest state that can be \
             recovered; the checkpoints after it are lost unless the damaged records are restored from a copy",
            ckpt_name(Some(c))
        ),
    };
    r.recoverable = Some(Recoverable { checkpoint: newest, detail });
    Ok(r)
}

/// An unbroken replay: from a full checkpoint to the newest checkpoint applied after it.
#[derive(Debug, Clone, Copy)]
struct Chain {
    start: u64,
    last: Option<CkptId>,
}

/// State of the replay while the log is checked.
struct Replay {
    map: Option<ReplicaMap>,
    chain: Option<Chain>,
    /// The newest chain that a damaged record ended.
    last_broken: Option<Chain>,
    damaged: bool,
}

impl Replay {
    /// The chain ends here without damage (a record truncated meanwhile): the replay starts
    /// over at the next full checkpoint.
    fn restart(&mut self) {
        if let Some(c) = self.chain.take()
            && c.last.is_some()
        {
            self.last_broken = Some(c);
        }
        self.map = None;
    }

    /// The chain ends here: the records after cannot be replayed until a full checkpoint.
    fn broken(&mut self, sum: &mut LogSummary) {
        self.restart();
        if !self.damaged {
            sum.newest_intact_before_damage = self.last_broken.and_then(|c| c.last);
            self.damaged = true;
        }
    }
}

/// Replays records `chain.start..=chain.last` again (after damage ended that chain).
fn replay_chain(store: &dyn SharedStore, ck: &ClusterKey, chain: Chain) -> anyhow::Result<Option<ReplicaMap>> {
    let Some(last) = chain.last else { return Ok(None) };
    let mut map = ReplicaMap::new();
    for seq in chain.start..=last.seq {
        let key = log_key(seq);
        let bytes = store.get(&key)?.with_context(|| format!("{key} vanished while inspecting"))?;
        let rec = vmtier_repl::decode(ck, &key, &bytes).with_context(|| format!("{key} changed while inspecting"))?;
        map.apply_record(&rec).with_context(|| format!("replaying {key} again"))?;
    }
    Ok(Some(map))
}

/// Decodes and checks every record, replaying them through [`ReplicaMap`]; returns the map at
/// the newest checkpoint reachable by an unbroken replay from a full checkpoint.
fn check_log(store: &dyn SharedStore, ck: &ClusterKey, r: &mut Report) -> anyhow::Result<Option<ReplicaMap>> {
    let mut sum = LogSummary { store: store.describe(), ..LogSummary::default() };
    let keys = store.list(LOG_PREFIX).context("listing the log")?;
    let mut seqs = Vec::new();
    for k in &keys {
        match parse_key(k, LOG_PREFIX, ".rec", log_key) {
            Some(s) => seqs.push(s),
            None => r.notes.push(format!("{k} is not a log record key (log/{{seq:020}}.rec); readers ignore it")),
        }
    }
    seqs.sort_unstable();
    sum.records = seqs.len() as u64;
    sum.first_seq = seqs.first().copied();
    sum.head_seq = seqs.last().copied();
    let head = sum.head_seq.unwrap_or(0);
    let claims: BTreeSet<u64> = store
        .list(LEASE_PREFIX)
        .context("listing the lease")?
        .iter()
        .filter_map(|k| parse_key(k, LEASE_PREFIX, ".epoch", epoch_key))
        .collect();

    let mut rp = Replay { map: None, chain: None, last_broken: None, damaged: false };
    let mut prev: Option<(u64, u64)> = None; // (seq, epoch) of the last record seen
    let mut epochs = BTreeSet::new();
    // What a break at `seq` costs depends on the next full checkpoint, known only at the end: a
    // placeholder, filled in after the loop.
    let lost = |seq: u64| format!("{LOST_MARK}{seq}");
    let mut fulls = Vec::new();
    for (i, &seq) in seqs.iter().enumerate() {
        let key = log_key(seq);
        if let Some((p, _)) = prev
            && seq != p + 1
        {
            r.problem(
                "gap in the log",
                log_key(p + 1),
                format!("records {}..={} are missing while later ones exist", p + 1, seq - 1),
                lost(p + 1),
            );
            rp.broken(&mut sum);
        }
        let prev_epoch = prev.map_or(0, |p| p.1);
        prev = Some((seq, prev_epoch));
        let Some(bytes) = store.get(&key).with_context(|| format!("reading {key}"))? else {
            // A running primary truncates the log behind its full checkpoints.
            r.notes.push(format!("{key} was deleted while being inspected (truncated by a running primary)"));
            rp.restart();
            continue;
        };
        sum.bytes += bytes.len() as u64;
        let rec = match vmtier_repl::decode(ck, &key, &bytes) {
            Ok(rec) => rec,
            Err(e) => {
                r.problem("damaged record", key.clone(), e.to_string(), lost(seq));
                rp.broken(&mut sum);
                continue;
            }
        };
        sum.decoded += 1;
        if rec.seq() != seq {
            r.problem(
                "record under the wrong key",
                key.clone(),
                format!("it holds record seq {}: copied or renamed", rec.seq()),
                lost(seq),
            );
            rp.broken(&mut sum);
            continue;
        }
        let epoch = rec.epoch();
        epochs.insert(epoch);
        if !claims.contains(&epoch) {
            r.problem(
                "record of an unclaimed epoch",
                key.clone(),
                format!("epoch {epoch} has no claim {}", epoch_key(epoch)),
                "the fencing of this epoch cannot be verified",
            );
        }
        if i > 0 && epoch < prev_epoch {
            r.problem(
                "epoch goes back",
                key.clone(),
                format!("epoch {epoch} after a record of epoch {prev_epoch}"),
                lost(seq),
            );
            rp.broken(&mut sum);
        }
        if i > 0 && matches!(rec, Record::Fence(_)) && epoch <= prev_epoch {
            r.problem(
                "fence does not raise the epoch",
                key.clone(),
                format!("fence of epoch {epoch} after a record of epoch {prev_epoch}"),
                lost(seq),
            );
            rp.broken(&mut sum);
        }
        prev = Some((seq, epoch));
        match &rec {
            Record::Checkpoint(c) => {
                sum.checkpoints += 1;
                sum.full_checkpoints += u64::from(c.full);
                if c.full {
                    fulls.push(seq);
                }
                if i == 0 && !c.full {
                    r.problem(
                        "log does not start with a full checkpoint",
                        key.clone(),
                        "the first record is a delta",
                        lost(seq),
                    );
                }
            }
            Record::Fence(_) => {
                sum.fences += 1;
                if i == 0 {
                    r.problem(
                        "log does not start with a full checkpoint",
                        key.clone(),
                        "the first record is a fence",
                        lost(seq),
                    );
                }
            }
        }
        // Replay: a full checkpoint starts a chain (again, after damage).
        if rp.map.is_none()
            && let Record::Checkpoint(c) = &rec
            && c.full
        {
            rp.map = Some(ReplicaMap::new());
            rp.chain = Some(Chain { start: seq, last: None });
        }
        let Some(m) = rp.map.as_mut() else { continue };
        match m.apply_record(&rec) {
            Ok(()) => {
                if let (Record::Checkpoint(c), Some(ch)) = (&rec, rp.chain.as_mut()) {
                    ch.last = Some(CkptId { seq: c.seq, epoch: c.epoch });
                }
            }
            Err(e) => {
                r.problem("replay fails", key.clone(), e.to_string(), lost(seq));
                rp.broken(&mut sum);
            }
        }
    }
    if seqs.is_empty() {
        r.notes.push("the log holds no records yet".into());
    }
    sum.epochs = epochs.into_iter().collect();
    for p in &mut r.problems {
        let Some(seq) = p.affects.strip_prefix(LOST_MARK).and_then(|n| n.parse::<u64>().ok()) else { continue };
        sum.first_damage = Some(sum.first_damage.map_or(seq, |d| d.min(seq)));
        p.affects = match fulls.iter().find(|&&f| f > seq) {
            Some(&f) if f > seq + 1 => format!(
                "records {seq}..={}: they cannot be replayed; a replay starts over at full checkpoint {f}",
                f - 1
            ),
            Some(&f) => format!("record {seq}; a replay starts over at full checkpoint {f}"),
            None => format!(
                "records {seq}..={head}: they cannot be replayed (no full checkpoint after them); checkpoints from {seq} on are lost"
            ),
        };
    }
    let map = match (rp.map, rp.chain, rp.last_broken) {
        (Some(m), Some(ch), _) if ch.last.is_some() => {
            sum.newest_committed = ch.last;
            sum.replay_from = Some(ch.start);
            Some(m)
        }
        (_, _, Some(ch)) => {
            sum.newest_committed = ch.last;
            sum.replay_from = Some(ch.start);
            replay_chain(store, ck, ch)?
        }
        _ => None,
    };
    r.log = Some(sum);
    Ok(map)
}

fn check_lease(store: &dyn SharedStore, ck: &ClusterKey, r: &mut Report) -> anyhow::Result<()> {
    let mut lease = LeaseSummary::default();
    for k in store.list(LEASE_PREFIX).context("listing the lease")? {
        if k == HEARTBEAT_KEY {
            continue;
        }
        let Some(epoch) = parse_key(&k, LEASE_PREFIX, ".epoch", epoch_key) else {
            r.notes.push(format!("{k} is not a lease key; readers ignore it"));
            continue;
        };
        match read_claim(store, ck, epoch) {
            Ok(Some(c)) if c.epoch == epoch => lease.claims.push(epoch),
            Ok(Some(c)) => r.problem(
                "epoch claim under the wrong key",
                k.clone(),
                format!("it claims epoch {}", c.epoch),
                "epoch numbering: a new primary may pick a used epoch",
            ),
            Ok(None) => {}
            Err(e) => r.problem(
                "damaged epoch claim",
                k.clone(),
                format!("{:#}", anyhow::Error::from(e)),
                "who claimed this epoch is unknown (the log itself is unaffected)",
            ),
        }
    }
    match read_heartbeat(store, ck) {
        Ok(Some(h)) => {
            let newest_claim = lease.claims.last().copied().unwrap_or(0);
            if h.epoch > newest_claim {
                r.problem(
                    "heartbeat of an unclaimed epoch",
                    HEARTBEAT_KEY,
                    format!("heartbeat epoch {}, newest claim {newest_claim}", h.epoch),
                    "the lease: a secondary cannot tell who holds it",
                );
            }
            // Listed again: a running primary commits before it beats.
            let head = log_head(store)?;
            if h.last_committed > head {
                r.problem(
                    "heartbeat names a checkpoint the log does not hold",
                    HEARTBEAT_KEY,
                    format!("last_committed {}, log head {head}", h.last_committed),
                    format!("records {}..={} are missing", head + 1, h.last_committed),
                );
            }
            lease.heartbeat = Some(HeartbeatSummary {
                epoch: h.epoch,
                holder: h.holder,
                counter: h.counter,
                unix_ms: h.unix_ms,
                last_committed: h.last_committed,
            });
        }
        Ok(None) => r.notes.push("no heartbeat yet (no primary has run)".into()),
        Err(e) => r.problem(
            "damaged heartbeat",
            HEARTBEAT_KEY,
            format!("{:#}", anyhow::Error::from(e)),
            "the lease: a secondary will see it as expired and take over",
        ),
    }
    r.lease = Some(lease);
    Ok(())
}

fn loc_name(loc: Location, layout: Option<&Layout>) -> String {
    match (loc, layout) {
        (Location::Zero, _) => "zero page".into(),
        (Location::Ssd { store, slot }, Some(l)) => {
            format!("tier-2 slot {slot} of epoch {store} ({})", l.tier2_dir(store).display())
        }
        (Location::Ssd { store, slot }, None) => format!("tier-2 slot {slot} of epoch {store}"),
        (Location::Object { store, segment, index }, Some(l)) => {
            format!(
                "tier-3 page {index} of segment seg-{segment:08x}.vts of epoch {store} ({})",
                redact_url(&l.tier3(store).url)
            )
        }
        (Location::Object { store, segment, index }, None) => {
            format!("tier-3 page {index} of segment seg-{segment:08x}.vts of epoch {store}")
        }
    }
}

/// Counts the map's pages by location kind and, with a layout, reads every one back. Returns
/// whether every page read back intact.
fn check_pages(
    store: &dyn SharedStore,
    ck: &ClusterKey,
    map: &ReplicaMap,
    layout: Option<&Layout>,
    r: &mut Report,
) -> anyhow::Result<bool> {
    let (epoch, seq) = map.checkpoint();
    let mut s = PageSummary { checkpoint: Some(CkptId { seq, epoch }), ..PageSummary::default() };
    let mut pages: Vec<(u32, Location, u32)> = map.iter().collect();
    pages.sort_unstable_by_key(|p| p.0);
    for &(_, loc, _) in &pages {
        s.pages += 1;
        match loc {
            Location::Ssd { store, .. } if store == epoch => s.tier2_own += 1,
            Location::Ssd { .. } => s.tier2_earlier += 1,
            Location::Object { store, .. } if store == epoch => s.tier3_own += 1,
            Location::Object { .. } => s.tier3_earlier += 1,
            Location::Zero => {}
        }
    }
    let Some(l) = layout else {
        r.pages = Some(s);
        return Ok(true);
    };
    s.checked = true;
    let reader = SharedPages::new(l.clone());
    let mut buf = vec![0u8; vmtier_storage::PAGE_SIZE];
    let total = pages.len();
    let mut failed = Vec::new();
    for (i, &(page, loc, crc)) in pages.iter().enumerate() {
        if total >= PROGRESS_EVERY && i > 0 && i % PROGRESS_EVERY == 0 {
            eprintln!("inspect: read back {i} of {total} pages");
        }
        let entry = map.entry(page).unwrap_or(vmtier_repl::PageLoc { page, loc, crc, tag: [0; 16] });
        match reader.read(&entry, &mut buf) {
            Ok(()) => s.read_back += 1,
            Err(e) => failed.push((page, loc, crc, e)),
        }
    }
    // A running primary frees a copy once a newer commit no longer references it: a failed page
    // that a checkpoint committed after ours changed is not damage.
    let changed = if failed.is_empty() { BTreeSet::new() } else { changed_since(store, ck, map, seq)? };
    for (page, loc, _, e) in failed {
        if changed.contains(&page) {
            s.superseded += 1;
            continue;
        }
        s.bad += 1;
        let what = if e.kind() == std::io::ErrorKind::InvalidData {
            "page does not match its checksum"
        } else {
            "page cannot be read"
        };
        r.problem(
            what,
            loc_name(loc, Some(l)),
            format!("guest page {page}: {e}"),
            format!("guest page {page} of {}", ckpt_name(Some(CkptId { seq, epoch }))),
        );
    }
    if s.superseded > 0 {
        r.notes.push(format!(
            "{} pages of checkpoint {seq} could not be read back but were changed by checkpoints committed since \
             (a running primary freed their old copies); they are not counted as damage",
            s.superseded
        ));
    }
    let ok = s.bad == 0;
    r.pages = Some(s);
    Ok(ok)
}

/// Pages whose location or crc a checkpoint committed after `seq` changed against `map` (the
/// log as it is now, after the pages were read).
fn changed_since(
    store: &dyn SharedStore,
    ck: &ClusterKey,
    map: &ReplicaMap,
    seq: u64,
) -> anyhow::Result<BTreeSet<u32>> {
    let mut changed = BTreeSet::new();
    for next in seq + 1..=log_head(store)? {
        let Some(bytes) = store.get(&log_key(next))? else { continue };
        let Ok(Record::Checkpoint(c)) = vmtier_repl::decode(ck, &log_key(next), &bytes) else { continue };
        let listed: BTreeMap<u32, (Location, u32)> = c.pages.iter().map(|p| (p.page, (p.loc, p.crc))).collect();
        for (page, loc, crc) in map.iter() {
            match listed.get(&page) {
                Some(&(l, k)) if (l, k) != (loc, crc) => {
                    changed.insert(page);
                }
                None if c.full => {
                    changed.insert(page);
                }
                _ => {}
            }
        }
    }
    Ok(changed)
}

/// Allocated bytes of the files under `dir` (slot files are sparse).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// `e{epoch:06}` (or more digits) → epoch.
fn epoch_dir(name: &str) -> Option<u64> {
    let d = name.strip_prefix('e')?;
    (d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit())).then(|| d.parse().ok())?
}

/// Reports every epoch's tier-2 directory and tier-3 prefix that no page of the newest
/// checkpoint references (not the newest claimed epoch's: a running primary writes there), and
/// checks every tier-3 segment present.
fn find_orphans(l: &Layout, map: Option<&ReplicaMap>, r: &mut Report) -> anyhow::Result<()> {
    let mut used = BTreeSet::new();
    if let Some(m) = map {
        for (_, loc, _) in m.iter() {
            match loc {
                Location::Ssd { store, .. } | Location::Object { store, .. } => used.insert(store),
                Location::Zero => false,
            };
        }
    }
    let live = r.lease.as_ref().and_then(|l| l.claims.last().copied());
    let keep = |e: u64| used.contains(&e) || Some(e) == live;
    if let Ok(rd) = std::fs::read_dir(&l.tier2_base) {
        let mut dirs: BTreeMap<u64, PathBuf> = BTreeMap::new();
        for e in rd.filter_map(Result::ok) {
            if let Some(epoch) = epoch_dir(&e.file_name().to_string_lossy()) {
                dirs.insert(epoch, e.path());
            }
        }
        for (epoch, path) in dirs {
            if !keep(epoch) {
                r.orphans.push(Orphan {
                    tier: "tier2",
                    epoch,
                    location: path.display().to_string(),
                    bytes: dir_bytes(&path),
                });
            }
        }
    }
    // Tier 3: one prefix per epoch under the base.
    let base = l.engine.tier3.object_config();
    let local = !base.url.starts_with("s3://");
    if local && !Path::new(base.url.strip_prefix("file://").unwrap_or(&base.url)).is_dir() {
        return Ok(());
    }
    let store =
        vmtier_repl::open_store(&base).with_context(|| format!("opening tier 3 at {}", redact_url(&base.url)))?;
    let mut by_epoch: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for k in store.list("").with_context(|| format!("listing tier 3 at {}", redact_url(&base.url)))? {
        let Some((dir, name)) = k.split_once('/') else { continue };
        let (Some(epoch), true) = (epoch_dir(dir), is_segment_key(name)) else { continue };
        by_epoch.entry(epoch).or_default().0 += 1;
    }
    for (&epoch, _) in by_epoch.iter() {
        let prefix = format!("e{epoch:06}/");
        let loc = l.tier3(epoch).url;
        let s = check_segments(&*store, &prefix, &loc, r)?;
        if !keep(epoch) {
            r.orphans.push(Orphan { tier: "tier3", epoch, location: loc, bytes: s.bytes });
        }
        r.segments.push(s);
    }
    Ok(())
}

/// Checks every segment directly under `prefix` of `store`: its index (header, footer, index
/// checksum) and every page against the index's crc32c.
fn check_segments(
    store: &dyn SharedStore,
    prefix: &str,
    location: &str,
    r: &mut Report,
) -> anyhow::Result<SegmentSummary> {
    let mut s = SegmentSummary { location: location.to_string(), ..SegmentSummary::default() };
    let keys = store.list(prefix).with_context(|| format!("listing segments at {location}"))?;
    for k in keys {
        let name = &k[prefix.len()..];
        if !is_segment_key(name) {
            continue;
        }
        let Some(bytes) = store.get(&k).with_context(|| format!("reading {location}/{name}"))? else { continue };
        s.segments += 1;
        s.bytes += bytes.len() as u64;
        let at = format!("{}/{name}", location.trim_end_matches('/'));
        match segment::decode_index(&bytes) {
            Err(e) => {
                s.bad_segments += 1;
                r.problem("damaged segment", at, e.to_string(), "every page of this segment");
            }
            Ok(index) => {
                let mut bad = 0;
                for (i, entry) in index.iter().enumerate() {
                    s.pages += 1;
                    let off = segment::page_offset(i as u16) as usize;
                    let actual = crc32c::crc32c(&bytes[off..off + vmtier_storage::PAGE_SIZE]);
                    if actual != entry.crc {
                        bad += 1;
                        s.bad_pages += 1;
                        r.problem(
                            "segment page does not match its checksum",
                            format!("{at} page {i}"),
                            format!("crc32c {actual:#010x}, index says {:#010x}", entry.crc),
                            format!("guest page {} if a checkpoint names this copy", entry.page),
                        );
                    }
                }
                s.bad_segments += u64::from(bad > 0);
            }
        }
    }
    Ok(s)
}

fn finish(mut r: Report, json: bool) -> anyhow::Result<bool> {
    r.ok = r.problems.is_empty();
    if r.kind == "tier3" {
        let detail = if r.ok {
            "every segment's index and pages are intact".to_string()
        } else {
            "pages in segments without a problem above are intact; a damaged page is lost unless a newer copy exists"
                .to_string()
        };
        r.recoverable = Some(Recoverable { checkpoint: None, detail });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r);
    }
    Ok(r.ok)
}

fn print_text(r: &Report) {
    println!("inspect {} ({})", r.target, r.kind);
    if let Some(l) = &r.log {
        println!(
            "log: {} records, {} decoded ({} checkpoints, {} full, {} fences), seq {}..={}, epochs {:?}, {} bytes",
            l.records,
            l.decoded,
            l.checkpoints,
            l.full_checkpoints,
            l.fences,
            l.first_seq.unwrap_or(0),
            l.head_seq.unwrap_or(0),
            l.epochs,
            l.bytes
        );
        println!("newest committed checkpoint: {}", ckpt_name(l.newest_committed));
        if l.newest_intact_before_damage.is_some() || !r.problems.is_empty() {
            println!("newest intact checkpoint before the first damage: {}", ckpt_name(l.newest_intact_before_damage));
        }
    }
    if let Some(lease) = &r.lease {
        print!("lease: epochs claimed {:?}", lease.claims);
        match &lease.heartbeat {
            Some(h) => println!(
                "; heartbeat epoch {} by {:?}, counter {}, last committed {}",
                h.epoch, h.holder, h.counter, h.last_committed
            ),
            None => println!("; no heartbeat"),
        }
    }
    if let Some(p) = &r.pages {
        println!(
            "pages of {}: {} (tier 2 own {}, tier 2 earlier epochs {}, tier 3 own {}, tier 3 earlier epochs {}){}",
            ckpt_name(p.checkpoint),
            p.pages,
            p.tier2_own,
            p.tier2_earlier,
            p.tier3_own,
            p.tier3_earlier,
            if p.checked { format!("; {} read back intact, {} bad", p.read_back, p.bad) } else { String::new() }
        );
    }
    for s in &r.segments {
        println!(
            "tier-3 segments at {}: {} segments, {} pages, {} bytes; {} damaged segments, {} bad pages",
            s.location, s.segments, s.pages, s.bytes, s.bad_segments, s.bad_pages
        );
    }
    for o in &r.orphans {
        println!(
            "orphaned: {} store of epoch {} at {} ({} bytes): no page of the newest checkpoint references it; it can be deleted",
            o.tier, o.epoch, o.location, o.bytes
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    if r.problems.is_empty() {
        println!("no problems found");
    } else {
        println!("{} problems:", r.problems.len());
        for p in &r.problems {
            println!("  {}: {}: {}; affects {}", p.key_or_location, p.what, p.detail, p.affects);
        }
    }
    if let Some(rec) = &r.recoverable {
        println!("recoverable: {}", rec.detail);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vmtier_repl::{Checkpoint, LogWriter, MemStore, PageLoc, map_digest};

    use super::*;

    fn ssd(slot: u32) -> Location {
        Location::Ssd { store: 1, slot }
    }

    fn ckpt(full: bool, pages: &[(u32, u32, u32)], whole: &[(u32, u32)]) -> Checkpoint {
        Checkpoint {
            full,
            pages: pages.iter().map(|&(page, slot, crc)| PageLoc { page, loc: ssd(slot), crc, tag: [0; 16] }).collect(),
            digest: map_digest(whole.iter().copied()),
            ..Checkpoint::default()
        }
    }

    /// Pages of checkpoint 1 that later checkpoints moved or dropped are the ones a running
    /// primary may have freed; the others must still read back.
    #[test]
    fn changed_since_names_pages_later_checkpoints_moved() {
        let store: Arc<dyn SharedStore> = Arc::new(MemStore::new());
        let ck = ClusterKey::from_bytes(&[3; 32], "test").unwrap();
        let mut log = LogWriter::claim(store.clone(), &ck, "t:1").unwrap();
        log.commit(&ckpt(
            true,
            &[(1, 1, 11), (2, 2, 22), (3, 3, 33), (4, 4, 44)],
            &[(1, 11), (2, 22), (3, 33), (4, 44)],
        ))
        .unwrap();
        let mut map = ReplicaMap::new();
        map.apply_record(&vmtier_repl::decode(&ck, &log_key(1), &store.get(&log_key(1)).unwrap().unwrap()).unwrap())
            .unwrap();
        assert!(changed_since(&*store, &ck, &map, 1).unwrap().is_empty());
        // 2: page 2 moves to another slot (same content); 3: full, page 4 gone, page 1 as before.
        log.commit(&ckpt(false, &[(2, 9, 22)], &[(1, 11), (2, 22), (3, 33), (4, 44)])).unwrap();
        log.commit(&ckpt(true, &[(1, 1, 11), (2, 9, 22), (3, 3, 33)], &[(1, 11), (2, 22), (3, 33)])).unwrap();
        assert_eq!(changed_since(&*store, &ck, &map, 1).unwrap(), BTreeSet::from([2, 4]));
    }
}
