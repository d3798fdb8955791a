//! The disk's sequential rates, measured with `O_DIRECT` in the bench directory: a fresh file is
//! written in 1 MiB blocks with `O_DIRECT` (so the page cache holds none of it) and synced, then
//! read back in 1 MiB blocks, once with one request in flight (QD1) and once with several
//! threads taking the next block from a shared counter (one sequential stream at QD = threads).
//! The faster read rate is the disk's sequential read rate, from which the bench computes the
//! disk-bandwidth bound of a scan.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vmtier_uffd::AlignedBuf;

use super::BaselineError;

/// Bytes per request.
pub const BLOCK: usize = 1 << 20;

/// The measured rates, MB/s (10^6 bytes per second).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRate {
    /// Size of the probe file.
    pub file_bytes: u64,
    /// Bytes per request.
    pub block_bytes: u64,
    /// Sequential `O_DIRECT` write, QD1, including the final sync.
    pub write_mb_s: f64,
    /// Sequential `O_DIRECT` read, QD1.
    pub read_qd1_mb_s: f64,
    /// Sequential `O_DIRECT` read with `parallel_threads` requests in flight.
    pub read_parallel_mb_s: f64,
    /// Threads of the parallel read.
    pub parallel_threads: usize,
}

impl DiskRate {
    /// The disk's sequential read rate: the faster of the two reads, MB/s.
    pub fn read_mb_s(&self) -> f64 {
        self.read_qd1_mb_s.max(self.read_parallel_mb_s)
    }
}

/// The least time, seconds, in which `bytes` can be read at `read_mb_s`.
pub fn bound_secs(bytes: u64, read_mb_s: f64) -> f64 {
    bytes as f64 / (read_mb_s * 1e6)
}

/// Bytes a scan of `passes` passes over `footprint` bytes must read from storage when `fraction`
/// of it fits in DRAM: at best (keeping one fixed `fraction` resident) each pass reads the rest.
pub fn scan_storage_bytes(footprint: u64, fraction: f64, passes: u32) -> u64 {
    let missing = (footprint as f64 * (1.0 - fraction.clamp(0.0, 1.0))).round() as u64;
    missing * u64::from(passes)
}

/// Removes the probe file on drop.
struct ProbeFile(PathBuf);

impl Drop for ProbeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn open_direct(path: &Path, write: bool) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    if write {
        o.write(true).create(true).truncate(true).mode(0o600);
    } else {
        o.read(true);
    }
    o.custom_flags(libc::O_DIRECT).open(path)
}

/// Measures the rates over a fresh file of `bytes` (rounded up to whole blocks, at least one) in
/// `dir`, deleted afterwards.
pub fn measure(dir: &Path, bytes: u64, threads: usize) -> Result<DiskRate, BaselineError> {
    let path = dir.join(format!("vmtier-disk-probe-{}.dat", std::process::id()));
    let err = |op, source| BaselineError::DiskProbe { op, path: path.clone(), source };
    let blocks = bytes.div_ceil(BLOCK as u64).max(1);
    let len = blocks * BLOCK as u64;
    let _guard = ProbeFile(path.clone());

    let file = open_direct(&path, true).map_err(|e| err("creating with O_DIRECT", e))?;
    let mut buf = AlignedBuf::zeroed(BLOCK);
    let t0 = Instant::now();
    for b in 0..blocks {
        // Distinct, incompressible-looking content per block.
        let mut x = vmtier_workload::rng::SplitMix64::new(b ^ 0x5eed);
        for chunk in buf.chunks_exact_mut(8) {
            chunk.copy_from_slice(&x.next_u64().to_ne_bytes());
        }
        file.write_all_at(&buf, b * BLOCK as u64).map_err(|e| err("writing", e))?;
    }
    file.sync_all().map_err(|e| err("syncing", e))?;
    let write_secs = t0.elapsed().as_secs_f64();
    drop(file);

    let file = open_direct(&path, false).map_err(|e| err("opening with O_DIRECT", e))?;
    let t0 = Instant::now();
    for b in 0..blocks {
        file.read_exact_at(&mut buf, b * BLOCK as u64).map_err(|e| err("reading", e))?;
    }
    let qd1_secs = t0.elapsed().as_secs_f64();

    let threads = threads.max(1);
    let next = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<(), BaselineError> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> std::io::Result<()> {
                    let mut buf = AlignedBuf::zeroed(BLOCK);
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= blocks {
                            return Ok(());
                        }
                        file.read_exact_at(&mut buf, b * BLOCK as u64)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("probe reader panicked").map_err(|e| err("reading in parallel", e))?;
        }
        Ok(())
    })?;
    let par_secs = t0.elapsed().as_secs_f64();
    let mb = len as f64 / 1e6;
    Ok(DiskRate {
        file_bytes: len,
        block_bytes: BLOCK as u64,
        write_mb_s: mb / write_secs,
        read_qd1_mb_s: mb / qd1_secs,
        read_parallel_mb_s: mb / par_secs,
        parallel_threads: threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_bound_math() {
        let gib = 1u64 << 30;
        assert_eq!(scan_storage_bytes(4 * gib, 0.25, 3), 9 * gib);
        assert_eq!(scan_storage_bytes(4 * gib, 1.0, 3), 0);
        assert_eq!(scan_storage_bytes(4 * gib, 0.5, 1), 2 * gib);
        assert!((bound_secs(1_000_000_000, 500.0) - 2.0).abs() < 1e-9);
        let r = DiskRate {
            file_bytes: 0,
            block_bytes: 0,
            write_mb_s: 1.0,
            read_qd1_mb_s: 300.0,
            read_parallel_mb_s: 900.0,
            parallel_threads: 4,
        };
        assert_eq!(r.read_mb_s(), 900.0);
    }

    #[test]
    fn measures_and_deletes_the_probe_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = match measure(dir.path(), 4 << 20, 2) {
            Ok(r) => r,
            // tmpfs and some overlay file systems refuse O_DIRECT; nothing to measure there.
            Err(BaselineError::DiskProbe { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(r.file_bytes, 4 << 20);
        assert!(r.write_mb_s > 0.0 && r.read_qd1_mb_s > 0.0 && r.read_parallel_mb_s > 0.0, "{r:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
