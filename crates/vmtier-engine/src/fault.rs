//! The fault path: threads that read the userfaultfd and resolve each fault.
//!
//! A fault never waits for the MTM. If its page is being moved (lock taken) or DRAM cannot be
//! freed right now, the fault is *parked* and retried on the next turn of the loop; the guest
//! thread stays blocked in the kernel meanwhile, the handler goes on serving others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{error, trace};
use vmtier_uffd::{AlignedBuf, Event, FaultKind, Filled, PAGE_SIZE};

use crate::page_table::{CAPTURED, POISONED, PREFETCHED, WRITTEN};
use crate::pager::Pager;
use crate::stats::{add, bump};
use crate::tracker::AccessKind;

/// A deferred fault gives up (and poisons its page) after this many failed attempts at I/O.
const MAX_IO_ATTEMPTS: u32 = 50;

/// Most prefetched pages mapped together with a used one (64 KiB with it): see [`map_ahead`].
pub(crate) const MAP_AHEAD_PAGES: usize = 15;

enum Outcome {
    Done,
    Park,
    IoFailed,
}

struct Parked {
    event: Event,
    since: Instant,
    io_attempts: u32,
}

/// Runs one fault handler until `stop` is set.
pub(crate) fn handler_loop(p: &Pager, stop: &AtomicBool) {
    let mut events = Vec::with_capacity(64);
    let mut parked: VecDeque<Parked> = VecDeque::new();
    let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
    while !stop.load(Ordering::Relaxed) {
        let timeout = if parked.is_empty() { Duration::from_millis(50) } else { Duration::from_micros(200) };
        events.clear();
        if let Err(e) = p.uffd.read_events(&mut events, 64, Some(timeout)) {
            error!(error = %crate::error::chain(&e), "reading the userfaultfd failed; fault handler stops");
            return;
        }
        for _ in 0..parked.len() {
            let Some(mut item) = parked.pop_front() else {
                break;
            };
            match handle(p, item.event, &mut buf) {
                Outcome::Done => record(p, item.event, item.since),
                Outcome::Park => parked.push_back(item),
                Outcome::IoFailed => {
                    item.io_attempts += 1;
                    if item.io_attempts >= MAX_IO_ATTEMPTS {
                        give_up(p, item.event);
                    } else {
                        parked.push_back(item);
                    }
                }
            }
        }
        for &event in &events {
            let since = Instant::now();
            match handle(p, event, &mut buf) {
                Outcome::Done => record(p, event, since),
                Outcome::Park => {
                    bump(&p.stats.parked);
                    parked.push_back(Parked { event, since, io_attempts: 0 });
                }
                Outcome::IoFailed => parked.push_back(Parked { event, since, io_attempts: 1 }),
            }
        }
    }
}

fn record(p: &Pager, event: Event, since: Instant) {
    if let Event::Fault { kind: FaultKind::Missing, .. } = event {
        p.stats.record_latency(since.elapsed().as_nanos() as u64);
    }
}

/// A page whose stored copy cannot be read after many attempts is poisoned, so the guest gets
/// SIGBUS instead of hanging forever.
fn give_up(p: &Pager, event: Event) {
    let Event::Fault { address, .. } = event else {
        return;
    };
    let Some(page) = p.page_of(address) else {
        return;
    };
    error!(page, "stored copy unreadable after {MAX_IO_ATTEMPTS} attempts; page poisoned");
    if let Some(g) = p.table.get(page).try_lock() {
        p.poison(page, &g);
    }
}

