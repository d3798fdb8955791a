//! Storage faults under the real tier code: EIO on read and write, ENOSPC (injected and from a
//! really full file system), torn writes, latency spikes and bit flips, in tier 2 (through
//! `FaultyIo`) and tier 3 (through `FaultyObjectStore`). In every case the caller gets a clear
//! error or the right bytes — never wrong bytes as `Ok`.

#[path = "common/s3.rs"]
mod s3;

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmtier_storage::fault::{FaultKind, FaultPlan, Op, Rule, SmallTmpfs};
use vmtier_storage::object::{ObjectConfig, ObjectError, ObjectTier};
use vmtier_storage::ssd::{FaultyIo, SlotId, SsdConfig, SsdError, SsdStore};
use vmtier_uffd::{AlignedBuf, PAGE_SIZE};

fn page(seed: u64) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(PAGE_SIZE);
    for (i, chunk) in b.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64).to_le_bytes());
    }
    b
}

/// A tier-2 store on ext4 (O_DIRECT) whose I/O goes through a `FaultyIo` with `plan`.
fn faulty_ssd(plan: &Arc<FaultPlan>) -> (tempfile::TempDir, SsdStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = SsdConfig::new(dir.path().join("ssd"));
    cfg.slots_per_file = 16;
    let s = SsdStore::open_with_io(cfg, Arc::new(FaultyIo::new(Arc::clone(plan)))).expect("open tier 2");
    (dir, s)
}

fn errno(e: &SsdError) -> Option<i32> {
    match e {
        SsdError::Write { source, .. } | SsdError::Read { source, .. } | SsdError::Sync { source, .. } => {
            source.raw_os_error()
        }
        _ => None,
    }
}

#[test]
fn tier2_eio_on_write_is_an_error_and_the_store_keeps_working() {
    let plan = Arc::new(FaultPlan::new());
    let (_d, s) = faulty_ssd(&plan);
    plan.add(Rule::new(FaultKind::Eio).on(Op::Write).nth(2));
    let a = s.alloc().expect("alloc");
    let crc_a = s.write(a, &page(1)).expect("first write");
    let b = s.alloc().expect("alloc");
    let e = s.write(b, &page(2)).expect_err("second write fails");
    assert!(matches!(e, SsdError::Write { slot, .. } if slot == b), "{e}");
    assert_eq!(errno(&e), Some(libc::EIO));
    assert!(e.to_string().contains("cannot write slot"), "{e}");
    s.free(b).expect("the caller frees the slot it could not write");
    // The store keeps working, and the earlier page is intact.
    let c = s.alloc().expect("alloc");
    let crc_c = s.write(c, &page(3)).expect("third write");
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    s.read(a, crc_a, &mut out).expect("read a");
    assert_eq!(&out[..], &page(1)[..]);
    s.read(c, crc_c, &mut out).expect("read c");
    assert_eq!(&out[..], &page(3)[..]);
    assert_eq!(plan.injected(), 1);
}

#[test]
fn tier2_eio_on_read_is_an_error_then_a_retry_reads_the_right_bytes() {
    let plan = Arc::new(FaultPlan::new());
    let (_d, s) = faulty_ssd(&plan);
    let a = s.alloc().expect("alloc");
    let crc = s.write(a, &page(7)).expect("write");
    plan.add(Rule::new(FaultKind::Eio).on(Op::Read).times(2));
    let mut out = page(99); // stale bytes in the buffer must not pass for the page
    for _ in 0..2 {
        let e = s.read(a, crc, &mut out).expect_err("read fails");
        assert!(matches!(e, SsdError::Read { .. }), "{e}");
        assert_eq!(errno(&e), Some(libc::EIO));
    }
    s.read(a, crc, &mut out).expect("third read: the fault is gone");
    assert_eq!(&out[..], &page(7)[..]);
    // read_run and read_span too.
    plan.add(Rule::new(FaultKind::Eio).on(Op::Read).nth(1));
    let b = s.alloc().expect("alloc");
    let crc_b = s.write(b, &page(8)).expect("write");
    assert_eq!(b, SlotId(a.0 + 1));
    let mut two = AlignedBuf::zeroed(2 * PAGE_SIZE);
    assert!(matches!(s.read_run(a, &[crc, crc_b], &mut two), Err(SsdError::Read { .. })));
    s.read_run(a, &[crc, crc_b], &mut two).expect("retry");
    assert_eq!(&two[PAGE_SIZE..], &page(8)[..]);
}

