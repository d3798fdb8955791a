//! Behaviour tests of tier 3, written once ([`suite`]) and run against a local directory and
//! against a real S3-compatible server (`s3s-fs`).
//!
//! The S3 run needs the `s3s-fs` binary: `scripts/s3-test-server.sh install`, or point
//! `VMTIER_S3S_FS` at it. Set `VMTIER_SKIP_S3=1` to skip the S3 run.

#[path = "common/s3.rs"]
mod s3;

use std::collections::HashMap;

use vmtier_storage::object::{ObjectConfig, ObjectError, ObjectTier, SegmentLoc};
use vmtier_storage::segment;
use vmtier_uffd::PAGE_SIZE;

use crate::s3::S3Server;

fn page(seed: u64) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_SIZE];
    for (i, chunk) in b.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64).to_le_bytes());
    }
    b
}

/// Writes pages `pages` into one segment and records them in `model` (page -> (loc, crc)).
fn write(tier: &ObjectTier, pages: &[u64], model: &mut HashMap<u64, (SegmentLoc, u32)>) {
    let data: Vec<Vec<u8>> = pages.iter().map(|&p| page(p)).collect();
    let refs: Vec<(u64, &[u8])> = pages.iter().zip(&data).map(|(&p, d)| (p, d.as_slice())).collect();
    let locs = tier.write_segment(&refs).expect("write_segment");
    assert_eq!(locs.len(), pages.len());
    for (&p, (loc, crc)) in pages.iter().zip(locs) {
        assert_eq!(crc, crc32c::crc32c(&page(p)));
        model.insert(p, (loc, crc));
    }
}

fn check_all(tier: &ObjectTier, model: &HashMap<u64, (SegmentLoc, u32)>) {
    let mut out = vec![0u8; PAGE_SIZE];
    for (&p, &(loc, crc)) in model {
        tier.read(loc, crc, &mut out).unwrap_or_else(|e| panic!("read page {p} at {loc:?}: {e}"));
        assert_eq!(out, page(p), "page {p}");
    }
}

