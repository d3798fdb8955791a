//! Tier-2 slot files read by a secondary (`vmtier_storage::SsdStore::open_reader`): the slot
//! files on shared storage are written by another host, and slot numbers and checksums come from
//! log records, so both are untrusted. Tier 2 has no header: a slot is checked only by the
//! crc32c the caller expects.
//!
//! Input: `spf u8` (slots per file `1 + spf % 4`; bit 7: also write file 1), `ops u8`, then
//! `ops % 8` reads of 10 bytes (`slot u32, crc u32, span u8, flags u8`), then the bytes of slot
//! file 0 (and 1). `flags` bit 0: expect the slot's real crc32c instead of `crc`; `span % 4` = 0
//! reads one slot with `read`, otherwise `read_span` of that many slots (bit `1 + i` of flags:
//! slot `i` is wanted).
//! Checks: no panic, for any slot number; a read succeeds exactly when every wanted slot lies
//! whole inside an existing file and matches its expected crc32c, and then returns the file's
//! bytes.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmtier_storage::{SlotId, SsdConfig, SsdStore};

const PAGE: usize = 4096;

fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory")).path()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let spf = 1 + u32::from(data[0] % 4);
    let two_files = data[0] & 0x80 != 0;
    let n_ops = usize::from(data[1] % 8);
    let Some(ops) = data.get(2..2 + 10 * n_ops) else { return };
    let content = &data[2 + 10 * n_ops..];

    let dir = dir();
    std::fs::write(dir.join("slots-00000.dat"), content).expect("write slot file 0");
    let file1 = dir.join("slots-00001.dat");
    if two_files {
        std::fs::write(&file1, content).expect("write slot file 1");
    } else {
        let _ = std::fs::remove_file(&file1);
    }
    let files = if two_files { 2 } else { 1 };
    let cfg = SsdConfig { dir: dir.to_path_buf(), slots_per_file: spf, direct_io: false };
    let store = SsdStore::open_reader(cfg).expect("open_reader on an existing directory");

    // The page of `slot` as the file holds it, if the slot lies whole inside an existing file.
    let page_of = |slot: u32| -> Option<&[u8]> {
        if slot / spf >= files {
            return None;
        }
        let off = (slot % spf) as usize * PAGE;
        content.get(off..off + PAGE)
    };

    for op in ops.chunks_exact(10) {
        let slot = u32::from_le_bytes([op[0], op[1], op[2], op[3]]);
        let given = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        let span = usize::from(op[8] % 4);
        let flags = op[9];
        let expect_crc = |s: u32| -> u32 {
            match (flags & 1 != 0, page_of(s)) {
                (true, Some(p)) => crc32c::crc32c(p),
                _ => given,
            }
        };
        if span == 0 {
            let mut out = vec![0u8; PAGE];
            let want = expect_crc(slot);
            let ok = store.read(SlotId(slot), want, &mut out).is_ok();
            let page = page_of(slot);
            let should = page.is_some_and(|p| crc32c::crc32c(p) == want);
            assert_eq!(ok, should, "read of slot {slot} (crc {want:#x})");
            if ok {
                assert_eq!(Some(out.as_slice()), page);
            }
        } else {
            let expected: Vec<Option<u32>> =
                (0..span as u32).map(|i| (flags & (2 << i) != 0).then(|| expect_crc(slot.wrapping_add(i)))).collect();
            let mut out = vec![0u8; span * PAGE];
            let ok = store.read_span(SlotId(slot), &expected, &mut out).is_ok();
            let last = slot.checked_add(span as u32 - 1);
            let should = last.is_some_and(|last| {
                slot / spf == last / spf
                    && (0..span as u32).all(|i| {
                        page_of(slot + i).is_some_and(|p| expected[i as usize].is_none_or(|c| c == crc32c::crc32c(p)))
                    })
            });
            assert_eq!(ok, should, "read_span of {span} slots from {slot} ({expected:?})");
            if ok {
                for (i, want) in expected.iter().enumerate() {
                    if want.is_some() {
                        assert_eq!(Some(&out[i * PAGE..(i + 1) * PAGE]), page_of(slot + i as u32));
                    }
                }
            }
        }
    }
});
