//! The `vmtier run` configuration file: an engine, a guest workload, metrics.
//!
//! ```toml
//! data_dir = "vmtier-data"      # tier 2 and tier 3 live under it unless set below
//! [engine]
//! memory = "1GiB"
//! dram = "256MiB"
//! [engine.mtm]
//! policy = "hotset"             # or "threshold"
//! [workload]
//! kind = "zipf"
//! skew = 0.99
//! accesses = 2000000
//! ```
//!
//! `examples/vmtier.toml` lists every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde::Deserialize;
use vmtier_engine::{ByteSize, EngineConfig};
use vmtier_vm::{GuestSpec, GuestWorkload};
use vmtier_workload::{PageTrace, WorkloadConfig, WorkloadKind};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Directory for tier 2 (`<data_dir>/tier2`) and tier 3 (`<data_dir>/tier3`) unless
    /// `engine.tier2.dir` / `engine.tier3.url` are set.
    pub data_dir: PathBuf,
    /// The engine.
    pub engine: EngineConfig,
    /// The in-process guest.
    pub workload: WorkloadSection,
    /// Prometheus metrics endpoint.
    pub metrics: MetricsSection,
    /// Replication (`vmtier primary`, `secondary`, `failover`, `status`).
    pub replication: ReplicationSection,
    #[serde(skip)]
    tier2_set: bool,
    #[serde(skip)]
    tier3_set: bool,
    /// `engine.dram` was given (file or command line); if not, it follows `engine.memory`.
    #[serde(skip)]
    dram_set: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("vmtier-data"),
            engine: EngineConfig::default(),
            workload: WorkloadSection::default(),
            metrics: MetricsSection::default(),
            replication: ReplicationSection::default(),
            tier2_set: false,
            tier3_set: false,
            dram_set: false,
        }
    }
}

/// `[replication]`: checkpoints through shared storage and failover (`docs/replication.md`).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSection {
    /// Where the log and lease live: a directory both hosts mount, or `s3://bucket/prefix`.
    /// Default: `<data_dir>/shared`.
    pub shared: Option<String>,
    /// S3 endpoint of `shared`, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// S3 region of `shared`.
    pub region: Option<String>,
    /// S3 access key id of `shared`.
    pub access_key_id: Option<String>,
    /// S3 secret access key of `shared`. Never printed.
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: bool,
    /// The cluster key file (`vmtier keygen FILE`; mode 0600, the same file on every host):
    /// authenticates every record and stored page on shared storage. Required by `primary`,
    /// `secondary`, `failover`, `status` and `inspect` of a log. Relative paths are relative
    /// to the working directory.
    pub key_file: Option<PathBuf>,
    /// Time between checkpoints, ms (25–100 is the intended range).
    pub interval_ms: u64,
    /// Time between the primary's heartbeats, ms.
    pub heartbeat_ms: u64,
    /// The secondary fails over when the heartbeat has not changed for this long, ms.
    pub lease_timeout_ms: u64,
    /// How often the secondary reads the log, ms.
    pub poll_ms: u64,
    /// Every this many checkpoints carry the primary's full hot list.
    pub heat_every: u32,
    /// Every this many checkpoints is a full one (the whole map), after which the log records
    /// before the previous full checkpoint are deleted. 0: only the first is full and the log
    /// is never truncated.
    pub full_every: u32,
    /// Claim 2 of the patent: three quarters into each interval, write as many dirty pages next
    /// in line for demotion as were demoted during the last interval to tier 2 early. Off by
    /// default: measured, it costs more guest time than it saves (BENCHMARKS.md).
    pub preclean: bool,
    /// After a failover, read the pages the warm set lacks in the background into free DRAM
    /// (`ha/fill.rs`), mapped, behind the resumed guest: it removes most of the faults after a
    /// failover (BENCHMARKS.md). Tier-3 (object store) pages are read one batched request per
    /// segment. On by default.
    pub fill_after_failover: bool,
    /// The secondary's DRAM budget for warm pages. Default: the engine's `dram`.
    pub secondary_dram: Option<ByteSize>,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        Self {
            shared: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            key_file: None,
            interval_ms: 100,
            heartbeat_ms: 100,
            lease_timeout_ms: 1000,
            poll_ms: 20,
            heat_every: 10,
            full_every: 100,
            preclean: false,
            fill_after_failover: true,
            secondary_dram: None,
        }
    }
}

