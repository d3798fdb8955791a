//! The guest ABI of the vmtier micro-VM: guest-physical layout, the boot block the VMM writes
//! for the guest, the hypercalls and the report the guest hands back.
//!
//! This file is compiled twice: into the VMM (`vmtier_vm::abi`) and into the freestanding guest
//! programs (`guest/`, through `#[path]`). It uses `core` only and every shared structure is
//! `#[repr(C)]` with fixed-width fields, so both sides agree on every byte.
//!
//! Guest-physical memory is identity-mapped (virtual = physical) with 2 MiB pages:
//!
//! | range                      | content                                          |
//! |----------------------------|--------------------------------------------------|
//! | `0x1000..0x80000`          | page tables (PML4, PDPT, one PD per GiB)         |
//! | `0x80000`                  | GDT                                              |
//! | `0x81000`                  | TSS with the I/O permission bitmap               |
//! | `0x82000`                  | [`BootInfo`] (written by the VMM)                |
//! | `0x83000`                  | [`GuestReport`] (written by the guest)           |
//! | `0x100000..0x200000`       | stack (grows down from `0x200000`)               |
//! | `0x200000..0x400000`       | the guest program (ELF `PT_LOAD` segments)       |
//! | `0x400000..`               | heap: the workload's data, up to the end of RAM  |
//! | top of RAM (`trace` only)  | the trace's accesses, above [`BootInfo::heap_end`] |
#![allow(dead_code)]

/// Guest page size the layout is expressed in.
pub const PAGE: u64 = 4096;
/// Page-map level 4 table.
pub const PML4_GPA: u64 = 0x1000;
/// Page-directory-pointer table.
pub const PDPT_GPA: u64 = 0x2000;
/// First page directory; PD `i` maps GiB `i` with 2 MiB pages.
pub const PD_GPA: u64 = 0x3000;
/// End of the page-table area (bounds the number of page directories).
pub const PT_END_GPA: u64 = 0x8_0000;
/// Largest guest RAM the page-table area can map.
pub const MAX_RAM: u64 = ((PT_END_GPA - PD_GPA) / PAGE) << 30;
/// Global descriptor table.
pub const GDT_GPA: u64 = 0x8_0000;
/// Task-state segment, followed by its I/O permission bitmap.
pub const TSS_GPA: u64 = 0x8_1000;
/// The boot block.
pub const BOOT_INFO_GPA: u64 = 0x8_2000;
/// The report block.
pub const REPORT_GPA: u64 = 0x8_3000;
/// Lowest stack address.
pub const STACK_BOTTOM_GPA: u64 = 0x10_0000;
/// Initial stack pointer + 8 (the entry point is entered as if called).
pub const STACK_TOP_GPA: u64 = 0x20_0000;
/// Where guest program segments may be loaded.
pub const IMAGE_START_GPA: u64 = 0x20_0000;
/// End of the image area.
pub const IMAGE_END_GPA: u64 = 0x40_0000;
/// Start of the heap.
pub const HEAP_GPA: u64 = 0x40_0000;
/// Smallest guest RAM: the fixed layout plus 4 MiB of heap.
pub const MIN_RAM: u64 = HEAP_GPA + (4 << 20);

/// Selectors of the flat 64-bit user segments (GDT entries 4 and 5, RPL 3).
pub const USER_DS: u16 = 0x23;
/// User code selector.
pub const USER_CS: u16 = 0x2b;
/// TSS selector (GDT entries 6–7).
pub const TSS_SEL: u16 = 0x30;

/// The hypercall port: `out dx, eax` with `dx = HC_PORT` and `eax` the call number; arguments
/// in `rdi`, `rsi`, `r8` (`rdx` holds the port). Calls return nothing (the guest needs no answer from the VMM).
pub const HC_PORT: u16 = 0x500;
/// I/O ports `0..IO_BITMAP_PORTS` are open to the guest through the TSS bitmap.
pub const IO_BITMAP_PORTS: u16 = 0x800;

