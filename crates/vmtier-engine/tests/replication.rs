//! Checkpoints for replication through shared storage: the map a checkpoint produces (page →
//! stored copy) always reads back as guest memory at the checkpoint, and keeps doing so while
//! the engine goes on evicting, moving and rewriting pages — until a later checkpoint commits.
//! Aborted checkpoints free their own copies and nothing else; nothing leaks.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use vmtier_engine::{
    ADOPT_AFTER_QUIET_CAPTURES, DeltaPage, Engine, EngineConfig, EngineError, Home, Inheritance, InheritedPages,
    PAGE_SIZE, Tier,
};
use vmtier_storage::segment;
use vmtier_uffd::Memfd;

use common::{TestAuth, check_page, config, page_bytes, read_host, retry_busy, with_deadline, write_page};

/// The replica's view: page → (stored copy, crc), as the log's checkpoints build it.
type ReplicaMap = HashMap<u32, (Home, u32)>;

fn apply(map: &mut ReplicaMap, delta: &[DeltaPage]) {
    for d in delta {
        map.insert(d.page, (d.home, d.crc));
    }
}

/// Reads a stored copy the way a secondary does: straight from the shared files.
fn read_stored(cfg: &EngineConfig, home: Home) -> Vec<u8> {
    let mut out = vec![0u8; PAGE_SIZE];
    let (path, offset) = match home {
        Home::Zero => return out,
        Home::Inherited => panic!("the first primary inherits nothing"),
        Home::Ssd(slot) => {
            let spf = cfg.tier2.slots_per_file;
            (cfg.tier2.dir.join(format!("slots-{:05}.dat", slot.0 / spf)), u64::from(slot.0 % spf) * PAGE_SIZE as u64)
        }
        Home::Object(loc) => (
            std::path::Path::new(&cfg.tier3.url).join(format!("seg-{:08x}.vts", loc.segment)),
            segment::page_offset(loc.index),
        ),
    };
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.read_exact_at(&mut out, offset).unwrap_or_else(|e| panic!("read {}@{offset}: {e}", path.display()));
    out
}

/// Checks that every page of `map` reads back as `model` (value per page, 0 = zeros).
fn check_map(cfg: &EngineConfig, map: &ReplicaMap, model: &[u64], when: &str) {
    for (page, &value) in model.iter().enumerate() {
        let (home, crc) = map.get(&(page as u32)).copied().unwrap_or((Home::Zero, 0));
        let got = read_stored(cfg, home);
        let want = if value == 0 { vec![0u8; PAGE_SIZE] } else { page_bytes(page, value) };
        assert!(got == want, "{when}: page {page} at {home:?} does not hold value {value:#x}");
        if home != Home::Zero {
            assert_eq!(crc32c::crc32c(&got), crc, "{when}: page {page} crc");
        }
    }
}

fn checkpoint(engine: &Engine, commit: bool) -> Vec<DeltaPage> {
    let cap = engine.capture().expect("capture");
    let delta = engine.persist(cap).expect("persist");
    engine.finish_checkpoint(commit).expect("finish");
    delta
}

/// A checkpoint in dirty-log mode, `written` being the guest's writes since the last one.
fn logged_checkpoint(engine: &Engine, written: &[u64]) -> Vec<DeltaPage> {
    let cap = engine.capture_logged(written).expect("capture_logged");
    let delta = engine.persist(cap).expect("persist");
    engine.finish_checkpoint(true).expect("commit");
    delta
}

fn replicating(pages: u64, dram: u64) -> (EngineConfig, tempfile::TempDir) {
    let (mut cfg, dir) = config(pages, dram);
    cfg.replicate = true;
    (cfg, dir)
}

