//! High availability through shared storage: `vmtier primary`, `secondary`, `failover`,
//! `status` (see `docs/replication.md`).
//!
//! Shared storage holds three things:
//! - the log and lease (`vmtier-repl`), at `replication.shared` (a directory or `s3://…`);
//! - each primary's tier 2, in `<engine.tier2.dir>/e<epoch>`: a directory on a file system both
//!   hosts mount;
//! - each primary's tier 3, under `<engine.tier3.url>/e<epoch>`.
//!
//! Each epoch's primary writes only its own tier directories, so a stale primary that has not
//! yet noticed it lost the lease can never overwrite anything the new one reads; the new
//! primary reads the old epoch's pages (those of the last committed checkpoint, which the old
//! primary never frees: only a commit does that, and it can no longer commit).

pub mod check;
pub mod control;
pub mod primary;
pub mod secondary;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use vmtier_engine::{DeltaPage, EngineConfig, Home};
use vmtier_repl::{Location, PageLoc, ReplicaMap, SharedStore};
use vmtier_storage::SegmentLoc;
use vmtier_storage::object::{ObjectConfig, ObjectTier};
use vmtier_storage::ssd::{SlotId, SsdConfig, SsdStore};

use crate::run_config::RunConfig;

/// Where everything of one replicated VM lives, from its config.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The log and lease store's configuration.
    pub shared: ObjectConfig,
    /// Parent of every epoch's tier-2 directory.
    pub tier2_base: PathBuf,
    /// The engine config as written (tier locations are the bases).
    pub engine: EngineConfig,
}

impl Layout {
    /// The layout `cfg` describes.
    pub fn new(cfg: &RunConfig) -> Self {
        let r = &cfg.replication;
        let url = r.shared.clone().unwrap_or_else(|| cfg.data_dir.join("shared").to_string_lossy().into_owned());
        let mut shared = ObjectConfig::new(url);
        shared.endpoint = r.endpoint.clone();
        shared.region = r.region.clone();
        shared.access_key_id = r.access_key_id.clone();
        shared.secret_access_key = r.secret_access_key.clone();
        shared.allow_http = r.allow_http;
        Self { shared, tier2_base: cfg.engine.tier2.dir.clone(), engine: cfg.engine.clone() }
    }

    /// Opens the log and lease store.
    pub fn open_store(&self) -> anyhow::Result<Arc<dyn SharedStore>> {
        vmtier_repl::open_store(&self.shared)
            .with_context(|| format!("opening the shared log store at {}", self.shared.url))
    }

    /// Tier-2 directory of the primary of `epoch`.
    pub fn tier2_dir(&self, epoch: u64) -> PathBuf {
        self.tier2_base.join(format!("e{epoch:06}"))
    }

    /// Tier-3 configuration of the primary of `epoch`.
    pub fn tier3(&self, epoch: u64) -> ObjectConfig {
        let mut cfg = self.engine.tier3.object_config();
        cfg.url = format!("{}/e{epoch:06}", cfg.url.trim_end_matches('/'));
        cfg
    }

    /// The engine config of the primary of `epoch`: its own tier locations, replication on.
    pub fn engine_for(&self, epoch: u64, dram: Option<vmtier_engine::ByteSize>) -> EngineConfig {
        let mut e = self.engine.clone();
        e.tier2.dir = self.tier2_dir(epoch);
        e.tier3.url = self.tier3(epoch).url;
        if let Some(d) = dram {
            e.dram = d;
        }
        e.replicate = true;
        e
    }
}

/// A page's location as the log records it. `inherited` is the replica map the engine's
/// `Home::Inherited` pages come from (after a failover).
pub fn page_loc(d: &DeltaPage, epoch: u64, inherited: Option<&ReplicaMap>) -> anyhow::Result<PageLoc> {
    let (loc, crc) = match d.home {
        Home::Zero => (Location::Zero, 0),
        Home::Ssd(slot) => (Location::Ssd { store: epoch, slot: slot.0 }, d.crc),
        Home::Object(l) => (Location::Object { store: epoch, segment: l.segment, index: l.index }, d.crc),
        Home::Inherited => inherited
            .and_then(|m| m.get(d.page))
            .with_context(|| format!("page {} is inherited but the inherited map has no copy of it", d.page))?,
    };
    Ok(PageLoc { page: d.page, loc, crc })
}

