//! Hand-written userfaultfd bindings (`linux/userfaultfd.h`).
//!
//! Only what vmtier uses: the API handshake, registration of a [`SharedMapping`] in MISSING,
//! WP and MINOR modes, and the resolving ioctls (`COPY`, `ZEROPAGE`, `CONTINUE`,
//! `WRITEPROTECT`, `WAKE`, `POISON`). Struct sizes and ioctl numbers are checked at compile time
//! against the kernel ABI. The registration is never `UFFD_USER_MODE_ONLY`: KVM's accesses to
//! guest memory are kernel-mode faults and must reach the handler too.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::{AnonMapping, Error, SharedMapping};

const UFFD_API: u64 = 0xAA;
const UFFDIO: u64 = 0xAA;

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// Shared layout of `uffdio_zeropage`, `uffdio_continue` and `uffdio_poison`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRangeOp {
    range: UffdioRange,
    mode: u64,
    result: i64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg`: 8 bytes of header and a 24-byte union; vmtier reads the pagefault arm
/// (`flags`, `address`, `ptid`) and treats the rest as opaque.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    arg0: u64,
    arg1: u64,
    arg2: u64,
}

const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRange>() == 16);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioRangeOp>() == 32);
const _: () = assert!(size_of::<UffdioWriteprotect>() == 24);
const _: () = assert!(size_of::<UffdMsg>() == 32);

const UFFDIO_REGISTER: u64 = ioc(IOC_READ | IOC_WRITE, 0x00, size_of::<UffdioRegister>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(IOC_READ | IOC_WRITE, 0x03, size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = ioc(IOC_READ | IOC_WRITE, 0x04, size_of::<UffdioRangeOp>());
const UFFDIO_WRITEPROTECT: u64 = ioc(IOC_READ | IOC_WRITE, 0x06, size_of::<UffdioWriteprotect>());
const UFFDIO_CONTINUE: u64 = ioc(IOC_READ | IOC_WRITE, 0x07, size_of::<UffdioRangeOp>());
const UFFDIO_POISON: u64 = ioc(IOC_READ | IOC_WRITE, 0x08, size_of::<UffdioRangeOp>());
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3F, size_of::<UffdioApi>());
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`: `_IO(0xAA, 0x00)`.
const USERFAULTFD_IOC_NEW: u64 = UFFDIO << 8;

// Values from the kernel's uapi header, checked here so a typo cannot slip through.
const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);
const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xc020_aa04);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
const _: () = assert!(UFFDIO_CONTINUE == 0xc020_aa07);

/// `UFFD_FEATURE_*` bits vmtier may request.
pub mod feature {
    /// WP faults are reported (`UFFD_FEATURE_PAGEFAULT_FLAG_WP`).
    pub const PAGEFAULT_FLAG_WP: u64 = 1 << 0;
    /// `UFFD_EVENT_REMOVE` on `madvise(DONTNEED/REMOVE)` of a registered range.
    pub const EVENT_REMOVE: u64 = 1 << 3;
    /// MISSING faults on shmem (memfd) mappings.
    pub const MISSING_SHMEM: u64 = 1 << 5;
    /// MINOR faults on shmem: page in the page cache but not mapped.
    pub const MINOR_SHMEM: u64 = 1 << 10;
    /// Write-protect on shmem mappings.
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    /// `UFFDIO_POISON`.
    pub const POISON: u64 = 1 << 14;
    /// Writes to write-protected pages resolved by the kernel (`WP_ASYNC`).
    pub const WP_ASYNC: u64 = 1 << 15;
}

/// `UFFDIO_REGISTER_MODE_*`.
pub mod mode {
    /// Faults on pages absent from the memfd.
    pub const MISSING: u64 = 1 << 0;
    /// Writes to write-protected pages.
    pub const WP: u64 = 1 << 1;
    /// Accesses to pages present in the memfd but not mapped.
    pub const MINOR: u64 = 1 << 2;
}

const COPY_MODE_DONTWAKE: u64 = 1 << 0;
const COPY_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;
const CONTINUE_MODE_WP: u64 = 1 << 1;
const ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const FLAG_WRITE: u64 = 1 << 0;
const FLAG_WP: u64 = 1 << 1;
const FLAG_MINOR: u64 = 1 << 2;

