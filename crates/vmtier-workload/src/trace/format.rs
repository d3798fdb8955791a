//! The binary page-trace file (`vmtier trace import` writes it, [`PageTrace::load`] reads it).
//!
//! All integers little-endian:
//!
//! | offset     | size | field                                                        |
//! |------------|------|--------------------------------------------------------------|
//! | 0          | 8    | magic `VMTTRACE`                                             |
//! | 8          | 4    | format version, 1                                            |
//! | 12         | 4    | flags: bit 0 = instruction fetches included                  |
//! | 16         | 8    | lines of lackey text read                                    |
//! | 24         | 8    | lackey loads (`L`)                                           |
//! | 32         | 8    | lackey stores (`S`)                                          |
//! | 40         | 8    | lackey modifies (`M`)                                        |
//! | 48         | 8    | lackey instruction fetches (`I`), kept or not                |
//! | 56         | 8    | page accesses before collapsing consecutive repeats          |
//! | 64         | 8    | `A`: page accesses in the stream                             |
//! | 72         | 8    | accesses that write                                          |
//! | 80         | 4    | footprint: distinct pages                                    |
//! | 84         | 4    | `R`: runs of contiguous virtual pages                        |
//! | 88         | 8    | `B`: body length in bytes                                    |
//! | 96         | 2    | `N`: source name length                                      |
//! | 98         | N    | source name, UTF-8 (the imported file's name)                |
//! | 98+N       | B    | body: `R` runs, then `A` accesses                            |
//! | 98+N+B     | 4    | crc32c of bytes `0..98+N+B`                                  |
//!
//! The body is LEB128 varints. A run is `first_vpage − end of the previous run` (the first run:
//! its `first_vpage`), then its page count; runs are sorted and separated by at least one page,
//! and dense page numbers are handed out run after run. An access is `zigzag(page − previous
//! page) << 1 | write`, the previous page starting at 0; typical traces take 1–2 bytes per
//! access.
//!
//! Reading checks, in order: the magic, the version, the length (a truncated file is reported
//! as such), the checksum, then that the body decodes to exactly the counts the header gives.

use std::io::Write;
use std::path::Path;

use super::error::TraceError;
use super::{PageRun, PageTrace, TraceAccess, TraceCounts};

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"VMTTRACE";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes before the source name.
const FIXED_HEADER: usize = 98;
/// Flag bit: instruction fetches are page accesses.
const FLAG_INSTRUCTIONS: u32 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// The file image of `trace`.
pub fn encode(trace: &PageTrace) -> Vec<u8> {
    let mut body = Vec::with_capacity(trace.len() * 2 + trace.runs().len() * 4);
    let mut prev_end = 0u64;
    for r in trace.runs() {
        put_varint(&mut body, r.first_vpage - prev_end);
        put_varint(&mut body, u64::from(r.pages));
        prev_end = r.first_vpage + u64::from(r.pages);
    }
    let mut prev = 0i64;
    for &e in trace.packed() {
        let page = i64::from(e >> 1);
        put_varint(&mut body, zigzag(page - prev) << 1 | u64::from(e & 1));
        prev = page;
    }
    let name = trace.source().as_bytes();
    let name = &name[..name.len().min(u16::MAX as usize)];
    let c = trace.counts();
    let mut out = Vec::with_capacity(FIXED_HEADER + name.len() + body.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(if c.instructions_included { FLAG_INSTRUCTIONS } else { 0 }).to_le_bytes());
    for v in
        [c.lines, c.loads, c.stores, c.modifies, c.instructions, c.raw_accesses, trace.len() as u64, trace.writes()]
    {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&trace.footprint_pages().to_le_bytes());
    out.extend_from_slice(&(trace.runs().len() as u32).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    debug_assert_eq!(out.len(), FIXED_HEADER);
    out.extend_from_slice(name);
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.pos)?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
}

