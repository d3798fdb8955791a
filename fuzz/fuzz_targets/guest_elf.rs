//! Guest programs (`vmtier_vm::GuestImage::parse`): ELF files loaded into the micro-VM.
//!
//! Input: the bytes of an ELF file.
//! Checks: no panic; an accepted image has its entry point inside a loadable segment and every
//! segment's file data no larger than its memory size; no allocation above 2 bytes per input
//! byte (segment data is copied out of the file, never sized by a header field alone).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtier_fuzz::{assert_bounded_allocation, largest_allocation};
use vmtier_vm::GuestImage;

fuzz_target!(|data: &[u8]| {
    let (img, peak) = largest_allocation(|| GuestImage::parse(data));
    assert_bounded_allocation("GuestImage::parse", data.len(), peak, 2);
    let Ok(img) = img else { return };
    assert!(!img.segments.is_empty());
    assert!(img.segments.iter().any(|s| s.addr <= img.entry && img.entry - s.addr < s.mem_size));
    for s in &img.segments {
        assert!(s.data.len() as u64 <= s.mem_size);
    }
});
