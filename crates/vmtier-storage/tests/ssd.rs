//! Behaviour tests of the tier-2 page store on a real (ext4) directory with O_DIRECT.

use std::collections::{BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use proptest::prelude::*;
use vmtier_storage::ssd::{SlotId, SsdConfig, SsdError, SsdStore};
use vmtier_uffd::{AlignedBuf, PAGE_SIZE};

fn store(slots_per_file: u32) -> (tempfile::TempDir, SsdStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = SsdConfig::new(dir.path().join("ssd"));
    cfg.slots_per_file = slots_per_file;
    let s = SsdStore::open(cfg).expect("open tier 2 (needs a file system with O_DIRECT)");
    (dir, s)
}

fn page(seed: u64) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(PAGE_SIZE);
    for (i, chunk) in b.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64).to_le_bytes());
    }
    b
}

#[test]
fn write_read_round_trip() {
    let (_d, s) = store(16);
    let mut slots = Vec::new();
    for i in 0..40 {
        let slot = s.alloc().expect("alloc");
        let crc = s.write(slot, &page(i)).expect("write");
        slots.push((slot, crc, i));
    }
    assert_eq!(s.stats().expect("stats").files, 3);
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    for (slot, crc, i) in slots {
        s.read(slot, crc, &mut out).expect("read");
        assert_eq!(&out[..], &page(i)[..]);
    }
}

#[test]
fn flipped_byte_is_detected_as_corrupt() {
    let (_d, s) = store(16);
    let slots: Vec<_> = (0..3).map(|_| s.alloc().expect("alloc")).collect();
    let crcs: Vec<_> = slots.iter().map(|&sl| s.write(sl, &page(u64::from(sl.0))).expect("write")).collect();
    let (path, offset) = s.file_path(slots[1]);
    let f = OpenOptions::new().read(true).write(true).open(&path).expect("open slot file");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset + 100).expect("read byte");
    b[0] ^= 0x40;
    f.write_all_at(&b, offset + 100).expect("flip byte");
    f.sync_all().expect("sync");
    drop(f);

    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    match s.read(slots[1], crcs[1], &mut out) {
        Err(SsdError::Corrupt { slot, file, expected, actual }) => {
            assert_eq!(slot, slots[1]);
            assert_eq!(file, path);
            assert_eq!(expected, crcs[1]);
            assert_ne!(actual, expected);
        }
        other => panic!("corrupt slot must be an error, got {other:?}"),
    }
    // Neighbours are intact.
    s.read(slots[0], crcs[0], &mut out).expect("slot 0");
    s.read(slots[2], crcs[2], &mut out).expect("slot 2");
    // A wrong expected crc is also never Ok.
    assert!(matches!(s.read(slots[0], crcs[0] ^ 1, &mut out), Err(SsdError::Corrupt { .. })));
}

#[test]
fn free_slots_are_reused_lowest_first() {
    let (_d, s) = store(8);
    let slots: Vec<_> = (0..20).map(|_| s.alloc().expect("alloc")).collect();
    assert_eq!(slots, (0..20).map(SlotId).collect::<Vec<_>>());
    for i in [17, 3, 9] {
        s.free(SlotId(i)).expect("free");
    }
    assert_eq!(s.alloc().expect("alloc"), SlotId(3));
    assert_eq!(s.alloc().expect("alloc"), SlotId(9));
    assert_eq!(s.alloc().expect("alloc"), SlotId(17));
    assert_eq!(s.alloc().expect("alloc"), SlotId(20));
    let st = s.stats().expect("stats");
    assert_eq!(st.live_slots, 21);
    assert_eq!(st.free_slots, 3);
    assert_eq!(st.file_bytes, 3 * 8 * PAGE_SIZE as u64);
}

