//! Prefetch plumbing: the queue between the fault handlers (which feed the predictor) and the
//! prefetch thread (which installs what it predicted), and the accounting.
//!
//! A prefetched page is installed *unmapped*: its stored copy is read (checksum verified) and
//! written into the memfd's page cache with `pwrite`, and the page is marked `RESIDENT |
//! PREFETCHED`. The guest's first touch of it is then a MINOR fault, resolved with
//! `UFFDIO_CONTINUE` in microseconds instead of a tier read — and it tells the engine exactly
//! which prefetched pages were used (accuracy), which arrived after the guest already faulted
//! on them (timeliness), and which were evicted unused (waste).
//!
//! Prefetch never evicts on its own account beyond the MTM's list of coldest pages: it takes a
//! free frame, or reclaims one of the pages the policy ranked coldest; with neither, the
//! prediction is dropped. So a prefetched page never pushes out a page hotter than the pages
//! the policy would evict anyway, and it always counts against the DRAM budget.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use tracing::debug;
use vmtier_uffd::{AlignedBuf, PAGE_SIZE};

use vmtier_storage::ssd::SlotId;

use super::{Prefetcher, PrefetcherKind};
use crate::page_table::{Home, POISONED, PREFETCHED, RESIDENT};
use crate::pager::Pager;
use crate::stats::{add, bump};

/// Predictions the prefetch thread installs per wake-up.
const BATCH: usize = 64;

/// The predictor and the queue of pages it predicted.
#[derive(Debug)]
pub(crate) struct Prefetch {
    kind: PrefetcherKind,
    predictor: Mutex<Box<dyn Prefetcher>>,
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<u64>,
    queued: HashSet<u64>,
    cap: usize,
}

impl Prefetch {
    pub(crate) fn new(kind: PrefetcherKind, pages: u64, max_window: usize, queue_pages: usize) -> Self {
        Self {
            kind,
            predictor: Mutex::new(kind.build(pages, max_window)),
            queue: Mutex::new(Queue { cap: queue_pages, ..Queue::default() }),
            ready: Condvar::new(),
        }
    }

    pub(crate) fn kind(&self) -> PrefetcherKind {
        self.kind
    }

    /// A demand fault on `page` is about to be served: a prediction still queued for it came
    /// too late, and is dropped.
    pub(crate) fn note_demand(&self, p: &Pager, page: u64) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.queued.remove(&page) {
            q.pending.retain(|&x| x != page);
            bump(&p.stats.prefetch_late);
        }
    }

    /// The guest faulted on `page` (served now): feed the predictor, queue its predictions.
    pub(crate) fn on_fault(&self, p: &Pager, page: u64) {
        let mut out = Vec::new();
        self.predictor.lock().unwrap_or_else(PoisonError::into_inner).on_fault(page, &mut out);
        self.enqueue(p, &out);
    }

    /// The guest touched prefetched `page` for the first time.
    pub(crate) fn on_use(&self, p: &Pager, page: u64) {
        let mut out = Vec::new();
        self.predictor.lock().unwrap_or_else(PoisonError::into_inner).on_use(page, &mut out);
        self.enqueue(p, &out);
    }

    fn enqueue(&self, p: &Pager, predicted: &[u64]) {
        if predicted.is_empty() {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut added = false;
        for &page in predicted {
            if page as usize >= p.table.len() || q.queued.contains(&page) {
                continue;
            }
            let v = p.table.get(page as usize).view();
            if v.resident() || v.home() == Home::Zero || v.word & POISONED != 0 {
                continue;
            }
            if q.pending.len() >= q.cap {
                bump(&p.stats.prefetch_dropped);
                continue;
            }
            q.pending.push_back(page);
            q.queued.insert(page);
            added = true;
        }
        if added {
            self.ready.notify_one();
        }
    }

    /// Takes up to `BATCH` queued pages, waiting up to 50 ms for some.
    fn take(&self, into: &mut Vec<u64>) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if q.pending.is_empty() {
            q = self.ready.wait_timeout(q, Duration::from_millis(50)).unwrap_or_else(PoisonError::into_inner).0;
        }
        while into.len() < BATCH {
            let Some(page) = q.pending.pop_front() else { break };
            q.queued.remove(&page);
            into.push(page);
        }
    }
}

