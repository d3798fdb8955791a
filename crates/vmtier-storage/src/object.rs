//! Tier 3: guest pages packed into segment objects in an object store ([`ObjectTier`]).
//!
//! The engine demotes cold pages in batches: [`ObjectTier::write_segment`] packs up to
//! `segment_bytes / 4096` pages into one object (format: [`crate::segment`]) with a single PUT,
//! named `<prefix>/seg-<segment:08x>.vts`. A page is read back with one ranged GET of exactly its
//! 4096 bytes, checked against the crc32c the engine keeps in its page table.
//!
//! | url form                    | store                                                      |
//! |-----------------------------|------------------------------------------------------------|
//! | `/abs/dir`, `rel/dir`       | local directory (`LocalFileSystem`), created if missing    |
//! | `file:///abs/dir`           | the same                                                   |
//! | `s3://bucket[/prefix]`      | S3 or an S3-compatible server (`AmazonS3Builder::from_env()`, then the config's endpoint, region, keys, `allow_http`; path-style requests) |
//!
//! **The tier is volatile**, like tier 2: it holds guest memory, which does not outlive the VM.
//! [`ObjectTier::open`] deletes every `seg-*.vts` object directly under the prefix and starts with
//! segment id 0. Which segments exist and which of their pages are still live is kept in memory.
//!
//! Space is reclaimed in two ways:
//! - a segment whose pages have all been [`release`](ObjectTier::release)d is deleted by
//!   [`collect_garbage`](ObjectTier::collect_garbage) (or by [`delete_segment`](ObjectTier::delete_segment));
//!   `release` itself does no I/O, so it is cheap on the fault path;
//! - a segment that is mostly dead ([`compaction_candidates`](ObjectTier::compaction_candidates)) is
//!   compacted by the engine: it reads the [`live_pages`](ObjectTier::live_pages), writes them into
//!   a new segment, updates its page table, releases the old locations and deletes the old segment.
//!
//! The API is synchronous: the tier owns a small tokio runtime (two worker threads) and blocks on
//! it. Call it from plain threads, not from inside another tokio runtime (that is refused with
//! [`ObjectError::InsideRuntime`]).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use vmtier_uffd::PAGE_SIZE;

use crate::fault::FaultPlan;
use crate::segment::{self, SegmentError};

mod faulty;
pub use faulty::FaultyObjectStore;

/// Where a page lives in tier 3: segment id and page index inside the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentLoc {
    /// Segment id (the `seg-<id:08x>.vts` object).
    pub segment: u32,
    /// Page index inside the segment.
    pub index: u16,
}

/// Configuration of tier 3.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectConfig {
    /// Where segments go: a directory path, `file:///abs/path`, or `s3://bucket/prefix`.
    pub url: String,
    /// S3 endpoint, e.g. `http://127.0.0.1:9000` for an S3-compatible server. Default: AWS (or
    /// `AWS_ENDPOINT` from the environment).
    pub endpoint: Option<String>,
    /// S3 region. Default: `AWS_REGION` from the environment, else `us-east-1`.
    pub region: Option<String>,
    /// S3 access key id. Default: `AWS_ACCESS_KEY_ID` from the environment.
    pub access_key_id: Option<String>,
    /// S3 secret access key. Default: `AWS_SECRET_ACCESS_KEY` from the environment. Never printed.
    pub secret_access_key: Option<String>,
    /// Allow plain-HTTP endpoints (also implied by an `endpoint` that starts with `http://`).
    pub allow_http: bool,
    /// Most page bytes per segment: 1 B..=8 MiB, default 4 MiB (1024 pages).
    pub segment_bytes: usize,
    /// A segment whose dead fraction reaches this is a compaction candidate. Default 0.5.
    pub compact_dead_fraction: f64,
}

impl ObjectConfig {
    /// Default segment size (4 MiB of pages).
    pub const DEFAULT_SEGMENT_BYTES: usize = 4 << 20;
    /// Largest allowed segment size (8 MiB of pages).
    pub const MAX_SEGMENT_BYTES: usize = 8 << 20;

