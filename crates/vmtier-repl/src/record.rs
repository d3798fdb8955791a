//! The records of the replication log and of the lease: binary, little-endian, checksummed and
//! authenticated with the cluster key ([`ClusterKey`]).
//!
//! Every record — a log entry ([`Record`]: a [`Checkpoint`] or a [`Fence`]), an epoch claim
//! ([`Claim`]) or the primary's [`Heartbeat`] — is one *frame*: a fixed 32-byte header, a body and
//! a 32-byte MAC. A record is always a whole object or file of the shared store, so a frame is
//! decoded from exactly its bytes: anything short, long, with a wrong checksum or a wrong MAC is
//! an error, never data.
//!
//! # Frame (format version 2)
//!
//! The header layout is the same in every format version, so that a reader can always tell a
//! corrupt record ([`RecordError::HeaderChecksum`]) from a newer or older one
//! ([`RecordError::UnsupportedVersion`]). Version 1 (no MAC, `key_id` reserved as 0) is no
//! longer read: a log written by an older vmtier cannot be trusted and is refused.
//!
//! | offset        | size | field       | value                                                          |
//! |--------------:|-----:|-------------|----------------------------------------------------------------|
//! |             0 |    8 | magic       | `VMTLOG01` ([`MAGIC`])                                          |
//! |             8 |    2 | version     | format version, `2` ([`VERSION`])                               |
//! |            10 |    2 | kind        | `1` checkpoint, `2` fence, `3` heartbeat, `4` epoch claim      |
//! |            12 |    4 | key_id      | [`ClusterKey::id`] of the writer's key (diagnostic only)       |
//! |            16 |    8 | body_len    | bytes of the body; at most [`MAX_BODY_LEN`] (4 GiB)            |
//! |            24 |    4 | body_crc    | crc32c of the body                                             |
//! |            28 |    4 | header_crc  | crc32c of header bytes 0..28                                   |
//! |            32 | body_len | body     | by kind, below                                                 |
//! | 32 + body_len |   32 | mac         | HMAC-SHA256 (below) over bytes `0 .. 32 + body_len`            |
//!
//! The MAC is [`ClusterKey::record_mac`]: HMAC-SHA256(key, `"vmtier record v2\0"` ‖ u32 length of
//! the *name* ‖ name ‖ header ‖ body), where the name is the store key the record is written
//! under: `log/{seq:020}.rec`, `lease/{epoch:020}.epoch` or `lease/heartbeat`. So a record
//! verifies only at its own position: a valid record copied or renamed to another seq (or a
//! claim to another epoch) fails its MAC.
//!
//! Checks, in this order: length ≥ 32, magic, header crc, version, kind, body_len against
//! [`MAX_BODY_LEN`] and against the bytes present (short: [`RecordError::Truncated`], long:
//! [`RecordError::TrailingBytes`]), body crc (so accidental damage reads as damage), key id
//! ([`RecordError::WrongKey`]: written with another cluster key), MAC
//! ([`RecordError::Forged`]: written without the key, or moved), then the body's own structure.
//! Nothing of the body is interpreted before the MAC has verified.
//!
//! # Checkpoint body (kind 1)
//!
//! | offset | size            | field           | notes                                               |
//! |-------:|----------------:|-----------------|-----------------------------------------------------|
//! |      0 |               8 | seq             | log position, 1, 2, 3, …                            |
//! |      8 |               8 | epoch           | lease epoch of the writer                           |
//! |     16 |               8 | created_unix_ms | wall clock of the writer (informational)            |
//! |     24 |               8 | guest_bytes     | guest memory size                                   |
//! |     32 |               8 | digest          | [`map_digest`] of the map after this checkpoint     |
//! |     40 |               1 | flags           | bit 0 `full`, bit 1 `heat_full`; other bits 0       |
//! |     41 |               4 | page_count      | entries in the page list                            |
//! |     45 |               4 | heat_count      | entries in the heat list                            |
//! |     49 |               4 | vcpu_len        | bytes of vCPU state                                 |
//! |     53 | 9 to 39 × n     | pages           | page entries (below), in the writer's order         |
//! |      … |      7 × n      | heat            | heat entries (below), hottest first                 |
//! |      … |        vcpu_len | vcpu            | opaque vCPU state                                   |
//!
//! A page entry is `page u32, tag u8, crc u32` followed by the location's payload (and, in
//! version 2, the page's 16-byte [`PageTag`] after it, for every location but zero — see below):
//!
//! | tag | location                                          | payload                              | entry size |
//! |----:|---------------------------------------------------|--------------------------------------|-----------:|
//! |   0 | [`Location::Zero`]                                | none                                 |   9 bytes  |
//! |   1 | [`Location::Ssd`] in the writer's own store       | `slot u32`, page tag                 |  29 bytes  |
//! |   2 | [`Location::Object`] in the writer's own store    | `segment u32, index u16`, page tag   |  31 bytes  |
//! |   3 | [`Location::Ssd`] in an earlier epoch's store     | `store u64, slot u32`, page tag      |  37 bytes  |
//! |   4 | [`Location::Object`] in an earlier epoch's store  | `store u64, segment u32, index u16`, page tag | 39 bytes |
//!
//! The page tag ([`ClusterKey::page_tag`], 16 bytes) authenticates the stored page's bytes: a
//! reader of shared storage checks it before the page reaches a guest, since the crc32c alone
//! can be matched by anyone who writes a forged page. The record's MAC authenticates the tag.
//!
//! Every primary writes its own tiers (`store` = its epoch); after a failover the new primary's
//! pages may still sit in the failed primary's store until they are rewritten, hence tags 3 and 4.
//! Tags 1 and 2 decode with `store` = the checkpoint's epoch.
//!
//! A heat entry is `page u32, freq u8, age u16` (7 bytes). Counts are checked against the bytes
//! left before anything is allocated, so a corrupt count cannot make the decoder allocate more
//! than the record's own size.
//!
//! # Fence body (kind 2)
//!
//! | offset | size       | field           |
//! |-------:|-----------:|-----------------|
//! |      0 |          8 | seq             |
//! |      8 |          8 | epoch           |
//! |     16 |          8 | created_unix_ms |
//! |     24 |          4 | holder_len      |
//! |     28 | holder_len | holder (UTF-8)  |
//!
//! # Heartbeat body (kind 3)
//!
//! | offset | size       | field          |
//! |-------:|-----------:|----------------|
//! |      0 |          8 | epoch          |
//! |      8 |          8 | counter        |
//! |     16 |          8 | unix_ms        |
//! |     24 |          8 | last_committed |
//! |     32 |          4 | holder_len     |
//! |     36 | holder_len | holder (UTF-8) |
//!
//! # Epoch claim body (kind 4)
//!
//! | offset | size       | field           |
//! |-------:|-----------:|-----------------|
//! |      0 |          8 | epoch           |
//! |      8 |          8 | created_unix_ms |
//! |     16 |          8 | nonce           |
//! |     24 |          4 | holder_len      |
//! |     28 | holder_len | holder (UTF-8)  |
//!
//! # Map digest
//!
//! [`map_digest`] is the wrapping sum, over every page whose location is not
//! [`Location::Zero`], of `mix64(page << 32 | crc)`, where `mix64` is the SplitMix64 finalizer
//! (a bijection on `u64`). A sum does not depend on order and can be kept up to date
//! incrementally ([`page_digest`]: subtract a page's old term, add its new one); the empty map's
//! digest is 0.

