//! Anonymous private memory: guest RAM as a Firecracker-style VMM holds it when a page server
//! fills it through userfaultfd `MISSING` faults from a snapshot's memory file.

use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use crate::{Error, PAGE_SIZE};

/// A `MAP_PRIVATE | MAP_ANONYMOUS` read/write mapping. Every page starts absent; with a
/// MISSING-registered userfaultfd the first access to each raises a fault.
#[derive(Debug)]
pub struct AnonMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: plain memory, only accessed through atomics (`as_words`) or raw copies and syscalls
// that the kernel synchronises; moving or sharing the handle between threads is sound.
unsafe impl Send for AnonMapping {}
// SAFETY: see `Send`; `&AnonMapping` only hands out `&[AtomicU64]`.
unsafe impl Sync for AnonMapping {}

impl AnonMapping {
    /// Maps `len` bytes (a positive multiple of [`PAGE_SIZE`]), reserving no swap.
    pub fn new(len: usize) -> Result<Self, Error> {
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(Error::BadSize { size: len as u64 });
        }
        // SAFETY: a fresh anonymous mapping chosen by the kernel (addr = NULL) cannot overlap any
        // Rust object.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::Syscall { op: "mmap(anonymous)", source: std::io::Error::last_os_error() });
        }
        let base = NonNull::new(addr.cast::<u8>()).ok_or(Error::BadSize { size: len as u64 })?;
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

    /// Whether the mapping is empty (never: [`AnonMapping::new`] refuses a zero size).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping as 64-bit words (for example for a micro-VM's `GuestRam`). Any access may
    /// block in a userfaultfd fault while the page is brought in.
    pub fn as_words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is valid for `len` bytes while `self` lives (unmapped only in
        // `Drop`), page-aligned and a multiple of 8 bytes long; all access is atomic or done by
        // the kernel while the page is absent, so no data race is observable.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// Drops `[offset, offset+len)` (`MADV_DONTNEED`): the pages become absent again, and a
    /// userfaultfd registered with `EVENT_REMOVE` reports the range (as a balloon device does).
    pub fn discard(&self, offset: usize, len: usize) -> Result<(), Error> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::OutOfRange { offset: offset as u64, len: len as u64 });
        }
        // SAFETY: the range lies inside our own mapping (checked above), which Rust code only
        // accesses through atomics or raw copies; dropping pages makes them read as zeros or
        // fault again, which such accesses tolerate.
        let rc = unsafe { libc::madvise(self.base.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(Error::Syscall { op: "madvise(DONTNEED)", source: std::io::Error::last_os_error() });
        }
        Ok(())
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe exactly the mapping created in `new`, unmapped once; no
        // reference into it outlives `self` (`as_words` borrows `self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
