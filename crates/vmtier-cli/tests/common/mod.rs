//! Helpers shared by the CLI's integration tests.

// Each test file uses a subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// A child's exit status, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Exit 0 and stdout is exactly one JSON object.
pub fn json_ok(out: &Output) -> serde_json::Map<String, Value> {
    assert_eq!(out.status.code(), Some(0), "{}", describe(out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value: {e}\n{}", describe(out)));
    match v {
        Value::Object(m) => m,
        other => panic!("stdout is not a JSON object: {other}"),
    }
}

/// Runs `vmtier ARGS` in `dir` with no log or KVM-device overrides inherited, and waits for it.
pub fn vmtier_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmtier"))
        .current_dir(dir)
        .env_remove("VMTIER_LOG")
        .env_remove("VMTIER_KVM_DEVICE")
        .args(args)
        .output()
        .expect("vmtier runs")
}

/// Rewrites the last 4 bytes of `data` so that its crc32c is `want`: what anyone who can write
/// shared storage can do, since crc32c is affine over GF(2) in its input bits.
#[allow(dead_code)]
pub fn force_crc32c(data: &mut [u8], want: u32) {
    let n = data.len();
    data[n - 4..].fill(0);
    let base = crc32c::crc32c(data);
    // Column i: how flipping bit i of the tail changes the crc.
    let cols: Vec<u32> = (0..32)
        .map(|i| {
            data[n - 4 + i / 8] ^= 1 << (i % 8);
            let c = crc32c::crc32c(data) ^ base;
            data[n - 4 + i / 8] ^= 1 << (i % 8);
            c
        })
        .collect();
    // Solve cols · x = want ^ base by Gaussian elimination (rows: crc bits).
    let target = want ^ base;
    let mut rows: Vec<(u32, bool)> =
        (0..32).map(|r| ((0..32).fold(0u32, |m, i| m | (((cols[i] >> r) & 1) << i)), (target >> r) & 1 == 1)).collect();
    let mut pivot_row = 0;
    let mut pivots = Vec::new();
    for col in 0..32 {
        let Some(p) = (pivot_row..32).find(|&r| rows[r].0 >> col & 1 == 1) else { continue };
        rows.swap(pivot_row, p);
        for r in 0..32 {
            if r != pivot_row && rows[r].0 >> col & 1 == 1 {
                rows[r].0 ^= rows[pivot_row].0;
                rows[r].1 ^= rows[pivot_row].1;
            }
        }
        pivots.push(col);
        pivot_row += 1;
    }
    let mut x = 0u32;
    for (r, &col) in pivots.iter().enumerate() {
        if rows[r].1 {
            x |= 1 << col;
        }
    }
    data[n - 4..].copy_from_slice(&x.to_le_bytes());
    assert_eq!(crc32c::crc32c(data), want, "crc32c forcing failed");
}
