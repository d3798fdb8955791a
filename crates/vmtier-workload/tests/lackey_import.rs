//! Importing real lackey output: a 400-line sample cut from `sort.lackey.gz` (committed under
//! `tests/data/`), and the whole recorded traces in the repository's `traces/`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use vmtier_workload::trace::{ImportOptions, PageTrace, TraceError, lackey};
use vmtier_workload::{Progress, WORDS_PER_PAGE, WorkloadConfig, WorkloadKind};

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sort-head.lackey")
}

/// A recorded trace from the repository's `traces/` directory.
fn shared_trace(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../traces").join(name);
    assert!(path.is_file(), "{} is missing from the repository", path.display());
    path
}

/// Pages touched by the sample, by the definition: every page of every record's byte range.
fn expected_pages(text: &str) -> (usize, u64) {
    let mut pages = std::collections::BTreeSet::new();
    let mut records = 0;
    for line in text.lines() {
        let (addr, size) = line[3..].split_once(',').unwrap();
        let addr = u64::from_str_radix(addr, 16).unwrap();
        let size: u64 = size.parse().unwrap();
        pages.extend((addr >> 12)..=((addr + size - 1) >> 12));
        records += 1;
    }
    (pages.len(), records)
}

#[test]
fn the_sample_imports_exactly() {
    let text = std::fs::read_to_string(sample()).unwrap();
    let (distinct, records) = expected_pages(&text);
    let t = lackey::import_file(&sample(), &ImportOptions::default(), &mut |_| {}).unwrap();
    let c = t.counts();
    assert_eq!(c.lines, 400);
    assert_eq!(c.loads + c.stores + c.modifies, records);
    assert_eq!((c.loads, c.stores, c.modifies, c.instructions), (163, 227, 10, 0));
    assert_eq!(t.footprint_pages() as usize, distinct);
    assert!(t.len() as u64 <= c.raw_accesses && c.raw_accesses >= records);
    // Writes: every store and modify survives, at most merged with a neighbour on its page.
    assert!(t.writes() > 0 && t.writes() <= c.stores + c.modifies);
    // The first record is ` S 1fff000758,8`: a write to the stack, the highest page.
    let first = t.get(0).unwrap();
    assert!(first.write);
    assert_eq!(t.virtual_page(first.page), Some(0x1fff000));
    assert_eq!(first.page, t.footprint_pages() - 1);
}

#[test]
fn the_sample_round_trips_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("sort-head.lackey.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(&std::fs::read(sample()).unwrap()).unwrap();
    enc.finish().unwrap();
    let plain = PageTrace::load(sample()).unwrap();
    let from_gz = PageTrace::load(&gz).unwrap();
    assert_eq!(plain.packed(), from_gz.packed());
    let out = dir.path().join("sort-head.vmtrace");
    let size = from_gz.save(&out).unwrap();
    assert!(size < 2000, "{size} bytes for {} accesses", from_gz.len());
    let back = PageTrace::load(&out).unwrap();
    assert_eq!(back, from_gz);
    assert_eq!(back.source(), "sort-head.lackey.gz");

    let stats = back.stats();
    assert_eq!(stats.footprint_pages, u64::from(back.footprint_pages()));
    assert_eq!(stats.reuse.cold, stats.footprint_pages);
    assert!(stats.address_span.unwrap().span_bytes >= stats.footprint_bytes);

    // Replay over a region twice the footprint, from the binary file and from the text.
    let pages = 2 * back.footprint_pages() as usize;
    for path in [out, sample()] {
        let mem: Vec<AtomicU64> = (0..pages * WORDS_PER_PAGE).map(|_| AtomicU64::new(0)).collect();
        let cfg = WorkloadConfig { kind: WorkloadKind::Trace { path }, threads: 2, ..WorkloadConfig::default() };
        let r = vmtier_workload::run(&mem, &cfg, &Progress::new()).unwrap();
        assert!(r.verified);
        assert_eq!(r.accesses, back.len() as u64);
        assert_eq!(r.pages, u64::from(back.footprint_pages()));
    }
}

#[test]
fn a_damaged_sample_names_the_line() {
    let mut text = std::fs::read_to_string(sample()).unwrap();
    let at = text.match_indices('\n').nth(122).unwrap().0; // end of line 123
    text.insert_str(at + 1, " L 04032e40;8\n");
    let err = lackey::import_reader(text.as_bytes(), "damaged", &ImportOptions::default(), &mut |_| {}).unwrap_err();
    assert!(matches!(err, TraceError::Malformed { line: 124, .. }), "{err}");
}

#[test]
fn the_recorded_sort_trace_imports() {
    let path = shared_trace("sort.lackey.gz");
    let started = std::time::Instant::now();
    let t = PageTrace::load(&path).unwrap();
    let c = t.counts();
    // traces/README.md: 147,384 lines kept, 3,191 distinct pages.
    assert_eq!(c.lines, 147_384);
    assert_eq!(c.loads + c.stores + c.modifies, 147_384);
    assert!((3191..3300).contains(&t.footprint_pages()), "footprint {}", t.footprint_pages());
    let bytes = vmtier_workload::trace::format::encode(&t);
    assert_eq!(vmtier_workload::trace::format::decode(&bytes, "sort").unwrap(), t);
    let s = t.stats();
    assert!(s.reuse.median_pages.is_some() && s.reuse.lru_hit_ratio.len() == 4);
    eprintln!(
        "sort.lackey.gz: {} lines, {} accesses, {} pages, {} bytes encoded, {:.2} s",
        c.lines,
        t.len(),
        t.footprint_pages(),
        bytes.len(),
        started.elapsed().as_secs_f64()
    );
}
