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
use vmtier_fuzz::{CLAIM_NAME, RECORD_NAME, assert_bounded_allocation, fuzz_key, largest_allocation, seal_record};
use vmtier_repl::log::{epoch_key, log_key};
use vmtier_repl::record::{self, Record};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 0 { rest.to_vec() } else { seal_record(u16::from(mode >> 1), rest) };

    let key = fuzz_key();
    let (rec, peak) = largest_allocation(|| record::decode(key, RECORD_NAME, &bytes));
    assert_bounded_allocation("record::decode", bytes.len(), peak, 4);
    if let Ok(r) = rec {
        // A record is encoded under its own position's store key; the MAC binds it there.
        let name = log_key(r.seq());
        let again = record::encode(key, &r);
        assert_eq!(record::decode(key, &name, &again).as_ref(), Ok(&r), "re-encoded record decodes differently");
        assert!(again.len() <= bytes.len(), "re-encoding grew the record");
        if matches!(r, Record::Fence(_)) && name == RECORD_NAME {
            assert_eq!(again, bytes, "fence encoding is not canonical");
        }
    }

    let (hb, peak) = largest_allocation(|| record::decode_heartbeat(key, &bytes));
    assert_bounded_allocation("decode_heartbeat", bytes.len(), peak, 2);
    if let Ok(h) = hb {
        assert_eq!(record::encode_heartbeat(key, &h), bytes, "heartbeat encoding is not canonical");
    }

    let (cl, peak) = largest_allocation(|| record::decode_claim(key, CLAIM_NAME, &bytes));
    assert_bounded_allocation("decode_claim", bytes.len(), peak, 2);
    if let Ok(c) = cl
        && epoch_key(c.epoch) == CLAIM_NAME
    {
        assert_eq!(record::encode_claim(key, &c), bytes, "claim encoding is not canonical");
    }
});