fn handle(p: &Pager, event: Event, buf: &mut AlignedBuf) -> Outcome {
    let Event::Fault { address, kind, write } = event else {
        return Outcome::Done;
    };
    let Some(page) = p.page_of(address) else {
        error!(address, "fault outside guest memory");
        return Outcome::Done;
    };
    let entry = p.table.get(page);
    let Some(g) = entry.try_lock() else {
        return Outcome::Park;
    };
    let v = g.view();
    trace!(page, ?kind, write, resident = v.resident(), dirty = v.dirty(), "fault");
    let wake = || {
        if let Err(e) = p.uffd.wake(address, PAGE_SIZE) {
            error!(page, error = %crate::error::chain(&e), "UFFDIO_WAKE failed");
        }
    };
    match kind {
        FaultKind::Missing => {
            bump(&p.stats.faults_missing);
            if v.resident() {
                if v.word & PREFETCHED != 0 {
                    // Installed while this fault waited: the prediction was right but late.
                    bump(&p.stats.prefetch_late);
                }
                wake();
                return Outcome::Done;
            }
            if let Some(pf) = &p.prefetch {
                pf.note_demand(p, page as u64);
            }
            if v.word & POISONED != 0 {
                return Outcome::Done;
            }
            if !p.reserve_frame(buf) {
                return Outcome::Park;
            }
            // A page that was modified during its last residency (`WRITTEN`, set at eviction)
            // is installed writable and dirty even on a read fault, as the kernel maps a
            // swapped-in page writable: the read-modify-write that most likely follows then
            // costs one fault, not a MISSING fault and a write-protect round trip. A wrong guess
            // costs one write at eviction, which also corrects the hint.
            let writable = write || v.word & WRITTEN != 0;
            let around = if writable { Ok(false) } else { p.fill_around(page, &g) };
            let filled = match around {
                Ok(true) => Ok(()),
                Ok(false) => p.fill(page, &g, writable, buf),
                Err(e) => Err(e),
            };
            if let Err(e) = filled {
                p.budget.release(1);
                if e.is_corruption() {
                    error!(page, error = %crate::error::chain(&e), "stored copy is corrupt; page poisoned, the guest will get SIGBUS on it");
                    p.poison(page, &g);
                    return Outcome::Done;
                }
                bump(&p.stats.io_errors);
                error!(page, error = %crate::error::chain(&e), "fault could not be served; will retry");
                return Outcome::IoFailed;
            }
            p.tracker.observe(page as u64, entry, AccessKind::Fault, write);
            drop(g);
            if let Some(pf) = &p.prefetch {
                pf.on_fault(p, page as u64);
            }
        }
        FaultKind::WriteProtect => {
            bump(&p.stats.faults_wp);
            if !v.resident() {
                wake();
                return Outcome::Done;
            }
            p.mark_dirty(page, &g);
            if let Err(e) = p.uffd.write_protect(address, PAGE_SIZE, false, true) {
                error!(page, error = %crate::error::chain(&e), "lifting write protection failed");
            }
            p.tracker.observe(page as u64, entry, AccessKind::Write, true);
        }
        FaultKind::Minor => {
            bump(&p.stats.faults_minor);
            if !v.resident() {
                wake();
                return Outcome::Done;
            }
            let prefetched = v.word & PREFETCHED != 0;
            // A prefetched page modified during its last residency is mapped writable, as a
            // read fault installs one (see the MISSING case).
            let writable = write || (prefetched && v.word & WRITTEN != 0);
            if writable {
                p.mark_dirty(page, &g);
            }
            if prefetched {
                g.clear(PREFETCHED);
                bump(&p.stats.prefetch_used);
            }
            // A dirty page goes back writable, unless a checkpoint captured it since its last
            // write: that capture must see the next write (which clears CAPTURED).
            let map_writable = writable || (v.dirty() && v.word & CAPTURED == 0);
            match p.uffd.continue_(address, PAGE_SIZE, !map_writable) {
                Ok(Filled::Done) => {}
                Ok(Filled::AlreadyPresent) => wake(),
                Err(e) => error!(page, error = %crate::error::chain(&e), "UFFDIO_CONTINUE failed"),
            }
            if prefetched {
                // The prefetch saved a fault: an access, not a sample.
                p.tracker.observe(page as u64, entry, AccessKind::Fault, write);
                drop(g);
                if let Some(pf) = &p.prefetch {
                    pf.on_use(p, page as u64);
                }
                map_ahead(p, page);
            } else {
                p.tracker.observe(page as u64, entry, AccessKind::Sample, write);
            }
        }
    }
    Outcome::Done
}

/// After the guest used prefetched `page`, maps the prefetched pages that follow it (up to
/// [`MAP_AHEAD_PAGES`], while they are clean, untouched predictions) with one
/// `UFFDIO_CONTINUE`, so that a guest streaming through them takes one MINOR fault per 64 KiB
/// instead of one per page (8.6 µs per 4 KiB page against 0.9 through a 64 KiB one,
/// `MACHINE.md`). Their use is then assumed, not seen: they count as used
/// (`prefetch_used`) and as mapped ahead (`prefetch_mapped_ahead`), and the predictor hears of
/// them as of used pages, in order.
fn map_ahead(p: &Pager, page: usize) {
    let mut held = Vec::with_capacity(MAP_AHEAD_PAGES);
    for next in page + 1..(page + 1 + MAP_AHEAD_PAGES).min(p.table.len()) {
        let Some(g) = p.table.get(next).try_lock() else { break };
        let v = g.view();
        // Mapped write-protected, as a clean page is: a page to map writable is left to its
        // own fault.
        if !v.resident() || v.word & PREFETCHED == 0 || v.word & (POISONED | WRITTEN) != 0 || v.dirty() {
            break;
        }
        held.push(g);
    }
    if held.is_empty() {
        return;
    }
    let n = held.len();
    match p.uffd.continue_(p.addr(page + 1), n * PAGE_SIZE, true) {
        Ok(_) => {}
        Err(e) => {
            // Left unmapped: each page's own first touch maps it.
            error!(page = page + 1, pages = n, error = %crate::error::chain(&e), "mapping prefetched pages ahead failed");
            return;
        }
    }
    for g in &held {
        g.clear(PREFETCHED);
    }
    drop(held);
    add(&p.stats.prefetch_used, n as u64);
    add(&p.stats.prefetch_mapped_ahead, n as u64);
    if let Some(pf) = &p.prefetch {
        for next in page + 1..=page + n {
            pf.on_use(p, next as u64);
        }
    }
}