use std::fmt;

use crate::auth::{ClusterKey, MAC_LEN, PageTag, TAG_LEN};

/// First 8 bytes of every record.
pub const MAGIC: [u8; 8] = *b"VMTLOG01";
/// Format version this build writes and reads.
pub const VERSION: u16 = 2;
/// Size of the frame header.
pub const HEADER_LEN: usize = 32;
/// Largest body a frame may declare (4 GiB).
pub const MAX_BODY_LEN: u64 = 1 << 32;

/// Record kind: checkpoint.
pub const KIND_CHECKPOINT: u16 = 1;
/// Record kind: fence.
pub const KIND_FENCE: u16 = 2;
/// Record kind: heartbeat.
pub const KIND_HEARTBEAT: u16 = 3;
/// Record kind: claim.
pub const KIND_CLAIM: u16 = 4;

const FLAG_FULL: u8 = 1;
const FLAG_HEAT_FULL: u8 = 2;

const TAG_ZERO: u8 = 0;
const TAG_SSD: u8 = 1;
const TAG_OBJECT: u8 = 2;
const TAG_SSD_OF: u8 = 3;
const TAG_OBJECT_OF: u8 = 4;

const CHECKPOINT_FIXED: usize = 53;
const PAGE_ENTRY_MIN: u64 = 9;
const HEAT_ENTRY: u64 = 7;

/// Where the content of a guest page is on shared storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// The page is all zeros; nothing is stored.
    Zero,
    /// A tier-2 slot of the directory page store.
    Ssd {
        /// Whose store: the epoch of the primary that wrote it.
        store: u64,
        /// Slot id.
        slot: u32,
    },
    /// A page of a tier-3 segment object.
    Object {
        /// Whose store: the epoch of the primary that wrote it.
        store: u64,
        /// Segment id.
        segment: u32,
        /// Page index inside the segment.
        index: u16,
    },
}

/// One entry of a checkpoint's page list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageLoc {
    /// Guest page number.
    pub page: u32,
    /// Where its content is.
    pub loc: Location,
    /// crc32c of the page's 4096 bytes (0 for [`Location::Zero`]).
    pub crc: u32,
    /// The page's keyed tag ([`ClusterKey::page_tag`]; all zeros for [`Location::Zero`]).
    pub tag: PageTag,
}

/// Access statistics of one page, for the secondary's prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Heat {
    /// Guest page number.
    pub page: u32,
    /// Access frequency, 0–100 by convention (larger values are carried as they are).
    pub freq: u8,
    /// Ticks since the last access.
    pub age: u16,
}

/// A checkpoint: where every page that changed since the previous checkpoint is now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Log position: 1, 2, 3, … contiguous.
    pub seq: u64,
    /// The lease epoch of the writer.
    pub epoch: u64,
    /// Wall clock of the writer at creation (informational only; never compared across hosts).
    pub created_unix_ms: u64,
    /// Guest memory size.
    pub guest_bytes: u64,
    /// `pages` is the complete map (all non-zero pages), not a delta against `seq - 1`.
    pub full: bool,
    /// Pages whose location or content changed since `seq - 1` (all of them if `full`). A
    /// [`Location::Zero`] entry in a delta means the page became zero. If a page appears more
    /// than once, the last entry wins.
    pub pages: Vec<PageLoc>,
    /// `heat` is the primary's complete hot list, replacing earlier ones.
    pub heat_full: bool,
    /// Hot pages, hottest first.
    pub heat: Vec<Heat>,
    /// The primary's [`map_digest`] of the whole map after applying this checkpoint.
    pub digest: u64,
    /// Opaque vCPU state (may be empty).
    pub vcpu: Vec<u8>,
}

/// A fence: written by a new primary at the first free log position when it claims the log, so
/// that the old primary's next commit finds that position taken.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fence {
    /// Log position.
    pub seq: u64,
    /// The new primary's lease epoch.
    pub epoch: u64,
    /// Wall clock of the writer (informational).
    pub created_unix_ms: u64,
    /// Who claimed the log (host name, process id, …).
    pub holder: String,
}

/// One entry of the checkpoint log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A checkpoint.
    Checkpoint(Checkpoint),
    /// A fence.
    Fence(Fence),
}

