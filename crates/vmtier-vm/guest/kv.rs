//! The `kv` workload: a key-value store with an open-addressing hash index, all in the heap.
//!
//! Keys are the ids `0..n`; a key's name is the 64-bit hash `key_hash(k)`, which places it in
//! the index. The heap holds four arrays, each page aligned:
//!
//! | array      | element     | count                       | content                                         |
//! |------------|-------------|-----------------------------|-------------------------------------------------|
//! | `index`    | `u64`       | `cap`, a power of two ≥ 2n  | 0 = empty, else `key << 32 \| (record + 1)`      |
//! | `records`  | `[u64; 32]` | `n`                         | one value record per live key                   |
//! | `versions` | `u32`       | `n`                         | the expected version of each key, [`DELETED`] bit while absent |
//! | `free`     | `u32`       | `n`                         | a stack of free record numbers                  |
//!
//! A record (256 bytes) at version `v` of key `k` (hash `h`):
//!
//! | word   | content                                  |
//! |--------|------------------------------------------|
//! | 0      | `h`                                      |
//! | 1      | `v`                                      |
//! | 2..=30 | `payload_word(h, v, i)`                  |
//! | 31     | checksum: `mix64` chained over words 0–30 |
//!
//! The index probes linearly and deletes by shifting the following entries back (no
//! tombstones), so it never fills up however many deletes a run makes.
//!
//! Every access verifies: a get probes the index (a live key must be there, a deleted one must
//! not) and checks every word of the record against the expected version; a put does that
//! first, then writes the next version in place; a delete (1% of writes) does it, removes the
//! index entry and frees the record; a put of a deleted key reinserts it with a fresh record.
//! A difference is reported as `[key, word, expected, found]`, where word [`INDEX_WORD`] means
//! the index disagreed (the printed line says how; usually expected 1 if the key should be
//! present, 0 if not, and found the entry, 0 for none) and, with key `n`, that the final check
//! counted a different number of live keys or index entries than the store holds.

use crate::abi::{BootInfo, GuestReport, PAGE, phase, status};
use crate::content::{Xoshiro256, mix64};
use crate::heap::Heap;
use crate::zipf::{Zipf, scatter};
use crate::{Progress, gprintln, record_latency, rt};

/// Words per value record (256 bytes).
const RECORD_WORDS: usize = 32;
/// The record word holding the checksum.
const CHECKSUM_WORD: usize = RECORD_WORDS - 1;
/// Bytes per key besides the index: the record, its expected version and its free-stack slot.
const BYTES_PER_KEY: u64 = RECORD_WORDS as u64 * 8 + 4 + 4;
/// The `word` of a mismatch that is about the index rather than a record word.
const INDEX_WORD: u64 = RECORD_WORDS as u64;
/// Set in a key's expected version while the key is deleted.
const DELETED: u32 = 1 << 31;
/// One write in this many deletes its key.
const DELETE_ONE_IN: u64 = 100;

/// The name of key `k` in a store seeded with `seed`.
fn key_hash(seed: u64, k: u64) -> u64 {
    mix64(seed ^ mix64(k.wrapping_add(0x6B76_5F6B_6579)))
}

/// Payload word `i` of the record of the key named `h` at version `v`.
fn payload_word(h: u64, v: u32, i: usize) -> u64 {
    mix64(h ^ mix64((u64::from(v) << 8) | i as u64))
}

/// One step of the record checksum.
fn checksum_step(sum: u64, word: u64) -> u64 {
    mix64(sum ^ word)
}

/// The checksum's starting value.
const CHECKSUM_SEED: u64 = 0x6B76_5F63_6865_636B;

/// The version after `v` (in `1..DELETED`).
fn next_version(v: u32) -> u32 {
    let v = v & !DELETED;
    if v + 1 >= DELETED { 1 } else { v + 1 }
}

/// What probing the index for a key found.
enum Probe {
    /// The key's entry is at `slot` and names `record`.
    Found { slot: u64, record: u64 },
    /// The key is not in the index; `slot` is the empty slot that ended the probe.
    Absent { slot: u64 },
}

/// The store's arrays and counters.
struct Store {
    index: *mut u64,
    mask: u64,
    records: *mut u64,
    versions: *mut u32,
    free: *mut u32,
    n: u64,
    free_len: u64,
    next_record: u64,
    live: u64,
    seed: u64,
}

