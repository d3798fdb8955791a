//! Page traces of real programs: import valgrind lackey output, store it compactly, summarise
//! it, and replay it as a workload.
//!
//! - [`lackey`]: reads `valgrind --tool=lackey --trace-mem=yes` output (plain or gzip),
//!   streaming, into a [`PageTrace`].
//! - [`format`]: the binary page-trace file (magic, version, header, varint-delta body, crc32c).
//! - [`stats`]: footprint, read/write mix, address span and LRU reuse distances.
//! - [`replay`]: [`TracePattern`], the trace as an [`AccessPattern`](crate::AccessPattern) of
//!   the in-process guest.
//!
//! A [`PageTrace`] is a sequence of page accesses over dense page numbers `0..footprint`:
//! the distinct 4 KiB virtual pages the program touched, numbered in address order (so pages
//! adjacent in the program's address space stay adjacent, and only the holes between them are
//! squeezed out). The runs of contiguous virtual pages are kept, so the real addresses can be
//! recovered ([`PageTrace::virtual_page`]). See `docs/traces.md`.
//!
//! ```no_run
//! use vmtier_workload::trace::PageTrace;
//!
//! // A binary trace from `vmtier trace import`, or lackey output imported on the fly.
//! let trace = PageTrace::load("traces/sort.lackey.gz")?;
//! println!("{} accesses over {} pages", trace.len(), trace.footprint_pages());
//! for a in trace.accesses().take(3) {
//!     println!("page {} {}", a.page, if a.write { "write" } else { "read" });
//! }
//! # Ok::<(), vmtier_workload::trace::TraceError>(())
//! ```

pub mod error;
pub mod format;
pub mod lackey;
pub mod replay;
pub mod stats;

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::{SharedTraceError, TraceError};
pub use format::MAGIC;
pub use lackey::{ImportOptions, ImportProgress};
pub use replay::TracePattern;
pub use stats::TraceStats;

/// Page size of a trace: lackey addresses are mapped to 4 KiB pages.
pub const TRACE_PAGE_SIZE: u64 = 4096;
/// Most distinct pages a trace may have (a page number and the write bit share a `u32`).
pub const MAX_FOOTPRINT: u64 = 1 << 31;

/// One page access of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceAccess {
    /// Dense page number, `0..footprint`.
    pub page: u32,
    /// Whether the access writes (a lackey store or modify).
    pub write: bool,
}

impl TraceAccess {
    /// The packed form `page << 1 | write` (also the micro-VM's in-memory format).
    #[inline]
    pub fn pack(self) -> u32 {
        self.page << 1 | u32::from(self.write)
    }

    /// The access of a packed value.
    #[inline]
    pub fn unpack(v: u32) -> Self {
        Self { page: v >> 1, write: v & 1 == 1 }
    }
}

/// A run of contiguous virtual pages the program touched, in address order; dense page numbers
/// are handed out run after run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// First virtual page number (address / 4096).
    pub first_vpage: u64,
    /// Pages in the run (≥ 1).
    pub pages: u32,
}

/// What the import saw, kept in the trace's header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceCounts {
    /// Text lines read.
    pub lines: u64,
    /// Lackey `L` records.
    pub loads: u64,
    /// Lackey `S` records.
    pub stores: u64,
    /// Lackey `M` records.
    pub modifies: u64,
    /// Lackey `I` records (instruction fetches), whether kept or not.
    pub instructions: u64,
    /// Whether instruction fetches became (read) page accesses.
    pub instructions_included: bool,
    /// Page accesses before consecutive accesses to the same page were collapsed (a record
    /// that straddles a page boundary counts once per page).
    pub raw_accesses: u64,
}

/// A page trace: dense page accesses, the virtual page runs they map to, and import counts.
#[derive(Clone, PartialEq, Eq)]
pub struct PageTrace {
    source: String,
    counts: TraceCounts,
    runs: Vec<PageRun>,
    footprint: u32,
    entries: Vec<u32>,
}

impl fmt::Debug for PageTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTrace")
            .field("source", &self.source)
            .field("accesses", &self.entries.len())
            .field("footprint_pages", &self.footprint)
            .field("runs", &self.runs.len())
            .finish_non_exhaustive()
    }
}

