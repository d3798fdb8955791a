//! The `trace` workload: replays a recorded page trace (`vmtier trace import`) that the VMM
//! placed above the heap, with the page content scheme of `pages.rs`: populate pages
//! `0..trace_pages`, then for each access verify the page and, if the trace says it writes,
//! write its next version, then re-check every page.

use crate::abi::{BootInfo, GuestReport, status};
use crate::heap::Heap;
use crate::gprintln;
use crate::pages::{Region, run_accesses};

/// Runs the trace described by `boot.trace_gpa`, `boot.trace_count` and `boot.trace_pages`.
pub fn run(boot: &BootInfo, heap: &mut Heap, rep: &mut GuestReport) -> u64 {
    let Some(region) = Region::new(heap) else {
        gprintln!("heap too small for a page workload");
        return status::BAD_BOOT_INFO;
    };
    let n = u64::from(boot.trace_pages);
    if n == 0 || n > region.pages || boot.trace_gpa < boot.heap_end {
        gprintln!(
            "bad trace: {n} pages for a region of {}, accesses at {:#x} (heap ends at {:#x})",
            region.pages,
            boot.trace_gpa,
            boot.heap_end
        );
        return status::BAD_BOOT_INFO;
    }
    let list = boot.trace_gpa as *const u32;
    run_accesses(boot, &region, n, boot.trace_count, rep, |i| {
        // SAFETY: the VMM wrote `trace_count` u32 entries at `trace_gpa`, above the heap.
        let e = unsafe { list.add(i as usize).read_volatile() };
        let page = u64::from(e >> 1);
        if page >= n {
            gprintln!("trace access {i} is to page {page}, outside the {n}-page footprint");
            return Err(status::BAD_BOOT_INFO);
        }
        Ok((page, e & 1 == 1))
    })
}
