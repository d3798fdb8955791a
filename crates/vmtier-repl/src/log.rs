//! The checkpoint log: [`LogWriter`] (the primary) and [`LogReader`] (the secondary), with
//! fencing of a stale primary.
//!
//! # Layout in the shared store
//!
//! | key                           | written by                                   | content          |
//! |-------------------------------|----------------------------------------------|------------------|
//! | `log/{seq:020}.rec`           | the primary, [`put_exclusive`](SharedStore::put_exclusive), once | a [`Record`]: checkpoint or fence |
//! | `lease/{epoch:020}.epoch`     | a claimer, `put_exclusive`, once             | a [`Claim`]      |
//! | `lease/heartbeat`             | the primary, [`put`](SharedStore::put), periodically | a [`Heartbeat`] |
//!
//! Numbers are zero-padded to 20 digits, so the store's sorted listing is numeric order.
//!
//! # Protocol
//!
//! 1. **Claim.** A writer takes the next epoch (highest existing + 1) by creating its
//!    `lease/…epoch` key exclusively (on a race, it retries with the next number). If there was an
//!    earlier epoch, it then writes a [`Fence`] record at the first free log position. From then
//!    on the old primary's next commit — at that very position — finds the key taken.
//! 2. **Commit.** A checkpoint is one exclusive create of `log/{seq}.rec`, seq = previous + 1. If
//!    the key exists, someone else has written there: the writer is [`LogError::Fenced`] and stays
//!    so — every later call fails the same way. A stale primary can never commit again: every
//!    position it could write next is taken by the fence or by the records after it. Truncation
//!    deletes old positions, fences included, so after a successful create the writer also checks
//!    that the next epoch (`lease/{epoch+1}.epoch`) is unclaimed; if it is claimed, the writer is
//!    fenced too (its record landed in a truncated hole no reader visits, or became the head the
//!    claimer fenced after — either way the writer must stop).
//! 3. **Read.** A reader returns records in seq order and stops at the first missing one. A record
//!    is a whole object (atomic publish), so a reader never sees a torn checkpoint: a primary that
//!    dies while writing leaves either the complete record or nothing, and its successor's fence
//!    takes the position either way. A damaged record is an error naming its key, never skipped.
//!
//! The first checkpoint in the log must be `full`. [`LogWriter::truncate_before`] deletes records
//! older than a full checkpoint; a [`LogReader`] opened later starts at the newest full
//! checkpoint.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::auth::ClusterKey;
use crate::record::{
    self, Checkpoint, Claim, Fence, Heartbeat, Record, RecordError, decode_claim, decode_heartbeat, encode_claim,
    encode_heartbeat,
};
use crate::store::{Created, SharedStore, StoreError, unique_token};

/// Prefix of the log records.
pub const LOG_PREFIX: &str = "log/";
/// Prefix of the lease keys (epoch claims and the heartbeat).
pub const LEASE_PREFIX: &str = "lease/";
/// Key of the primary's heartbeat.
pub const HEARTBEAT_KEY: &str = "lease/heartbeat";
/// Longest holder name.
pub const MAX_HOLDER_LEN: usize = 256;
/// How often a claim retries when other claimers keep taking the epoch or the log position.
const CLAIM_ATTEMPTS: usize = 64;

/// Key of log record `seq`: `log/{seq:020}.rec`.
pub fn log_key(seq: u64) -> String {
    format!("log/{seq:020}.rec")
}

/// Key of the claim of `epoch`: `lease/{epoch:020}.epoch`.
pub fn epoch_key(epoch: u64) -> String {
    format!("lease/{epoch:020}.epoch")
}

fn parse_num(key: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = key.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

pub(crate) fn now_unix_ms() -> u64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Who took a log position that a fenced writer wanted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FencedBy {
    /// Epoch of the record found there (`None`: the record is unreadable).
    pub epoch: Option<u64>,
    /// Its holder, from the fence record or from the epoch's claim (`None`: unknown).
    pub holder: Option<String>,
}

impl fmt::Display for FencedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.holder, self.epoch) {
            (Some(h), Some(e)) => write!(f, "{h:?} (epoch {e})"),
            (None, Some(e)) => write!(f, "epoch {e}"),
            (Some(h), None) => write!(f, "{h:?}"),
            (None, None) => write!(f, "an unreadable record"),
        }
    }
}

