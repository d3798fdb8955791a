//! Behaviour tests of the checkpoint log: fencing of a stale primary on every backend (directory,
//! memory, a real S3-compatible server), damaged and partial records, ordering checks, the
//! settle hold-back, and randomized store faults.

#[path = "../../vmtier-storage/tests/common/s3.rs"]
mod s3;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use proptest::prelude::*;
use vmtier_repl::log::{HEARTBEAT_KEY, epoch_key, log_key, read_claim};
use vmtier_repl::record::{self, Heartbeat};
use vmtier_repl::store::{Created, DirStore, FaultyStore, MemStore, ObjectStoreShared, SharedStore};
use vmtier_repl::{
    Checkpoint, ClusterKey, ExclusiveWrites, Fence, LeaseStatus, LeaseWatch, Location, LogError, LogReader, LogWriter,
    PageLoc, Record, RecordError, ReplicaMap, map_digest, read_heartbeat,
};

use vmtier_storage::fault::{FaultKind, FaultPlan, Op, Rule, SmallTmpfs};

use crate::s3::S3Server;

/// The cluster key of every test here.
fn key() -> &'static ClusterKey {
    static KEY: std::sync::OnceLock<ClusterKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| ClusterKey::from_bytes(&[0x33; 32], "test key").expect("key"))
}

type Model = BTreeMap<u32, (Location, u32)>;

/// A checkpoint applying `changes` to `model` (seq and epoch left for the writer to fill in).
fn ckpt(model: &mut Model, changes: &[(u32, Location, u32)], full: bool) -> Checkpoint {
    for &(page, loc, crc) in changes {
        if loc == Location::Zero {
            model.remove(&page);
        } else {
            model.insert(page, (loc, crc));
        }
    }
    let pages: Vec<PageLoc> = if full {
        model.iter().map(|(&page, &(loc, crc))| PageLoc { page, loc, crc, tag: [0; 16] }).collect()
    } else {
        changes.iter().map(|&(page, loc, crc)| PageLoc { page, loc, crc, tag: [0; 16] }).collect()
    };
    Checkpoint {
        created_unix_ms: 1,
        guest_bytes: 1 << 20,
        full,
        pages,
        digest: map_digest(model.iter().map(|(&p, &(_, c))| (p, c))),
        ..Checkpoint::default()
    }
}

fn ssd(page: u32, slot: u32) -> (u32, Location, u32) {
    (page, Location::Ssd { store: 1, slot }, page.wrapping_mul(31) ^ slot)
}

/// Polls until the reader has returned record `head` (a store with a settle time holds the newest
/// record back for a while).
fn poll_to(reader: &mut LogReader, head: u64) -> Vec<Record> {
    let mut records = Vec::new();
    for _ in 0..200 {
        records.extend(reader.poll().expect("poll"));
        if reader.next_seq() > head {
            return records;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("reader stuck at {} before {head}", reader.next_seq());
}

/// The newest log position.
fn head(store: &Arc<dyn SharedStore>) -> u64 {
    store.list("log/").expect("list").last().map_or(0, |k| k[4..24].parse().expect("seq"))
}

/// Rebuilds the replica from a fresh reader and checks it equals `model`.
fn check_replica(store: &Arc<dyn SharedStore>, model: &Model) -> Vec<Record> {
    let mut reader = LogReader::open(store.clone(), key()).expect("open reader");
    let records = poll_to(&mut reader, head(store));
    let mut map = ReplicaMap::new();
    for r in &records {
        map.apply_record(r).unwrap_or_else(|e| panic!("apply {}: {e}", r.seq()));
    }
    let got: Model = map.iter().map(|(p, l, c)| (p, (l, c))).collect();
    assert_eq!(&got, model, "replica rebuilt from {}", store.describe());
    records
}

fn assert_fenced(r: Result<impl std::fmt::Debug, LogError>, seq: u64, our: u64, by_epoch: u64, by_holder: &str) {
    match r {
        Err(LogError::Fenced { seq: s, our_epoch, by }) => {
            assert_eq!((s, our_epoch, by.epoch), (seq, our, Some(by_epoch)), "{by}");
            assert_eq!(by.holder.as_deref(), Some(by_holder));
        }
        other => panic!("expected Fenced at {seq}, got {other:?}"),
    }
}

/// The fencing suite; `store` must be empty.
fn fencing_suite(store: Arc<dyn SharedStore>) {
    let mut model = Model::new();
    // Primary A: the first epoch, no fence.
    let mut a = LogWriter::claim(store.clone(), key(), "host-a").expect("claim A");
    assert_eq!((a.epoch(), a.next_seq()), (1, 1));
    assert_eq!(read_claim(&*store, key(), 1).expect("claim").map(|c| c.holder).as_deref(), Some("host-a"));
    let mut reader = LogReader::open(store.clone(), key()).expect("reader");
    assert!(matches!(a.commit(&ckpt(&mut model, &[ssd(1, 1)], false)), Err(LogError::NeedFull { seq: 1 })));
    assert_eq!(a.commit(&ckpt(&mut model, &[ssd(1, 1), ssd(2, 2)], true)).expect("commit 1"), 1);
    assert_eq!(a.commit(&ckpt(&mut model, &[ssd(2, 3), (1, Location::Zero, 0)], false)).expect("commit 2"), 2);
    a.heartbeat(2).expect("heartbeat");
    let hb = read_heartbeat(&*store, key()).expect("read").expect("heartbeat");
    assert_eq!((hb.epoch, hb.holder.as_str(), hb.last_committed), (1, "host-a", 2));
    // The heartbeat from a thread of its own, sharing the writer's counter.
    let beater = a.heartbeater();
    std::thread::spawn(move || beater.beat(2)).join().unwrap().expect("beat from a thread");
    let hb2 = read_heartbeat(&*store, key()).expect("read").expect("heartbeat");
    assert_eq!((hb2.epoch, hb2.counter), (1, hb.counter + 1));
    let beater = a.heartbeater();
    check_replica(&store, &model);

    // B claims: epoch 2, fence at 3.
    let mut b = LogWriter::claim(store.clone(), key(), "host-b").expect("claim B");
    assert_eq!((b.epoch(), b.next_seq(), b.last_full()), (2, 4, Some(1)));
    // A, the stale primary, can never commit again — nor heartbeat, nor truncate.
    let stale = ckpt(&mut model.clone(), &[ssd(9, 9)], false);
    assert_fenced(a.commit(&stale), 3, 1, 2, "host-b");
    assert!(a.is_fenced());
    assert_fenced(a.commit(&stale), 3, 1, 2, "host-b");
    assert_fenced(a.heartbeat(2), 3, 1, 2, "host-b");
    assert_fenced(beater.beat(2), 3, 1, 2, "host-b");
    assert_fenced(a.truncate_before(1), 3, 1, 2, "host-b");
    let msg = a.commit(&stale).expect_err("fenced").to_string();
    assert!(msg.contains("host-b") && msg.contains("fenced"), "{msg}");
    // B continues with deltas on the same map.
    assert_eq!(b.commit(&ckpt(&mut model, &[ssd(3, 4)], false)).expect("commit 4"), 4);
    let records = check_replica(&store, &model);
    assert!(matches!(&records[2], Record::Fence(Fence { seq: 3, epoch: 2, holder, .. }) if holder == "host-b"));

    // The old reader continues across the fence.
    let seen: Vec<u64> = poll_to(&mut reader, 4).iter().map(Record::seq).collect();
    assert_eq!(seen, [1, 2, 3, 4]);

    // C takes over from B; B finds out at its next commit (C's fence took B's next position).
    let mut c = LogWriter::claim(store.clone(), key(), "host-c").expect("claim C");
    assert_eq!((c.epoch(), c.next_seq()), (3, 6));
    assert_eq!(c.commit(&ckpt(&mut model, &[ssd(4, 5)], true)).expect("full 6"), 6);
    assert_fenced(b.commit(&ckpt(&mut model.clone(), &[ssd(5, 5)], false)), 5, 2, 3, "host-c");
    c.heartbeat(6).expect("heartbeat C");

    // Truncation keeps the newest full checkpoint; a reader opened later starts there.
    assert!(matches!(c.truncate_before(7), Err(LogError::TruncateUnsafe { seq: 7, last_full: Some(6) })));
    assert_eq!(c.commit(&ckpt(&mut model, &[ssd(5, 6)], false)).expect("commit 7"), 7);
    assert_eq!(c.truncate_before(6).expect("truncate"), 5);
    assert_eq!(store.list("log/").expect("list"), [log_key(6), log_key(7)]);
    let records = check_replica(&store, &model);
    assert_eq!(records.iter().map(Record::seq).collect::<Vec<_>>(), [6, 7]);
    // The old reader fell behind the truncation: told so, not silently skipped ahead.
    let mut behind = LogReader::open_at(store.clone(), key(), 5);
    assert!(matches!(behind.poll(), Err(LogError::TruncatedPast { next: 5, oldest: 6 })));
    // A new claimer after truncation still fences after the head.
    let d = LogWriter::claim(store.clone(), key(), "host-d").expect("claim D");
    assert_eq!((d.epoch(), d.next_seq(), d.last_full()), (4, 9, Some(6)));
    assert_fenced(c.commit(&ckpt(&mut model.clone(), &[ssd(6, 6)], false)), 8, 3, 4, "host-d");
}

#[test]
fn fencing_on_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    fencing_suite(Arc::new(DirStore::open(dir.path()).expect("open")));
}

#[test]
fn fencing_in_memory() {
    fencing_suite(Arc::new(MemStore::new()));
}

#[test]
fn fencing_on_s3_server() {
    let Some(server) = S3Server::start_or_skip("fencing_on_s3_server") else { return };
    let store = vmtier_repl::open_store(&server.config("vm-0/ha")).expect("open");
    fencing_suite(store);
}

/// A primary commits as fast as it can while three others claim the log at the same moment:
/// epochs are distinct, the old primary ends fenced, and the log replays cleanly.
fn claim_race(store: Arc<dyn SharedStore>) {
    let mut model = Model::new();
    let mut old = LogWriter::claim(store.clone(), key(), "old").expect("claim");
    old.commit(&ckpt(&mut model, &[ssd(1, 1)], true)).expect("full");
    let barrier = Arc::new(Barrier::new(4));
    let claimers: Vec<_> = (0..3)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                LogWriter::claim(store, key(), &format!("new-{i}")).map(|w| w.epoch())
            })
        })
        .collect();
    barrier.wait();
    let mut committed = 0;
    let fenced = loop {
        match old.commit(&ckpt(&mut model.clone(), &[ssd(2, committed)], false)) {
            Ok(_) => committed += 1,
            Err(e @ LogError::Fenced { .. }) => break e,
            Err(e) => panic!("{e}"),
        }
        assert!(committed < 10_000, "never fenced");
    };
    let results: Vec<_> = claimers.into_iter().map(|h| h.join().expect("thread")).collect();
    let mut epochs: Vec<u64> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    epochs.sort_unstable();
    epochs.dedup();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(epochs.len(), ok, "distinct epochs: {results:?}");
    for r in &results {
        // A claimer may lose to a newer one that fenced before it: then it is told so.
        assert!(matches!(r, Ok(_) | Err(LogError::Fenced { .. })), "{r:?}");
    }
    assert!(ok >= 1, "{results:?}");
    eprintln!("{}: old primary committed {committed} before {fenced}", store.describe());
    // Replay: checks contiguity, epoch order and fences.
    let mut reader = LogReader::open(store.clone(), key()).expect("reader");
    let all = poll_to(&mut reader, head(&store));
    assert!(all.iter().any(|r| matches!(r, Record::Fence(_))));
}