/// The prefetch thread: installs queued predictions until `stop` is set.
pub(crate) fn worker_loop(p: &Pager, stop: &AtomicBool) {
    let Some(pf) = &p.prefetch else { return };
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = AlignedBuf::zeroed(MAX_RUN * PAGE_SIZE);
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        pf.take(&mut batch);
        let mut i = 0;
        while i < batch.len() {
            match install_run(p, &batch[i..], &mut buf) {
                Run::Installed(n) => {
                    add(&p.stats.prefetch_issued, n as u64);
                    i += n;
                }
                Run::Skipped => i += 1,
                Run::NoFrame => {
                    add(&p.stats.prefetch_dropped, (batch.len() - i) as u64);
                    break;
                }
            }
        }
    }
}

/// Most pages installed with one read and one write.
const MAX_RUN: usize = 32;

enum Run {
    /// The first `n` pages of the list were installed.
    Installed(usize),
    /// The first page is resident, busy, a zero page, or its copy could not be read.
    Skipped,
    /// No free frame and no cold page to reclaim.
    NoFrame,
}

/// Installs `pages[0]` and, when the next predictions are the next guest pages stored in the
/// next tier-2 slots of the same file, those too: one read, one `pwrite` for the run.
fn install_run(p: &Pager, pages: &[u64], buf: &mut AlignedBuf) -> Run {
    let page = pages[0] as usize;
    let Some(g) = p.table.get(page).try_lock() else { return Run::Skipped };
    let v = g.view();
    if v.resident() || v.home() == Home::Zero || v.word & POISONED != 0 {
        return Run::Skipped;
    }
    if !p.reserve_prefetch_frame(buf) {
        return Run::NoFrame;
    }
    let mut guards = vec![g];
    let mut crcs = vec![v.crc];
    if let Home::Ssd(first) = v.home() {
        let spf = p.ssd.config().slots_per_file;
        for (k, &next) in pages.iter().enumerate().skip(1).take(MAX_RUN - 1) {
            let slot = first.0 + k as u32;
            if next as usize != page + k || slot / spf != first.0 / spf {
                break;
            }
            let Some(gk) = p.table.get(next as usize).try_lock() else { break };
            let vk = gk.view();
            if vk.resident() || vk.word & POISONED != 0 || vk.home() != Home::Ssd(SlotId(slot)) {
                break;
            }
            if !p.budget.try_reserve() {
                break;
            }
            crcs.push(vk.crc);
            guards.push(gk);
        }
        let bytes = &mut buf[..crcs.len() * PAGE_SIZE];
        if guards.len() > 1 && p.ssd.read_run(first, &crcs, bytes).is_ok() {
            if let Err(e) = p.write_page_cache(page, bytes) {
                p.budget.release(guards.len());
                debug!(page, error = %crate::error::chain(&e), "prefetch install failed");
                return Run::Skipped;
            }
            add(&p.stats.bytes_read, bytes.len() as u64);
            for g in &guards {
                g.set(RESIDENT | PREFETCHED);
            }
            return Run::Installed(guards.len());
        }
        // One page, or the run read failed: install the first page alone (the demand fault
        // reports a bad copy of the others exactly).
        p.budget.release(guards.len() - 1);
        guards.truncate(1);
    }
    let one = &mut buf[..PAGE_SIZE];
    let written = p.read_home(page, &v, one).and_then(|()| p.write_page_cache(page, one));
    if let Err(e) = written {
        p.budget.release(1);
        debug!(page, error = %crate::error::chain(&e), "prefetch install failed");
        return Run::Skipped;
    }
    guards[0].set(RESIDENT | PREFETCHED);
    Run::Installed(1)
}
