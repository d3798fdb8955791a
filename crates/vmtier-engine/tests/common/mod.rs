//! Helpers shared by the engine's integration tests: a tempdir-based configuration, page
//! patterns, access to the stored copy of a page on disk, and an `s3s-fs` server.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmtier_engine::{ByteSize, Engine, EngineConfig, EngineError, Home, PAGE_SIZE};
use vmtier_storage::segment;

/// 64-bit words per guest page.
pub const WORDS: usize = PAGE_SIZE / 8;

/// A configuration whose tiers live in a fresh temporary directory (kept alive by the returned
/// guard): `memory_pages` of guest memory, `dram_pages` of DRAM, MTM off, one fault handler.
pub fn config(memory_pages: u64, dram_pages: u64) -> (EngineConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = EngineConfig::default();
    cfg.memory = ByteSize(memory_pages * PAGE_SIZE as u64);
    cfg.dram = ByteSize(dram_pages * PAGE_SIZE as u64);
    cfg.tier2.dir = dir.path().join("tier2");
    cfg.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
    cfg.tier3.segment_bytes = ByteSize(1 << 20);
    cfg.mtm.enabled = false;
    cfg.mtm.headroom_pages = 0;
    cfg.tracker.sample_pages_per_sec = 0;
    cfg.fault.handler_threads = 1;
    (cfg, dir)
}

/// Word `i` of a page holding `value` (value 0 is an all-zero page).
pub fn word(page: usize, value: u64, i: usize) -> u64 {
    if value == 0 {
        return 0;
    }
    let x = value ^ ((page as u64) << 40) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser: every word differs, and no word pattern survives a shifted copy.
    let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The 4096 bytes of a page holding `value`.
pub fn page_bytes(page: usize, value: u64) -> Vec<u8> {
    (0..WORDS).flat_map(|i| word(page, value, i).to_le_bytes()).collect()
}

/// Writes every word of `page` through guest memory (faults it in).
pub fn write_page(mem: &[AtomicU64], page: usize, value: u64) {
    for (i, w) in mem[page * WORDS..(page + 1) * WORDS].iter().enumerate() {
        w.store(word(page, value, i), Ordering::Relaxed);
    }
}

/// Reads every word of `page` through guest memory and checks it holds `value`.
pub fn check_page(mem: &[AtomicU64], page: usize, value: u64) {
    for (i, w) in mem[page * WORDS..(page + 1) * WORDS].iter().enumerate() {
        let got = w.load(Ordering::Relaxed);
        let want = word(page, value, i);
        assert_eq!(got, want, "guest page {page} word {i}: got {got:#x}, want {want:#x} (value {value:#x})");
    }
}

/// Runs `f` until it is not refused with `EngineError::Busy` (a fault handler may still hold the
/// page lock for a moment after it woke the faulting thread).
pub fn retry_busy<T>(what: &str, mut f: impl FnMut() -> Result<T, EngineError>) -> Result<T, EngineError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(EngineError::Busy { .. }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Err(EngineError::Busy { page }) => panic!("{what}: page {page} busy for 10 s"),
            other => return other,
        }
    }
}

/// Reads `page` with `Engine::read_page` (retrying while busy).
pub fn read_host(engine: &Engine, page: usize) -> Result<Vec<u8>, EngineError> {
    let mut out = vec![0u8; PAGE_SIZE];
    retry_busy("read_page", || engine.read_page(page, &mut out))?;
    Ok(out)
}

/// File and byte offset of the tier-2 copy of `page` (which must be in tier 2).
pub fn tier2_location(engine: &Engine, page: usize) -> (PathBuf, u64) {
    let view = engine.page(page).expect("page");
    let Home::Ssd(slot) = view.home() else {
        panic!("page {page} is not in tier 2: {:?}", view.home());
    };
    let spf = engine.config().tier2.slots_per_file;
    let file = engine.config().tier2.dir.join(format!("slots-{:05}.dat", slot.0 / spf));
    (file, u64::from(slot.0 % spf) * PAGE_SIZE as u64)
}

/// Object name and byte offset of the tier-3 copy of `page` (which must be in tier 3).
pub fn tier3_location(engine: &Engine, page: usize) -> (String, u64) {
    let view = engine.page(page).expect("page");
    let Home::Object(loc) = view.home() else {
        panic!("page {page} is not in tier 3: {:?}", view.home());
    };
    (format!("seg-{:08x}.vts", loc.segment), segment::page_offset(loc.index))
}

/// Flips one bit of the byte at `offset` of `file`.
pub fn flip_byte(file: &Path, offset: u64) {
    let f =
        OpenOptions::new().read(true).write(true).open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0x10;
    f.write_all_at(&b, offset).expect("write byte");
    f.sync_all().expect("fsync");
}

/// Runs `f` on its own thread and fails the test if it has not returned within `limit`
/// (a deadlocked fault path would otherwise hang the test run).
pub fn with_deadline<T: Send + 'static>(what: &str, limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(what.into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn");
    match rx.recv_timeout(limit) {
        Ok(v) => {
            handle.join().expect("join");
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: re-raise its panic here.
            match handle.join() {
                Err(p) => std::panic::resume_unwind(p),
                Ok(()) => unreachable!("sender dropped without sending"),
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish within {limit:?} (hang)"),
    }
}

#[path = "../../../vmtier-storage/tests/common/s3.rs"]
pub mod s3;

/// Points `cfg`'s tier 3 at `s3://<bucket>/<prefix>` on `server`.
pub fn configure_tier3(cfg: &mut EngineConfig, server: &s3::S3Server, prefix: &str) {
    let o = server.config(prefix);
    cfg.tier3.url = o.url;
    cfg.tier3.endpoint = o.endpoint;
    cfg.tier3.region = o.region;
    cfg.tier3.access_key_id = o.access_key_id;
    cfg.tier3.secret_access_key = o.secret_access_key;
    cfg.tier3.allow_http = o.allow_http;
}

/// A keyed tag for tests: the engine only needs some function of (page, bytes) that others
/// cannot compute; FNV-1a over a secret, the page number and the bytes stands in for the
/// cluster key's HMAC here.
#[derive(Debug, Clone, Copy)]
pub struct TestAuth(pub u64);

impl vmtier_engine::PageAuth for TestAuth {
    fn tag(&self, page: u32, data: &[u8]) -> vmtier_engine::PageTag {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ self.0;
        for &b in page.to_le_bytes().iter().chain(data) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&h.to_le_bytes());
        t[8..].copy_from_slice(&(!h).to_le_bytes());
        t
    }
}