#[test]
fn claim_race_on_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    claim_race(Arc::new(DirStore::open(dir.path()).expect("open")));
}

#[test]
fn claim_race_on_s3_server() {
    let Some(server) = S3Server::start_or_skip("claim_race_on_s3_server") else { return };
    claim_race(vmtier_repl::open_store(&server.config("race")).expect("open"));
}

fn corrupt(store: &Arc<dyn SharedStore>, seq: u64, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let key = log_key(seq);
    let good = store.get(&key).expect("get").expect("record");
    let mut bad = good.clone();
    f(&mut bad);
    store.put(&key, &bad).expect("put damaged");
    good
}

fn expect_corrupt(reader: &mut LogReader, seq: u64, check: impl FnOnce(&RecordError)) {
    match reader.poll() {
        Err(LogError::Corrupt { key, source, .. }) => {
            assert_eq!(key, log_key(seq));
            check(&source);
        }
        other => panic!("expected Corrupt at {seq}, got {other:?}"),
    }
}

/// Readers never return a damaged or partial record: each is an error naming the key, the reader
/// stays before it, and continues once it is repaired.
fn damaged_records(store: Arc<dyn SharedStore>) {
    let mut model = Model::new();
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    w.commit(&ckpt(&mut model, &[ssd(1, 1)], true)).expect("1");
    w.commit(&ckpt(&mut model, &[ssd(2, 2)], false)).expect("2");
    w.commit(&ckpt(&mut model, &[ssd(3, 3)], false)).expect("3");
    let mut reader = LogReader::open_at(store.clone(), key(), 1);
    assert_eq!(poll_to(&mut reader, 3).len(), 3);
    w.commit(&ckpt(&mut model, &[ssd(4, 4)], false)).expect("4");
    w.commit(&ckpt(&mut model, &[ssd(5, 5)], false)).expect("5");

    let good = corrupt(&store, 4, |b| b.truncate(b.len() - 3));
    expect_corrupt(&mut reader, 4, |e| assert!(matches!(e, RecordError::Truncated { .. }), "{e}"));
    expect_corrupt(&mut reader, 4, |_| {}); // still there
    corrupt(&store, 4, |b| *b = good[..20].to_vec());
    expect_corrupt(&mut reader, 4, |e| assert!(matches!(e, RecordError::Truncated { need: 32, have: 20 }), "{e}"));
    corrupt(&store, 4, |b| *b = good.iter().copied().chain([0]).collect());
    expect_corrupt(&mut reader, 4, |e| assert!(matches!(e, RecordError::TrailingBytes { extra: 1 }), "{e}"));
    corrupt(&store, 4, |b| *b = good.clone());
    for bit in [0usize, 9 * 8 + 1, 20 * 8, 29 * 8, 40 * 8 + 3, (good.len() - 1) * 8 + 7] {
        corrupt(&store, 4, |b| {
            *b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
        });
        match reader.poll() {
            Err(LogError::Corrupt { key, .. }) => assert_eq!(key, log_key(4)),
            other => panic!("bit {bit}: expected Corrupt, got {other:?}"),
        }
    }
    // Empty and foreign content.
    corrupt(&store, 4, |b| b.clear());
    expect_corrupt(&mut reader, 4, |e| assert!(matches!(e, RecordError::Truncated { have: 0, .. }), "{e}"));
    corrupt(&store, 4, |b| *b = b"{\"not\": \"a record\"}                     ".to_vec());
    expect_corrupt(&mut reader, 4, |e| assert!(matches!(e, RecordError::BadMagic { .. }), "{e}"));
    // A record copied to the wrong position.
    let three = store.get(&log_key(3)).expect("get").expect("3");
    corrupt(&store, 4, |b| *b = three.clone());
    // Its MAC binds it to position 3: at 4 it does not verify.
    expect_corrupt(&mut reader, 4, |e| assert!(matches!(e, RecordError::Forged { .. }), "{e}"));
    // The error message names key and store.
    corrupt(&store, 4, |b| b.truncate(40));
    let msg = reader.poll().expect_err("corrupt").to_string();
    assert!(msg.contains(&log_key(4)) && msg.contains(&store.describe()), "{msg}");
    // Repaired: the reader goes on.
    corrupt(&store, 4, |b| *b = good.clone());
    let got: Vec<u64> = poll_to(&mut reader, 5).iter().map(Record::seq).collect();
    assert_eq!(got, [4, 5]);

    // A hole: record 6 missing while 7 exists.
    w.commit(&ckpt(&mut model, &[ssd(6, 6)], false)).expect("6");
    w.commit(&ckpt(&mut model, &[ssd(7, 7)], false)).expect("7");
    let six = store.get(&log_key(6)).expect("get").expect("6");
    store.delete(&log_key(6)).expect("delete");
    match reader.poll() {
        Err(LogError::Gap { key, later }) => assert_eq!((key, later), (log_key(6), log_key(7))),
        other => panic!("expected Gap, got {other:?}"),
    }
    store.put(&log_key(6), &six).expect("restore");
    // The damaged-record errors of `LogReader::open` name the key too.
    let seven = corrupt(&store, 7, |b| b[50] ^= 4);
    match LogReader::open(store.clone(), key()) {
        Err(LogError::Corrupt { key, .. }) => assert_eq!(key, log_key(7)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // So does a claim, which reads the head.
    assert!(matches!(LogWriter::claim(store.clone(), key(), "b"), Err(LogError::Corrupt { .. })));
    corrupt(&store, 7, |b| *b = seven);
    check_replica(&store, &model);
}

#[test]
fn damaged_records_on_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(dir.path()).expect("open"));
    damaged_records(store.clone());

    // A writer that died before publishing leaves only a temporary file: invisible, no error.
    let root = dir.path();
    let mut reader = LogReader::open_at(store.clone(), key(), 8);
    let w = LogWriter::claim(store.clone(), key(), "b").expect("claim");
    let fence_seq = w.next_seq() - 1;
    assert_eq!(
        reader.poll().expect("poll").iter().map(Record::seq).collect::<Vec<_>>(),
        (8..=fence_seq).collect::<Vec<_>>()
    );
    let mut half = record::encode(key(), &Record::Fence(Fence { seq: fence_seq + 1, epoch: 9, ..Fence::default() }));
    half.truncate(half.len() / 2);
    std::fs::write(root.join("log/.tmp-00000000deadbeef"), &half).expect("write temp");
    // Unrelated files in the log directory are ignored as well.
    std::fs::write(root.join("log/README"), b"not a record").expect("write");
    std::fs::write(root.join("log/00000000000000000042.rec.bak"), b"x").expect("write");
    assert!(reader.poll().expect("poll").is_empty());
    assert_eq!(store.list("log/").expect("list").len() as u64, fence_seq + 2, "records, README, .bak; no temp file");
}

