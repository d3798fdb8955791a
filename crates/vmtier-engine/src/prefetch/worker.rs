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
//! Prefetch takes a free frame, or reclaims one of the pages the policy ranked coldest, or a
//! page the second-chance reclaim clock finds idle (not observed since the hand last passed it,
//! not an unused prediction); with none of these, the prediction is dropped. A prediction is
//! for an access in the next few milliseconds, so a page idle for a whole turn of the clock is
//! colder than it: a prefetched page never pushes out a page hotter than itself, and it always
//! counts against the DRAM budget. Unused predictions may hold at most 1/8 of the budget.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use tracing::debug;
use vmtier_uffd::{AlignedBuf, PAGE_SIZE};

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

    /// Bytes of the predictor's tables.
    pub(crate) fn table_bytes(&self) -> usize {
        self.predictor.lock().unwrap_or_else(PoisonError::into_inner).table_bytes()
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
    let mut buf = AlignedBuf::zeroed(MAX_SPAN * PAGE_SIZE);
    let mut evict_buf = AlignedBuf::zeroed(PAGE_SIZE);
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        pf.take(&mut batch);
        let mut i = 0;
        while i < batch.len() {
            if in_flight(p) >= p.budget.cap() / IN_FLIGHT_SHARE {
                add(&p.stats.prefetch_dropped, (batch.len() - i) as u64);
                break;
            }
            match install_run(p, &batch[i..], &mut buf, &mut evict_buf) {
                Run::Installed(n) => i += n,
                Run::Skipped => i += 1,
                Run::NoFrame => {
                    add(&p.stats.prefetch_dropped, (batch.len() - i) as u64);
                    break;
                }
            }
        }
    }
}

/// Predictions resident and not yet used may take at most this share of the DRAM budget
/// (1/8): beyond it, prefetching pushes out pages the guest is still using and costs more
/// faults than it saves — several streams, each with a deep window, on a small budget.
const IN_FLIGHT_SHARE: usize = 8;

/// Prefetched pages resident and not yet used (or evicted unused).
fn in_flight(p: &Pager) -> usize {
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    c(&p.stats.prefetch_issued).saturating_sub(c(&p.stats.prefetch_used) + c(&p.stats.prefetch_wasted)) as usize
}

/// Most pages installed from one read.
const MAX_RUN: usize = 32;

/// Widest span of tier-2 slots one read covers (512 KiB): predictions whose copies lie within
/// it are read together, the slots between them with them — a strided pattern costs one read
/// per span instead of one per page.
const MAX_SPAN: usize = 128;

enum Run {
    /// The first `n` pages of the list were installed.
    Installed(usize),
    /// The first page is resident, busy, a zero page, or its copy could not be read.
    Skipped,
    /// No free frame and no cold page to reclaim.
    NoFrame,
}

/// Installs `pages[0]` and, when the next predictions are tier-2 pages whose slots lie within
/// [`MAX_SPAN`] slots after its slot in the same file, those too: one read for the span, one
/// `pwrite` per page. Stops at the first prediction that does not fit. `buf` holds
/// [`MAX_SPAN`] pages; `evict_buf` (one page) serves evictions that make room.
fn install_run(p: &Pager, pages: &[u64], buf: &mut AlignedBuf, evict_buf: &mut AlignedBuf) -> Run {
    let page = pages[0] as usize;
    let Some(g) = p.table.get(page).try_lock() else { return Run::Skipped };
    let v = g.view();
    if v.resident() || v.home() == Home::Zero || v.word & POISONED != 0 {
        return Run::Skipped;
    }
    if !p.reserve_prefetch_frame(evict_buf) {
        return Run::NoFrame;
    }
    // (guest page, slot offset from the first slot, guard)
    let mut run = vec![(page, 0usize, g, v.crc)];
    if let Home::Ssd(first) = v.home() {
        let spf = p.ssd.config().slots_per_file;
        for &next in pages.iter().skip(1).take(MAX_RUN - 1) {
            let Some(gk) = p.table.get(next as usize).try_lock() else { break };
            let vk = gk.view();
            let Home::Ssd(slot) = vk.home() else { break };
            let offset = slot.0.wrapping_sub(first.0) as usize;
            if vk.resident()
                || vk.word & POISONED != 0
                || offset == 0
                || offset >= MAX_SPAN
                || slot.0 / spf != first.0 / spf
                || run.iter().any(|r| r.1 == offset)
                || !p.reserve_prefetch_frame(evict_buf)
            {
                break;
            }
            run.push((next as usize, offset, gk, vk.crc));
        }
        if run.len() > 1 {
            let span = run.iter().map(|r| r.1).max().unwrap_or(0) + 1;
            let mut expected = vec![None; span];
            for r in &run {
                expected[r.1] = Some(r.3);
            }
            let bytes = &mut buf[..span * PAGE_SIZE];
            if p.ssd.read_span(first, &expected, bytes).is_ok() {
                add(&p.stats.bytes_read, bytes.len() as u64);
                let mut installed = 0;
                for (pg, offset, gk, _) in &run {
                    let data = &bytes[offset * PAGE_SIZE..(offset + 1) * PAGE_SIZE];
                    if let Err(e) = p.write_page_cache(*pg, data) {
                        p.budget.release(1);
                        debug!(page = pg, error = %crate::error::chain(&e), "prefetch install failed");
                        continue;
                    }
                    gk.set(RESIDENT | PREFETCHED);
                    installed += 1;
                }
                add(&p.stats.prefetch_issued, installed as u64);
                return Run::Installed(run.len());
            }
            // The span read failed: install the first page alone (the demand fault reports a
            // bad copy of the others exactly).
            p.budget.release(run.len() - 1);
            run.truncate(1);
        }
    }
    let one = &mut buf[..PAGE_SIZE];
    let written = p.read_home(page, &v, one).and_then(|()| p.write_page_cache(page, one));
    if let Err(e) = written {
        p.budget.release(1);
        debug!(page, error = %crate::error::chain(&e), "prefetch install failed");
        return Run::Skipped;
    }
    run[0].2.set(RESIDENT | PREFETCHED);
    add(&p.stats.prefetch_issued, 1);
    Run::Installed(1)
}
