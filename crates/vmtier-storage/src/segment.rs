//! The segment object format of tier 3: up to `segment_bytes / 4096` guest pages packed into one
//! object, written with a single PUT and read back one page at a time with ranged GETs.
//!
//! All integers are little-endian. With `n` pages the object is
//! `4096 * (1 + n) + 12 * n + 20` bytes long:
//!
//! | offset              | size     | field                                                    |
//! |---------------------|----------|----------------------------------------------------------|
//! | 0                   | 8        | header magic `b"VMTSEGH\0"`                              |
//! | 8                   | 4        | format version, [`VERSION`] (= 1)                        |
//! | 12                  | 4        | page count `n` (1..=[`MAX_PAGES`])                       |
//! | 16                  | 4        | page size, 4096                                          |
//! | 20                  | 4        | crc32c of bytes 0..20                                    |
//! | 24                  | 4072     | zero padding, so that pages start 4096-aligned           |
//! | 4096 * (1 + i)      | 4096     | page `i`, for `i` in `0..n`                              |
//! | 4096 * (1 + n)      | 12 * n   | index: per page, guest page number (u64) and crc32c (u32) of the page |
//! | end − 20            | 4        | footer: page count `n` again                             |
//! | end − 16            | 4        | footer: crc32c of the index                              |
//! | end − 12            | 4        | footer: format version                                   |
//! | end − 8             | 8        | footer magic `b"VMTSEGF\0"`                              |
//!
//! The footer lets a reader find and verify the index from the object's tail alone; the header
//! lets a reader recognise a segment from its first bytes. Page `i` is at
//! [`page_offset`]`(i)`, so the tier reads it with one ranged GET without touching the index.
//! The page checksums in the index duplicate the ones the engine keeps in its page table; they make
//! a segment self-describing for `vmtier inspect` and for a secondary host.
//!
//! [`decode_index`] is a parser of untrusted bytes: it rejects every truncated or garbled input
//! with a [`SegmentError`] and never panics.

use vmtier_uffd::PAGE_SIZE;

/// Magic at the start of every segment object.
pub const HEADER_MAGIC: [u8; 8] = *b"VMTSEGH\0";
/// Magic at the very end of every segment object.
pub const FOOTER_MAGIC: [u8; 8] = *b"VMTSEGF\0";
/// Current format version (header and footer).
pub const VERSION: u32 = 1;
/// Size of the header block; pages start right after it.
pub const HEADER_LEN: usize = PAGE_SIZE;
/// Size of one index entry: guest page number (u64) + crc32c (u32).
pub const INDEX_ENTRY_LEN: usize = 12;
/// Size of the footer.
pub const FOOTER_LEN: usize = 20;
/// Most pages a segment can hold: the object's page index is a `u16`, and the tier caps segments
/// at 8 MiB (2048 pages) anyway.
pub const MAX_PAGES: usize = u16::MAX as usize;

/// A page recorded in a segment's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Guest page number the page belongs to.
    pub page: u64,
    /// crc32c of the page's 4096 bytes.
    pub crc: u32,
}

/// Errors of encoding or decoding a segment object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    /// `encode` was given no pages or more than [`MAX_PAGES`].
    #[error("cannot encode a segment of {pages} pages: a segment holds 1..={max} pages")]
    EncodePageCount {
        /// Pages given.
        pages: usize,
        /// Most pages allowed.
        max: usize,
    },
    /// `encode` was given a page that is not exactly 4096 bytes.
    #[error("cannot encode page {index} (guest page {page}): it is {len} bytes, not 4096")]
    EncodePageSize {
        /// Position in the input.
        index: usize,
        /// Guest page number.
        page: u64,
        /// Its length.
        len: usize,
    },
    /// The object is shorter than a header plus a footer, or its length does not match the page
    /// count in its footer (a truncated or padded upload).
    #[error(
        "segment is truncated or padded: {len} bytes, expected {expected} (page count {pages}); the object was not written completely"
    )]
    DecodeLength {
        /// Actual length.
        len: usize,
        /// Length the footer implies (0 if the footer itself is missing).
        expected: usize,
        /// Page count in the footer.
        pages: u32,
    },
    /// A magic number is wrong: this is not a vmtier segment, or it is damaged.
    #[error("segment {which} magic is wrong: not a vmtier segment object, or it is damaged")]
    DecodeMagic {
        /// `"header"` or `"footer"`.
        which: &'static str,
    },
    /// The format version is one this build does not read.
    #[error("segment format version {version} is not supported (this build reads version {VERSION})")]
    DecodeVersion {
        /// Version found.
        version: u32,
    },
    /// Header and footer disagree, or a header field is out of range.
    #[error("segment header is inconsistent: {reason}")]
    DecodeHeader {
        /// What is wrong.
        reason: &'static str,
    },
    /// The index does not match its checksum in the footer.
    #[error("segment index is corrupt: crc32c {actual:#010x}, footer says {expected:#010x}")]
    DecodeIndexChecksum {
        /// Checksum in the footer.
        expected: u32,
        /// Checksum of the index bytes.
        actual: u32,
    },
}

