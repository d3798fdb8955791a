//! Import of valgrind lackey output (`valgrind --tool=lackey --trace-mem=yes`), plain or gzip.
//!
//! Lackey writes one line per memory reference:
//!
//! ```text
//! I  04016b0,3          instruction fetch of 3 bytes at 0x04016b0
//!  L 1ffefffd40,8       load of 8 bytes
//!  S 1ffefffd38,8       store
//!  M 0421ee8,4          modify (load and store of the same bytes)
//! ```
//!
//! plus valgrind's own messages (`==PID== …`, `--PID-- …`, `**PID** …`), which are skipped, as
//! are blank lines and `SB ADDR` superblock lines (`--trace-superblocks=yes`). Anything else is
//! an error naming the line: [`TraceError::NotLackey`] if no record came before it (the file is
//! not lackey output at all), [`TraceError::Malformed`] otherwise.
//!
//! The mapping to page accesses:
//!
//! | record | page access |
//! |--------|-------------|
//! | `L`    | read        |
//! | `S`    | write       |
//! | `M`    | write (the guest verifies the page, then writes it) |
//! | `I`    | read with [`ImportOptions::instructions`], else only counted |
//!
//! An access at `addr` of `size` bytes touches the 4 KiB pages `addr >> 12 ..= (addr + size -
//! 1) >> 12` (usually one). Consecutive accesses to the same page collapse into one, which writes
//! if any of them wrote ([`TraceCounts::raw_accesses`](super::TraceCounts) keeps the count
//! before collapsing): at page granularity they are one touch. Virtual pages are then numbered
//! densely in address order (see [`super`]).
//!
//! The input is streamed: memory grows with the number of page accesses (4 bytes each) and
//! distinct pages, not with the text.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use flate2::read::MultiGzDecoder;

use super::error::{TraceError, excerpt};
use super::{MAX_FOOTPRINT, PageRun, PageTrace, TraceCounts};

/// Longest line accepted; lackey's are about 20 bytes.
pub const MAX_LINE: usize = 1024;
/// Largest access size a record may give, in bytes. Valgrind's largest memory references (XSAVE
/// areas) are a few KiB and ordinary ones at most 64 bytes; a larger size is not lackey output,
/// and would let one 20-byte line expand into up to a million page accesses.
pub const MAX_ACCESS_SIZE: u64 = 1 << 16;
/// Progress is reported every this many lines.
pub const PROGRESS_LINES: u64 = 1 << 16;

/// How to import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Turn instruction fetches (`I` records) into read accesses too. Off by default: the
    /// traces of interest are data accesses, and code pages are few and hot.
    pub instructions: bool,
}

/// How far an import got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportProgress {
    /// Lines read.
    pub lines: u64,
    /// Bytes of the input consumed (compressed bytes for a `.gz` file).
    pub bytes: u64,
}

/// The kind of a lackey record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// `I`: instruction fetch.
    Instruction,
    /// `L`: load.
    Load,
    /// `S`: store.
    Store,
    /// `M`: modify (load and store).
    Modify,
}

/// One lackey record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Its kind.
    pub kind: RecordKind,
    /// The address.
    pub addr: u64,
    /// Bytes accessed.
    pub size: u64,
}

impl Record {
    /// The first and last 4 KiB page the record touches, or `None` if `addr + size` overflows.
    pub fn pages(&self) -> Option<(u64, u64)> {
        let last = self.addr.checked_add(self.size.max(1) - 1)?;
        Some((self.addr >> 12, last >> 12))
    }
}