/// Errors of the log and the lease.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An epoch or position read from the store is the largest there is: no epoch or record can
    /// follow it. No primary gets there by counting; the store holds something no vmtier wrote.
    #[error(
        "the log's newest {what} is {value}, the largest possible: nothing can follow it; the store holds a claim or record \
         no vmtier primary wrote — inspect it with `vmtier inspect` and start a new log"
    )]
    Exhausted {
        /// `epoch` or `position`.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// A shared-store operation failed (the source names the key and the store).
    #[error("{op}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: StoreError,
    },
    /// A record or lease key does not decode.
    #[error(
        "{key} in {store} is damaged and cannot be read; the log cannot be replayed past it (restore it from a copy, or start over from a newer full checkpoint)"
    )]
    Corrupt {
        /// The key.
        key: String,
        /// The store.
        store: String,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
    /// A record stored under another position's key.
    #[error("{key} in {store} holds record seq {found}: it was copied or renamed; restore the right record")]
    WrongSeq {
        /// The key.
        key: String,
        /// The store.
        store: String,
        /// The seq inside the record.
        found: u64,
    },
    /// A record of an older epoch than the record before it.
    #[error(
        "{key} has epoch {epoch} but follows a record of epoch {previous}: a stale primary's write got past its fence; do not fail over from this log before checking it"
    )]
    EpochWentBack {
        /// The key.
        key: String,
        /// Its epoch.
        epoch: u64,
        /// The epoch before it.
        previous: u64,
    },
    /// A fence whose epoch is not newer than the record before it.
    #[error("{key} is a fence of epoch {epoch} after a record of epoch {previous}; fences must raise the epoch")]
    FenceNotNewer {
        /// The key.
        key: String,
        /// Its epoch.
        epoch: u64,
        /// The epoch before it.
        previous: u64,
    },
    /// The log is shorter than what this reader already read: records were deleted or the store
    /// restored from an older copy (a rollback), which truncation never does.
    #[error(
        "the log went back: this reader already read record {read}, but the newest record now is {head:?}; records were deleted or the shared store was restored from an older copy. Nothing after record {read} is applied; check the store before failing over from it"
    )]
    RolledBack {
        /// The last record this reader returned.
        read: u64,
        /// The newest record in the log now.
        head: Option<u64>,
    },
    /// A missing record while later ones exist.
    #[error("{key} is missing but {later} exists: the log has a hole and cannot be replayed past it")]
    Gap {
        /// The missing key.
        key: String,
        /// A later key that exists.
        later: String,
    },
    /// The reader fell behind a truncation of the log.
    #[error(
        "the reader is at seq {next} but the log now starts at seq {oldest} (it was truncated); reopen the reader, which restarts at the newest full checkpoint"
    )]
    TruncatedPast {
        /// The reader's next seq.
        next: u64,
        /// The oldest record in the log.
        oldest: u64,
    },
    /// Another writer took the log: this writer must stop.
    #[error(
        "this writer (epoch {our_epoch}) is fenced at log position {seq} by {by} and can never commit again; a newer primary owns the log, stop writing to the shared tiers"
    )]
    Fenced {
        /// The position this writer wanted.
        seq: u64,
        /// This writer's epoch.
        our_epoch: u64,
        /// Who took it.
        by: FencedBy,
    },
    /// The holder name is unusable.
    #[error("invalid lease holder {holder:?}: {reason}")]
    InvalidHolder {
        /// The name.
        holder: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The checkpoint's `seq` is neither 0 nor the writer's next position.
    #[error(
        "checkpoint has seq {found} but the log's next position is {expected}; leave seq at 0 to have it filled in"
    )]
    SeqMismatch {
        /// The writer's next position.
        expected: u64,
        /// The checkpoint's seq.
        found: u64,
    },
    /// The checkpoint's `epoch` is neither 0 nor the writer's epoch.
    #[error(
        "checkpoint has epoch {found} but this writer holds epoch {expected}; leave epoch at 0 to have it filled in"
    )]
    EpochMismatch {
        /// The writer's epoch.
        expected: u64,
        /// The checkpoint's epoch.
        found: u64,
    },
    /// A delta checkpoint with no full checkpoint before it in the log.
    #[error("checkpoint {seq} is a delta, but the log has no full checkpoint yet; the first checkpoint must be full")]
    NeedFull {
        /// The position it would have had.
        seq: u64,
    },
    /// Other claimers kept winning.
    #[error(
        "could not claim the log in {attempts} attempts: other writers keep claiming it; is another primary starting?"
    )]
    ClaimContended {
        /// Attempts made.
        attempts: usize,
    },
    /// Truncation would leave no full checkpoint to start from.
    #[error(
        "cannot truncate the log before seq {seq}: the newest full checkpoint this writer knows is {last_full:?}; commit a full checkpoint at or after {seq} first"
    )]
    TruncateUnsafe {
        /// The requested position.
        seq: u64,
        /// The newest full checkpoint known.
        last_full: Option<u64>,
    },
}

