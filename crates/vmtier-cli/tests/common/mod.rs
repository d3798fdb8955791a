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
