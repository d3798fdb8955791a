//! Engine errors.

use vmtier_storage::object::ObjectError;
use vmtier_storage::ssd::SsdError;

/// What went wrong in the engine; each variant names the operation and the page or object.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Setting up guest memory or the userfaultfd failed.
    #[error("setting up guest memory")]
    Memory(#[source] vmtier_uffd::Error),
    /// Guest memory handed over by another process cannot be used.
    #[error("external guest memory: {why}")]
    External {
        /// What is wrong and how to fix it.
        why: String,
    },
    /// A userfaultfd or memfd operation on a page failed.
    #[error("{op} of guest page {page}")]
    PageOp {
        /// Operation.
        op: &'static str,
        /// Guest page number.
        page: u64,
        /// Cause.
        #[source]
        source: vmtier_uffd::Error,
    },
    /// Opening the tier-2 store failed.
    #[error("opening the tier-2 page store")]
    OpenTier2(#[source] SsdError),
    /// Opening the tier-3 store failed.
    #[error("opening the tier-3 object store")]
    OpenTier3(#[source] ObjectError),
    /// A tier-2 operation on a page failed.
    #[error("tier 2, guest page {page}")]
    Tier2 {
        /// Guest page number.
        page: u64,
        /// Cause.
        #[source]
        source: SsdError,
    },
    /// A tier-3 operation failed.
    #[error("tier 3, guest page {page}")]
    Tier3 {
        /// Guest page number (the first of a batch).
        page: u64,
        /// Cause.
        #[source]
        source: ObjectError,
    },
    /// A page whose stored copy failed its checksum; it is poisoned and never served.
    #[error("guest page {page} is poisoned: its stored copy failed its checksum")]
    Poisoned {
        /// Guest page number.
        page: u64,
    },
    /// A page number outside the guest.
    #[error("guest page {page} is outside the guest ({pages} pages)")]
    NoSuchPage {
        /// Requested page.
        page: u64,
        /// Guest size in pages.
        pages: u64,
    },
    /// The page is locked by a move in progress; try again.
    #[error("guest page {page} is busy")]
    Busy {
        /// Guest page number.
        page: u64,
    },
    /// A failover's inheritance does not fit the engine's configuration.
    #[error("starting from the failed primary's checkpoint: {why}")]
    Inherit {
        /// What does not fit.
        why: String,
    },
    /// An inherited copy (a failed primary's checkpoint) could not be read.
    #[error("guest page {page}: reading its copy inherited from the failed primary")]
    Inherited {
        /// Guest page number.
        page: u64,
        /// Cause (`InvalidData`: the copy failed its checksum).
        #[source]
        source: std::io::Error,
    },
    /// A stored copy passed its crc32c but not its keyed tag: someone without the key wrote it.
    #[error(
        "guest page {page}: its stored copy at {home:?} fails authentication (right crc32c, wrong keyed tag): it was not written by this primary and is never served"
    )]
    Unauthenticated {
        /// Guest page number.
        page: u64,
        /// Where the copy is.
        home: crate::Home,
    },
    /// A checkpoint step was asked of an engine started without replication.
    #[error("replication is off: start the engine with `replicate` set to take checkpoints")]
    ReplicationOff,
    /// A checkpoint was captured while the previous one was neither committed nor aborted.
    #[error("a checkpoint is already in flight: commit or abort it before capturing the next")]
    CheckpointInFlight,
    /// A capture of the other write-tracking mode than the engine's earlier captures.
    #[error(
        "this engine's checkpoints track writes by {engine}, not {asked}: use one capture mode (`capture` or `capture_logged`) for the engine's whole life"
    )]
    CaptureMode {
        /// The mode of the engine's earlier captures.
        engine: &'static str,
        /// The mode asked for now.
        asked: &'static str,
    },
    /// Syncing tier 2 for a checkpoint failed.
    #[error("syncing tier 2 for a checkpoint")]
    SyncTier2(#[source] SsdError),
    /// A thread of the engine could not be started.
    #[error("starting thread {name}")]
    Thread {
        /// Thread name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// Whether the error means stored data is corrupt (as opposed to unavailable).
    pub fn is_corruption(&self) -> bool {
        match self {
            EngineError::Tier2 { source, .. } => matches!(source, SsdError::Corrupt { .. }),
            EngineError::Tier3 { source, .. } => matches!(source, ObjectError::Corrupt { .. }),
            EngineError::Poisoned { .. } | EngineError::Unauthenticated { .. } => true,
            EngineError::Inherited { source, .. } => source.kind() == std::io::ErrorKind::InvalidData,
            _ => false,
        }
    }
}

/// An error and all its sources, `outer: inner: root`, for logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