/// Decodes a file image; `name` names it in errors.
pub fn decode(bytes: &[u8], name: &str) -> Result<PageTrace, TraceError> {
    let truncated =
        |expected: u64| TraceError::Truncated { path: name.to_string(), expected, found: bytes.len() as u64 };
    if !bytes.starts_with(&MAGIC) {
        if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) && !bytes.is_empty() {
            return Err(truncated(FIXED_HEADER as u64 + 4));
        }
        return Err(TraceError::BadMagic { path: name.to_string() });
    }
    let mut cur = Cursor { bytes, pos: MAGIC.len() };
    let version = cur.u32().ok_or_else(|| truncated(FIXED_HEADER as u64 + 4))?;
    if version != VERSION {
        return Err(TraceError::UnsupportedVersion { path: name.to_string(), version, supported: VERSION });
    }
    let header = (|| {
        let flags = cur.u32()?;
        let mut v = [0u64; 8];
        for x in &mut v {
            *x = cur.u64()?;
        }
        let footprint = cur.u32()?;
        let runs = cur.u32()?;
        let body_len = cur.u64()?;
        let name_len = cur.u16()?;
        Some((flags, v, footprint, runs, body_len, name_len))
    })();
    let (
        flags,
        [lines, loads, stores, modifies, instructions, raw, accesses, writes],
        footprint,
        run_count,
        body_len,
        name_len,
    ) = header.ok_or_else(|| truncated(FIXED_HEADER as u64 + 4))?;
    let total = (FIXED_HEADER as u64 + u64::from(name_len)).saturating_add(body_len).saturating_add(4);
    if (bytes.len() as u64) < total {
        return Err(truncated(total));
    }
    if bytes.len() as u64 > total {
        return Err(TraceError::corrupt(name, format!("{} bytes after the checksum", bytes.len() as u64 - total)));
    }
    let end = total as usize - 4;
    let stored = u32::from_le_bytes(bytes[end..].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&bytes[..end]);
    if stored != computed {
        return Err(TraceError::Checksum { path: name.to_string(), stored, computed });
    }
    let source = cur.take(name_len.into()).expect("length checked");
    let source = String::from_utf8_lossy(source).into_owned();
    let mut body = Cursor { bytes: &bytes[..end], pos: cur.pos };
    let corrupt = |what: &str| TraceError::corrupt(name, what);
    let mut runs = Vec::with_capacity((run_count as usize).min(body_len as usize));
    let mut prev_end = 0u64;
    for _ in 0..run_count {
        let gap = body.varint().ok_or_else(|| corrupt("a page run does not decode"))?;
        let pages = body.varint().ok_or_else(|| corrupt("a page run does not decode"))?;
        let first_vpage = prev_end.checked_add(gap).ok_or_else(|| corrupt("a page run is out of range"))?;
        let pages = u32::try_from(pages).map_err(|_| corrupt("a page run is too long"))?;
        prev_end = first_vpage.checked_add(u64::from(pages)).ok_or_else(|| corrupt("a page run is out of range"))?;
        runs.push(PageRun { first_vpage, pages });
    }
    let mut entries = Vec::with_capacity((accesses.min(body_len)) as usize);
    let mut prev = 0i64;
    for i in 0..accesses {
        let v = body.varint().ok_or_else(|| TraceError::corrupt(name, format!("access {i} does not decode")))?;
        let page = prev.checked_add(unzigzag(v >> 1)).filter(|p| (0..i64::from(footprint)).contains(p));
        let Some(page) = page else {
            return Err(TraceError::corrupt(name, format!("access {i} is outside the {footprint}-page footprint")));
        };
        entries.push(TraceAccess { page: page as u32, write: v & 1 == 1 }.pack());
        prev = page;
    }
    if body.pos != end {
        return Err(corrupt("the body is longer than its runs and accesses"));
    }
    let counts = TraceCounts {
        lines,
        loads,
        stores,
        modifies,
        instructions,
        instructions_included: flags & FLAG_INSTRUCTIONS != 0,
        raw_accesses: raw,
    };
    let trace = PageTrace::from_parts(source, counts, runs, entries).map_err(|e| match e {
        TraceError::Corrupt { what, .. } => TraceError::Corrupt { path: name.to_string(), what },
        e => e,
    })?;
    if trace.footprint_pages() != footprint {
        return Err(corrupt("the runs do not add up to the footprint"));
    }
    if trace.writes() != writes {
        return Err(corrupt("the write count does not match the accesses"));
    }
    Ok(trace)
}

