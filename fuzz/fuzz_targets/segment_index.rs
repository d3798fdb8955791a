//! Tier-3 segment objects (`vmtier_storage::segment::decode_index`): objects read back from an
//! object store, which other hosts can write.
//!
//! Input: a mode byte, then either a whole object (mode 0), a sealed object (mode 1: header,
//! footer and index fields from the input with valid checksums around `1 + byte % 4` pages, see
//! `seal_segment`), or pages to encode (mode 2: round trip through `segment::encode`).
//! Checks: no panic; a decoded index has exactly the page count the object's length implies and
//! is the index stored in the object; decode(encode(pages)) gives back the pages' numbers and
//! checksums; no allocation above 2 bytes per input byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtier_fuzz::{assert_bounded_allocation, largest_allocation, seal_segment};
use vmtier_storage::segment;

const PAGE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => check(rest),
        1 => {
            let Some((&n, fields)) = rest.split_first() else { return };
            check(&seal_segment(1 + usize::from(n % 4), fields));
        }
        _ => round_trip(rest),
    }
});

fn check(object: &[u8]) {
    let (index, peak) = largest_allocation(|| segment::decode_index(object));
    assert_bounded_allocation("decode_index", object.len(), peak, 2);
    let Ok(index) = index else { return };
    let n = index.len();
    assert!((1..=segment::MAX_PAGES).contains(&n));
    assert_eq!(object.len(), segment::encoded_len(n));
    let start = PAGE * (1 + n);
    for (i, e) in index.iter().enumerate() {
        let raw = &object[start + 12 * i..start + 12 * (i + 1)];
        assert_eq!(e.page.to_le_bytes(), raw[..8]);
        assert_eq!(e.crc.to_le_bytes(), raw[8..]);
    }
}

fn round_trip(data: &[u8]) {
    // Up to 4 pages: page number (u64) then a fill byte; page contents are cheap to vary.
    let pages: Vec<(u64, Vec<u8>)> = data
        .chunks_exact(9)
        .take(4)
        .map(|c| {
            let mut p = [0u8; 8];
            p.copy_from_slice(&c[..8]);
            let mut page = vec![c[8]; PAGE];
            page[usize::from(c[8]) * 7] ^= c[0];
            (u64::from_le_bytes(p), page)
        })
        .collect();
    let refs: Vec<(u64, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    match segment::encode(&refs) {
        Ok((object, crcs)) => {
            let index = segment::decode_index(&object).expect("a freshly encoded segment must decode");
            assert_eq!(index.len(), pages.len());
            for (i, e) in index.iter().enumerate() {
                assert_eq!(e.page, pages[i].0);
                assert_eq!(e.crc, crcs[i]);
                assert_eq!(e.crc, crc32c::crc32c(&pages[i].1));
                let off = segment::page_offset(i as u16) as usize;
                assert_eq!(&object[off..off + PAGE], pages[i].1.as_slice());
            }
        }
        Err(e) => assert!(pages.is_empty(), "encode refused {} pages: {e}", pages.len()),
    }
}