/// Parses one line (without its newline): `Ok(Some(record))`, `Ok(None)` for a line to skip
/// (valgrind messages, blank lines, superblock lines), or `Err(reason)`.
pub fn parse_line(line: &[u8]) -> Result<Option<Record>, &'static str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace)
        || line.starts_with(b"==")
        || line.starts_with(b"--")
        || line.starts_with(b"**")
        || line.starts_with(b"SB ")
    {
        return Ok(None);
    }
    let rest = line.trim_ascii_start();
    let kind = match rest[0] {
        b'I' => RecordKind::Instruction,
        b'L' => RecordKind::Load,
        b'S' => RecordKind::Store,
        b'M' => RecordKind::Modify,
        _ => return Err("not a lackey record (kind I, L, S or M)"),
    };
    let rest = &rest[1..];
    if !rest.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
        return Err("no space after the record kind");
    }
    let rest = rest.trim_ascii();
    let Some(comma) = rest.iter().position(|&c| c == b',') else {
        return Err("missing `,SIZE` after the address");
    };
    let (addr, size) = (&rest[..comma], &rest[comma + 1..]);
    if addr.is_empty() || addr.len() > 16 {
        return Err("bad hex address");
    }
    let addr = addr.iter().try_fold(0u64, |acc, &c| Some(acc << 4 | u64::from((c as char).to_digit(16)?)));
    let Some(addr) = addr else {
        return Err("bad hex address");
    };
    if size.is_empty() || size.len() > 19 {
        return Err("bad decimal size");
    }
    let size = size.iter().try_fold(0u64, |acc, &c| Some(acc * 10 + u64::from((c as char).to_digit(10)?)));
    let Some(size) = size else {
        return Err("bad decimal size");
    };
    let record = Record { kind, addr, size };
    if size > MAX_ACCESS_SIZE || record.pages().is_none() {
        return Err("size out of range (lackey reports at most 65536 bytes per access)");
    }
    Ok(Some(record))
}

/// Reads lackey records from text, skipping what [`parse_line`] skips, with errors that name
/// the line.
#[derive(Debug)]
pub struct LackeyReader<R> {
    inner: R,
    name: String,
    line: u64,
    buf: Vec<u8>,
    seen_record: bool,
}

impl<R: BufRead> LackeyReader<R> {
    /// A reader of `inner`, named `name` (a file name) in errors.
    pub fn new(inner: R, name: impl Into<String>) -> Self {
        Self { inner, name: name.into(), line: 0, buf: Vec::with_capacity(128), seen_record: false }
    }

    /// Lines read so far (the 1-based number of the last line).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The next record, or `None` at the end of the input.
    pub fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        loop {
            let too_long = match self.read_line() {
                Ok(None) => return Ok(None),
                Ok(Some(too_long)) => too_long,
                Err(source) => return Err(TraceError::Read { path: self.name.clone(), line: self.line, source }),
            };
            let parsed = if too_long {
                Err("line longer than 1024 bytes")
            } else if self.buf.is_empty() {
                Ok(None)
            } else {
                parse_line(&self.buf)
            };
            match parsed {
                Ok(Some(r)) => {
                    self.seen_record = true;
                    return Ok(Some(r));
                }
                Ok(None) => {}
                Err(_) if !self.seen_record => {
                    return Err(TraceError::NotLackey {
                        path: self.name.clone(),
                        line: self.line,
                        text: excerpt(&self.buf),
                    });
                }
                Err(reason) => {
                    return Err(TraceError::Malformed {
                        path: self.name.clone(),
                        line: self.line,
                        reason,
                        text: excerpt(&self.buf),
                    });
                }
            }
        }
    }

    /// Reads the next line into `buf` (without the newline). `Ok(None)` at the end of input;
    /// `Ok(Some(true))` if the line is longer than [`MAX_LINE`] (then `buf` holds its start and
    /// the rest is not read).
    fn read_line(&mut self) -> io::Result<Option<bool>> {
        self.buf.clear();
        let mut any = false;
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                if any {
                    self.line += 1;
                    return Ok(Some(false));
                }
                return Ok(None);
            }
            any = true;
            let (take, newline) = match avail.iter().position(|&c| c == b'\n') {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            let room = MAX_LINE + 1 - self.buf.len();
            self.buf.extend_from_slice(&avail[..take.min(room)]);
            self.inner.consume(if newline { take + 1 } else { take });
            if self.buf.len() > MAX_LINE {
                self.line += 1;
                self.buf.truncate(MAX_LINE);
                return Ok(Some(true));
            }
            if newline {
                self.line += 1;
                return Ok(Some(false));
            }
        }
    }
}

