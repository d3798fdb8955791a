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
        let name = conn_dir_name(std::process::id(), id);
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

/// The tier directories of a connection: `conn-<server pid>-<connection id>`.
fn conn_dir_name(pid: u32, id: u64) -> String {
    format!("conn-{pid}-{id}")
}

/// The server pid in a connection directory's name, if it is one.
fn conn_dir_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("conn-")?;
    let (pid, id) = rest.split_once('-')?;
    id.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes the connection directories that servers which are no longer running (killed, so
/// their [`ConnDirs`] never dropped) left under the tier-2 directory and a local tier 3. Their
/// pages died with their VMs. Directories of running servers sharing the data directory stay —
/// if they run in this pid namespace: "running" is `/proc/<pid>` existing here.
pub(super) fn sweep_dead_servers_dirs(cfg: &vmtier_engine::EngineConfig) {
    let tier3 = cfg.tier3.url.strip_prefix("file://").unwrap_or(&cfg.tier3.url);
    let mut roots = vec![cfg.tier2.dir.clone()];
    if !cfg.tier3.url.contains("://") || cfg.tier3.url.starts_with("file://") {
        roots.push(PathBuf::from(tier3));
    }
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = conn_dir_pid(&name.to_string_lossy()) else { continue };
            if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    info!(dir = %entry.path().display(), pid, "removed a dead page server's connection directory")
                }
                Err(e) => {
                    warn!(dir = %entry.path().display(), error = %e, "cannot remove a dead page server's directory")
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_directory_names_round_trip() {
        assert_eq!(conn_dir_pid(&conn_dir_name(4242, 7)), Some(4242));
        for other in ["conn-", "conn-12", "conn-x-1", "conn-12-x", "e3", "seg-00000001.vts"] {
            assert_eq!(conn_dir_pid(other), None, "{other}");
        }
    }

    #[test]
    fn a_dead_servers_directories_are_swept_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = vmtier_engine::EngineConfig::default();
        cfg.tier2.dir = dir.path().join("tier2");
        cfg.tier3.url = dir.path().join("tier3").to_string_lossy().into_owned();
        // A pid that cannot be running: above the kernel's pid_max (at most 2^22).
        let dead = conn_dir_name(1 << 23, 1);
        let live = conn_dir_name(std::process::id(), 1);
        let init = conn_dir_name(1, 3);
        for root in ["tier2", "tier3"] {
            for name in [&dead, &live, &init, &"e1".to_string()] {
                std::fs::create_dir_all(dir.path().join(root).join(name)).unwrap();
            }
        }
        sweep_dead_servers_dirs(&cfg);
        for root in ["tier2", "tier3"] {
            let root = dir.path().join(root);
            assert!(!root.join(&dead).exists(), "{dead} in {} is swept", root.display());
            for kept in [&live, &init, &"e1".to_string()] {
                assert!(root.join(kept).exists(), "{kept} in {} is kept", root.display());
            }
        }
    }
}