/// Byte offset of page `index` inside a segment object.
pub fn page_offset(index: u16) -> u64 {
    (HEADER_LEN + usize::from(index) * PAGE_SIZE) as u64
}

/// Total length of a segment object holding `pages` pages.
pub fn encoded_len(pages: usize) -> usize {
    HEADER_LEN + pages * PAGE_SIZE + pages * INDEX_ENTRY_LEN + FOOTER_LEN
}

/// Builds a segment object from `(guest page number, 4096-byte page)` pairs. Returns the object's
/// bytes and the crc32c of each page, in input order (page `i` is at index `i`).
pub fn encode(pages: &[(u64, &[u8])]) -> Result<(Vec<u8>, Vec<u32>), SegmentError> {
    if pages.is_empty() || pages.len() > MAX_PAGES {
        return Err(SegmentError::EncodePageCount { pages: pages.len(), max: MAX_PAGES });
    }
    let n = pages.len();
    let mut out = Vec::with_capacity(encoded_len(n));
    out.extend_from_slice(&HEADER_MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    let hcrc = crc32c::crc32c(&out[..20]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.resize(HEADER_LEN, 0);

    let mut crcs = Vec::with_capacity(n);
    for (index, (page, data)) in pages.iter().enumerate() {
        if data.len() != PAGE_SIZE {
            return Err(SegmentError::EncodePageSize { index, page: *page, len: data.len() });
        }
        crcs.push(crc32c::crc32c(data));
        out.extend_from_slice(data);
    }
    let index_start = out.len();
    for ((page, _), crc) in pages.iter().zip(&crcs) {
        out.extend_from_slice(&page.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
    }
    let icrc = crc32c::crc32c(&out[index_start..]);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&icrc.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&FOOTER_MAGIC);
    debug_assert_eq!(out.len(), encoded_len(n));
    Ok((out, crcs))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Parses and verifies the header, footer and index of a whole segment object and returns the
/// index (entry `i` describes page `i`). Page contents are not checked here; each page's crc32c is
/// checked when the page is read.
pub fn decode_index(object: &[u8]) -> Result<Vec<IndexEntry>, SegmentError> {
    let len = object.len();
    if len < HEADER_LEN + FOOTER_LEN {
        return Err(SegmentError::DecodeLength { len, expected: 0, pages: 0 });
    }
    let footer = &object[len - FOOTER_LEN..];
    if footer[12..20] != FOOTER_MAGIC {
        return Err(SegmentError::DecodeMagic { which: "footer" });
    }
    let fversion = le_u32(footer, 8);
    if fversion != VERSION {
        return Err(SegmentError::DecodeVersion { version: fversion });
    }
    let pages = le_u32(footer, 0);
    let index_crc = le_u32(footer, 4);
    if pages == 0 || pages as usize > MAX_PAGES {
        return Err(SegmentError::DecodeHeader { reason: "page count in footer is 0 or above the maximum" });
    }
    let n = pages as usize;
    let expected = encoded_len(n);
    if len != expected {
        return Err(SegmentError::DecodeLength { len, expected, pages });
    }
    let header = &object[..HEADER_LEN];
    if header[..8] != HEADER_MAGIC {
        return Err(SegmentError::DecodeMagic { which: "header" });
    }
    let hversion = le_u32(header, 8);
    if hversion != VERSION {
        return Err(SegmentError::DecodeVersion { version: hversion });
    }
    if le_u32(header, 20) != crc32c::crc32c(&header[..20]) {
        return Err(SegmentError::DecodeHeader { reason: "header checksum does not match" });
    }
    if le_u32(header, 12) != pages {
        return Err(SegmentError::DecodeHeader { reason: "page count in header and footer differ" });
    }
    if le_u32(header, 16) != PAGE_SIZE as u32 {
        return Err(SegmentError::DecodeHeader { reason: "page size is not 4096" });
    }
    let index_start = HEADER_LEN + n * PAGE_SIZE;
    let index = &object[index_start..index_start + n * INDEX_ENTRY_LEN];
    let actual = crc32c::crc32c(index);
    if actual != index_crc {
        return Err(SegmentError::DecodeIndexChecksum { expected: index_crc, actual });
    }
    Ok(index.chunks_exact(INDEX_ENTRY_LEN).map(|e| IndexEntry { page: le_u64(e, 0), crc: le_u32(e, 8) }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize) -> Vec<(u64, Vec<u8>)> {
        (0..n).map(|i| (1000 + i as u64 * 7, vec![i as u8 ^ 0x5a; PAGE_SIZE])).collect()
    }

    fn encode_sample(n: usize) -> (Vec<u8>, Vec<u32>) {
        let pages = sample(n);
        let refs: Vec<(u64, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        encode(&refs).expect("encode")
    }

    #[test]
    fn round_trip() {
        let pages = sample(5);
        let refs: Vec<(u64, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        let (obj, crcs) = encode(&refs).expect("encode");
        assert_eq!(obj.len(), encoded_len(5));
        let index = decode_index(&obj).expect("decode");
        assert_eq!(index.len(), 5);
        for (i, e) in index.iter().enumerate() {
            assert_eq!(e.page, pages[i].0);
            assert_eq!(e.crc, crcs[i]);
            let off = page_offset(i as u16) as usize;
            assert_eq!(&obj[off..off + PAGE_SIZE], pages[i].1.as_slice());
        }
    }

    #[test]
    fn encode_rejects_bad_input() {
        assert!(matches!(encode(&[]), Err(SegmentError::EncodePageCount { .. })));
        let short = [0u8; 100];
        assert!(matches!(encode(&[(1, &short[..])]), Err(SegmentError::EncodePageSize { .. })));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let (obj, _) = encode_sample(3);
        for cut in 0..obj.len() {
            assert!(decode_index(&obj[..cut]).is_err(), "prefix of {cut} bytes");
        }
        // Tail-only truncation (front cut off) must fail too.
        for cut in [1, 8, 4096, 4097] {
            assert!(decode_index(&obj[cut..]).is_err());
        }
    }

    #[test]
    fn garbled_index_and_header_are_rejected() {
        let (obj, _) = encode_sample(2);
        let index_at = HEADER_LEN + 2 * PAGE_SIZE;
        let mut bad = obj.clone();
        bad[index_at + 3] ^= 1;
        assert!(matches!(decode_index(&bad), Err(SegmentError::DecodeIndexChecksum { .. })));
        let mut bad = obj.clone();
        bad[13] ^= 1;
        assert!(decode_index(&bad).is_err());
        let mut bad = obj.clone();
        bad[0] = b'X';
        assert_eq!(decode_index(&bad), Err(SegmentError::DecodeMagic { which: "header" }));
        let mut bad = obj;
        let l = bad.len();
        bad[l - 10] ^= 0xff; // footer version
        assert!(matches!(decode_index(&bad), Err(SegmentError::DecodeVersion { .. })));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let _ = decode_index(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_segments(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in 0usize..64,
        ) {
            let (mut obj, _) = encode_sample(2);
            let l = obj.len();
            for (at, x) in flips {
                obj[at % l] ^= x;
            }
            obj.truncate(l - cut);
            let _ = decode_index(&obj);
        }
    }
}