#[test]
fn committed_checkpoint_reads_back_while_the_engine_moves_on() {
    let (cfg, _dir) = replicating(256, 64);
    let engine = Engine::start(cfg.clone()).expect("start");
    let mem = engine.guest_words();
    let mut model = vec![0u64; 256];
    for (p, value) in model.iter_mut().enumerate().take(200) {
        write_page(mem, p, 1);
        *value = 1;
    }
    // The first checkpoint is the whole map.
    let mut map = ReplicaMap::new();
    let d1 = checkpoint(&engine, true);
    assert_eq!(d1.len(), 256, "first checkpoint covers every page");
    apply(&mut map, &d1);
    check_map(&cfg, &map, &model, "checkpoint 1");
    let (model1, map1) = (model.clone(), map.clone());

    // The engine moves on: rewrites, evictions (DRAM is 64 pages), moves to tier 3.
    let mut touched = BTreeSet::new();
    for round in 2..5u64 {
        for p in (0..256).step_by(round as usize) {
            write_page(mem, p, round);
            model[p] = round;
            touched.insert(p as u32);
        }
    }
    for p in 150..180 {
        if retry_busy("move", || engine.move_page(p, Tier::Object)).unwrap() {
            touched.insert(p as u32);
        }
    }
    // Checkpoint 1 is untouched by all that.
    check_map(&cfg, &map1, &model1, "checkpoint 1 after later activity");

    // Checkpoint 2 carries exactly what changed, and reads back as memory now.
    let d2 = checkpoint(&engine, true);
    let in_delta: BTreeSet<u32> = d2.iter().map(|d| d.page).collect();
    assert_eq!(in_delta, touched, "the delta is not the set of changed pages");
    apply(&mut map, &d2);
    check_map(&cfg, &map, &model, "checkpoint 2");
    let (model2, map2) = (model.clone(), map.clone());

    // An aborted checkpoint leaves checkpoint 2 as it was.
    for (p, value) in model.iter_mut().enumerate().take(40) {
        write_page(mem, p, 9);
        *value = 9;
    }
    let d3 = checkpoint(&engine, false);
    assert!(d3.len() >= 40, "the 40 rewritten pages are not all in the delta");
    check_map(&cfg, &map2, &model2, "checkpoint 2 after an aborted one");
    // What the aborted checkpoint took goes into the next one.
    let d4 = checkpoint(&engine, true);
    assert!(d4.len() >= 40, "the aborted checkpoint's pages are not all in the next one");
    apply(&mut map, &d4);
    check_map(&cfg, &map, &model, "checkpoint after the aborted one");
    let map2 = map.clone();

    // A clean page whose checkpoint copy was adopted evicts without a write.
    let adopted = engine.snapshot().checkpoint_adopted;
    assert!(adopted > 0, "no captured copy was adopted");

    // No leak: every live tier-2 slot is the engine's or the committed replica's.
    let mut referenced = BTreeSet::new();
    for p in 0..256 {
        if let Home::Ssd(s) = engine.page(p).unwrap().home() {
            referenced.insert(s);
        }
        if let Some((Home::Ssd(s), _)) = map2.get(&(p as u32)) {
            referenced.insert(*s);
        }
    }
    assert_eq!(engine.snapshot().tier2_live_slots, referenced.len() as u64, "tier-2 slots leaked or lost");
}

#[test]
fn capture_needs_replication_and_one_checkpoint_at_a_time() {
    let (cfg, _dir) = config(64, 64);
    let engine = Engine::start(cfg).expect("start");
    assert!(engine.capture().is_err(), "capture without replicate");
    let (cfg, _dir) = replicating(64, 64);
    let engine = Engine::start(cfg).expect("start");
    let cap = engine.capture().expect("capture");
    assert!(engine.capture().is_err(), "second capture while one is in flight");
    engine.persist(cap).expect("persist");
    engine.finish_checkpoint(true).expect("commit");
    engine.capture().expect("capture after commit");
}

/// A guest writing all the time, paused only for each capture: every committed checkpoint
/// reads back as memory at its pause, under steady eviction.
#[test]
fn checkpoints_under_a_running_writer() {
    running_writer(false);
}

/// The same with the MTM moving pages and sampling accesses: a sampled page comes back through
/// a MINOR fault, which must not map a captured page writable.
#[test]
fn checkpoints_under_a_running_writer_with_sampling() {
    running_writer(true);
}

/// Dirty-log mode under the same writer, with sampling, and with hot pages evicted between each
/// checkpoint's persist and the next capture: a copy adopted although the page was written
/// after its capture would lose that write there.
#[test]
fn logged_checkpoints_under_a_running_writer() {
    running_writer_logged(true);
}

fn running_writer(mtm: bool) {
    running_writer_in(mtm, false);
}

fn running_writer_logged(mtm: bool) {
    running_writer_in(mtm, true);
}

/// The dirty log of the in-process guest: one bit per page, set after each write.
struct WriteLog(Vec<AtomicU64>);