fn store_err(op: &'static str) -> impl FnOnce(StoreError) -> LogError {
    move |source| LogError::Store { op, source }
}

/// Log positions present, ascending.
fn list_seqs(store: &dyn SharedStore) -> Result<Vec<u64>, LogError> {
    let keys = store.list(LOG_PREFIX).map_err(store_err("cannot list the log"))?;
    let mut seqs: Vec<u64> = keys.iter().filter_map(|k| parse_num(k, LOG_PREFIX, ".rec")).collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Epochs claimed, ascending.
fn list_epochs(store: &dyn SharedStore) -> Result<Vec<u64>, LogError> {
    let keys = store.list(LEASE_PREFIX).map_err(store_err("cannot list the lease"))?;
    let mut epochs: Vec<u64> = keys.iter().filter_map(|k| parse_num(k, LEASE_PREFIX, ".epoch")).collect();
    epochs.sort_unstable();
    Ok(epochs)
}

/// Decodes the record of `key`, checking that it is record `seq`.
fn decode_at(store: &dyn SharedStore, ck: &ClusterKey, key: &str, seq: u64, bytes: &[u8]) -> Result<Record, LogError> {
    let rec = record::decode(ck, key, bytes).map_err(|source| LogError::Corrupt {
        key: key.to_string(),
        store: store.describe(),
        source,
    })?;
    if rec.seq() != seq {
        return Err(LogError::WrongSeq { key: key.to_string(), store: store.describe(), found: rec.seq() });
    }
    Ok(rec)
}

/// Reads and decodes record `seq`; `None` if it does not exist.
fn read_record(store: &dyn SharedStore, ck: &ClusterKey, seq: u64) -> Result<Option<(Record, Vec<u8>)>, LogError> {
    let key = log_key(seq);
    let Some(bytes) = store.get(&key).map_err(store_err("cannot read the log"))? else { return Ok(None) };
    Ok(Some((decode_at(store, ck, &key, seq, &bytes)?, bytes)))
}

/// Reads the claim of `epoch`, if it exists and decodes (its MAC checked with `ck`).
pub fn read_claim(store: &dyn SharedStore, ck: &ClusterKey, epoch: u64) -> Result<Option<Claim>, LogError> {
    let key = epoch_key(epoch);
    let Some(bytes) = store.get(&key).map_err(store_err("cannot read the lease"))? else { return Ok(None) };
    decode_claim(ck, &key, &bytes).map(Some).map_err(|source| LogError::Corrupt {
        key,
        store: store.describe(),
        source,
    })
}

/// Reads the primary's heartbeat (its MAC checked with `ck`), `None` if there is none yet.
pub fn read_heartbeat(store: &dyn SharedStore, ck: &ClusterKey) -> Result<Option<Heartbeat>, LogError> {
    let Some(bytes) = store.get(HEARTBEAT_KEY).map_err(store_err("cannot read the heartbeat"))? else {
        return Ok(None);
    };
    decode_heartbeat(ck, &bytes).map(Some).map_err(|source| LogError::Corrupt {
        key: HEARTBEAT_KEY.to_string(),
        store: store.describe(),
        source,
    })
}

/// Who wrote `bytes` (a log record found where this writer wanted to write).
fn who_wrote(store: &dyn SharedStore, ck: &ClusterKey, key: &str, bytes: Option<&[u8]>) -> FencedBy {
    match bytes.map(|b| record::decode(ck, key, b)) {
        Some(Ok(Record::Fence(f))) => FencedBy { epoch: Some(f.epoch), holder: Some(f.holder) },
        Some(Ok(Record::Checkpoint(c))) => {
            let holder = read_claim(store, ck, c.epoch).ok().flatten().map(|cl| cl.holder);
            FencedBy { epoch: Some(c.epoch), holder }
        }
        _ => FencedBy::default(),
    }
}

fn check_holder(holder: &str) -> Result<(), LogError> {
    let bad = |reason| Err(LogError::InvalidHolder { holder: holder.to_string(), reason });
    if holder.is_empty() {
        return bad("empty");
    }
    if holder.len() > MAX_HOLDER_LEN {
        return bad("longer than 256 bytes");
    }
    if holder.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    Ok(())
}

/// What [`scan_back`] found.
struct Scan {
    /// The newest full checkpoint (`None`: the scan reached the oldest record or a hole first).
    last_full: Option<u64>,
    /// The records from there (or from where the scan stopped) to the newest, ascending.
    records: Vec<(u64, Fetched)>,
}

/// Scans back from the newest record in `seqs` to the newest full checkpoint.
fn scan_back(store: &dyn SharedStore, ck: &ClusterKey, seqs: &[u64]) -> Result<Scan, LogError> {
    let mut records = Vec::new();
    let mut last_full = None;
    let mut expect = None;
    for &seq in seqs.iter().rev() {
        if expect.is_some_and(|e| e != seq) {
            break; // a hole: nothing before it can be reached
        }
        let Some((rec, bytes)) = read_record(store, ck, seq)? else { break };
        let full = matches!(&rec, Record::Checkpoint(c) if c.full);
        records.push((seq, Fetched::new(&bytes, rec)));
        if full {
            last_full = Some(seq);
            break;
        }
        expect = seq.checked_sub(1);
    }
    records.reverse();
    Ok(Scan { last_full, records })
}

/// The primary's end of the log. See the [module docs](self).
#[derive(Debug)]
pub struct LogWriter {
    store: Arc<dyn SharedStore>,
    key: ClusterKey,
    holder: String,
    epoch: u64,
    next_seq: u64,
    last_full: Option<u64>,
    fenced: Option<(u64, FencedBy)>,
    beater: Heartbeater,
}

/// Writes the heartbeat of one [`LogWriter`]'s epoch, from any thread: a primary beats on a
/// thread of its own, so the heartbeat keeps its period while a commit waits on slow storage
/// (an S3 commit can take longer than a lease). Made by [`LogWriter::heartbeater`]; shares the
/// writer's counter.
#[derive(Debug, Clone)]
pub struct Heartbeater {
    store: Arc<dyn SharedStore>,
    key: ClusterKey,
    holder: String,
    epoch: u64,
    counter: Arc<AtomicU64>,
}

impl Heartbeater {
    /// Rewrites `lease/heartbeat` with this epoch, a new counter value and `last_committed`.
    /// Fails with [`LogError::Fenced`] (without writing) if a newer epoch has been claimed or the
    /// heartbeat there is already of a newer epoch.
    pub fn beat(&self, last_committed: u64) -> Result<(), LogError> {
        self.beat_as(last_committed.saturating_add(1), last_committed)
    }

    /// [`beat`](Self::beat), naming `next_seq` as the position a [`LogError::Fenced`] is at.
    fn beat_as(&self, next_seq: u64, last_committed: u64) -> Result<(), LogError> {
        let fenced = |by| LogError::Fenced { seq: next_seq, our_epoch: self.epoch, by };
        if let Some(by) = superseded(&*self.store, &self.key, self.epoch)? {
            return Err(fenced(by));
        }
        // A corrupt (or forged) heartbeat is simply overwritten.
        if let Ok(Some(hb)) = read_heartbeat(&*self.store, &self.key)
            && hb.epoch > self.epoch
        {
            return Err(fenced(FencedBy { epoch: Some(hb.epoch), holder: Some(hb.holder) }));
        }
        let hb = Heartbeat {
            epoch: self.epoch,
            holder: self.holder.clone(),
            counter: self.counter.fetch_add(1, Ordering::Relaxed) + 1,
            unix_ms: now_unix_ms(),
            last_committed,
        };
        self.store
            .put(HEARTBEAT_KEY, &encode_heartbeat(&self.key, &hb))
            .map_err(store_err("cannot write the heartbeat"))
    }
}

/// Whether the epoch after `epoch` has been claimed (epochs are claimed in order, so any newer
/// claim implies that one).
///
/// A claim that fails its MAC still fences: the writer cannot tell a forged claim from one it
/// cannot read, and stopping is the safe side (a forger can stop a primary — as anyone who can
/// delete its files can — but never make a guest read a forged page).
fn superseded(store: &dyn SharedStore, ck: &ClusterKey, epoch: u64) -> Result<Option<FencedBy>, LogError> {
    // Nothing can be claimed after the largest epoch.
    let Some(newer) = epoch.checked_add(1) else { return Ok(None) };
    let key = epoch_key(newer);
    let Some(bytes) = store.get(&key).map_err(store_err("cannot read the lease"))? else {
        return Ok(None);
    };
    let holder = decode_claim(ck, &key, &bytes).ok().map(|c| c.holder);
    Ok(Some(FencedBy { epoch: Some(newer), holder }))
}

impl LogWriter {
    /// Claims the log for `holder`: takes the next epoch and fences the log if there was an
    /// earlier epoch. Fails with [`LogError::Fenced`] if a newer claimer has already written to
    /// the log. Call [`heartbeat`](Self::heartbeat) right after, and then periodically.
    ///
    /// Its only writes are the epoch claim and the fence, in that order. If it fails on a store
    /// error, claim again: that takes a further epoch (an epoch claimed by a failed attempt is
    /// never used; a fence it wrote is harmless).
    ///
    /// Every record it writes is authenticated with `key`, and every record it reads must be.
    pub fn claim(store: Arc<dyn SharedStore>, key: &ClusterKey, holder: &str) -> Result<LogWriter, LogError> {
        check_holder(holder)?;
        let s = &*store;
        // 1. The epoch: above every claim and every record.
        let mut attempts = 0;
        let epoch = loop {
            let seqs = list_seqs(s)?;
            let head_epoch = match seqs.last() {
                Some(&head) => read_record(s, key, head)?.map_or(0, |(r, _)| r.epoch()),
                None => 0,
            };
            let newest = list_epochs(s)?.last().copied().unwrap_or(0).max(head_epoch);
            let epoch = newest.checked_add(1).ok_or(LogError::Exhausted { what: "epoch", value: newest })?;
            let claim =
                Claim { epoch, created_unix_ms: now_unix_ms(), nonce: unique_token(), holder: holder.to_string() };
            match s
                .put_exclusive(&epoch_key(epoch), &encode_claim(key, &claim))
                .map_err(store_err("cannot claim the log"))?
            {
                Created::Yes => break epoch,
                Created::AlreadyExists => {
                    attempts += 1;
                    if attempts >= CLAIM_ATTEMPTS {
                        return Err(LogError::ClaimContended { attempts });
                    }
                }
            }
        };
        // 2. The newest full checkpoint, for `NeedFull` and `truncate_before`. Scanned before the
        //    fence, so that a failed scan leaves nothing behind. Once the log has a full
        //    checkpoint it always has one (truncation keeps the newest), so the answer stays valid.
        let last_full = scan_back(s, key, &list_seqs(s)?)?.last_full;
        // 3. The position: a fence at the first free one, unless this is the first epoch ever.
        let mut next_seq = None;
        for _ in 0..CLAIM_ATTEMPTS {
            let head = list_seqs(s)?.last().copied().unwrap_or(0);
            if head > 0
                && let Some((rec, bytes)) = read_record(s, key, head)?
                && rec.epoch() > epoch
            {
                let by = who_wrote(s, key, &log_key(head), Some(&bytes));
                return Err(LogError::Fenced { seq: head, our_epoch: epoch, by });
            }
            if head == 0 && epoch == 1 {
                next_seq = Some(1);
                break;
            }
            let Some(after) = head.checked_add(2) else {
                return Err(LogError::Exhausted { what: "position", value: head });
            };
            let at = head + 1;
            let fence = Fence { seq: at, epoch, created_unix_ms: now_unix_ms(), holder: holder.to_string() };
            let bytes = record::encode(key, &Record::Fence(fence));
            match s.put_exclusive(&log_key(at), &bytes).map_err(store_err("cannot write the fence"))? {
                Created::Yes => {
                    tracing::info!(epoch, seq = at, holder, store = %s.describe(), "claimed the log and fenced it");
                    next_seq = Some(after);
                    break;
                }
                Created::AlreadyExists => {} // the old primary committed meanwhile: fence after it
            }
        }
        let Some(next_seq) = next_seq else { return Err(LogError::ClaimContended { attempts: CLAIM_ATTEMPTS }) };
        Ok(LogWriter {
            store: store.clone(),
            key: key.clone(),
            holder: holder.to_string(),
            epoch,
            next_seq,
            last_full,
            fenced: None,
            beater: Heartbeater {
                store,
                key: key.clone(),
                holder: holder.to_string(),
                epoch,
                counter: Arc::new(AtomicU64::new(0)),
            },
        })
    }

    /// This writer's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The cluster key it writes with.
    pub fn key(&self) -> &ClusterKey {
        &self.key
    }

    /// The holder name it claimed with.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The position of the next commit.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The newest full checkpoint in the log this writer knows of.
    pub fn last_full(&self) -> Option<u64> {
        self.last_full
    }

    /// Whether a commit found its position taken (then every call fails with [`LogError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        self.fenced.is_some()
    }

    /// Marks this writer fenced for good and returns the error.
    fn fence_self(&mut self, seq: u64, by: FencedBy) -> LogError {
        tracing::warn!(seq, epoch = self.epoch, %by, "this primary is fenced");
        self.fenced = Some((seq, by.clone()));
        LogError::Fenced { seq, our_epoch: self.epoch, by }
    }

    /// Whether the next epoch has been claimed.
    fn superseded(&self) -> Result<Option<FencedBy>, LogError> {
        superseded(&*self.store, &self.key, self.epoch)
    }

    /// A heartbeat writer for this epoch, to run on its own thread.
    pub fn heartbeater(&self) -> Heartbeater {
        self.beater.clone()
    }

    fn fenced_err(&self) -> Option<LogError> {
        let (seq, by) = self.fenced.as_ref()?;
        Some(LogError::Fenced { seq: *seq, our_epoch: self.epoch, by: by.clone() })
    }

    /// Commits `ckpt` at the next position and returns that position. `ckpt.seq` and `ckpt.epoch`
    /// may be 0 (filled in) or must equal [`next_seq`](Self::next_seq) and [`epoch`](Self::epoch).
    ///
    /// If the position is taken by another writer, or a newer epoch was claimed while this
    /// checkpoint was being written, this writer is fenced for good: [`LogError::Fenced`], now and
    /// on every later call. A fenced writer's process must stop writing to the shared tiers: a
    /// newer primary owns them. (In the second case the checkpoint may have become part of the
    /// new primary's log — it then saw it as the log's head when it claimed — or may sit below
    /// the new primary's truncation point, where no reader finds it.)
    ///
    /// Any other error (the store unreachable) leaves the writer usable: commit the same
    /// checkpoint again (an earlier attempt that landed is recognised by its bytes).
    pub fn commit(&mut self, ckpt: &Checkpoint) -> Result<u64, LogError> {
        if let Some(e) = self.fenced_err() {
            return Err(e);
        }
        let seq = self.next_seq;
        if ckpt.seq != 0 && ckpt.seq != seq {
            return Err(LogError::SeqMismatch { expected: seq, found: ckpt.seq });
        }
        if ckpt.epoch != 0 && ckpt.epoch != self.epoch {
            return Err(LogError::EpochMismatch { expected: self.epoch, found: ckpt.epoch });
        }
        if !ckpt.full && self.last_full.is_none() {
            return Err(LogError::NeedFull { seq });
        }
        let bytes = record::encode_checkpoint_as(&self.key, ckpt, seq, self.epoch);
        let key = log_key(seq);
        let created = self.store.put_exclusive(&key, &bytes).map_err(store_err("cannot commit the checkpoint"))?;
        if created == Created::AlreadyExists {
            let there = self.store.get(&key).map_err(store_err("cannot read the log"))?;
            // Our own earlier attempt (which reported an error) may have landed.
            if there.as_deref() != Some(&bytes[..]) {
                let by = who_wrote(&*self.store, &self.key, &key, there.as_deref());
                return Err(self.fence_self(seq, by));
            }
        }
        // The position was free. If a newer epoch has been claimed, it may have been freed by a
        // truncation of the new primary (which deletes fences too): refuse, whether or not the
        // record also made it into the new primary's log.
        if let Some(by) = self.superseded()? {
            return Err(self.fence_self(seq, by));
        }
        self.next_seq += 1;
        if ckpt.full {
            self.last_full = Some(seq);
        }
        Ok(seq)
    }

    /// Rewrites `lease/heartbeat` with this writer's epoch, a new counter value and
    /// `last_committed`. Fails with [`LogError::Fenced`] (without writing) if a newer epoch has
    /// been claimed or the heartbeat there is already of a newer epoch.
    pub fn heartbeat(&self, last_committed: u64) -> Result<(), LogError> {
        if let Some(e) = self.fenced_err() {
            return Err(e);
        }
        self.beater.beat_as(self.next_seq, last_committed)
    }

    /// Deletes the log records before `seq`, oldest first; returns how many. `seq` must not be
    /// after the newest full checkpoint ([`last_full`](Self::last_full)), so a reader opened
    /// later still finds a full checkpoint to start from; otherwise [`LogError::TruncateUnsafe`].
    pub fn truncate_before(&self, seq: u64) -> Result<usize, LogError> {
        if let Some(e) = self.fenced_err() {
            return Err(e);
        }
        if let Some(by) = self.superseded()? {
            return Err(LogError::Fenced { seq: self.next_seq, our_epoch: self.epoch, by });
        }
        if self.last_full.is_none_or(|f| seq > f) {
            return Err(LogError::TruncateUnsafe { seq, last_full: self.last_full });
        }
        let old: Vec<u64> = list_seqs(&*self.store)?.into_iter().filter(|&q| q < seq).collect();
        for &q in &old {
            self.store.delete(&log_key(q)).map_err(store_err("cannot truncate the log"))?;
        }
        Ok(old.len())
    }
}

