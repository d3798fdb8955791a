//! vmtier's tiered guest-memory engine.
//!
//! Guest RAM is a memfd mapped shared and registered with userfaultfd (MISSING, WP and MINOR
//! modes, never user-mode-only so a KVM VMM can use the same memory). Pages live in three tiers —
//! DRAM under a hard budget, a tier-2 page store on a directory (`O_DIRECT`, crc32c per page), and
//! tier-3 segment objects in an object store — and move between them under the Memory Tier
//! Manager ([`mtm`]), driven by real page faults and sampled accesses. See `docs/design.md`.

pub mod auth;
pub mod config;
mod dram;
mod engine;
mod error;
mod fault;
mod mtm;
pub mod page_table;
mod pager;
pub mod policy;
mod preclean;
pub mod prefetch;
mod replica;
pub mod size;
pub mod stats;
pub mod tracker;

pub use auth::{PageAuth, PageAuthHandle, PageTag};
pub use config::{ConfigError, EngineConfig, PolicyKind, PrefetchConfig};
pub use engine::{
    Engine, ExternalMemory, FEATURES, Inheritance, InheritedPages, MetadataBytes, REGISTER_MODE, Snapshot, StorageIo,
    register_guest_memory,
};
pub use error::{EngineError, chain};
pub use page_table::{Home, PageView, ReplState};
pub use policy::Tier;
pub use prefetch::{Prefetcher, PrefetcherKind};
pub use replica::{ADOPT_AFTER_QUIET_CAPTURES, Capture, DeltaPage};
pub use size::ByteSize;
pub use vmtier_uffd::PAGE_SIZE;
