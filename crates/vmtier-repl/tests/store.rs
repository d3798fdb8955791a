//! Behaviour tests of the shared store, written once ([`suite`]) and run against every backend:
//! a directory, memory, and a real S3-compatible server (`s3s-fs`; `VMTIER_SKIP_S3=1` skips).

#[path = "../../vmtier-storage/tests/common/s3.rs"]
mod s3;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use vmtier_repl::store::{Created, DirStore, ExclusiveWrites, MemStore, ObjectStoreShared, SharedStore, StoreError};
use vmtier_storage::object::ObjectConfig;

use crate::s3::S3Server;

/// `threads` writers race to create `key`, each with its own bytes. Returns the winners' ids.
fn race(store: &Arc<dyn SharedStore>, key: &str, threads: usize) -> Vec<usize> {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (store, barrier, key) = (store.clone(), barrier.clone(), key.to_string());
            std::thread::spawn(move || {
                let bytes = format!("writer {i} ").repeat(100 + i).into_bytes();
                barrier.wait();
                let r = store.put_exclusive(&key, &bytes).expect("put_exclusive");
                (r == Created::Yes).then_some(i)
            })
        })
        .collect();
    handles.into_iter().filter_map(|h| h.join().expect("writer thread")).collect()
}

/// The shared-store behaviour suite; `store` must be empty.
fn suite(store: Arc<dyn SharedStore>) {
    let what = store.describe();

    // get of a missing key; exclusive create; a second exclusive create is refused.
    assert_eq!(store.get("log/00000000000000000001.rec").expect("get"), None, "{what}");
    assert_eq!(store.put_exclusive("log/00000000000000000001.rec", b"one").expect("create"), Created::Yes);
    assert_eq!(store.put_exclusive("log/00000000000000000001.rec", b"two").expect("again"), Created::AlreadyExists);
    assert_eq!(store.get("log/00000000000000000001.rec").expect("get").as_deref(), Some(&b"one"[..]));

    // Exclusive create under 8 racing threads: exactly one wins, and its bytes are stored.
    for round in 0..3 {
        let key = format!("race/{round}");
        let winners = race(&store, &key, 8);
        assert_eq!(winners.len(), 1, "{what}: round {round}: winners {winners:?}");
        let expect = format!("writer {} ", winners[0]).repeat(100 + winners[0]).into_bytes();
        assert_eq!(store.get(&key).expect("get"), Some(expect), "{what}: the winner's bytes");
    }

    // put replaces (and creates).
    store.put("lease/heartbeat", b"beat 1").expect("put");
    store.put("lease/heartbeat", b"beat 2, longer").expect("put again");
    assert_eq!(store.get("lease/heartbeat").expect("get").as_deref(), Some(&b"beat 2, longer"[..]));
    store.put("lease/00000000000000000001.epoch", b"e1").expect("put");

    // list: sorted, by string prefix, nested keys included, no temp files.
    for k in ["log/00000000000000000003.rec", "log/00000000000000000002.rec", "logbook", "log/sub/x"] {
        store.put(k, k.as_bytes()).expect("put");
    }
    assert_eq!(
        store.list("log/").expect("list"),
        ["log/00000000000000000001.rec", "log/00000000000000000002.rec", "log/00000000000000000003.rec", "log/sub/x"]
    );
    assert_eq!(store.list("log/00000000000000000002").expect("list"), ["log/00000000000000000002.rec"]);
    assert_eq!(store.list("log").expect("list").len(), 5, "includes logbook");
    assert_eq!(store.list("lease/").expect("list"), ["lease/00000000000000000001.epoch", "lease/heartbeat"]);
    assert!(store.list("nothing/").expect("list").is_empty());
    let all = store.list("").expect("list all");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert_eq!(all.len(), 3 + 5 + 2, "{all:?}");

    // delete is idempotent.
    store.delete("log/00000000000000000002.rec").expect("delete");
    store.delete("log/00000000000000000002.rec").expect("delete again");
    store.delete("never/existed").expect("delete missing");
    assert_eq!(store.get("log/00000000000000000002.rec").expect("get"), None);
    assert_eq!(store.list("log/0").expect("list").len(), 2);
    // A deleted key can be created exclusively again.
    assert_eq!(store.put_exclusive("log/00000000000000000002.rec", b"2'").expect("recreate"), Created::Yes);

    // Invalid keys are refused with the key named.
    for bad in ["", "/abs", "a//b", ".tmp-1", "log/.tmp-1", "sp ace"] {
        let err = store.get(bad).expect_err(bad);
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{bad:?}: {err}");
        assert!(store.put(bad, b"x").is_err());
        assert!(store.put_exclusive(bad, b"x").is_err());
    }
    // Empty values are values.
    store.put("empty", b"").expect("put empty");
    assert_eq!(store.get("empty").expect("get").as_deref(), Some(&b""[..]));
}

#[test]
fn dir_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(dir.path().join("shared")).expect("open");
    // Temporary files (a crashed writer's leftovers) are never keys.
    std::fs::create_dir_all(dir.path().join("shared/log")).expect("mkdir");
    std::fs::write(dir.path().join("shared/log/.tmp-0123"), b"half a record").expect("write");
    std::fs::write(dir.path().join("shared/.tmp-4567"), b"x").expect("write");
    suite(Arc::new(store));
    // The keys are plain files; no temporary file is left behind by successful or refused writes.
    let root = dir.path().join("shared");
    assert_eq!(std::fs::read(root.join("lease/heartbeat")).expect("read"), b"beat 2, longer");
    let leftovers: Vec<_> = std::fs::read_dir(root.join("race/"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn dir_store_via_open_store_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("a/b").display());
    let store = vmtier_repl::open_store(&ObjectConfig::new(url)).expect("open file url");
    store.put("k", b"v").expect("put");
    assert!(dir.path().join("a/b/k").is_file());
    assert!(store.describe().contains("a/b"), "{}", store.describe());
}