    /// A configuration with defaults for segments at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            compact_dead_fraction: 0.5,
        }
    }

    /// Most pages one segment holds.
    pub fn pages_per_segment(&self) -> usize {
        self.segment_bytes / PAGE_SIZE
    }

    /// Checks the ranges of the numeric fields.
    pub fn validate(&self) -> Result<(), ObjectError> {
        if !(1..=Self::MAX_SEGMENT_BYTES).contains(&self.segment_bytes) || self.segment_bytes < PAGE_SIZE {
            return Err(ObjectError::Config {
                reason: format!(
                    "segment_bytes = {} must be between 4096 (one page) and 8 MiB (8388608)",
                    self.segment_bytes
                ),
            });
        }
        if !(self.compact_dead_fraction > 0.0 && self.compact_dead_fraction <= 1.0) {
            return Err(ObjectError::Config {
                reason: format!("compact_dead_fraction = {} must be in (0, 1]", self.compact_dead_fraction),
            });
        }
        Ok(())
    }
}

impl Default for ObjectConfig {
    fn default() -> Self {
        Self::new("vmtier-objects")
    }
}

/// `url` with any credentials in it (`scheme://user:password@host/…`) replaced by
/// `<redacted>`, for messages and logs. Anything without `://` and `@` in its authority is
/// returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(at) = url.find("://") else { return url.to_string() };
    let rest = &url[at + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(i) => format!("{}<redacted>@{}", &url[..at + 3], &rest[i + 1..]),
        None => url.to_string(),
    }
}

impl fmt::Debug for ObjectConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectConfig")
            .field("url", &redact_url(&self.url))
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "<redacted>"))
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .field("segment_bytes", &self.segment_bytes)
            .field("compact_dead_fraction", &self.compact_dead_fraction)
            .finish()
    }
}

/// Errors of tier 3.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The configuration is unusable.
    #[error("invalid tier-3 config: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The url is not one of the accepted forms.
    #[error("tier-3 url {url:?} is not supported: use a directory path, file:///abs/path, or s3://bucket/prefix")]
    ParseUrl {
        /// The url.
        url: String,
    },
    /// The local segment directory could not be created.
    #[error("cannot create tier-3 directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The object store client could not be built from the configuration.
    #[error("cannot set up the object store for {url:?}; check endpoint, region and credentials")]
    Connect {
        /// The url.
        url: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// The tier's tokio runtime could not be started.
    #[error("cannot start the tier-3 I/O runtime")]
    Runtime {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A blocking tier-3 call was made from inside a tokio runtime.
    #[error(
        "tier-3 calls block and cannot run inside a tokio runtime; call them from a plain thread (e.g. spawn_blocking)"
    )]
    InsideRuntime,
    /// Listing or deleting old segments at open failed.
    #[error(
        "cannot clear old segments under {prefix:?}; check the bucket exists and the credentials may list and delete"
    )]
    Clear {
        /// The prefix.
        prefix: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// `write_segment` was given no pages, too many pages, or a page that is not 4096 bytes.
    #[error("cannot encode segment {segment}")]
    Encode {
        /// Segment id it would have had.
        segment: u32,
        /// Cause.
        #[source]
        source: SegmentError,
    },
    /// `write_segment` was given more pages than a segment holds.
    #[error("{pages} pages do not fit one segment (at most {max}); split the batch")]
    TooManyPages {
        /// Pages given.
        pages: usize,
        /// Most pages per segment.
        max: usize,
    },
    /// The PUT of a segment failed.
    #[error("cannot upload segment {key}")]
    Put {
        /// Object key.
        key: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// A GET of a segment (or a page range of it) failed.
    #[error("cannot read segment {key}")]
    Get {
        /// Object key.
        key: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// A ranged GET returned the wrong number of bytes.
    #[error("segment {key} page {index}: got {len} bytes instead of 4096; the object is truncated")]
    ShortRead {
        /// Object key.
        key: String,
        /// Page index.
        index: u16,
        /// Bytes received.
        len: usize,
    },
    /// A page read back does not match its checksum.
    #[error(
        "segment {key} page {index} is corrupt: crc32c {actual:#010x}, expected {expected:#010x}; the page is lost from tier 3"
    )]
    Corrupt {
        /// Object key.
        key: String,
        /// Page index.
        index: u16,
        /// Checksum recorded at write time.
        expected: u32,
        /// Checksum of the bytes read.
        actual: u32,
    },
    /// The output buffer of a read has the wrong length.
    #[error("read buffer is {len} bytes, expected {expected}")]
    BufferSize {
        /// Buffer length.
        len: usize,
        /// Expected length.
        expected: usize,
    },
    /// `release` of a page that is unknown or already released.
    #[error("release of segment {segment} page {index}: no such live page (double release?)")]
    Release {
        /// Segment id.
        segment: u32,
        /// Page index.
        index: u16,
    },
    /// `delete_segment` of a segment that still has live pages.
    #[error("segment {key} still has {live} live pages; move and release them before deleting it")]
    DeleteLive {
        /// Object key.
        key: String,
        /// Live pages.
        live: u32,
    },
    /// The DELETE of a segment failed.
    #[error("cannot delete segment {key}")]
    Delete {
        /// Object key.
        key: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
}

/// Occupancy of tier 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjectStats {
    /// Segment objects stored.
    pub segments: u64,
    /// Pages still referenced.
    pub live_pages: u64,
    /// Released pages still occupying segment space.
    pub dead_pages: u64,
    /// Bytes of all segment objects.
    pub bytes_stored: u64,
}