impl std::fmt::Debug for ReplicationSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationSection")
            .field("shared", &self.shared.as_deref().map(vmtier_storage::object::redact_url))
            .field("endpoint", &self.endpoint.as_deref().map(vmtier_storage::object::redact_url))
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "<redacted>"))
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("key_file", &self.key_file)
            .field("interval_ms", &self.interval_ms)
            .field("lease_timeout_ms", &self.lease_timeout_ms)
            .field("secondary_dram", &self.secondary_dram)
            .finish_non_exhaustive()
    }
}

impl ReplicationSection {
    /// Loads the cluster key from `key_file`; an error that says how to make one if unset.
    pub fn cluster_key(&self) -> anyhow::Result<vmtier_repl::ClusterKey> {
        let path = self.key_file.as_deref().ok_or(vmtier_repl::KeyError::NotConfigured)?;
        Ok(vmtier_repl::ClusterKey::load(path)?)
    }

    fn validate(&self, engine: &EngineConfig) -> anyhow::Result<()> {
        let ms = |key: &str, v: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&v) {
                bail!("invalid `replication.{key}` = {v}: {lo} to {hi} ms");
            }
            Ok(())
        };
        ms("interval_ms", self.interval_ms, 5, 60_000)?;
        ms("heartbeat_ms", self.heartbeat_ms, 5, 60_000)?;
        ms("poll_ms", self.poll_ms, 1, 60_000)?;
        ms("lease_timeout_ms", self.lease_timeout_ms, 10, 600_000)?;
        if self.lease_timeout_ms < 3 * self.heartbeat_ms {
            bail!(
                "invalid `replication.lease_timeout_ms` = {}: at least 3 heartbeats ({} ms), or a slow \
                 heartbeat looks like a dead primary",
                self.lease_timeout_ms,
                3 * self.heartbeat_ms
            );
        }
        if self.heat_every == 0 {
            bail!("invalid `replication.heat_every` = 0: 1 or more checkpoints");
        }
        if let Some(d) = self.secondary_dram
            && (d.0 > engine.memory.0 || d.0 % vmtier_engine::PAGE_SIZE as u64 != 0)
        {
            bail!(
                "invalid `replication.secondary_dram` = {d}: a multiple of 4KiB no larger than `engine.memory` ({})",
                engine.memory
            );
        }
        Ok(())
    }
}

/// `[workload]`: which guest access pattern runs, flat keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadSection {
    /// Which guest runs the workload.
    pub guest: GuestChoice,
    /// `zipf`, `scan`, `uniform`, `phases` or `trace`; with the micro-VM guest also `kv` and `bfs`.
    pub kind: String,
    /// `trace`: the page trace (`vmtier trace import`) or lackey output to replay.
    pub trace: Option<PathBuf>,
    #[serde(skip)]
    loaded: TraceCache,
    /// Zipf skew.
    pub skew: f64,
    /// Scan passes.
    pub passes: u32,
    /// Phases: hot-set fraction.
    pub hot_fraction: f64,
    /// Phases: number of phases.
    pub phases: u32,
    /// Accesses in the access stage.
    pub accesses: u64,
    /// Guest threads.
    pub threads: usize,
    /// Random seed.
    pub seed: u64,
    /// Write every page once first.
    pub populate: bool,
    /// Fraction of accesses that write.
    pub write_fraction: f64,
}

