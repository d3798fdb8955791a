//! Helpers shared by the CLI's integration tests.

// Each test file uses a subset.
#![allow(dead_code)]

use std::process::Output;

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
