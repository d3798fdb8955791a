//! Helpers shared by vmtier's fuzz targets (`fuzz_targets/*.rs`).
//!
//! * [`PeakAlloc`], the global allocator of every target, records the largest single allocation,
//!   so a target can check that a decoder never allocates far beyond the size of its input
//!   ([`largest_allocation`]).
//! * The `seal_*` functions write the checksums and length fields of a format around fuzzed
//!   bytes, following the layout tables in each format's module docs. Without them almost every
//!   mutation would stop at a checksum check and the structural parser behind it would never be
//!   reached. They are written from the documented layouts, not with the crates' encoders, so a
//!   disagreement between the docs and the code shows up as a finding too — except replication
//!   records, whose keyed MAC only the crate's own `record::seal` can compute.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, recording the largest allocation since the last [`largest_allocation`].
#[derive(Debug)]
pub struct PeakAlloc;

static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the only
// addition is an atomic maximum over the requested sizes.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        PEAK.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` through this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

/// Runs `f` and returns its result with the largest single allocation made while it ran.
/// (Fuzz targets run one input at a time on one thread.)
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.store(0, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed))
}

/// Asserts that decoding `input_len` bytes allocated at most `per_byte` bytes per input byte
/// (plus a small constant for error messages and the like) in any one allocation.
pub fn assert_bounded_allocation(what: &str, input_len: usize, largest: usize, per_byte: usize) {
    let limit = input_len * per_byte + 16 * 1024;
    assert!(
        largest <= limit,
        "{what}: decoding {input_len} bytes made a {largest}-byte allocation (limit {limit}): a length field is trusted before it is checked against the input"
    );
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The cluster key every fuzzed record is sealed and checked with (fixed, so runs and saved
/// crash inputs replay).
pub fn fuzz_key() -> &'static vmtier_repl::ClusterKey {
    static KEY: std::sync::OnceLock<vmtier_repl::ClusterKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| vmtier_repl::ClusterKey::from_bytes(&[0x5e; 32], "fuzz key").expect("a 32-byte key"))
}

/// The store key fuzzed log records are sealed under and decoded as (`log/{seq:020}.rec`): the
/// MAC binds a record to it.
pub const RECORD_NAME: &str = "log/00000000000000000001.rec";
/// The store key fuzzed epoch claims are sealed under and decoded as.
pub const CLAIM_NAME: &str = "lease/00000000000000000001.epoch";

/// A replication record (`vmtier_repl::record`, format 2) around `body`: the frame header with
/// correct checksums and the MAC trailer, sealed with [`fuzz_key`] under the store key its kind is
/// read from (`kind` 1 checkpoint, 2 fence, 3 heartbeat, 4 claim; other values are kept, to
/// exercise the kind check). Without the MAC no mutated body would ever reach a body parser.
pub fn seal_record(kind: u16, body: &[u8]) -> Vec<u8> {
    let name = match kind {
        3 => vmtier_repl::log::HEARTBEAT_KEY,
        4 => CLAIM_NAME,
        _ => RECORD_NAME,
    };
    vmtier_repl::record::seal(fuzz_key(), name, kind, body)
}

/// A binary page trace (`vmtier_workload::trace::format`): takes a fuzzed file image, sets the
/// body-length field to what follows the header and name (when the input is long enough) and
/// appends the crc32c.
pub fn seal_trace(data: &[u8]) -> Vec<u8> {
    const FIXED: usize = 98;
    let mut out = data.to_vec();
    if out.len() >= FIXED {
        let name_len = usize::from(le16(&out, 96));
        let body = out.len().saturating_sub(FIXED + name_len) as u64;
        out[88..96].copy_from_slice(&body.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A snapshot state file (`vmtier_vm::snapshot`): sets the vCPU-state length field (bytes 24..32)
/// to what follows the 32-byte header and appends the crc32c.
pub fn seal_state_file(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if out.len() >= 32 {
        let len = (out.len() - 32) as u64;
        out[24..32].copy_from_slice(&len.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A vCPU state (`vmtier_vm::VcpuState::to_bytes`): appends the crc32c of the sections.
pub fn seal_crc(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A tier-3 segment object (`vmtier_storage::segment`) of `pages` zero pages whose header
/// fields, index and footer fields come from `data`, with correct header and index checksums:
///
/// `data` = version u32, header page count u32, page size u32, footer page count u32, footer
/// version u32, then index bytes (cut or zero-padded to `12 * pages`).
pub fn seal_segment(pages: usize, data: &[u8]) -> Vec<u8> {
    const PAGE: usize = 4096;
    let field = |i: usize| -> [u8; 4] {
        let mut w = [0u8; 4];
        for (j, b) in w.iter_mut().enumerate() {
            *b = data.get(i * 4 + j).copied().unwrap_or(0);
        }
        w
    };
    let mut out = Vec::with_capacity(PAGE * (1 + pages) + 12 * pages + 20);
    out.extend_from_slice(b"VMTSEGH\0");
    out.extend_from_slice(&field(0));
    out.extend_from_slice(&field(1));
    out.extend_from_slice(&field(2));
    let hcrc = crc32c::crc32c(&out[..20]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.resize(PAGE * (1 + pages), 0);
    let start = out.len();
    let index = data.get(20..).unwrap_or(&[]);
    let n = (12 * pages).min(index.len());
    out.extend_from_slice(&index[..n]);
    out.resize(start + 12 * pages, 0);
    let icrc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&field(3));
    out.extend_from_slice(&icrc.to_le_bytes());
    out.extend_from_slice(&field(4));
    out.extend_from_slice(b"VMTSEGF\0");
    out
}