#[test]
fn compaction_moves_and_shrink_return_space() {
    let spf = 64u32;
    let (_d, s) = store(spf);
    let mut pages: HashMap<u64, (SlotId, u32)> = HashMap::new();
    for p in 0..u64::from(4 * spf) {
        let slot = s.alloc().expect("alloc");
        pages.insert(p, (slot, s.write(slot, &page(p)).expect("write")));
    }
    let full = s.stats().expect("stats");
    assert_eq!(full.files, 4);
    assert!(full.disk_bytes_allocated >= 4 * u64::from(spf) * PAGE_SIZE as u64);
    // Nothing to do while everything is live.
    assert!(s.compaction_plan(1000).is_empty());

    // Keep every 8th page: each file ends up 1/8 live.
    let keep = |p: u64| p.is_multiple_of(8);
    for p in 0..u64::from(4 * spf) {
        if !keep(p) {
            let (slot, _) = pages.remove(&p).expect("page");
            s.free(slot).expect("free");
        }
    }
    let mut moves = 0;
    loop {
        let plan = s.compaction_plan(10);
        if plan.is_empty() {
            break;
        }
        assert!(plan.len() <= 10);
        for old in plan {
            let (&p, &(_, crc)) = pages.iter().find(|(_, (sl, _))| *sl == old).expect("live page");
            let new = s.alloc().expect("alloc");
            assert!(new < old, "moves go down: {new} from {old}");
            let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
            s.read(old, crc, &mut buf).expect("read old");
            let crc2 = s.write(new, &buf).expect("write new");
            assert_eq!(crc, crc2);
            pages.insert(p, (new, crc2));
            s.free(old).expect("free old");
            moves += 1;
        }
        assert!(moves < 1000, "compaction does not converge");
    }
    assert!(moves > 0);
    let before = s.stats().expect("stats");
    let released = s.shrink().expect("shrink");
    let after = s.stats().expect("stats");
    assert_eq!(after.files, 1, "trailing files deleted: {after:?}");
    assert!(!s.file_path(SlotId(spf)).0.exists());
    assert!(released > 0);
    assert_eq!(before.disk_bytes_allocated - after.disk_bytes_allocated, released);
    assert!(after.disk_bytes_allocated <= full.disk_bytes_allocated / 4, "{after:?} vs {full:?}");
    // Every page is still readable where the page table says it is.
    let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
    for (&p, &(slot, crc)) in &pages {
        s.read(slot, crc, &mut buf).expect("read after compaction");
        assert_eq!(&buf[..], &page(p)[..]);
    }
    // Punched holes and free slots stay usable.
    let slot = s.alloc().expect("alloc after shrink");
    let crc = s.write(slot, &page(999)).expect("write");
    s.read(slot, crc, &mut buf).expect("read");
    assert_eq!(s.shrink().expect("second shrink"), 0);
}