#[test]
fn damaged_records_in_memory() {
    damaged_records(Arc::new(MemStore::new()));
}

#[test]
fn damaged_records_on_s3_server() {
    let Some(server) = S3Server::start_or_skip("damaged_records_on_s3_server") else { return };
    damaged_records(vmtier_repl::open_store(&server.config("damaged")).expect("open"));
}

/// Truncation frees old positions (fences included); a stale primary that wakes up afterwards
/// and finds its next position free is still refused.
fn stale_writer_after_truncation(store: Arc<dyn SharedStore>) {
    let mut model = Model::new();
    // A never committed; B fenced at 1, committed, truncated the fence away.
    let mut a = LogWriter::claim(store.clone(), key(), "a").expect("claim A");
    let mut b = LogWriter::claim(store.clone(), key(), "b").expect("claim B");
    assert_eq!(b.next_seq(), 2);
    b.commit(&ckpt(&mut model, &[ssd(1, 1)], true)).expect("2");
    assert_eq!(b.truncate_before(2).expect("truncate"), 1);
    assert_fenced(a.commit(&ckpt(&mut Model::new(), &[], true)), 1, 1, 2, "b");
    assert_fenced(a.commit(&ckpt(&mut Model::new(), &[], true)), 1, 1, 2, "b");
    // B committed further; C takes over and truncates B's fence and records away.
    b.commit(&ckpt(&mut model, &[ssd(2, 2)], false)).expect("3");
    let mut c = LogWriter::claim(store.clone(), key(), "c").expect("claim C");
    c.commit(&ckpt(&mut model, &[ssd(3, 3)], true)).expect("5");
    c.truncate_before(5).expect("truncate");
    assert_fenced(b.commit(&ckpt(&mut model.clone(), &[ssd(9, 9)], false)), 4, 2, 3, "c");
    assert_fenced(b.heartbeat(3), 4, 2, 3, "c");
    // The stray records the stale writers left below the truncation point are never read, and
    // the next truncation removes them.
    check_replica(&store, &model);
    c.commit(&ckpt(&mut model, &[ssd(4, 4)], true)).expect("6");
    c.truncate_before(6).expect("truncate");
    assert_eq!(store.list("log/").expect("list"), [log_key(6)]);
}

#[test]
fn stale_writer_after_truncation_on_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    stale_writer_after_truncation(Arc::new(DirStore::open(dir.path()).expect("open")));
}

#[test]
fn stale_writer_after_truncation_on_s3_server() {
    let Some(server) = S3Server::start_or_skip("stale_writer_after_truncation_on_s3_server") else { return };
    stale_writer_after_truncation(vmtier_repl::open_store(&server.config("trunc")).expect("open"));
}

fn put_record(store: &MemStore, r: Record) {
    assert_eq!(store.put_exclusive(&log_key(r.seq()), &record::encode(key(), &r)).expect("put"), Created::Yes);
}

fn ck(seq: u64, epoch: u64) -> Record {
    Record::Checkpoint(Checkpoint { seq, epoch, full: true, ..Checkpoint::default() })
}

fn fence(seq: u64, epoch: u64) -> Record {
    Record::Fence(Fence { seq, epoch, holder: "x".into(), ..Fence::default() })
}

