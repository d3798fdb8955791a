//! Lackey traces (`vmtier_workload::trace::lackey`): text from valgrind, or any file a user
//! passes to `vmtier trace import`, plain or gzip-compressed.
//!
//! Input: a mode byte, then
//! * mode 0: lines for `parse_line`, each checked on its own;
//! * mode 1: a whole file for `import_reader`, imported once as it is and once gzip-compressed
//!   by the target (the `.gz` path), with instruction fetches counted or not (bit 7 of mode);
//! * mode 2: bytes after a gzip magic (a damaged `.gz` file).
//!
//! Checks: no panic; a parsed record's pages do not overflow; the plain and gzip imports of the
//! same text give the same result (the same trace, or both an error); an imported trace has at
//! most 3 accesses per input byte (no line expands into a flood of accesses), survives the
//! binary trace format (`format::encode`, then `format::decode`) unchanged, and its counts agree
//! with its accesses.
#![no_main]

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;
use vmtier_workload::trace::format;
use vmtier_workload::trace::lackey::{self, ImportOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let opts = ImportOptions { instructions: mode & 0x80 != 0 };
    match mode % 3 {
        0 => {
            for line in rest.split(|&b| b == b'\n') {
                if let Ok(Some(r)) = lackey::parse_line(line) {
                    let (first, last) = r.pages().expect("parse_line returned a record whose pages overflow");
                    assert!(first <= last);
                }
            }
        }
        1 => {
            let plain = lackey::import_reader(rest, "fuzz.lackey", &opts, &mut |_| {});
            let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
            gz.write_all(rest).expect("compress in memory");
            let gz = gz.finish().expect("compress in memory");
            let zipped = lackey::import_reader(gz.as_slice(), "fuzz.lackey", &opts, &mut |_| {});
            match (&plain, &zipped) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "plain and gzip imports differ"),
                (Err(_), Err(_)) => {}
                _ => panic!("plain import {plain:?}, gzip import {zipped:?}"),
            }
            if let Ok(t) = plain {
                // A line of at least 6 bytes touches at most 17 pages (`MAX_ACCESS_SIZE`): the
                // trace grows linearly with its file, never by a factor a header field decides.
                assert!(t.len() <= 3 * rest.len(), "{} accesses from {} bytes", t.len(), rest.len());
                assert_eq!(t.writes(), t.accesses().filter(|a| a.write).count() as u64);
                assert!(t.accesses().all(|a| a.page < t.footprint_pages()));
                let bytes = format::encode(&t);
                let back = format::decode(&bytes, "fuzz.trace").expect("an encoded trace must decode");
                assert_eq!(back, t, "trace changed through the binary format");
            }
        }
        _ => {
            let mut bytes = vec![0x1f, 0x8b];
            bytes.extend_from_slice(rest);
            let _ = lackey::import_reader(bytes.as_slice(), "fuzz.lackey.gz", &opts, &mut |_| {});
        }
    }
});