/// A fetched record and a fingerprint of its bytes.
#[derive(Debug)]
struct Fetched {
    fingerprint: (usize, u32),
    record: Record,
}

impl Fetched {
    fn new(bytes: &[u8], record: Record) -> Self {
        Self { fingerprint: (bytes.len(), crc32c::crc32c(bytes)), record }
    }
}

/// The secondary's end of the log. See the [module docs](self).
#[derive(Debug)]
pub struct LogReader {
    store: Arc<dyn SharedStore>,
    key: ClusterKey,
    next: u64,
    last_epoch: Option<u64>,
    /// Records already read (by `open`'s scan or as look-ahead), by seq.
    cache: HashMap<u64, Fetched>,
    /// The store's settle time: the newest record is held back until stable this long.
    settle: Option<Duration>,
    /// The newest record being held back: seq, fingerprint, first seen.
    held: Option<(u64, (usize, u32), Instant)>,
    /// Whether a record has been returned (record `next - 1` was read).
    returned: bool,
}

impl LogReader {
    /// Opens a reader at the newest full checkpoint (or, if the log has none, at its oldest
    /// record; at seq 1 if it is empty). Records from there on are returned by
    /// [`poll`](Self::poll).
    ///
    /// Every record must verify with `key`; one that does not is an error naming it.
    pub fn open(store: Arc<dyn SharedStore>, key: &ClusterKey) -> Result<LogReader, LogError> {
        // A concurrent truncation can delete records under the scan: then scan again.
        let mut tries = 0;
        loop {
            let seqs = list_seqs(&*store)?;
            let scan = scan_back(&*store, key, &seqs)?;
            let start = scan.records.first().map_or(1, |(seq, _)| *seq);
            let reached_oldest = seqs.first().is_none_or(|&o| o == start);
            if scan.last_full.is_none() && !reached_oldest && tries >= 3 {
                return Err(LogError::Gap { key: log_key(start.saturating_sub(1)), later: log_key(start) });
            }
            if scan.last_full.is_some() || reached_oldest {
                let mut r = Self::open_at(store, key, start);
                r.cache = scan.records.into_iter().collect();
                return Ok(r);
            }
            tries += 1;
        }
    }

