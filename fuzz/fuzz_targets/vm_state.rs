//! Snapshot state files (`vmtier_vm::snapshot::decode_state`) and the vCPU state inside them and
//! inside checkpoints (`vmtier_vm::VcpuState::from_bytes`): files on disk and bytes from the
//! replication log.
//!
//! Input: a mode byte, then: mode 0, a whole state file; mode 1, a state file whose length field
//! and checksum the target fixes; mode 2, a vCPU state; mode 3, a vCPU state with its checksum
//! fixed by the target.
//! Checks: no panic; a decoded vCPU state encodes to bytes that decode to the same encoding;
//! no allocation above 8 bytes per input byte (plus the fixed 4 KiB XSAVE area).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtier_fuzz::{assert_bounded_allocation, largest_allocation, seal_crc, seal_state_file};
use vmtier_vm::VcpuState;
use vmtier_vm::snapshot;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let state = match mode % 4 {
        0 | 1 => {
            let bytes = if mode % 4 == 0 { rest.to_vec() } else { seal_state_file(rest) };
            let (saved, peak) = largest_allocation(|| snapshot::decode_state(&bytes));
            assert_bounded_allocation("decode_state", bytes.len(), peak, 8);
            let Ok(saved) = saved else { return };
            let again = snapshot::encode_state(saved.ram_bytes, &saved.vcpu);
            let back = snapshot::decode_state(&again).expect("an encoded state file must decode");
            assert_eq!(back.ram_bytes, saved.ram_bytes);
            saved.vcpu
        }
        m => {
            let bytes = if m == 2 { rest.to_vec() } else { seal_crc(rest) };
            let (state, peak) = largest_allocation(|| VcpuState::from_bytes(&bytes));
            assert_bounded_allocation("VcpuState::from_bytes", bytes.len(), peak, 8);
            let Ok(state) = state else { return };
            state
        }
    };
    let enc = state.to_bytes();
    let back = VcpuState::from_bytes(&enc).expect("an encoded vCPU state must decode");
    assert_eq!(back.to_bytes(), enc, "vCPU state changed through to_bytes and from_bytes");
});
