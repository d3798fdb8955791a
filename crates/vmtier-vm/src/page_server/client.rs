//! The VMM side of the page server: register guest memory with a userfaultfd, connect, send
//! the handshake, and watch the connection so that a dead server fails the VM instead of
//! hanging it.
//!
//! The client keeps its copy of the userfaultfd open for as long as it lives. That matters: if
//! the last copy closed while the VM still ran, the kernel would unregister the memory and
//! resolve every pending and future fault itself — with zero pages, silently corrupting the
//! guest. So drop the client only after the VM.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error};
use vmtier_engine::{EngineError, FEATURES, REGISTER_MODE};
use vmtier_uffd::uffd::{feature, mode};
use vmtier_uffd::{AnonMapping, Memfd, PAGE_SIZE, SharedMapping, Uffd};

use super::handshake::{self, Handshake, HandshakeError, Region};
use super::sys;
use crate::vm::Pauser;

/// How long [`PageServerClient::connect_tiers`] waits for the server's `ready` line. The server
/// starts an engine first, which opens (and clears) its tier-3 store: seconds on a slow object
/// store.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest answer line read; a page server's is a few dozen bytes.
const MAX_ANSWER: usize = 4096;

/// One region of guest memory in the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRegion {
    /// Where it is mapped in this process.
    pub host_addr: usize,
    /// Length in bytes (a multiple of 4 KiB).
    pub size: usize,
    /// Where its contents start in the snapshot memory file (Firecracker form), or in the
    /// memfd (tiers form, where it must be 0).
    pub file_offset: u64,
}

/// What the VMM hands the server.
#[derive(Debug, Clone, Copy)]
pub enum Handoff<'a> {
    /// Firecracker's handshake: the userfaultfd only. The server fills the memory from its
    /// snapshot memory file. Registered in MISSING mode, with `EVENT_REMOVE` when the kernel
    /// offers it (so discarded ranges come back as zeros).
    Firecracker,
    /// vmtier's extension: the userfaultfd and the guest memfd, so the server can run the tiering
    /// engine over the memory. One region, a shared mapping of all of `memfd`, registered with
    /// the engine's features and modes ([`vmtier_engine::FEATURES`], [`vmtier_engine::REGISTER_MODE`]).
    Tiers(&'a Memfd),
}

/// What a VMM does when the page server goes away and the vCPU cannot be stopped.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// How long [`Pauser::abort`] may take to get the vCPU out of `run`.
    pub grace: Duration,
    /// If the vCPU is still running after `grace` (blocked on guest memory outside `KVM_RUN`),
    /// print the reason and exit the process with status 1: the VM can never make progress.
    pub exit_if_stuck: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self { grace: Duration::from_secs(2), exit_if_stuck: false }
    }
}