#[test]
fn mem_store() {
    suite(Arc::new(MemStore::new()));
}

/// The object-store backend over a local directory (no server needed): the same semantics.
#[test]
fn object_store_over_local_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ObjectConfig::new(dir.path().to_string_lossy());
    let store = ObjectStoreShared::open(&cfg, ExclusiveWrites::Native).expect("open");
    suite(Arc::new(store));
}

#[test]
fn object_store_on_s3_server() {
    let Some(server) = S3Server::start_or_skip("object_store_on_s3_server") else { return };
    let mut cfg = server.config("vm-0/repl");
    cfg.secret_access_key = Some("hunter2-not-a-real-secret".into());
    // Wrong secret: requests fail, and no message carries the secret.
    let wrong = ObjectStoreShared::open(&cfg, ExclusiveWrites::default()).expect("open");
    let err = wrong.put("k", b"v").expect_err("wrong secret must fail");
    assert!(!format!("{err} {err:?} {}", wrong.describe()).contains("hunter2"), "{err:?}");
    let store = vmtier_repl::open_store(&server.config("vm-0/repl")).expect("open");
    assert_eq!(store.exclusive_settle(), Some(Duration::from_millis(ExclusiveWrites::DEFAULT_SETTLE_MS)));
    assert!(store.describe().contains("s3://vmtier-test/vm-0/repl"), "{}", store.describe());
    suite(store);
    // Keys land under the prefix.
    assert!(server.bucket_dir().join("vm-0/repl/lease/heartbeat").is_file());
}

/// What `s3s-fs` 0.14.1 does with `If-None-Match: *`, recorded for `docs/replication.md`.
///
/// - Sequentially it is honoured: a conditional PUT to an existing key gets `412 Precondition
///   Failed` (the crate's `AlreadyExists`) and the object is unchanged.
/// - Under racing PUTs it is not atomic (the check is a file-exists test before the body is
///   streamed; the write is a later rename), so several racers can all get `200`. That is why
///   `ExclusiveWrites::Verified` is the default. The test prints how many won each round; it only
///   asserts that at least one did and that the object holds one writer's complete bytes.
#[test]
fn s3s_fs_if_none_match_behaviour() {
    let Some(server) = S3Server::start_or_skip("s3s_fs_if_none_match_behaviour") else { return };
    let cfg = server.config("probe");
    let (raw, prefix) = vmtier_storage::object::parse_store(&cfg).expect("parse");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let path = prefix.clone().join("k");
    let create = |body: &'static [u8]| {
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        rt.block_on(raw.put_opts(&path, PutPayload::from_static(body), opts))
    };
    create(b"first").expect("create on a free key");
    let err = create(b"second").expect_err("create on an existing key");
    assert!(matches!(err, object_store::Error::AlreadyExists { .. }), "{err:?}");
    let got = rt.block_on(async { raw.get(&path).await.expect("get").bytes().await.expect("body") });
    assert_eq!(&got[..], b"first");

    // Racing conditional PUTs straight against the server.
    let mut multi = 0;
    for round in 0..10 {
        let path = prefix.clone().join(format!("race-{round}"));
        let bodies: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; 64 << 10]).collect();
        let wins = rt.block_on(async {
            let puts = bodies.iter().map(|b| {
                let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
                raw.put_opts(&path, PutPayload::from(b.clone()), opts)
            });
            futures::future::join_all(puts).await.into_iter().filter(|r| r.is_ok()).count()
        });
        let got = rt.block_on(async { raw.get(&path).await.expect("get").bytes().await.expect("body") });
        assert!(bodies.iter().any(|b| b[..] == got[..]), "object holds one writer's complete bytes");
        assert!(wins >= 1);
        if wins > 1 {
            multi += 1;
        }
        eprintln!("s3s-fs race round {round}: {wins} of 8 conditional PUTs succeeded");
    }
    eprintln!("s3s-fs: {multi} of 10 rounds had more than one winner (If-None-Match is not atomic)");
}

/// The settle-and-verify mode costs one settle time per exclusive write, and nothing otherwise.
#[test]
fn verified_mode_costs_one_settle_per_exclusive_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ObjectConfig::new(dir.path().to_string_lossy());
    let store = ObjectStoreShared::open(&cfg, ExclusiveWrites::Verified { settle_ms: 100 }).expect("open");
    let t = Instant::now();
    assert_eq!(store.put_exclusive("a", b"1").expect("create"), Created::Yes);
    assert!(t.elapsed() >= Duration::from_millis(100));
    let t = Instant::now();
    assert_eq!(store.put_exclusive("a", b"2").expect("refused"), Created::AlreadyExists);
    store.put("b", b"1").expect("put");
    assert!(t.elapsed() < Duration::from_millis(100), "refusals and plain puts do not settle");
    // Re-creating with identical bytes (a retried request that had landed) counts as ours.
    assert_eq!(store.put_exclusive("a", b"1").expect("same bytes"), Created::Yes);
}