/// A multiplicative hash for page numbers (the std SipHash is several times slower here).
#[derive(Debug, Default, Clone, Copy)]
struct PageHasher(u64);

impl Hasher for PageHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// Turns records into a [`PageTrace`]: page mapping, collapsing, dense numbering.
#[derive(Debug)]
struct Builder {
    opts: ImportOptions,
    ids: HashMap<u64, u32, BuildHasherDefault<PageHasher>>,
    /// First-touch id → virtual page.
    vpages: Vec<u64>,
    /// Packed accesses over first-touch ids.
    entries: Vec<u32>,
    last: Option<(u64, u32)>,
    counts: TraceCounts,
}

impl Builder {
    fn new(opts: ImportOptions) -> Self {
        Self {
            opts,
            ids: HashMap::default(),
            vpages: Vec::new(),
            entries: Vec::new(),
            last: None,
            counts: TraceCounts { instructions_included: opts.instructions, ..TraceCounts::default() },
        }
    }

    fn add(&mut self, r: Record, name: &str, line: u64) -> Result<(), TraceError> {
        let write = match r.kind {
            RecordKind::Load => {
                self.counts.loads += 1;
                false
            }
            RecordKind::Store => {
                self.counts.stores += 1;
                true
            }
            RecordKind::Modify => {
                self.counts.modifies += 1;
                true
            }
            RecordKind::Instruction => {
                self.counts.instructions += 1;
                if !self.opts.instructions {
                    return Ok(());
                }
                false
            }
        };
        let (first, last) = r.pages().expect("parse_line checked the range");
        for vpage in first..=last {
            self.push(vpage, write, name, line)?;
        }
        Ok(())
    }

    fn push(&mut self, vpage: u64, write: bool, name: &str, line: u64) -> Result<(), TraceError> {
        self.counts.raw_accesses += 1;
        let id = match self.last {
            Some((v, id)) if v == vpage => id,
            _ => {
                let next = self.vpages.len() as u32;
                let id = *self.ids.entry(vpage).or_insert(next);
                if id == next {
                    if u64::from(next) >= MAX_FOOTPRINT {
                        return Err(TraceError::TooManyPages { path: name.to_string(), line, max: MAX_FOOTPRINT });
                    }
                    self.vpages.push(vpage);
                }
                self.last = Some((vpage, id));
                id
            }
        };
        match self.entries.last_mut() {
            Some(e) if *e >> 1 == id => *e |= u32::from(write),
            _ => self.entries.push(id << 1 | u32::from(write)),
        }
        Ok(())
    }

    /// Renumbers pages in address order and builds the runs.
    fn finish(mut self, name: &str, source: String, lines: u64) -> Result<PageTrace, TraceError> {
        self.counts.lines = lines;
        if self.entries.is_empty() {
            return Err(TraceError::NoAccesses {
                path: name.to_string(),
                lines,
                instructions: self.counts.instructions,
            });
        }
        drop(self.ids);
        let mut order: Vec<u32> = (0..self.vpages.len() as u32).collect();
        order.sort_unstable_by_key(|&id| self.vpages[id as usize]);
        let mut rank = vec![0u32; order.len()];
        let mut runs: Vec<PageRun> = Vec::new();
        for (dense, &id) in order.iter().enumerate() {
            rank[id as usize] = dense as u32;
            let vpage = self.vpages[id as usize];
            match runs.last_mut() {
                Some(r) if r.first_vpage + u64::from(r.pages) == vpage => r.pages += 1,
                _ => runs.push(PageRun { first_vpage: vpage, pages: 1 }),
            }
        }
        for e in &mut self.entries {
            *e = rank[(*e >> 1) as usize] << 1 | (*e & 1);
        }
        PageTrace::from_parts(source, self.counts, runs, self.entries)
    }
}

