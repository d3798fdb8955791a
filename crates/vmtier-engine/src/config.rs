//! Engine configuration: defaults that work out of the box, loaded from TOML, validated with
//! errors that name the key, the bad value and what is allowed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::prefetch::PrefetcherKind;
use crate::size::ByteSize;

/// Everything the engine needs to run one guest memory region.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Guest memory size.
    pub memory: ByteSize,
    /// DRAM budget: the most guest memory ever resident.
    pub dram: ByteSize,
    /// Tier 2, the page store on a directory.
    pub tier2: Tier2Config,
    /// Tier 3, the object store.
    pub tier3: Tier3Config,
    /// The Memory Tier Manager.
    pub mtm: MtmConfig,
    /// Access tracking.
    pub tracker: TrackerConfig,
    /// Fault handling.
    pub fault: FaultConfig,
    /// Predictive prefetching.
    pub prefetch: PrefetchConfig,
    /// Track changes for checkpoint replication ([`crate::Engine::capture`]). Set by the
    /// replicating commands (`vmtier primary`), not read from a config file.
    #[serde(skip)]
    pub replicate: bool,
    /// Authenticate stored pages with this keyed tag ([`crate::auth`]): set by the replicating
    /// commands, whose tiers are on shared storage; not read from a config file.
    #[serde(skip)]
    pub page_auth: Option<crate::PageAuthHandle>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            memory: ByteSize(1 << 30),
            dram: ByteSize(256 << 20),
            tier2: Tier2Config::default(),
            tier3: Tier3Config::default(),
            mtm: MtmConfig::default(),
            tracker: TrackerConfig::default(),
            fault: FaultConfig::default(),
            prefetch: PrefetchConfig::default(),
            replicate: false,
            page_auth: None,
        }
    }
}

/// `[prefetch]`: which predictor brings pages in ahead of the guest (see `docs/prefetch.md`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchConfig {
    /// `none`, `readahead`, `stride`, `leap` or `history`.
    pub kind: PrefetcherKind,
    /// Most pages a predictor runs ahead of the guest.
    pub max_window_pages: usize,
    /// Most predictions waiting to be installed; more are dropped.
    pub queue_pages: usize,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self { kind: PrefetcherKind::None, max_window_pages: 64, queue_pages: 4096 }
    }
}

/// Tier 2 settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tier2Config {
    /// Directory of the slot files (shared storage in a two-host setup).
    pub dir: PathBuf,
    /// Slots per file (4 KiB each).
    pub slots_per_file: u32,
    /// Read and write with `O_DIRECT`, so the page cache never stands in for the device.
    pub direct_io: bool,
}

impl Default for Tier2Config {
    fn default() -> Self {
        Self { dir: PathBuf::from("vmtier-data/tier2"), slots_per_file: 16384, direct_io: true }
    }
}

/// Tier 3 settings.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tier3Config {
    /// A local directory (`path` or `file:///path`) or `s3://bucket/prefix`.
    #[serde(serialize_with = "ser_redacted")]
    pub url: String,
    /// S3 endpoint, e.g. `http://127.0.0.1:9000` (default: the `AWS_ENDPOINT` environment variable or AWS).
    #[serde(serialize_with = "ser_redacted_opt")]
    pub endpoint: Option<String>,
    /// S3 region (default: `AWS_REGION` / `AWS_DEFAULT_REGION`).
    pub region: Option<String>,
    /// S3 access key id (default: `AWS_ACCESS_KEY_ID`). Never printed.
    #[serde(skip_serializing)]
    pub access_key_id: Option<String>,
    /// S3 secret key (default: `AWS_SECRET_ACCESS_KEY`). Never printed.
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    /// Allow plain-http endpoints.
    pub allow_http: bool,
    /// Size of a segment object: 1–8 MiB.
    pub segment_bytes: ByteSize,
    /// Segments with at least this fraction of dead pages are compacted.
    pub compact_dead_fraction: f64,
}

/// Serializes a URL with its credentials (`user:password@`) redacted.
fn ser_redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&vmtier_storage::object::redact_url(url))
}

fn ser_redacted_opt<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&vmtier_storage::object::redact_url(u)),
        None => s.serialize_none(),
    }
}

impl std::fmt::Debug for Tier3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier3Config")
            .field("url", &vmtier_storage::object::redact_url(&self.url))
            .field("endpoint", &self.endpoint.as_deref().map(vmtier_storage::object::redact_url))
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "<redacted>"))
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .field("segment_bytes", &self.segment_bytes)
            .field("compact_dead_fraction", &self.compact_dead_fraction)
            .finish()
    }
}

impl Tier3Config {
    /// The storage layer's configuration of this tier.
    pub fn object_config(&self) -> vmtier_storage::object::ObjectConfig {
        vmtier_storage::object::ObjectConfig {
            url: self.url.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            allow_http: self.allow_http,
            segment_bytes: self.segment_bytes.0 as usize,
            compact_dead_fraction: self.compact_dead_fraction,
        }
    }
}

