//! vmtier-vm: a KVM micro-VM whose RAM is vmtier's tiered memory.
//!
//! - [`MicroVm`]: one VM, one vCPU in 64-bit long mode at CPL3 over identity-mapped memory, a
//!   port-I/O hypercall ABI ([`abi`]), vCPU state save/restore ([`VcpuState`]) and KVM's dirty
//!   log ([`MicroVm::take_dirty_pages`]).
//! - [`GUEST_ELF`]: the freestanding guest program built from `guest/` by `build.rs`, with the
//!   workloads `zipf`, `scan`, `phases`, `uniform`, `kv` and `bfs`.
//!
//! See `docs/vm.md`.

#[path = "../abi.rs"]
pub mod abi;
pub mod elf;
pub mod error;
pub mod memory;
pub mod runner;
pub mod state;
pub mod vm;

pub use elf::GuestImage;
pub use error::VmError;
pub use memory::GuestRam;
pub use runner::{GuestLatency, GuestOutcome, GuestSpec, GuestWorkload, run_guest};
pub use state::VcpuState;
pub use vm::{GuestEvent, MicroVm, Pauser, RunExit, VmOptions, tsc_per_ms};

/// The guest program built from `guest/` (an ELF executable; see `docs/vm.md`).
pub static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmtier-guest.elf"));

/// Whether `/dev/kvm` can be opened and a VM created (the micro-VM can run here).
pub fn kvm_usable() -> Result<(), VmError> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| VmError::KvmUnavailable(format!("open /dev/kvm: {e}")))?;
    kvm.create_vm().map_err(|e| VmError::KvmUnavailable(format!("KVM_CREATE_VM: {e}")))?;
    Ok(())
}
