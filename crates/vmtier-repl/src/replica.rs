//! The secondary's replica of the primary's memory map, rebuilt from the log: the last full
//! checkpoint plus the deltas after it ([`ReplicaMap`]).
//!
//! Every checkpoint carries the primary's [`map_digest`](crate::record::map_digest) of its map
//! after the checkpoint; [`ReplicaMap::apply`] keeps the same digest incrementally and refuses a
//! checkpoint after which the two differ, so a replica that would silently differ from the
//! primary's map cannot be built.

use std::collections::HashMap;

use crate::auth::PageTag;
use crate::record::{Checkpoint, Heat, Location, PageLoc, Record, page_digest};

/// Errors of [`ReplicaMap::apply`]. After one the map is not usable: rebuild it from a new
/// [`LogReader`](crate::LogReader).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// A delta checkpoint with no full checkpoint applied before it.
    #[error("checkpoint {seq} is a delta but no full checkpoint was applied before it; start from a full checkpoint")]
    NoBase {
        /// The checkpoint.
        seq: u64,
    },
    /// A record out of order.
    #[error("record {seq} applied after record {last}; records must be applied in seq order without gaps")]
    OutOfOrder {
        /// The record.
        seq: u64,
        /// The last record applied.
        last: u64,
    },
    /// After the checkpoint, the map's digest differs from the primary's.
    #[error(
        "after checkpoint {seq} the replica's digest is {actual:#018x}, the primary's {expected:#018x}: the log is inconsistent; do not resume from it"
    )]
    DigestMismatch {
        /// The checkpoint.
        seq: u64,
        /// The primary's digest.
        expected: u64,
        /// The replica's digest.
        actual: u64,
    },
}

/// The replica map: page → (location, crc32c) of every non-zero page, plus the latest heat list,
/// guest size and vCPU state. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct ReplicaMap {
    pages: HashMap<u32, (Location, u32, PageTag)>,
    digest: u64,
    seq: u64,
    epoch: u64,
    /// `(epoch, seq)` of the last checkpoint applied.
    checkpoint: (u64, u64),
    based: bool,
    guest_bytes: u64,
    heat: Vec<Heat>,
    vcpu: Vec<u8>,
}

impl ReplicaMap {
    /// An empty map; the first checkpoint applied must be full.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a log record: a checkpoint ([`apply`](Self::apply)) or a fence (which only
    /// advances the position and the epoch).
    pub fn apply_record(&mut self, rec: &Record) -> Result<(), ReplicaError> {
        match rec {
            Record::Checkpoint(c) => self.apply(c),
            Record::Fence(f) => {
                self.check_order(f.seq)?;
                self.seq = f.seq;
                self.epoch = f.epoch;
                Ok(())
            }
        }
    }

    fn check_order(&self, seq: u64) -> Result<(), ReplicaError> {
        // `seq` comes from shared storage: the last possible position has no successor.
        if self.seq != 0 && self.seq.checked_add(1) != Some(seq) {
            return Err(ReplicaError::OutOfOrder { seq, last: self.seq });
        }
        Ok(())
    }

    /// Applies a checkpoint: a full one replaces the map, a delta updates it (a
    /// [`Location::Zero`] entry removes the page). A full heat list replaces the heat list; a
    /// partial one updates the entries of its pages in place and appends new pages. The vCPU
    /// state is replaced when the checkpoint carries one.
    pub fn apply(&mut self, c: &Checkpoint) -> Result<(), ReplicaError> {
        if !c.full && !self.based {
            return Err(ReplicaError::NoBase { seq: c.seq });
        }
        if !c.full {
            self.check_order(c.seq)?;
        }
        if c.full {
            self.pages.clear();
            self.digest = 0;
            self.based = true;
        }
        for p in &c.pages {
            let new = (p.loc != Location::Zero).then_some((p.loc, p.crc, p.tag));
            let old = match new {
                Some(v) => self.pages.insert(p.page, v),
                None => self.pages.remove(&p.page),
            };
            if let Some((_, crc, _)) = old {
                self.digest = self.digest.wrapping_sub(page_digest(p.page, crc));
            }
            if let Some((_, crc, _)) = new {
                self.digest = self.digest.wrapping_add(page_digest(p.page, crc));
            }
        }
        self.seq = c.seq;
        self.epoch = c.epoch;
        self.checkpoint = (c.epoch, c.seq);
        self.guest_bytes = c.guest_bytes;
        if c.heat_full {
            self.heat = c.heat.clone();
        } else if !c.heat.is_empty() {
            let pos: HashMap<u32, usize> = self.heat.iter().enumerate().map(|(i, h)| (h.page, i)).collect();
            for h in &c.heat {
                match pos.get(&h.page) {
                    Some(&i) => self.heat[i] = *h,
                    None => self.heat.push(*h),
                }
            }
        }
        if !c.vcpu.is_empty() {
            self.vcpu = c.vcpu.clone();
        }
        if self.digest != c.digest {
            return Err(ReplicaError::DigestMismatch { seq: c.seq, expected: c.digest, actual: self.digest });
        }
        Ok(())
    }

