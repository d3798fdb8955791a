//! Guest RAM as the VMM sees it: a borrowed host mapping addressed by guest-physical address.

use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;

use crate::error::VmError;

/// Guest RAM: `len` bytes at host address `base`, guest-physical `0..len`.
///
/// The VMM copies the page tables, the program and the boot block in, and reads the report
/// out. Accesses may fault (the memory is usually a userfaultfd-registered mapping served by
/// vmtier's engine); that is transparent here.
#[derive(Debug, Clone, Copy)]
pub struct GuestRam<'m> {
    base: *mut u8,
    len: u64,
    _mem: PhantomData<&'m [AtomicU64]>,
}

// SAFETY: GuestRam is a view of shared memory that is only accessed through raw copies, which
// are valid from any thread; it borrows the mapping for 'm so the mapping outlives it.
unsafe impl Send for GuestRam<'_> {}
// SAFETY: as above; no method hands out references into the memory.
unsafe impl Sync for GuestRam<'_> {}

impl<'m> GuestRam<'m> {
    /// Guest RAM over `words` (for example `Engine::guest_words()`).
    pub fn new(words: &'m [AtomicU64]) -> Self {
        Self { base: words.as_ptr() as *mut u8, len: (words.len() * 8) as u64, _mem: PhantomData }
    }

    /// Guest RAM over `len` bytes at `base`.
    ///
    /// # Safety
    /// `base..base + len` must be a readable and writable mapping that stays mapped for `'m`.
    pub unsafe fn from_raw(base: *mut u8, len: u64) -> Self {
        Self { base, len, _mem: PhantomData }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the RAM is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of guest-physical 0.
    pub fn host_addr(&self) -> u64 {
        self.base as u64
    }

    fn check(&self, gpa: u64, len: usize) -> Result<(), VmError> {
        match gpa.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(VmError::OutOfRange { gpa, len: len as u64, ram: self.len }),
        }
    }

    /// Copies `bytes` to guest-physical `gpa`.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> Result<(), VmError> {
        self.check(gpa, bytes.len())?;
        // SAFETY: the range is inside the mapping (checked above), which outlives 'm. The guest
        // may touch the same bytes concurrently; the memory is shared with another agent, as
        // with a device, and no Rust reference to it exists.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(gpa as usize), bytes.len()) };
        Ok(())
    }

    /// Copies guest-physical `gpa..gpa + out.len()` into `out`.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), VmError> {
        self.check(gpa, out.len())?;
        // SAFETY: as in `write`, reading.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(gpa as usize), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Writes a plain-old-data value at `gpa`.
    pub fn write_obj<T: Pod>(&self, gpa: u64, value: &T) -> Result<(), VmError> {
        // SAFETY: T is Pod: every byte of it is initialised and may be copied out.
        let bytes = unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
        self.write(gpa, bytes)
    }

    /// Reads a plain-old-data value from `gpa`.
    pub fn read_obj<T: Pod>(&self, gpa: u64) -> Result<T, VmError> {
        self.check(gpa, size_of::<T>())?;
        // SAFETY: in range (checked); T is Pod, so any bit pattern is a valid T; the read is
        // unaligned-safe.
        Ok(unsafe { std::ptr::read_unaligned(self.base.add(gpa as usize).cast::<T>()) })
    }
}

/// Types that are plain bytes: `#[repr(C)]`, no padding, no pointers, valid for any bit pattern.
///
/// # Safety
/// Implement only for types meeting the above.
pub unsafe trait Pod: Copy {}

// SAFETY: BootInfo and GuestReport are repr(C) structs of u64/u32 fields laid out without
// padding (u32 fields come in pairs), and any bit pattern is valid.
unsafe impl Pod for crate::abi::BootInfo {}
// SAFETY: as above.
unsafe impl Pod for crate::abi::GuestReport {}
// SAFETY: integers.
unsafe impl Pod for u64 {}
// SAFETY: integer arrays.
unsafe impl<const N: usize> Pod for [u64; N] {}