#[derive(Debug)]
struct SegInfo {
    pages: Vec<u64>,
    live: Vec<bool>,
    live_count: u32,
    bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    next_segment: u32,
    segments: BTreeMap<u32, SegInfo>,
}

/// Tier 3: pages in segment objects. See the [module docs](self).
#[derive(Debug)]
pub struct ObjectTier {
    cfg: ObjectConfig,
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    state: Mutex<State>,
}

/// The object store and key prefix that `cfg.url` names (url forms in the [module docs](self)).
pub fn parse_store(cfg: &ObjectConfig) -> Result<(Arc<dyn ObjectStore>, ObjPath), ObjectError> {
    let url = cfg.url.as_str();
    let parse_err = || ObjectError::ParseUrl { url: url.to_string() };
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(parse_err());
        }
        let prefix = ObjPath::parse(prefix.trim_end_matches('/')).map_err(|_| parse_err())?;
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false);
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &cfg.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let http = cfg.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        if cfg.allow_http || http {
            b = b.with_allow_http(true);
        }
        let s3 = b.build().map_err(|source| ObjectError::Connect { url: redact_url(url), source })?;
        return Ok((Arc::new(s3), prefix));
    }
    let dir = if let Some(p) = url.strip_prefix("file://") {
        if !p.starts_with('/') {
            return Err(parse_err());
        }
        PathBuf::from(p)
    } else if url.contains("://") || url.is_empty() {
        return Err(parse_err());
    } else {
        PathBuf::from(url)
    };
    std::fs::create_dir_all(&dir).map_err(|source| ObjectError::CreateDir { dir: dir.clone(), source })?;
    let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .map_err(|source| ObjectError::Connect { url: redact_url(url), source })?;
    Ok((Arc::new(local), ObjPath::default()))
}

fn is_segment_name(name: &str) -> bool {
    name.len() == "seg-00000000.vts".len()
        && name.starts_with("seg-")
        && name.ends_with(".vts")
        && name[4..12].bytes().all(|b| b.is_ascii_hexdigit())
}

impl ObjectTier {
    /// Opens tier 3 at `cfg.url` and deletes the segments an earlier run left under its prefix
    /// (the tier is volatile and starts empty).
    pub fn open(cfg: ObjectConfig) -> Result<Self, ObjectError> {
        let tier = Self::connect(cfg, None)?;
        tier.clear()?;
        Ok(tier)
    }

    /// [`open`](Self::open), with every request going through a [`FaultyObjectStore`] that
    /// injects the faults of `plan` (fault-injection tests; the tier's own code is unchanged).
    pub fn open_with_faults(cfg: ObjectConfig, plan: Arc<FaultPlan>) -> Result<Self, ObjectError> {
        let tier = Self::connect(cfg, Some(plan))?;
        tier.clear()?;
        Ok(tier)
    }

    /// Opens another process's tier 3 at `cfg.url` to read its pages, as a secondary host reads
    /// the primary's segments: nothing is deleted, and only [`read`](Self::read) and
    /// [`read_many`](Self::read_many) are meaningful (this handle knows no segments of its own).
    pub fn open_reader(cfg: ObjectConfig) -> Result<Self, ObjectError> {
        Self::connect(cfg, None)
    }

