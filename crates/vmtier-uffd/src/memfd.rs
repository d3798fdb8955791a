//! memfd-backed guest memory and its shared mapping.
//!
//! Guest RAM is a memfd: every mapping of it (the VMM's, KVM's memslot, a page server's) sees the
//! same pages, `fallocate(PUNCH_HOLE)` drops a page from all of them at once, and the host reads
//! and writes pages through the file descriptor (`pread`/`pwrite`) without touching the guest
//! mapping, so host access never raises a userfaultfd event.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use crate::{Error, PAGE_SIZE};

/// An anonymous memory file (`memfd_create`) holding guest RAM.
#[derive(Debug)]
pub struct Memfd {
    file: File,
    size: u64,
}

impl Memfd {
    /// Creates a memfd of `size` bytes (a multiple of [`PAGE_SIZE`]); all pages start as holes.
    pub fn create(name: &str, size: u64) -> Result<Self, Error> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE as u64) {
            return Err(Error::BadSize { size });
        }
        let cname = CString::new(name).map_err(|_| Error::BadName)?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call; the flags are
        // valid `memfd_create` flags.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Syscall { op: "memfd_create", source: std::io::Error::last_os_error() });
        }
        // SAFETY: `fd` was just returned by `memfd_create`, is valid and owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size).map_err(|source| Error::Syscall { op: "ftruncate(memfd)", source })?;
        Ok(Self { file, size })
    }

    /// Adopts a memfd another process created and passed over a Unix socket (`SCM_RIGHTS`);
    /// its size must be a positive multiple of [`PAGE_SIZE`].
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        let file = File::from(fd);
        let size = file.metadata().map_err(|source| Error::Syscall { op: "fstat(memfd)", source })?.len();
        if size == 0 || !size.is_multiple_of(PAGE_SIZE as u64) {
            return Err(Error::BadSize { size });
        }
        Ok(Self { file, size })
    }

    /// Size of the file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file, for `pread`/`pwrite` of page contents and for passing to another process.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads `buf.len()` bytes at `offset`. A hole reads as zeros and stays a hole.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.file.read_exact_at(buf, offset).map_err(|source| Error::Syscall { op: "pread(memfd)", source })
    }

    /// Writes `buf` at `offset` (`pwrite`): the pages enter the file's page cache without being
    /// mapped anywhere, so on a MINOR-registered mapping the next access is a MINOR fault.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Error> {
        self.file.write_all_at(buf, offset).map_err(|source| Error::Syscall { op: "pwrite(memfd)", source })
    }

    /// Drops the pages in `[offset, offset+len)` from the file and from every mapping of it
    /// (`fallocate(PUNCH_HOLE | KEEP_SIZE)`). The next guest access to them is a MISSING fault.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<(), Error> {
        // SAFETY: plain syscall on a valid fd owned by `self`; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(Error::Syscall { op: "fallocate(PUNCH_HOLE)", source: std::io::Error::last_os_error() });
        }
        Ok(())
    }

    /// Bytes of the file that occupy memory (pages present), from `fstat`'s block count.
    pub fn resident_bytes(&self) -> Result<u64, Error> {
        use std::os::unix::fs::MetadataExt;
        let meta = self.file.metadata().map_err(|source| Error::Syscall { op: "fstat(memfd)", source })?;
        Ok(meta.blocks() * 512)
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A `MAP_SHARED` read/write mapping of a whole [`Memfd`]: the guest's view of its RAM.
#[derive(Debug)]
pub struct SharedMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; it is only accessed through atomics
// (`as_words`) or through syscalls that the kernel synchronises. Moving or sharing the handle
// between threads is sound.
unsafe impl Send for SharedMapping {}
// SAFETY: see `Send`; `&SharedMapping` only hands out `&[AtomicU64]`.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps all of `memfd` shared, readable and writable.
    pub fn new(memfd: &Memfd) -> Result<Self, Error> {
        let len = usize::try_from(memfd.size()).map_err(|_| Error::BadSize { size: memfd.size() })?;
        // SAFETY: a fresh mapping chosen by the kernel (addr = NULL) cannot overlap any Rust
        // object; the fd is valid and `len` equals its size.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                memfd.file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::Syscall { op: "mmap(memfd)", source: std::io::Error::last_os_error() });
        }
        let base = NonNull::new(addr.cast::<u8>()).ok_or(Error::BadSize { size: memfd.size() })?;
        Ok(Self { base, len })
    }

    /// Start address of the mapping.
    pub fn base(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: [`Memfd::create`] refuses a zero size).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping as 64-bit words, for a guest running as host threads. Any access may block in
    /// a userfaultfd fault while the page is brought in.
    pub fn as_words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is valid for `len` bytes for as long as `self` lives (unmapped only
        // in `Drop`), page-aligned (so aligned for `AtomicU64`), and `len` is a multiple of the
        // page size. `AtomicU64` has the layout of `u64`, and all concurrent modification of this
        // memory (other threads, the kernel filling or punching pages) is either atomic or done
        // by the kernel while the page is not mapped, so no data race is observable.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// Unmaps `[offset, offset+len)` from this mapping only (`MADV_DONTNEED`); the pages stay in
    /// the memfd. With a MINOR-registered userfaultfd the next access raises a MINOR fault, which
    /// is how vmtier samples accesses to resident pages.
    pub fn zap(&self, offset: usize, len: usize) -> Result<(), Error> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::OutOfRange { offset: offset as u64, len: len as u64 });
        }
        // SAFETY: the range lies inside our own mapping (checked above). MADV_DONTNEED on a
        // shared file mapping only drops page-table entries; the data stays in the memfd, so no
        // Rust-visible memory changes.
        let rc = unsafe { libc::madvise(self.base.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(Error::Syscall { op: "madvise(DONTNEED)", source: std::io::Error::last_os_error() });
        }
        Ok(())
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe exactly the mapping created in `new`, unmapped once; no
        // reference into it can outlive `self` (`as_words` borrows `self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