impl Record {
    /// The record's log position.
    pub fn seq(&self) -> u64 {
        match self {
            Record::Checkpoint(c) => c.seq,
            Record::Fence(f) => f.seq,
        }
    }

    /// The lease epoch of the record's writer.
    pub fn epoch(&self) -> u64 {
        match self {
            Record::Checkpoint(c) => c.epoch,
            Record::Fence(f) => f.epoch,
        }
    }
}

/// The primary's liveness record (`lease/heartbeat`), rewritten periodically.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// Lease epoch of the writer.
    pub epoch: u64,
    /// Who holds the lease.
    pub holder: String,
    /// Incremented by every heartbeat of this epoch.
    pub counter: u64,
    /// Wall clock of the writer (informational; never compared across hosts).
    pub unix_ms: u64,
    /// Highest log position the writer has committed.
    pub last_committed: u64,
}

/// An epoch claim (`lease/{epoch}.epoch`): who took which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claim {
    /// The epoch claimed.
    pub epoch: u64,
    /// Wall clock of the claimer (informational).
    pub created_unix_ms: u64,
    /// A random number that makes each claim's bytes unique.
    pub nonce: u64,
    /// Who claimed it.
    pub holder: String,
}

/// Bytes of a record's MAC trailer.
pub const TRAILER_LEN: usize = MAC_LEN;

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the header or the header's `body_len` requires.
    #[error("record is truncated: {have} bytes, need {need}")]
    Truncated {
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// The first 8 bytes are not [`MAGIC`].
    #[error("not a vmtier log record: magic {found:02x?}, expected \"VMTLOG01\"")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The header checksum does not match: the header is corrupt.
    #[error("record header is corrupt: crc32c {actual:#010x}, stored {stored:#010x}")]
    HeaderChecksum {
        /// Stored checksum.
        stored: u32,
        /// Checksum of the header bytes.
        actual: u32,
    },
    /// A format version this build does not read.
    #[error("record format version {found} is not supported (this build reads version {VERSION}); use a newer vmtier")]
    UnsupportedVersion {
        /// Version found.
        found: u16,
    },
    /// A record kind this build does not know.
    #[error("unknown record kind {found}")]
    UnknownKind {
        /// Kind found.
        found: u16,
    },
    /// A valid record of another kind than the caller expected.
    #[error("record is a {found}, expected a {expected}")]
    WrongKind {
        /// What the caller expected.
        expected: &'static str,
        /// What the record is.
        found: &'static str,
    },
    /// `body_len` is above [`MAX_BODY_LEN`].
    #[error("record declares a {len}-byte body, more than the {MAX_BODY_LEN}-byte limit")]
    TooLarge {
        /// Declared length.
        len: u64,
    },
    /// Bytes after the end of the body.
    #[error("{extra} unexpected bytes after the end of the record")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// The body checksum does not match: the body is corrupt.
    #[error("record body is corrupt: crc32c {actual:#010x}, stored {stored:#010x}")]
    BodyChecksum {
        /// Stored checksum.
        stored: u32,
        /// Checksum of the body bytes.
        actual: u32,
    },
    /// The record was written with another cluster key (its key id is not ours).
    #[error(
        "{name} was written with another cluster key (key id {found:08x}; this host's key {source_name} has id {ours:08x}): every host of a replicated VM needs the same `replication.key_file`"
    )]
    WrongKey {
        /// Store key of the record.
        name: String,
        /// Key id in the record.
        found: u32,
        /// Our key's id.
        ours: u32,
        /// Where our key came from.
        source_name: String,
    },
    /// The MAC does not verify: the record was not written by a holder of the cluster key at
    /// this position.
    #[error(
        "{name} fails authentication with the cluster key: it was forged, or copied from another log position; it is refused and never applied"
    )]
    Forged {
        /// Store key of the record.
        name: String,
    },
    /// The body's checksum is right but its structure is not (a bug of the writer).
    #[error("record body is malformed: {what}")]
    Malformed {
        /// What is wrong.
        what: String,
    },
}

fn malformed(what: impl Into<String>) -> RecordError {
    RecordError::Malformed { what: what.into() }
}

fn kind_name(kind: u16) -> &'static str {
    match kind {
        KIND_CHECKPOINT => "checkpoint",
        KIND_FENCE => "fence",
        KIND_HEARTBEAT => "heartbeat",
        KIND_CLAIM => "epoch claim",
        _ => "record of unknown kind",
    }
}

/// Length of a list or string as its u32 count field.
///
/// # Panics
///
/// If `n` exceeds `u32::MAX` (4 Gi entries, beyond any guest vmtier supports).
fn count32(n: usize, what: &str) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("{what}: {n} entries do not fit a record"))
}

