//! Memory-file mode: Firecracker's snapshot restore. Guest memory is served from the snapshot's
//! memory file, as Firecracker's example handlers do, with prefetch:
//!
//! - a MISSING fault is served with one `UFFDIO_COPY` of the faulting page and the following
//!   pages of its region that were not served yet, up to `fault_around_pages` (fault-around);
//! - `EEXIST` (a page already present) counts as served: the remaining pages of the run are
//!   copied one by one and the faulting thread is woken;
//! - `UFFD_EVENT_REMOVE` (a balloon or `MADV_DONTNEED` dropped a range) marks the range
//!   removed: later faults in it get zero pages, not the stale snapshot content;
//! - while a REMOVE is queued the kernel refuses copies (`EAGAIN`): the fault is retried after
//!   the event has been read.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{debug, warn};
use vmtier_uffd::{AlignedBuf, Attempt, Event, FaultKind, PAGE_SIZE, Uffd};

use super::handshake::Handshake;
use super::server::{ConnEnd, ConnError, FileStats, Peer, Shared};
use super::sys;

/// A bit per page.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Self {
        Self(vec![0; n.div_ceil(64) as usize])
    }
    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u64, on: bool) {
        let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
        if on {
            self.0[w] |= b;
        } else {
            self.0[w] &= !b;
        }
    }
}

enum Served {
    Done,
    /// The address space was changing; retry after reading events.
    Retry,
    /// The peer's address space is gone.
    PeerGone,
}

struct State<'a> {
    hs: &'a Handshake,
    file: &'a std::fs::File,
    uffd: Uffd,
    served: Vec<Bits>,
    removed: Vec<Bits>,
    fault_around: u64,
    buf: AlignedBuf,
    zeros: AlignedBuf,
    /// The server-wide count of pages copied.
    total: &'a AtomicU64,
}

pub(super) fn serve(
    shared: &Shared,
    hs: &Handshake,
    uffd: OwnedFd,
    peer: &mut Peer<'_>,
    stats: &mut FileStats,
) -> Result<ConnEnd, ConnError> {
    let file = shared.mem_file.as_ref().ok_or(ConnError::NoMemFile)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    for (i, r) in hs.regions.iter().enumerate() {
        if r.file_offset + r.size > len {
            return Err(ConnError::FileTooShort { region: i, start: r.file_offset, end: r.file_offset + r.size, len });
        }
    }
    // The peer negotiated the features; nothing here depends on them.
    let uffd = Uffd::from_fd(uffd, 0).map_err(ConnError::Adopt)?;
    let max_page = hs.regions.iter().map(|r| r.page_size).max().unwrap_or(PAGE_SIZE as u64) as usize;
    let fault_around = shared.cfg.fault_around_pages.max(1) as u64;
    let mut st = State {
        hs,
        file,
        uffd,
        served: hs.regions.iter().map(|r| Bits::new(r.pages())).collect(),
        removed: hs.regions.iter().map(|r| Bits::new(r.pages())).collect(),
        fault_around,
        buf: AlignedBuf::zeroed((fault_around as usize * PAGE_SIZE).max(max_page)),
        zeros: AlignedBuf::zeroed(max_page),
        total: &shared.pages_copied,
    };
    let mut events = Vec::new();
    let mut deferred: VecDeque<(usize, FaultKind)> = VecDeque::new();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(ConnEnd::ServerShutdown);
        }
        let revents = {
            let mut fds = vec![(st.uffd.as_fd(), libc::POLLIN)];
            fds.extend(peer.poll_fds());
            let wait = if deferred.is_empty() { Duration::from_millis(100) } else { Duration::from_millis(1) };
            sys::poll(&fds, wait).map_err(ConnError::Poll)?
        };
        if let Some(end) = peer.check(&revents[1..]) {
            return Ok(end);
        }
        events.clear();
        if revents[0] & libc::POLLIN != 0 {
            st.uffd.read_events(&mut events, 64, Some(Duration::ZERO)).map_err(ConnError::ReadEvents)?;
        }
        // Removals first: they decide how the faults read with them are served.
        for e in &events {
            if let Event::Remove { start, end } = *e {
                stats.remove_events += 1;
                stats.removed_pages += st.remove(start as u64, end as u64);
            }
        }
        let retries = deferred.len();
        let new = events.iter().filter_map(|e| match *e {
            Event::Fault { address, kind, .. } => Some((address, kind)),
            Event::Remove { .. } => None,
            Event::Other(code) => {
                debug!(code, "ignoring a userfaultfd event this server did not ask for");
                None
            }
        });
        let todo: Vec<(usize, FaultKind)> = deferred.drain(..).chain(new).collect();
        for (i, (addr, kind)) in todo.into_iter().enumerate() {
            if i >= retries {
                stats.faults += 1;
            }
            match st.serve(addr, kind, stats)? {
                Served::Done => {}
                Served::Retry => {
                    stats.retries += 1;
                    deferred.push_back((addr, kind));
                }
                Served::PeerGone => return Ok(ConnEnd::PeerExited),
            }
        }
    }
}

