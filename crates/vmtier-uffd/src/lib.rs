//! Low-level Linux memory primitives for vmtier.
//!
//! This crate is where vmtier's `unsafe` code for memory lives: hand-written userfaultfd
//! bindings (ioctl numbers and struct sizes checked at compile time), memfd-backed guest memory,
//! shared mappings, and page-aligned buffers for `O_DIRECT` I/O. Everything above it is safe Rust.

mod anon;
mod buf;
mod memfd;
pub mod uffd;

pub use anon::AnonMapping;
pub use buf::{AlignedBuf, BUF_ALIGN};
pub use memfd::{Memfd, SharedMapping};
pub use uffd::{Attempt, Event, FaultKind, Filled, Uffd};

/// Size of a base page, the unit vmtier tracks and moves.
pub const PAGE_SIZE: usize = 4096;

/// Errors from the memory primitives.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; `op` names it.
    #[error("{op} failed")]
    Syscall {
        /// The call and its object, e.g. `UFFDIO_COPY`.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Neither the userfaultfd syscall nor `/dev/userfaultfd` could be opened.
    #[error(
        "cannot open a userfaultfd (run as root, or set vm.unprivileged_userfaultfd=1, or grant access to /dev/userfaultfd)"
    )]
    Open {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel lacks userfaultfd features vmtier needs.
    #[error(
        "this kernel's userfaultfd lacks features {missing:#x} (it offers {supported:#x}); vmtier needs Linux 6.7 or later"
    )]
    Unsupported {
        /// Requested bits the kernel does not offer.
        missing: u64,
        /// What the kernel offers.
        supported: u64,
    },
    /// A memory size that is zero or not a multiple of the page size.
    #[error("memory size {size} is not a positive multiple of 4096 bytes")]
    BadSize {
        /// The size given.
        size: u64,
    },
    /// A memfd name containing a NUL byte.
    #[error("memfd name contains a NUL byte")]
    BadName,
    /// A descriptor passed as a userfaultfd is something else.
    #[error("the descriptor passed as a userfaultfd is `{what}`, not a userfaultfd")]
    NotUserfaultfd {
        /// What `/proc/self/fd` says the descriptor is.
        what: String,
    },
    /// A range outside the mapping.
    #[error("range {offset}+{len} lies outside the mapping")]
    OutOfRange {
        /// Start offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}