#[test]
fn ordering_is_validated() {
    // Epochs never go back.
    let s = Arc::new(MemStore::new());
    for r in [ck(1, 2), ck(2, 1)] {
        put_record(&s, r);
    }
    let mut reader = LogReader::open_at(s.clone(), key(), 1);
    // The good record before the bad one is returned; the error comes next, and stays.
    assert_eq!(reader.poll().expect("poll").iter().map(Record::seq).collect::<Vec<_>>(), [1]);
    for _ in 0..2 {
        match reader.poll() {
            Err(LogError::EpochWentBack { key, epoch: 1, previous: 2 }) => assert_eq!(key, log_key(2)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reader.next_seq(), 2);

    // A checkpoint after a fence must be of the fence's epoch or newer.
    let s = Arc::new(MemStore::new());
    for r in [ck(1, 1), fence(2, 3), ck(3, 2)] {
        put_record(&s, r);
    }
    let mut reader = LogReader::open_at(s.clone(), key(), 1);
    assert_eq!(reader.poll().expect("poll").len(), 2);
    assert!(matches!(reader.poll(), Err(LogError::EpochWentBack { epoch: 2, previous: 3, .. })));

    // A fence must raise the epoch.
    let s = Arc::new(MemStore::new());
    for r in [ck(1, 2), fence(2, 2)] {
        put_record(&s, r);
    }
    let mut reader = LogReader::open_at(s.clone(), key(), 1);
    assert_eq!(reader.poll().expect("poll").len(), 1);
    assert!(matches!(reader.poll(), Err(LogError::FenceNotNewer { epoch: 2, previous: 2, .. })));

    // Contiguity: the reader stops at the first missing record.
    let s = Arc::new(MemStore::new());
    for r in [ck(1, 1), ck(2, 1)] {
        put_record(&s, r);
    }
    let mut reader = LogReader::open_at(s.clone(), key(), 1);
    assert_eq!(reader.poll().expect("poll").len(), 2);
    assert!(reader.poll().expect("poll").is_empty());
    put_record(&s, ck(3, 1));
    assert_eq!(reader.poll().expect("poll").iter().map(Record::seq).collect::<Vec<_>>(), [3]);

    // `open` starts at the newest full checkpoint.
    let s = Arc::new(MemStore::new());
    for r in [ck(1, 1), ck(2, 1), fence(3, 2)] {
        put_record(&s, r);
    }
    let delta = Record::Checkpoint(Checkpoint { seq: 4, epoch: 2, ..Checkpoint::default() });
    put_record(&s, delta);
    let mut reader = LogReader::open(s.clone(), key()).expect("open");
    assert_eq!(reader.next_seq(), 2);
    assert_eq!(reader.poll().expect("poll").iter().map(Record::seq).collect::<Vec<_>>(), [2, 3, 4]);
}

#[test]
fn commit_fills_and_checks_seq_and_epoch() {
    let store: Arc<dyn SharedStore> = Arc::new(MemStore::new());
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    let mut c = ckpt(&mut Model::new(), &[], true);
    c.seq = 5;
    assert!(matches!(w.commit(&c), Err(LogError::SeqMismatch { expected: 1, found: 5 })));
    c.seq = 1;
    c.epoch = 7;
    assert!(matches!(w.commit(&c), Err(LogError::EpochMismatch { expected: 1, found: 7 })));
    c.epoch = 1;
    assert_eq!(w.commit(&c).expect("explicit seq and epoch"), 1);
    c.seq = 0;
    c.epoch = 0;
    assert_eq!(w.commit(&c).expect("filled in"), 2);
    let rec = record::decode(key(), &log_key(2), &store.get(&log_key(2)).expect("get").expect("2")).expect("decode");
    assert_eq!((rec.seq(), rec.epoch()), (2, 1));
    assert!(!w.is_fenced(), "errors other than a taken position do not fence");
}

/// On a store with a settle time the newest record is held back until stable.
#[test]
fn newest_record_is_held_back_on_settling_stores() {
    let settle = Duration::from_millis(150);
    let store: Arc<dyn SharedStore> = Arc::new(MemStore::with_settle(settle));
    let mut model = Model::new();
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    let mut reader = LogReader::open(store.clone(), key()).expect("reader");
    w.commit(&ckpt(&mut model, &[ssd(1, 1)], true)).expect("1");
    assert!(reader.poll().expect("poll").is_empty(), "held");
    std::thread::sleep(settle);
    assert_eq!(reader.poll().expect("poll").len(), 1, "stable now");
    w.commit(&ckpt(&mut model, &[ssd(2, 2)], false)).expect("2");
    w.commit(&ckpt(&mut model, &[ssd(3, 3)], false)).expect("3");
    assert_eq!(reader.poll().expect("poll").iter().map(Record::seq).collect::<Vec<_>>(), [2], "3 is held");
    // Record 3 replaced while held (a racing writer on a non-atomic server): the clock restarts.
    std::thread::sleep(settle / 2);
    let replaced = record::encode(key(), &Record::Checkpoint(Checkpoint { seq: 3, epoch: 1, ..Checkpoint::default() }));
    store.put(&log_key(3), &replaced).expect("replace");
    std::thread::sleep(settle / 2 + Duration::from_millis(10));
    assert!(reader.poll().expect("poll").is_empty(), "changed: held again");
    std::thread::sleep(settle);
    let got = reader.poll().expect("poll");
    assert_eq!(got, [record::decode(key(), &log_key(3), &replaced).expect("decode")], "the final value");
}

#[test]
fn lease_watch_sees_the_heartbeat_stop() {
    let store: Arc<dyn SharedStore> = Arc::new(MemStore::new());
    let mut watch = LeaseWatch::new(Duration::from_millis(100));
    assert_eq!(watch.poll(&*store, key()).expect("poll"), LeaseStatus::Alive, "watch just started");
    let w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    for i in 0..5 {
        w.heartbeat(i).expect("beat");
        assert_eq!(watch.poll(&*store, key()).expect("poll"), LeaseStatus::Alive);
        std::thread::sleep(Duration::from_millis(40));
    }
    assert_eq!(watch.last().map(|h| h.counter), Some(5));
    std::thread::sleep(Duration::from_millis(110));
    assert!(matches!(watch.poll(&*store, key()).expect("poll"), LeaseStatus::Expired { .. }));
    // A damaged heartbeat is an error naming the key; the writer overwrites it.
    store.put(HEARTBEAT_KEY, b"garbage").expect("put");
    match watch.poll(&*store, key()) {
        Err(LogError::Corrupt { key, .. }) => assert_eq!(key, HEARTBEAT_KEY),
        other => panic!("{other:?}"),
    }
    w.heartbeat(9).expect("beat over garbage");
    assert_eq!(read_heartbeat(&*store, key()).expect("read").map(|h| h.last_committed), Some(9));
    // A heartbeat of a newer epoch fences the writer's heartbeat.
    let newer = Heartbeat { epoch: 5, holder: "z".into(), ..Heartbeat::default() };
    store.put(HEARTBEAT_KEY, &record::encode_heartbeat(key(), &newer)).expect("put");
    assert_fenced(w.heartbeat(10), w.next_seq(), 1, 5, "z");
    assert!(store.get(&epoch_key(1)).expect("get").is_some());
}

/// A store whose operations fail at random (`per_mille` of them), half before and half after
/// taking effect: the library's [`FaultyStore`] over a [`MemStore`].
fn faulty_store(seed: u64, per_mille: u64) -> FaultyStore {
    let plan = Arc::new(FaultPlan::new());
    let p = per_mille as f64 / 2000.0;
    plan.add(Rule::new(FaultKind::Eio).probability(p, seed));
    plan.add(Rule::new(FaultKind::EioAfter).probability(p, seed.rotate_left(17) ^ 0x5555));
    FaultyStore::new(Arc::new(MemStore::new()), plan)
}

fn vmtier_repl_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// Retries `f` while it fails with a store error (at most 1000 times).
fn retry<T>(mut f: impl FnMut() -> Result<T, LogError>) -> Result<T, LogError> {
    let mut last = None;
    for _ in 0..1000 {
        match f() {
            Err(e @ LogError::Store { .. }) => last = Some(e),
            r => return r,
        }
    }
    panic!("still failing after 1000 attempts: {:?}", last.map(|e| vmtier_repl_error_chain(&e)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Store faults (before or after the operation took effect) never corrupt the log: primaries
    /// hand over at random, every commit that returned Ok is in the log, a fenced writer never
    /// commits, and a reader replays exactly the map of the successful commits.
    #[test]
    fn faults_never_break_the_log(seed in any::<u64>(), steps in proptest::collection::vec((0u8..10, 0u32..32, any::<u32>()), 1..60)) {
        // 5% of operations fail (a claim makes ~10-30 of them).
        let faulty = Arc::new(faulty_store(seed, 50));
        let store: Arc<dyn SharedStore> = faulty.clone();
        let mut model = Model::new();
        let mut writers = 0;
        let mut w = retry(|| LogWriter::claim(store.clone(), key(), "w0")).expect("first claim");
        let mut stale: Vec<LogWriter> = Vec::new();
        retry(|| w.commit(&ckpt(&mut model.clone(), &[], true))).expect("first full");
        for (op, page, x) in steps {
            match op {
                0 => {
                    writers += 1;
                    let new = retry(|| LogWriter::claim(store.clone(), key(), &format!("w{writers}"))).expect("claim");
                    stale.push(std::mem::replace(&mut w, new));
                }
                1 => {
                    let before = model.clone();
                    let c = ckpt(&mut model, &[], true);
                    prop_assert!(retry(|| w.commit(&c)).is_ok());
                    prop_assert_eq!(before, model.clone());
                }
                2 => {
                    if let Some(full) = w.last_full() {
                        let _ = retry(|| w.truncate_before(full));
                    }
                }
                3 => { let _ = retry(|| w.heartbeat(w.next_seq() - 1)); }
                _ => {
                    let loc = if x % 5 == 0 { Location::Zero } else { Location::Ssd { store: 1, slot: x } };
                    let c = ckpt(&mut model, &[(page, loc, if loc == Location::Zero { 0 } else { x })], false);
                    prop_assert!(retry(|| w.commit(&c)).is_ok());
                }
            }
            // Every stale writer stays fenced.
            for s in &mut stale {
                let r = retry(|| s.commit(&ckpt(&mut model.clone(), &[(999, Location::Ssd { store: 1, slot: 1 }, 1)], false)));
                prop_assert!(matches!(r, Err(LogError::Fenced { .. })), "{:?}", r);
            }
        }
        // Replay without faults.
        let clean: Arc<dyn SharedStore> = Arc::new(MemStore::new());
        for k in faulty.inner().list("").expect("list") {
            clean.put(&k, &faulty.inner().get(&k).expect("get").expect("value")).expect("copy");
        }
        check_replica(&clean, &model);
    }
}

#[test]
fn verified_exclusive_writes_are_the_default_for_s3() {
    assert_eq!(ExclusiveWrites::default(), ExclusiveWrites::Verified { settle_ms: ExclusiveWrites::DEFAULT_SETTLE_MS });
}

/// Seals `body` as a log record at position `seq` with `key`, fixing the checksums but not the
/// MAC: what someone who can write the store but has no key can produce.
fn forge(good: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = good.to_vec();
    edit(&mut b);
    let end = b.len() - record::TRAILER_LEN;
    let body_len = (end - record::HEADER_LEN) as u64;
    b[16..24].copy_from_slice(&body_len.to_le_bytes());
    let bcrc = crc32c::crc32c(&b[record::HEADER_LEN..end]);
    b[24..28].copy_from_slice(&bcrc.to_le_bytes());
    let hcrc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&hcrc.to_le_bytes());
    b
}

/// The authentication suite (issue 6, item 6): a forged record, a record replayed at a newer
/// position, a rolled-back log and another cluster's key are each refused with an error naming
/// the record, and nothing of them reaches the replica.
#[test]
fn forged_replayed_and_rolled_back_records_are_refused() {
    let store: Arc<dyn SharedStore> = Arc::new(MemStore::new());
    let mut model = Model::new();
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    w.commit(&ckpt(&mut model, &[ssd(1, 1), ssd(2, 2)], true)).expect("1");
    w.commit(&ckpt(&mut model, &[ssd(2, 3)], false)).expect("2");
    let mut reader = LogReader::open_at(store.clone(), key(), 1);
    let mut map = ReplicaMap::new();
    for r in poll_to(&mut reader, 2) {
        map.apply_record(&r).expect("apply");
    }
    let before = map.get(2);

    // 1. A forged record at the next position: valid checksums, the page moved to slot 99.
    let two = store.get(&log_key(2)).expect("get").expect("2");
    let forged = forge(&two, |b| {
        let seq = 3u64.to_le_bytes();
        b[record::HEADER_LEN..record::HEADER_LEN + 8].copy_from_slice(&seq);
    });
    assert_eq!(store.put_exclusive(&log_key(3), &forged).expect("put"), Created::Yes);
    let err = reader.poll().expect_err("forged");
    match &err {
        LogError::Corrupt { key, source: RecordError::Forged { .. }, .. } => assert_eq!(key, &log_key(3)),
        other => panic!("expected a forged record, got {other:?}"),
    }
    assert!(err.to_string().contains(&log_key(3)), "{err}");
    assert_eq!(map.get(2), before, "nothing applied");
    // The primary, whose position it took, is fenced rather than overwriting it.
    assert!(matches!(w.commit(&ckpt(&mut model.clone(), &[ssd(1, 9)], false)), Err(LogError::Fenced { .. })));

    // 2. A replayed old checkpoint: record 1 (valid, full) written at position 3.
    let one = store.get(&log_key(1)).expect("get").expect("1");
    store.put(&log_key(3), &one).expect("put");
    match reader.poll() {
        Err(LogError::Corrupt { key, source: RecordError::Forged { .. }, .. }) => assert_eq!(key, log_key(3)),
        other => panic!("expected the replay refused, got {other:?}"),
    }
    // Re-sealed with its seq changed to 3 (checksums fixed), it fails the MAC all the same.
    let renumbered =
        forge(&one, |b| b[record::HEADER_LEN..record::HEADER_LEN + 8].copy_from_slice(&3u64.to_le_bytes()));
    store.put(&log_key(3), &renumbered).expect("put");
    assert!(matches!(reader.poll(), Err(LogError::Corrupt { source: RecordError::Forged { .. }, .. })));
    assert_eq!(map.get(2), before, "nothing applied");

    // 3. A log rolled back: records the reader has read disappear.
    store.delete(&log_key(3)).expect("delete");
    store.delete(&log_key(2)).expect("delete");
    match reader.poll() {
        Err(LogError::RolledBack { read: 2, head: Some(1) }) => {}
        other => panic!("expected RolledBack, got {other:?}"),
    }
    store.put(&log_key(2), &two).expect("restore");
    assert!(reader.poll().expect("restored").is_empty());

    // 4. Another cluster's key: every record is refused, naming the key.
    let theirs = ClusterKey::from_bytes(&[0x44; 32], "other.key").expect("key");
    let err = LogReader::open(store.clone(), &theirs).expect_err("wrong key");
    match &err {
        LogError::Corrupt { source: RecordError::WrongKey { found, ours, .. }, .. } => {
            assert_eq!((*found, *ours), (key().id(), theirs.id()));
        }
        other => panic!("expected WrongKey, got {other:?}"),
    }
    assert!(
        format!("{err:#}").contains("other.key")
            || std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("other.key")),
        "{err}"
    );
    assert!(matches!(read_heartbeat(&*store, &theirs), Ok(None) | Err(LogError::Corrupt { .. })));
}

/// A heartbeat copied back from earlier (a replay) does not keep a dead primary's lease alive.
#[test]
fn replayed_heartbeat_does_not_hold_the_lease() {
    let store: Arc<dyn SharedStore> = Arc::new(MemStore::new());
    let w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    let mut watch = LeaseWatch::new(Duration::from_millis(150));
    w.heartbeat(0).expect("beat");
    let old = store.get(HEARTBEAT_KEY).expect("get").expect("hb");
    assert_eq!(watch.poll(&*store, key()).expect("poll"), LeaseStatus::Alive);
    w.heartbeat(0).expect("beat");
    let newer = store.get(HEARTBEAT_KEY).expect("get").expect("hb");
    assert_eq!(watch.poll(&*store, key()).expect("poll"), LeaseStatus::Alive);
    // The primary stops; the old and newer heartbeats are written back in turn.
    let start = std::time::Instant::now();
    let status = loop {
        for hb in [&old, &newer] {
            store.put(HEARTBEAT_KEY, hb).expect("replay");
            let s = watch.poll(&*store, key()).expect("poll");
            if s != LeaseStatus::Alive {
                break;
            }
        }
        let s = watch.poll(&*store, key()).expect("poll");
        if s != LeaseStatus::Alive || start.elapsed() > Duration::from_secs(5) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(matches!(status, LeaseStatus::Expired { .. }), "replays kept the lease alive: {status:?}");
    assert!(watch.replays() > 0);
}

// ---------------------------------------------------------------------------------------------
// Storage faults under the log (the library's `FaultyStore` / `FaultyObjectStore` over real
// stores): a commit the store refuses is not acknowledged and loses nothing committed before;
// a damaged record is refused with an error naming it; slow storage does not cost the lease.

/// `inner` behind a `FaultyStore` with an empty plan.
fn with_faults(inner: Arc<dyn SharedStore>) -> (Arc<FaultyStore>, Arc<dyn SharedStore>) {
    let faulty = Arc::new(FaultyStore::new(inner, Arc::new(FaultPlan::new())));
    let store: Arc<dyn SharedStore> = faulty.clone();
    (faulty, store)
}

fn commit_faults(inner: Arc<dyn SharedStore>) {
    let (faulty, store) = with_faults(inner);
    let plan = faulty.plan();
    let mut model = Model::new();
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    w.commit(&ckpt(&mut model, &[ssd(1, 1), ssd(2, 2)], true)).expect("full");
    for (i, (kind, errno_text)) in
        [(FaultKind::Eio, "Input/output error"), (FaultKind::Enospc, "No space left on device")].into_iter().enumerate()
    {
        plan.add(Rule::new(kind).on(Op::Write).key_contains("log/").nth(1));
        let before = model.clone();
        let c = ckpt(&mut model, &[ssd(10 + i as u32, 10 + i as u32)], false);
        let seq = w.next_seq();
        let err = w.commit(&c).expect_err("the store refuses the commit");
        let chain = vmtier_repl_error_chain(&err);
        assert!(matches!(err, LogError::Store { .. }), "{chain}");
        assert!(chain.contains("cannot commit the checkpoint") && chain.contains(errno_text), "{chain}");
        assert!(chain.contains(&log_key(seq)), "the error names the record: {chain}");
        // Not acknowledged, not there; everything acknowledged before is.
        check_replica(&store, &before);
        assert_eq!(w.commit(&c).expect("commit again"), seq);
        check_replica(&store, &model);
    }
    // A lost acknowledgement: the record landed but the writer was told it failed. Committing
    // the same checkpoint again recognises it, at the same position.
    plan.add(Rule::new(FaultKind::EioAfter).on(Op::Write).key_contains("log/").nth(1));
    let c = ckpt(&mut model, &[ssd(20, 20)], false);
    let seq = w.next_seq();
    assert!(matches!(w.commit(&c), Err(LogError::Store { .. })));
    assert_eq!(w.commit(&c).expect("commit again"), seq);
    check_replica(&store, &model);
    // A failed heartbeat is an error and nothing more.
    plan.add(Rule::new(FaultKind::Eio).on(Op::Write).key_contains("lease/").nth(1));
    assert!(matches!(w.heartbeat(seq), Err(LogError::Store { .. })));
    w.heartbeat(seq).expect("next heartbeat");
    // Reads failing under a reader: an error, and the reader resumes where it was.
    let mut reader = LogReader::open(store.clone(), key()).expect("reader");
    let mut got = poll_to(&mut reader, w.next_seq() - 1);
    let c = ckpt(&mut model, &[ssd(21, 21)], false);
    let seq = w.commit(&c).expect("commit");
    plan.add(Rule::new(FaultKind::Eio).on(Op::Read).key_contains(log_key(seq)).nth(1));
    let mut errors = 0;
    while reader.next_seq() <= seq {
        match reader.poll() {
            Ok(r) => got.extend(r),
            Err(LogError::Store { .. }) => errors += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(errors < 100);
    }
    assert_eq!(errors, 1, "the reader reported the failed read");
    assert_eq!(got.last().map(Record::seq), Some(seq));
    assert_eq!(plan.injected(), 5);
    check_replica(&store, &model);
}

#[test]
fn commit_faults_in_memory() {
    commit_faults(Arc::new(MemStore::new()));
}

#[test]
fn commit_faults_on_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    commit_faults(Arc::new(DirStore::open(dir.path()).expect("open")));
}

#[test]
fn commit_faults_on_s3_server() {
    let Some(server) = S3Server::start_or_skip("commit_faults_on_s3_server") else { return };
    commit_faults(vmtier_repl::open_store(&server.config("commit-faults")).expect("open"));
}

/// A bit flipped in a record, on the way to the store or on the way back, is refused with an
/// error naming the record; the reader never applies it and never moves past it.
fn record_bit_flips(inner: Arc<dyn SharedStore>) {
    let (faulty, store) = with_faults(inner);
    let plan = faulty.plan();
    let mut model = Model::new();
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    w.commit(&ckpt(&mut model, &[ssd(1, 1)], true)).expect("full");
    let mut reader = LogReader::open(store.clone(), key()).expect("reader");
    let mut map = ReplicaMap::new();
    for r in poll_to(&mut reader, w.next_seq() - 1) {
        map.apply_record(&r).expect("apply");
    }
    // On the way back: every bit position the seeds pick is caught; the next clean read goes on.
    for seed in 0..24u64 {
        let c = ckpt(&mut model, &[ssd(2 + seed as u32, 100 + seed as u32)], false);
        let seq = w.commit(&c).expect("commit");
        plan.add(Rule::new(FaultKind::FlipBit).on(Op::Read).key_contains(log_key(seq)).probability(1.0, seed).times(1));
        expect_corrupt(&mut reader, seq, |_| {});
        assert_eq!(reader.next_seq(), seq, "the reader stays before the damaged record");
        for r in poll_to(&mut reader, seq) {
            map.apply_record(&r).expect("apply");
        }
    }
    let got: Model = map.iter().map(|(p, l, c)| (p, (l, c))).collect();
    assert_eq!(got, model);
    // On the way to the store (the write reports success): the damage is found by every reader,
    // which stays before it, with an error naming it.
    let good = model.clone();
    plan.add(Rule::new(FaultKind::FlipBit).on(Op::Write).key_contains("log/").nth(1));
    let seq = w.commit(&ckpt(&mut model, &[ssd(50, 50)], false)).expect("commit (damage unnoticed)");
    for _ in 0..3 {
        expect_corrupt(&mut reader, seq, |_| {});
        assert_eq!(reader.next_seq(), seq);
    }
    let err = reader.poll().expect_err("still damaged");
    assert!(err.to_string().contains("is damaged"), "{err}");
    let got: Model = map.iter().map(|(p, l, c)| (p, (l, c))).collect();
    assert_eq!(got, good, "nothing of the damaged record applied");
}

#[test]
fn record_bit_flips_in_memory() {
    record_bit_flips(Arc::new(MemStore::new()));
}

#[test]
fn record_bit_flips_on_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    record_bit_flips(Arc::new(DirStore::open(dir.path()).expect("open")));
}

/// The log on a really full file system (a 256 KiB tmpfs): commits fail with ENOSPC and are not
/// acknowledged, the committed log stays readable, and truncating old records makes room again.
#[test]
fn commits_on_a_full_file_system_stop_cleanly() {
    let mount = tempfile::tempdir().expect("tempdir");
    let Some(_tmpfs) = SmallTmpfs::mount(mount.path(), "256k", "commits_on_a_full_file_system_stop_cleanly") else {
        return;
    };
    let store: Arc<dyn SharedStore> = Arc::new(DirStore::open(mount.path().join("log")).expect("open"));
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    let mut model = Model::new();
    // Full checkpoints of 2000 pages (~30 KiB each) until the file system is full.
    let mut round = 0u32;
    let err = loop {
        round += 1;
        assert!(round < 100, "a 256 KiB file system never filled");
        let changes: Vec<_> = (0..2000).map(|p| ssd(p, p + round * 7)).collect();
        let before = model.clone();
        let c = ckpt(&mut model, &changes, true);
        match w.commit(&c) {
            Ok(_) => {}
            Err(e) => {
                model = before;
                break e;
            }
        }
    };
    let chain = vmtier_repl_error_chain(&err);
    assert!(matches!(err, LogError::Store { .. }) && chain.contains("No space left on device"), "{chain}");
    assert!(round > 2, "only {round} checkpoints fit");
    check_replica(&store, &model);
    // Room again: drop the records before the newest full checkpoint, commit again.
    let last_full = w.last_full().expect("a full checkpoint");
    assert!(w.truncate_before(last_full).expect("truncate") > 0);
    let changes: Vec<_> = (0..2000).map(|p| ssd(p, p + 999)).collect();
    w.commit(&ckpt(&mut model, &changes, true)).expect("commit after truncation");
    check_replica(&store, &model);
}

/// Watches the lease on its own thread every 10 ms until `stop`; returns the longest silence
/// seen and whether it ever expired.
fn watch_lease(
    store: Arc<dyn SharedStore>,
    timeout: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let mut watch = LeaseWatch::new(timeout);
        let mut expired = false;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(LeaseStatus::Expired { .. }) = watch.poll(&*store, key()) {
                expired = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        expired
    })
}

/// Commits slowed far beyond the lease do not cost it: the heartbeat runs on its own thread. A
/// latency spike on the heartbeat itself does: the lease expires, a new primary claims, and the
/// old one is fenced — a clean failover.
fn slow_storage_and_the_lease(faulty: Arc<FaultyStore>, store: Arc<dyn SharedStore>, lease: Duration) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let plan = faulty.plan();
    let mut model = Model::new();
    let mut a = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    let beater = a.heartbeater();
    beater.beat(0).expect("first beat");
    let stop_beats = Arc::new(AtomicBool::new(false));
    let beats = {
        let stop = stop_beats.clone();
        std::thread::spawn(move || {
            let mut fenced = None;
            while !stop.load(Relaxed) {
                match beater.beat(0) {
                    Err(e @ LogError::Fenced { .. }) => {
                        fenced = Some(e);
                        break;
                    }
                    Err(e) => panic!("{e}"),
                    Ok(()) => {}
                }
                std::thread::sleep(lease / 10);
            }
            fenced
        })
    };
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = watch_lease(store.clone(), lease, stop_watch.clone());
    // Three commits, each slowed to twice the lease.
    plan.add(Rule::new(FaultKind::Delay(lease * 2)).on(Op::Write).key_contains("log/"));
    let start = std::time::Instant::now();
    a.commit(&ckpt(&mut model, &[ssd(1, 1)], true)).expect("slow full");
    a.commit(&ckpt(&mut model, &[ssd(2, 2)], false)).expect("slow delta");
    a.commit(&ckpt(&mut model, &[ssd(3, 3)], false)).expect("slow delta");
    assert!(start.elapsed() >= lease * 6);
    stop_watch.store(true, Relaxed);
    assert!(!watcher.join().expect("watcher"), "the lease expired while commits were slow");
    plan.clear();
    // Now the heartbeat stalls for four leases: the lease expires and B takes over.
    plan.add(Rule::new(FaultKind::Delay(lease * 4)).on(Op::Write).key_contains("lease/"));
    let mut watch = LeaseWatch::new(lease);
    let deadline = std::time::Instant::now() + lease * 20;
    while !matches!(watch.poll(&*store, key()).expect("poll"), LeaseStatus::Expired { .. }) {
        assert!(std::time::Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(10));
    }
    plan.clear();
    let mut b = LogWriter::claim(store.clone(), key(), "b").expect("B claims");
    b.commit(&ckpt(&mut model.clone(), &[], true)).expect("B commits");
    assert!(matches!(a.commit(&ckpt(&mut model.clone(), &[ssd(4, 4)], false)), Err(LogError::Fenced { .. })));
    stop_beats.store(true, Relaxed);
    let fenced = beats.join().expect("heartbeat thread");
    assert!(
        fenced.is_none() || matches!(fenced, Some(LogError::Fenced { .. })),
        "A's heartbeat thread ends fenced or stopped: {fenced:?}"
    );
    assert!(matches!(a.heartbeat(3), Err(LogError::Fenced { .. })));
    check_replica(&store, &model);
}

