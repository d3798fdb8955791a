//! vmtier's replication through shared storage (high availability in the style of US patent
//! 9,201,612): the primary writes dirty pages to shared storage itself (tiers 2 and 3); the log
//! carries only metadata — where each page is and how hot it is — and the secondary reads the
//! pages itself when it takes over.
//!
//! - [`auth`] — [`ClusterKey`]: the cluster key that authenticates every record and stored page.
//! - [`record`] — the binary, checksummed, authenticated records: [`Checkpoint`], [`Fence`], [`Heartbeat`].
//! - [`store`] — [`SharedStore`], a tiny key → bytes store with atomic, exclusive publish, on a
//!   directory ([`DirStore`]) or in S3 ([`ObjectStoreShared`]).
//! - [`log`] — [`LogWriter`] (claim, commit, heartbeat, truncate) and [`LogReader`], with fencing
//!   of a stale primary.
//! - [`lease`] — [`LeaseWatch`]: has the primary's heartbeat stopped?
//! - [`replica`] — [`ReplicaMap`]: the map rebuilt from the last full checkpoint and the deltas
//!   after it, checked against the primary's digest.
//!
//! This crate knows nothing about the engine. Layout, protocol and the S3 caveats:
//! `docs/replication.md`.

#![warn(missing_docs)]

pub mod auth;
pub mod lease;
pub mod log;
pub mod record;
pub mod replica;
pub mod store;

pub use auth::{ClusterKey, KeyError, PageTag};
pub use lease::{LeaseStatus, LeaseWatch};
pub use log::{FencedBy, Heartbeater, LogError, LogReader, LogWriter, read_heartbeat};
pub use record::{
    Checkpoint, Fence, Heartbeat, Heat, Location, PageLoc, Record, RecordError, decode, encode, map_digest,
};
pub use replica::{ReplicaError, ReplicaMap};
pub use store::{
    Created, DirStore, ExclusiveWrites, FaultyStore, MemStore, ObjectStoreShared, SharedStore, StoreError, open_store,
    open_store_with,
};

// Writers, readers and stores move between the engine's threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<LogWriter>();
    send_sync::<LogReader>();
    send_sync::<DirStore>();
    send_sync::<ObjectStoreShared>();
};
