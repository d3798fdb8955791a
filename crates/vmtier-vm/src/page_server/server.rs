//! [`PageServer`]: listens on a Unix socket and serves each connecting VMM from its own thread,
//! from a snapshot memory file (Firecracker's handshake) or with vmtier's tiering engine (the
//! vmtier extension).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, error, info, warn};
use vmtier_engine::{EngineConfig, EngineError, chain};

use super::handshake::{self, HandshakeError, MAX_MESSAGE};
use super::sys;

/// How long the accept loop and the connection threads wait before looking at the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// What a page server serves and where it listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The Unix socket path VMMs connect to.
    pub socket: PathBuf,
    /// The snapshot memory file that Firecracker-handshake connections (one fd) are served
    /// from; without it such connections are refused.
    pub mem_file: Option<PathBuf>,
    /// The engine for vmtier-extension connections (two fds). `memory` is taken from each
    /// peer's region, `dram` is capped at it, and every connection gets its own
    /// `conn-<server pid>-<n>` directory (or prefix) under `tier2.dir` and `tier3.url`, removed
    /// when the connection ends.
    pub engine: EngineConfig,
    /// Memory-file mode: most pages one fault copies, the faulting page and the following ones
    /// not served yet, in one `UFFDIO_COPY` (1 = no prefetch).
    pub fault_around_pages: usize,
    /// How long a connected peer may take to send its handshake.
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    /// Defaults: no memory file, the default engine, 16-page fault-around, 10 s handshake
    /// timeout.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            mem_file: None,
            engine: EngineConfig::default(),
            fault_around_pages: 16,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum PageServerError {
    /// Another server answers on the socket path.
    #[error("another page server is listening on {path}; stop it or choose another socket path")]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    #[error("{path} exists and is not a socket; refusing to replace it (remove it or choose another path)")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A socket operation failed.
    #[error("cannot {op} the socket {path}")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The memory file cannot be used.
    #[error("cannot use the memory file {path}")]
    MemFile {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The engine configuration is invalid.
    #[error("the engine configuration for tiers mode is invalid")]
    Config(#[source] vmtier_engine::ConfigError),
    /// The accept thread could not be started.
    #[error("cannot start the accept thread")]
    Thread(#[source] std::io::Error),
}

/// Why one connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("the peer did not send its handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("receiving the handshake")]
    Recv(#[source] std::io::Error),
    #[error("the handshake came with more than {} file descriptors", sys::MAX_FDS)]
    FdsTruncated,
    #[error("bad handshake")]
    Handshake(#[source] HandshakeError),
    #[error(
        "the peer sent Firecracker's handshake (a userfaultfd only), but this server has no memory file; \
         start it with --mem-file SNAPSHOT_MEMORY"
    )]
    NoMemFile,
    #[error(
        "region {region} needs bytes {start:#x}..{end:#x} of the memory file, which has {len:#x}; \
         is it this VM's snapshot?"
    )]
    FileTooShort { region: usize, start: u64, end: u64, len: u64 },
    #[error("tiers mode: {0}")]
    Tiers(String),
    #[error("adopting the peer's descriptors")]
    Adopt(#[source] vmtier_uffd::Error),
    #[error("the userfaultfd reported a fault at {addr:#x}, outside every region of the handshake")]
    FaultOutside { addr: usize },
    #[error("reading {len} bytes at offset {offset:#x} of the memory file")]
    ReadFile {
        offset: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("serving a fault at {addr:#x}")]
    Serve {
        addr: usize,
        #[source]
        source: vmtier_uffd::Error,
    },
    #[error("reading the userfaultfd")]
    ReadEvents(#[source] vmtier_uffd::Error),
    #[error("polling the connection")]
    Poll(#[source] std::io::Error),
    #[error("starting the engine")]
    Engine(#[source] EngineError),
}

/// How a connection is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Firecracker's handshake: pages from the snapshot memory file.
    MemFile,
    /// vmtier's extension: the engine over the peer's memfd.
    Tiers,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnEnd {
    /// The peer closed its socket (and, for a Firecracker peer in another process, exited).
    PeerClosed,
    /// The peer process exited (its pidfd fired, or its address space is gone).
    PeerExited,
    /// The server is shutting down.
    ServerShutdown,
    /// The connection failed; the message says why.
    Failed(String),
}

/// Memory-file mode counters of one connection.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileStats {
    /// Fault events read.
    pub faults: u64,
    /// Pages copied from the memory file (fault-around included).
    pub pages_copied: u64,
    /// `UFFDIO_COPY` calls that copied them.
    pub copies: u64,
    /// Faults on removed pages served with zeros.
    pub zero_pages: u64,
    /// Pages found already present (`EEXIST`), treated as served.
    pub already_present: u64,
    /// `UFFD_EVENT_REMOVE` events.
    pub remove_events: u64,
    /// Pages those events removed.
    pub removed_pages: u64,
    /// Faults retried because the address space was changing (a REMOVE was queued).
    pub retries: u64,
}

/// What happened on one connection, recorded when it ends.
#[derive(Debug, Clone, Serialize)]
pub struct ConnReport {
    /// Connection number, from 1.
    pub id: u64,
    /// The peer's pid when it connected, if visible.
    pub peer_pid: Option<i32>,
    /// How it was served, once the handshake was accepted.
    pub mode: Option<Mode>,
    /// Guest memory in the handshake.
    pub guest_bytes: u64,
    /// Why it ended.
    pub end: ConnEnd,
    /// Memory-file mode counters.
    pub file: FileStats,
    /// Tiers mode: the engine's final snapshot.
    pub engine: Option<vmtier_engine::Snapshot>,
    /// How long it lasted.
    pub duration_ms: u64,
}

/// Server-wide counters.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused before the handshake because the peer runs as another user (not
    /// the server's own, not root), by its `SO_PEERCRED`.
    pub refused: u64,
    /// Connections being served now.
    pub active: u64,
    /// Connections that ended.
    pub finished: u64,
    /// Of those, connections that failed.
    pub failed: u64,
    /// Pages copied from the memory file by all connections so far.
    pub pages_copied: u64,
}

pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    pub(crate) mem_file: Option<File>,
    pub(crate) stop: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    pub(crate) pages_copied: AtomicU64,
    reports: Mutex<Vec<ConnReport>>,
}

/// A running page server. Dropping it (or [`shutdown`](Self::shutdown)) stops accepting, ends
/// every connection (their VMMs see the socket close), and removes the socket file.
pub struct PageServer {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    socket: PathBuf,
    /// Device and inode of the socket file we created, so we only ever remove our own.
    inode: (u64, u64),
}

impl std::fmt::Debug for PageServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageServer").field("socket", &self.socket).field("stats", &self.stats()).finish()
    }
}