/// Why connecting to a page server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The regions would be refused by the server.
    #[error("the guest memory regions are not valid for the handshake")]
    Regions(#[source] HandshakeError),
    /// The tiers handoff needs one region covering the whole memfd.
    #[error("tiers handoff: {0}")]
    TiersLayout(String),
    /// Connecting failed.
    #[error("cannot connect to the page server at {path} (is `vmtier serve` running there?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating or registering the userfaultfd failed.
    #[error("setting up the userfaultfd for guest memory")]
    Uffd(#[source] vmtier_uffd::Error),
    /// Sending the handshake failed.
    #[error("sending the handshake to the page server at {path}")]
    Send {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The peer accepted the connection but never answered the vmtier handshake.
    #[error(
        "the peer at {path} accepted the connection but did not answer the vmtier handshake within {waited:?}; \
         is `vmtier serve` listening there, and not another program?"
    )]
    NoAnswer {
        /// Socket path.
        path: PathBuf,
        /// How long the client waited.
        waited: Duration,
    },
    /// The peer closed the connection instead of answering.
    #[error(
        "the peer at {path} closed the connection without answering the vmtier handshake; \
         is it a vmtier page server (`vmtier serve`)?"
    )]
    Closed {
        /// Socket path.
        path: PathBuf,
    },
    /// The page server said why it will not serve this VM.
    #[error("the page server at {path} refused this VM: {reason}")]
    Refused {
        /// Socket path.
        path: PathBuf,
        /// The server's own words.
        reason: String,
    },
    /// The peer answered something a page server never sends.
    #[error(
        "the peer at {path} answered {said:?}, which is not a vmtier page server's reply; \
         point --page-server at the socket of `vmtier serve`"
    )]
    NotAPageServer {
        /// Socket path.
        path: PathBuf,
        /// The start of what it sent.
        said: String,
    },
    /// Reading the answer failed.
    #[error("reading the page server's answer on {path}")]
    Answer {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The monitor thread could not be started.
    #[error("cannot start the page-server monitor thread")]
    Thread(#[source] std::io::Error),
}

impl From<EngineError> for ClientError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Memory(u) => ClientError::Uffd(u),
            other => ClientError::TiersLayout(vmtier_engine::chain(&other)),
        }
    }
}

/// A VMM's connection to a page server. See the module docs for why it must outlive the VM.
#[derive(Debug)]
pub struct PageServerClient {
    stream: Arc<UnixStream>,
    /// Always `Some` until [`detach`](Self::detach) takes it.
    uffd: Option<Uffd>,
    socket: PathBuf,
    gone: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    monitor: Option<JoinHandle<()>>,
}

impl PageServerClient {
    /// Firecracker's handshake for guest RAM in an anonymous private mapping whose contents
    /// start at `file_offset` in the server's memory file.
    pub fn connect_anon(socket: &Path, ram: &AnonMapping, file_offset: u64) -> Result<Self, ClientError> {
        let region = GuestRegion { host_addr: ram.base(), size: ram.len(), file_offset };
        // SAFETY: `ram` is an anonymous mapping this process owns, accessed only through atomics
        // or raw copies; the caller keeps it mapped while the client lives (and if it does not,
        // the registration simply goes away with the mapping).
        unsafe { Self::connect(socket, &[region], Handoff::Firecracker) }
    }

    /// vmtier's extended handshake for guest RAM in `map`, a shared mapping of `memfd`: the
    /// server runs the tiering engine over it.
    /// Waits up to [`READY_TIMEOUT`] for the server to answer.
    pub fn connect_tiers(socket: &Path, memfd: &Memfd, map: &SharedMapping) -> Result<Self, ClientError> {
        Self::connect_tiers_within(socket, memfd, map, READY_TIMEOUT)
    }

    /// [`connect_tiers`](Self::connect_tiers), waiting at most `timeout` for the server's answer.
    pub fn connect_tiers_within(
        socket: &Path,
        memfd: &Memfd,
        map: &SharedMapping,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let region = GuestRegion { host_addr: map.base(), size: map.len(), file_offset: 0 };
        // SAFETY: `map` maps `memfd` and is only accessed through atomics or raw copies (see
        // `SharedMapping`).
        unsafe { Self::connect_within(socket, &[region], Handoff::Tiers(memfd), timeout) }
    }

    /// Creates a userfaultfd with the features `handoff` needs, registers `regions`, connects to
    /// `socket` and sends the handshake with the descriptors.
    ///
    /// # Safety
    /// Every region must be page-aligned memory this process owns and keeps mapped while the
    /// client lives, covered by no Rust reference (only raw copies or atomics touch it): the
    /// server fills its absent pages at any time. For [`Handoff::Tiers`] the one region must be
    /// a `MAP_SHARED` mapping of the whole memfd from offset 0.
    pub unsafe fn connect(socket: &Path, regions: &[GuestRegion], handoff: Handoff<'_>) -> Result<Self, ClientError> {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { Self::connect_within(socket, regions, handoff, READY_TIMEOUT) }
    }