#[test]
fn slow_storage_and_the_lease_in_memory() {
    let (faulty, store) = with_faults(Arc::new(MemStore::new()));
    slow_storage_and_the_lease(faulty, store, Duration::from_millis(300));
}

/// The S3 store over a `FaultyObjectStore` (slow or lost responses at the HTTP client's level).
fn faulty_s3(server: &S3Server, prefix: &str, plan: &Arc<FaultPlan>) -> Arc<dyn SharedStore> {
    let cfg = server.config(prefix);
    let (inner, path) = vmtier_storage::object::parse_store(&cfg).expect("s3 client");
    let wrapped = Arc::new(vmtier_storage::object::FaultyObjectStore::new(inner, plan.clone()));
    Arc::new(ObjectStoreShared::new(wrapped, path, ExclusiveWrites::default(), "faulty s3").expect("store"))
}

#[test]
fn slow_s3_responses_and_the_lease() {
    let Some(server) = S3Server::start_or_skip("slow_s3_responses_and_the_lease") else { return };
    let (faulty, store) = with_faults(vmtier_repl::open_store(&server.config("slow")).expect("open"));
    slow_storage_and_the_lease(faulty, store, Duration::from_millis(400));
    // Slow HTTP responses under the S3 client itself: a commit is slow, and right.
    let plan = Arc::new(FaultPlan::new());
    let store = faulty_s3(&server, "slow-http", &plan);
    let mut model = Model::new();
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    plan.add(Rule::new(FaultKind::Delay(Duration::from_millis(300))).on(Op::Write));
    let start = std::time::Instant::now();
    w.commit(&ckpt(&mut model, &[ssd(1, 1)], true)).expect("slow commit");
    assert!(start.elapsed() >= Duration::from_millis(300));
    plan.clear();
    check_replica(&store, &model);
}

