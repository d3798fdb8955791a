//! Engine configuration files (`vmtier_engine::EngineConfig`, the `[engine]` table of every
//! vmtier TOML file): parsed with serde and then validated.
//!
//! Input: TOML text (non-UTF-8 inputs are skipped: the loader reads text).
//! Checks: neither parsing nor `validate` panics; a configuration that validates survives a
//! round trip through its own TOML serialisation and still validates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtier_engine::EngineConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(cfg) = toml::from_str::<EngineConfig>(text) else { return };
    if cfg.validate("engine.").is_err() {
        return;
    }
    let _ = (cfg.pages(), cfg.dram_pages());
    let Ok(out) = toml::to_string(&cfg) else { return };
    let again: EngineConfig =
        toml::from_str(&out).unwrap_or_else(|e| panic!("serialised config does not parse: {e}\n{out}"));
    again.validate("engine.").unwrap_or_else(|e| panic!("serialised config does not validate: {e}\n{out}"));
    assert_eq!(toml::to_string(&again).ok().as_deref(), Some(out.as_str()), "serialisation is not stable");
});