/// Frames `body` as a record of `kind` stored under `name`, MAC included.
fn frame(key: &ClusterKey, name: &str, kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&key.id().to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let hcrc = crc32c::crc32c(&out[..28]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(body);
    let mac = key.record_mac(name, &out);
    out.extend_from_slice(&mac);
    out
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Frames arbitrary `body` bytes as a record of `kind` stored under `name`, sealed with `key`:
/// for fuzzing the body decoders behind a valid MAC, and for tests. (Anyone holding the key can
/// write any record; the key, not this function, is the secret.)
pub fn seal(key: &ClusterKey, name: &str, kind: u16, body: &[u8]) -> Vec<u8> {
    frame(key, name, kind, body)
}

/// Checks a frame stored under `name` (checksums, then key id and MAC) and returns its kind and
/// body.
fn unframe<'a>(key: &ClusterKey, name: &str, bytes: &'a [u8]) -> Result<(u16, &'a [u8]), RecordError> {
    let have = bytes.len() as u64;
    if bytes.len() < HEADER_LEN {
        return Err(RecordError::Truncated { need: HEADER_LEN as u64, have });
    }
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&bytes[..8]);
    if magic != MAGIC {
        return Err(RecordError::BadMagic { found: magic });
    }
    let stored = le32(bytes, 28);
    let actual = crc32c::crc32c(&bytes[..28]);
    if stored != actual {
        return Err(RecordError::HeaderChecksum { stored, actual });
    }
    let version = le16(bytes, 8);
    if version != VERSION {
        return Err(RecordError::UnsupportedVersion { found: version });
    }
    let kind = le16(bytes, 10);
    if !(KIND_CHECKPOINT..=KIND_CLAIM).contains(&kind) {
        return Err(RecordError::UnknownKind { found: kind });
    }
    let body_len = le64(bytes, 16);
    if body_len > MAX_BODY_LEN {
        return Err(RecordError::TooLarge { len: body_len });
    }
    let need = HEADER_LEN as u64 + body_len + TRAILER_LEN as u64;
    if have < need {
        return Err(RecordError::Truncated { need, have });
    }
    if have > need {
        return Err(RecordError::TrailingBytes { extra: have - need });
    }
    let end = bytes.len() - TRAILER_LEN;
    let body = &bytes[HEADER_LEN..end];
    let stored = le32(bytes, 24);
    let actual = crc32c::crc32c(body);
    if stored != actual {
        return Err(RecordError::BodyChecksum { stored, actual });
    }
    let found = le32(bytes, 12);
    if found != key.id() {
        return Err(RecordError::WrongKey {
            name: name.to_string(),
            found,
            ours: key.id(),
            source_name: key.source().to_string(),
        });
    }
    if !key.verify_record(name, &bytes[..end], &bytes[end..]) {
        return Err(RecordError::Forged { name: name.to_string() });
    }
    Ok((kind, body))
}

/// Reads a body field by field; every read checks the bytes left.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0 }
    }

    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], RecordError> {
        if self.left() < n {
            return Err(malformed(format!("body ends inside {what} (offset {})", self.pos)));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, RecordError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, RecordError> {
        Ok(le16(self.take(2, what)?, 0))
    }

    fn u32(&mut self, what: &str) -> Result<u32, RecordError> {
        Ok(le32(self.take(4, what)?, 0))
    }

    fn u64(&mut self, what: &str) -> Result<u64, RecordError> {
        Ok(le64(self.take(8, what)?, 0))
    }

    fn string(&mut self, what: &str) -> Result<String, RecordError> {
        let len = self.u32(what)? as usize;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| malformed(format!("{what} is not UTF-8")))
    }

    fn finish(&self) -> Result<(), RecordError> {
        if self.left() != 0 {
            return Err(malformed(format!("{} bytes left over at the end of the body", self.left())));
        }
        Ok(())
    }
}