impl WriteLog {
    fn new(pages: usize) -> Self {
        Self((0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    fn note(&self, page: usize) {
        self.0[page / 64].fetch_or(1 << (page % 64), Ordering::Relaxed);
    }

    /// The pages written since the last call, clearing the log (as `KVM_GET_DIRTY_LOG` does).
    fn take(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (w, word) in self.0.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                out.push(w as u64 * 64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
        out
    }
}

fn running_writer_in(mtm: bool, logged: bool) {
    with_deadline("checkpoints under a running writer", Duration::from_secs(120), move || {
        const PAGES: usize = 512;
        let (mut cfg, _dir) = replicating(PAGES as u64, 96);
        if mtm {
            cfg.mtm.enabled = true;
            cfg.mtm.tick_ms = 10;
            cfg.mtm.headroom_pages = 8;
            cfg.tracker.sample_pages_per_sec = 50_000;
        }
        let engine = Arc::new(Engine::start(cfg.clone()).expect("start"));
        let model: Arc<Vec<AtomicU64>> = Arc::new((0..PAGES).map(|_| AtomicU64::new(0)).collect());
        // The guest holds the read side while it writes a page; a pause takes the write side.
        let pause = Arc::new(RwLock::new(()));
        let stop = Arc::new(AtomicU64::new(0));
        let log = Arc::new(WriteLog::new(PAGES));
        let writer = {
            let (engine, model, pause, stop, log) =
                (engine.clone(), model.clone(), pause.clone(), stop.clone(), log.clone());
            std::thread::spawn(move || {
                let mem = engine.guest_words();
                let mut x = 0x1234_5678u64;
                let mut version = 1u64;
                while stop.load(Ordering::Relaxed) == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Hot head, cold tail: most writes hit the first 64 pages.
                    let p = if !x.is_multiple_of(4) { (x >> 8) as usize % 64 } else { (x >> 8) as usize % PAGES };
                    let _g = pause.read().unwrap();
                    version += 1;
                    // Read before writing, as guests do: a read fault (or a sampling MINOR
                    // fault) may map the page before the write reaches it.
                    std::hint::black_box(mem[p * common::WORDS].load(Ordering::Relaxed));
                    write_page(mem, p, version);
                    log.note(p);
                    model[p].store(version, Ordering::Relaxed);
                }
            })
        };
        let mut map = ReplicaMap::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut checkpoints = 0;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let (cap, at_pause) = {
                let _paused = pause.write().unwrap();
                let cap = if logged {
                    engine.capture_logged(&log.take()).expect("capture_logged")
                } else {
                    engine.capture().expect("capture")
                };
                (cap, model.iter().map(|v| v.load(Ordering::Relaxed)).collect::<Vec<_>>())
            };
            let delta = engine.persist(cap).expect("persist");
            engine.finish_checkpoint(true).expect("commit");
            if logged {
                // Hot pages leave DRAM while the guest runs on: clean ones without a write.
                for p in (checkpoints % 8..64).step_by(8) {
                    let _ = engine.move_page(p, Tier::Ssd);
                }
            }
            apply(&mut map, &delta);
            check_map(&cfg, &map, &at_pause, &format!("checkpoint {}", checkpoints + 1));
            checkpoints += 1;
        }
        stop.store(1, Ordering::Relaxed);
        writer.join().expect("writer");
        assert!(checkpoints >= 10, "only {checkpoints} checkpoints in 3 s");
        let s = engine.snapshot();
        assert!(s.demotions > 0, "the test needs eviction during checkpoints");
        // No write was lost on the way either.
        let mem = engine.guest_words();
        for (p, v) in model.iter().enumerate() {
            check_page(mem, p, v.load(Ordering::Relaxed));
        }
        eprintln!(
            "{checkpoints} checkpoints, logged={logged}: wp faults {}, adopted {}, demotions {}",
            s.write_faults, s.checkpoint_adopted, s.demotions
        );
    });
}

/// Dirty-log mode: a page adopts its checkpoint copy (becomes clean) only after
/// `ADOPT_AFTER_QUIET_CAPTURES` captures in a row found it unwritten; a write in between starts
/// the count again; an adopted page's next write is seen by a WP fault and goes into the next
/// checkpoint. Modes do not mix.
#[test]
fn logged_capture_adopts_only_pages_quiet_long_enough() {
    const PAGES: usize = 64;
    let n = usize::from(ADOPT_AFTER_QUIET_CAPTURES);
    let (cfg, _dir) = replicating(PAGES as u64, PAGES as u64);
    let engine = Engine::start(cfg.clone()).expect("start");
    let mem = engine.guest_words();
    let mut model = vec![0u64; PAGES];
    for (p, value) in model.iter_mut().enumerate().take(32) {
        write_page(mem, p, 1);
        *value = 1;
    }
    let mut map = ReplicaMap::new();
    let first: Vec<u64> = (0..32).collect();
    apply(&mut map, &logged_checkpoint(&engine, &first));
    check_map(&cfg, &map, &model, "logged checkpoint 1");
    assert!(matches!(engine.capture(), Err(EngineError::CaptureMode { .. })), "capture() after capture_logged()");
    assert!(matches!(engine.capture_logged(&[PAGES as u64]), Err(EngineError::NoSuchPage { .. })));
    let adopted = || engine.snapshot().checkpoint_adopted;
    for k in 2..=n {
        let mut written = Vec::new();
        if k == 4 {
            // Page 3 is rewritten: no fault (it stays writable), only the log tells.
            let wp = engine.snapshot().write_faults;
            write_page(mem, 3, 2);
            model[3] = 2;
            assert_eq!(engine.snapshot().write_faults, wp, "a captured page was write-protected in dirty-log mode");
            written.push(3);
        }
        let delta = logged_checkpoint(&engine, &written);
        assert_eq!(delta.iter().map(|d| d.page as u64).collect::<Vec<_>>(), written, "checkpoint {k}");
        apply(&mut map, &delta);
        check_map(&cfg, &map, &model, &format!("logged checkpoint {k}"));
        assert_eq!(adopted(), 0, "a copy adopted after {} quiet captures", k - 1);
        assert!(engine.page(0).unwrap().dirty());
    }
    // The 10th quiet capture adopts the 31 cold pages' committed copies as their homes: they
    // turn clean and write-protected, with no second copy and nothing in the checkpoint.
    let written_before = engine.snapshot().tier2_bytes_written;
    let delta = logged_checkpoint(&engine, &[]);
    assert!(delta.is_empty(), "adopted pages travelled again: {delta:?}");
    assert_eq!(engine.snapshot().tier2_bytes_written, written_before, "an adopted page was copied again");
    check_map(&cfg, &map, &model, "checkpoint of the adoption");
    assert_eq!(adopted(), 31);
    assert!(!engine.page(0).unwrap().dirty() && engine.page(3).unwrap().dirty());
    for p in (0..32u32).filter(|&p| p != 3) {
        let v = engine.page(p as usize).unwrap();
        assert_eq!((v.home(), v.crc), map[&p], "page {p}: its home is not the replica's copy");
    }
    // Page 3 goes quiet too, three captures later (its count restarted at checkpoint 4).
    for _ in 0..3 {
        apply(&mut map, &logged_checkpoint(&engine, &[]));
    }
    assert_eq!(adopted(), 32);
    // An adopted page is write-protected again: its next write faults, and is in the next
    // checkpoint even if the caller's log missed it.
    let wp = engine.snapshot().write_faults;
    write_page(mem, 7, 3);
    model[7] = 3;
    assert_eq!(engine.snapshot().write_faults, wp + 1, "an adopted page was not write-protected");
    assert!(engine.page(7).unwrap().dirty());
    let delta = logged_checkpoint(&engine, &[]);
    assert_eq!(delta.iter().map(|d| d.page).collect::<Vec<_>>(), vec![7]);
    apply(&mut map, &delta);
    check_map(&cfg, &map, &model, "checkpoint after a write to an adopted page");
    for (p, &v) in model.iter().enumerate() {
        check_page(mem, p, v);
    }
}

#[test]
fn write_protect_capture_refuses_dirty_log_mode_after_it() {
    let (cfg, _dir) = replicating(64, 64);
    let engine = Engine::start(cfg).expect("start");
    checkpoint(&engine, true);
    let err = engine.capture_logged(&[]).expect_err("capture_logged() after capture()");
    assert!(matches!(err, EngineError::CaptureMode { .. }), "{err}");
    assert!(err.to_string().contains("capture_logged"), "{err}");
}

/// The failed primary's checkpoint, read from its files as a secondary would.
#[derive(Debug)]
struct Inherited {
    cfg: EngineConfig,
    map: ReplicaMap,
}

impl InheritedPages for Inherited {
    fn read(&self, page: u64, out: &mut [u8]) -> std::io::Result<()> {
        let (home, crc) = self.map.get(&(page as u32)).copied().unwrap_or((Home::Zero, 0));
        let bytes = read_stored(&self.cfg, home);
        if home != Home::Zero && crc32c::crc32c(&bytes) != crc {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("page {page}: crc mismatch")));
        }
        out.copy_from_slice(&bytes);
        Ok(())
    }

