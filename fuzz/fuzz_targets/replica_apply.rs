//! The secondary's apply path (`vmtier_repl::ReplicaMap`): a sequence of log records from shared
//! storage, decoded and applied in order, as a follower does.
//!
//! Input: records, each `len u16, mode u8, bytes[len]`; mode as in the `record` target (odd:
//! the target seals the body, kind `mode >> 1`). Every record that decodes is applied, also
//! after an error (a follower must not panic whatever the log holds).
//! Checks: no panic; after every apply, whatever its result, the map's incremental digest equals
//! `map_digest` recomputed over the map; a successful apply leaves the map's position at the
//! record's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtier_fuzz::{RECORD_NAME, fuzz_key, seal_record};
use vmtier_repl::ReplicaMap;
use vmtier_repl::record::{self, Record, map_digest};

fuzz_target!(|data: &[u8]| {
    let mut map = ReplicaMap::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let mode = rest[2];
        let take = len.min(rest.len() - 3);
        let chunk = &rest[3..3 + take];
        rest = &rest[3 + take..];
        let bytes = if mode & 1 == 0 { chunk.to_vec() } else { seal_record(u16::from(mode >> 1), chunk) };
        let Ok(rec) = record::decode(fuzz_key(), RECORD_NAME, &bytes) else { continue };
        let result = map.apply_record(&rec);
        let recomputed = map_digest(map.iter().map(|(page, _, crc)| (page, crc)));
        assert_eq!(map.digest(), recomputed, "incremental digest drifted from the map ({result:?})");
        if result.is_ok() {
            assert_eq!(map.seq(), rec.seq());
            assert_eq!(map.epoch(), rec.epoch());
            if let Record::Checkpoint(c) = &rec {
                assert_eq!(map.digest(), c.digest, "apply accepted a checkpoint whose digest differs");
                assert!(map.is_based());
            }
        }
    }
});