impl Default for WorkloadSection {
    fn default() -> Self {
        let d = WorkloadConfig::default();
        Self {
            guest: GuestChoice::Auto,
            kind: "zipf".into(),
            trace: None,
            loaded: TraceCache::default(),
            skew: vmtier_workload::config::DEFAULT_SKEW,
            passes: vmtier_workload::config::DEFAULT_PASSES,
            hot_fraction: vmtier_workload::config::DEFAULT_HOT_FRACTION,
            phases: vmtier_workload::config::DEFAULT_PHASES,
            accesses: 2_000_000,
            threads: 2,
            seed: d.seed,
            populate: true,
            write_fraction: d.write_fraction,
        }
    }
}

/// Which guest runs the workload (`[workload] guest`, `--guest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GuestChoice {
    /// The micro-VM where `/dev/kvm` is usable, else the in-process guest.
    Auto,
    /// The KVM micro-VM (an error if KVM is not usable).
    Vm,
    /// Host threads in this process.
    InProcess,
}

/// A trace and the file it was loaded from.
type LoadedTrace = (PathBuf, Arc<PageTrace>);

/// The trace of `kind = "trace"` once loaded, so validation and the run read the file once.
#[derive(Debug, Clone, Default)]
struct TraceCache(Arc<Mutex<Option<LoadedTrace>>>);

impl WorkloadSection {
    /// `trace`, which `kind = "trace"` needs.
    fn trace_path(&self) -> anyhow::Result<&PathBuf> {
        self.trace.as_ref().context(
            "`workload.kind` = \"trace\" needs `workload.trace` = \"FILE\" (--trace FILE): a page trace from \
             `vmtier trace import`, or valgrind lackey output",
        )
    }

    /// The trace of `kind = "trace"`, loaded (once) from `trace`.
    pub fn load_trace(&self) -> anyhow::Result<Arc<PageTrace>> {
        let path = self.trace_path()?;
        let mut cache = self.loaded.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, t)) = cache.as_ref()
            && p == path
        {
            return Ok(Arc::clone(t));
        }
        let trace = Arc::new(
            PageTrace::load(path).with_context(|| format!("invalid `workload.trace` = \"{}\"", path.display()))?,
        );
        *cache = Some((path.clone(), Arc::clone(&trace)));
        Ok(trace)
    }

    /// Whether the workload exists only in the micro-VM's guest program.
    pub fn vm_only(&self) -> bool {
        matches!(self.kind.as_str(), "kv" | "bfs")
    }

    /// The micro-VM guest's specification of this workload.
    pub fn to_guest_spec(&self) -> anyhow::Result<GuestSpec> {
        let workload: GuestWorkload =
            self.kind.parse().map_err(|e: String| anyhow::anyhow!("invalid `workload.kind`: {e}"))?;
        Ok(GuestSpec {
            workload,
            ops: if workload == GuestWorkload::Scan { 0 } else { self.accesses },
            seed: self.seed,
            write_fraction: self.write_fraction,
            zipf_s: self.skew,
            rounds: if workload == GuestWorkload::Phases { self.phases } else { self.passes },
            skip_final_check: false,
            trace: if workload == GuestWorkload::Trace { Some(self.load_trace()?) } else { None },
            ..GuestSpec::default()
        })
    }

    /// The workload crate's configuration.
    pub fn to_config(&self) -> anyhow::Result<WorkloadConfig> {
        if self.vm_only() {
            bail!(
                "invalid `workload.kind` = \"{}\" for the in-process guest: kv and bfs run only in the \
                 micro-VM (`guest = \"vm\"`, or `--guest vm`)",
                self.kind
            );
        }
        let kind = match self.kind.as_str() {
            "zipf" => WorkloadKind::Zipf { skew: self.skew },
            "scan" => WorkloadKind::Scan { passes: self.passes },
            "uniform" => WorkloadKind::Uniform,
            "phases" => WorkloadKind::Phases { hot_fraction: self.hot_fraction, phases: self.phases },
            "trace" => WorkloadKind::Trace { path: self.trace_path()?.clone() },
            other => {
                bail!(
                    "invalid `workload.kind` = \"{other}\": expected one of zipf, scan, uniform, phases, trace, kv, bfs"
                )
            }
        };
        Ok(WorkloadConfig {
            kind,
            accesses: self.accesses,
            threads: self.threads,
            seed: self.seed,
            populate: self.populate,
            write_fraction: self.write_fraction,
            ..WorkloadConfig::default()
        })
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Serve Prometheus metrics at this address (e.g. `127.0.0.1:9898`); off if unset. Must be a
    /// loopback address unless `allow_remote` is set.
    pub addr: Option<SocketAddr>,
    /// Allow `addr` to be a non-loopback address. The endpoint has no authentication and tells
    /// anyone who can reach it about the guest's memory behaviour; off by default.
    pub allow_remote: bool,
}

