//! The `bfs` workload: breadth-first searches over a generated graph in the heap.
//!
//! The graph has `n` vertices in compressed sparse row form. Vertex `v` has `degree(v)` out-edges
//! (4 to 12, 8 on average); its edge `j` goes to `target(v, j)`: for even `j` a vertex within
//! ±64 of `v` (locality, as in a mesh or a social graph), for odd `j` any vertex. Both are pure
//! functions of the seed, `v` and `j`, so every edge read is checked against them. The heap
//! holds, each page aligned:
//!
//! | array     | element | count     | content                                          |
//! |-----------|---------|-----------|--------------------------------------------------|
//! | `offsets` | `u64`   | `n + 1`   | vertex `v`'s edges are `edges[offsets[v]..offsets[v + 1]]` |
//! | `edges`   | `u32`   | Σ degrees | `target(v, j)`                                   |
//! | `dist`    | `u32`   | `n`       | per search: hops from the source, [`UNREACHED`]  |
//! | `parent`  | `u32`   | `n`       | per search: the vertex a vertex was reached from |
//! | `queue`   | `u32`   | `n`       | per search: the vertices in the order reached    |
//!
//! Each search is verified afterwards: the source is at distance 0; every other reached vertex
//! has a reached parent one hop closer with an edge to it; every edge of a reached vertex leads
//! to a reached vertex at most one hop further; the number of reached vertices matches the
//! queue. A difference is reported as `[vertex, word, expected, found]`: `word` below 256 is
//! the edge index `j`; the `CHECK_*` constants name the other checks.

use crate::abi::{BootInfo, GuestReport, PAGE, phase, status};
use crate::content::{Xoshiro256, mix64};
use crate::heap::Heap;
use crate::{Progress, gprintln, record_latency, rt};

/// Fewest out-edges of a vertex.
const MIN_DEGREE: u64 = 4;
/// Most out-edges of a vertex.
const MAX_DEGREE: u64 = 12;
/// Even edges go to a vertex at most this far away.
const NEAR: u64 = 64;
/// `dist` of a vertex the search has not reached.
const UNREACHED: u32 = u32::MAX;

/// Mismatch word: `offsets[v + 1] - offsets[v]` is not `degree(v)`.
const CHECK_DEGREE: u64 = 0x100;
/// Mismatch word: a queue entry is not a vertex.
const CHECK_QUEUE: u64 = 0x101;
/// Mismatch word: a distance is wrong (expected the parent's + 1, or 0 at the source).
const CHECK_DIST: u64 = 0x102;
/// Mismatch word: a parent is not a vertex with an edge to the vertex (found: the parent).
const CHECK_PARENT: u64 = 0x103;
/// Mismatch word: an edge of a reached vertex leads to an unreached or too distant vertex (the
/// mismatch names that vertex; expected: the largest allowed distance, found: its distance).
const CHECK_EDGE: u64 = 0x104;
/// Mismatch word: the number of reached vertices differs from the queue length.
const CHECK_COUNT: u64 = 0x105;

/// The graph and the arrays of one search.
struct Graph {
    offsets: *mut u64,
    edges: *mut u32,
    dist: *mut u32,
    parent: *mut u32,
    queue: *mut u32,
    n: u64,
    /// Length of the edge array.
    edge_count: u64,
    seed: u64,
}

/// Out-degree of vertex `v`.
fn degree(seed: u64, v: u64) -> u64 {
    MIN_DEGREE + mix64(seed ^ v) % (MAX_DEGREE - MIN_DEGREE + 1)
}

/// Heap bytes the arrays of a graph of `n` vertices and `edges` edges need, without alignment:
/// offsets, edges, and dist, parent and queue.
fn graph_bytes(n: u64, edges: u64) -> u64 {
    8 * (n + 1) + 4 * edges + 3 * 4 * n
}

/// Fills in the report's mismatch and prints it.
fn mismatch(rep: &mut GuestReport, v: u64, word: u64, want: u64, got: u64, what: &str) {
    rep.mismatch = [v, word, want, got];
    gprintln!("mismatch: vertex {v} word {word:#x}: {what}: expected {want:#x}, found {got:#x}");
}

impl Graph {
    /// Sizes the graph to the heap: the most vertices whose arrays fit.
    fn new(heap: &mut Heap, seed: u64) -> Option<Self> {
        let seed = mix64(seed ^ 0x6266_73);
        // Each array may waste up to a page to its alignment.
        let bytes = (heap.end() - heap.next()).checked_sub(5 * PAGE)?;
        // Start from the mean degree, then drop vertices until their actual edges fit.
        let mean = (MIN_DEGREE + MAX_DEGREE) / 2;
        let mut n = (bytes / (8 + 4 * mean + 3 * 4)).min(u64::from(UNREACHED) - 1);
        let mut edges: u64 = (0..n).map(|v| degree(seed, v)).sum();
        while n > 0 && graph_bytes(n, edges) > bytes {
            n -= 1;
            edges -= degree(seed, n);
        }
        if n == 0 {
            return None;
        }
        Some(Self {
            offsets: heap.take::<u64>(n + 1, PAGE)?,
            edges: heap.take::<u32>(edges, PAGE)?,
            dist: heap.take::<u32>(n, PAGE)?,
            parent: heap.take::<u32>(n, PAGE)?,
            queue: heap.take::<u32>(n, PAGE)?,
            n,
            edge_count: edges,
            seed,
        })
    }

