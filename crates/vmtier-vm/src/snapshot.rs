//! Snapshot files, Firecracker-style: a raw memory file (guest-physical 0 at offset 0, holes
//! where the guest memory is zero) and a vCPU state file.
//!
//! The state file (little-endian):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `VMTSNAP1` |
//! | 8 | 4 | format version, 1 |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | guest RAM bytes (the memory file's size) |
//! | 24 | 8 | length `n` of the vCPU state |
//! | 32 | n | the vCPU state ([`VcpuState::to_bytes`], itself checksummed) |
//! | 32 + n | 4 | crc32c of bytes `0..32 + n` |
//!
//! Both files are written under temporary names, synced, then renamed, so a crash never leaves
//! a half-written snapshot under the final names.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::VmError;
use crate::memory::GuestRam;
use crate::state::VcpuState;

/// Name of the memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Name of the vCPU state file in a snapshot directory.
pub const STATE_FILE: &str = "vcpu-state";

const MAGIC: &[u8; 8] = b"VMTSNAP1";
const VERSION: u32 = 1;
const HEADER: usize = 32;
/// Largest vCPU state accepted (the real one is about 6 KiB).
const MAX_STATE: u64 = 1 << 20;

/// The files of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// The raw memory file.
    pub memory: PathBuf,
    /// The vCPU state file.
    pub state: PathBuf,
}

impl SnapshotFiles {
    /// The files of a snapshot in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self { memory: dir.join(MEMORY_FILE), state: dir.join(STATE_FILE) }
    }
}

/// A decoded state file.
#[derive(Debug, Clone)]
pub struct SavedState {
    /// Size of guest RAM the state belongs to.
    pub ram_bytes: u64,
    /// The vCPU.
    pub vcpu: VcpuState,
}

/// What went wrong writing or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading guest memory failed.
    #[error("reading guest memory")]
    Memory(#[source] VmError),
    /// A state file that is not one, or is damaged.
    #[error("{path} is not a usable vmtier vCPU state file: {why}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// Writes guest RAM to `dir/memory` and `state` to `dir/vcpu-state` (the guest must be paused).
pub fn write(dir: &Path, ram: GuestRam<'_>, state: &VcpuState) -> Result<SnapshotFiles, SnapshotError> {
    let files = SnapshotFiles::in_dir(dir);
    std::fs::create_dir_all(dir).map_err(io("create the directory", dir))?;
    let mem_tmp = dir.join(format!(".{MEMORY_FILE}.tmp"));
    let state_tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let create = |p: &Path| OpenOptions::new().write(true).create(true).truncate(true).open(p).map_err(io("create", p));
    let mem = create(&mem_tmp)?;
    mem.set_len(ram.len()).map_err(io("size", &mem_tmp))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut gpa = 0;
    while gpa < ram.len() {
        let n = buf.len().min((ram.len() - gpa) as usize);
        ram.read(gpa, &mut buf[..n]).map_err(SnapshotError::Memory)?;
        // Zero pages stay holes, as Firecracker's memory files do for untouched memory.
        for (i, page) in buf[..n].chunks(crate::abi::PAGE as usize).enumerate() {
            if page.iter().any(|&b| b != 0) {
                let at = gpa + i as u64 * crate::abi::PAGE;
                mem.write_all_at(page, at).map_err(io("write", &mem_tmp))?;
            }
        }
        gpa += n as u64;
    }
    mem.sync_all().map_err(io("sync", &mem_tmp))?;
    let mut st = create(&state_tmp)?;
    st.write_all(&encode_state(ram.len(), state)).map_err(io("write", &state_tmp))?;
    st.sync_all().map_err(io("sync", &state_tmp))?;
    std::fs::rename(&mem_tmp, &files.memory).map_err(io("rename", &mem_tmp))?;
    std::fs::rename(&state_tmp, &files.state).map_err(io("rename", &state_tmp))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))?;
    Ok(files)
}

