//! The page server: guest memory served from another process over userfaultfd, speaking
//! Firecracker's userfaultfd handshake (see `docs/page-server.md`).
//!
//! ```text
//!  VMM process                                   page server process (`vmtier serve`)
//!  guest RAM (registered with a userfaultfd)     listens on a Unix socket (0600)
//!     │ connect, one sendmsg:                      │ one thread per connection
//!     │   JSON regions + SCM_RIGHTS [uffd, memfd?] ─▶ handshake::parse
//!     │                                            ├─ 1 fd: memory-file mode (memfile.rs):
//!     │ vCPU fault ──(userfaultfd)───────────────▶ │    pread the snapshot, UFFDIO_COPY runs
//!     │                                            └─ 2 fds: tiers mode (tiers.rs):
//!     │                                                 vmtier's engine over the peer's memfd
//!     │ monitor thread: socket EOF/HUP ◀── server exits or drops the connection
//!     ▼   -> Pauser::abort -> MicroVm::run returns VmError::PageServerDied
//! ```
//!
//! - [`handshake`]: the wire format and its strict, pure parser.
//! - [`server`]: [`PageServer`], the listener and the connection threads.
//! - [`client`]: the VMM side, [`PageServerClient`]: registers memory, sends the handshake and
//!   watches the connection.
//!
//! Peer death is noticed in both directions: the server watches its end of the socket and a
//! pidfd of the peer, the client watches its end of the socket.

pub mod client;
pub mod handshake;
mod memfile;
pub mod server;
mod sys;
mod tiers;

pub use client::{ClientError, GuestRegion, Handoff, PageServerClient, READY_TIMEOUT, WatchOptions};
pub use handshake::{Handshake, HandshakeError, Region};
pub use server::{ConnEnd, ConnReport, FileStats, Mode, PageServer, PageServerError, ServerConfig, ServerStats};
pub use sys::TerminationSignals;