    /// [`connect`](Self::connect), waiting at most `timeout` for a vmtier server's answer.
    ///
    /// # Safety
    /// As for [`connect`](Self::connect).
    pub unsafe fn connect_within(
        socket: &Path,
        regions: &[GuestRegion],
        handoff: Handoff<'_>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let memfd = match handoff {
            Handoff::Firecracker => None,
            Handoff::Tiers(m) => Some(m),
        };
        let wire: Vec<Region> = regions
            .iter()
            .map(|r| Region {
                host_addr: r.host_addr as u64,
                size: r.size as u64,
                file_offset: r.file_offset,
                page_size: PAGE_SIZE as u64,
                memfd_offset: memfd.map(|_| r.file_offset),
            })
            .collect();
        let message = Handshake::encode(&wire);
        // The server applies exactly these rules; fail here with the same message instead.
        handshake::parse(&message, 1 + usize::from(memfd.is_some())).map_err(ClientError::Regions)?;
        if let Some(m) = memfd
            && !matches!(regions, [r] if r.file_offset == 0 && r.size as u64 == m.size())
        {
            return Err(ClientError::TiersLayout(format!(
                "one region mapping all {} bytes of the memfd from offset 0 is needed; got {regions:?}",
                m.size()
            )));
        }
        let stream = UnixStream::connect(socket)
            .map_err(|source| ClientError::Connect { path: socket.to_path_buf(), source })?;
        let (features, modes) = match memfd {
            None => {
                let supported = Uffd::supported_features().map_err(ClientError::Uffd)?;
                (supported & feature::EVENT_REMOVE, mode::MISSING)
            }
            Some(_) => (FEATURES, REGISTER_MODE),
        };
        let uffd = Uffd::new(features).map_err(ClientError::Uffd)?;
        for r in regions {
            // SAFETY: the caller guarantees the region is owned, mapped and unreferenced.
            unsafe { uffd.register_range(r.host_addr, r.size, modes) }.map_err(ClientError::Uffd)?;
        }
        let mut fds = vec![uffd.as_fd()];
        if let Some(m) = memfd {
            fds.push(m.as_fd());
        }
        sys::send_with_fds(&stream, &message, &fds)
            .map_err(|source| ClientError::Send { path: socket.to_path_buf(), source })?;
        debug!(socket = %socket.display(), regions = regions.len(), tiers = memfd.is_some(), "handshake sent");
        if memfd.is_some() {
            // Firecracker's protocol has no answer; vmtier's extension does, so that a VMM pointed at
            // the wrong socket fails here instead of waiting forever for its first page.
            wait_ready(&stream, socket, timeout)?;
        }
        Ok(Self {
            stream: Arc::new(stream),
            uffd: Some(uffd),
            socket: socket.to_path_buf(),
            gone: Arc::new(Mutex::new(None)),
            stop: Arc::new(AtomicBool::new(false)),
            monitor: None,
        })
    }

    /// Starts a thread that watches the connection. When the server goes away (its end of the
    /// socket closes: it exited, was killed, shut down, or gave up on this VM), the thread
    /// records why and calls [`Pauser::abort`], so [`MicroVm::run`](crate::MicroVm::run)
    /// returns [`VmError::PageServerDied`](crate::VmError::PageServerDied) instead of waiting
    /// forever for a page.
    pub fn watch(&mut self, pauser: Option<Pauser>, options: WatchOptions) -> Result<(), ClientError> {
        if self.monitor.is_some() {
            return Ok(());
        }
        let (stream, stop, gone) = (Arc::clone(&self.stream), Arc::clone(&self.stop), Arc::clone(&self.gone));
        let socket = self.socket.clone();
        let t = std::thread::Builder::new()
            .name("vmtier-pager-watch".into())
            .spawn(move || monitor(&stream, &stop, &gone, &socket, pauser, options))
            .map_err(ClientError::Thread)?;
        self.monitor = Some(t);
        Ok(())
    }

    /// Why the server went away, once the monitor has noticed.
    pub fn server_gone(&self) -> Option<String> {
        self.gone.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The userfaultfd guest memory is registered with.
    pub fn uffd(&self) -> &Uffd {
        self.uffd.as_ref().expect("only `detach` takes the userfaultfd, and it consumes the client")
    }

    /// Behaves as Firecracker does after the handshake: closes the connection and keeps only
    /// the userfaultfd (which must still outlive the VM). The server keeps serving until this
    /// process exits, which it notices through a pidfd; nothing notices the server dying.
    pub fn detach(mut self) -> Uffd {
        self.uffd.take().expect("only `detach` takes the userfaultfd, and it consumes the client")
    }
}