    fn crc(&self, page: u64) -> Option<u32> {
        self.map.get(&(page as u32)).filter(|(h, _)| *h != Home::Zero).map(|&(_, crc)| crc)
    }
}

/// A new primary started from the committed checkpoint sees memory exactly as it was at that
/// checkpoint (not the failed primary's later, uncommitted writes); its warm pages cost no
/// I/O; written pages leave the inherited store for its own.
#[test]
fn failover_starts_from_the_committed_checkpoint() {
    const PAGES: usize = 128;
    let (cfg, _dir) = replicating(PAGES as u64, 64);
    let primary = Engine::start(cfg.clone()).expect("start primary");
    let mem = primary.guest_words();
    let mut model = vec![0u64; PAGES];
    for (p, value) in model.iter_mut().enumerate().take(100) {
        write_page(mem, p, 7);
        *value = 7;
    }
    let mut map = ReplicaMap::new();
    apply(&mut map, &checkpoint(&primary, true));
    let at_checkpoint = primary.content_crcs().expect("content crcs");
    // Written after the last commit: lost with the primary, as they must be.
    for p in 0..10 {
        write_page(mem, p, 99);
    }
    let stored: Vec<u32> = map.iter().filter(|(_, (h, _))| *h != Home::Zero).map(|(&p, _)| p).collect();
    assert_eq!(stored.len(), 100);
    // The secondary's warm set: 30 of the stored pages, already in its memory file.
    let memfd = Memfd::create("warm", cfg.memory.0).expect("memfd");
    let warm: Vec<(u32, u8)> = (50..80).map(|p| (p, 90)).collect();
    let source = Inherited { cfg: cfg.clone(), map: map.clone() };
    for &(p, _) in &warm {
        let mut buf = vec![0u8; PAGE_SIZE];
        source.read(u64::from(p), &mut buf).expect("read warm page");
        memfd.write_at(&buf, p as u64 * PAGE_SIZE as u64).expect("fill warm page");
    }
    let (mut cfg2, _dir2) = replicating(PAGES as u64, 64);
    cfg2.fault.handler_threads = 1;
    let inh =
        Inheritance { memfd, warm: warm.clone(), stored, source: std::sync::Arc::new(source), logged_writes: false };
    let engine = Engine::start_inherited(cfg2, inh).expect("start inherited");
    assert_eq!(engine.snapshot().resident_bytes, (warm.len() * PAGE_SIZE) as u64, "warm pages resident at start");
    // Warm pages checksummed from DRAM, inherited ones by their copies' crcs, the rest as zeros:
    // the memory of the checkpoint, page for page.
    assert_eq!(engine.content_crcs().expect("content crcs"), at_checkpoint, "not the checkpoint's memory");
    let mem = engine.guest_words();
    // Warm pages first (the others would push them out of the 64-page DRAM): no I/O for them.
    for &(p, _) in &warm {
        check_page(mem, p as usize, model[p as usize]);
    }
    let s = engine.snapshot();
    assert_eq!((s.faults, s.bytes_read), (0, 0), "warm pages were faulted in again");
    assert_eq!(s.sample_faults, 0, "warm pages were not mapped before the guest's first touch");
    // The first write of a warm (clean) page is still seen.
    write_page(mem, 55, 7);
    assert_eq!(engine.snapshot().write_faults, 1, "a warm page was mapped writable");
    assert!(engine.page(55).unwrap().dirty());
    for (p, &value) in model.iter().enumerate() {
        check_page(mem, p, value);
    }
    let s = engine.snapshot();
    assert_eq!(s.bytes_read, ((100 - warm.len()) * PAGE_SIZE) as u64, "warm pages were read again");
    assert_eq!(s.tier2_hits, (100 - warm.len()) as u64);
    // Written pages go to the new primary's own store; inherited copies stay as they were.
    write_page(mem, 60, 8);
    write_page(mem, 10, 8);
    for p in [60, 10] {
        assert!(retry_busy("evict", || engine.move_page(p, Tier::Ssd)).unwrap());
        assert!(matches!(engine.page(p).unwrap().home(), Home::Ssd(_)));
        assert_eq!(read_host(&engine, p).unwrap(), page_bytes(p, 8));
    }
    // A clean inherited page is dropped without a write and comes back from the old store.
    check_page(mem, 70, 7);
    assert!(retry_busy("evict", || engine.move_page(70, Tier::Ssd)).unwrap());
    assert_eq!(engine.page(70).unwrap().home(), Home::Inherited);
    check_page(mem, 70, 7);
    // The new primary's first checkpoint is the full map, inherited pages included.
    let delta = checkpoint(&engine, true);
    assert_eq!(delta.len(), PAGES);
    assert!(delta.iter().any(|d| d.home == Home::Inherited));
}