    /// The vertex edge `j` of `v` leads to.
    fn target(&self, v: u64, j: u64) -> u64 {
        let h = mix64(self.seed ^ mix64((v << 4) | j));
        if j % 2 == 0 {
            (v + self.n - NEAR % self.n + h % (2 * NEAR + 1)) % self.n
        } else {
            ((u128::from(h) * u128::from(self.n)) >> 64) as u64
        }
    }

    fn offset(&self, v: u64) -> u64 {
        // SAFETY: v <= n, inside the offsets array taken from the heap.
        unsafe { self.offsets.add(v as usize).read_volatile() }
    }

    fn set_offset(&self, v: u64, off: u64) {
        // SAFETY: as in `offset`.
        unsafe { self.offsets.add(v as usize).write_volatile(off) }
    }

    fn edge(&self, e: u64) -> u64 {
        // SAFETY: callers pass e < offsets[n], the length of the edge array.
        u64::from(unsafe { self.edges.add(e as usize).read_volatile() })
    }

    fn set_edge(&self, e: u64, w: u64) {
        // SAFETY: as in `edge`; w < n fits a u32.
        unsafe { self.edges.add(e as usize).write_volatile(w as u32) }
    }

    fn dist(&self, v: u64) -> u32 {
        // SAFETY: v < n, inside the dist array.
        unsafe { self.dist.add(v as usize).read_volatile() }
    }

    fn set_dist(&self, v: u64, d: u32) {
        // SAFETY: as in `dist`.
        unsafe { self.dist.add(v as usize).write_volatile(d) }
    }

    fn parent(&self, v: u64) -> u64 {
        // SAFETY: v < n, inside the parent array.
        u64::from(unsafe { self.parent.add(v as usize).read_volatile() })
    }

    fn set_parent(&self, v: u64, p: u64) {
        // SAFETY: as in `parent`; p < n fits a u32.
        unsafe { self.parent.add(v as usize).write_volatile(p as u32) }
    }

    fn queued(&self, i: u64) -> u64 {
        // SAFETY: i < n, inside the queue.
        u64::from(unsafe { self.queue.add(i as usize).read_volatile() })
    }

    fn enqueue(&self, i: u64, v: u64) {
        // SAFETY: as in `queued`; v < n fits a u32.
        unsafe { self.queue.add(i as usize).write_volatile(v as u32) }
    }

    /// Writes the offsets and edges of every vertex.
    fn populate(&self, boot: &BootInfo, rep: &mut GuestReport) {
        let mut prog = Progress::new(boot, self.n, phase::POPULATE);
        let mut off = 0;
        for v in 0..self.n {
            self.set_offset(v, off);
            for j in 0..degree(self.seed, v) {
                self.set_edge(off + j, self.target(v, j));
            }
            off += degree(self.seed, v);
            rep.writes += 1;
            prog.tick(v + 1);
        }
        self.set_offset(self.n, off);
        prog.finish();
    }

    /// Calls `visit` with every edge target of `v`, each read from memory and checked against
    /// `target`. Records the latency of the first touch of `v`'s adjacency.
    fn neighbours(&self, v: u64, rep: &mut GuestReport, mut visit: impl FnMut(u64)) -> Result<(), ()> {
        let deg = degree(self.seed, v);
        let t0 = rt::rdtsc();
        let lo = self.offset(v);
        let ticks = rt::rdtsc().wrapping_sub(t0);
        let hi = self.offset(v + 1);
        // Offsets come from memory: bound them by the array before reading through them.
        if hi.wrapping_sub(lo) != deg || hi > self.edge_count {
            mismatch(rep, v, CHECK_DEGREE, deg, hi.wrapping_sub(lo), "adjacency length differs from the degree");
            return Err(());
        }
        record_latency(rep, ticks);
        for j in 0..deg {
            let (want, got) = (self.target(v, j), self.edge(lo + j));
            if got != want {
                mismatch(rep, v, j, want, got, "edge differs");
                return Err(());
            }
            visit(got);
        }
        rep.reads_verified += 1;
        Ok(())
    }