#[test]
fn tier2_enospc_and_torn_write_never_pass_for_the_page() {
    let plan = Arc::new(FaultPlan::new());
    let (_d, s) = faulty_ssd(&plan);
    let a = s.alloc().expect("alloc");
    let crc_old = s.write(a, &page(1)).expect("write");
    // ENOSPC: nothing written; the old content is still what its checksum says.
    plan.add(Rule::new(FaultKind::Enospc).on(Op::Write).nth(1));
    let e = s.write(a, &page(2)).expect_err("ENOSPC");
    assert_eq!(errno(&e), Some(libc::ENOSPC));
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    s.read(a, crc_old, &mut out).expect("old content intact");
    assert_eq!(&out[..], &page(1)[..]);
    // A torn overwrite: half the new page landed. The caller got an error (no checksum), and
    // the slot no longer matches the old checksum: a read is Corrupt, never the mixed bytes.
    plan.add(Rule::new(FaultKind::ShortWrite).on(Op::Write).nth(1));
    let e = s.write(a, &page(2)).expect_err("torn write");
    assert_eq!(errno(&e), Some(libc::ENOSPC));
    let e = s.read(a, crc_old, &mut out).expect_err("torn slot");
    assert!(matches!(e, SsdError::Corrupt { .. }), "{e}");
    // Neither checksum matches the torn slot.
    let crc_new = crc32c::crc32c(&page(2));
    assert!(matches!(s.read(a, crc_new, &mut out), Err(SsdError::Corrupt { .. })));
    // write_many: a torn multi-page write is an error too.
    plan.add(Rule::new(FaultKind::ShortWrite).on(Op::Write).nth(1));
    let slots = s.alloc_many(3).expect("alloc");
    let mut data = AlignedBuf::zeroed(3 * PAGE_SIZE);
    for i in 0..3 {
        data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(&page(10 + i as u64));
    }
    assert!(matches!(s.write_many(&slots, &data), Err(SsdError::Write { .. })));
}