impl Default for Tier3Config {
    fn default() -> Self {
        Self {
            url: "vmtier-data/tier3".into(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            segment_bytes: ByteSize(4 << 20),
            compact_dead_fraction: 0.5,
        }
    }
}

/// Which placement policy the MTM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Fit the hottest pages to the DRAM budget (default).
    Hotset,
    /// The concept's `TierPage` thresholds, exactly.
    Threshold,
}

impl std::str::FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hotset" => Ok(Self::Hotset),
            "threshold" => Ok(Self::Threshold),
            other => Err(format!("unknown policy `{other}`: expected `hotset` or `threshold`")),
        }
    }
}

/// The concept's `TierPage` thresholds.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Frequency above which a page may go to tier 1.
    pub high: u8,
    /// Frequency below which a page may go to tier 3.
    pub low: u8,
    /// Replication priority above which a page may go to tier 1.
    pub priority_high: u8,
    /// Replication priority below which a page may go to tier 3.
    pub priority_low: u8,
    /// The replication priority of every page until replication metadata supplies one.
    pub default_priority: u8,
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        Self { high: 80, low: 20, priority_high: 5, priority_low: 3, default_priority: 2 }
    }
}

/// MTM loop settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtmConfig {
    /// Run the MTM at all (tests drive moves by hand with it off).
    pub enabled: bool,
    /// Placement policy.
    pub policy: PolicyKind,
    /// Thresholds of the `threshold` policy.
    pub threshold: ThresholdConfig,
    /// Length of one tick of the loop (time unit of the tracker).
    pub tick_ms: u64,
    /// Ticks between policy decisions.
    pub decide_every_ticks: u32,
    /// Migration bandwidth budget, MB/s (reads plus writes of page moves).
    pub bandwidth_mbps: u64,
    /// Free DRAM frames the MTM keeps in reserve so faults rarely reclaim synchronously.
    pub headroom_pages: usize,
    /// A page not accessed for this long is cold enough for tier 3 (hotset policy).
    pub cold_after_ms: u64,
    /// Ticks between compactions of tier 2 and tier 3.
    pub compact_every_ticks: u32,
}

impl Default for MtmConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            policy: PolicyKind::Hotset,
            threshold: ThresholdConfig::default(),
            tick_ms: 100,
            decide_every_ticks: 5,
            bandwidth_mbps: 400,
            headroom_pages: 256,
            cold_after_ms: 8000,
            compact_every_ticks: 50,
        }
    }
}

/// Access tracking settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Fraction of the way to 100 that one observation moves a page's frequency.
    pub gain: f32,
    /// Frequency half-life.
    pub half_life_ms: u64,
    /// Resident pages unmapped per second to sample their accesses (0 = no sampling).
    pub sample_pages_per_sec: u64,
    /// Access events kept for prefetchers and replication.
    pub history: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self { gain: 0.5, half_life_ms: 5000, sample_pages_per_sec: 8192, history: 1 << 16 }
    }
}

