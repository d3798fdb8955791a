//! `vmtier failover` (ask the secondary to take over now) and `vmtier status` (lease,
//! checkpoint lag, warm-set coverage).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use vmtier_repl::read_heartbeat;

use super::Layout;
use super::secondary::{FAILOVER_REQUEST_KEY, STATUS_KEY};
use crate::run_config::RunConfig;

/// `vmtier failover`: asks the secondary to take over and waits until it has claimed the log
/// (which fences the primary), at most `wait`.
pub fn failover(cfg: &RunConfig, wait: Duration) -> anyhow::Result<()> {
    let layout = Layout::new(cfg)?;
    let store = layout.open_store()?;
    let before = read_heartbeat(&*store, &layout.key).context("reading the primary's heartbeat")?.map(|h| h.epoch);
    let secondary: Option<Value> =
        store.get(STATUS_KEY).context("reading the secondary's status")?.and_then(|b| serde_json::from_slice(&b).ok());
    let Some(secondary) = secondary else {
        bail!(
            "no secondary follows the log at {}: none has ever reported its status there; start \
             `vmtier secondary -c FILE` with this config first (nothing was requested)",
            store.describe()
        );
    };
    if secondary["role"].as_str() == Some("primary") {
        bail!(
            "the secondary {} already took over (it is the primary now); there is no standby to fail over to",
            secondary["holder"].as_str().unwrap_or("?")
        );
    }
    store.put(FAILOVER_REQUEST_KEY, super::holder_name().as_bytes()).context("writing the failover request")?;
    let deadline = Instant::now() + wait;
    loop {
        if store.get(FAILOVER_REQUEST_KEY).context("reading the failover request")?.is_none() {
            let now = read_heartbeat(&*store, &layout.key).ok().flatten().map(|h| h.epoch);
            println!(
                "vmtier failover: the secondary claimed the log (epoch {} -> {}); the old primary is fenced",
                before.map_or("-".into(), |e| e.to_string()),
                now.map_or("-".into(), |e| e.to_string())
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = store.delete(FAILOVER_REQUEST_KEY);
            bail!(
                "no secondary took over within {:.0} s: is `vmtier secondary` running with this config? \
                 (the request was withdrawn)",
                wait.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `vmtier status`: prints (or returns as JSON) the lease, the log head and the secondary's view.
pub fn status(cfg: &RunConfig, json_out: bool) -> anyhow::Result<()> {
    let layout = Layout::new(cfg)?;
    let store = layout.open_store()?;
    let hb = read_heartbeat(&*store, &layout.key).context("reading the primary's heartbeat")?;
    let secondary: Option<Value> =
        store.get(STATUS_KEY).context("reading the secondary's status")?.and_then(|b| serde_json::from_slice(&b).ok());
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let head = hb.as_ref().map_or(0, |h| h.last_committed);
    let applied = secondary.as_ref().and_then(|s| s["applied_seq"].as_u64());
    let v = json!({
        "lease": hb.as_ref().map(|h| json!({
            "epoch": h.epoch,
            "holder": h.holder,
            "heartbeat_counter": h.counter,
            "heartbeat_age_ms": now_ms.saturating_sub(h.unix_ms),
        })),
        "last_committed_seq": head,
        "secondary": secondary,
        "checkpoint_lag": applied.map(|a| head.saturating_sub(a)),
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match &hb {
        Some(h) => println!(
            "lease: epoch {} held by {}, last heartbeat {} ms ago (by the writer's clock), last committed checkpoint {}",
            h.epoch,
            h.holder,
            now_ms.saturating_sub(h.unix_ms),
            h.last_committed
        ),
        None => println!("lease: no primary has written a heartbeat yet"),
    }
    match &secondary {
        Some(s) => println!(
            "secondary: {} ({}), applied checkpoint {} (lag {}), warm {} of {} pages, coverage of the hot list {:.0}%",
            s["holder"].as_str().unwrap_or("?"),
            s["role"].as_str().unwrap_or("?"),
            s["applied_seq"],
            applied.map_or(0, |a| head.saturating_sub(a)),
            s["warm_pages"],
            s["warm_budget_pages"],
            s["warm_coverage"].as_f64().unwrap_or(0.0) * 100.0
        ),
        None => println!("secondary: none has reported"),
    }
    Ok(())
}
