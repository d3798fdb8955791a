//! `vmtier run` / `vmtier primary` configuration files (`crates/vmtier-cli/src/run_config.rs`):
//! TOML parsed and validated by `RunConfig::parse`. The CLI is a binary crate, so its module is
//! compiled into this target from its source file.
//!
//! Input: TOML text (non-UTF-8 inputs are skipped).
//! Checks: `parse` (serde, then every validation step) never panics.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../crates/vmtier-cli/src/run_config.rs"]
mod run_config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = run_config::RunConfig::parse(text);
});