impl Drop for PageServerClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.monitor.take() {
            let _ = t.join();
        }
    }
}

fn monitor(
    stream: &UnixStream,
    stop: &AtomicBool,
    gone: &Mutex<Option<String>>,
    socket: &Path,
    pauser: Option<Pauser>,
    options: WatchOptions,
) {
    let mut said = Vec::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let revents = match sys::poll_one(stream, libc::POLLIN | libc::POLLRDHUP, Duration::from_millis(100)) {
            Ok(r) => r,
            Err(_) => break,
        };
        if revents == 0 {
            continue;
        }
        match sys::drain_nonblocking(stream, &mut said, 64 * 1024) {
            Ok(sys::Drain::Empty) if revents & (libc::POLLHUP | libc::POLLERR) == 0 => {}
            _ => break,
        }
    }
    if stop.load(Ordering::SeqCst) {
        return;
    }
    let server_said = String::from_utf8_lossy(&said)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    let reason = match server_said {
        Some(e) => format!("the page server at {} gave up on this VM: {e}", socket.display()),
        None => {
            format!("the page server at {} closed the connection: it exited, was killed or shut down", socket.display())
        }
    };
    error!(%reason, "guest memory can no longer be served; stopping the VM");
    *gone.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
    let Some(pauser) = pauser else { return };
    if pauser.abort(reason.clone(), options.grace) {
        return;
    }
    error!(grace = ?options.grace, "the vCPU did not stop (blocked on guest memory outside KVM_RUN)");
    if options.exit_if_stuck {
        eprintln!("vmtier: fatal: {reason}; the VM is blocked on guest memory that will never arrive, exiting");
        std::process::exit(1);
    }
}

/// Reads the server's one-line answer to a vmtier handshake: `{"ready":…}` or `{"error":"…"}`.
/// Reads byte by byte so nothing after the line is consumed: later lines are the monitor's.
fn wait_ready(stream: &UnixStream, socket: &Path, timeout: Duration) -> Result<(), ClientError> {
    let path = || socket.to_path_buf();
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::NoAnswer { path: path(), waited: timeout });
        }
        stream.set_read_timeout(Some(left)).map_err(|source| ClientError::Answer { path: path(), source })?;
        match (&*stream).read(&mut byte) {
            Ok(0) => return Err(ClientError::Closed { path: path() }),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(ClientError::Closed { path: path() });
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_ANSWER => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ClientError::Answer { path: path(), source }),
        }
    }
    stream.set_read_timeout(None).map_err(|source| ClientError::Answer { path: path(), source })?;
    let value = serde_json::from_slice::<serde_json::Value>(&line).ok();
    if let Some(v) = &value {
        if v.get("ready").is_some() {
            return Ok(());
        }
        if let Some(reason) = v.get("error").and_then(|e| e.as_str()) {
            return Err(ClientError::Refused { path: path(), reason: reason.to_owned() });
        }
    }
    let said: String = String::from_utf8_lossy(&line).chars().take(80).collect();
    Err(ClientError::NotAPageServer { path: path(), said })
}