/// A conditional PUT whose response is lost (it created the object, the client saw an error) in
/// a race: for a plain key, the writer that retries recognises its own object and the other
/// loses; for the log, a primary whose lost commit raced a new claim is fenced on retry, and the
/// new primary's log holds exactly one history.
#[test]
fn lost_conditional_write_in_a_race_on_s3_server() {
    let Some(server) = S3Server::start_or_skip("lost_conditional_write_in_a_race_on_s3_server") else { return };
    let plan = Arc::new(FaultPlan::new());
    let store = faulty_s3(&server, "lost", &plan);
    // The plain race.
    plan.add(Rule::new(FaultKind::EioAfter).on(Op::Write).key_contains("race/k").nth(1));
    assert!(store.put_exclusive("race/k", b"x").is_err(), "x's response is lost");
    assert_eq!(store.put_exclusive("race/k", b"y").expect("y"), Created::AlreadyExists, "y loses");
    assert_eq!(store.put_exclusive("race/k", b"x").expect("x again"), Created::Yes, "x recognises its object");
    assert_eq!(store.get("race/k").expect("get").as_deref(), Some(&b"x"[..]));
    // The log.
    let mut model = Model::new();
    let mut a = LogWriter::claim(store.clone(), key(), "a").expect("claim A");
    a.commit(&ckpt(&mut model, &[ssd(1, 1)], true)).expect("full");
    plan.add(Rule::new(FaultKind::EioAfter).on(Op::Write).key_contains("log/").nth(1));
    let c = ckpt(&mut model, &[ssd(2, 2)], false);
    let seq = a.next_seq();
    assert!(matches!(a.commit(&c), Err(LogError::Store { .. })), "A's commit response is lost");
    let mut b = LogWriter::claim(store.clone(), key(), "b").expect("claim B");
    assert_fenced(a.commit(&c), seq, 1, 2, "b");
    // B saw A's landed record as the log's head when it claimed: it is part of B's history.
    b.commit(&ckpt(&mut model, &[ssd(3, 3)], false)).expect("B commits");
    check_replica(&store, &model);
}