impl PageTrace {
    /// A trace from its parts. `runs` must be sorted, non-overlapping and non-adjacent, and
    /// every packed entry's page below the runs' total; otherwise a [`TraceError::Corrupt`]
    /// naming `source`.
    pub fn from_parts(
        source: impl Into<String>,
        counts: TraceCounts,
        runs: Vec<PageRun>,
        entries: Vec<u32>,
    ) -> Result<Self, TraceError> {
        let source = source.into();
        let mut footprint: u64 = 0;
        let mut prev_end: Option<u64> = None;
        for r in &runs {
            let end = r.first_vpage.checked_add(u64::from(r.pages));
            match (end, prev_end) {
                _ if r.pages == 0 => return Err(TraceError::corrupt(&source, "a page run is empty")),
                (None, _) => return Err(TraceError::corrupt(&source, "a page run ends past 2^64")),
                (Some(_), Some(p)) if r.first_vpage <= p => {
                    return Err(TraceError::corrupt(&source, "page runs are not sorted and separated"));
                }
                _ => {}
            }
            prev_end = end;
            footprint += u64::from(r.pages);
        }
        if footprint > MAX_FOOTPRINT {
            return Err(TraceError::corrupt(&source, format!("footprint {footprint} pages exceeds {MAX_FOOTPRINT}")));
        }
        if let Some(i) = entries.iter().position(|&e| u64::from(e >> 1) >= footprint) {
            return Err(TraceError::corrupt(
                &source,
                format!("access {i} is to page {} of a {footprint}-page footprint", entries[i] >> 1),
            ));
        }
        Ok(Self { source, counts, runs, footprint: footprint as u32, entries })
    }

    /// A synthetic trace over `0..footprint` (one run starting at virtual page 0), e.g. for
    /// tests and benchmarks. Consecutive accesses are kept as given.
    pub fn from_accesses(
        source: impl Into<String>,
        footprint: u32,
        accesses: impl IntoIterator<Item = TraceAccess>,
    ) -> Result<Self, TraceError> {
        let entries: Vec<u32> = accesses.into_iter().map(TraceAccess::pack).collect();
        let writes = entries.iter().filter(|&&e| e & 1 == 1).count() as u64;
        let counts = TraceCounts {
            loads: entries.len() as u64 - writes,
            stores: writes,
            raw_accesses: entries.len() as u64,
            ..TraceCounts::default()
        };
        let runs = if footprint == 0 { Vec::new() } else { vec![PageRun { first_vpage: 0, pages: footprint }] };
        Self::from_parts(source, counts, runs, entries)
    }

    /// Loads a trace from `path`: a binary page trace (by its magic), else valgrind lackey
    /// output (plain or gzip) imported with the default [`ImportOptions`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let open_err = |source| TraceError::Open { path: name.clone(), source };
        let mut file = std::fs::File::open(path).map_err(open_err)?;
        let mut head = [0u8; 8];
        let mut got = 0;
        while got < head.len() {
            match file.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(TraceError::Read { path: name, line: 0, source }),
            }
        }
        if got > 0 && MAGIC.starts_with(&head[..got]) {
            let bytes = std::fs::read(path).map_err(open_err)?;
            format::decode(&bytes, &name)
        } else {
            lackey::import_file(path, &ImportOptions::default(), &mut |_| {})
        }
    }

    /// Writes the binary form to `path` (through a temporary file renamed into place).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<u64, TraceError> {
        format::write_file(self, path.as_ref())
    }

    /// Where the trace came from (the imported file's name).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What the import saw.
    pub fn counts(&self) -> &TraceCounts {
        &self.counts
    }

    /// The runs of contiguous virtual pages, in address order.
    pub fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    /// Distinct pages touched: dense page numbers are `0..footprint_pages()`.
    pub fn footprint_pages(&self) -> u32 {
        self.footprint
    }

    /// Bytes of memory a replay needs: `footprint_pages() × 4 KiB`.
    pub fn footprint_bytes(&self) -> u64 {
        u64::from(self.footprint) * TRACE_PAGE_SIZE
    }

    /// Number of page accesses.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the trace has no access.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of writing accesses.
    pub fn writes(&self) -> u64 {
        self.entries.iter().filter(|&&e| e & 1 == 1).count() as u64
    }

    /// Access `i`.
    pub fn get(&self, i: usize) -> Option<TraceAccess> {
        self.entries.get(i).map(|&e| TraceAccess::unpack(e))
    }

    /// The accesses in order.
    pub fn accesses(&self) -> impl ExactSizeIterator<Item = TraceAccess> + '_ {
        self.entries.iter().map(|&e| TraceAccess::unpack(e))
    }

    /// The accesses packed as `page << 1 | write` (see [`TraceAccess::pack`]).
    pub fn packed(&self) -> &[u32] {
        &self.entries
    }

    /// The virtual page number (address / 4096) of dense page `page`, if it is in the footprint.
    pub fn virtual_page(&self, page: u32) -> Option<u64> {
        let mut base = 0u32;
        for r in &self.runs {
            if page < base + r.pages {
                return Some(r.first_vpage + u64::from(page - base));
            }
            base += r.pages;
        }
        None
    }
}