    /// Deletes every segment directly under `cfg.url`'s prefix: how a primary reclaims the tier 3
    /// of an earlier epoch once nothing references it. Other objects are left alone.
    pub fn remove_all(cfg: ObjectConfig) -> Result<(), ObjectError> {
        Self::connect(cfg, None)?.clear()
    }

    fn connect(cfg: ObjectConfig, faults: Option<Arc<FaultPlan>>) -> Result<Self, ObjectError> {
        cfg.validate()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(ObjectError::InsideRuntime);
        }
        let (mut store, prefix) = parse_store(&cfg)?;
        if let Some(plan) = faults {
            store = Arc::new(FaultyObjectStore::new(store, plan));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmtier-tier3")
            .enable_all()
            .build()
            .map_err(|source| ObjectError::Runtime { source })?;
        Ok(Self { cfg, rt, store, prefix, state: Mutex::new(State::default()) })
    }

    fn clear(&self) -> Result<(), ObjectError> {
        let prefix_str = self.prefix.to_string();
        let clear_err = |source| ObjectError::Clear { prefix: prefix_str.clone(), source };
        let list_prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        self.block_on(async {
            let metas: Vec<_> = self.store.list(list_prefix).try_collect().await.map_err(clear_err)?;
            for m in metas {
                let direct = m.location.prefix_match(&self.prefix).is_some_and(|rest| {
                    let parts: Vec<_> = rest.collect();
                    parts.len() == 1 && is_segment_name(parts[0].as_ref())
                });
                if direct {
                    tracing::debug!(key = %m.location, "removing stale tier-3 segment");
                    match self.store.delete(&m.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(clear_err(e)),
                    }
                }
            }
            Ok(())
        })?
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output, ObjectError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(ObjectError::InsideRuntime);
        }
        Ok(self.rt.block_on(f))
    }

    /// The configuration the tier was opened with.
    pub fn config(&self) -> &ObjectConfig {
        &self.cfg
    }

    /// Object key of `segment`: `<prefix>/seg-<segment:08x>.vts`.
    pub fn segment_key(&self, segment: u32) -> ObjPath {
        self.prefix.clone().join(format!("seg-{segment:08x}.vts"))
    }

    /// Packs `pages` (guest page number, 4096 bytes each; at most
    /// [`ObjectConfig::pages_per_segment`]) into a new segment written with one PUT. Returns each
    /// page's location and crc32c, in input order.
    pub fn write_segment(&self, pages: &[(u64, &[u8])]) -> Result<Vec<(SegmentLoc, u32)>, ObjectError> {
        let max = self.cfg.pages_per_segment();
        if pages.len() > max {
            return Err(ObjectError::TooManyPages { pages: pages.len(), max });
        }
        let segment = {
            let mut st = self.state.lock();
            let id = st.next_segment;
            st.next_segment = st.next_segment.wrapping_add(1);
            id
        };
        let (bytes, crcs) = segment::encode(pages).map_err(|source| ObjectError::Encode { segment, source })?;
        let len = bytes.len() as u64;
        let key = self.segment_key(segment);
        self.block_on(self.store.put(&key, PutPayload::from(bytes)))?
            .map_err(|source| ObjectError::Put { key: key.to_string(), source })?;
        self.state.lock().segments.insert(
            segment,
            SegInfo {
                pages: pages.iter().map(|(p, _)| *p).collect(),
                live: vec![true; pages.len()],
                live_count: pages.len() as u32,
                bytes: len,
            },
        );
        Ok(crcs.into_iter().enumerate().map(|(i, crc)| (SegmentLoc { segment, index: i as u16 }, crc)).collect())
    }

    fn check_page(&self, loc: SegmentLoc, expected: u32, data: &[u8]) -> Result<(), ObjectError> {
        if data.len() != PAGE_SIZE {
            return Err(ObjectError::ShortRead {
                key: self.segment_key(loc.segment).to_string(),
                index: loc.index,
                len: data.len(),
            });
        }
        let actual = crc32c::crc32c(data);
        if actual != expected {
            return Err(ObjectError::Corrupt {
                key: self.segment_key(loc.segment).to_string(),
                index: loc.index,
                expected,
                actual,
            });
        }
        Ok(())
    }

    fn page_range(loc: SegmentLoc) -> Range<u64> {
        let start = segment::page_offset(loc.index);
        start..start + PAGE_SIZE as u64
    }

    /// Reads the page at `loc` (one ranged GET of its 4096 bytes) into `out` and checks it against
    /// `expected_crc`. A mismatch is [`ObjectError::Corrupt`], never `Ok`.
    pub fn read(&self, loc: SegmentLoc, expected_crc: u32, out: &mut [u8]) -> Result<(), ObjectError> {
        if out.len() != PAGE_SIZE {
            return Err(ObjectError::BufferSize { len: out.len(), expected: PAGE_SIZE });
        }
        let key = self.segment_key(loc.segment);
        let data = self
            .block_on(self.store.get_range(&key, Self::page_range(loc)))?
            .map_err(|source| ObjectError::Get { key: key.to_string(), source })?;
        self.check_page(loc, expected_crc, &data)?;
        out.copy_from_slice(&data);
        Ok(())
    }

    /// Reads several pages (`(location, expected crc32c)`) into `out`, 4096 bytes each in request
    /// order: one batched ranged request per segment (`get_ranges`, which coalesces neighbouring
    /// pages), segments fetched concurrently. Every page is checked as in [`read`](Self::read).
    pub fn read_many(&self, reqs: &[(SegmentLoc, u32)], out: &mut [u8]) -> Result<(), ObjectError> {
        if out.len() != reqs.len() * PAGE_SIZE {
            return Err(ObjectError::BufferSize { len: out.len(), expected: reqs.len() * PAGE_SIZE });
        }
        // segment -> positions in `reqs`
        let mut by_seg: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, (loc, _)) in reqs.iter().enumerate() {
            by_seg.entry(loc.segment).or_default().push(i);
        }
        let fetches = by_seg.iter().map(|(&seg, idx)| {
            let key = self.segment_key(seg);
            let ranges: Vec<Range<u64>> = idx.iter().map(|&i| Self::page_range(reqs[i].0)).collect();
            async move {
                let r = self.store.get_ranges(&key, &ranges).await;
                r.map(|bufs| (idx, bufs)).map_err(|source| ObjectError::Get { key: key.to_string(), source })
            }
        });
        let results: Vec<(&Vec<usize>, Vec<Bytes>)> = self.block_on(futures::future::try_join_all(fetches))??;
        for (idx, bufs) in results {
            for (&i, data) in idx.iter().zip(bufs) {
                let (loc, crc) = reqs[i];
                self.check_page(loc, crc, &data)?;
                out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(&data);
            }
        }
        Ok(())
    }

    /// Marks the page at `loc` dead (its guest page moved elsewhere). No I/O: a segment whose
    /// pages are all released is deleted by [`collect_garbage`](Self::collect_garbage).
    pub fn release(&self, loc: SegmentLoc) -> Result<(), ObjectError> {
        let mut st = self.state.lock();
        let err = ObjectError::Release { segment: loc.segment, index: loc.index };
        let Some(seg) = st.segments.get_mut(&loc.segment) else {
            return Err(err);
        };
        match seg.live.get_mut(usize::from(loc.index)) {
            Some(l) if *l => {
                *l = false;
                seg.live_count -= 1;
                Ok(())
            }
            _ => Err(err),
        }
    }

    /// Segments whose dead fraction is at least `compact_dead_fraction`, oldest first (fully dead
    /// segments included: they need no moves, only [`delete_segment`](Self::delete_segment)).
    pub fn compaction_candidates(&self) -> Vec<u32> {
        let st = self.state.lock();
        st.segments
            .iter()
            .filter(|(_, s)| {
                let total = s.live.len() as f64;
                let dead = total - f64::from(s.live_count);
                total > 0.0 && dead / total >= self.cfg.compact_dead_fraction
            })
            .map(|(&id, _)| id)
            .collect()
    }

    /// Live pages of `segment` as `(index, guest page number)`; empty if the segment is unknown.
    pub fn live_pages(&self, segment: u32) -> Vec<(u16, u64)> {
        let st = self.state.lock();
        st.segments.get(&segment).map_or_else(Vec::new, |s| {
            s.pages
                .iter()
                .zip(&s.live)
                .enumerate()
                .filter(|(_, (_, live))| **live)
                .map(|(i, (p, _))| (i as u16, *p))
                .collect()
        })
    }

    /// Deletes `segment`. Refused ([`ObjectError::DeleteLive`]) while any of its pages is live.
    /// Deleting an unknown segment is a no-op.
    pub fn delete_segment(&self, segment: u32) -> Result<(), ObjectError> {
        let key = self.segment_key(segment);
        {
            let st = self.state.lock();
            match st.segments.get(&segment) {
                None => return Ok(()),
                Some(s) if s.live_count > 0 => {
                    return Err(ObjectError::DeleteLive { key: key.to_string(), live: s.live_count });
                }
                Some(_) => {}
            }
        }
        match self.block_on(self.store.delete(&key))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => {
                return Err(ObjectError::Delete { key: key.to_string(), source });
            }
        }
        self.state.lock().segments.remove(&segment);
        Ok(())
    }

    /// Deletes every segment whose pages have all been released. Returns how many were deleted.
    pub fn collect_garbage(&self) -> Result<usize, ObjectError> {
        let dead: Vec<u32> = {
            let st = self.state.lock();
            st.segments.iter().filter(|(_, s)| s.live_count == 0).map(|(&id, _)| id).collect()
        };
        for &id in &dead {
            self.delete_segment(id)?;
        }
        Ok(dead.len())
    }

    /// Occupancy of the tier (from its in-memory bookkeeping).
    pub fn stats(&self) -> ObjectStats {
        let st = self.state.lock();
        let mut s = ObjectStats { segments: st.segments.len() as u64, ..ObjectStats::default() };
        for seg in st.segments.values() {
            s.live_pages += u64::from(seg.live_count);
            s.dead_pages += (seg.live.len() as u64) - u64::from(seg.live_count);
            s.bytes_stored += seg.bytes;
        }
        s
    }

    /// Writes raw bytes to `key`, bypassing the segment bookkeeping (tests use it to simulate
    /// corruption; `inspect` tooling may use it to repair).
    pub fn put_raw(&self, key: &ObjPath, bytes: Vec<u8>) -> Result<(), ObjectError> {
        self.block_on(self.store.put(key, PutPayload::from(bytes)))?
            .map(|_| ())
            .map_err(|source| ObjectError::Put { key: key.to_string(), source })
    }

    /// Reads a whole object as raw bytes (tests, `inspect`).
    pub fn get_raw(&self, key: &ObjPath) -> Result<Bytes, ObjectError> {
        self.block_on(async { self.store.get(key).await?.bytes().await })?
            .map_err(|source| ObjectError::Get { key: key.to_string(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secret() {
        let mut c = ObjectConfig::new("s3://b/p");
        c.secret_access_key = Some("hunter2".into());
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("<redacted>"));
    }

    #[test]
    fn config_validation() {
        let c: ObjectConfig = toml::from_str("url = \"/tmp/x\"").expect("parse");
        assert_eq!(c.segment_bytes, 4 << 20);
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<ObjectConfig>("url = \"x\"\nbogus = 1").is_err());
        for bad in [0, 100, (8 << 20) + 1] {
            let mut c = ObjectConfig::new("/tmp/x");
            c.segment_bytes = bad;
            assert!(matches!(c.validate(), Err(ObjectError::Config { .. })));
        }
    }

    #[test]
    fn bad_urls_are_explained() {
        for url in ["http://x/y", "gs://b", "s3://", "file://rel", ""] {
            let err = ObjectTier::open(ObjectConfig::new(url)).expect_err(url);
            assert!(matches!(err, ObjectError::ParseUrl { .. }), "{url}: {err:?}");
            assert!(err.to_string().contains("s3://bucket/prefix"));
        }
    }

    #[test]
    fn calls_from_inside_a_runtime_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = dir.path().to_string_lossy().into_owned();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let r = rt.block_on(async { ObjectTier::open(ObjectConfig::new(url)) });
        assert!(matches!(r, Err(ObjectError::InsideRuntime)));
    }

    #[test]
    fn segment_names() {
        assert!(is_segment_name("seg-0000001f.vts"));
        assert!(!is_segment_name("seg-0000001g.vts"));
        assert!(!is_segment_name("other.vts"));
    }
}