/// The tier-3 behaviour suite. `open` opens a fresh tier on the same location each call.
fn suite(open: &dyn Fn(ObjectConfig) -> ObjectTier, base: ObjectConfig) {
    let mut cfg = base.clone();
    cfg.segment_bytes = 16 * PAGE_SIZE;
    let tier = open(cfg.clone());
    assert_eq!(tier.stats().segments, 0);
    let mut model = HashMap::new();

    // Round trip, single and batched reads.
    write(&tier, &(100..110).collect::<Vec<_>>(), &mut model);
    write(&tier, &(200..216).collect::<Vec<_>>(), &mut model);
    check_all(&tier, &model);
    let reqs: Vec<(SegmentLoc, u32)> = [215u64, 100, 101, 203, 109].iter().map(|p| model[p]).collect();
    let mut out = vec![0u8; reqs.len() * PAGE_SIZE];
    tier.read_many(&reqs, &mut out).expect("read_many");
    for (i, p) in [215u64, 100, 101, 203, 109].iter().enumerate() {
        assert_eq!(&out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], page(*p).as_slice());
    }
    let st = tier.stats();
    assert_eq!((st.segments, st.live_pages, st.dead_pages), (2, 26, 0));
    assert_eq!(st.bytes_stored, (segment::encoded_len(10) + segment::encoded_len(16)) as u64);

    // Too many pages for one segment.
    let big: Vec<Vec<u8>> = (0..17).map(page).collect();
    let refs: Vec<(u64, &[u8])> = big.iter().enumerate().map(|(i, d)| (i as u64, d.as_slice())).collect();
    assert!(matches!(tier.write_segment(&refs), Err(ObjectError::TooManyPages { pages: 17, max: 16 })));

    // The stored object decodes; every truncation of it is rejected.
    let (loc0, _) = model[&100];
    let key = tier.segment_key(loc0.segment);
    let raw = tier.get_raw(&key).expect("get_raw");
    let index = segment::decode_index(&raw).expect("decode stored segment");
    assert_eq!(index.iter().map(|e| e.page).collect::<Vec<_>>(), (100..110).collect::<Vec<_>>());
    for cut in [0, 1, 100, PAGE_SIZE, raw.len() / 2, raw.len() - 21, raw.len() - 1] {
        assert!(segment::decode_index(&raw[..cut]).is_err(), "truncated to {cut}");
    }

    // Corruption: flip one byte of page 103 inside the object.
    let (loc, crc) = model[&103];
    let mut bad = raw.to_vec();
    bad[segment::page_offset(loc.index) as usize + 17] ^= 0x01;
    tier.put_raw(&key, bad).expect("put_raw");
    let mut one = vec![0u8; PAGE_SIZE];
    match tier.read(loc, crc, &mut one) {
        Err(ObjectError::Corrupt { key: k, index, expected, actual }) => {
            assert_eq!(k, key.to_string());
            assert_eq!(index, loc.index);
            assert_eq!(expected, crc);
            assert_ne!(actual, crc);
        }
        other => panic!("corrupt page must be an error, got {other:?}"),
    }
    assert!(matches!(tier.read_many(&[(loc, crc)], &mut one), Err(ObjectError::Corrupt { .. })));
    let (l2, c2) = model[&104];
    tier.read(l2, c2, &mut one).expect("neighbour page intact");
    tier.put_raw(&key, raw.to_vec()).expect("restore");

    // Compaction: a third segment, then release most pages of the first two.
    write(&tier, &(300..316).collect::<Vec<_>>(), &mut model);
    let third = model[&300].0.segment;
    for p in (100..108).chain(200..212) {
        let (loc, _) = model.remove(&p).expect("page");
        tier.release(loc).expect("release");
    }
    assert!(matches!(tier.release(loc0), Err(ObjectError::Release { .. })), "double release");
    let st = tier.stats();
    assert_eq!((st.live_pages, st.dead_pages), (2 + 4 + 16, 8 + 12));
    let cands = tier.compaction_candidates();
    assert!(!cands.contains(&third));
    assert_eq!(cands.len(), 2, "{cands:?}");
    let before = tier.stats();
    for seg in cands {
        assert!(matches!(tier.delete_segment(seg), Err(ObjectError::DeleteLive { .. })));
        let live = tier.live_pages(seg);
        assert!(!live.is_empty());
        // Read the live pages, rewrite them into a new segment, release the old locations.
        let mut data = Vec::new();
        for &(index, p) in &live {
            let (loc, crc) = model[&p];
            assert_eq!(loc, SegmentLoc { segment: seg, index });
            let mut buf = vec![0u8; PAGE_SIZE];
            tier.read(loc, crc, &mut buf).expect("read live page");
            data.push((p, buf));
        }
        let refs: Vec<(u64, &[u8])> = data.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        let new = tier.write_segment(&refs).expect("rewrite");
        for ((p, _), (loc, crc)) in data.iter().zip(new) {
            let (old, _) = model.insert(*p, (loc, crc)).expect("was live");
            tier.release(old).expect("release old");
        }
        tier.delete_segment(seg).expect("delete compacted segment");
        assert!(tier.get_raw(&tier.segment_key(seg)).is_err(), "segment {seg} gone");
    }
    check_all(&tier, &model);
    let after = tier.stats();
    assert_eq!(after.dead_pages, 0);
    assert_eq!(after.live_pages, before.live_pages);
    assert!(after.bytes_stored < before.bytes_stored, "{after:?} vs {before:?}");

    // Fully released segments are garbage-collected.
    for p in 300..316 {
        let (loc, _) = model.remove(&p).expect("page");
        tier.release(loc).expect("release");
    }
    assert_eq!(tier.collect_garbage().expect("gc"), 1);
    assert!(tier.get_raw(&tier.segment_key(third)).is_err());
    check_all(&tier, &model);
    assert_eq!(tier.stats().segments, 2);

    // A new tier on the same location starts empty and removes the old segments.
    let keys: Vec<_> = model.values().map(|(loc, _)| tier.segment_key(loc.segment)).collect();
    drop(tier);
    let tier = open(cfg);
    assert_eq!(tier.stats().segments, 0);
    for k in keys {
        assert!(tier.get_raw(&k).is_err(), "{k} removed on open");
    }
}

#[test]
fn object_tier_on_local_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("tier3").display());
    suite(&|cfg| ObjectTier::open(cfg).expect("open local tier"), ObjectConfig::new(url));
    // Plain paths work too, and unrelated files survive `open`.
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).expect("mkdir");
    std::fs::write(plain.join("notes.txt"), b"keep").expect("write");
    let tier = ObjectTier::open(ObjectConfig::new(plain.to_string_lossy())).expect("open");
    let p = page(1);
    let locs = tier.write_segment(&[(1, &p)]).expect("write");
    assert!(plain.join("seg-00000000.vts").exists());
    assert!(plain.join("notes.txt").exists());
    let mut out = vec![0u8; PAGE_SIZE];
    tier.read(locs[0].0, locs[0].1, &mut out).expect("read");
}

#[test]
fn object_tier_on_s3_server() {
    let Some(server) = S3Server::start_or_skip("object_tier_on_s3_server") else { return };
    suite(&|cfg| ObjectTier::open(cfg).expect("open S3 tier"), server.config("vm-0/tier3"));
    drop(server);
}
