//! A bump allocator over the heap the boot block describes.

/// The unallocated part of the heap.
pub struct Heap {
    next: u64,
    end: u64,
}

impl Heap {
    pub fn new(start: u64, end: u64) -> Self {
        Self { next: start, end }
    }

    /// The first unallocated address.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The end of the heap.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Takes `bytes` aligned to `align` (a power of two); `None` if the heap is too small.
    pub fn take<T>(&mut self, count: u64, align: u64) -> Option<*mut T> {
        let start = (self.next + align - 1) & !(align - 1);
        let end = start.checked_add(count.checked_mul(core::mem::size_of::<T>() as u64)?)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start as *mut T)
    }
}
