//! Errors of the micro-VM.

use std::io;

/// What can go wrong setting up or running the micro-VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` is missing or cannot be used.
    #[error("KVM is not usable ({0}); the micro-VM needs a readable and writable /dev/kvm")]
    KvmUnavailable(String),
    /// A KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error KVM returned.
        source: io::Error,
    },
    /// The guest program is not an ELF image this VMM can load.
    #[error("guest program: {0}")]
    BadElf(String),
    /// Guest RAM has an unusable size.
    #[error("guest memory of {bytes} bytes: {why}")]
    BadMemory {
        /// The size given.
        bytes: u64,
        /// What is wrong with it.
        why: String,
    },
    /// An access outside guest RAM.
    #[error("guest address range {gpa:#x}+{len:#x} is outside guest RAM ({ram:#x} bytes)")]
    OutOfRange {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
        /// RAM size.
        ram: u64,
    },
    /// The guest stopped in a way a healthy guest never does.
    #[error("guest crashed: {0}")]
    GuestCrashed(String),
    /// A saved vCPU state could not be decoded.
    #[error("vCPU state: {0}")]
    BadState(String),
    /// The `trace` workload was asked for without a trace.
    #[error("the trace workload needs a page trace (GuestSpec::trace; on the command line --trace FILE)")]
    NoTrace,
    /// The trace does not fit in guest RAM.
    #[error(
        "trace {trace} ({pages} pages, {accesses} accesses) needs {} MiB of guest RAM but the micro-VM has {} \
         MiB: raise --memory to at least {} MiB",
        needed >> 20, ram >> 20, needed >> 20
    )]
    TraceTooLarge {
        /// The trace's source.
        trace: String,
        /// Its footprint.
        pages: u32,
        /// Its accesses.
        accesses: u64,
        /// Guest RAM.
        ram: u64,
        /// Guest RAM it needs.
        needed: u64,
    },
    /// The page server serving this VM's memory went away.
    #[error("the page server died ({0}); guest memory can no longer be served")]
    PageServerDied(String),
    /// A checkpoint taken at a pause failed (see `run_guest_with`).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

impl VmError {
    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Self {
        move |e| VmError::Kvm { what, source: io::Error::from_raw_os_error(e.errno()) }
    }
}