impl Store {
    /// Sizes the store to the heap: the most keys for which the index (load ≤ 1/2) and the
    /// per-key arrays fit.
    fn new(heap: &mut Heap, seed: u64) -> Option<Self> {
        // Each array may waste up to a page to its alignment.
        let bytes = (heap.end() - heap.next()).checked_sub(4 * PAGE)?;
        let (mut n, mut cap) = (0, 0);
        for shift in 1..48 {
            let c = 1u64 << shift;
            let Some(rest) = bytes.checked_sub(c * 8) else { break };
            let fit = (c / 2).min(rest / BYTES_PER_KEY).min(u64::from(u32::MAX - 1));
            if fit > n {
                (n, cap) = (fit, c);
            }
        }
        if n == 0 {
            return None;
        }
        let index = heap.take::<u64>(cap, PAGE)?;
        let records = heap.take::<u64>(n * RECORD_WORDS as u64, PAGE)?;
        let versions = heap.take::<u32>(n, PAGE)?;
        let free = heap.take::<u32>(n, PAGE)?;
        Some(Self {
            index,
            mask: cap - 1,
            records,
            versions,
            free,
            n,
            free_len: 0,
            next_record: 0,
            live: 0,
            seed: mix64(seed ^ 0x6B76),
        })
    }

    fn slot(&self, i: u64) -> u64 {
        // SAFETY: i <= mask, inside the index taken from the heap.
        unsafe { self.index.add(i as usize).read_volatile() }
    }

    fn set_slot(&self, i: u64, entry: u64) {
        // SAFETY: as in `slot`.
        unsafe { self.index.add(i as usize).write_volatile(entry) }
    }

    fn version(&self, k: u64) -> u32 {
        // SAFETY: k < n, inside the version array taken from the heap.
        unsafe { self.versions.add(k as usize).read_volatile() }
    }

    fn set_version(&self, k: u64, v: u32) {
        // SAFETY: as in `version`.
        unsafe { self.versions.add(k as usize).write_volatile(v) }
    }

    fn word(&self, record: u64, i: usize) -> *mut u64 {
        // SAFETY: record < n and i < RECORD_WORDS: inside the record array.
        unsafe { self.records.add(record as usize * RECORD_WORDS + i) }
    }

    fn home(&self, k: u64) -> u64 {
        key_hash(self.seed, k) & self.mask
    }

    /// Looks `k` up in the index. An entry that names no valid record is reported and is an
    /// error: the index itself was corrupted.
    fn probe(&self, k: u64, rep: &mut GuestReport) -> Result<Probe, ()> {
        let mut i = self.home(k);
        // The index always has an empty slot (load ≤ 1/2): a probe that wraps around met a
        // corrupted index.
        for _ in 0..=self.mask {
            let entry = self.slot(i);
            if entry == 0 {
                return Ok(Probe::Absent { slot: i });
            }
            if entry >> 32 == k {
                let record = (entry & 0xffff_ffff).wrapping_sub(1);
                if record >= self.n {
                    return Err(mismatch(rep, k, INDEX_WORD, 1, entry, "names no record"));
                }
                return Ok(Probe::Found { slot: i, record });
            }
            i = (i + 1) & self.mask;
        }
        Err(mismatch(rep, k, INDEX_WORD, 0, self.mask + 1, "index has no empty slot"))
    }

    /// Probes for `k` and checks the index agrees with `k`'s expected version; returns the
    /// probe and that version.
    fn lookup(&self, k: u64, rep: &mut GuestReport) -> Result<(Probe, u32), ()> {
        let v = self.version(k);
        let probe = self.probe(k, rep)?;
        match (&probe, v & DELETED == 0) {
            (Probe::Found { slot, .. }, false) => {
                Err(mismatch(rep, k, INDEX_WORD, 0, self.slot(*slot), "deleted key still indexed"))
            }
            (Probe::Absent { .. }, true) => Err(mismatch(rep, k, INDEX_WORD, 1, 0, "live key not indexed")),
            _ => Ok((probe, v)),
        }
    }