impl PageServer {
    /// Opens the memory file (if any), checks the engine configuration, creates the socket
    /// (mode 0600; a stale socket file is replaced, a live server is refused) and starts
    /// accepting connections on a thread of its own.
    pub fn start(cfg: ServerConfig) -> Result<Self, PageServerError> {
        let mut probe = cfg.engine.clone();
        probe.memory = probe.memory.max(probe.dram);
        probe.validate("engine.").map_err(PageServerError::Config)?;
        let mem_file = match &cfg.mem_file {
            None => None,
            Some(path) => {
                let err = |source| PageServerError::MemFile { path: path.clone(), source };
                let f = File::open(path).map_err(err)?;
                let meta = f.metadata().map_err(err)?;
                if !meta.is_file() || meta.len() == 0 {
                    return Err(err(std::io::Error::other("not a non-empty regular file")));
                }
                Some(f)
            }
        };
        let path = cfg.socket.clone();
        remove_stale_socket(&path)?;
        let listener = sys::listen_private(&path).map_err(|source| PageServerError::Socket {
            op: "bind",
            path: path.clone(),
            source,
        })?;
        let meta = std::fs::metadata(&path).map_err(|source| PageServerError::Socket {
            op: "stat",
            path: path.clone(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(|source| PageServerError::Socket {
            op: "configure",
            path: path.clone(),
            source,
        })?;
        info!(socket = %path.display(), mem_file = ?cfg.mem_file, "page server listening");
        super::tiers::sweep_dead_servers_dirs(&cfg.engine);
        let shared = Arc::new(Shared {
            cfg,
            mem_file,
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            active: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            pages_copied: AtomicU64::new(0),
            reports: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("vmtier-serve".into())
            .spawn(move || accept_loop(&s, &listener))
            .map_err(|e| {
                let _ = std::fs::remove_file(&path);
                PageServerError::Thread(e)
            })?;
        Ok(Self { shared, accept: Some(accept), socket: path, inode: (meta.dev(), meta.ino()) })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Counters now.
    pub fn stats(&self) -> ServerStats {
        let s = &self.shared;
        let l = |c: &AtomicU64| c.load(Ordering::SeqCst);
        ServerStats {
            accepted: l(&s.accepted),
            refused: l(&s.refused),
            active: l(&s.active),
            finished: l(&s.finished),
            failed: l(&s.failed),
            pages_copied: l(&s.pages_copied),
        }
    }

    /// Reports of the connections that have ended, oldest first.
    pub fn finished(&self) -> Vec<ConnReport> {
        self.shared.reports.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits up to `timeout` until `n` connections have ended; returns their reports.
    pub fn wait_finished(&self, n: usize, timeout: Duration) -> Option<Vec<ConnReport>> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.finished();
            if r.len() >= n {
                return Some(r);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops accepting, ends every connection, removes the socket file, and returns the
    /// reports of all connections.
    pub fn shutdown(mut self) -> Vec<ConnReport> {
        self.stop();
        self.finished()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
            // Remove the socket only if it is still the one we created.
            if let Ok(m) = std::fs::symlink_metadata(&self.socket)
                && (m.dev(), m.ino()) == self.inode
            {
                let _ = std::fs::remove_file(&self.socket);
            }
            info!(socket = %self.socket.display(), "page server stopped");
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), PageServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(PageServerError::Socket { op: "stat", path: path.into(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(PageServerError::NotASocket { path: path.into() });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(PageServerError::SocketInUse { path: path.into() }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            info!(socket = %path.display(), "removing a stale socket file (no server answers on it)");
            std::fs::remove_file(path).map_err(|source| PageServerError::Socket {
                op: "remove the stale",
                path: path.into(),
                source,
            })
        }
        Err(source) => Err(PageServerError::Socket { op: "probe", path: path.into(), source }),
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 1u64;
    while !shared.stop.load(Ordering::SeqCst) {
        conns.retain(|t| !t.is_finished());
        let revents = match sys::poll_one(listener, libc::POLLIN, TICK) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "polling the listening socket failed; the server stops accepting");
                break;
            }
        };
        if revents & libc::POLLIN == 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if !peer_allowed(&stream) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            continue; // dropping the stream disconnects it
        }
        let id = next_id;
        next_id += 1;
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.active.fetch_add(1, Ordering::SeqCst);
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new().name(format!("vmtier-conn-{id}")).spawn(move || {
            let report = connection(&s, id, stream);
            if matches!(report.end, ConnEnd::Failed(_)) {
                s.failed.fetch_add(1, Ordering::SeqCst);
            }
            s.reports.lock().unwrap_or_else(|p| p.into_inner()).push(report);
            s.active.fetch_sub(1, Ordering::SeqCst);
            s.finished.fetch_add(1, Ordering::SeqCst);
        });
        match spawned {
            Ok(t) => conns.push(t),
            Err(e) => {
                error!(id, error = %e, "cannot start a connection thread; connection dropped");
                shared.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

/// Whether the peer of `stream` may be served: it runs as the server's own user or as root
/// (`SO_PEERCRED`, recorded by the kernel at `connect`). The socket is 0600 already; this also
/// holds if its mode or directory was opened up. A refused peer is logged.
fn peer_allowed(stream: &UnixStream) -> bool {
    let own = sys::euid();
    match sys::peer_cred(stream) {
        Ok(c) if c.uid == own || c.uid == 0 => true,
        Ok(c) => {
            warn!(
                peer_uid = c.uid,
                peer_pid = c.pid,
                server_uid = own,
                "refused a connection from another user: only the server's own user and root may connect; disconnected"
            );
            false
        }
        Err(e) => {
            warn!(error = %e, "cannot read the connecting peer's credentials (SO_PEERCRED); disconnected");
            false
        }
    }
}

/// The peer of a connection and how its departure is noticed.
pub(crate) struct Peer<'a> {
    stream: &'a UnixStream,
    pid: Option<i32>,
    pidfd: Option<OwnedFd>,
    /// The peer is this very process (a VMM and a server in one test program).
    same_process: bool,
    /// The peer keeps its socket open for as long as it lives (the vmtier extension), so EOF
    /// means it is gone. Firecracker may close it right after the handshake.
    keeps_socket: bool,
    stream_open: bool,
    warned_data: bool,
}

impl<'a> Peer<'a> {
    fn new(stream: &'a UnixStream, pid: Option<i32>, keeps_socket: bool) -> Self {
        let same_process = pid == Some(std::process::id() as i32);
        let pidfd = match pid {
            Some(p) if !same_process => match sys::pidfd_open(p) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    warn!(pid = p, error = %e, "cannot open a pidfd for the peer; its exit is noticed by the socket only");
                    None
                }
            },
            _ => None,
        };
        Self { stream, pid, pidfd, same_process, keeps_socket, stream_open: true, warned_data: false }
    }

    /// Descriptors to poll, in the order [`check`](Self::check) expects their `revents`.
    pub(crate) fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, i16)> {
        let mut v = Vec::with_capacity(2);
        if self.stream_open {
            v.push((self.stream.as_fd(), libc::POLLIN | libc::POLLRDHUP));
        }
        if let Some(p) = &self.pidfd {
            v.push((p.as_fd(), libc::POLLIN));
        }
        v
    }

    fn exited(&self) -> bool {
        self.pidfd.as_ref().is_some_and(|p| sys::poll_one(p, libc::POLLIN, Duration::ZERO).unwrap_or(0) != 0)
    }

    /// Tells a vmtier peer that its memory is being served: one JSON line, `{"ready":{...}}`,
    /// which [`PageServerClient::connect_tiers`](super::PageServerClient::connect_tiers) waits for.
    /// Without it a VMM connected to something that is not a page server would wait forever
    /// for its first page.
    pub(crate) fn say_ready(&self, guest_bytes: u64) -> std::io::Result<()> {
        let line = serde_json::json!({ "ready": { "guest_bytes": guest_bytes } }).to_string() + "\n";
        let mut stream = self.stream;
        stream.write_all(line.as_bytes())
    }

    /// Looks at what `poll` reported for [`poll_fds`](Self::poll_fds); `Some` if the peer is
    /// gone.
    pub(crate) fn check(&mut self, revents: &[i16]) -> Option<ConnEnd> {
        let mut it = revents.iter();
        let stream_ev = if self.stream_open { it.next().copied().unwrap_or(0) } else { 0 };
        let pid_ev = if self.pidfd.is_some() { it.next().copied().unwrap_or(0) } else { 0 };
        if pid_ev != 0 {
            info!(pid = self.pid, "the peer process exited");
            return Some(ConnEnd::PeerExited);
        }
        if stream_ev == 0 {
            return None;
        }
        let mut sink = Vec::new();
        let eof = match sys::drain_nonblocking(self.stream, &mut sink, 64 * 1024) {
            Ok(sys::Drain::Eof) | Err(_) => true,
            Ok(_) => stream_ev & (libc::POLLHUP | libc::POLLERR) != 0,
        };
        if !sink.is_empty() && !self.warned_data {
            self.warned_data = true;
            warn!(
                bytes = sink.len(),
                "the peer sent data after the handshake; this server does not expect any and ignores it"
            );
        }
        if !eof {
            return None;
        }
        self.stream_open = false;
        if self.keeps_socket || self.same_process {
            info!(pid = self.pid, "the peer closed its socket");
            return Some(ConnEnd::PeerClosed);
        }
        if self.exited() {
            info!(pid = self.pid, "the peer closed its socket and exited");
            return Some(ConnEnd::PeerExited);
        }
        if self.pidfd.is_some() {
            info!(
                pid = self.pid,
                "the peer closed its socket but still runs (Firecracker does); serving until it exits"
            );
        } else {
            warn!(
                pid = self.pid,
                "the peer closed its socket and its process cannot be watched (another pid namespace?); serving \
                 until the server stops or the peer's memory is found gone"
            );
        }
        None
    }
}

fn connection(shared: &Shared, id: u64, stream: UnixStream) -> ConnReport {
    let start = Instant::now();
    let peer_pid = sys::peer_pid(&stream);
    info!(id, peer_pid, "connection accepted");
    let mut report = ConnReport {
        id,
        peer_pid,
        mode: None,
        guest_bytes: 0,
        end: ConnEnd::ServerShutdown,
        file: FileStats::default(),
        engine: None,
        duration_ms: 0,
    };
    report.end = match serve(shared, id, &stream, peer_pid, &mut report) {
        Ok(end) => end,
        Err(e) => {
            let msg = chain(&e);
            error!(id, peer_pid, error = %msg, "connection failed; closing it (the VMM sees its socket close)");
            tell_peer(&stream, &msg);
            ConnEnd::Failed(msg)
        }
    };
    report.duration_ms = start.elapsed().as_millis() as u64;
    info!(id, end = ?report.end, mode = ?report.mode, file = ?report.file, "connection ended");
    if let Some(s) = &report.engine {
        info!(
            id,
            faults = s.faults,
            tier2_hits = s.tier2_hits,
            tier3_hits = s.tier3_hits,
            demotions = s.demotions,
            peak_resident_bytes = s.peak_resident_bytes,
            "engine of the connection shut down"
        );
    }
    report
}

/// Best effort: one JSON line saying why the server gives up, for a vmtier VMM's monitor to
/// show (Firecracker never reads it).
fn tell_peer(mut stream: &UnixStream, msg: &str) {
    let line = serde_json::json!({ "error": msg }).to_string() + "\n";
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(line.as_bytes());
}

fn serve(
    shared: &Shared,
    id: u64,
    stream: &UnixStream,
    peer_pid: Option<i32>,
    report: &mut ConnReport,
) -> Result<ConnEnd, ConnError> {
    let Some((bytes, fds)) = receive_handshake(shared, stream)? else {
        return Ok(ConnEnd::ServerShutdown);
    };
    let hs = handshake::parse(&bytes, fds.len()).map_err(ConnError::Handshake)?;
    report.guest_bytes = hs.total_size();
    let mut fds = fds.into_iter();
    let uffd = fds.next().expect("parse checked the descriptor count");
    debug!(id, regions = ?hs.regions, memfd = hs.memfd, "handshake accepted");
    if hs.memfd {
        report.mode = Some(Mode::Tiers);
        let memfd = fds.next().expect("parse checked the descriptor count");
        let mut peer = Peer::new(stream, peer_pid, true);
        super::tiers::serve(shared, id, &hs, uffd, memfd, &mut peer, report)
    } else {
        report.mode = Some(Mode::MemFile);
        let mut peer = Peer::new(stream, peer_pid, false);
        super::memfile::serve(shared, &hs, uffd, &mut peer, &mut report.file)
    }
}

/// Waits for the handshake (or the stop flag) and reads it whole: the first `recvmsg` carries
/// the descriptors, and whatever else the peer queued with it is read without blocking.
/// A handshake's bytes and the descriptors that came with it.
type Received = (Vec<u8>, Vec<OwnedFd>);

fn receive_handshake(shared: &Shared, stream: &UnixStream) -> Result<Option<Received>, ConnError> {
    let deadline = Instant::now() + shared.cfg.handshake_timeout;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Err(ConnError::HandshakeTimeout(shared.cfg.handshake_timeout));
        }
        if sys::poll_one(stream, libc::POLLIN, TICK).map_err(ConnError::Poll)? != 0 {
            break;
        }
    }
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let (n, fds, truncated) = sys::recv_with_fds(stream, &mut buf).map_err(ConnError::Recv)?;
    if truncated {
        return Err(ConnError::FdsTruncated);
    }
    buf.truncate(n);
    if n > 0 && n <= MAX_MESSAGE {
        sys::drain_nonblocking(stream, &mut buf, MAX_MESSAGE).map_err(ConnError::Recv)?;
    }
    Ok(Some((buf, fds)))
}
