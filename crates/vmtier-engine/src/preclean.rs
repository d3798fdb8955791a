//! Precleaning (claim 2 of US patent 9,201,612): near the end of a checkpoint interval, dirty
//! pages likely to be demoted soon are written to tier 2 early. They stay in DRAM, clean and
//! write-protected, with the written copy as their home, so
//! - the next checkpoint carries them as metadata only (their copies are already on shared
//!   storage and synced by `persist`), instead of copying them during the pause;
//! - their demotion, when it comes, costs no write.
//!
//! A precleaned page written again before its demotion is dirty again through the ordinary
//! write-protect fault, and the next checkpoint copies it as usual: precleaning a page that was
//! not cold after all costs one write, never a wrong page.
//!
//! The candidates are the MTM's next demotion victims (coldest first), then, if they are too
//! few, the coldest dirty resident pages by the tracker's statistics.

use vmtier_uffd::{AlignedBuf, PAGE_SIZE};

use crate::error::EngineError;
use crate::page_table::{DIRTY, POISONED, PREFETCHED, PageGuard, PageTable, PageView};
use crate::pager::{Pager, note_modified, page_err, runs};
use crate::stats::{add, bump};

impl Pager {
    /// Writes up to `max` of the dirty resident pages next in line for demotion to tier 2 with
    /// one batch, keeping them resident and clean. Busy pages are skipped. Returns how many.
    pub(crate) fn preclean(&self, max: usize) -> Result<usize, EngineError> {
        if max == 0 {
            return Ok(0);
        }
        let mut held: Vec<(usize, PageGuard<'_>, PageView)> = Vec::with_capacity(max);
        let victims: Vec<u32> = self.victims.lock().iter().rev().copied().collect();
        for page in victims {
            if held.len() == max {
                break;
            }
            take(&self.table, page as usize, &mut held);
        }
        if held.len() < max {
            // Fewer victims than wanted (the MTM demotes on its own schedule, and the reclaimer's
            // clock picks pages it never listed): the coldest dirty resident pages by the
            // tracker's statistics.
            let now = self.tracker.tick();
            let mut cold: Vec<(u8, u16, usize)> = Vec::new();
            for (page, e) in self.table.iter().enumerate() {
                let v = e.view();
                if v.resident() && v.dirty() && !held.iter().any(|h| h.0 == page) {
                    cold.push((self.tracker.frequency(v.freq, v.seen, now), (now as u16).wrapping_sub(v.seen), page));
                }
            }
            // Least frequent first; among equals, the longest unseen.
            cold.sort_unstable_by_key(|&(f, age, page)| (f, std::cmp::Reverse(age), page));
            for (_, _, page) in cold {
                if held.len() == max {
                    break;
                }
                take(&self.table, page, &mut held);
            }
        }
        if held.is_empty() {
            return Ok(0);
        }
        // Write-protect before copying, so a write from here on is seen and makes the page dirty
        // again (its fault waits for the page lock, held until the new home is set).
        let mut pages: Vec<usize> = held.iter().map(|h| h.0).collect();
        pages.sort_unstable();
        for (first, n) in runs(&pages) {
            self.uffd
                .write_protect(self.addr(first), n * PAGE_SIZE, true, false)
                .map_err(page_err("UFFDIO_WRITEPROTECT", first))?;
        }
        let mut data = AlignedBuf::zeroed(held.len() * PAGE_SIZE);
        for (i, (page, _, _)) in held.iter().enumerate() {
            self.memfd
                .read_at(&mut data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], (*page * PAGE_SIZE) as u64)
                .map_err(page_err("pread", *page))?;
        }
        let homes = match self.write_slots(&data, held[0].0) {
            Ok(h) => h,
            Err(e) => {
                // Still dirty: map them writable again rather than make each take a fault.
                for (first, n) in runs(&pages) {
                    let _ = self.uffd.write_protect(self.addr(first), n * PAGE_SIZE, false, true);
                }
                return Err(e);
            }
        };
        add(&self.stats.tier2_bytes_written, data.len() as u64);
        for (i, ((page, g, v), (home, crc))) in held.iter().zip(homes).enumerate() {
            note_modified(g, v, crc);
            self.tags.seal(*page, &data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
            g.set_home(home, crc);
            g.clear(DIRTY);
            self.release_old(*page, v.home());
            bump(&self.stats.precleaned);
        }
        Ok(held.len())
    }
}

/// Adds `page` to `held`, locked, if it is a dirty resident page precleaning may write.
fn take<'a>(table: &'a PageTable, page: usize, held: &mut Vec<(usize, PageGuard<'a>, PageView)>) {
    let Some(g) = table.get(page).try_lock() else { return };
    let v = g.view();
    if v.resident() && v.dirty() && v.word & (POISONED | PREFETCHED) == 0 {
        held.push((page, g, v));
    }
}
