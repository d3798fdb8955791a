//! A loader for the guest program: a static, non-relocatable x86-64 ELF executable whose
//! `PT_LOAD` segments lie in the image area of the layout (`abi::IMAGE_START_GPA..IMAGE_END_GPA`).

use crate::abi;
use crate::error::VmError;

/// One segment to copy into guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical (= virtual) address.
    pub addr: u64,
    /// Bytes from the file (the rest, up to `mem_size`, is zero).
    pub data: Vec<u8>,
    /// Size in memory.
    pub mem_size: u64,
}

/// A parsed guest program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Entry point.
    pub entry: u64,
    /// Loadable segments.
    pub segments: Vec<Segment>,
}

fn bad(msg: impl Into<String>) -> VmError {
    VmError::BadElf(msg.into())
}

/// The `N` bytes at `base + off`, or an error if they (or their offset) lie outside `b`.
/// Offsets come from the file, so every addition is checked.
fn field<const N: usize>(b: &[u8], base: usize, off: usize) -> Result<[u8; N], VmError> {
    base.checked_add(off)
        .and_then(|at| b.get(at..at.checked_add(N)?))
        .map(|s| s.try_into().expect("a slice of N bytes"))
        .ok_or_else(|| bad("truncated header (a header field lies beyond the end of the file)"))
}

fn u16_at(b: &[u8], base: usize, off: usize) -> Result<u16, VmError> {
    field(b, base, off).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], base: usize, off: usize) -> Result<u32, VmError> {
    field(b, base, off).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], base: usize, off: usize) -> Result<u64, VmError> {
    field(b, base, off).map(u64::from_le_bytes)
}

const PT_LOAD: u32 = 1;

impl GuestImage {
    /// Parses `elf`, checking that it is a 64-bit little-endian x86-64 executable whose
    /// segments fit the image area and whose entry point is inside a segment.
    pub fn parse(elf: &[u8]) -> Result<Self, VmError> {
        if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
            return Err(bad("not an ELF file (build guest programs as described in docs/vm.md)"));
        }
        if elf[4] != 2 || elf[5] != 1 {
            return Err(bad("not a 64-bit little-endian ELF file"));
        }
        if u16_at(elf, 0, 16)? != 2 {
            return Err(bad("not an executable (ET_EXEC); link it statically at a fixed address"));
        }
        if u16_at(elf, 0, 18)? != 62 {
            return Err(bad("not an x86-64 program"));
        }
        let entry = u64_at(elf, 0, 24)?;
        let phoff = u64_at(elf, 0, 32)? as usize;
        let phentsize = u16_at(elf, 0, 54)? as usize;
        let phnum = u16_at(elf, 0, 56)? as usize;
        if phentsize < 56 || phnum == 0 || phnum > 64 {
            return Err(bad(format!("{phnum} program headers of {phentsize} bytes")));
        }
        let mut segments = Vec::new();
        for i in 0..phnum {
            let ph = phoff.checked_add(i * phentsize).ok_or_else(|| bad("program header offset overflows"))?;
            if u32_at(elf, ph, 0)? != PT_LOAD {
                continue;
            }
            let offset = u64_at(elf, ph, 8)?;
            let vaddr = u64_at(elf, ph, 16)?;
            let filesz = u64_at(elf, ph, 32)?;
            let memsz = u64_at(elf, ph, 40)?;
            if filesz > memsz {
                return Err(bad(format!("segment {i}: file size {filesz} above memory size {memsz}")));
            }
            let end = vaddr.checked_add(memsz).ok_or_else(|| bad(format!("segment {i} wraps around")))?;
            if vaddr < abi::IMAGE_START_GPA || end > abi::IMAGE_END_GPA {
                return Err(bad(format!(
                    "segment {i} at {vaddr:#x}..{end:#x} is outside the image area {:#x}..{:#x}",
                    abi::IMAGE_START_GPA,
                    abi::IMAGE_END_GPA
                )));
            }
            let data = offset
                .checked_add(filesz)
                .and_then(|e| elf.get(offset as usize..e as usize))
                .ok_or_else(|| bad(format!("segment {i} data lies beyond the end of the file")))?;
            segments.push(Segment { addr: vaddr, data: data.to_vec(), mem_size: memsz });
        }
        if segments.is_empty() {
            return Err(bad("no loadable segment"));
        }
        if !segments.iter().any(|s| (s.addr..s.addr + s.mem_size).contains(&entry)) {
            return Err(bad(format!("entry point {entry:#x} is not inside a loadable segment")));
        }
        Ok(Self { entry, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_guest_parses() {
        let img = GuestImage::parse(crate::GUEST_ELF).unwrap();
        assert_eq!(img.entry, abi::IMAGE_START_GPA);
        assert!(img.segments.iter().all(|s| s.addr >= abi::IMAGE_START_GPA));
    }

    #[test]
    fn garbage_and_truncation_are_rejected_with_a_reason() {
        assert!(GuestImage::parse(b"hello").unwrap_err().to_string().contains("not an ELF"));
        let elf = crate::GUEST_ELF;
        for cut in [16, 40, 63, 64, 100, 200] {
            assert!(GuestImage::parse(&elf[..cut]).is_err(), "cut at {cut}");
        }
        let mut moved = elf.to_vec();
        moved[24..32].copy_from_slice(&0x10u64.to_le_bytes());
        assert!(GuestImage::parse(&moved).unwrap_err().to_string().contains("entry point"));
    }

    /// Found by the `guest_elf` fuzz target: a program-header offset near `usize::MAX` made the
    /// field reads overflow (a panic in debug builds) instead of reporting a truncated file.
    #[test]
    fn program_header_offsets_near_the_end_of_the_address_space_are_rejected() {
        for phoff in [u64::MAX, u64::MAX - 3, u64::MAX - 8, u64::MAX - 40, u64::MAX - 56 * 2] {
            let mut elf = crate::GUEST_ELF.to_vec();
            elf[32..40].copy_from_slice(&phoff.to_le_bytes());
            let err = GuestImage::parse(&elf).expect_err("a program header outside the file");
            assert!(err.to_string().contains("beyond the end of the file"), "phoff {phoff:#x}: {err}");
        }
    }
}