/// What a new primary starts from: a failed primary's committed checkpoint of pages `0..100`,
/// each holding `value`, in a guest of `pages` pages (its config and tiers in `cfg`/`_dir`), and
/// a secondary's memory file holding the pages `warm` of it.
struct Failover {
    cfg: EngineConfig,
    _dir: tempfile::TempDir,
    map: ReplicaMap,
    stored: Vec<u32>,
    memfd: Memfd,
    warm: Vec<(u32, u8)>,
}

fn failover(pages: usize, value: u64, warm: std::ops::Range<u32>) -> Failover {
    let (cfg, dir) = replicating(pages as u64, 128);
    let primary = Engine::start(cfg.clone()).expect("start primary");
    let mem = primary.guest_words();
    for p in 0..100 {
        write_page(mem, p, value);
    }
    let mut map = ReplicaMap::new();
    apply(&mut map, &checkpoint(&primary, true));
    drop(primary);
    let stored: Vec<u32> = map.iter().filter(|(_, (h, _))| *h != Home::Zero).map(|(&p, _)| p).collect();
    let source = Inherited { cfg: cfg.clone(), map: map.clone() };
    let memfd = Memfd::create("warm", cfg.memory.0).expect("memfd");
    let warm: Vec<(u32, u8)> = warm.map(|p| (p, 90)).collect();
    for &(p, _) in &warm {
        let mut buf = vec![0u8; PAGE_SIZE];
        source.read(u64::from(p), &mut buf).expect("read warm page");
        memfd.write_at(&buf, p as u64 * PAGE_SIZE as u64).expect("fill warm page");
    }
    Failover { cfg, _dir: dir, map, stored, memfd, warm }
}

