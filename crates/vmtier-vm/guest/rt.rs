//! The guest's runtime: entry point, hypercalls, clock, printing, panics and the memory
//! functions the compiler expects (there is no libc).

use core::arch::asm;
use core::fmt::{self, Write};

use crate::abi::{self, BootInfo, call};

/// Issues hypercall `nr` with three arguments. The VMM handles it before the guest resumes.
#[inline]
pub fn hypercall(nr: u32, a: u64, b: u64, c: u64) {
    // SAFETY: `out` to the hypercall port traps to the VMM (the TSS bitmap allows the port at
    // CPL3); it reads registers only and touches no guest memory the compiler knows about
    // except what the arguments point to, which the callers keep alive across the call.
    unsafe {
        asm!("out dx, eax", in("dx") abi::HC_PORT, in("eax") nr, in("rdi") a, in("rsi") b, in("r8") c,
             options(nostack, preserves_flags));
    }
}

/// The time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `rdtsc` only writes eax/edx; CR4.TSD is clear, so it is allowed at CPL3.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The boot block the VMM wrote.
pub fn boot_info() -> &'static BootInfo {
    // SAFETY: the VMM writes a `BootInfo` at BOOT_INFO_GPA before the first instruction and
    // never changes it while the guest runs; memory is identity-mapped.
    unsafe { &*(abi::BOOT_INFO_GPA as *const BootInfo) }
}

/// Converts TSC ticks to nanoseconds with the VMM's calibration.
pub fn ticks_to_ns(ticks: u64) -> u64 {
    let per_ms = boot_info().tsc_per_ms.max(1);
    ((u128::from(ticks) * 1_000_000) / u128::from(per_ms)) as u64
}

struct Line {
    buf: [u8; 240],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Prints one line through the VMM (truncated to 240 bytes).
pub fn print(args: fmt::Arguments<'_>) {
    let mut line = Line { buf: [0; 240], len: 0 };
    let _ = line.write_fmt(args);
    hypercall(call::PRINT, line.buf.as_ptr() as u64, line.len as u64, 0);
}

/// `println!` for the guest.
#[macro_export]
macro_rules! gprintln {
    ($($arg:tt)*) => { $crate::rt::print(format_args!($($arg)*)) };
}

/// Exits the VM with `status`; never returns.
pub fn exit(status: u64) -> ! {
    hypercall(call::EXIT, status, 0, 0);
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    print(format_args!("guest panic: {info}"));
    exit(abi::status::PANIC)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text._start")]
extern "C" fn _start() -> ! {
    let status = crate::main(boot_info());
    exit(status)
}

// The memory functions LLVM calls. `rep movsb`/`rep stosb` keep the compiler from turning
// these loops back into calls to themselves.

/// # Safety
/// As C `memcpy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller passes valid, non-overlapping ranges of `n` bytes; DF is clear.
    unsafe { asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack, preserves_flags)) };
    dst
}

/// # Safety
/// As C `memmove`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: a forward copy is correct when dst is below src or the ranges are disjoint.
        unsafe { memcpy(dst, src, n) };
    } else if n > 0 {
        // SAFETY: backward copy from the last byte with DF set, restored before returning; the
        // caller passes valid ranges of `n` bytes.
        unsafe {
            asm!("std", "rep movsb", "cld", inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _, options(nostack));
        }
    }
    dst
}

/// # Safety
/// As C `memset`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller passes a valid range of `n` bytes; DF is clear.
    unsafe { asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack, preserves_flags)) };
    dst
}

/// # Safety
/// As C `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller passes two valid ranges of `n` bytes. Volatile reads keep LLVM
        // from recognising this loop as a call to `memcmp`.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As C `bcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `core` was built with unwinding and names this symbol; with `panic=abort`
/// nothing unwinds, so it is never called.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