    /// Opens a reader whose first record will be `seq` (no checkpoint search).
    pub fn open_at(store: Arc<dyn SharedStore>, key: &ClusterKey, seq: u64) -> LogReader {
        let settle = store.exclusive_settle();
        LogReader {
            store,
            key: key.clone(),
            next: seq.max(1),
            last_epoch: None,
            cache: HashMap::new(),
            settle,
            held: None,
            returned: false,
        }
    }

    /// The seq of the next record [`poll`](Self::poll) will return.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    fn fetch(&mut self, seq: u64) -> Result<Option<Fetched>, LogError> {
        if let Some(f) = self.cache.remove(&seq) {
            return Ok(Some(f));
        }
        Ok(read_record(&*self.store, &self.key, seq)?.map(|(rec, bytes)| Fetched::new(&bytes, rec)))
    }

    /// On a store with a settle time: has record `seq` (the newest) been unchanged that long?
    fn settled(&mut self, seq: u64, fingerprint: (usize, u32), settle: Duration) -> bool {
        match self.held {
            Some((s, f, since)) if s == seq && f == fingerprint => since.elapsed() >= settle,
            _ => {
                self.held = Some((seq, fingerprint, Instant::now()));
                false
            }
        }
    }

    /// Record `next` is missing: is that the end of the log, a hole, or a truncation?
    fn check_missing(&self) -> Result<(), LogError> {
        let seqs = list_seqs(&*self.store)?;
        if seqs.binary_search(&self.next).is_ok() {
            return Ok(()); // appeared just now: the next poll returns it
        }
        let read = self.next - 1;
        if self.returned && seqs.last().is_none_or(|&head| head < read) {
            // Truncation never deletes the newest record: the log was rolled back.
            return Err(LogError::RolledBack { read, head: seqs.last().copied() });
        }
        match (seqs.first(), seqs.last()) {
            (Some(&oldest), _) if oldest > self.next => Err(LogError::TruncatedPast { next: self.next, oldest }),
            (_, Some(&later)) if later > self.next => {
                Err(LogError::Gap { key: log_key(self.next), later: log_key(later) })
            }
            _ => Ok(()),
        }
    }

    fn validate(&mut self, rec: &Record) -> Result<(), LogError> {
        let key = || log_key(rec.seq());
        if let Some(previous) = self.last_epoch {
            match rec {
                Record::Fence(f) if f.epoch <= previous => {
                    return Err(LogError::FenceNotNewer { key: key(), epoch: f.epoch, previous });
                }
                Record::Checkpoint(c) if c.epoch < previous => {
                    return Err(LogError::EpochWentBack { key: key(), epoch: c.epoch, previous });
                }
                _ => {}
            }
        }
        self.last_epoch = Some(rec.epoch());
        Ok(())
    }

    /// The new records, in seq order, from the one after the last returned up to the first
    /// missing one. Checks: each record is intact and is the seq its key says; epochs never go
    /// back; each fence raises the epoch. A failed check is an error naming the key, and the
    /// reader stays before that record: records before it are returned, and the error comes
    /// with the next call (and every call until the record is repaired).
    ///
    /// On a store with a settle time ([`SharedStore::exclusive_settle`]) the newest record is
    /// returned only once it has been unchanged for that long, or once a later record exists.
    pub fn poll(&mut self) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        loop {
            match self.step(out.is_empty()) {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => break,
                // Records before the bad one are returned; the error comes with the next poll.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The next record, `None` at the end of the log (or while the newest is held back). At the
    /// end, `check_end` also looks for a hole or a truncation (one listing).
    fn step(&mut self, check_end: bool) -> Result<Option<Record>, LogError> {
        let seq = self.next;
        let Some(cur) = self.fetch(seq)? else {
            if check_end {
                self.check_missing()?;
            }
            return Ok(None);
        };
        if let Some(settle) = self.settle {
            let next = seq.checked_add(1).ok_or(LogError::Exhausted { what: "position", value: seq })?;
            match self.fetch(next)? {
                Some(after) => {
                    self.cache.insert(next, after);
                }
                None if !self.settled(seq, cur.fingerprint, settle) => return Ok(None),
                None => {}
            }
        }
        self.validate(&cur.record)?;
        self.next = seq.checked_add(1).ok_or(LogError::Exhausted { what: "position", value: seq })?;
        self.returned = true;
        Ok(Some(cur.record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    /// Epochs and positions come from names and records on shared storage: the largest ones are
    /// a clear error, never an overflow (found by reading what the fuzz targets could not reach).
    #[test]
    fn the_largest_epoch_or_position_is_an_error_not_an_overflow() {
        let key = ClusterKey::from_bytes(&[9; 32], "test").unwrap();
        let store: Arc<dyn SharedStore> = Arc::new(MemStore::new());
        store.put(&epoch_key(u64::MAX), b"planted").unwrap();
        let e = LogWriter::claim(store.clone(), &key, "a").map(|_| ()).unwrap_err();
        assert!(matches!(e, LogError::Exhausted { what: "epoch", value: u64::MAX }), "{e}");
        assert!(e.to_string().contains("vmtier inspect"), "{e}");
        // A writer of the largest epoch is superseded by nothing.
        assert!(superseded(&*store, &key, u64::MAX).unwrap().is_none());
    }

    #[test]
    fn key_names() {
        assert_eq!(log_key(1), "log/00000000000000000001.rec");
        assert_eq!(epoch_key(u64::MAX), "lease/18446744073709551615.epoch");
        assert_eq!(parse_num(&log_key(42), LOG_PREFIX, ".rec"), Some(42));
        assert_eq!(parse_num(&epoch_key(u64::MAX), LEASE_PREFIX, ".epoch"), Some(u64::MAX));
        assert_eq!(parse_num("log/42.rec", LOG_PREFIX, ".rec"), None);
        assert_eq!(parse_num("log/0000000000000000004x.rec", LOG_PREFIX, ".rec"), None);
        assert_eq!(parse_num("lease/99999999999999999999.epoch", LEASE_PREFIX, ".epoch"), None, "overflow");
    }

    #[test]
    fn holder_names() {
        let store: Arc<dyn SharedStore> = Arc::new(MemStore::new());
        let key = ClusterKey::from_bytes(&[1; 32], "test").expect("key");
        for bad in ["", "a\nb", &"h".repeat(257)] {
            assert!(
                matches!(LogWriter::claim(store.clone(), &key, bad), Err(LogError::InvalidHolder { .. })),
                "{bad:?}"
            );
        }
        assert!(store.list("").expect("list").is_empty(), "nothing written for a bad holder");
    }

    #[test]
    fn fenced_by_display() {
        let b = FencedBy { epoch: Some(3), holder: Some("host-b".into()) };
        assert_eq!(b.to_string(), "\"host-b\" (epoch 3)");
        assert_eq!(FencedBy::default().to_string(), "an unreadable record");
    }
}
