//! Deterministic storage fault injection, for tests: a [`FaultPlan`] of [`Rule`]s decides, for
//! each I/O operation, whether it fails and how ([`FaultKind`]).
//!
//! The plan sits *under* the real store code, at the I/O boundary, so the code that must cope
//! with the fault is the code that runs in production:
//!
//! | layer                        | hook                                                          |
//! |------------------------------|---------------------------------------------------------------|
//! | tier 2 ([`crate::ssd`])      | [`SlotIo`](crate::ssd::SlotIo) — [`FaultyIo`](crate::ssd::FaultyIo) wraps each `pread`/`pwrite`/`fdatasync` of a slot file |
//! | tier 3 ([`crate::object`])   | [`FaultyObjectStore`](crate::object::FaultyObjectStore), an `ObjectStore` around the real one |
//! | replication log (`vmtier-repl`) | its `FaultyStore`, a `SharedStore` around the real one     |
//!
//! Without a plan nothing changes: the tiers call the file system or object store directly.
//!
//! Every decision is reproducible: a rule fires on the Nth matching operation, from the Nth on,
//! on every Nth, or with a probability drawn from a seeded xorshift generator; bit positions come
//! from the same generator. Rules are checked in the order they were added; the first that fires
//! decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The operation fails with `EIO` and has no effect.
    Eio,
    /// A write fails with `ENOSPC` (the device is full) and has no effect.
    Enospc,
    /// A write is torn: the first half of the bytes land, then the device reports `ENOSPC`.
    ShortWrite,
    /// The operation takes effect, then fails with `EIO`: the acknowledgement is lost.
    EioAfter,
    /// The operation is delayed by this long, then runs normally.
    Delay(Duration),
    /// One bit of the data flips: on a write the stored copy is damaged (the caller is told
    /// nothing); on a read the caller receives damaged bytes.
    FlipBit,
}

/// The kind of operation a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Reading data (`pread`, GET).
    Read,
    /// Writing data (`pwrite`, PUT).
    Write,
    /// Making writes durable (`fdatasync`).
    Sync,
    /// Listing keys.
    List,
    /// Deleting a file or key.
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Always,
    /// Only the Nth matching operation (1-based).
    Nth(u64),
    /// Every matching operation from the Nth on.
    From(u64),
    /// Every Nth matching operation.
    Every(u64),
    /// Each matching operation with this probability (per million).
    PerMillion(u32),
}

/// One fault rule. Build with [`Rule::new`] and the chained setters; add to a [`FaultPlan`].
#[derive(Debug, Clone)]
pub struct Rule {
    kind: FaultKind,
    ops: Vec<Op>,
    trigger: Trigger,
    key: Option<String>,
    limit: Option<u64>,
    seed: u64,
}

impl Rule {
    /// A rule injecting `kind` into every operation (narrow it with the setters).
    pub fn new(kind: FaultKind) -> Self {
        Self { kind, ops: Vec::new(), trigger: Trigger::Always, key: None, limit: None, seed: 0x9e37_79b9_7f4a_7c15 }
    }

    /// Applies to operations of kind `op` (may be given several times; default: all kinds).
    pub fn on(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    /// Applies only to keys or file paths that contain `s`.
    pub fn key_contains(mut self, s: impl Into<String>) -> Self {
        self.key = Some(s.into());
        self
    }

    /// Fires on the `n`th matching operation only (1-based).
    pub fn nth(mut self, n: u64) -> Self {
        self.trigger = Trigger::Nth(n.max(1));
        self
    }

    /// Fires on every matching operation from the `n`th on (1-based).
    pub fn from_nth(mut self, n: u64) -> Self {
        self.trigger = Trigger::From(n.max(1));
        self
    }

    /// Fires on every `n`th matching operation.
    pub fn every(mut self, n: u64) -> Self {
        self.trigger = Trigger::Every(n.max(1));
        self
    }

    /// Fires on each matching operation with probability `p` (0..=1), drawn from a generator
    /// seeded with `seed`.
    pub fn probability(mut self, p: f64, seed: u64) -> Self {
        self.trigger = Trigger::PerMillion((p.clamp(0.0, 1.0) * 1e6) as u32);
        self.seed = seed;
        self
    }

    /// Fires at most `n` times.
    pub fn times(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
}

/// A fault decided for one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// What to do.
    pub kind: FaultKind,
    /// Random bits for the fault (which bit to flip).
    pub entropy: u64,
}

impl Fault {
    /// Flips one bit of `data`, chosen by [`entropy`](Self::entropy). Returns the byte index.
    pub fn flip(&self, data: &mut [u8]) -> Option<usize> {
        if data.is_empty() {
            return None;
        }
        let bit = (self.entropy % (data.len() as u64 * 8)) as usize;
        data[bit / 8] ^= 1 << (bit % 8);
        Some(bit / 8)
    }