/// A new primary whose checkpoints read a dirty log (`logged_writes`) maps its warm pages
/// writable: the guest's first writes cost no fault; a capture copies only the pages its log
/// names, and sends the others as their inherited copies; an unnamed page still counts as dirty
/// when evicted (its content is written, not assumed); write-protect captures are refused.
#[test]
fn logged_warm_pages_are_writable_and_sent_as_inherited_until_the_log_names_them() {
    const PAGES: usize = 128;
    let Failover { cfg, _dir, map, stored, memfd, warm } = failover(PAGES, 7, 0..30);
    let (cfg2, _dir2) = replicating(PAGES as u64, 128);
    let source = std::sync::Arc::new(Inherited { cfg, map });
    let inh = Inheritance { memfd, warm, stored, source, logged_writes: true };
    let engine = Engine::start_inherited(cfg2, inh).expect("start inherited");
    let mem = engine.guest_words();
    write_page(mem, 5, 8);
    check_page(mem, 6, 7);
    let s = engine.snapshot();
    assert_eq!((s.faults, s.write_faults, s.sample_faults), (0, 0, 0), "a warm page's first write faulted");
    assert!(matches!(engine.capture(), Err(vmtier_engine::EngineError::CaptureMode { .. })));
    // The log names page 5 only: it is copied, every other warm page is sent as inherited.
    let delta = logged_checkpoint(&engine, &[5]);
    let home = |p: u32| delta.iter().find(|d| d.page == p).map(|d| d.home);
    assert!(matches!(home(5), Some(Home::Ssd(_))), "the written page was not copied: {:?}", home(5));
    for p in [0u32, 6, 29] {
        assert_eq!(home(p), Some(Home::Inherited), "page {p}");
    }
    let Some(Home::Ssd(slot)) = home(5) else { unreachable!() };
    let copy = read_stored(engine.config(), Home::Ssd(slot));
    assert!(copy == page_bytes(5, 8), "the checkpoint's copy of page 5 is not what the guest wrote");
    // An inherited page faulted in, and one filled in, are writable and logged too.
    check_page(mem, 40, 7);
    let mut data = page_bytes(41, 7);
    data.resize(PAGE_SIZE, 0);
    assert_eq!(engine.install_inherited(&[41], &data).expect("install"), (1, false));
    write_page(mem, 40, 9);
    write_page(mem, 41, 9);
    let s = engine.snapshot();
    assert_eq!((s.faults, s.write_faults), (1, 0), "an inherited page was installed write-protected");
    let delta = logged_checkpoint(&engine, &[40]);
    let home = |p: u32| delta.iter().find(|d| d.page == p).map(|d| d.home);
    assert!(matches!(home(40), Some(Home::Ssd(_))));
    // Only the log reports writes: page 41, which this one leaves out, is not sent.
    assert_eq!(home(41), None);
    // Page 7 was never named, but its eviction cannot know it was not written: it is stored.
    assert!(retry_busy("evict", || engine.move_page(7, Tier::Ssd)).unwrap());
    assert!(matches!(engine.page(7).unwrap().home(), Home::Ssd(_)), "an unnamed logged page was dropped unwritten");
    check_page(mem, 7, 7);
    for p in 0..100 {
        check_page(mem, p, [(5, 8), (40, 9), (41, 9)].iter().find(|e| e.0 == p).map_or(7, |e| e.1));
    }
}

/// An inherited checkpoint whose copies carry keyed tags, as the cluster's do.
#[derive(Debug)]
struct Tagged {
    pages: Inherited,
    auth: TestAuth,
}

impl InheritedPages for Tagged {
    fn read(&self, page: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.pages.read(page, out)
    }

    fn crc(&self, page: u64) -> Option<u32> {
        self.pages.crc(page)
    }

    fn tag(&self, page: u64) -> Option<vmtier_engine::PageTag> {
        self.pages.crc(page)?;
        let mut buf = vec![0u8; PAGE_SIZE];
        self.pages.read(page, &mut buf).ok()?;
        Some(vmtier_engine::PageAuth::tag(&self.auth, page as u32, &buf))
    }
}