fn put_string(out: &mut Vec<u8>, s: &str, what: &str) {
    out.extend_from_slice(&count32(s.len(), what).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Bytes of `c`'s record (header included) when written by the primary of `epoch` (which
/// decides how compact its page locations are), without encoding it.
pub fn checkpoint_len(c: &Checkpoint, epoch: u64) -> usize {
    let page_bytes: usize = c
        .pages
        .iter()
        .map(|p| match p.loc {
            Location::Zero => 9,
            Location::Ssd { store, .. } if store == epoch => 13 + TAG_LEN,
            Location::Object { store, .. } if store == epoch => 15 + TAG_LEN,
            Location::Ssd { .. } => 21 + TAG_LEN,
            Location::Object { .. } => 23 + TAG_LEN,
        })
        .sum();
    HEADER_LEN + CHECKPOINT_FIXED + page_bytes + HEAT_ENTRY as usize * c.heat.len() + c.vcpu.len() + TRAILER_LEN
}

/// Encodes a checkpoint with `seq` and `epoch` in place of its own fields (the log writer fills
/// them in without copying the page list).
pub(crate) fn encode_checkpoint_as(key: &ClusterKey, c: &Checkpoint, seq: u64, epoch: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(checkpoint_len(c, epoch) - HEADER_LEN - TRAILER_LEN);
    for v in [seq, epoch, c.created_unix_ms, c.guest_bytes, c.digest] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let flags = if c.full { FLAG_FULL } else { 0 } | if c.heat_full { FLAG_HEAT_FULL } else { 0 };
    b.push(flags);
    b.extend_from_slice(&count32(c.pages.len(), "checkpoint pages").to_le_bytes());
    b.extend_from_slice(&count32(c.heat.len(), "checkpoint heat list").to_le_bytes());
    b.extend_from_slice(&count32(c.vcpu.len(), "checkpoint vCPU state").to_le_bytes());
    for p in &c.pages {
        b.extend_from_slice(&p.page.to_le_bytes());
        match p.loc {
            Location::Zero => {
                b.push(TAG_ZERO);
                b.extend_from_slice(&p.crc.to_le_bytes());
            }
            Location::Ssd { store, slot } => {
                b.push(if store == epoch { TAG_SSD } else { TAG_SSD_OF });
                b.extend_from_slice(&p.crc.to_le_bytes());
                if store != epoch {
                    b.extend_from_slice(&store.to_le_bytes());
                }
                b.extend_from_slice(&slot.to_le_bytes());
                b.extend_from_slice(&p.tag);
            }
            Location::Object { store, segment, index } => {
                b.push(if store == epoch { TAG_OBJECT } else { TAG_OBJECT_OF });
                b.extend_from_slice(&p.crc.to_le_bytes());
                if store != epoch {
                    b.extend_from_slice(&store.to_le_bytes());
                }
                b.extend_from_slice(&segment.to_le_bytes());
                b.extend_from_slice(&index.to_le_bytes());
                b.extend_from_slice(&p.tag);
            }
        }
    }
    for h in &c.heat {
        b.extend_from_slice(&h.page.to_le_bytes());
        b.push(h.freq);
        b.extend_from_slice(&h.age.to_le_bytes());
    }
    b.extend_from_slice(&c.vcpu);
    frame(key, &crate::log::log_key(seq), KIND_CHECKPOINT, &b)
}

fn encode_fence(key: &ClusterKey, f: &Fence) -> Vec<u8> {
    let mut b = Vec::with_capacity(28 + f.holder.len());
    for v in [f.seq, f.epoch, f.created_unix_ms] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    put_string(&mut b, &f.holder, "fence holder");
    frame(key, &crate::log::log_key(f.seq), KIND_FENCE, &b)
}

/// Encodes a log record, authenticated with `key` for its position `log/{seq:020}.rec`.
///
/// # Panics
///
/// If a list holds more than `u32::MAX` entries (no guest vmtier supports gets near).
pub fn encode(key: &ClusterKey, r: &Record) -> Vec<u8> {
    match r {
        Record::Checkpoint(c) => encode_checkpoint_as(key, c, c.seq, c.epoch),
        Record::Fence(f) => encode_fence(key, f),
    }
}

fn decode_checkpoint(body: &[u8]) -> Result<Checkpoint, RecordError> {
    let mut c = Cursor::new(body);
    let seq = c.u64("seq")?;
    let epoch = c.u64("epoch")?;
    let created_unix_ms = c.u64("created_unix_ms")?;
    let guest_bytes = c.u64("guest_bytes")?;
    let digest = c.u64("digest")?;
    let flags = c.u8("flags")?;
    if flags & !(FLAG_FULL | FLAG_HEAT_FULL) != 0 {
        return Err(malformed(format!("unknown checkpoint flags {flags:#04x}")));
    }
    let n_pages = c.u32("page_count")?;
    let n_heat = c.u32("heat_count")?;
    let vcpu_len = c.u32("vcpu_len")?;
    // Cap every count against the bytes present before allocating anything.
    let min = u64::from(n_pages) * PAGE_ENTRY_MIN + u64::from(n_heat) * HEAT_ENTRY + u64::from(vcpu_len);
    if min > c.left() as u64 {
        return Err(malformed(format!(
            "{n_pages} pages, {n_heat} heat entries and {vcpu_len} vCPU bytes need at least {min} bytes, the body has {} left",
            c.left()
        )));
    }
    let mut pages = Vec::with_capacity(n_pages as usize);
    for i in 0..n_pages {
        let page = c.u32("page entry")?;
        let tag = c.u8("page entry")?;
        let crc = c.u32("page entry")?;
        let loc = match tag {
            TAG_ZERO => {
                pages.push(PageLoc { page, loc: Location::Zero, crc, tag: [0; TAG_LEN] });
                continue;
            }
            TAG_SSD => Location::Ssd { store: epoch, slot: c.u32("page entry")? },
            TAG_OBJECT => Location::Object { store: epoch, segment: c.u32("page entry")?, index: c.u16("page entry")? },
            TAG_SSD_OF => Location::Ssd { store: c.u64("page entry")?, slot: c.u32("page entry")? },
            TAG_OBJECT_OF => Location::Object {
                store: c.u64("page entry")?,
                segment: c.u32("page entry")?,
                index: c.u16("page entry")?,
            },
            t => return Err(malformed(format!("page entry {i} (page {page}) has unknown location tag {t}"))),
        };
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(c.take(TAG_LEN, "page tag")?);
        pages.push(PageLoc { page, loc, crc, tag });
    }
    if u64::from(n_heat) * HEAT_ENTRY + u64::from(vcpu_len) > c.left() as u64 {
        return Err(malformed("heat list and vCPU state run past the end of the body"));
    }
    let mut heat = Vec::with_capacity(n_heat as usize);
    for _ in 0..n_heat {
        heat.push(Heat { page: c.u32("heat entry")?, freq: c.u8("heat entry")?, age: c.u16("heat entry")? });
    }
    let vcpu = c.take(vcpu_len as usize, "vCPU state")?.to_vec();
    c.finish()?;
    Ok(Checkpoint {
        seq,
        epoch,
        created_unix_ms,
        guest_bytes,
        full: flags & FLAG_FULL != 0,
        pages,
        heat_full: flags & FLAG_HEAT_FULL != 0,
        heat,
        digest,
        vcpu,
    })
}

fn decode_fence(body: &[u8]) -> Result<Fence, RecordError> {
    let mut c = Cursor::new(body);
    let f = Fence {
        seq: c.u64("seq")?,
        epoch: c.u64("epoch")?,
        created_unix_ms: c.u64("created_unix_ms")?,
        holder: c.string("holder")?,
    };
    c.finish()?;
    Ok(f)
}

/// Decodes the log record stored under `name` (its store key, `log/{seq:020}.rec`), checking
/// its MAC with `key`. Never panics; any defect is an error.
pub fn decode(key: &ClusterKey, name: &str, bytes: &[u8]) -> Result<Record, RecordError> {
    let (kind, body) = unframe(key, name, bytes)?;
    match kind {
        KIND_CHECKPOINT => decode_checkpoint(body).map(Record::Checkpoint),
        KIND_FENCE => decode_fence(body).map(Record::Fence),
        k => Err(RecordError::WrongKind { expected: "log record", found: kind_name(k) }),
    }
}

/// Encodes a heartbeat (stored under `lease/heartbeat`).
pub fn encode_heartbeat(key: &ClusterKey, h: &Heartbeat) -> Vec<u8> {
    let mut b = Vec::with_capacity(36 + h.holder.len());
    for v in [h.epoch, h.counter, h.unix_ms, h.last_committed] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    put_string(&mut b, &h.holder, "heartbeat holder");
    frame(key, crate::log::HEARTBEAT_KEY, KIND_HEARTBEAT, &b)
}

/// Decodes the heartbeat (stored under `lease/heartbeat`), checking its MAC. Never panics.
pub fn decode_heartbeat(key: &ClusterKey, bytes: &[u8]) -> Result<Heartbeat, RecordError> {
    let (kind, body) = unframe(key, crate::log::HEARTBEAT_KEY, bytes)?;
    if kind != KIND_HEARTBEAT {
        return Err(RecordError::WrongKind { expected: "heartbeat", found: kind_name(kind) });
    }
    let mut c = Cursor::new(body);
    let h = Heartbeat {
        epoch: c.u64("epoch")?,
        counter: c.u64("counter")?,
        unix_ms: c.u64("unix_ms")?,
        last_committed: c.u64("last_committed")?,
        holder: c.string("holder")?,
    };
    c.finish()?;
    Ok(h)
}

/// Encodes an epoch claim (stored under `lease/{epoch:020}.epoch`).
pub fn encode_claim(key: &ClusterKey, cl: &Claim) -> Vec<u8> {
    let mut b = Vec::with_capacity(28 + cl.holder.len());
    for v in [cl.epoch, cl.created_unix_ms, cl.nonce] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    put_string(&mut b, &cl.holder, "claim holder");
    frame(key, &crate::log::epoch_key(cl.epoch), KIND_CLAIM, &b)
}

/// Decodes the epoch claim stored under `name` (`lease/{epoch:020}.epoch`), checking its MAC.
/// Never panics.
pub fn decode_claim(key: &ClusterKey, name: &str, bytes: &[u8]) -> Result<Claim, RecordError> {
    let (kind, body) = unframe(key, name, bytes)?;
    if kind != KIND_CLAIM {
        return Err(RecordError::WrongKind { expected: "epoch claim", found: kind_name(kind) });
    }
    let mut c = Cursor::new(body);
    let cl = Claim {
        epoch: c.u64("epoch")?,
        created_unix_ms: c.u64("created_unix_ms")?,
        nonce: c.u64("nonce")?,
        holder: c.string("holder")?,
    };
    c.finish()?;
    Ok(cl)
}

/// SplitMix64's finalizer: a bijection on `u64` that spreads every input bit over the output.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The term one page contributes to [`map_digest`]: `mix64(page << 32 | crc)`.
pub const fn page_digest(page: u32, crc: u32) -> u64 {
    mix64(((page as u64) << 32) | crc as u64)
}

/// Order-independent digest of a memory map: the wrapping sum of [`page_digest`] over `(page,
/// crc)` of every page whose location is not [`Location::Zero`]. See the [module docs](self).
pub fn map_digest(map: impl Iterator<Item = (u32, u32)>) -> u64 {
    map.fold(0u64, |acc, (page, crc)| acc.wrapping_add(page_digest(page, crc)))
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Zero => write!(f, "zero"),
            Location::Ssd { store, slot } => write!(f, "tier-2 slot {slot} of epoch {store}"),
            Location::Object { store, segment, index } => {
                write!(f, "tier-3 segment {segment} page {index} of epoch {store}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::log::{HEARTBEAT_KEY, epoch_key, log_key};

    fn key() -> ClusterKey {
        ClusterKey::from_bytes(&[0x42; 32], "test key").expect("key")
    }

    /// Decodes a log record at its own position.
    fn dec(bytes: &[u8]) -> Result<Record, RecordError> {
        // The seq is at body offset 0 for both kinds; a record too short has none.
        let seq = if bytes.len() >= HEADER_LEN + 8 { le64(bytes, HEADER_LEN) } else { 0 };
        decode(&key(), &log_key(seq), bytes)
    }

    /// Frames a body as a log record at position 0 (tests of the body parser).
    fn fr(kind: u16, body: &[u8]) -> Vec<u8> {
        let seq = if body.len() >= 8 { le64(body, 0) } else { 0 };
        frame(&key(), &log_key(seq), kind, body)
    }

    fn sample() -> Checkpoint {
        Checkpoint {
            seq: 7,
            epoch: 2,
            created_unix_ms: 1_700_000_000_000,
            guest_bytes: 1 << 30,
            full: true,
            pages: vec![
                PageLoc { page: 0, loc: Location::Zero, crc: 0, tag: [0; 16] },
                PageLoc { page: 1, loc: Location::Ssd { store: 2, slot: 99 }, crc: 0xdead_beef, tag: [9; 16] },
                PageLoc { page: 2, loc: Location::Object { store: 2, segment: 5, index: 1023 }, crc: 42, tag: [9; 16] },
                PageLoc { page: 3, loc: Location::Ssd { store: 1, slot: 7 }, crc: 1, tag: [9; 16] },
                PageLoc { page: 4, loc: Location::Object { store: 1, segment: 6, index: 0 }, crc: 2, tag: [9; 16] },
            ],
            heat_full: true,
            heat: vec![Heat { page: 2, freq: 100, age: 0 }, Heat { page: 1, freq: 3, age: 700 }],
            digest: 0x0123_4567_89ab_cdef,
            vcpu: vec![1, 2, 3],
        }
    }

    #[test]
    fn checkpoint_round_trip_and_layout() {
        let c = sample();
        let bytes = encode(&key(), &Record::Checkpoint(c.clone()));
        // Locations in the writer's own store (epoch 2) are compact; an earlier epoch's carry it.
        assert_eq!(bytes.len(), HEADER_LEN + CHECKPOINT_FIXED + 9 + 29 + 31 + 37 + 39 + 2 * 7 + 3 + TRAILER_LEN);
        assert_eq!(checkpoint_len(&c, c.epoch), bytes.len());
        assert_eq!(&bytes[..8], b"VMTLOG01");
        assert_eq!(le16(&bytes, 8), VERSION);
        assert_eq!(le16(&bytes, 10), KIND_CHECKPOINT);
        assert_eq!(le64(&bytes, 16), (bytes.len() - HEADER_LEN - TRAILER_LEN) as u64);
        assert_eq!(le32(&bytes, 12), key().id(), "key id");
        assert_eq!(le64(&bytes, HEADER_LEN), 7, "seq at body offset 0");
        assert_eq!(bytes[HEADER_LEN + 40], FLAG_FULL | FLAG_HEAT_FULL);
        assert_eq!(dec(&bytes), Ok(Record::Checkpoint(c)));
    }

    #[test]
    fn fence_heartbeat_claim_round_trip() {
        let f = Fence { seq: 9, epoch: 3, created_unix_ms: 5, holder: "host-b:1234".into() };
        assert_eq!(dec(&encode(&key(), &Record::Fence(f.clone()))), Ok(Record::Fence(f)));
        let h = Heartbeat { epoch: 3, holder: "host-b".into(), counter: 17, unix_ms: 8, last_committed: 12 };
        assert_eq!(decode_heartbeat(&key(), &encode_heartbeat(&key(), &h)), Ok(h.clone()));
        let cl = Claim { epoch: 4, created_unix_ms: 1, nonce: 77, holder: "ü".into() };
        assert_eq!(decode_claim(&key(), &epoch_key(4), &encode_claim(&key(), &cl)), Ok(cl));
        // Kinds are not interchangeable.
        let hb = encode_heartbeat(&key(), &h);
        assert!(matches!(decode(&key(), HEARTBEAT_KEY, &hb), Err(RecordError::WrongKind { found: "heartbeat", .. })));
        // Under another record's name, the MAC fails first.
        assert!(matches!(dec(&hb), Err(RecordError::Forged { .. })));
        let fence = encode(&key(), &Record::Fence(Fence::default()));
        assert!(matches!(decode_heartbeat(&key(), &fence), Err(RecordError::Forged { .. })));
        assert!(matches!(
            decode_claim(&key(), &log_key(0), &fence),
            Err(RecordError::WrongKind { found: "fence", .. })
        ));
    }

    #[test]
    fn specific_errors() {
        let good = encode(&key(), &Record::Checkpoint(sample()));
        assert_eq!(dec(&good[..10]), Err(RecordError::Truncated { need: 32, have: 10 }));
        assert_eq!(
            dec(&good[..good.len() - 1]),
            Err(RecordError::Truncated { need: good.len() as u64, have: good.len() as u64 - 1 })
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(dec(&long), Err(RecordError::TrailingBytes { extra: 1 }));

        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(dec(&bad), Err(RecordError::BadMagic { .. })));

        let mut bad = good.clone();
        bad[17] ^= 1;
        assert!(matches!(dec(&bad), Err(RecordError::HeaderChecksum { .. })));

        let mut bad = good.clone();
        bad[HEADER_LEN + 3] ^= 0x80;
        assert!(matches!(dec(&bad), Err(RecordError::BodyChecksum { .. })));

        // A header re-sealed with another version / kind / length.
        let reseal = |mut b: Vec<u8>, at: usize, val: &[u8]| {
            b[at..at + val.len()].copy_from_slice(val);
            let crc = crc32c::crc32c(&b[..28]);
            b[28..32].copy_from_slice(&crc.to_le_bytes());
            b
        };
        assert_eq!(
            dec(&reseal(good.clone(), 8, &1u16.to_le_bytes())),
            Err(RecordError::UnsupportedVersion { found: 1 }),
            "version 1 (unauthenticated) is refused"
        );
        assert_eq!(dec(&reseal(good.clone(), 10, &9u16.to_le_bytes())), Err(RecordError::UnknownKind { found: 9 }));
        assert_eq!(
            dec(&reseal(good.clone(), 16, &u64::MAX.to_le_bytes())),
            Err(RecordError::TooLarge { len: u64::MAX })
        );
        assert!(matches!(dec(&reseal(good.clone(), 12, &1u32.to_le_bytes())), Err(RecordError::WrongKey { .. })));
    }

    /// A record changed by someone without the key, with its checksums made right again, is
    /// refused as forged; one written with another key as such; one moved to another position
    /// fails its MAC.
    #[test]
    fn forged_moved_and_foreign_records_are_refused() {
        let good = encode(&key(), &Record::Checkpoint(sample()));
        assert!(dec(&good).is_ok());
        // Forge: point page 1 elsewhere, fix both crcs.
        let mut forged = good.clone();
        let end = forged.len() - TRAILER_LEN;
        forged[HEADER_LEN + CHECKPOINT_FIXED + 9 + 9] ^= 0x01; // page 1's slot
        let bcrc = crc32c::crc32c(&forged[HEADER_LEN..end]);
        forged[24..28].copy_from_slice(&bcrc.to_le_bytes());
        let hcrc = crc32c::crc32c(&forged[..28]);
        forged[28..32].copy_from_slice(&hcrc.to_le_bytes());
        let err = dec(&forged).expect_err("forged");
        assert_eq!(err, RecordError::Forged { name: log_key(7) });
        assert!(err.to_string().contains("log/00000000000000000007.rec"), "{err}");
        // The same record presented at another position.
        assert_eq!(decode(&key(), &log_key(8), &good), Err(RecordError::Forged { name: log_key(8) }));
        // A claim moved to another epoch.
        let cl = encode_claim(&key(), &Claim { epoch: 3, holder: "a".into(), ..Claim::default() });
        assert!(decode_claim(&key(), &epoch_key(3), &cl).is_ok());
        assert!(matches!(decode_claim(&key(), &epoch_key(4), &cl), Err(RecordError::Forged { .. })));
        // Another cluster's key: named as such.
        let theirs = ClusterKey::from_bytes(&[7; 32], "their key").expect("key");
        let foreign = encode(&theirs, &Record::Checkpoint(sample()));
        let err = dec(&foreign).expect_err("wrong key");
        assert!(
            matches!(&err, RecordError::WrongKey { found, ours, .. } if *found == theirs.id() && *ours == key().id())
        );
        assert!(err.to_string().contains("test key") && err.to_string().contains("key_file"), "{err}");
        // A foreigner that copies our key id still fails the MAC.
        let mut copied_id = foreign.clone();
        copied_id[12..16].copy_from_slice(&key().id().to_le_bytes());
        let hcrc = crc32c::crc32c(&copied_id[..28]);
        copied_id[28..32].copy_from_slice(&hcrc.to_le_bytes());
        assert!(matches!(dec(&copied_id), Err(RecordError::Forged { .. })));
    }

    /// A body with a valid checksum but an absurd page count is refused before allocating.
    #[test]
    fn absurd_counts_are_refused() {
        let mut body = vec![0u8; CHECKPOINT_FIXED];
        body[41..45].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = dec(&fr(KIND_CHECKPOINT, &body)).expect_err("absurd count");
        assert!(matches!(&err, RecordError::Malformed { what } if what.contains("4294967295 pages")), "{err}");
        let mut body = vec![0u8; 28];
        body[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(dec(&fr(KIND_FENCE, &body)), Err(RecordError::Malformed { .. })));
        // Unknown location tag, unknown flags, invalid UTF-8.
        let mut body = vec![0u8; CHECKPOINT_FIXED + 9];
        body[41] = 1;
        body[CHECKPOINT_FIXED + 4] = 7;
        assert!(
            matches!(dec(&fr(KIND_CHECKPOINT, &body)), Err(RecordError::Malformed { what }) if what.contains("tag 7"))
        );
        let mut body = vec![0u8; CHECKPOINT_FIXED];
        body[40] = 0x80;
        assert!(matches!(dec(&fr(KIND_CHECKPOINT, &body)), Err(RecordError::Malformed { .. })));
        let mut body = vec![0u8; 29];
        body[24] = 1;
        body[28] = 0xff;
        assert!(matches!(dec(&fr(KIND_FENCE, &body)), Err(RecordError::Malformed { what }) if what.contains("UTF-8")));
    }

    #[test]
    fn digest_is_order_independent_and_incremental() {
        let a = [(1u32, 10u32), (2, 20), (3, 30)];
        let d = map_digest(a.iter().copied());
        assert_eq!(d, map_digest(a.iter().rev().copied()));
        assert_eq!(map_digest(std::iter::empty()), 0);
        assert_ne!(d, map_digest([(1, 10), (2, 21), (3, 30)].into_iter()));
        assert_ne!(d, map_digest([(1, 10), (2, 20)].into_iter()));
        // Update page 2 incrementally.
        let updated = d.wrapping_sub(page_digest(2, 20)).wrapping_add(page_digest(2, 21));
        assert_eq!(updated, map_digest([(1, 10), (2, 21), (3, 30)].into_iter()));
    }

    fn arb_location() -> impl Strategy<Value = Location> {
        prop_oneof![
            Just(Location::Zero),
            (0u64..4, any::<u32>()).prop_map(|(store, slot)| Location::Ssd { store, slot }),
            (0u64..4, any::<u32>(), any::<u16>()).prop_map(|(store, segment, index)| Location::Object {
                store,
                segment,
                index
            }),
        ]
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let page = (any::<u32>(), arb_location(), any::<u32>()).prop_map(|(page, loc, crc)| {
            let tag = if loc == Location::Zero { [0; 16] } else { [crc as u8; 16] };
            PageLoc { page, loc, crc, tag }
        });
        let heat = (any::<u32>(), 0u8..=100, any::<u16>()).prop_map(|(page, freq, age)| Heat { page, freq, age });
        let ckpt = (
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>(), any::<u64>()),
            proptest::collection::vec(page, 0..40),
            proptest::collection::vec(heat, 0..20),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(
                |((seq, epoch, created_unix_ms, guest_bytes, full, heat_full, digest), pages, heat, vcpu)| {
                    Record::Checkpoint(Checkpoint {
                        seq,
                        epoch,
                        created_unix_ms,
                        guest_bytes,
                        full,
                        pages,
                        heat_full,
                        heat,
                        digest,
                        vcpu,
                    })
                },
            );
        let fence =
            (any::<u64>(), any::<u64>(), any::<u64>(), ".{0,40}").prop_map(|(seq, epoch, created_unix_ms, holder)| {
                Record::Fence(Fence { seq, epoch, created_unix_ms, holder })
            });
        prop_oneof![3 => ckpt, 1 => fence]
    }

    proptest! {
        #[test]
        fn round_trip(r in arb_record()) {
            let bytes = encode(&key(), &r);
            prop_assert_eq!(dec(&bytes), Ok(r));
        }

        #[test]
        fn decode_never_panics_on_noise(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = dec(&bytes);
            let _ = decode_heartbeat(&key(), &bytes);
            let _ = decode_claim(&key(), &epoch_key(1), &bytes);
        }

        /// Noise behind a valid header (so the body parser, not the checksum, is exercised).
        #[test]
        fn decode_never_panics_on_sealed_noise(kind in 1u16..=4, body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let bytes = fr(kind, &body);
            let _ = dec(&bytes);
            let _ = decode_heartbeat(&key(), &bytes);
            let _ = decode_claim(&key(), &epoch_key(1), &bytes);
        }

        /// Any single flipped bit or truncation of a valid record is an error, never another record.
        #[test]
        fn damage_is_detected(r in arb_record(), pos in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
            let bytes = encode(&key(), &r);
            let mut flipped = bytes.clone();
            let i = pos.index(flipped.len());
            flipped[i] ^= 1 << bit;
            prop_assert!(dec(&flipped).is_err(), "flip at {}", i);
            let n = cut.index(bytes.len());
            prop_assert!(dec(&bytes[..n]).is_err(), "cut at {}", n);
        }
    }
}