/// Hypercall numbers.
pub mod call {
    /// Exit with status `rdi` (0 = success, see [`super::status`]).
    pub const EXIT: u32 = 0;
    /// Print the UTF-8 line at `rdi`, `rsi` bytes long.
    pub const PRINT: u32 = 1;
    /// Progress: `rdi` operations done of `rsi` planned, in phase `r8` (see [`super::phase`]).
    pub const PROGRESS: u32 = 2;
    /// The [`super::GuestReport`] at [`super::REPORT_GPA`] is complete.
    pub const REPORT: u32 = 3;
}

/// Exit statuses.
pub mod status {
    /// Every check passed.
    pub const OK: u64 = 0;
    /// A page or value did not hold what was written; details in the report.
    pub const MISMATCH: u64 = 1;
    /// The boot block asked for something this guest program cannot do.
    pub const BAD_BOOT_INFO: u64 = 2;
    /// The guest program panicked; the message was printed.
    pub const PANIC: u64 = 3;
}

/// Phases a workload reports progress in.
pub mod phase {
    /// Writing the initial content.
    pub const POPULATE: u64 = 0;
    /// The measured access stage.
    pub const ACCESS: u64 = 1;
    /// Re-reading everything touched.
    pub const CHECK: u64 = 2;
}

/// Workload numbers in [`BootInfo::workload`].
pub mod workload {
    /// Zipf-distributed read-modify-write page accesses.
    pub const ZIPF: u32 = 1;
    /// Sequential passes over all pages.
    pub const SCAN: u32 = 2;
    /// A hot set that moves to a different part of memory in each phase.
    pub const PHASES: u32 = 3;
    /// A key-value store with a hash index; values carry checksums.
    pub const KV: u32 = 4;
    /// Breadth-first search over a generated graph.
    pub const BFS: u32 = 5;
    /// Uniformly random page accesses.
    pub const UNIFORM: u32 = 6;
    /// Writes the pages listed by [`super::BootInfo::touch_pages`] once, then exits (tests).
    pub const TOUCH: u32 = 7;
    /// Replays the page trace at [`super::BootInfo::trace_gpa`] (see [`super::BootInfo`]).
    pub const TRACE: u32 = 8;
}

/// [`BootInfo::magic`].
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"VMTBOOT1");
/// [`GuestReport::magic`].
pub const REPORT_MAGIC: u64 = u64::from_le_bytes(*b"VMTREPT1");

/// What the VMM tells the guest at boot. All sizes in bytes, addresses guest-physical.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// Size of guest RAM.
    pub ram_bytes: u64,
    /// Heap start (page aligned).
    pub heap_start: u64,
    /// Heap end (exclusive, page aligned).
    pub heap_end: u64,
    /// TSC ticks per millisecond, measured by the VMM (the guest's clock is `rdtsc`).
    pub tsc_per_ms: u64,
    /// One of [`workload`].
    pub workload: u32,
    /// Parts per million of accesses that write (page workloads) or put (kv).
    pub write_ppm: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Accesses (page workloads), operations (kv) or searches (bfs).
    pub ops: u64,
    /// Zipf exponent × 1000.
    pub zipf_s_milli: u32,
    /// Sequential passes (scan) or phases (phases).
    pub rounds: u32,
    /// Accesses between progress hypercalls.
    pub progress_every: u64,
    /// Guest-physical address of a `u64` page-number list for [`workload::TOUCH`].
    pub touch_pages: u64,
    /// Entries in that list.
    pub touch_count: u64,
    /// Accesses slower than this many TSC ticks are counted as faults in the latency histogram.
    pub fault_threshold_ticks: u64,
    /// Skip the final re-read of every touched page.
    pub skip_final_check: u32,
    /// [`workload::TRACE`]: the trace's footprint; it runs over data pages `0..trace_pages`.
    pub trace_pages: u32,
    /// [`workload::TRACE`]: guest-physical address of the accesses, one `u32` each:
    /// `page << 1 | write`. The VMM places them above the heap (`heap_end ≤ trace_gpa`).
    pub trace_gpa: u64,
    /// [`workload::TRACE`]: number of accesses.
    pub trace_count: u64,
}

