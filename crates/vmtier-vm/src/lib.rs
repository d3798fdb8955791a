//! vmtier-vm: a KVM micro-VM whose RAM is vmtier's tiered memory.
//!
//! - [`MicroVm`]: one VM, one vCPU in 64-bit long mode at CPL3 over identity-mapped memory, a
//!   port-I/O hypercall ABI ([`abi`]), vCPU state save/restore ([`VcpuState`]) and KVM's dirty
//!   log ([`MicroVm::take_dirty_pages`]).
//! - [`GUEST_ELF`]: the freestanding guest program built from `guest/` by `build.rs`, with the
//!   workloads `zipf`, `scan`, `phases`, `uniform`, `kv`, `bfs` and `trace` (a recorded page
//!   trace, see `docs/traces.md`).
//! - [`page_server`]: guest memory served from another process over userfaultfd, with
//!   Firecracker's handshake (`docs/page-server.md`); [`snapshot`]: Firecracker-style snapshot
//!   files (raw memory, vCPU state).
//!
//! See `docs/vm.md`.

#[path = "../abi.rs"]
pub mod abi;
pub mod elf;
pub mod error;
pub mod memory;
pub mod page_server;
pub mod runner;
pub mod snapshot;
pub mod state;
pub mod vm;

pub use elf::GuestImage;
pub use error::VmError;
pub use memory::GuestRam;
pub use runner::{GuestLatency, GuestOutcome, GuestSpec, GuestWorkload, Start, run_guest, run_guest_with};
pub use state::VcpuState;
pub use vm::{GuestEvent, MicroVm, Pauser, RunExit, VmOptions, tsc_per_ms};

/// The guest program built from `guest/` (an ELF executable; see `docs/vm.md`).
pub static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmtier-guest.elf"));

/// The KVM device: `$VMTIER_KVM_DEVICE` if set (to test the fallback, or a KVM device node
/// elsewhere), else `/dev/kvm`.
pub fn kvm_device() -> std::path::PathBuf {
    std::env::var_os("VMTIER_KVM_DEVICE").map_or_else(|| "/dev/kvm".into(), Into::into)
}

/// Opens the KVM device.
pub(crate) fn open_kvm() -> Result<kvm_ioctls::Kvm, VmError> {
    let path = kvm_device();
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| VmError::KvmUnavailable(format!("bad device path {}", path.display())))?;
    kvm_ioctls::Kvm::new_with_path(&c_path)
        .map_err(|e| VmError::KvmUnavailable(format!("open {}: {e}", path.display())))
}

/// Whether the KVM device can be opened and a VM created (the micro-VM can run here).
pub fn kvm_usable() -> Result<(), VmError> {
    let kvm = open_kvm()?;
    kvm.create_vm().map_err(|e| VmError::KvmUnavailable(format!("KVM_CREATE_VM: {e}")))?;
    Ok(())
}