    /// Searches from `src`; returns the number of vertices reached. `base` is the progress
    /// count before this search.
    fn search(&self, src: u64, rep: &mut GuestReport, prog: &mut Progress, base: u64) -> Result<u64, ()> {
        for v in 0..self.n {
            self.set_dist(v, UNREACHED);
        }
        self.set_dist(src, 0);
        self.set_parent(src, src);
        self.enqueue(0, src);
        let (mut head, mut tail) = (0, 1);
        while head < tail {
            let u = self.queued(head);
            if u >= self.n {
                mismatch(rep, head, CHECK_QUEUE, self.n, u, "queue entry is not a vertex");
                return Err(());
            }
            head += 1;
            let du = self.dist(u);
            let before = tail;
            self.neighbours(u, rep, |w| {
                if self.dist(w) == UNREACHED {
                    self.set_dist(w, du + 1);
                    self.set_parent(w, u);
                    self.enqueue(tail, w);
                    tail += 1;
                }
            })?;
            rep.writes += tail - before;
            prog.tick(base + head);
        }
        Ok(tail)
    }

    /// Checks the distances and parents a search from `src` left behind, which reached
    /// `reached` vertices. Edges come from `target`, not memory: this checks the search, and
    /// the search already checked every edge it read.
    fn check(&self, src: u64, reached: u64, rep: &mut GuestReport) -> Result<(), ()> {
        let d = self.dist(src);
        if d != 0 {
            mismatch(rep, src, CHECK_DIST, 0, u64::from(d), "source is not at distance 0");
            return Err(());
        }
        let mut count = 0;
        for v in 0..self.n {
            let d = self.dist(v);
            if d == UNREACHED {
                continue;
            }
            count += 1;
            if v != src {
                let p = self.parent(v);
                if p >= self.n || !(0..degree(self.seed, p)).any(|j| self.target(p, j) == v) {
                    mismatch(rep, v, CHECK_PARENT, 0, p, "parent has no edge to the vertex");
                    return Err(());
                }
                let dp = self.dist(p);
                if dp == UNREACHED || dp + 1 != d {
                    mismatch(rep, v, CHECK_DIST, u64::from(dp) + 1, u64::from(d), "not one hop past its parent");
                    return Err(());
                }
            }
            for j in 0..degree(self.seed, v) {
                let w = self.target(v, j);
                let dw = self.dist(w);
                if dw == UNREACHED || dw > d + 1 {
                    mismatch(rep, w, CHECK_EDGE, u64::from(d) + 1, u64::from(dw), "edge leads past the frontier");
                    return Err(());
                }
            }
        }
        if count != reached {
            mismatch(rep, src, CHECK_COUNT, reached, count, "reached vertices differ from the queue");
            return Err(());
        }
        Ok(())
    }
}

/// Runs the bfs workload: write the graph, `boot.ops` (at least one) verified searches from
/// random sources, re-read every edge.
pub fn run(boot: &BootInfo, heap: &mut Heap, rep: &mut GuestReport) -> u64 {
    let Some(g) = Graph::new(heap, boot.seed) else {
        gprintln!("heap too small for the bfs workload");
        return status::BAD_BOOT_INFO;
    };
    let n = g.n;
    rep.pages = (heap.next() - boot.heap_start).div_ceil(PAGE);
    gprintln!(
        "bfs: {n} vertices, {} edges, offsets at {:#x}, edges at {:#x}",
        g.edge_count,
        g.offsets as u64,
        g.edges as u64
    );
    let mut rng = Xoshiro256::new(boot.seed);

    let t0 = rt::rdtsc();
    g.populate(boot, rep);
    rep.pages_touched = rep.pages;
    let t1 = rt::rdtsc();
    rep.stage_ticks[0] = t1 - t0;

    // Access: each search counts n in the progress, however many vertices it reaches.
    let runs = boot.ops.max(1);
    let mut prog = Progress::new(boot, runs * n, phase::ACCESS);
    for r in 0..runs {
        let src = rng.below(n);
        let reached = match g.search(src, rep, &mut prog, r * n) {
            Ok(reached) => reached,
            Err(()) => {
                rep.ops = r;
                return status::MISMATCH;
            }
        };
        if g.check(src, reached, rep).is_err() {
            rep.ops = r;
            return status::MISMATCH;
        }
        rep.result = reached;
        prog.tick((r + 1) * n);
    }
    prog.finish();
    rep.ops = runs;
    let t2 = rt::rdtsc();
    rep.stage_ticks[1] = t2 - t1;

    // Final check: every vertex's adjacency, re-read.
    if boot.skip_final_check == 0 {
        let mut prog = Progress::new(boot, n, phase::CHECK);
        for v in 0..n {
            if g.neighbours(v, rep, |_| {}).is_err() {
                return status::MISMATCH;
            }
            prog.tick(v + 1);
        }
        prog.finish();
        rep.final_checked_pages = (g.dist as u64 - g.offsets as u64).div_ceil(PAGE);
    }
    rep.stage_ticks[2] = rt::rdtsc() - t2;
    status::OK
}