impl MetricsSection {
    /// Refuses a non-loopback address unless `allow_remote` is set.
    fn validate(&self) -> anyhow::Result<()> {
        if let Some(addr) = self.addr
            && !addr.ip().is_loopback()
            && !self.allow_remote
        {
            bail!(
                "invalid `metrics.addr` = {addr}: not a loopback address, and the metrics endpoint has no authentication; \
                 use 127.0.0.1:{port} (or [::1]:{port}), or set `metrics.allow_remote = true` \
                 (`--metrics-allow-remote`) to serve it to other hosts",
                port = addr.port()
            );
        }
        Ok(())
    }
}

impl RunConfig {
    /// Sets the DRAM budget explicitly (a command-line override): it no longer follows
    /// `engine.memory`.
    pub fn set_dram(&mut self, dram: ByteSize) {
        self.engine.dram = dram;
        self.dram_set = true;
    }

    /// Loads and validates a file; errors name the file, the key and what is allowed.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let raw: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        let mut cfg: RunConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        let engine = raw.get("engine").and_then(|e| e.as_table());
        cfg.tier2_set =
            engine.and_then(|e| e.get("tier2")).and_then(|t| t.as_table()).is_some_and(|t| t.contains_key("dir"));
        cfg.tier3_set =
            engine.and_then(|e| e.get("tier3")).and_then(|t| t.as_table()).is_some_and(|t| t.contains_key("url"));
        cfg.dram_set = engine.is_some_and(|e| e.contains_key("dram"));
        cfg.finish()?;
        Ok(cfg)
    }

    /// Derives the tier locations from `data_dir` and validates everything.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        if !self.dram_set {
            self.engine.dram = default_dram(self.engine.memory);
        }
        if !self.tier2_set {
            self.engine.tier2.dir = self.data_dir.join("tier2");
        }
        if !self.tier3_set {
            self.engine.tier3.url = self.data_dir.join("tier3").to_string_lossy().into_owned();
        }
        self.engine.validate("engine.")?;
        self.replication.validate(&self.engine)?;
        self.metrics.validate()?;
        match self.workload.guest {
            GuestChoice::InProcess => {
                self.workload.to_config()?;
            }
            GuestChoice::Vm => {
                self.workload.to_guest_spec()?;
                check_vm_memory(self.engine.memory.0)?;
            }
            GuestChoice::Auto => {
                self.workload.to_guest_spec()?;
                if !self.workload.vm_only() {
                    self.workload.to_config()?;
                }
            }
        }
        if self.workload.threads == 0 || self.workload.threads > 256 {
            bail!("invalid `workload.threads` = {}: 1 to 256", self.workload.threads);
        }
        if !(0.0..=1.0).contains(&self.workload.write_fraction) {
            bail!("invalid `workload.write_fraction` = {}: a fraction from 0 to 1", self.workload.write_fraction);
        }
        if self.workload.kind == "trace" {
            let trace = self.workload.load_trace()?;
            let needed = match self.workload.guest {
                GuestChoice::Vm => vmtier_vm::runner::trace_ram_bytes(&trace),
                _ => trace.footprint_bytes(),
            };
            if needed > self.engine.memory.0 {
                bail!(
                    "invalid `engine.memory` = {} for trace {}: replaying its {} pages needs at least {} (--memory)",
                    self.engine.memory,
                    trace.source(),
                    trace.footprint_pages(),
                    ByteSize(needed.next_multiple_of(1 << 20))
                );
            }
        }
        Ok(())
    }
}