/// With authenticated pages, a `LOGGED` inherited page (counted dirty: the dirty log, not a
/// fault, reports its writes) whose content is still its inherited copy — untouched, or
/// rewritten with the same bytes — is evicted without a write and keeps the inherited copy. A
/// changed page is written, even one forged to keep its old crc32c (the keyed tag tells).
#[test]
fn logged_pages_still_equal_to_their_inherited_copy_are_evicted_without_a_write() {
    const PAGES: usize = 128;
    let Failover { cfg, _dir, map, stored, memfd, warm } = failover(PAGES, 7, 0..30);
    let (mut cfg2, _dir2) = replicating(PAGES as u64, 128);
    let auth = TestAuth(0x5eed);
    cfg2.page_auth = Some(vmtier_engine::PageAuthHandle(Arc::new(auth)));
    let old_crc = map[&6].1;
    let source = Arc::new(Tagged { pages: Inherited { cfg, map }, auth });
    let inh = Inheritance { memfd, warm, stored, source, logged_writes: true };
    let engine = Engine::start_inherited(cfg2, inh).expect("start inherited");
    let mem = engine.guest_words();
    write_page(mem, 3, 7); // the same bytes again
    write_page(mem, 4, 8); // changed
    // Page 6 changed, but with its old crc32c.
    let mut forged = page_bytes(6, 9);
    vmtier_storage::fault::force_crc32c(&mut forged, old_crc);
    for (i, w) in mem[6 * PAGE_SIZE / 8..7 * PAGE_SIZE / 8].iter().enumerate() {
        w.store(u64::from_le_bytes(forged[i * 8..i * 8 + 8].try_into().unwrap()), Ordering::Relaxed);
    }
    let before = engine.snapshot().tier2_bytes_written;
    for p in [3, 4, 5, 6] {
        assert!(engine.page(p).unwrap().dirty(), "page {p} is not counted dirty");
        assert!(retry_busy("evict", || engine.move_page(p, Tier::Ssd)).unwrap());
    }
    let s = engine.snapshot();
    assert_eq!(s.unchanged_evictions, 2, "pages 3 and 5 are still their inherited copies");
    assert_eq!(s.tier2_bytes_written - before, 2 * PAGE_SIZE as u64, "only the changed pages were written");
    for p in [3, 5] {
        assert_eq!(engine.page(p).unwrap().home(), Home::Inherited, "page {p}");
    }
    for p in [4, 6] {
        assert!(matches!(engine.page(p).unwrap().home(), Home::Ssd(_)), "changed page {p} was not written");
    }
    check_page(mem, 3, 7);
    check_page(mem, 4, 8);
    check_page(mem, 5, 7);
    let mut back = vec![0u8; PAGE_SIZE];
    engine.read_page(6, &mut back).expect("read page 6");
    assert!(back == forged, "the forged page's change was lost");
    // The batched eviction path (here straight to tier 3) decides the same way.
    write_page(mem, 8, 9);
    for p in [7, 8] {
        assert!(retry_busy("evict", || engine.move_page(p, Tier::Object)).unwrap());
    }
    assert_eq!(engine.snapshot().unchanged_evictions, 3);
    assert_eq!(engine.page(7).unwrap().home(), Home::Inherited);
    assert!(matches!(engine.page(8).unwrap().home(), Home::Object(_)), "changed page 8 was not written");
    check_page(mem, 7, 7);
    check_page(mem, 8, 9);
}

/// The new primary's background fill: inherited pages installed in bulk behind the guest are
/// mapped, so the guest reads them with no fault at all (and no tier read), with the checkpoint's
/// contents; pages that are not inherited, already resident or beyond the free DRAM are left
/// alone.
#[test]
fn inherited_pages_installed_in_bulk_are_served_without_reads() {
    const PAGES: usize = 128;
    let Failover { cfg, _dir, map, stored, memfd, warm } = failover(PAGES, 5, 0..10);
    // 64 frames of DRAM, 8 of them headroom: room for 46 more pages beside the 10 warm ones.
    let (mut cfg2, _dir2) = replicating(PAGES as u64, 64);
    cfg2.mtm.headroom_pages = 8;
    let inh =
        Inheritance { memfd, warm, stored, source: std::sync::Arc::new(Inherited { cfg, map }), logged_writes: false };
    let engine = Engine::start_inherited(cfg2, inh).expect("start inherited");
    // Pages 0..10 are warm (resident), 100.. were never written (zero, not inherited).
    let want: Vec<u32> = (0..PAGES as u32).collect();
    let mut data = vec![0u8; want.len() * PAGE_SIZE];
    for (i, &p) in want.iter().enumerate() {
        if (10..100).contains(&p) {
            data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(&page_bytes(p as usize, 5));
        }
    }
    let (installed, out_of_frames) = engine.install_inherited(&want, &data).expect("install");
    assert_eq!(installed, 64 - 8 - 10, "free frames beyond the headroom, and only inherited pages");
    assert!(out_of_frames);
    let s = engine.snapshot();
    assert_eq!(s.bytes_read, 0, "installing read nothing itself");
    assert!(engine.page(105).unwrap().home() == Home::Zero && !engine.page(105).unwrap().resident());
    let mem = engine.guest_words();
    for p in 10..10 + installed {
        check_page(mem, p, 5);
    }
    let s = engine.snapshot();
    assert_eq!((s.faults, s.bytes_read), (0, 0), "installed pages were read from storage again");
    assert_eq!(s.inherited_installed, installed as u64);
    assert_eq!(s.sample_faults, 0, "an installed page's first touch faulted: it was not mapped");
    // The first write of an installed page is still seen (it was mapped write-protected).
    write_page(mem, 20, 6);
    assert!(engine.page(20).unwrap().dirty());
    // The rest come from the inherited store on demand, as before.
    for p in 10 + installed..100 {
        check_page(mem, p, 5);
    }
    assert!(engine.snapshot().peak_resident_bytes <= 64 * PAGE_SIZE as u64);
}