/// Encodes a state file (see the module docs).
pub fn encode_state(ram_bytes: u64, state: &VcpuState) -> Vec<u8> {
    let vcpu = state.to_bytes();
    let mut out = Vec::with_capacity(HEADER + vcpu.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&ram_bytes.to_le_bytes());
    out.extend_from_slice(&(vcpu.len() as u64).to_le_bytes());
    out.extend_from_slice(&vcpu);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a state file's bytes, checking magic, version, lengths and checksums; the error
/// says what is wrong.
pub fn decode_state(b: &[u8]) -> Result<SavedState, String> {
    if b.len() < HEADER + 4 || &b[..8] != MAGIC {
        return Err("bad magic (not a vmtier snapshot state file)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != VERSION {
        return Err(format!("format version {version}; this build reads version {VERSION}"));
    }
    let len = u64_at(24);
    if len > MAX_STATE || HEADER as u64 + len + 4 != b.len() as u64 {
        return Err(format!("the state length {len} does not match the file size {}", b.len()));
    }
    let end = HEADER + len as usize;
    let want = u32_at(end);
    if crc32c::crc32c(&b[..end]) != want {
        return Err("checksum mismatch: the file is corrupt or truncated".into());
    }
    let vcpu = VcpuState::from_bytes(&b[HEADER..end]).map_err(|e| e.to_string())?;
    Ok(SavedState { ram_bytes: u64_at(16), vcpu })
}

/// Reads and checks a state file.
pub fn read_state(path: &Path) -> Result<SavedState, SnapshotError> {
    let b = std::fs::read(path).map_err(|source| SnapshotError::Io { op: "read", path: path.into(), source })?;
    decode_state(&b).map_err(|why| SnapshotError::BadState { path: path.into(), why })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> VcpuState {
        VcpuState {
            regs: kvm_bindings::kvm_regs { rip: 0x20_1234, rax: 7, ..Default::default() },
            sregs: kvm_bindings::kvm_sregs { cr3: 0x1000, ..Default::default() },
            fpu: kvm_bindings::kvm_fpu::default(),
            xsave: None,
            xcrs: None,
        }
    }

    #[test]
    fn state_file_round_trips() {
        let b = encode_state(64 << 20, &state());
        let s = decode_state(&b).unwrap();
        assert_eq!(s.ram_bytes, 64 << 20);
        assert_eq!(s.vcpu.regs.rip, 0x20_1234);
        assert_eq!(s.vcpu.regs.rax, 7);
    }

    #[test]
    fn damaged_state_files_are_refused() {
        let b = encode_state(64 << 20, &state());
        for i in [0, 8, 16, 24, 40, b.len() - 1] {
            let mut c = b.clone();
            c[i] ^= 1;
            assert!(decode_state(&c).is_err(), "flip at {i}");
        }
        for n in [0, 10, HEADER, b.len() - 1] {
            assert!(decode_state(&b[..n]).is_err(), "cut at {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode_state(&long).unwrap_err().contains("does not match"));
    }

    #[test]
    fn memory_file_is_raw_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let words: Vec<std::sync::atomic::AtomicU64> = (0..(1 << 20) / 8).map(|_| Default::default()).collect();
        let ram = GuestRam::new(&words);
        ram.write(5 * 4096 + 8, &[1, 2, 3]).unwrap();
        let files = write(dir.path(), ram, &state()).unwrap();
        let mem = std::fs::read(&files.memory).unwrap();
        assert_eq!(mem.len(), 1 << 20);
        assert_eq!(&mem[5 * 4096 + 8..5 * 4096 + 11], &[1, 2, 3]);
        assert_eq!(mem.iter().map(|&b| u64::from(b)).sum::<u64>(), 6);
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&files.memory).unwrap().blocks() * 512 < 1 << 20, "zero pages are holes");
        let s = read_state(&files.state).unwrap();
        assert_eq!(s.ram_bytes, 1 << 20);
        assert!(!dir.path().join(".memory.tmp").exists());
    }
}
