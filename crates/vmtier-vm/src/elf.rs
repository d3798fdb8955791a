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

fn u16_at(b: &[u8], off: usize) -> Result<u16, VmError> {
    b.get(off..off + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| bad("truncated header"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, VmError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| bad("truncated header"))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, VmError> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| bad("truncated header"))
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
        if u16_at(elf, 16)? != 2 {
            return Err(bad("not an executable (ET_EXEC); link it statically at a fixed address"));
        }
        if u16_at(elf, 18)? != 62 {
            return Err(bad("not an x86-64 program"));
        }
        let entry = u64_at(elf, 24)?;
        let phoff = u64_at(elf, 32)? as usize;
        let phentsize = u16_at(elf, 54)? as usize;
        let phnum = u16_at(elf, 56)? as usize;
        if phentsize < 56 || phnum == 0 || phnum > 64 {
            return Err(bad(format!("{phnum} program headers of {phentsize} bytes")));
        }
        let mut segments = Vec::new();
        for i in 0..phnum {
            let ph = phoff.checked_add(i * phentsize).ok_or_else(|| bad("program header offset overflows"))?;
            if u32_at(elf, ph)? != PT_LOAD {
                continue;
            }
            let offset = u64_at(elf, ph + 8)?;
            let vaddr = u64_at(elf, ph + 16)?;
            let filesz = u64_at(elf, ph + 32)?;
            let memsz = u64_at(elf, ph + 40)?;
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
}
