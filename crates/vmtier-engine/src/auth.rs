//! Authenticated stored pages: when the engine's tiers live on shared storage (a replicated
//! primary), a page read back from tier 2 or 3 must be the engine's own, not one that someone
//! else wrote there with a matching crc32c (crc32c is easy to match on purpose).
//!
//! With a [`PageAuth`] set ([`EngineConfig::page_auth`](crate::EngineConfig::page_auth)), the
//! engine computes a keyed tag of every page it writes from DRAM to tier 2 or 3 — at the write,
//! from the bytes in memory — keeps it beside the page's home (16 bytes a page), carries it in
//! each checkpoint's [`DeltaPage`](crate::DeltaPage), and checks it on every read of a stored
//! copy before the bytes reach guest memory. A copy moved between tiers keeps its tag (the bytes
//! are the same, and were checked when read). A copy that fails is treated as corrupt: the page
//! is poisoned and the guest gets SIGBUS, never the bytes.
//!
//! Without one (a non-replicated `vmtier run`, whose tiers are private to the process) pages
//! carry crc32c only: nobody else writes there, and a tag costs ~2 µs per page.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A page's keyed tag.
pub type PageTag = [u8; 16];

/// Computes page tags with a secret key (vmtier-repl's cluster key implements it).
pub trait PageAuth: Send + Sync + fmt::Debug {
    /// The tag of guest page `page` holding `data` (4096 bytes).
    fn tag(&self, page: u32, data: &[u8]) -> PageTag;
}

/// A shareable [`PageAuth`] for [`EngineConfig`](crate::EngineConfig).
#[derive(Clone)]
pub struct PageAuthHandle(pub Arc<dyn PageAuth>);

impl fmt::Debug for PageAuthHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The engine's page tags, one per page, when authentication is on.
#[derive(Debug)]
pub(crate) struct Tags {
    auth: Option<Arc<dyn PageAuth>>,
    tags: Box<[[AtomicU64; 2]]>,
}

fn split(t: &PageTag) -> [u64; 2] {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&t[..8]);
    b.copy_from_slice(&t[8..]);
    [u64::from_le_bytes(a), u64::from_le_bytes(b)]
}

impl Tags {
    pub(crate) fn new(auth: Option<Arc<dyn PageAuth>>, pages: usize) -> Self {
        let n = if auth.is_some() { pages } else { 0 };
        Self { auth, tags: (0..n).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect() }
    }

    /// Whether stored pages are authenticated.
    pub(crate) fn enabled(&self) -> bool {
        self.auth.is_some()
    }

    /// Computes `page`'s tag for `data` (zeros when off).
    pub(crate) fn compute(&self, page: usize, data: &[u8]) -> PageTag {
        match &self.auth {
            Some(a) => a.tag(page as u32, data),
            None => [0; 16],
        }
    }

    /// Records `tag` as `page`'s (the caller holds the page's lock).
    pub(crate) fn set(&self, page: usize, tag: PageTag) {
        if let Some(slot) = self.tags.get(page) {
            let [a, b] = split(&tag);
            slot[0].store(a, Ordering::Relaxed);
            slot[1].store(b, Ordering::Relaxed);
        }
    }

    /// Computes and records `page`'s tag for `data`, the bytes just written from DRAM.
    pub(crate) fn seal(&self, page: usize, data: &[u8]) {
        if self.enabled() {
            self.set(page, self.compute(page, data));
        }
    }

    /// `page`'s recorded tag (zeros when off).
    pub(crate) fn get(&self, page: usize) -> PageTag {
        let Some(slot) = self.tags.get(page) else { return [0; 16] };
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&slot[0].load(Ordering::Relaxed).to_le_bytes());
        t[8..].copy_from_slice(&slot[1].load(Ordering::Relaxed).to_le_bytes());
        t
    }

    /// Whether `data` read back for `page` carries `page`'s recorded tag (always, when off).
    /// Constant-time comparison.
    pub(crate) fn check(&self, page: usize, data: &[u8]) -> bool {
        if !self.enabled() {
            return true;
        }
        tags_equal(&self.get(page), &self.compute(page, data))
    }
}

/// Whether two tags are equal, in constant time.
pub(crate) fn tags_equal(a: &PageTag, b: &PageTag) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
