//! Replication log records, heartbeats and epoch claims (`vmtier_repl::record`): bytes read from
//! shared storage that any host can write.
//!
//! Input: a mode byte, then either a whole record (even mode) or a record body that the target
//! frames with valid checksums (odd mode; kind = `mode >> 1`), so the body parsers are reached.
//! Checks: no panic; a decoded record re-encodes to bytes that decode to the same record, no
//! longer than the input (byte-identical for fences, heartbeats and claims, whose encoding is
//! canonical); no allocation above 4 bytes per input byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtier_fuzz::{assert_bounded_allocation, largest_allocation, seal_record};
use vmtier_repl::record::{self, Record};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 0 { rest.to_vec() } else { seal_record(u16::from(mode >> 1), rest) };

    let (rec, peak) = largest_allocation(|| record::decode(&bytes));
    assert_bounded_allocation("record::decode", bytes.len(), peak, 4);
    if let Ok(r) = rec {
        let again = record::encode(&r);
        assert_eq!(record::decode(&again).as_ref(), Ok(&r), "re-encoded record decodes differently");
        assert!(again.len() <= bytes.len(), "re-encoding grew the record");
        if matches!(r, Record::Fence(_)) {
            assert_eq!(again, bytes, "fence encoding is not canonical");
        }
    }

    let (hb, peak) = largest_allocation(|| record::decode_heartbeat(&bytes));
    assert_bounded_allocation("decode_heartbeat", bytes.len(), peak, 2);
    if let Ok(h) = hb {
        assert_eq!(record::encode_heartbeat(&h), bytes, "heartbeat encoding is not canonical");
    }

    let (cl, peak) = largest_allocation(|| record::decode_claim(&bytes));
    assert_bounded_allocation("decode_claim", bytes.len(), peak, 2);
    if let Ok(c) = cl {
        assert_eq!(record::encode_claim(&c), bytes, "claim encoding is not canonical");
    }
});