#[test]
fn tier2_bit_flips_are_caught_by_the_checksum() {
    let plan = Arc::new(FaultPlan::new());
    let (_d, s) = faulty_ssd(&plan);
    // Flipped on the way to the device: the write "succeeds", the stored copy is damaged.
    plan.add(Rule::new(FaultKind::FlipBit).on(Op::Write).nth(1));
    let a = s.alloc().expect("alloc");
    let crc = s.write(a, &page(5)).expect("write (damage unnoticed)");
    assert_eq!(crc, crc32c::crc32c(&page(5)), "the checksum is of the page, not of the damaged copy");
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    for _ in 0..2 {
        let e = s.read(a, crc, &mut out).expect_err("damaged copy");
        assert!(matches!(e, SsdError::Corrupt { slot, .. } if slot == a), "{e}");
        assert!(e.to_string().contains("is corrupt"), "{e}");
    }
    // Flipped on the way back (a transient read error): this read fails, the next is right.
    let b = s.alloc().expect("alloc");
    let crc_b = s.write(b, &page(6)).expect("write");
    plan.add(Rule::new(FaultKind::FlipBit).on(Op::Read).nth(1));
    assert!(matches!(s.read(b, crc_b, &mut out), Err(SsdError::Corrupt { .. })));
    s.read(b, crc_b, &mut out).expect("clean read");
    assert_eq!(&out[..], &page(6)[..]);
    // Many random flips on reads: every read is either the page or Corrupt.
    plan.add(Rule::new(FaultKind::FlipBit).on(Op::Read).probability(0.5, 42));
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..200 {
        match s.read(b, crc_b, &mut out) {
            Ok(()) => {
                assert_eq!(&out[..], &page(6)[..]);
                ok += 1;
            }
            Err(SsdError::Corrupt { .. }) => bad += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(ok > 50 && bad > 50, "{ok} clean, {bad} corrupt");
}

#[test]
fn tier2_sync_error_and_latency_spike() {
    let plan = Arc::new(FaultPlan::new());
    let (_d, s) = faulty_ssd(&plan);
    let a = s.alloc().expect("alloc");
    let crc = s.write(a, &page(1)).expect("write");
    plan.add(Rule::new(FaultKind::Eio).on(Op::Sync).nth(1));
    let e = s.sync().expect_err("fdatasync fails");
    assert!(matches!(e, SsdError::Sync { .. }) && errno(&e) == Some(libc::EIO), "{e}");
    s.sync().expect("second sync");
    plan.add(Rule::new(FaultKind::Delay(Duration::from_millis(150))).on(Op::Read).nth(1));
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    let t = Instant::now();
    s.read(a, crc, &mut out).expect("slow read");
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(&out[..], &page(1)[..]);
}

/// A 1 MiB tmpfs on a fresh directory, or `None` (after saying SKIPPED) without root.
fn mount_or_skip(test: &str) -> Option<(tempfile::TempDir, SmallTmpfs)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = SmallTmpfs::mount(dir.path(), "1m", test)?;
    Some((dir, fs))
}

/// A store on a really full file system: writes fail with ENOSPC, what was written before stays
/// readable, and once slots are freed and `shrink` returns their space, writes work again.
#[test]
fn tier2_on_a_full_file_system_stops_cleanly_and_recovers() {
    let Some((_dir, fs)) = mount_or_skip("tier2_on_a_full_file_system_stops_cleanly_and_recovers") else {
        return;
    };
    let mut cfg = SsdConfig::new(fs.path().join("ssd"));
    cfg.slots_per_file = 64;
    let s = SsdStore::open(cfg).expect("open tier 2 on tmpfs (O_DIRECT since Linux 6.6)");
    let mut written: Vec<(SlotId, u32, u64)> = Vec::new();
    let full = loop {
        assert!(written.len() < 1000, "a 1 MiB file system took {} pages", written.len());
        let slot = match s.alloc() {
            Ok(slot) => slot,
            Err(e) => break e,
        };
        let n = written.len() as u64;
        match s.write(slot, &page(n)) {
            Ok(crc) => written.push((slot, crc, n)),
            Err(e) => {
                s.free(slot).expect("free the failed slot");
                break e;
            }
        }
    };
    assert!(written.len() > 100, "only {} pages fit in 1 MiB", written.len());
    let code = match &full {
        SsdError::Write { source, .. } | SsdError::CreateFile { source, .. } => source.raw_os_error(),
        other => panic!("unexpected error on a full file system: {other}"),
    };
    assert_eq!(code, Some(libc::ENOSPC), "{full}");
    // Everything written before is intact.
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    for &(slot, crc, n) in &written {
        s.read(slot, crc, &mut out).expect("read back");
        assert_eq!(&out[..], &page(n)[..], "{slot}");
    }
    // Free half, shrink: the space returns and new writes succeed.
    let (gone, kept) = written.split_at(written.len() / 2);
    for &(slot, _, _) in gone {
        s.free(slot).expect("free");
    }
    assert!(s.shrink().expect("shrink") > 0);
    let slot = s.alloc().expect("alloc after shrink");
    let crc = s.write(slot, &page(5000)).expect("write after shrink");
    s.read(slot, crc, &mut out).expect("read");
    assert_eq!(&out[..], &page(5000)[..]);
    for &(slot, crc, n) in kept {
        s.read(slot, crc, &mut out).expect("read back");
        assert_eq!(&out[..], &page(n)[..]);
    }
}

fn faulty_tier3(plan: &Arc<FaultPlan>) -> (tempfile::TempDir, ObjectTier) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ObjectConfig::new(dir.path().join("t3").to_string_lossy().into_owned());
    cfg.segment_bytes = 16 * PAGE_SIZE;
    let t = ObjectTier::open_with_faults(cfg, Arc::clone(plan)).expect("open tier 3");
    (dir, t)
}