/// The S3 server stopped and restarted mid-run: a commit in flight when it stops either
/// completes once it is back (the client retries) or fails with a store error and succeeds when
/// committed again; nothing committed is lost.
#[test]
fn s3_server_restart_mid_run() {
    let Some(mut server) = S3Server::start_or_skip("s3_server_restart_mid_run") else { return };
    let store = vmtier_repl::open_store(&server.config("restart")).expect("open");
    let mut model = Model::new();
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    w.commit(&ckpt(&mut model, &[ssd(1, 1), ssd(2, 2)], true)).expect("full");
    w.commit(&ckpt(&mut model, &[ssd(3, 3)], false)).expect("delta");
    server.stop();
    let c = ckpt(&mut model, &[ssd(4, 4)], false);
    let c2 = c.clone();
    let inflight = std::thread::spawn(move || {
        let r = w.commit(&c2);
        (w, r)
    });
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let (mut w, r) = inflight.join().expect("commit thread");
    match r {
        Ok(_) => {}
        Err(e @ LogError::Store { .. }) => {
            eprintln!("commit while the server was down: {}", vmtier_repl_error_chain(&e));
            w.commit(&c).expect("commit again after the restart");
        }
        Err(e) => panic!("{e}"),
    }
    w.commit(&ckpt(&mut model, &[ssd(5, 5)], false)).expect("commit after the restart");
    check_replica(&store, &model);
}

