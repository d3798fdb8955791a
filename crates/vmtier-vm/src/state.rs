//! vCPU state saved to bytes and restored: general registers, special registers (segments,
//! control registers, EFER, descriptor tables), the FPU/SSE state and, where KVM offers it,
//! the XSAVE area and XCRs.
//!
//! Format (little-endian): magic `VMTVCPU1`, then sections `tag: u32, len: u32, bytes`, then a
//! crc32c of everything before it. Each section is the raw `kvm_*` structure of that tag; its
//! length must match this build's structure exactly, so a state from an incompatible build is
//! rejected rather than misread.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs, kvm_xcrs, kvm_xsave};
use kvm_ioctls::VcpuFd;

use crate::error::VmError;

const MAGIC: &[u8; 8] = b"VMTVCPU1";
const TAG_REGS: u32 = 1;
const TAG_SREGS: u32 = 2;
const TAG_FPU: u32 = 3;
const TAG_XSAVE: u32 = 4;
const TAG_XCRS: u32 = 5;

/// The saved state of one vCPU.
#[derive(Clone)]
pub struct VcpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// x87/SSE state.
    pub fpu: kvm_fpu,
    /// The XSAVE area, where KVM supports it.
    pub xsave: Option<Box<[u32; 1024]>>,
    /// Extended control registers, where KVM supports them.
    pub xcrs: Option<kvm_xcrs>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("rsp", &format_args!("{:#x}", self.regs.rsp))
            .field("xsave", &self.xsave.is_some())
            .finish_non_exhaustive()
    }
}