    /// Checks every word of `record`, which should hold key `k` at version `v`; returns the
    /// TSC ticks the first word took (the fault, if any).
    fn verify(&self, record: u64, k: u64, v: u32, rep: &mut GuestReport) -> Result<u64, ()> {
        let h = key_hash(self.seed, k);
        let t0 = rt::rdtsc();
        // SAFETY: `word` returns an in-bounds, aligned pointer.
        let first = unsafe { self.word(record, 0).read_volatile() };
        let ticks = rt::rdtsc().wrapping_sub(t0);
        let mut sum = CHECKSUM_SEED;
        for i in 0..RECORD_WORDS {
            // SAFETY: as above.
            let got = if i == 0 { first } else { unsafe { self.word(record, i).read_volatile() } };
            let want = match i {
                0 => h,
                1 => u64::from(v),
                CHECKSUM_WORD => sum,
                _ => payload_word(h, v, i),
            };
            if got != want {
                return Err(mismatch(rep, k, i as u64, want, got, "record word differs"));
            }
            sum = checksum_step(sum, got);
        }
        rep.reads_verified += 1;
        Ok(ticks)
    }

    /// Writes version `v` of key `k` into `record`.
    fn write(&self, record: u64, k: u64, v: u32, rep: &mut GuestReport) {
        let h = key_hash(self.seed, k);
        let mut sum = CHECKSUM_SEED;
        for i in 0..RECORD_WORDS {
            let w = match i {
                0 => h,
                1 => u64::from(v),
                CHECKSUM_WORD => sum,
                _ => payload_word(h, v, i),
            };
            sum = checksum_step(sum, w);
            // SAFETY: `word` returns an in-bounds, aligned pointer.
            unsafe { self.word(record, i).write_volatile(w) };
        }
        rep.writes += 1;
    }

    /// Gets `k` and verifies what the index and its record hold; returns the record if the key
    /// is live. Records the record's first-touch latency.
    fn get(&self, k: u64, rep: &mut GuestReport) -> Result<Option<(Probe, u32)>, ()> {
        let (probe, v) = self.lookup(k, rep)?;
        if let Probe::Found { record, .. } = probe {
            let ticks = self.verify(record, k, v, rep)?;
            record_latency(rep, ticks);
            return Ok(Some((probe, v)));
        }
        Ok(None)
    }

    /// Puts the next version of `k`: in place if it is live, else into a fresh record.
    fn put(&mut self, k: u64, rep: &mut GuestReport) -> Result<(), ()> {
        let (probe, v) = self.lookup(k, rep)?;
        match probe {
            Probe::Found { record, .. } => {
                let ticks = self.verify(record, k, v, rep)?;
                record_latency(rep, ticks);
                let v = next_version(v);
                self.write(record, k, v, rep);
                self.set_version(k, v);
            }
            Probe::Absent { slot } => {
                // The key has no record, so at most n - 1 are in use: one is free.
                let record = self.alloc_record();
                let v = next_version(v);
                self.write(record, k, v, rep);
                self.set_slot(slot, (k << 32) | (record + 1));
                self.set_version(k, v);
                self.live += 1;
            }
        }
        Ok(())
    }

    /// Deletes `k` if it is live (after verifying its record).
    fn delete(&mut self, k: u64, rep: &mut GuestReport) -> Result<(), ()> {
        let Some((Probe::Found { slot, record }, v)) = self.get(k, rep)? else {
            return Ok(());
        };
        self.remove_slot(slot);
        // SAFETY: free_len < n (at most n records exist and this one is in use), inside the
        // free stack.
        unsafe { self.free.add(self.free_len as usize).write_volatile(record as u32) };
        self.free_len += 1;
        self.set_version(k, v | DELETED);
        self.live -= 1;
        Ok(())
    }

    /// A record nobody uses: a freed one, else the next never used.
    fn alloc_record(&mut self) -> u64 {
        if self.free_len > 0 {
            self.free_len -= 1;
            // SAFETY: free_len < n, inside the free stack.
            u64::from(unsafe { self.free.add(self.free_len as usize).read_volatile() })
        } else {
            self.next_record += 1;
            self.next_record - 1
        }
    }

