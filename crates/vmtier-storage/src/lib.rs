//! vmtier's lower memory tiers.
//!
//! - [`ssd::SsdStore`] — **tier 2**: 4 KiB page slots in files on a directory (an SSD, meant to be
//!   shared storage that a secondary host can read too). All page I/O is `O_DIRECT`, so a read
//!   really comes from the device and not from the host page cache.
//! - [`object::ObjectTier`] — **tier 3**: pages packed into segment objects (format in
//!   [`segment`]) in an object store: a local directory or S3 through the `object_store` crate.
//!
//! Both tiers are *volatile*: they hold guest memory, which does not outlive the process, so each
//! starts empty and removes what an earlier run left behind. Every page carries a crc32c that the
//! caller keeps in its page table; every read checks it, and a mismatch is an error, never data.
//!
//! Both APIs are synchronous and thread-safe (`&self` methods, `Send + Sync`), meant to be called
//! from the engine's fault-handling and migration threads.

#![warn(missing_docs)]

pub mod fault;
pub mod object;
pub mod segment;
pub mod ssd;

pub use fault::{FaultKind, FaultPlan, Op, Rule};
pub use object::{FaultyObjectStore, ObjectConfig, ObjectError, ObjectStats, ObjectTier, SegmentLoc};
pub use segment::SegmentError;
pub use ssd::{FaultyIo, RealIo, SlotId, SlotIo, SsdConfig, SsdError, SsdStats, SsdStore};
pub use vmtier_uffd::PAGE_SIZE;

// Both tiers are shared between the engine's threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<SsdStore>();
    send_sync::<ObjectTier>();
};
