//! Errors of a workload run.

use crate::trace::SharedTraceError;

/// What went wrong while running a workload.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    /// A configuration value is out of range.
    #[error("invalid {what} {value}: allowed {allowed}")]
    Config {
        /// The setting that is wrong.
        what: &'static str,
        /// The value given.
        value: String,
        /// What would be accepted.
        allowed: String,
    },
    /// A page read back different data than the guest last wrote: the tiering engine lost,
    /// corrupted, misplaced or served a stale copy of the page.
    #[error(
        "guest memory corrupted: page {page} word {word} (byte offset {offset:#x}) expected \
         {expected:#018x} (version {expected_version}) but found {found:#018x}",
        offset = page * crate::PAGE_SIZE + word * 8
    )]
    Mismatch {
        /// Page number within the region.
        page: usize,
        /// Word index within the page (0..512).
        word: usize,
        /// The value the word should hold.
        expected: u64,
        /// The value that was read.
        found: u64,
        /// The version the page should be at (0 = never written, all zeros).
        expected_version: u32,
    },
    /// A worker thread panicked.
    #[error("workload thread {thread} panicked: {message}")]
    WorkerPanicked {
        /// Index of the thread.
        thread: usize,
        /// The panic message, if it was a string.
        message: String,
    },
    /// The trace of a `trace` workload could not be loaded.
    #[error(transparent)]
    Trace(#[from] SharedTraceError),
    /// The trace touches more pages than the guest region has.
    #[error(
        "trace {trace} touches {footprint} pages ({mib} MiB) but the guest has only {pages} pages: give the \
         guest at least {mib} MiB of memory (--memory)",
        mib = (footprint * crate::PAGE_SIZE).div_ceil(1 << 20)
    )]
    TraceTooLarge {
        /// The trace's source.
        trace: String,
        /// Its footprint in pages.
        footprint: usize,
        /// Pages of the region.
        pages: usize,
    },
    /// The caller set [`crate::Progress::stop`].
    #[error("workload cancelled after {done} operations")]
    Cancelled {
        /// Operations completed (populate, access and final check) before stopping.
        done: u64,
    },
}