#[test]
fn concurrent_readers_writers_and_shrink() {
    let (_d, s) = store(32);
    let s = Arc::new(s);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut mine: Vec<(SlotId, u32, u64)> = Vec::new();
                let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
                for i in 0..200u64 {
                    let seed = t * 1_000_000 + i;
                    let slot = s.alloc().expect("alloc");
                    mine.push((slot, s.write(slot, &page(seed)).expect("write"), seed));
                    if i % 3 == 0 && mine.len() > 1 {
                        let (slot, _, _) = mine.swap_remove((i as usize * 7) % mine.len());
                        s.free(slot).expect("free");
                    }
                    let (slot, crc, seed) = mine[(i as usize * 13) % mine.len()];
                    s.read(slot, crc, &mut buf).expect("read");
                    assert_eq!(&buf[..], &page(seed)[..]);
                }
                mine
            })
        })
        .collect();
    let shrinker = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            for _ in 0..20 {
                s.shrink().expect("shrink");
                std::thread::yield_now();
            }
        })
    };
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("thread"));
    }
    shrinker.join().expect("shrinker");
    let distinct: BTreeSet<_> = all.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(distinct.len(), all.len(), "no slot handed out twice");
    let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
    for (slot, crc, seed) in all {
        s.read(slot, crc, &mut buf).expect("final read");
        assert_eq!(&buf[..], &page(seed)[..]);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Alloc,
    Write(usize, u64),
    Free(usize),
    Read(usize),
    Shrink,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Alloc),
        4 => (any::<usize>(), any::<u64>()).prop_map(|(i, s)| Op::Write(i, s)),
        3 => any::<usize>().prop_map(Op::Free),
        4 => any::<usize>().prop_map(Op::Read),
        1 => Just(Op::Shrink),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The store behaves like a map from slot to page: allocation returns the lowest unused id,
    /// reads return what was last written, shrinking never loses a live page.
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        let (_d, s) = store(8);
        // slot -> last written (seed, crc)
        let mut model: HashMap<SlotId, Option<(u64, u32)>> = HashMap::new();
        let mut order: Vec<SlotId> = Vec::new();
        let mut buf = AlignedBuf::zeroed(PAGE_SIZE);
        for op in ops {
            match op {
                Op::Alloc => {
                    let slot = s.alloc().expect("alloc");
                    let lowest = (0..).map(SlotId).find(|id| !model.contains_key(id)).expect("id");
                    prop_assert_eq!(slot, lowest);
                    model.insert(slot, None);
                    order.push(slot);
                }
                Op::Write(i, seed) if !order.is_empty() => {
                    let slot = order[i % order.len()];
                    let crc = s.write(slot, &page(seed)).expect("write");
                    model.insert(slot, Some((seed, crc)));
                }
                Op::Free(i) if !order.is_empty() => {
                    let slot = order.swap_remove(i % order.len());
                    model.remove(&slot);
                    s.free(slot).expect("free");
                }
                Op::Read(i) if !order.is_empty() => {
                    let slot = order[i % order.len()];
                    if let Some(Some((seed, crc))) = model.get(&slot) {
                        s.read(slot, *crc, &mut buf).expect("read");
                        prop_assert_eq!(&buf[..], &page(*seed)[..]);
                    }
                }
                Op::Shrink => {
                    s.shrink().expect("shrink");
                }
                _ => {}
            }
            let st = s.stats().expect("stats");
            prop_assert_eq!(st.live_slots, model.len() as u64);
        }
        for (slot, v) in &model {
            if let Some((seed, crc)) = v {
                s.read(*slot, *crc, &mut buf).expect("final read");
                prop_assert_eq!(&buf[..], &page(*seed)[..]);
            }
        }
    }
}

#[test]
fn write_many_coalesces_runs_across_files() {
    // 4 slots per file: a batch of 10 spans three files and must split its runs at file ends.
    let (_dir, s) = store(4);
    let slots = s.alloc_many(10).unwrap();
    assert_eq!(slots, (0..10).map(SlotId).collect::<Vec<_>>());
    let mut data = AlignedBuf::zeroed(10 * PAGE_SIZE);
    for (i, chunk) in data.chunks_exact_mut(PAGE_SIZE).enumerate() {
        chunk.copy_from_slice(&page(100 + i as u64));
    }
    let crcs = s.write_many(&slots, &data).unwrap();
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    for (i, (&slot, &crc)) in slots.iter().zip(&crcs).enumerate() {
        s.read(slot, crc, &mut out).unwrap();
        assert_eq!(&out[..], &page(100 + i as u64)[..], "slot {slot:?}");
    }
    // A length that does not match the slots is refused, not half-written.
    assert!(s.write_many(&slots, &data[..PAGE_SIZE]).is_err());
}