/// Counts the bytes read through it.
#[derive(Debug)]
struct Counting<R> {
    inner: R,
    bytes: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.set(self.bytes.get() + n as u64);
        Ok(n)
    }
}

/// Imports lackey output from `reader` (plain text or gzip, detected by its magic bytes);
/// `name` names it in errors and becomes the trace's [`source`](PageTrace::source) (its last
/// path component). `progress` is called every [`PROGRESS_LINES`] lines.
pub fn import_reader<R: Read>(
    reader: R,
    name: &str,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<PageTrace, TraceError> {
    let bytes = Rc::new(Cell::new(0));
    let mut raw = BufReader::with_capacity(1 << 16, Counting { inner: reader, bytes: Rc::clone(&bytes) });
    let head = loop {
        match raw.fill_buf() {
            Ok(b) => break b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(TraceError::Read { path: name.to_string(), line: 0, source }),
        }
    };
    let input: Box<dyn BufRead> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(1 << 16, MultiGzDecoder::new(raw)))
    } else {
        Box::new(raw)
    };
    let mut reader = LackeyReader::new(input, name);
    let mut builder = Builder::new(*opts);
    let mut next_report = PROGRESS_LINES;
    while let Some(record) = reader.next_record()? {
        builder.add(record, name, reader.line())?;
        if reader.line() >= next_report {
            next_report = reader.line() + PROGRESS_LINES;
            progress(ImportProgress { lines: reader.line(), bytes: bytes.get() });
        }
    }
    progress(ImportProgress { lines: reader.line(), bytes: bytes.get() });
    let source = Path::new(name).file_name().map_or_else(|| name.to_string(), |f| f.to_string_lossy().into_owned());
    builder.finish(name, source, reader.line())
}

