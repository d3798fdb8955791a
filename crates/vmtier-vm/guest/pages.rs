//! Page workloads (`zipf`, `scan`, `phases`, `uniform`) and `touch`, with the same page content
//! scheme as the in-process guest: page `p` at version `v` holds `expected_word(p, v, i)` in
//! word `i`. The expected version of every page is kept in a separate array on the heap.

use crate::abi::{self, BootInfo, PAGE, GuestReport, phase, status, workload};
use crate::content::{WORDS_PER_PAGE, Xoshiro256, expected_word, next_version};
use crate::heap::Heap;
use crate::zipf::{Zipf, scatter};
use crate::{Progress, gprintln, record_latency, rt};

/// The data pages and their expected versions (also used by `trace.rs`).
pub(crate) struct Region {
    versions: *mut u32,
    data: *mut u64,
    pub(crate) pages: u64,
}

impl Region {
    /// Splits the heap into a version array and as many pages as fit.
    pub(crate) fn new(heap: &mut Heap) -> Option<Self> {
        let (versions, data, pages) = abi::page_region(heap.next(), heap.end());
        heap.take::<u8>(data + pages * PAGE - heap.next(), 1)?;
        (pages > 0).then_some(Self { versions: versions as *mut u32, data: data as *mut u64, pages })
    }

    fn version(&self, page: u64) -> u32 {
        // SAFETY: page < self.pages, inside the version array taken from the heap.
        unsafe { self.versions.add(page as usize).read_volatile() }
    }

    fn set_version(&self, page: u64, v: u32) {
        // SAFETY: as in `version`.
        unsafe { self.versions.add(page as usize).write_volatile(v) }
    }

    fn word(&self, page: u64, i: usize) -> *mut u64 {
        // SAFETY: page < self.pages and i < WORDS_PER_PAGE: inside the data area.
        unsafe { self.data.add(page as usize * WORDS_PER_PAGE + i) }
    }

    /// Verifies page `page`; returns the TSC ticks its first word took (the fault, if any).
    pub(crate) fn verify(&self, page: u64, rep: &mut GuestReport) -> Result<u64, ()> {
        let v = self.version(page);
        let t0 = rt::rdtsc();
        // SAFETY: `word` returns an in-bounds, aligned pointer.
        let first = unsafe { self.word(page, 0).read_volatile() };
        let ticks = rt::rdtsc().wrapping_sub(t0);
        for i in 0..WORDS_PER_PAGE {
            // SAFETY: as above.
            let got = if i == 0 { first } else { unsafe { self.word(page, i).read_volatile() } };
            let want = expected_word(page as usize, v, i);
            if got != want {
                rep.mismatch = [page, i as u64, want, got];
                gprintln!("mismatch: page {page} word {i} version {v}: expected {want:#x}, found {got:#x}");
                return Err(());
            }
        }
        rep.reads_verified += 1;
        Ok(ticks)
    }

    /// Writes the next version of `page`.
    pub(crate) fn write(&self, page: u64, rep: &mut GuestReport) {
        let v = next_version(self.version(page));
        for i in 0..WORDS_PER_PAGE {
            // SAFETY: `word` returns an in-bounds, aligned pointer.
            unsafe { self.word(page, i).write_volatile(expected_word(page as usize, v, i)) };
        }
        self.set_version(page, v);
        rep.writes += 1;
    }
}

/// Runs a page workload: populate every page, `boot.ops` accesses, re-check every page.
pub fn run(boot: &BootInfo, heap: &mut Heap, rep: &mut GuestReport) -> u64 {
    let Some(region) = Region::new(heap) else {
        gprintln!("heap too small for a page workload");
        return status::BAD_BOOT_INFO;
    };
    let n = region.pages;
    let mut rng = Xoshiro256::new(boot.seed);
    let write_p = f64::from(boot.write_ppm) / 1e6;
    let zipf = (boot.workload == workload::ZIPF).then(|| Zipf::new(n, f64::from(boot.zipf_s_milli) / 1000.0));
    let rounds = u64::from(boot.rounds.max(1));
    let hot = (n / 8).max(1);
    let ops = boot.ops;
    run_accesses(boot, &region, n, ops, rep, |i| {
        let page = match boot.workload {
            workload::ZIPF => scatter(zipf.as_ref().map_or(0, |z| z.sample(&mut rng)), n),
            workload::SCAN => i % n,
            workload::PHASES => {
                // Each phase has its own hot eighth of memory; 90% of accesses go there.
                let ph = i * rounds / ops.max(1);
                if rng.chance(0.9) { (ph * hot * 3 + rng.below(hot)) % n } else { rng.below(n) }
            }
            _ => rng.below(n),
        };
        Ok((page, rng.chance(write_p)))
    })
}

/// The shape every page workload shares (also `trace.rs`): populate version 1 on pages `0..n`,
/// then `ops` accesses, each verifying the page `next(i)` names and writing its next version if
/// asked, then re-check every page. `next` may stop the run with a status. Fills the report's
/// counters and stage times; returns the exit status.
pub(crate) fn run_accesses(
    boot: &BootInfo,
    region: &Region,
    n: u64,
    ops: u64,
    rep: &mut GuestReport,
    mut next: impl FnMut(u64) -> Result<(u64, bool), u64>,
) -> u64 {
    rep.pages = n;
    // Populate: version 1 everywhere (each first touch is a zero-fill fault).
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

    // Access.
    let mut prog = Progress::new(boot, ops, phase::ACCESS);
    for i in 0..ops {
        let (page, write) = match next(i) {
            Ok(access) => access,
            Err(status) => {
                rep.ops = i;
                return status;
            }
        };
        let Ok(ticks) = region.verify(page, rep) else {
            rep.ops = i;
            return status::MISMATCH;
        };
        record_latency(rep, ticks);
        if write {
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

/// The `touch` test workload: write each listed heap page (round 1), report progress, then read
/// every listed page and rewrite every third one (round 2), report progress, exit. The VMM
/// compares its dirty log with the pages written in each round.
pub fn touch(boot: &BootInfo, heap: &mut Heap, rep: &mut GuestReport) -> u64 {
    let Some(region) = Region::new(heap) else {
        return status::BAD_BOOT_INFO;
    };
    let list = boot.touch_pages as *const u64;
    let count = boot.touch_count;
    let page_at = |i: u64| {
        // SAFETY: the VMM wrote `touch_count` u64 page numbers at `touch_pages`.
        unsafe { list.add(i as usize).read_volatile() }
    };
    for i in 0..count {
        let p = page_at(i);
        if p >= region.pages {
            gprintln!("touch page {p} outside the region of {} pages", region.pages);
            return status::BAD_BOOT_INFO;
        }
        region.write(p, rep);
    }
    rt::hypercall(crate::abi::call::PROGRESS, count, count, phase::POPULATE);
    for i in 0..count {
        let p = page_at(i);
        if region.verify(p, rep).is_err() {
            return status::MISMATCH;
        }
        if i % 3 == 0 {
            region.write(p, rep);
        }
    }
    rt::hypercall(crate::abi::call::PROGRESS, count, count, phase::ACCESS);
    rep.pages = region.pages;
    rep.pages_touched = count;
    status::OK
}