/// How the page workloads lay out the heap: the version array (`u32` per page), the first data
/// page and the number of pages, for a heap `heap_start..heap_end` (page aligned).
pub fn page_region(heap_start: u64, heap_end: u64) -> (u64, u64, u64) {
    let pages = (heap_end - heap_start).saturating_sub(2 * PAGE) / (PAGE + 4);
    let versions = heap_start.next_multiple_of(PAGE);
    let data = (versions + pages * 4).next_multiple_of(PAGE);
    (versions, data, pages)
}

/// Log-linear latency histogram buckets: 16 per power of two of nanoseconds, up to 2^40 ns.
pub const HIST_SUB: u32 = 16;
/// Number of buckets.
pub const HIST_BUCKETS: usize = 40 * HIST_SUB as usize;

/// The histogram bucket of a latency of `ns` nanoseconds.
pub fn hist_bucket(ns: u64) -> usize {
    if ns < u64::from(HIST_SUB) {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // ≥ 4
    let sub = (ns >> (exp - 4)) & u64::from(HIST_SUB - 1);
    let idx = (exp - 3) as usize * HIST_SUB as usize + sub as usize;
    idx.min(HIST_BUCKETS - 1)
}

/// The lower bound, in nanoseconds, of histogram bucket `idx`.
pub fn hist_bucket_floor(idx: usize) -> u64 {
    let sub = HIST_SUB as usize;
    if idx < sub {
        return idx as u64;
    }
    let exp = (idx / sub) as u32 + 3;
    let frac = (idx % sub) as u64;
    (1u64 << exp) | (frac << (exp - 4))
}

/// What the guest reports before it exits (at [`REPORT_GPA`]).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GuestReport {
    /// [`REPORT_MAGIC`].
    pub magic: u64,
    /// The exit status the guest is about to return.
    pub status: u64,
    /// Pages in the workload's data region.
    pub pages: u64,
    /// Operations of the access stage.
    pub ops: u64,
    /// Pages read and verified (every stage).
    pub reads_verified: u64,
    /// Page writes (every stage).
    pub writes: u64,
    /// Distinct pages touched.
    pub pages_touched: u64,
    /// Pages re-read by the final check.
    pub final_checked_pages: u64,
    /// TSC ticks of the populate, access and check stages.
    pub stage_ticks: [u64; 3],
    /// Workload-specific result (kv: live keys; bfs: vertices reached), checked by the guest.
    pub result: u64,
    /// On a mismatch: the page (or key / vertex), word, expected and found values.
    pub mismatch: [u64; 4],
    /// Accesses slower than the fault threshold.
    pub slow_accesses: u64,
    /// Latency of those accesses, nanoseconds, bucketed by [`hist_bucket`].
    pub fault_hist: [u32; HIST_BUCKETS],
}

impl GuestReport {
    /// An empty report.
    pub const fn new() -> Self {
        Self {
            magic: REPORT_MAGIC,
            status: 0,
            pages: 0,
            ops: 0,
            reads_verified: 0,
            writes: 0,
            pages_touched: 0,
            final_checked_pages: 0,
            stage_ticks: [0; 3],
            result: 0,
            mismatch: [0; 4],
            slow_accesses: 0,
            fault_hist: [0; HIST_BUCKETS],
        }
    }
}

impl Default for GuestReport {
    fn default() -> Self {
        Self::new()
    }
}

const _: () = assert!(core::mem::size_of::<GuestReport>() <= PAGE as usize);
const _: () = assert!(core::mem::size_of::<BootInfo>() <= PAGE as usize);
// No padding: the VMM copies BootInfo as plain bytes.
const _: () = assert!(core::mem::size_of::<BootInfo>() == 128);
