//! Binary page-trace files (`vmtier_workload::trace::format::decode`, what `PageTrace::load`
//! reads): files on disk that a user may hand over from anywhere.
//!
//! Input: a mode byte, then a whole file image (even mode) or a file image whose body length and
//! checksum the target fixes (odd mode, see `seal_trace`), so the body decoder is reached.
//! Checks: no panic; a decoded trace is consistent (accesses inside its footprint, counts agree)
//! and survives `encode` then `decode` unchanged; no allocation above 16 bytes per input byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtier_fuzz::{assert_bounded_allocation, largest_allocation, seal_trace};
use vmtier_workload::trace::format;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 0 { rest.to_vec() } else { seal_trace(rest) };
    let (trace, peak) = largest_allocation(|| format::decode(&bytes, "fuzz.trace"));
    assert_bounded_allocation("format::decode", bytes.len(), peak, 16);
    let Ok(t) = trace else { return };
    assert!(t.accesses().all(|a| a.page < t.footprint_pages()));
    assert_eq!(t.writes(), t.accesses().filter(|a| a.write).count() as u64);
    let again = format::encode(&t);
    let back = format::decode(&again, "fuzz.trace").expect("an encoded trace must decode");
    assert_eq!(back, t, "trace changed through encode and decode");
});