/// What kind of fault the kernel reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The page is not in the memfd: fill it (`copy` / `zeropage`).
    Missing,
    /// The page is in the memfd but not mapped: map it (`continue_`).
    Minor,
    /// A write to a write-protected page: lift the protection (`write_protect(.., false)`).
    WriteProtect,
}

/// One event read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A page fault at `address` (page-aligned by the kernel unless EXACT_ADDRESS).
    Fault {
        /// The faulting address, rounded down to the page.
        address: usize,
        /// Which mode raised it.
        kind: FaultKind,
        /// Whether the access was a write.
        write: bool,
    },
    /// `madvise(DONTNEED/REMOVE)` dropped `[start, end)` (only with `EVENT_REMOVE`).
    Remove {
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// An event vmtier did not ask for; carries the raw code.
    Other(u8),
}

/// Outcome of a resolving ioctl on a page that may already have been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// This call filled the page.
    Done,
    /// The page was already present (`EEXIST`): someone else filled it; waiters are not woken
    /// by the failed call, so the caller wakes them.
    AlreadyPresent,
}

/// Outcome of a resolving ioctl that gives up instead of retrying when the address space is
/// changing ([`Uffd::copy_once`], [`Uffd::zeropage_once`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Every page was filled (and the waiters woken, if asked).
    Done,
    /// Stopped at a page that was already present (`EEXIST`) after filling `filled` bytes;
    /// waiters on the present page are not woken.
    AlreadyPresent {
        /// Bytes filled before the present page.
        filled: usize,
    },
    /// The address space is changing (`EAGAIN`): a non-cooperative event such as
    /// `UFFD_EVENT_REMOVE` is queued on this userfaultfd and must be read before pages can be
    /// filled. `filled` bytes were filled; retry the rest after reading the events.
    Again {
        /// Bytes filled before the kernel refused.
        filled: usize,
    },
}

/// An open userfaultfd, initialised with a feature set.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    features: u64,
}

fn syscall_err(op: &'static str) -> Error {
    Error::Syscall { op, source: std::io::Error::last_os_error() }
}

fn open_raw() -> Result<OwnedFd, Error> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: the userfaultfd syscall takes only an integer flag argument.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd >= 0 {
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    // The syscall may be refused to unprivileged users; /dev/userfaultfd is the other door.
    let dev =
        OpenOptions::new().read(true).write(true).open("/dev/userfaultfd").map_err(|source| Error::Open { source })?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its integer argument and returns a new fd.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
    if fd < 0 {
        return Err(Error::Open { source: std::io::Error::last_os_error() });
    }
    // SAFETY: as above, a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn api(fd: &OwnedFd, features: u64) -> Result<UffdioApi, std::io::Error> {
    let mut arg = UffdioApi { api: UFFD_API, features, ioctls: 0 };
    // SAFETY: `arg` is a valid, correctly sized `uffdio_api` that the kernel reads and writes.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut arg) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(arg)
}

impl Uffd {
    /// Features this kernel offers (probed on a throw-away userfaultfd).
    pub fn supported_features() -> Result<u64, Error> {
        let fd = open_raw()?;
        api(&fd, 0).map(|a| a.features).map_err(|source| Error::Syscall { op: "UFFDIO_API", source })
    }

    /// Opens a non-blocking userfaultfd with `features` (each must be supported).
    pub fn new(features: u64) -> Result<Self, Error> {
        let supported = Self::supported_features()?;
        let missing = features & !supported;
        if missing != 0 {
            return Err(Error::Unsupported { missing, supported });
        }
        let fd = open_raw()?;
        let got = api(&fd, features).map_err(|source| Error::Syscall { op: "UFFDIO_API", source })?;
        Ok(Self { fd, features: got.features })
    }