fn pages(seeds: std::ops::Range<u64>) -> Vec<(u64, AlignedBuf)> {
    seeds.map(|s| (s, page(s))).collect()
}

fn refs(p: &[(u64, AlignedBuf)]) -> Vec<(u64, &[u8])> {
    p.iter().map(|(n, b)| (*n, &b[..])).collect()
}

#[test]
fn tier3_put_and_get_errors_are_clear_and_retryable() {
    let plan = Arc::new(FaultPlan::new());
    let (_d, t) = faulty_tier3(&plan);
    let ps = pages(0..4);
    plan.add(Rule::new(FaultKind::Eio).on(Op::Write).nth(1));
    let e = t.write_segment(&refs(&ps)).expect_err("PUT fails");
    assert!(matches!(e, ObjectError::Put { .. }), "{e}");
    assert_eq!(t.stats().segments, 0, "a failed PUT leaves no segment behind");
    let locs = t.write_segment(&refs(&ps)).expect("second PUT");
    plan.add(Rule::new(FaultKind::Eio).on(Op::Read).nth(1));
    let mut out = page(77);
    let (loc, crc) = locs[2];
    assert!(matches!(t.read(loc, crc, &mut out), Err(ObjectError::Get { .. })));
    t.read(loc, crc, &mut out).expect("retry");
    assert_eq!(&out[..], &page(2)[..]);
    // A lost response: the PUT took effect but the tier was told it failed. It does not count
    // the segment; the pages stay wherever the caller had them.
    plan.add(Rule::new(FaultKind::EioAfter).on(Op::Write).nth(1));
    assert!(t.write_segment(&refs(&ps)).is_err());
    let locs2 = t.write_segment(&refs(&ps)).expect("PUT after the lost one");
    let (loc, crc) = locs2[3];
    t.read(loc, crc, &mut out).expect("read");
    assert_eq!(&out[..], &page(3)[..]);
}

