//! The `trace` workload: replays a recorded page trace (`vmtier trace import`) that the VMM
//! placed above the heap, with the page content scheme of `pages.rs`: populate pages
//! `0..trace_pages`, then for each access verify the page and, if the trace says it writes,
//! write its next version, then re-check every page.

use crate::abi::{BootInfo, GuestReport, phase, status};
use crate::heap::Heap;
use crate::pages::Region;
use crate::{Progress, gprintln, record_latency, rt};

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
    rep.pages = n;
    let list = boot.trace_gpa as *const u32;

    // Populate: version 1 on every page of the footprint.
    let t0 = rt::rdtsc();
    let mut prog = Progress::new(boot, n, phase::POPULATE);
    for p in 0..n {
        region.write(p, rep);
        prog.tick(p + 1);
    }
    prog.finish();
    rep.pages_touched = n;
    let t1 = rt::rdtsc();
    rep.stage_ticks[0] = t1 - t0;

    // Access: the trace, in order.
    let ops = boot.trace_count;
    let mut prog = Progress::new(boot, ops, phase::ACCESS);
    for i in 0..ops {
        // SAFETY: the VMM wrote `trace_count` u32 entries at `trace_gpa`, above the heap.
        let e = unsafe { list.add(i as usize).read_volatile() };
        let page = u64::from(e >> 1);
        if page >= n {
            gprintln!("trace access {i} is to page {page}, outside the {n}-page footprint");
            rep.ops = i;
            return status::BAD_BOOT_INFO;
        }
        let Ok(ticks) = region.verify(page, rep) else {
            rep.ops = i;
            return status::MISMATCH;
        };
        record_latency(rep, ticks);
        if e & 1 == 1 {
            region.write(page, rep);
        }
        prog.tick(i + 1);
    }
    prog.finish();
    rep.ops = ops;
    let t2 = rt::rdtsc();
    rep.stage_ticks[1] = t2 - t1;

    // Final check.
    if boot.skip_final_check == 0 {
        let mut prog = Progress::new(boot, n, phase::CHECK);
        for p in 0..n {
            if region.verify(p, rep).is_err() {
                return status::MISMATCH;
            }
            prog.tick(p + 1);
        }
        prog.finish();
        rep.final_checked_pages = n;
    }
    rep.stage_ticks[2] = rt::rdtsc() - t2;
    status::OK
}