/// The micro-VM's constraint on guest memory, as a config error.
pub fn check_vm_memory(bytes: u64) -> anyhow::Result<()> {
    use vmtier_vm::abi::{MAX_RAM, MIN_RAM};
    if !(MIN_RAM..=MAX_RAM).contains(&bytes) || !bytes.is_multiple_of(2 << 20) {
        bail!(
            "invalid `engine.memory` = {} for the micro-VM guest: a multiple of 2 MiB from {} MiB to {} GiB",
            ByteSize(bytes),
            MIN_RAM >> 20,
            MAX_RAM >> 30
        );
    }
    Ok(())
}

/// The DRAM budget when none is given: a quarter of the guest, at most 256 MiB (the engine's
/// default), rounded down to whole pages.
fn default_dram(memory: ByteSize) -> ByteSize {
    let page = vmtier_engine::PAGE_SIZE as u64;
    let quarter = memory.0 / 4 / page * page;
    ByteSize(quarter.min(EngineConfig::default().dram.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../examples/vmtier.toml");
        let cfg = RunConfig::parse(text).unwrap();
        assert_eq!(cfg.engine.memory.0, 1 << 30);
        assert_eq!(cfg.engine.tier2.dir, PathBuf::from("vmtier-data/tier2"));
        let ha = RunConfig::parse(include_str!("../../../examples/ha.toml")).unwrap();
        assert_eq!(ha.replication.secondary_dram, Some(ByteSize(48 << 20)));
        assert_eq!(ha.workload.guest, GuestChoice::Vm);
    }

    #[test]
    fn an_unset_dram_budget_follows_the_guest() {
        let small = RunConfig::parse("[engine]\nmemory = \"64MiB\"").unwrap();
        assert_eq!(small.engine.dram, ByteSize(16 << 20), "a quarter of a small guest");
        let big = RunConfig::parse("[engine]\nmemory = \"4GiB\"").unwrap();
        assert_eq!(big.engine.dram, ByteSize(256 << 20), "at most the engine's default");
        let set = RunConfig::parse("[engine]\nmemory = \"64MiB\"\ndram = \"32MiB\"").unwrap();
        assert_eq!(set.engine.dram, ByteSize(32 << 20), "a given budget stays");
        let mut cli = RunConfig::parse("[engine]\nmemory = \"64MiB\"").unwrap();
        cli.set_dram(ByteSize(64 << 20));
        cli.finish().unwrap();
        assert_eq!(cli.engine.dram, ByteSize(64 << 20), "a command-line budget stays");
    }

    #[test]
    fn errors_name_the_key() {
        let e = format!("{:#}", RunConfig::parse("[engine]\ndram = \"8GiB\"").unwrap_err());
        assert!(e.contains("engine.dram") && e.contains("8GiB") && e.contains("cannot exceed"), "{e}");
        let e = format!("{:#}", RunConfig::parse("[workload]\nkind = \"random\"").unwrap_err());
        assert!(e.contains("workload.kind") && e.contains("zipf, scan"), "{e}");
        let e = format!("{:#}", RunConfig::parse("[engine]\nmemroy = \"1GiB\"").unwrap_err());
        assert!(e.contains("memroy"), "{e}");
        let e = format!("{:#}", RunConfig::parse("[engine.mtm]\npolicy = \"lru\"").unwrap_err());
        assert!(e.contains("lru") && e.contains("hotset"), "{e}");
        let e = format!("{:#}", RunConfig::parse("[engine]\nmemory = \"1 gallon\"").unwrap_err());
        assert!(e.contains("1 gallon"), "{e}");
    }

    #[test]
    fn replication_settings_are_checked() {
        let ok = RunConfig::parse("[replication]\ninterval_ms = 25\nsecondary_dram = \"64MiB\"").unwrap();
        assert_eq!(ok.replication.interval_ms, 25);
        let e = format!("{:#}", RunConfig::parse("[replication]\ninterval_ms = 0").unwrap_err());
        assert!(e.contains("replication.interval_ms") && e.contains("5 to 60000"), "{e}");
        let e =
            format!("{:#}", RunConfig::parse("[replication]\nheartbeat_ms = 500\nlease_timeout_ms = 600").unwrap_err());
        assert!(e.contains("lease_timeout_ms") && e.contains("3 heartbeats"), "{e}");
        let e = format!("{:#}", RunConfig::parse("[replication]\nsecondary_dram = \"2GiB\"").unwrap_err());
        assert!(e.contains("secondary_dram") && e.contains("engine.memory"), "{e}");
        let e = format!("{:#}", RunConfig::parse("[replication]\nintervall_ms = 5").unwrap_err());
        assert!(e.contains("intervall_ms"), "{e}");
        let secret = RunConfig::parse("[replication]\nsecret_access_key = \"hunter2\"").unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn metrics_bind_to_loopback_unless_allowed() {
        assert!(RunConfig::parse("[metrics]\naddr = \"127.0.0.1:9898\"").is_ok());
        assert!(RunConfig::parse("[metrics]\naddr = \"[::1]:9898\"").is_ok());
        let e = format!("{:#}", RunConfig::parse("[metrics]\naddr = \"0.0.0.0:9898\"").unwrap_err());
        assert!(e.contains("metrics.addr") && e.contains("allow_remote"), "{e}");
        let ok = RunConfig::parse("[metrics]\naddr = \"0.0.0.0:9898\"\nallow_remote = true").unwrap();
        assert!(ok.metrics.allow_remote);
    }

    /// Planted credentials appear in no `Debug` output (configs, their S3 settings, the key).
    #[test]
    fn planted_credentials_never_show_in_debug() {
        let text = "[engine.tier3]\nurl = \"s3://b/p\"\nendpoint = \"http://PLANTEDUSER:PLANTEDPASS@127.0.0.1:9\"\n\
                    access_key_id = \"AKIAPLANTEDID\"\nsecret_access_key = \"PLANTEDSECRET\"\n\
                    [replication]\nshared = \"s3://PLANTEDUSER:PLANTEDPASS@b/ha\"\naccess_key_id = \"AKIAPLANTEDID\"\n\
                    secret_access_key = \"PLANTEDSECRET\"\n";
        let cfg = RunConfig::parse(text).unwrap();
        let layout_cfg = vmtier_storage::ObjectConfig {
            url: cfg.replication.shared.clone().unwrap(),
            endpoint: cfg.engine.tier3.endpoint.clone(),
            access_key_id: cfg.replication.access_key_id.clone(),
            secret_access_key: cfg.replication.secret_access_key.clone(),
            ..vmtier_storage::ObjectConfig::new("x")
        };
        let all = format!("{cfg:?} {:?} {:?} {layout_cfg:?}", cfg.engine, cfg.engine.tier3.object_config());
        let json = serde_json::to_string(&cfg.engine).unwrap();
        for secret in ["PLANTEDSECRET", "AKIAPLANTEDID", "PLANTEDPASS", "PLANTEDUSER"] {
            assert!(!all.contains(secret), "{secret} in Debug: {all}");
            assert!(!json.contains(secret), "{secret} in JSON: {json}");
        }
        assert!(all.contains("<redacted>"), "{all}");
    }

    #[test]
    fn explicit_tier_locations_are_kept() {
        let cfg = RunConfig::parse("[engine.tier3]\nurl = \"s3://bucket/vm1\"").unwrap();
        assert_eq!(cfg.engine.tier3.url, "s3://bucket/vm1");
        assert_eq!(cfg.engine.tier2.dir, PathBuf::from("vmtier-data/tier2"));
    }
}