#[test]
fn tier3_bit_flips_are_caught_by_the_checksum() {
    let plan = Arc::new(FaultPlan::new());
    let (_d, t) = faulty_tier3(&plan);
    let ps = pages(0..8);
    // A flip in the uploaded object: wherever it lands (header, index or a page), no read of
    // any page returns wrong bytes as Ok.
    for seed in 0..6 {
        plan.add(Rule::new(FaultKind::FlipBit).on(Op::Write).probability(1.0, seed + 1).times(1));
        let locs = t.write_segment(&refs(&ps)).expect("write");
        plan.clear();
        let mut out = AlignedBuf::zeroed(PAGE_SIZE);
        let mut corrupt = 0;
        for (i, &(loc, crc)) in locs.iter().enumerate() {
            match t.read(loc, crc, &mut out) {
                Ok(()) => assert_eq!(&out[..], &page(i as u64)[..], "seed {seed} page {i}"),
                Err(ObjectError::Corrupt { .. } | ObjectError::ShortRead { .. }) => corrupt += 1,
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        // A flip in a page's bytes is seen; one in padding or the header may not touch a page.
        assert!(corrupt <= 1, "seed {seed}: {corrupt} pages corrupt from one bit");
    }
    // A flip on the way back: Corrupt, and a retry reads the right bytes.
    let locs = t.write_segment(&refs(&ps)).expect("write");
    plan.add(Rule::new(FaultKind::FlipBit).on(Op::Read).nth(1));
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    let (loc, crc) = locs[5];
    let e = t.read(loc, crc, &mut out).expect_err("flipped read");
    assert!(matches!(e, ObjectError::Corrupt { .. }), "{e}");
    t.read(loc, crc, &mut out).expect("clean read");
    assert_eq!(&out[..], &page(5)[..]);
}

#[test]
fn tier3_slow_responses_are_waited_for() {
    let plan = Arc::new(FaultPlan::new());
    let (_d, t) = faulty_tier3(&plan);
    let ps = pages(0..2);
    plan.add(Rule::new(FaultKind::Delay(Duration::from_millis(200))));
    let start = Instant::now();
    let locs = t.write_segment(&refs(&ps)).expect("slow PUT");
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    t.read(locs[1].0, locs[1].1, &mut out).expect("slow GET");
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(&out[..], &page(1)[..]);
}

/// Tier 3 on the real S3 server, which is stopped and restarted mid-run: a read or a segment
/// write in flight while it is down either completes once it is back (the client retries) or
/// fails with a clear error and succeeds when tried again; segments written before are intact.
#[test]
fn tier3_s3_server_restart_mid_run() {
    let Some(mut server) = s3::S3Server::start_or_skip("tier3_s3_server_restart_mid_run") else { return };
    let mut cfg = server.config("restart");
    cfg.segment_bytes = 16 * PAGE_SIZE;
    let t = Arc::new(ObjectTier::open(cfg).expect("open tier 3"));
    let ps = pages(0..8);
    let before = t.write_segment(&refs(&ps)).expect("write before the stop");
    server.stop();
    let (t2, before2) = (Arc::clone(&t), before.clone());
    let inflight = std::thread::spawn(move || {
        let ps = pages(100..104);
        let w = t2.write_segment(&refs(&ps));
        let mut out = AlignedBuf::zeroed(PAGE_SIZE);
        let r = t2.read(before2[3].0, before2[3].1, &mut out).map(|()| out);
        (w, r)
    });
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let (w, r) = inflight.join().expect("thread");
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    match w {
        Ok(locs) => {
            t.read(locs[1].0, locs[1].1, &mut out).expect("read the segment written across the restart");
            assert_eq!(&out[..], &page(101)[..]);
        }
        Err(e) => {
            assert!(matches!(e, ObjectError::Put { .. }), "{e}");
            eprintln!("segment write while the server was down: {e}");
            let ps = pages(100..104);
            t.write_segment(&refs(&ps)).expect("write again after the restart");
        }
    }
    match r {
        Ok(bytes) => assert_eq!(&bytes[..], &page(3)[..]),
        Err(e) => {
            assert!(matches!(e, ObjectError::Get { .. }), "{e}");
            eprintln!("read while the server was down: {e}");
        }
    }
    for (i, &(loc, crc)) in before.iter().enumerate() {
        t.read(loc, crc, &mut out).expect("read after the restart");
        assert_eq!(&out[..], &page(i as u64)[..]);
    }
    // Down for longer than the client retries (about 2 s here): a clear error, in bounded time.
    server.stop();
    let start = Instant::now();
    let e = t.read(before[0].0, before[0].1, &mut out).expect_err("server down");
    let mut chain = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(c) = cur {
        chain += &format!(": {c}");
        cur = c.source();
    }
    assert!(matches!(e, ObjectError::Get { .. }) && chain.contains("Connection refused"), "{chain}");
    assert!(start.elapsed() < Duration::from_secs(60), "gave up after {:?}", start.elapsed());
    assert!(matches!(t.write_segment(&refs(&pages(0..1))), Err(ObjectError::Put { .. })));
    server.restart();
    t.read(before[0].0, before[0].1, &mut out).expect("read after the second restart");
    assert_eq!(&out[..], &page(0)[..]);
}

/// Slow S3 responses (injected under the real client): tier-3 I/O on the real server is slow
/// and right.
#[test]
fn tier3_slow_s3_responses() {
    let Some(server) = s3::S3Server::start_or_skip("tier3_slow_s3_responses") else { return };
    let plan = Arc::new(FaultPlan::new());
    let mut cfg = server.config("slow");
    cfg.segment_bytes = 16 * PAGE_SIZE;
    let t = ObjectTier::open_with_faults(cfg, Arc::clone(&plan)).expect("open tier 3");
    plan.add(Rule::new(FaultKind::Delay(Duration::from_millis(300))).on(Op::Write));
    plan.add(Rule::new(FaultKind::Delay(Duration::from_millis(300))).on(Op::Read));
    let ps = pages(0..3);
    let start = Instant::now();
    let locs = t.write_segment(&refs(&ps)).expect("slow PUT");
    let mut out = AlignedBuf::zeroed(PAGE_SIZE);
    t.read(locs[2].0, locs[2].1, &mut out).expect("slow GET");
    assert!(start.elapsed() >= Duration::from_millis(600));
    assert_eq!(&out[..], &page(2)[..]);
}
