//! Page-aligned heap buffers, as `O_DIRECT` I/O and `UFFDIO_COPY` want them.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`]: one 4 KiB page, which satisfies `O_DIRECT` on every
/// block device and file system vmtier targets.
pub const BUF_ALIGN: usize = 4096;

/// A zero-initialised heap buffer whose start is aligned to [`BUF_ALIGN`] bytes.
///
/// The length is fixed at allocation; it need not be a multiple of the alignment, but `O_DIRECT`
/// I/O requires that it is.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively, like a `Box<[u8]>`; no interior
// mutability or thread-bound state.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out `&[u8]`, which is `Sync`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to [`BUF_ALIGN`]. Panics if `len` is 0 or the
    /// allocation fails (like `Vec`).
    pub fn zeroed(len: usize) -> Self {
        assert!(len > 0, "AlignedBuf of zero length");
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size (asserted above) and a valid power-of-two alignment.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, BUF_ALIGN).expect("AlignedBuf length overflows a Layout")
    }

    /// Raw pointer to the first byte, for ioctls that take a source address.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at allocation) bytes owned by `self`,
        // and the shared borrow of `self` prevents mutation for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and the exclusive borrow of `self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `alloc_zeroed` with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::zeroed(3 * 4096);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[5] = 7;
        let c = b.clone();
        assert_eq!(c[5], 7);
        assert_eq!(c.len(), 3 * 4096);
    }
}