/// The access statistics replication ships: the hottest pages first, bounded, only pages seen.
#[test]
fn heat_lists_the_hottest_observed_pages() {
    let (cfg, _dir) = replicating(128, 128);
    let engine = Engine::start(cfg).expect("start");
    let mem = engine.guest_words();
    assert!(engine.heat(10).is_empty(), "nothing observed yet");
    for p in 0..50 {
        write_page(mem, p, 1);
    }
    // The fault handler records the last access just after it woke the guest.
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.heat(1000).len() < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let heat = engine.heat(10);
    assert_eq!(heat.len(), 10);
    assert!(heat.windows(2).all(|w| w[0].1 >= w[1].1), "not hottest first: {heat:?}");
    assert!(heat.iter().all(|h| h.0 < 50 && h.1 > 0));
    assert_eq!(engine.heat(1000).len(), 50);
}

/// Precleaning (claim 2): dirty pages next in line for demotion go to tier 2 early and stay
/// resident, clean and write-protected; the next checkpoint names them by location without
/// copying them, and a write after the preclean is seen (the page is dirty again and copied).
#[test]
fn precleaned_pages_travel_as_metadata_and_writes_after_are_seen() {
    let (mut cfg, _dir) = replicating(128, 64);
    // The candidates are the MTM's demotion victims.
    cfg.mtm.enabled = true;
    let engine = Engine::start(cfg.clone()).expect("start");
    let mem = engine.guest_words();
    for p in 0..100 {
        write_page(mem, p, 1);
    }
    checkpoint(&engine, true);
    // Dirty again; DRAM holds 64 of the 100, so the MTM has demotion victims among them.
    for p in 0..100 {
        write_page(mem, p, 2);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let n = loop {
        let n = engine.preclean(16).expect("preclean");
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "nothing to preclean in 20 s");
        for p in 64..100 {
            write_page(mem, p, 2);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(engine.snapshot().precleaned, n as u64);
    let precleaned: Vec<usize> = (0..100)
        .filter(|&p| {
            let v = engine.page(p).unwrap();
            v.resident() && !v.dirty() && matches!(v.home(), Home::Ssd(_))
        })
        .collect();
    assert!(!precleaned.is_empty() && precleaned.len() <= n, "{precleaned:?} of {n}");
    // Their stored copies hold what DRAM holds.
    for &p in &precleaned {
        let (file, off) = common::tier2_location(&engine, p);
        let mut got = vec![0u8; PAGE_SIZE];
        File::open(&file).unwrap().read_exact_at(&mut got, off).unwrap();
        assert!(got == page_bytes(p, 2), "page {p}'s precleaned copy differs");
    }
    // The next checkpoint carries them as locations, not copies.
    let cap = engine.capture().expect("capture");
    let copied = cap.copied_pages();
    let delta = engine.persist(cap).expect("persist");
    engine.finish_checkpoint(true).expect("finish");
    for &p in &precleaned {
        let d = delta.iter().find(|d| d.page as usize == p).expect("a precleaned page is in the delta");
        assert_eq!(d.home, engine.page(p).unwrap().home(), "page {p}: not named by its precleaned copy");
    }
    assert!(copied + precleaned.len() <= delta.len());
    // A write after the preclean makes the page dirty again: the next checkpoint copies it.
    let p = precleaned[0];
    write_page(mem, p, 3);
    assert!(engine.page(p).unwrap().dirty(), "a write to a precleaned page went unseen");
    let cap = engine.capture().expect("capture");
    assert!(cap.copied_pages() >= 1);
    let delta = engine.persist(cap).expect("persist");
    engine.finish_checkpoint(true).expect("finish");
    let d = delta.iter().find(|d| d.page as usize == p).expect("rewritten page in the delta");
    assert_ne!(d.home, Home::Zero);
    check_page(mem, p, 3);
}
