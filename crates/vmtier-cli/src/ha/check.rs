//! The check log (`--check-log FILE` on `vmtier primary` and `vmtier secondary`): evidence that a
//! failover resumes exactly the memory the primary had at the checkpoint it resumes.
//!
//! It is a plain text file, separate from the replication log, appended to by every primary and
//! secondary of one VM and synced after each line, so it survives a SIGKILL of its writer:
//!
//! | line | written by | when |
//! |---|---|---|
//! | `capture E S DIGEST` | the primary of epoch `E` | before it tries to commit the checkpoint that will be log record `S`; `DIGEST` is of guest memory at the checkpoint's pause |
//! | `commit E S` | the primary of epoch `E` | after record `S` committed |
//! | `claim N` | a secondary | right after it claimed epoch `N`, before it reads the log's last records |
//! | `resume E S DIGEST N` | the secondary that claimed epoch `N` | when it resumes the VM from record `S` (of epoch `E`); `DIGEST` is of the bytes it resumes with: its warm pages from its own DRAM, every other page read from shared storage |
//!
//! `DIGEST` is [`digest`] of every page's crc32c, in hex. A checker (the crash test) requires
//! every resume to match the newest capture of the same `E S` before it, and no resume to be
//! older than a commit before its claim. (Not before the resume line itself: a slow takeover can
//! be overtaken by a newer one that claims, resumes and commits before the first writes its
//! resume line; the first is fenced and never commits.)

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use vmtier_engine::PAGE_SIZE;

/// crc32c of a page of zeros.
pub fn zero_page_crc() -> u32 {
    crc32c::crc32c(&[0u8; PAGE_SIZE])
}

/// The digest of guest memory whose page `i` has crc32c `crcs[i]`: order-sensitive, so two
/// pages swapped give another digest.
pub fn digest(crcs: &[u32]) -> u64 {
    // FNV-1a over the (page, crc) pairs, widened: cheap, and any difference in any page shows.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (page, &crc) in crcs.iter().enumerate() {
        for v in [page as u64, u64::from(crc)] {
            h ^= v;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// An open check log.
#[derive(Debug)]
pub struct CheckLog {
    file: File,
}

impl CheckLog {
    /// Opens `path` for appending, creating it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the check log {}", path.display()))?;
        Ok(Self { file })
    }

    fn line(&mut self, line: String) -> anyhow::Result<()> {
        // One write per line: appends from several processes never interleave within a line.
        self.file.write_all(format!("{line}\n").as_bytes()).context("writing the check log")?;
        self.file.sync_data().context("syncing the check log")
    }

    /// `capture E S DIGEST`.
    pub fn capture(&mut self, epoch: u64, seq: u64, digest: u64) -> anyhow::Result<()> {
        self.line(format!("capture {epoch} {seq} {digest:016x}"))
    }

    /// `commit E S`.
    pub fn commit(&mut self, epoch: u64, seq: u64) -> anyhow::Result<()> {
        self.line(format!("commit {epoch} {seq}"))
    }

    /// `claim N`.
    pub fn claim(&mut self, new_epoch: u64) -> anyhow::Result<()> {
        self.line(format!("claim {new_epoch}"))
    }

    /// `resume E S DIGEST N`.
    pub fn resume(&mut self, epoch: u64, seq: u64, digest: u64, new_epoch: u64) -> anyhow::Result<()> {
        self.line(format!("resume {epoch} {seq} {digest:016x} {new_epoch}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_sees_order_and_content() {
        let a = digest(&[1, 2, 3]);
        assert_eq!(a, digest(&[1, 2, 3]));
        assert_ne!(a, digest(&[2, 1, 3]));
        assert_ne!(a, digest(&[1, 2, 4]));
        assert_ne!(a, digest(&[1, 2]));
    }

    #[test]
    fn lines_append() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("check");
        CheckLog::open(&p).unwrap().capture(2, 7, 0xab).unwrap();
        let mut c = CheckLog::open(&p).unwrap();
        c.commit(2, 7).unwrap();
        c.claim(3).unwrap();
        c.resume(2, 7, 0xab, 3).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, "capture 2 7 00000000000000ab\ncommit 2 7\nclaim 3\nresume 2 7 00000000000000ab 3\n");
    }
}