/// Reads pages from every epoch's tiers on shared storage, as a secondary (or a new primary
/// after a failover) does. Stores are opened read-only, each the first time it is needed.
#[derive(Debug)]
pub struct SharedPages {
    layout: Layout,
    tier2: Mutex<HashMap<u64, Arc<SsdStore>>>,
    tier3: Mutex<HashMap<u64, Arc<ObjectTier>>>,
}

impl SharedPages {
    /// A reader over `layout`'s tiers.
    pub fn new(layout: Layout) -> Self {
        Self { layout, tier2: Mutex::new(HashMap::new()), tier3: Mutex::new(HashMap::new()) }
    }

    fn tier2(&self, epoch: u64) -> std::io::Result<Arc<SsdStore>> {
        if let Some(s) = self.tier2.lock().unwrap_or_else(|p| p.into_inner()).get(&epoch) {
            return Ok(s.clone());
        }
        let mut cfg = SsdConfig::new(self.layout.tier2_dir(epoch));
        cfg.slots_per_file = self.layout.engine.tier2.slots_per_file;
        cfg.direct_io = self.layout.engine.tier2.direct_io;
        let s = Arc::new(SsdStore::open_reader(cfg).map_err(std::io::Error::other)?);
        self.tier2.lock().unwrap_or_else(|p| p.into_inner()).insert(epoch, s.clone());
        Ok(s)
    }

    fn tier3(&self, epoch: u64) -> std::io::Result<Arc<ObjectTier>> {
        if let Some(t) = self.tier3.lock().unwrap_or_else(|p| p.into_inner()).get(&epoch) {
            return Ok(t.clone());
        }
        let t = Arc::new(ObjectTier::open_reader(self.layout.tier3(epoch)).map_err(std::io::Error::other)?);
        self.tier3.lock().unwrap_or_else(|p| p.into_inner()).insert(epoch, t.clone());
        Ok(t)
    }

    /// Reads the page at `loc` into `out` (4096 bytes), checked against `crc`. A checksum
    /// mismatch is an `InvalidData` error.
    pub fn read(&self, loc: Location, crc: u32, out: &mut [u8]) -> std::io::Result<()> {
        let corrupt = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
        match loc {
            Location::Zero => {
                out.fill(0);
                Ok(())
            }
            Location::Ssd { store, slot } => match self.tier2(store)?.read(SlotId(slot), crc, out) {
                Err(e @ vmtier_storage::ssd::SsdError::Corrupt { .. }) => Err(corrupt(&e)),
                r => r.map_err(std::io::Error::other),
            },
            Location::Object { store, segment, index } => {
                match self.tier3(store)?.read(SegmentLoc { segment, index }, crc, out) {
                    Err(e @ vmtier_storage::object::ObjectError::Corrupt { .. }) => Err(corrupt(&e)),
                    r => r.map_err(std::io::Error::other),
                }
            }
        }
    }
}

/// The failed primary's last committed checkpoint, as the new primary's engine reads it.
#[derive(Debug)]
pub struct InheritedMap {
    /// The replica map at the last committed checkpoint.
    pub map: ReplicaMap,
    /// Reader of the stores it points into.
    pub pages: SharedPages,
}

impl vmtier_engine::InheritedPages for InheritedMap {
    fn read(&self, page: u64, out: &mut [u8]) -> std::io::Result<()> {
        let page = u32::try_from(page).map_err(std::io::Error::other)?;
        match self.map.get(page) {
            Some((loc, crc)) => self.pages.read(loc, crc, out),
            None => {
                out.fill(0);
                Ok(())
            }
        }
    }

    fn crc(&self, page: u64) -> Option<u32> {
        let page = u32::try_from(page).ok()?;
        self.map.get(page).filter(|(loc, _)| *loc != Location::Zero).map(|(_, crc)| crc)
    }
}

/// A name for this process in the lease: `host:pid`.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    format!("{}:{}", host.trim(), std::process::id())
}
