//! Tiers mode: a VMM that passed its guest memfd (the vmtier extension) gets vmtier's engine
//! over its memory ([`Engine::start_external`]): DRAM under a budget, tier 2 and tier 3, the
//! MTM. The engine's fault handlers serve the peer's userfaultfd; this thread only watches the
//! peer and shuts the engine down when it goes.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};
use vmtier_engine::{ByteSize, Engine, ExternalMemory, FEATURES, PAGE_SIZE};
use vmtier_uffd::{Memfd, Uffd};

use super::handshake::Handshake;
use super::server::{ConnEnd, ConnError, ConnReport, Peer, Shared};
use super::sys;

pub(super) fn serve(
    shared: &Shared,
    id: u64,
    hs: &Handshake,
    uffd: OwnedFd,
    memfd: OwnedFd,
    peer: &mut Peer<'_>,
    report: &mut ConnReport,
) -> Result<ConnEnd, ConnError> {
    let bad = |why: String| ConnError::Tiers(why);
    let [r] = hs.regions[..] else {
        return Err(bad(format!(
            "the engine serves one contiguous region; the handshake has {} (map guest memory as one memfd mapping)",
            hs.regions.len()
        )));
    };
    if r.page_size != PAGE_SIZE as u64 {
        return Err(bad(format!(
            "the engine serves {PAGE_SIZE}-byte pages; the region has {}-byte pages",
            r.page_size
        )));
    }
    if r.memfd_offset != Some(0) {
        return Err(bad(format!(
            "the region must map the memfd from offset 0 (`vmtier_memfd_offset` is {:?})",
            r.memfd_offset
        )));
    }
    let memfd = Memfd::from_fd(memfd).map_err(ConnError::Adopt)?;
    if memfd.size() != r.size {
        return Err(bad(format!(
            "the memfd is {} bytes but the region is {} bytes; map all of it",
            memfd.size(),
            r.size
        )));
    }
    // The extension's contract: the peer created the userfaultfd with the engine's features
    // (`register_guest_memory`); the kernel cannot tell us.
    let uffd = Uffd::from_fd(uffd, FEATURES).map_err(ConnError::Adopt)?;
    let mut cfg = shared.cfg.engine.clone();
    cfg.memory = ByteSize(r.size);
    if cfg.dram.0 > r.size {
        cfg.dram = ByteSize(r.size);
    }
    // Declared before the engine, so dropped after it on every path.
    let dirs = ConnDirs::assign(&mut cfg, id);
    let engine = Engine::start_external(cfg, ExternalMemory { memfd, uffd, uffd_base: r.host_addr as usize })
        .map_err(ConnError::Engine)?;
    info!(id, guest_bytes = r.size, dram = %engine.config().dram, tier2 = %engine.config().tier2.dir.display(),
        "serving the peer's memory with the engine");
    if let Err(e) = peer.say_ready(r.size) {
        warn!(id, error = %e, "cannot tell the peer its memory is served; it will give up waiting");
    }
    let end = loop {
        if shared.stop.load(Ordering::SeqCst) {
            break ConnEnd::ServerShutdown;
        }
        let revents = sys::poll(&peer.poll_fds(), Duration::from_millis(100)).map_err(ConnError::Poll)?;
        if let Some(end) = peer.check(&revents) {
            break end;
        }
    };
    report.engine = Some(engine.shutdown());
    drop(dirs);
    Ok(end)
}

/// Per-connection tier-2 directory and tier-3 location, so engines of different VMs never share
/// storage; local ones are removed when the connection ends (their pages die with the VM).
struct ConnDirs {
    local: Vec<PathBuf>,
}

impl ConnDirs {
    fn assign(cfg: &mut vmtier_engine::EngineConfig, id: u64) -> Self {
        let name = format!("conn-{}-{id}", std::process::id());
        let mut local = Vec::new();
        cfg.tier2.dir = cfg.tier2.dir.join(&name);
        local.push(cfg.tier2.dir.clone());
        let url = cfg.tier3.url.trim_end_matches('/').to_string();
        cfg.tier3.url = format!("{url}/{name}");
        if let Some(path) = cfg.tier3.url.strip_prefix("file://") {
            local.push(PathBuf::from(path));
        } else if !cfg.tier3.url.contains("://") {
            local.push(PathBuf::from(&cfg.tier3.url));
        }
        Self { local }
    }
}

impl Drop for ConnDirs {
    fn drop(&mut self) {
        for dir in &self.local {
            if let Err(e) = std::fs::remove_dir_all(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(dir = %dir.display(), error = %e, "cannot remove the connection's tier directory");
            }
        }
    }
}