/// A torn commit (half the record published, then ENOSPC), as a store without atomic publish
/// could leave it: the commit is not acknowledged, readers refuse the torn record with an error
/// naming it, everything committed before replays, and the writer, finding bytes that are not
/// its record at its position, stops (fenced) instead of writing past it.
#[test]
fn a_torn_commit_is_refused_and_loses_nothing_committed() {
    let (faulty, store) = with_faults(Arc::new(MemStore::new()));
    let mut model = Model::new();
    let mut w = LogWriter::claim(store.clone(), key(), "a").expect("claim");
    w.commit(&ckpt(&mut model, &[ssd(1, 1), ssd(2, 2)], true)).expect("full");
    w.commit(&ckpt(&mut model, &[ssd(3, 3)], false)).expect("delta");
    let committed = model.clone();
    let mut reader = LogReader::open(store.clone(), key()).expect("reader");
    let mut map = ReplicaMap::new();
    for r in poll_to(&mut reader, 2) {
        map.apply_record(&r).expect("apply");
    }
    faulty.plan().add(Rule::new(FaultKind::ShortWrite).on(Op::Write).key_contains("log/").nth(1));
    let c = ckpt(&mut model, &[ssd(4, 4)], false);
    let err = w.commit(&c).expect_err("torn commit");
    assert!(vmtier_repl_error_chain(&err).contains("No space left on device"), "{err}");
    expect_corrupt(&mut reader, 3, |_| {});
    let got: Model = map.iter().map(|(p, l, c)| (p, (l, c))).collect();
    assert_eq!(got, committed, "what was committed before is all there, nothing of the torn record");
    assert!(matches!(w.commit(&c), Err(LogError::Fenced { .. })), "the writer does not write past a torn record");
}