/// Writes `trace` to `path` through a temporary file renamed into place; returns the size.
pub fn write_file(trace: &PageTrace, path: &Path) -> Result<u64, TraceError> {
    let bytes = encode(trace);
    let write_err = |source| TraceError::Write { path: path.display().to_string(), source };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> PageTrace {
        let counts = TraceCounts {
            lines: 12,
            loads: 5,
            stores: 3,
            modifies: 1,
            instructions: 2,
            instructions_included: true,
            raw_accesses: 11,
        };
        let runs = vec![PageRun { first_vpage: 0x400, pages: 3 }, PageRun { first_vpage: 0x7ff_fff0_0000, pages: 2 }];
        let accesses = [(0, false), (4, true), (1, false), (3, true), (0, false), (2, true), (4, false)];
        let entries = accesses.iter().map(|&(page, write)| TraceAccess { page, write }.pack()).collect();
        PageTrace::from_parts("sample.lackey.gz", counts, runs, entries).unwrap()
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let bytes = encode(&t);
        assert_eq!(&bytes[..8], b"VMTTRACE");
        assert_eq!(decode(&bytes, "f").unwrap(), t);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.vmtrace");
        assert_eq!(t.save(&path).unwrap(), bytes.len() as u64);
        assert_eq!(PageTrace::load(&path).unwrap(), t);
        assert!(!dir.path().join("t.vmtrace.tmp").exists());
    }

    #[test]
    fn truncation_is_reported_as_such() {
        let bytes = encode(&sample());
        for len in [0, 3, 8, 11, 40, FIXED_HEADER, bytes.len() - 5, bytes.len() - 1] {
            let err = decode(&bytes[..len], "cut.vmtrace").unwrap_err();
            match (len, &err) {
                (0, TraceError::BadMagic { .. }) => {}
                (_, TraceError::Truncated { found, .. }) => assert_eq!(*found, len as u64),
                _ => panic!("{len} bytes: {err}"),
            }
            assert!(err.to_string().contains("cut.vmtrace"), "{err}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(decode(&long, "f"), Err(TraceError::Corrupt { .. })));
    }

    #[test]
    fn corruption_fails_the_checksum() {
        let bytes = encode(&sample());
        for i in (MAGIC.len() + 4..bytes.len()).step_by(3) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            match decode(&b, "bad.vmtrace") {
                // A flip in a length field may make the file look truncated or over-long.
                Err(TraceError::Checksum { .. } | TraceError::Truncated { .. } | TraceError::Corrupt { .. }) => {}
                other => panic!("flip at {i}: {other:?}"),
            }
        }
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(matches!(decode(&b, "f"), Err(TraceError::BadMagic { .. })));
        let mut b = bytes;
        b[8] = 9;
        let err = decode(&b, "f").unwrap_err();
        assert!(matches!(err, TraceError::UnsupportedVersion { version: 9, .. }), "{err}");
        let err = decode(b" L 00001000,8\n", "text").unwrap_err();
        assert!(err.to_string().contains("not a vmtier page trace"), "{err}");
    }

    #[test]
    fn a_consistent_checksum_over_a_bad_body_is_still_caught() {
        // A writer bug: an access beyond the footprint, with a valid crc.
        let mut bytes = encode(&sample());
        let body_end = bytes.len() - 4;
        bytes[body_end - 1] = 0x7e; // last access: a big positive delta
        bytes.truncate(body_end);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let err = decode(&bytes, "f").unwrap_err();
        assert!(matches!(err, TraceError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn varints_and_zigzag() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(Cursor { bytes: &b, pos: 0 }.varint(), Some(v));
        }
        for v in [0i64, 1, -1, i64::from(i32::MAX), -i64::from(u32::MAX)] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(Cursor { bytes: &[0xff; 11], pos: 0 }.varint(), None);
    }

    proptest! {
        #[test]
        fn round_trips_any_trace(
            footprint in 1u32..5000,
            raw in proptest::collection::vec((any::<u32>(), any::<bool>()), 0..2000),
        ) {
            let accesses = raw.into_iter().map(|(p, write)| TraceAccess { page: p % footprint, write });
            let t = PageTrace::from_accesses("p", footprint, accesses).unwrap();
            prop_assert_eq!(decode(&encode(&t), "p").unwrap(), t);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes, "g");
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&1u32.to_le_bytes());
            with_magic.extend_from_slice(&bytes);
            let _ = decode(&with_magic, "g");
        }
    }
}