impl State<'_> {
    fn copied(&self, stats: &mut FileStats, pages: u64) {
        stats.pages_copied += pages;
        self.total.fetch_add(pages, Ordering::Relaxed);
    }

    /// Marks the pages of `[start, end)` removed; returns how many.
    fn remove(&mut self, start: u64, end: u64) -> u64 {
        let mut n = 0;
        for (i, r) in self.hs.regions.iter().enumerate() {
            let (s, e) = (start.max(r.host_addr), end.min(r.host_end()));
            if s >= e {
                continue;
            }
            let first = (s - r.host_addr) / r.page_size;
            let last = (e - r.host_addr).div_ceil(r.page_size);
            for p in first..last {
                self.removed[i].set(p, true);
                self.served[i].set(p, false);
            }
            n += last - first;
        }
        debug!(start, end, pages = n, "range removed");
        n
    }

    fn serve(&mut self, addr: usize, kind: FaultKind, stats: &mut FileStats) -> Result<Served, ConnError> {
        let (ri, r) = self.hs.region_of(addr as u64).map(|(i, r)| (i, *r)).ok_or(ConnError::FaultOutside { addr })?;
        let ps = r.page_size;
        let page = (addr as u64 - r.host_addr) / ps;
        let dst = (r.host_addr + page * ps) as usize;
        let serve_err = |source| ConnError::Serve { addr, source };
        match kind {
            FaultKind::Missing => {}
            FaultKind::WriteProtect => {
                // Only a peer that registered WP mode raises these; let the write through.
                self.uffd.write_protect(dst, ps as usize, false, true).map_err(serve_err)?;
                return Ok(Served::Done);
            }
            FaultKind::Minor => {
                self.uffd.continue_(dst, ps as usize, false).map_err(serve_err)?;
                return Ok(Served::Done);
            }
        }
        if self.removed[ri].get(page) {
            let attempt = if ps as usize == PAGE_SIZE {
                self.uffd.zeropage_once(dst, PAGE_SIZE, true)
            } else {
                self.uffd.copy_once(dst, &self.zeros[..ps as usize], false, true)
            };
            return match attempt {
                Ok(Attempt::Done) => {
                    stats.zero_pages += 1;
                    self.served[ri].set(page, true);
                    Ok(Served::Done)
                }
                Ok(Attempt::AlreadyPresent { .. }) => {
                    stats.already_present += 1;
                    self.served[ri].set(page, true);
                    self.uffd.wake(dst, ps as usize).map_err(serve_err)?;
                    Ok(Served::Done)
                }
                Ok(Attempt::Again { .. }) => Ok(Served::Retry),
                Err(e) => gone_or(e, serve_err),
            };
        }
        let max = if ps as usize == PAGE_SIZE { self.fault_around } else { 1 };
        let mut n = 1;
        while n < max && page + n < r.pages() && !self.served[ri].get(page + n) && !self.removed[ri].get(page + n) {
            n += 1;
        }
        let len = (n * ps) as usize;
        let offset = r.file_offset + page * ps;
        let buf = &mut self.buf[..len];
        self.file.read_exact_at(buf, offset).map_err(|source| ConnError::ReadFile { offset, len, source })?;
        let attempt = match self.uffd.copy_once(dst, buf, false, true) {
            Ok(a) => a,
            Err(e) => return gone_or(e, serve_err),
        };
        let mark = |st: &mut Self, bytes: usize| {
            for p in 0..(bytes as u64 / ps) {
                st.served[ri].set(page + p, true);
            }
        };
        match attempt {
            Attempt::Done => {
                mark(self, len);
                stats.copies += 1;
                self.copied(stats, n);
                Ok(Served::Done)
            }
            Attempt::Again { filled } => {
                mark(self, filled);
                self.copied(stats, filled as u64 / ps);
                Ok(Served::Retry)
            }
            Attempt::AlreadyPresent { filled } => {
                // Some page of the run is present already: fill the rest one by one.
                let done = filled as u64 / ps;
                mark(self, filled);
                self.copied(stats, done);
                for p in done..n {
                    let at = dst + (p * ps) as usize;
                    let chunk = &self.buf[(p * ps) as usize..((p + 1) * ps) as usize];
                    match self.uffd.copy_once(at, chunk, false, true) {
                        Ok(Attempt::Done) => self.copied(stats, 1),
                        Ok(Attempt::AlreadyPresent { .. }) => stats.already_present += 1,
                        // The faulting page is handled (first page or present); the rest will
                        // fault again if touched.
                        Ok(Attempt::Again { .. }) => break,
                        Err(e) => return gone_or(e, serve_err),
                    }
                    self.served[ri].set(page + p, true);
                }
                // Nobody woke the thread waiting on a page that was found present.
                self.uffd.wake(dst, ps as usize).map_err(serve_err)?;
                Ok(Served::Done)
            }
        }
    }
}

/// `ESRCH` from a resolving ioctl: the peer's address space is gone (it exited).
fn gone_or(e: vmtier_uffd::Error, err: impl FnOnce(vmtier_uffd::Error) -> ConnError) -> Result<Served, ConnError> {
    if let vmtier_uffd::Error::Syscall { source, .. } = &e
        && source.raw_os_error() == Some(libc::ESRCH)
    {
        warn!("the peer's address space is gone (it exited)");
        return Ok(Served::PeerGone);
    }
    Err(err(e))
}
