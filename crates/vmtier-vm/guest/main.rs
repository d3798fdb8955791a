//! The vmtier micro-VM's guest program: freestanding (no OS, no libc), entered at CPL3 in
//! 64-bit long mode with identity-mapped memory. It reads the boot block, runs the workload
//! it names over the heap, verifies every value it reads, fills in the report and exits.
//!
//! Built by `crates/vmtier-vm/build.rs` with the host's `rustc` (no other toolchain or target)
//! and linked with `guest.ld`; see `docs/vm.md`.
#![no_std]
#![no_main]
#![allow(clippy::missing_safety_doc)]

#[path = "../abi.rs"]
mod abi;
#[path = "../../vmtier-workload/src/content.rs"]
#[allow(dead_code)]
mod content;

mod bfs;
mod heap;
mod kv;
mod math;
mod pages;
mod rt;
mod trace;
mod zipf;

use abi::{BootInfo, GuestReport, status, workload};

/// The report, at its fixed address.
fn report() -> &'static mut GuestReport {
    // SAFETY: REPORT_GPA is a page of the fixed layout reserved for the report; nothing else
    // in the guest refers to it, and the guest is single-threaded.
    unsafe { &mut *(abi::REPORT_GPA as *mut GuestReport) }
}

fn main(boot: &BootInfo) -> u64 {
    let rep = report();
    *rep = GuestReport::new();
    let st = if boot.magic != abi::BOOT_MAGIC || boot.heap_end <= boot.heap_start {
        gprintln!("bad boot block (magic {:#x})", boot.magic);
        status::BAD_BOOT_INFO
    } else {
        let mut heap = heap::Heap::new(boot.heap_start, boot.heap_end);
        match boot.workload {
            workload::ZIPF | workload::SCAN | workload::PHASES | workload::UNIFORM => {
                pages::run(boot, &mut heap, rep)
            }
            workload::TOUCH => pages::touch(boot, &mut heap, rep),
            workload::TRACE => trace::run(boot, &mut heap, rep),
            workload::KV => kv::run(boot, &mut heap, rep),
            workload::BFS => bfs::run(boot, &mut heap, rep),
            other => {
                gprintln!("unknown workload {other}");
                status::BAD_BOOT_INFO
            }
        }
    };
    rep.status = st;
    rt::hypercall(abi::call::REPORT, abi::REPORT_GPA, core::mem::size_of::<GuestReport>() as u64, 0);
    st
}

/// Counts an access that took `ticks` in the report's fault histogram if it was slow.
#[inline]
fn record_latency(rep: &mut GuestReport, ticks: u64) {
    if ticks > rt::boot_info().fault_threshold_ticks {
        rep.slow_accesses += 1;
        rep.fault_hist[abi::hist_bucket(rt::ticks_to_ns(ticks))] += 1;
    }
}

/// Reports progress every `boot.progress_every` operations.
struct Progress {
    every: u64,
    next: u64,
    total: u64,
    phase: u64,
}

impl Progress {
    fn new(boot: &BootInfo, total: u64, phase: u64) -> Self {
        let every = boot.progress_every.max(1);
        rt::hypercall(abi::call::PROGRESS, 0, total, phase);
        Self { every, next: every, total, phase }
    }

    #[inline]
    fn tick(&mut self, done: u64) {
        if done >= self.next {
            self.next = done + self.every;
            rt::hypercall(abi::call::PROGRESS, done, self.total, self.phase);
        }
    }

    fn finish(self) {
        rt::hypercall(abi::call::PROGRESS, self.total, self.total, self.phase);
    }
}