/// Fault handling settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Threads reading the userfaultfd.
    pub handler_threads: usize,
    /// Most pages a read fault on a tier-2 page installs at once: the page and the neighbours
    /// stored in the following slots, with one read and one copy (1 = off).
    pub fault_around_pages: usize,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self { handler_threads: 2, fault_around_pages: 16 }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{key}` = {value}: {allowed}")]
pub struct ConfigError {
    /// Dotted key, e.g. `dram`.
    pub key: String,
    /// The value given.
    pub value: String,
    /// What is allowed.
    pub allowed: String,
}

fn bad(key: &str, value: impl ToString, allowed: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), value: value.to_string(), allowed: allowed.into() }
}

impl EngineConfig {
    /// Checks every value; the first problem found is returned. `prefix` is prepended to key
    /// names (e.g. `engine.`) so errors name the key as the user wrote it.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let k = |s: &str| format!("{prefix}{s}");
        let page = crate::PAGE_SIZE as u64;
        if self.memory.0 == 0 || !self.memory.0.is_multiple_of(page) {
            return Err(bad(&k("memory"), self.memory, "a positive multiple of 4KiB, e.g. 1GiB"));
        }
        if self.memory.0 / page > u32::MAX as u64 {
            return Err(bad(&k("memory"), self.memory, "at most 16TiB"));
        }
        if self.dram.0 < 64 * page || !self.dram.0.is_multiple_of(page) {
            return Err(bad(&k("dram"), self.dram, "a multiple of 4KiB of at least 256KiB"));
        }
        if self.dram.0 > self.memory.0 {
            return Err(bad(
                &k("dram"),
                self.dram,
                format!("at most `{}` ({}): the DRAM budget cannot exceed the guest", k("memory"), self.memory),
            ));
        }
        if self.tier2.slots_per_file == 0 {
            return Err(bad(&k("tier2.slots_per_file"), 0, "at least 1"));
        }
        let seg = self.tier3.segment_bytes.0;
        if !(1 << 20..=8 << 20).contains(&seg) || !seg.is_multiple_of(page) {
            return Err(bad(
                &k("tier3.segment_bytes"),
                self.tier3.segment_bytes,
                "a multiple of 4KiB from 1MiB to 8MiB",
            ));
        }
        if !(0.0..=1.0).contains(&self.tier3.compact_dead_fraction) || self.tier3.compact_dead_fraction == 0.0 {
            return Err(bad(
                &k("tier3.compact_dead_fraction"),
                self.tier3.compact_dead_fraction,
                "a fraction in (0, 1]",
            ));
        }
        let t = &self.mtm.threshold;
        if t.high > 100 || t.low > 100 {
            return Err(bad(
                &k("mtm.threshold.high"),
                format!("{}/{}", t.high, t.low),
                "frequencies on the 0-100 scale",
            ));
        }
        if t.low > t.high {
            return Err(bad(&k("mtm.threshold.low"), t.low, format!("at most `mtm.threshold.high` ({})", t.high)));
        }
        if t.priority_low > t.priority_high {
            return Err(bad(
                &k("mtm.threshold.priority_low"),
                t.priority_low,
                format!("at most `mtm.threshold.priority_high` ({})", t.priority_high),
            ));
        }
        if !(1..=60_000).contains(&self.mtm.tick_ms) {
            return Err(bad(&k("mtm.tick_ms"), self.mtm.tick_ms, "1 to 60000"));
        }
        if self.mtm.decide_every_ticks == 0 || self.mtm.compact_every_ticks == 0 {
            return Err(bad(
                &k("mtm.decide_every_ticks"),
                self.mtm.decide_every_ticks.min(self.mtm.compact_every_ticks),
                "at least 1",
            ));
        }
        if self.mtm.bandwidth_mbps == 0 {
            return Err(bad(&k("mtm.bandwidth_mbps"), 0, "at least 1 (MB/s)"));
        }
        if self.mtm.headroom_pages as u64 >= self.dram.0 / page / 2 {
            return Err(bad(
                &k("mtm.headroom_pages"),
                self.mtm.headroom_pages,
                format!("less than half the DRAM budget ({} pages)", self.dram.0 / page),
            ));
        }
        if !(self.tracker.gain > 0.0 && self.tracker.gain <= 1.0) {
            return Err(bad(&k("tracker.gain"), self.tracker.gain, "a fraction in (0, 1]"));
        }
        if self.tracker.half_life_ms < self.mtm.tick_ms {
            return Err(bad(
                &k("tracker.half_life_ms"),
                self.tracker.half_life_ms,
                format!("at least one tick (`mtm.tick_ms` = {})", self.mtm.tick_ms),
            ));
        }
        if !(1..=64).contains(&self.fault.handler_threads) {
            return Err(bad(&k("fault.handler_threads"), self.fault.handler_threads, "1 to 64"));
        }
        if !(1..=512).contains(&self.fault.fault_around_pages) {
            return Err(bad(&k("fault.fault_around_pages"), self.fault.fault_around_pages, "1 (off) to 512 (2 MiB)"));
        }
        if !(1..=1024).contains(&self.prefetch.max_window_pages) {
            return Err(bad(&k("prefetch.max_window_pages"), self.prefetch.max_window_pages, "1 to 1024"));
        }
        if !(16..=1 << 20).contains(&self.prefetch.queue_pages) {
            return Err(bad(&k("prefetch.queue_pages"), self.prefetch.queue_pages, "16 to 1048576"));
        }
        Ok(())
    }

    /// Guest pages.
    pub fn pages(&self) -> usize {
        (self.memory.0 / crate::PAGE_SIZE as u64) as usize
    }

    /// DRAM budget in pages.
    pub fn dram_pages(&self) -> usize {
        (self.dram.0 / crate::PAGE_SIZE as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        EngineConfig::default().validate("").unwrap();
    }

    #[test]
    fn errors_name_key_value_and_allowed() {
        let mut c = EngineConfig::default();
        c.dram = ByteSize(2 << 30);
        let e = c.validate("engine.").unwrap_err();
        assert_eq!(e.key, "engine.dram");
        assert_eq!(e.value, "2GiB");
        assert!(e.to_string().contains("cannot exceed the guest"), "{e}");

        let mut c = EngineConfig::default();
        c.tier3.segment_bytes = ByteSize(16 << 20);
        assert_eq!(c.validate("").unwrap_err().key, "tier3.segment_bytes");

        let mut c = EngineConfig::default();
        c.mtm.threshold.low = 90;
        assert_eq!(c.validate("").unwrap_err().key, "mtm.threshold.low");
    }

    #[test]
    fn toml_unknown_key_and_bad_size_rejected() {
        let e = toml::from_str::<EngineConfig>("dram = \"lots\"").unwrap_err().to_string();
        assert!(e.contains("invalid size `lots`"), "{e}");
        let e = toml::from_str::<EngineConfig>("[mtm]\npolicyy = \"hotset\"").unwrap_err().to_string();
        assert!(e.contains("policyy"), "{e}");
        let c: EngineConfig = toml::from_str("memory = \"2GiB\"\n[mtm]\npolicy = \"threshold\"").unwrap();
        assert_eq!(c.memory, ByteSize(2 << 30));
        assert_eq!(c.mtm.policy, PolicyKind::Threshold);
    }
}