    /// The I/O error this fault reports (`EIO`, or `ENOSPC` for a full device).
    pub fn io_error(&self) -> std::io::Error {
        let errno = match self.kind {
            FaultKind::Enospc | FaultKind::ShortWrite => libc::ENOSPC,
            _ => libc::EIO,
        };
        std::io::Error::from_raw_os_error(errno)
    }

    /// Sleeps for a [`FaultKind::Delay`]; nothing otherwise.
    pub fn delay(&self) {
        if let FaultKind::Delay(d) = self.kind {
            std::thread::sleep(d);
        }
    }
}

#[derive(Debug)]
struct Armed {
    rule: Rule,
    seen: u64,
    fired: u64,
    rng: u64,
}

impl Armed {
    fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A set of fault rules shared by the injecting wrappers. See the [module docs](self).
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Mutex<Vec<Armed>>,
    injected: AtomicU64,
    ops: AtomicU64,
}

impl FaultPlan {
    /// A plan without rules: every operation runs normally.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule (checked after the ones already there).
    pub fn add(&self, rule: Rule) -> &Self {
        let rng = rule.seed | 1;
        self.rules.lock().push(Armed { rule, seen: 0, fired: 0, rng });
        self
    }

    /// Removes every rule: from now on operations run normally (a repaired device).
    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Operations checked so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Decides the fate of one operation of kind `op` on `key` (a file path or object key).
    pub fn check(&self, op: Op, key: &str) -> Option<Fault> {
        self.ops.fetch_add(1, Ordering::Relaxed);
        let mut rules = self.rules.lock();
        for a in rules.iter_mut() {
            let r = &a.rule;
            if !r.ops.is_empty() && !r.ops.contains(&op) {
                continue;
            }
            if r.key.as_deref().is_some_and(|k| !key.contains(k)) {
                continue;
            }
            if r.limit.is_some_and(|l| a.fired >= l) {
                continue;
            }
            a.seen += 1;
            let n = a.seen;
            let fire = match a.rule.trigger {
                Trigger::Always => true,
                Trigger::Nth(k) => n == k,
                Trigger::From(k) => n >= k,
                Trigger::Every(k) => n.is_multiple_of(k),
                Trigger::PerMillion(p) => a.next_random() % 1_000_000 < u64::from(p),
            };
            if fire {
                a.fired += 1;
                self.injected.fetch_add(1, Ordering::Relaxed);
                let entropy = a.next_random();
                let kind = a.rule.kind;
                tracing::debug!(?op, key, ?kind, "injected storage fault");
                return Some(Fault { kind, entropy });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(plan: &FaultPlan, n: usize) -> Vec<bool> {
        (0..n).map(|_| plan.check(Op::Write, "k").is_some()).collect()
    }

    #[test]
    fn triggers() {
        let p = FaultPlan::new();
        p.add(Rule::new(FaultKind::Eio).on(Op::Write).nth(3));
        assert_eq!(fired(&p, 5), [false, false, true, false, false]);
        assert!(p.check(Op::Read, "k").is_none());
        let p = FaultPlan::new();
        p.add(Rule::new(FaultKind::Eio).from_nth(2).times(2));
        assert_eq!(fired(&p, 5), [false, true, true, false, false]);
        let p = FaultPlan::new();
        p.add(Rule::new(FaultKind::Eio).every(2).key_contains("log/"));
        assert!(p.check(Op::Write, "lease").is_none());
        assert!(p.check(Op::Write, "log/1").is_none());
        assert!(p.check(Op::Write, "log/2").is_some());
        p.clear();
        assert_eq!(fired(&p, 4), [false; 4]);
        assert_eq!(p.injected(), 1);
    }

    #[test]
    fn probability_is_reproducible() {
        let run = |seed| {
            let p = FaultPlan::new();
            p.add(Rule::new(FaultKind::FlipBit).probability(0.3, seed));
            fired(&p, 200)
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let n = run(7).iter().filter(|&&f| f).count();
        assert!((30..90).contains(&n), "{n} of 200 at p = 0.3");
    }

    #[test]
    fn flip_changes_one_bit() {
        let f = Fault { kind: FaultKind::FlipBit, entropy: 12345 };
        let mut d = vec![0u8; 64];
        let i = f.flip(&mut d).expect("flipped");
        assert_eq!(d.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
        assert_eq!(d[i].count_ones(), 1);
    }
}

/// A really full file system for tests: a small tmpfs mounted on a directory the caller owns
/// (usually a fresh temporary one), unmounted (lazily) when dropped, even by a failing test.
#[derive(Debug)]
pub struct SmallTmpfs {
    path: std::path::PathBuf,
}

impl SmallTmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `"512k"`) on `path`. `None`, after
    /// printing `SKIPPED <test>: …` on stderr, if this process may not mount (it needs root).
    pub fn mount(path: &std::path::Path, size: &str, test: &str) -> Option<Self> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED {test}: cannot mount a tmpfs (needs root)");
        }
        ok.then(|| Self { path: path.to_path_buf() })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Rewrites the last 4 bytes of `data` so that its crc32c becomes `want`: what anyone who can
/// write shared storage can do, since crc32c is affine over GF(2) in its input bits. Tests use it
/// to forge pages and records that pass every checksum, so that only a keyed MAC can tell.
pub fn force_crc32c(data: &mut [u8], want: u32) {
    let n = data.len();
    assert!(n >= 4, "force_crc32c needs at least 4 bytes to rewrite");
    data[n - 4..].fill(0);
    let base = crc32c::crc32c(data);
    // Column i: how flipping bit i of the tail changes the crc.
    let cols: Vec<u32> = (0..32)
        .map(|i| {
            data[n - 4 + i / 8] ^= 1 << (i % 8);
            let c = crc32c::crc32c(data) ^ base;
            data[n - 4 + i / 8] ^= 1 << (i % 8);
            c
        })
        .collect();
    // Solve cols · x = want ^ base by Gaussian elimination (rows: crc bits).
    let target = want ^ base;
    let mut rows: Vec<(u32, bool)> =
        (0..32).map(|r| ((0..32).fold(0u32, |m, i| m | (((cols[i] >> r) & 1) << i)), (target >> r) & 1 == 1)).collect();
    let mut pivot_row = 0;
    let mut pivots = Vec::new();
    for col in 0..32 {
        let Some(p) = (pivot_row..32).find(|&r| rows[r].0 >> col & 1 == 1) else { continue };
        rows.swap(pivot_row, p);
        for r in 0..32 {
            if r != pivot_row && rows[r].0 >> col & 1 == 1 {
                rows[r].0 ^= rows[pivot_row].0;
                rows[r].1 ^= rows[pivot_row].1;
            }
        }
        pivots.push(col);
        pivot_row += 1;
    }
    let mut x = 0u32;
    for (r, &col) in pivots.iter().enumerate() {
        if rows[r].1 {
            x |= 1 << col;
        }
    }
    data[n - 4..].copy_from_slice(&x.to_le_bytes());
    assert_eq!(crc32c::crc32c(data), want, "crc32c forcing failed");
}