#[test]
fn read_run_checks_every_page() {
    let (_dir, s) = store(8);
    let slots = s.alloc_many(4).unwrap();
    let mut data = AlignedBuf::zeroed(4 * PAGE_SIZE);
    for (i, chunk) in data.chunks_exact_mut(PAGE_SIZE).enumerate() {
        chunk.copy_from_slice(&page(7 + i as u64));
    }
    let crcs = s.write_many(&slots, &data).unwrap();
    let mut out = AlignedBuf::zeroed(4 * PAGE_SIZE);
    s.read_run(slots[0], &crcs, &mut out).unwrap();
    assert_eq!(&out[..], &data[..]);
    // One wrong checksum in the run fails the whole read, naming that slot.
    let mut bad = crcs.clone();
    bad[2] ^= 1;
    match s.read_run(slots[0], &bad, &mut out) {
        Err(SsdError::Corrupt { slot, .. }) => assert_eq!(slot, slots[2]),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A run may not cross a file boundary.
    assert!(s.read_run(SlotId(6), &crcs, &mut out).is_err());
}

#[test]
fn read_span_checks_only_the_wanted_pages() {
    let (_dir, s) = store(8);
    let slots = s.alloc_many(4).unwrap();
    let mut data = AlignedBuf::zeroed(4 * PAGE_SIZE);
    for (i, chunk) in data.chunks_exact_mut(PAGE_SIZE).enumerate() {
        chunk.copy_from_slice(&page(20 + i as u64));
    }
    let crcs = s.write_many(&slots, &data).unwrap();
    // Slots 1 and 2 lie between the wanted ones: read, not checked (a wrong crc there is fine).
    let wanted = [Some(crcs[0]), None, None, Some(crcs[3])];
    let mut out = AlignedBuf::zeroed(4 * PAGE_SIZE);
    s.read_span(slots[0], &wanted, &mut out).unwrap();
    assert_eq!(&out[..PAGE_SIZE], &data[..PAGE_SIZE]);
    assert_eq!(&out[3 * PAGE_SIZE..], &data[3 * PAGE_SIZE..]);
    // A wanted page with the wrong checksum fails the read, naming its slot.
    let bad = [Some(crcs[0]), None, None, Some(crcs[3] ^ 1)];
    match s.read_span(slots[0], &bad, &mut out) {
        Err(SsdError::Corrupt { slot, .. }) => assert_eq!(slot, slots[3]),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// A secondary host reads the primary's store without disturbing it, including slot files the
/// primary adds after the reader opened, and is refused any write.
#[test]
fn reader_sees_the_owners_pages_and_cannot_write() {
    let (_d, s) = store(4);
    let first: Vec<(SlotId, u32)> = (0..3)
        .map(|i| {
            let slot = s.alloc().expect("alloc");
            (slot, s.write(slot, &page(i)).expect("write"))
        })
        .collect();
    let reader = SsdStore::open_reader(s.config().clone()).expect("open reader");
    // The owner grows to a third file after the reader opened.
    let later: Vec<(SlotId, u32)> = (3..10)
        .map(|i| {
            let slot = s.alloc().expect("alloc");
            (slot, s.write(slot, &page(i)).expect("write"))
        })
        .collect();
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    for (i, (slot, crc)) in first.iter().chain(&later).enumerate() {
        reader.read(*slot, *crc, &mut out).expect("reader read");
        assert_eq!(&out[..], &page(i as u64)[..]);
    }
    assert!(matches!(reader.read(first[0].0, first[0].1 ^ 1, &mut out), Err(SsdError::Corrupt { .. })));
    assert!(reader.alloc().is_err(), "a reader must not allocate");
    assert!(reader.write(first[0].0, &page(0)).is_err(), "a reader must not write");
    // The reader left the owner's files alone.
    s.read(first[0].0, first[0].1, &mut out).expect("owner read");
}

/// The owner deletes a trailing empty file (`shrink`) and creates it again when it grows: a
/// reader that had the old file open must read the new one, not the deleted file's stale bytes.
#[test]
fn reader_follows_a_slot_file_the_owner_deleted_and_recreated() {
    let (_d, s) = store(4);
    for i in 0..4 {
        let slot = s.alloc().expect("alloc");
        s.write(slot, &page(i)).expect("write");
    }
    let slot = s.alloc().expect("alloc in a second file");
    assert_eq!(slot.0, 4);
    let crc = s.write(slot, &page(100)).expect("write");
    let reader = SsdStore::open_reader(s.config().clone()).expect("open reader");
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    reader.read(slot, crc, &mut out).expect("reader read");
    // The owner empties the second file, deletes it, then grows into a new one.
    s.free(slot).expect("free");
    s.shrink().expect("shrink");
    let again = s.alloc().expect("alloc again");
    assert_eq!(again, slot, "the recreated file starts at the same slot");
    let crc2 = s.write(again, &page(200)).expect("write");
    reader.read(again, crc2, &mut out).expect("the reader reads the recreated file");
    assert_eq!(&out[..], &page(200)[..]);
    let mut span = AlignedBuf::zeroed(PAGE_SIZE);
    reader.read_span(again, &[Some(crc2)], &mut span).expect("read_span too");
}