    /// Empties `slot` and moves back the entries after it that probed past it, so every key
    /// stays reachable from its home slot without tombstones.
    fn remove_slot(&self, mut hole: u64) {
        let mut j = hole;
        // Bounded like `probe`: a corrupted index without an empty slot is reported by the next
        // probe that wraps, or by the final check's count.
        for _ in 0..self.mask {
            j = (j + 1) & self.mask;
            let entry = self.slot(j);
            if entry == 0 {
                break;
            }
            // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            let home = self.home(entry >> 32);
            let stays = if hole < j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.set_slot(hole, entry);
                hole = j;
            }
        }
        self.set_slot(hole, 0);
    }
}

/// Fills in the report's mismatch and prints it.
fn mismatch(rep: &mut GuestReport, k: u64, word: u64, want: u64, got: u64, what: &str) {
    rep.mismatch = [k, word, want, got];
    gprintln!("mismatch: key {k} word {word}: {what}: expected {want:#x}, found {got:#x}");
}

/// Runs the kv workload: put every key, `boot.ops` gets, puts and deletes, get every key.
pub fn run(boot: &BootInfo, heap: &mut Heap, rep: &mut GuestReport) -> u64 {
    let Some(mut store) = Store::new(heap, boot.seed) else {
        gprintln!("heap too small for the kv workload");
        return status::BAD_BOOT_INFO;
    };
    let n = store.n;
    rep.pages = (heap.next() - boot.heap_start).div_ceil(PAGE);
    gprintln!(
        "kv: {n} keys, index of {} slots at {:#x}, records at {:#x}",
        store.mask + 1,
        store.index as u64,
        store.records as u64
    );
    let mut rng = Xoshiro256::new(boot.seed);
    let write_p = f64::from(boot.write_ppm) / 1e6;

    // Populate: an empty index, every key absent, then every key at version 1 (records in key
    // order).
    let t0 = rt::rdtsc();
    for i in 0..=store.mask {
        store.set_slot(i, 0);
    }
    for k in 0..n {
        store.set_version(k, DELETED);
    }
    let mut prog = Progress::new(boot, n, phase::POPULATE);
    for k in 0..n {
        if store.put(k, rep).is_err() {
            return status::MISMATCH;
        }
        prog.tick(k + 1);
    }
    prog.finish();
    rep.pages_touched = rep.pages;
    let t1 = rt::rdtsc();
    rep.stage_ticks[0] = t1 - t0;

    // Access: Zipf-chosen keys (uniform if s = 0), scattered so hot keys are not neighbours.
    let ops = boot.ops;
    let zipf = (boot.zipf_s_milli > 0).then(|| Zipf::new(n, f64::from(boot.zipf_s_milli) / 1000.0));
    let mut prog = Progress::new(boot, ops, phase::ACCESS);
    for i in 0..ops {
        let k = match &zipf {
            Some(z) => scatter(z.sample(&mut rng), n),
            None => rng.below(n),
        };
        let done = if !rng.chance(write_p) {
            store.get(k, rep).map(drop)
        } else if rng.below(DELETE_ONE_IN) == 0 {
            store.delete(k, rep)
        } else {
            store.put(k, rep)
        };
        if done.is_err() {
            rep.ops = i;
            return status::MISMATCH;
        }
        prog.tick(i + 1);
    }
    prog.finish();
    rep.ops = ops;
    let t2 = rt::rdtsc();
    rep.stage_ticks[1] = t2 - t1;

    // Final check: every key, then the index holds exactly the live keys.
    if boot.skip_final_check == 0 {
        let mut prog = Progress::new(boot, n, phase::CHECK);
        let mut live = 0;
        for k in 0..n {
            match store.get(k, rep) {
                Ok(found) => live += u64::from(found.is_some()),
                Err(()) => return status::MISMATCH,
            }
            prog.tick(k + 1);
        }
        if live != store.live {
            mismatch(rep, n, INDEX_WORD, store.live, live, "live keys differ from the count");
            return status::MISMATCH;
        }
        let entries = (0..=store.mask).filter(|&i| store.slot(i) != 0).count() as u64;
        if entries != live {
            mismatch(rep, n, INDEX_WORD, live, entries, "index entries differ from live keys");
            return status::MISMATCH;
        }
        prog.finish();
        rep.final_checked_pages = rep.pages;
    }
    rep.stage_ticks[2] = rt::rdtsc() - t2;
    rep.result = store.live;
    status::OK
}