    /// Adopts a userfaultfd another process created and passed over a Unix socket
    /// (`SCM_RIGHTS`), such as a VMM handing its guest memory to a page server.
    ///
    /// `features` are the bits the creator negotiated with `UFFDIO_API`: the kernel offers no
    /// way to read them back (a second `UFFDIO_API` fails), so they are taken on trust. The
    /// descriptor is checked to be a userfaultfd and switched to non-blocking (a blocking
    /// userfaultfd reports `POLLERR` to `poll`); the flag is shared with every copy of the
    /// descriptor, which no user of vmtier's userfaultfds minds.
    pub fn from_fd(fd: OwnedFd, features: u64) -> Result<Self, Error> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|source| Error::Syscall { op: "readlink(/proc/self/fd)", source })?;
        if link.as_os_str() != "anon_inode:[userfaultfd]" {
            return Err(Error::NotUserfaultfd { what: link.to_string_lossy().into_owned() });
        }
        // SAFETY: F_GETFL on a valid fd we own; no memory is passed.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(syscall_err("fcntl(F_GETFL)"));
        }
        // SAFETY: F_SETFL with the flags just read plus O_NONBLOCK; no memory is passed.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(syscall_err("fcntl(F_SETFL, O_NONBLOCK)"));
        }
        Ok(Self { fd, features })
    }

    /// The feature bits in force.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Registers all of `mapping` (anonymous private memory) with the given `mode` bits
    /// (`MISSING` only: anonymous memory has no MINOR faults, and WP needs `PAGEFAULT_FLAG_WP`).
    pub fn register_anon(&self, mapping: &AnonMapping, mode_bits: u64) -> Result<(), Error> {
        // SAFETY: the mapping is owned by `mapping` and only accessed through atomics or raw
        // copies (see `AnonMapping`), so pages filled by the resolving ioctls are never observed
        // through a Rust reference while absent.
        unsafe { self.register_range(mapping.base(), mapping.len(), mode_bits) }
    }

    /// Registers `[start, start+len)` with the given `mode` bits.
    ///
    /// # Safety
    /// The range must be page-aligned memory the caller owns for as long as the registration
    /// lasts (until this userfaultfd and every copy of it are closed), and no Rust reference
    /// (`&T`, `&mut T`) may cover it: whoever holds the userfaultfd — possibly another process —
    /// can fill absent pages of it with any content at any time, and accesses to absent pages
    /// block until someone does.
    pub unsafe fn register_range(&self, start: usize, len: usize, mode_bits: u64) -> Result<(), Error> {
        let mut arg =
            UffdioRegister { range: UffdioRange { start: start as u64, len: len as u64 }, mode: mode_bits, ioctls: 0 };
        // SAFETY: `arg` is a correctly sized `uffdio_register`; the caller guarantees the range
        // is memory it owns and that no Rust reference relies on its contents.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut arg) };
        if rc != 0 {
            return Err(syscall_err("UFFDIO_REGISTER"));
        }
        Ok(())
    }

    /// Registers the whole of `mapping` with the given `mode` bits.
    pub fn register(&self, mapping: &SharedMapping, mode_bits: u64) -> Result<(), Error> {
        let mut arg = UffdioRegister {
            range: UffdioRange { start: mapping.base() as u64, len: mapping.len() as u64 },
            mode: mode_bits,
            ioctls: 0,
        };
        // SAFETY: `arg` is a correctly sized `uffdio_register`; the range is a mapping we own, so
        // registering it cannot affect memory Rust code relies on elsewhere.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut arg) };
        if rc != 0 {
            return Err(syscall_err("UFFDIO_REGISTER"));
        }
        Ok(())
    }

    /// Waits up to `timeout` for events (None = until one arrives) and appends what is ready,
    /// at most `max`, to `out`. Returns how many were read.
    pub fn read_events(&self, out: &mut Vec<Event>, max: usize, timeout: Option<Duration>) -> Result<usize, Error> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: one valid pollfd, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(Error::Syscall { op: "poll(userfaultfd)", source: e });
        }
        if rc == 0 {
            return Ok(0);
        }
        let mut msgs = [UffdMsg::default(); 64];
        let want = max.clamp(1, msgs.len());
        // SAFETY: the buffer holds `want` messages of the kernel's `uffd_msg` size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), msgs.as_mut_ptr().cast(), want * size_of::<UffdMsg>()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(Error::Syscall { op: "read(userfaultfd)", source: e });
        }
        let count = n as usize / size_of::<UffdMsg>();
        for m in &msgs[..count] {
            out.push(match m.event {
                UFFD_EVENT_PAGEFAULT => {
                    let flags = m.arg0;
                    let kind = if flags & FLAG_MINOR != 0 {
                        FaultKind::Minor
                    } else if flags & FLAG_WP != 0 {
                        FaultKind::WriteProtect
                    } else {
                        FaultKind::Missing
                    };
                    Event::Fault {
                        address: m.arg1 as usize & !(crate::PAGE_SIZE - 1),
                        kind,
                        write: flags & FLAG_WRITE != 0,
                    }
                }
                UFFD_EVENT_REMOVE => Event::Remove { start: m.arg0 as usize, end: m.arg1 as usize },
                other => Event::Other(other),
            });
        }
        Ok(count)
    }

    fn range_ioctl(&self, op: &'static str, req: u64, arg: &mut UffdioRangeOp) -> Result<Filled, Error> {
        loop {
            // SAFETY: `arg` is a correctly sized struct for `req` (all three share one layout).
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg as *mut UffdioRangeOp) };
            if rc == 0 {
                return Ok(Filled::Done);
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EEXIST) => return Ok(Filled::AlreadyPresent),
                Some(libc::EAGAIN) => continue,
                _ => return Err(Error::Syscall { op, source: e }),
            }
        }
    }

    /// `UFFDIO_COPY`: fills the absent pages at `dst` with `src` (a multiple of the page size).
    /// With `write_protect`, the pages are mapped write-protected, so the first write raises a
    /// WP fault. Wakes the faulting threads unless `wake` is false.
    pub fn copy(&self, dst: usize, src: &[u8], write_protect: bool, wake: bool) -> Result<Filled, Error> {
        let mut mode = if write_protect { COPY_MODE_WP } else { 0 };
        if !wake {
            mode |= COPY_MODE_DONTWAKE;
        }
        let mut arg = UffdioCopy { dst: dst as u64, src: src.as_ptr() as u64, len: src.len() as u64, mode, copy: 0 };
        loop {
            // SAFETY: `arg` is a correctly sized `uffdio_copy`; the kernel reads `src.len()` bytes
            // from the live slice and writes only into absent pages of a registered range, which
            // no Rust reference can observe until they are mapped.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut arg) };
            if rc == 0 {
                return Ok(Filled::Done);
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EEXIST) => return Ok(Filled::AlreadyPresent),
                Some(libc::EAGAIN) if arg.copy > 0 => {
                    // Partial copy: continue with the rest.
                    let done = arg.copy as u64;
                    arg.dst += done;
                    arg.src += done;
                    arg.len -= done;
                    arg.copy = 0;
                }
                Some(libc::EAGAIN) => continue,
                _ => {
                    return Err(Error::Syscall { op: "UFFDIO_COPY", source: e });
                }
            }
        }
    }

    /// `UFFDIO_COPY` that returns instead of spinning while the address space is changing
    /// ([`Attempt::Again`]), and reports how far it got. A handler that also reads
    /// non-cooperative events (`EVENT_REMOVE`) on the same thread must use this: [`copy`](Self::copy)
    /// would retry forever, since the event that blocks it is never read.
    pub fn copy_once(&self, dst: usize, src: &[u8], write_protect: bool, wake: bool) -> Result<Attempt, Error> {
        let mut mode = if write_protect { COPY_MODE_WP } else { 0 };
        if !wake {
            mode |= COPY_MODE_DONTWAKE;
        }
        let mut arg = UffdioCopy { dst: dst as u64, src: src.as_ptr() as u64, len: src.len() as u64, mode, copy: 0 };
        let mut filled = 0usize;
        loop {
            // SAFETY: as in `copy`: a correctly sized `uffdio_copy` reading from the live `src`
            // and writing only into absent pages of a registered range.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut arg) };
            if rc == 0 {
                return Ok(Attempt::Done);
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EEXIST) => return Ok(Attempt::AlreadyPresent { filled }),
                Some(libc::EAGAIN) if arg.copy > 0 => {
                    // A partial copy stops for either reason; the rest tells which.
                    let done = arg.copy as u64;
                    filled += done as usize;
                    arg.dst += done;
                    arg.src += done;
                    arg.len -= done;
                    arg.copy = 0;
                }
                Some(libc::EAGAIN) => return Ok(Attempt::Again { filled }),
                _ => return Err(Error::Syscall { op: "UFFDIO_COPY", source: e }),
            }
        }
    }

    /// `UFFDIO_ZEROPAGE` that returns instead of spinning while the address space is changing,
    /// like [`copy_once`](Self::copy_once).
    pub fn zeropage_once(&self, dst: usize, len: usize, wake: bool) -> Result<Attempt, Error> {
        let mode = if wake { 0 } else { ZEROPAGE_MODE_DONTWAKE };
        let mut arg = UffdioRangeOp { range: UffdioRange { start: dst as u64, len: len as u64 }, mode, result: 0 };
        let mut filled = 0usize;
        loop {
            // SAFETY: `arg` is a correctly sized `uffdio_zeropage`; it maps zero pages into
            // absent pages of a registered range only.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE as _, &mut arg) };
            if rc == 0 {
                return Ok(Attempt::Done);
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EEXIST) => return Ok(Attempt::AlreadyPresent { filled }),
                Some(libc::EAGAIN) if arg.result > 0 => {
                    let done = arg.result as u64;
                    filled += done as usize;
                    arg.range.start += done;
                    arg.range.len -= done;
                    arg.result = 0;
                }
                Some(libc::EAGAIN) => return Ok(Attempt::Again { filled }),
                _ => return Err(Error::Syscall { op: "UFFDIO_ZEROPAGE", source: e }),
            }
        }
    }

    /// `UFFDIO_ZEROPAGE`: fills absent pages with zeros, without any copy.
    pub fn zeropage(&self, dst: usize, len: usize) -> Result<Filled, Error> {
        let mut arg = UffdioRangeOp { range: UffdioRange { start: dst as u64, len: len as u64 }, mode: 0, result: 0 };
        self.range_ioctl("UFFDIO_ZEROPAGE", UFFDIO_ZEROPAGE, &mut arg)
    }

    /// `UFFDIO_CONTINUE`: maps pages that are in the memfd but not mapped (MINOR faults),
    /// write-protected if `write_protect`.
    pub fn continue_(&self, dst: usize, len: usize, write_protect: bool) -> Result<Filled, Error> {
        let mode = if write_protect { CONTINUE_MODE_WP } else { 0 };
        let mut arg = UffdioRangeOp { range: UffdioRange { start: dst as u64, len: len as u64 }, mode, result: 0 };
        self.range_ioctl("UFFDIO_CONTINUE", UFFDIO_CONTINUE, &mut arg)
    }

    /// `UFFDIO_POISON`: later accesses to the pages raise SIGBUS. Used for a page whose stored
    /// copy failed its checksum: the guest must never see wrong data.
    pub fn poison(&self, dst: usize, len: usize) -> Result<Filled, Error> {
        let mut arg = UffdioRangeOp { range: UffdioRange { start: dst as u64, len: len as u64 }, mode: 0, result: 0 };
        self.range_ioctl("UFFDIO_POISON", UFFDIO_POISON, &mut arg)
    }

    /// `UFFDIO_WRITEPROTECT`: sets (`protect`) or clears write protection on mapped pages.
    /// Clearing wakes threads blocked on the WP fault unless `wake` is false; `wake` is ignored
    /// when protecting (the kernel refuses DONTWAKE with WP, and there is nobody to wake).
    pub fn write_protect(&self, start: usize, len: usize, protect: bool, wake: bool) -> Result<(), Error> {
        let mut mode = if protect { WRITEPROTECT_MODE_WP } else { 0 };
        if !wake && !protect {
            mode |= WRITEPROTECT_MODE_DONTWAKE;
        }
        let mut arg = UffdioWriteprotect { range: UffdioRange { start: start as u64, len: len as u64 }, mode };
        loop {
            // SAFETY: `arg` is a correctly sized `uffdio_writeprotect`; changing protection of our
            // own registered range does not alter memory contents.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WRITEPROTECT as _, &mut arg) };
            if rc == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(Error::Syscall { op: "UFFDIO_WRITEPROTECT", source: e });
            }
        }
    }

    /// `UFFDIO_WAKE`: wakes threads blocked on faults in the range, which then retry the access.
    pub fn wake(&self, start: usize, len: usize) -> Result<(), Error> {
        let mut arg = UffdioRange { start: start as u64, len: len as u64 };
        // SAFETY: `arg` is a correctly sized `uffdio_range`.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE as _, &mut arg) };
        if rc != 0 {
            return Err(syscall_err("UFFDIO_WAKE"));
        }
        Ok(())
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