    /// Where `page` is and its crc32c; `None`: the page is zero.
    pub fn get(&self, page: u32) -> Option<(Location, u32)> {
        self.pages.get(&page).map(|&(l, c, _)| (l, c))
    }

    /// `page`'s whole entry (location, crc32c and keyed tag); `None`: the page is zero.
    pub fn entry(&self, page: u32) -> Option<PageLoc> {
        self.pages.get(&page).map(|&(loc, crc, tag)| PageLoc { page, loc, crc, tag })
    }

    /// Every non-zero page, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Location, u32)> + '_ {
        self.pages.iter().map(|(&p, &(l, c, _))| (p, l, c))
    }

    /// Every non-zero page's whole entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = PageLoc> + '_ {
        self.pages.iter().map(|(&page, &(loc, crc, tag))| PageLoc { page, loc, crc, tag })
    }

    /// Number of non-zero pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether there is no non-zero page.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The map's digest ([`map_digest`](crate::record::map_digest)).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The last record applied (0: none).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The epoch of the last record applied.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `(epoch, seq)` of the last checkpoint applied: the one a failover resumes (later records
    /// may be fences).
    pub fn checkpoint(&self) -> (u64, u64) {
        self.checkpoint
    }

    /// Whether a full checkpoint has been applied.
    pub fn is_based(&self) -> bool {
        self.based
    }

    /// Guest memory size from the last checkpoint.
    pub fn guest_bytes(&self) -> u64 {
        self.guest_bytes
    }

    /// The primary's hot list, hottest first.
    pub fn heat(&self) -> &[Heat] {
        &self.heat
    }

    /// The latest vCPU state.
    pub fn vcpu(&self) -> &[u8] {
        &self.vcpu
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::record::{Fence, map_digest};

    fn ckpt(seq: u64, full: bool, pages: &[(u32, Location, u32)], model: &HashMap<u32, (Location, u32)>) -> Checkpoint {
        Checkpoint {
            seq,
            epoch: 1,
            full,
            pages: pages.iter().map(|&(page, loc, crc)| PageLoc { page, loc, crc, tag: [0; 16] }).collect(),
            digest: map_digest(model.iter().map(|(&p, &(_, c))| (p, c))),
            ..Checkpoint::default()
        }
    }

    #[test]
    fn full_then_deltas() {
        let mut model = HashMap::new();
        model.insert(1, (Location::Ssd { store: 1, slot: 1 }, 11));
        model.insert(2, (Location::Object { store: 1, segment: 0, index: 2 }, 22));
        let mut r = ReplicaMap::new();
        let delta_first = ckpt(1, false, &[], &model);
        assert_eq!(r.apply(&delta_first), Err(ReplicaError::NoBase { seq: 1 }));
        r.apply(&ckpt(
            1,
            true,
            &[
                (1, Location::Ssd { store: 1, slot: 1 }, 11),
                (2, Location::Object { store: 1, segment: 0, index: 2 }, 22),
                (3, Location::Zero, 0),
            ],
            &model,
        ))
        .expect("full");
        assert_eq!(r.len(), 2);
        r.apply_record(&Record::Fence(Fence { seq: 2, epoch: 2, ..Fence::default() })).expect("fence");
        assert_eq!((r.seq(), r.epoch(), r.checkpoint()), (2, 2, (1, 1)), "a fence is no checkpoint to resume");
        model.remove(&1);
        model.insert(2, (Location::Ssd { store: 1, slot: 9 }, 23));
        r.apply(&ckpt(3, false, &[(1, Location::Zero, 0), (2, Location::Ssd { store: 1, slot: 9 }, 23)], &model))
            .expect("delta");
        assert_eq!(r.get(1), None);
        assert_eq!(r.get(2), Some((Location::Ssd { store: 1, slot: 9 }, 23)));
        assert_eq!((r.seq(), r.len()), (3, 1));
        assert_eq!(r.apply(&ckpt(5, false, &[], &model)), Err(ReplicaError::OutOfOrder { seq: 5, last: 3 }));
        // A delta whose digest disagrees is refused.
        let mut bad = ckpt(4, false, &[(7, Location::Ssd { store: 1, slot: 7 }, 77)], &model);
        bad.digest ^= 1;
        assert!(matches!(r.apply(&bad), Err(ReplicaError::DigestMismatch { seq: 4, .. })));
    }

    /// Found by the `replica_apply` fuzz target: a record at the last possible log position
    /// (written by anyone with access to the shared store) made the next one overflow the order
    /// check, a panic in debug builds. Nothing can follow it.
    #[test]
    fn nothing_follows_the_last_log_position() {
        let model = HashMap::new();
        let mut r = ReplicaMap::new();
        r.apply(&ckpt(u64::MAX, true, &[], &model)).expect("a full checkpoint at the last position");
        let next = Record::Fence(Fence { seq: 0, epoch: 2, ..Fence::default() });
        assert_eq!(r.apply_record(&next), Err(ReplicaError::OutOfOrder { seq: 0, last: u64::MAX }));
        assert_eq!(r.apply(&ckpt(1, false, &[], &model)), Err(ReplicaError::OutOfOrder { seq: 1, last: u64::MAX }));
    }

    #[test]
    fn heat_and_vcpu() {
        let mut r = ReplicaMap::new();
        let h = |page, freq| Heat { page, freq, age: 0 };
        let mut c = Checkpoint {
            seq: 1,
            full: true,
            heat_full: true,
            heat: vec![h(1, 90), h(2, 50)],
            vcpu: vec![7],
            ..Checkpoint::default()
        };
        r.apply(&c).expect("full");
        c = Checkpoint { seq: 2, heat: vec![h(2, 99), h(3, 10)], ..Checkpoint::default() };
        r.apply(&c).expect("delta");
        assert_eq!(r.heat(), [h(1, 90), h(2, 99), h(3, 10)]);
        assert_eq!(r.vcpu(), [7], "kept when a checkpoint carries none");
        c = Checkpoint { seq: 3, heat_full: true, heat: vec![h(3, 1)], vcpu: vec![8], ..Checkpoint::default() };
        r.apply(&c).expect("delta");
        assert_eq!((r.heat(), r.vcpu()), (&[h(3, 1)][..], &[8][..]));
    }

    proptest! {
        /// Applying random deltas incrementally gives the digest of the resulting map.
        #[test]
        fn incremental_digest_matches(ops in proptest::collection::vec(proptest::collection::vec((0u32..64, 0u8..3, any::<u32>()), 0..20), 1..10)) {
            let mut model: HashMap<u32, (Location, u32)> = HashMap::new();
            let mut r = ReplicaMap::new();
            for (i, batch) in ops.iter().enumerate() {
                let mut pages = Vec::new();
                for &(page, kind, crc) in batch {
                    let loc = match kind { 0 => Location::Zero, 1 => Location::Ssd { store: 1, slot: crc }, _ => Location::Object { store: 1, segment: crc, index: 1 } };
                    let crc = if loc == Location::Zero { 0 } else { crc };
                    if loc == Location::Zero { model.remove(&page); } else { model.insert(page, (loc, crc)); }
                    pages.push((page, loc, crc));
                }
                r.apply(&ckpt(i as u64 + 1, i == 0, &pages, &model)).expect("apply");
                prop_assert_eq!(r.len(), model.len());
                for (&p, &v) in &model {
                    prop_assert_eq!(r.get(p), Some(v));
                }
            }
        }
    }
}
