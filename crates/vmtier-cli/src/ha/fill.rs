//! The new primary's background fill: after a warm failover the guest resumes at once on the
//! secondary's warm set, and this thread reads the rest of the checkpoint's pages from shared
//! storage behind it — the primary's hottest first, then the others in storage order, in
//! batches of neighbouring slots — and installs them mapped ([`Engine::install_inherited`]). A
//! page the guest touches before its batch arrives is simply faulted in on demand; one that
//! arrives first costs the guest nothing on a read and a write-protect fault on its first write.
//!
//! The fill takes free DRAM frames only and stops when there are none: it never pushes out a
//! page the guest is using.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use vmtier_engine::{Engine, PAGE_SIZE};
use vmtier_repl::{Location, PageLoc, ReplicaMap};
use vmtier_uffd::AlignedBuf;

use super::SharedPages;

/// Pages read and installed per batch (2 MiB).
const BATCH: usize = 512;

/// What the fill did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FillReport {
    /// Pages installed.
    pub installed: usize,
    /// Pages that could not be read (left to demand faults, which report why).
    pub unreadable: usize,
    /// Bytes read from shared storage.
    pub bytes_read: u64,
    /// Read requests sent through the fill's reader meanwhile (a tier-2 span, or a batch of one
    /// tier-3 segment's pages, is one).
    pub requests: u64,
    /// Seconds from start to the end of the fill.
    pub seconds: f64,
    /// Of which reading (and checking) pages from shared storage.
    pub read_seconds: f64,
    /// Whether it stopped because DRAM had no free frame left.
    pub out_of_frames: bool,
}

/// The pages to fill, in order: every stored page of `map` not in `warm`, the heat list's first
/// (hottest first), then the rest sorted by location so neighbouring slots are read together.
pub fn plan(map: &ReplicaMap, warm: &HashSet<u32>) -> Vec<PageLoc> {
    let wanted = |e: &PageLoc| e.loc != Location::Zero && !warm.contains(&e.page);
    let mut seen = HashSet::new();
    let mut out: Vec<PageLoc> =
        map.heat().iter().filter_map(|h| map.entry(h.page)).filter(|e| wanted(e) && seen.insert(e.page)).collect();
    let mut rest: Vec<PageLoc> = map.entries().filter(|e| wanted(e) && !seen.contains(&e.page)).collect();
    rest.sort_unstable_by_key(|e| match e.loc {
        Location::Ssd { store, slot } => (0, store, u64::from(slot)),
        Location::Object { store, segment, index } => (1, store, (u64::from(segment) << 16) | u64::from(index)),
        Location::Zero => (2, 0, 0),
    });
    out.extend(rest);
    out
}

/// Reads and installs `plan` into `engine` until it is done, DRAM has no free frame, or `stop`
/// is set. Reading and installing overlap: a reader thread reads the next batch while this one
/// installs the last (two buffers go back and forth).
pub fn run(engine: &Engine, pages: &SharedPages, plan: &[PageLoc], stop: &AtomicBool) -> FillReport {
    let started = Instant::now();
    let requests_before = pages.requests();
    let mut report = FillReport::default();
    let done = AtomicBool::new(false);
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Batch>(1);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<AlignedBuf>(2);
    for _ in 0..2 {
        let _ = empty_tx.send(AlignedBuf::zeroed(BATCH * PAGE_SIZE));
    }
    let done = &done;
    std::thread::scope(|s| {
        s.spawn(move || {
            for batch in plan.chunks(BATCH) {
                if stop.load(Ordering::Relaxed) || done.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut buf) = empty_rx.recv() else { break };
                let read_started = Instant::now();
                let results = pages.read_many(batch, &mut buf[..batch.len() * PAGE_SIZE]);
                let read_s = read_started.elapsed().as_secs_f64();
                if full_tx.send(Batch { pages: batch, buf, results, read_s }).is_err() {
                    break;
                }
            }
        });
        for b in full_rx.iter() {
            report.read_seconds += b.read_s;
            report.bytes_read += (b.pages.len() * PAGE_SIZE) as u64;
            let stop_here = install(engine, &b, &mut report);
            let _ = empty_tx.send(b.buf);
            if stop_here {
                done.store(true, Ordering::Relaxed);
                break;
            }
        }
        // Unblocks the reader, whether it waits to hand over a batch or for a buffer.
        drop(full_rx);
        drop(empty_tx);
    });
    report.seconds = started.elapsed().as_secs_f64();
    report.requests = pages.requests() - requests_before;
    report
}

/// One batch read by the fill's reader thread.
struct Batch<'a> {
    pages: &'a [PageLoc],
    buf: AlignedBuf,
    results: Vec<std::io::Result<()>>,
    read_s: f64,
}

/// Installs the pages of `b` read whole and checked (the others are left to demand faults).
/// Returns whether the fill must stop: DRAM is out of free frames, or installing failed.
fn install(engine: &Engine, b: &Batch<'_>, report: &mut FillReport) -> bool {
    let data = &b.buf[..b.pages.len() * PAGE_SIZE];
    let installed = if b.results.iter().all(|r| r.is_ok()) {
        engine.install_inherited(&b.pages.iter().map(|p| p.page).collect::<Vec<_>>(), data)
    } else {
        let mut ok_pages = Vec::with_capacity(b.pages.len());
        let mut ok_data = Vec::with_capacity(data.len());
        for (i, r) in b.results.iter().enumerate() {
            match r {
                Ok(()) => {
                    ok_pages.push(b.pages[i].page);
                    ok_data.extend_from_slice(&data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
                }
                Err(e) => {
                    // One warning for the first, a count for all: a store full of bad copies must
                    // not flood the log (the demand fault of each reports it exactly).
                    if report.unreadable == 0 {
                        tracing::warn!(page = b.pages[i].page, error = %e,
                            "background fill: a page could not be read; it and any others like it are left to demand faults");
                    }
                    report.unreadable += 1;
                }
            }
        }
        engine.install_inherited(&ok_pages, &ok_data)
    };
    match installed {
        Ok((n, out_of_frames)) => {
            report.installed += n;
            report.out_of_frames |= out_of_frames;
            out_of_frames
        }
        Err(e) => {
            tracing::warn!(error = %vmtier_engine::chain(&e), "background fill stopped");
            true
        }
    }
}