/// Imports the lackey output in `path` (plain or `.gz`); see [`import_reader`].
pub fn import_file(
    path: &Path,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<PageTrace, TraceError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| TraceError::Open { path: name.clone(), source })?;
    import_reader(file, &name, opts, progress)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::trace::TraceAccess;

    fn import(text: &str) -> Result<PageTrace, TraceError> {
        import_reader(text.as_bytes(), "test.lackey", &ImportOptions::default(), &mut |_| {})
    }

    fn rw(t: &PageTrace) -> Vec<(u32, bool)> {
        t.accesses().map(|a| (a.page, a.write)).collect()
    }

    #[test]
    fn parses_every_record_kind() {
        let rec = |kind, addr, size| Ok(Some(Record { kind, addr, size }));
        assert_eq!(parse_line(b"I  04016b0,3"), rec(RecordKind::Instruction, 0x04016b0, 3));
        assert_eq!(parse_line(b" L 1ffefffd40,8"), rec(RecordKind::Load, 0x1ffefffd40, 8));
        assert_eq!(parse_line(b" S 1ffefffd38,8\r"), rec(RecordKind::Store, 0x1ffefffd38, 8));
        assert_eq!(parse_line(b" M 0421ee8,4  "), rec(RecordKind::Modify, 0x0421ee8, 4));
        assert_eq!(parse_line(b" L FFFFFFFFFFFFFFF0,16"), rec(RecordKind::Load, 0xffff_ffff_ffff_fff0, 16));
        for skipped in [
            &b"==12345== Lackey, an example Valgrind tool"[..],
            b"==12345== ",
            b"--12345-- warning: something",
            b"**12345** internal error",
            b"SB 04016b0",
            b"",
            b"   ",
        ] {
            assert_eq!(parse_line(skipped), Ok(None), "{}", String::from_utf8_lossy(skipped));
        }
    }

    #[test]
    fn rejects_malformed_records() {
        for bad in [
            &b" X 0400,4"[..],
            b" L0400,4",
            b" L 0400",
            b" L 04g0,4",
            b" L ,4",
            b" L 0400,",
            b" L 0400,4x",
            b" L 0400,-4",
            b" L 11112222333344445,4",
            b" L ffffffffffffffff,8",
            b" L 0400,65537",
            b" L 0400,4294967296",
            b"hello",
            b"a,b,c",
        ] {
            assert!(parse_line(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn imports_data_accesses_as_page_reads_and_writes() {
        let text = "==1== Lackey, an example Valgrind tool\n\
                    ==1== Command: ./a.out\n\
                    I  04016b0,3\n \
                    L 0000a010,8\n \
                    S 00003008,8\n \
                    M 00003010,4\n\
                    \n \
                    L 00004000,4\n \
                    L 0000a020,8\n\
                    ==1== Counted 1 call to main()\n";
        let t = import(text).unwrap();
        // Virtual pages 3, 4, 0xa in address order become 0, 1, 2; the store and the modify of
        // page 3 collapse into one write.
        assert_eq!(rw(&t), [(2, false), (0, true), (1, false), (2, false)]);
        assert_eq!(t.footprint_pages(), 3);
        assert_eq!(t.runs(), [PageRun { first_vpage: 3, pages: 2 }, PageRun { first_vpage: 0xa, pages: 1 }]);
        assert_eq!(t.virtual_page(2), Some(0xa));
        assert_eq!(t.virtual_page(3), None);
        let c = t.counts();
        assert_eq!((c.lines, c.loads, c.stores, c.modifies, c.instructions), (10, 3, 1, 1, 1));
        assert_eq!(c.raw_accesses, 5);
        assert!(!c.instructions_included);
        assert_eq!(t.source(), "test.lackey");
    }

    /// Found writing the `lackey` fuzz target (its 10 s timeout on a crafted input): a size of up
    /// to 4 GiB was accepted, so each 15-byte line ` L 0,4294967296` became a million page
    /// accesses and a 4.5 KB file took minutes and gigabytes. Sizes are capped at [`MAX_ACCESS_SIZE`], so a trace grows linearly with its file.
    #[test]
    fn huge_access_sizes_are_not_lackey_output() {
        assert!(parse_line(b" L 0,65536").expect("the largest size").is_some());
        let err = parse_line(b" L 0,4294967296").expect_err("a 4 GiB access");
        assert!(err.contains("65536"), "{err}");
        let text = " L 0,4294967296\n".repeat(300);
        let started = std::time::Instant::now();
        let err = import(&text).expect_err("not lackey output");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(matches!(err, TraceError::NotLackey { .. } | TraceError::Malformed { line: 1, .. }), "{err}");
        // The largest accepted size touches at most 17 pages per line.
        let t = import(&" L fff,65536\n".repeat(3)).expect("import");
        assert_eq!(t.footprint_pages(), 17);
    }

    #[test]
    fn instruction_fetches_on_request() {
        let text = "I  00001000,3\n L 00002000,8\nI  00001003,2\n";
        let t = import_reader(text.as_bytes(), "x", &ImportOptions { instructions: true }, &mut |_| {}).unwrap();
        assert_eq!(rw(&t), [(0, false), (1, false), (0, false)]);
        assert!(t.counts().instructions_included);
        let err = import("I  00001000,3\n").unwrap_err();
        assert!(matches!(err, TraceError::NoAccesses { instructions: 1, .. }), "{err}");
        assert!(err.to_string().contains("--instructions"), "{err}");
    }

    #[test]
    fn an_access_across_a_page_boundary_touches_both_pages() {
        let t = import(" L 00000ffc,8\n S 00005000,1\n").unwrap();
        assert_eq!(rw(&t), [(0, false), (1, false), (2, true)]);
        assert_eq!(t.counts().raw_accesses, 3);
    }

    #[test]
    fn malformed_line_names_its_number_and_text() {
        let text = "==7== Lackey\n L 00001000,8\n S 00002000,8\n L 00003000;8\n L 00004000,8\n";
        let err = import(text).unwrap_err();
        match &err {
            TraceError::Malformed { line, text, path, .. } => {
                assert_eq!((*line, text.as_str(), path.as_str()), (4, " L 00003000;8", "test.lackey"));
            }
            e => panic!("expected Malformed, got {e}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("test.lackey line 4") && msg.contains("00003000;8"), "{msg}");
        // Long lines are cut in the message.
        let long = format!(" L 00001000,8\n L {}\n", "7".repeat(300));
        let msg = import(&long).unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains('…') && msg.len() < 400, "{msg}");
        let huge = format!(" L 00001000,8\n{}\n", "x".repeat(10_000));
        let err = import(&huge).unwrap_err();
        assert!(matches!(err, TraceError::Malformed { line: 2, .. }), "{err}");
    }

    #[test]
    fn non_lackey_input_is_rejected_early() {
        let csv = "time,page,op\n1,4096,read\n";
        let err = import(csv).unwrap_err();
        assert!(matches!(err, TraceError::NotLackey { line: 1, .. }), "{err}");
        assert!(err.to_string().contains("not valgrind lackey output"), "{err}");
        // Binary garbage without a newline: rejected after at most MAX_LINE bytes.
        let binary: Vec<u8> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1).collect();
        let binary: Vec<u8> = binary.into_iter().map(|b| if b == b'\n' { 0 } else { b }).collect();
        let err = import_reader(&binary[..], "blob", &ImportOptions::default(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, TraceError::NotLackey { line: 1, .. }), "{err}");
        // Valgrind's banner, then the program's own output: not lackey records.
        let err = import("==1== Lackey\nhello world\n L 00001000,8\n").unwrap_err();
        assert!(matches!(err, TraceError::NotLackey { line: 2, .. }), "{err}");
        let err = import("").unwrap_err();
        assert!(matches!(err, TraceError::NoAccesses { lines: 0, .. }), "{err}");
        let err = import("==1== Lackey\n==1== done\n").unwrap_err();
        assert!(matches!(err, TraceError::NoAccesses { lines: 2, .. }), "{err}");
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_input_is_detected_and_read() {
        let text = " L 00001000,8\n S 00002000,8\n L 00001008,8\n";
        let plain = import(text).unwrap();
        let gz = gzip(text.as_bytes());
        let t = import_reader(&gz[..], "dir/t.lackey.gz", &ImportOptions::default(), &mut |_| {}).unwrap();
        assert_eq!(rw(&t), rw(&plain));
        assert_eq!(t.source(), "t.lackey.gz");
        // A truncated gzip stream is an error, not a shorter trace.
        let big: String = (0..20_000).map(|i| format!(" L {:08x},8\n", i * 4096)).collect();
        let gz = gzip(big.as_bytes());
        let err = import_reader(&gz[..gz.len() / 2], "cut.gz", &ImportOptions::default(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, TraceError::Read { .. }), "{err}");
        // A malformed line inside gzip still names its line.
        let gz = gzip(b" L 00001000,8\n L zz,8\n");
        let err = import_reader(&gz[..], "bad.gz", &ImportOptions::default(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, TraceError::Malformed { line: 2, .. }), "{err}");
    }

    #[test]
    fn progress_is_reported() {
        let text: String = (0..PROGRESS_LINES * 2 + 5).map(|i| format!(" L {:08x},8\n", (i % 7) * 4096)).collect();
        let mut reports = Vec::new();
        let t = import_reader(text.as_bytes(), "p", &ImportOptions::default(), &mut |p| reports.push(p)).unwrap();
        assert_eq!(reports.len(), 3);
        assert_eq!(reports.last().unwrap().lines, PROGRESS_LINES * 2 + 5);
        assert_eq!(reports.last().unwrap().bytes, text.len() as u64);
        assert_eq!(t.footprint_pages(), 7);
    }

    #[test]
    fn dense_pages_follow_address_order() {
        let t = import(" L 7f0000001000,8\n L 00400000,8\n L 7f0000000000,8\n L 00401000,1\n").unwrap();
        let want = [3, 0, 2, 1].map(|page| TraceAccess { page, write: false });
        assert_eq!(t.accesses().collect::<Vec<_>>(), want);
        assert_eq!(t.runs().len(), 2);
    }
}