/// Marker for the bindgen `kvm_*` structures: `#[repr(C)]`, integers and integer arrays only.
///
/// # Safety
/// Every bit pattern must be a valid value and the type must have no padding that could be
/// uninitialised when read as bytes (bindgen makes all padding explicit fields).
unsafe trait KvmPod: Copy + Default {}
// SAFETY: bindgen-generated integer-only repr(C) structures (see KvmPod).
unsafe impl KvmPod for kvm_regs {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_sregs {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_fpu {}
// SAFETY: as above.
unsafe impl KvmPod for kvm_xcrs {}

fn bytes_of<T: KvmPod>(v: &T) -> &[u8] {
    // SAFETY: T is KvmPod: initialised, no implicit padding; the slice borrows `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

fn from_bytes<T: KvmPod>(b: &[u8]) -> Option<T> {
    (b.len() == size_of::<T>()).then(|| {
        // SAFETY: exactly size_of::<T>() bytes; any bit pattern is a valid T (KvmPod).
        unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
    })
}

fn xsave_bytes(region: &[u32; 1024]) -> Vec<u8> {
    region.iter().flat_map(|w| w.to_le_bytes()).collect()
}

impl VcpuState {
    /// Reads the state of `vcpu`.
    pub fn save(vcpu: &VcpuFd) -> Result<Self, VmError> {
        Ok(Self {
            regs: vcpu.get_regs().map_err(VmError::kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(VmError::kvm("KVM_GET_SREGS"))?,
            fpu: vcpu.get_fpu().map_err(VmError::kvm("KVM_GET_FPU"))?,
            xsave: vcpu.get_xsave().ok().map(|x| Box::new(x.region)),
            xcrs: vcpu.get_xcrs().ok(),
        })
    }

    /// Loads this state into `vcpu`.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), VmError> {
        vcpu.set_sregs(&self.sregs).map_err(VmError::kvm("KVM_SET_SREGS"))?;
        if let Some(x) = &self.xcrs {
            vcpu.set_xcrs(x).map_err(VmError::kvm("KVM_SET_XCRS"))?;
        }
        match &self.xsave {
            Some(region) => {
                let mut x = kvm_xsave::default();
                x.region = **region;
                // SAFETY: the structure is the 4 KiB legacy layout with no `extra` data;
                // KVM_SET_XSAVE reads exactly size_of::<kvm_xsave>() bytes from it.
                unsafe { vcpu.set_xsave(&x) }.map_err(VmError::kvm("KVM_SET_XSAVE"))?
            }
            None => vcpu.set_fpu(&self.fpu).map_err(VmError::kvm("KVM_SET_FPU"))?,
        }
        vcpu.set_regs(&self.regs).map_err(VmError::kvm("KVM_SET_REGS"))
    }

    /// Encodes the state (see the module docs for the format).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut section = |tag: u32, b: &[u8]| {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        };
        section(TAG_REGS, bytes_of(&self.regs));
        section(TAG_SREGS, bytes_of(&self.sregs));
        section(TAG_FPU, bytes_of(&self.fpu));
        if let Some(x) = &self.xsave {
            section(TAG_XSAVE, &xsave_bytes(x));
        }
        if let Some(x) = &self.xcrs {
            section(TAG_XCRS, bytes_of(x));
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a state written by [`to_bytes`](Self::to_bytes), checking magic, checksum and
    /// every section's size.
    pub fn from_bytes(b: &[u8]) -> Result<Self, VmError> {
        let bad = |m: String| VmError::BadState(m);
        if b.len() < MAGIC.len() + 4 || &b[..MAGIC.len()] != MAGIC {
            return Err(bad("not a vmtier vCPU state (bad magic)".into()));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != want {
            return Err(bad("checksum mismatch: the state is corrupt or truncated".into()));
        }
        let (mut regs, mut sregs, mut fpu, mut xsave, mut xcrs) = (None, None, None, None, None);
        let mut rest = &body[MAGIC.len()..];
        while !rest.is_empty() {
            if rest.len() < 8 {
                return Err(bad("truncated section header".into()));
            }
            let tag = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
            let data = rest.get(8..8 + len).ok_or_else(|| bad(format!("section {tag} runs past the end")))?;
            let size_err = || bad(format!("section {tag} has {len} bytes, which does not match this build"));
            match tag {
                TAG_REGS => regs = Some(from_bytes::<kvm_regs>(data).ok_or_else(size_err)?),
                TAG_SREGS => sregs = Some(from_bytes::<kvm_sregs>(data).ok_or_else(size_err)?),
                TAG_FPU => fpu = Some(from_bytes::<kvm_fpu>(data).ok_or_else(size_err)?),
                TAG_XCRS => xcrs = Some(from_bytes::<kvm_xcrs>(data).ok_or_else(size_err)?),
                TAG_XSAVE => {
                    let mut x = Box::new([0u32; 1024]);
                    if data.len() != 4096 {
                        return Err(size_err());
                    }
                    for (dst, src) in x.iter_mut().zip(data.chunks_exact(4)) {
                        *dst = u32::from_le_bytes(src.try_into().expect("4 bytes"));
                    }
                    xsave = Some(x);
                }
                other => return Err(bad(format!("unknown section {other}"))),
            }
            rest = &rest[8 + len..];
        }
        Ok(Self {
            regs: regs.ok_or_else(|| bad("no register section".into()))?,
            sregs: sregs.ok_or_else(|| bad("no special-register section".into()))?,
            fpu: fpu.ok_or_else(|| bad("no FPU section".into()))?,
            xsave,
            xcrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VcpuState {
        let mut s = VcpuState {
            regs: kvm_regs { rip: 0x200123, rsp: 0x1ffff8, rax: 42, ..Default::default() },
            sregs: kvm_sregs { cr3: 0x1000, efer: 0x500, ..Default::default() },
            fpu: kvm_fpu { fcw: 0x37f, ..Default::default() },
            xsave: Some(Box::new([0; 1024])),
            xcrs: Some(kvm_xcrs::default()),
        };
        s.xsave.as_mut().unwrap()[7] = 0xdead_beef;
        s
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let b = s.to_bytes();
        let t = VcpuState::from_bytes(&b).unwrap();
        assert_eq!(t.regs.rip, 0x200123);
        assert_eq!(t.regs.rax, 42);
        assert_eq!(t.sregs.cr3, 0x1000);
        assert_eq!(t.fpu.fcw, 0x37f);
        assert_eq!(t.xsave.unwrap()[7], 0xdead_beef);
        assert_eq!(VcpuState::from_bytes(&b).unwrap().to_bytes(), b);
    }

    #[test]
    fn corruption_and_truncation_are_caught() {
        let b = sample().to_bytes();
        for i in [0, 9, 20, b.len() / 2, b.len() - 1] {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(VcpuState::from_bytes(&c).is_err(), "flip at {i}");
        }
        for n in [0, 8, 11, 100, b.len() - 1] {
            assert!(VcpuState::from_bytes(&b[..n]).is_err(), "cut at {n}");
        }
    }
}
