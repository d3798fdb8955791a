//! The guest: worker threads that populate, access and re-check a region, keeping the expected
//! version of every page in private memory.
//!
//! Pages are split into `threads` contiguous ranges; thread `t` only ever touches its own range,
//! so the guest needs no locking and any mismatch is the tiering engine's fault. The first
//! mismatch sets a shared abort flag; the other threads stop within one page access and the
//! mismatch is returned. A panicking worker also raises the flag (from a drop guard) and is
//! reported as [`WorkloadError::WorkerPanicked`].
//!
//! A `trace` workload runs over the first `footprint` pages of the region (the rest is left
//! alone) and replays the trace: see [`crate::trace::replay`].

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{WorkloadConfig, WorkloadKind, config_err};
use crate::error::WorkloadError;
use crate::pattern::{self, AccessPattern, planned_accesses};
use crate::progress::{Phase, Progress};
use crate::report::WorkloadReport;
use crate::rng::{Xoshiro256, mix64};
use crate::trace::{PageTrace, SharedTraceError, TracePattern};
use crate::verify::{WORDS_PER_PAGE, next_version, verify_page, write_page};

/// Progress is published every this many page operations per thread.
const PROGRESS_BATCH: u64 = 64;

/// A guest running over one memory region. See the [module docs](self).
#[derive(Debug)]
pub struct Guest<'m> {
    mem: &'m [AtomicU64],
    cfg: WorkloadConfig,
    ranges: Vec<Range<usize>>,
    versions: Vec<u32>,
    touched: Vec<bool>,
    stats: Stats,
    /// The trace a `trace` workload replays, and its access count in each thread's range.
    trace: Option<(Arc<PageTrace>, Vec<u64>)>,
    #[cfg(test)]
    pub(crate) panic_in_thread: Option<usize>,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    accesses: u64,
    reads_verified: u64,
    writes: u64,
    populate_secs: f64,
    access_secs: f64,
    final_check_secs: f64,
    final_checked_pages: u64,
    final_check_passed: bool,
    phase_throughput: Vec<f64>,
}

/// What one worker did in one stage.
#[derive(Debug, Default)]
struct ThreadOut {
    reads: u64,
    writes: u64,
    accesses: u64,
    phase_counts: Vec<u64>,
    phase_spans: Vec<Option<(Instant, Instant)>>,
}

/// State shared by the workers of one stage.
#[derive(Debug)]
struct Ctx<'a> {
    mem: &'a [AtomicU64],
    progress: &'a Progress,
    abort: AtomicBool,
    first_error: OnceLock<WorkloadError>,
}

impl Ctx<'_> {
    #[inline]
    fn should_stop(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || self.progress.stop.load(Ordering::Relaxed)
    }

    /// Records `err` (if it is the first) and stops all workers.
    fn fail(&self, err: WorkloadError) -> WorkloadError {
        let _ = self.first_error.set(err.clone());
        self.abort.store(true, Ordering::Relaxed);
        err
    }

    fn interrupted(&self) -> WorkloadError {
        WorkloadError::Cancelled { done: self.progress.done.load(Ordering::Relaxed) }
    }
}

/// Raises the abort flag if the worker unwinds.
struct AbortOnPanic<'a>(&'a AtomicBool);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Publishes a worker's progress in batches; flushes the rest on drop.
struct Ticker<'a> {
    progress: &'a Progress,
    pending: u64,
}

impl Ticker<'_> {
    #[inline]
    fn tick(&mut self) {
        self.pending += 1;
        if self.pending == PROGRESS_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.progress.done.fetch_add(self.pending, Ordering::Relaxed);
        self.pending = 0;
    }
}

impl Drop for Ticker<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Splits `0..pages` into `threads` contiguous, near-equal, non-empty ranges.
fn partition(pages: usize, threads: usize) -> Vec<Range<usize>> {
    (0..threads).map(|t| (t * pages / threads)..((t + 1) * pages / threads)).collect()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `body` once per work item on its own scoped thread and joins them all.
fn parallel<W, F>(ctx: &Ctx<'_>, items: Vec<W>, body: F) -> Result<Vec<ThreadOut>, WorkloadError>
where
    W: Send,
    F: Fn(usize, W) -> Result<ThreadOut, WorkloadError> + Sync,
{
    let results: Vec<Result<ThreadOut, WorkloadError>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .into_iter()
            .enumerate()
            .map(|(t, item)| {
                let body = &body;
                std::thread::Builder::new().name(format!("vmtier-guest-{t}")).spawn_scoped(s, move || {
                    let _guard = AbortOnPanic(&ctx.abort);
                    body(t, item)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(t, h)| match h {
                Err(e) => {
                    Err(ctx.fail(WorkloadError::WorkerPanicked { thread: t, message: format!("could not spawn: {e}") }))
                }
                Ok(h) => h.join().unwrap_or_else(|p| {
                    Err(WorkloadError::WorkerPanicked { thread: t, message: panic_message(p.as_ref()) })
                }),
            })
            .collect()
    });
    if let Some(err) = ctx.first_error.get() {
        return Err(err.clone());
    }
    let mut outs = Vec::with_capacity(results.len());
    let mut cancelled = None;
    for r in results {
        match r {
            Ok(out) => outs.push(out),
            Err(e @ WorkloadError::Cancelled { .. }) => cancelled = Some(e),
            Err(e) => return Err(e),
        }
    }
    match cancelled {
        Some(_) => Err(ctx.interrupted()),
        None => Ok(outs),
    }
}

impl<'m> Guest<'m> {
    /// A guest over `mem` that has never written anything (every page expected all zeros).
    /// A `trace` workload loads its trace here.
    pub fn new(mem: &'m [AtomicU64], cfg: WorkloadConfig) -> Result<Self, WorkloadError> {
        let (mem, trace) = Self::resolve(mem, &cfg, None)?;
        let pages = cfg.validate(mem.len())?;
        Self::build(mem, cfg, vec![0; pages], trace)
    }

    /// A guest replaying an already loaded `trace` over the first `trace.footprint_pages()`
    /// pages of `mem` (`cfg.kind` becomes `trace` if it is not).
    pub fn with_trace(
        mem: &'m [AtomicU64],
        mut cfg: WorkloadConfig,
        trace: Arc<PageTrace>,
    ) -> Result<Self, WorkloadError> {
        if !matches!(cfg.kind, WorkloadKind::Trace { .. }) {
            cfg.kind = WorkloadKind::Trace { path: trace.source().into() };
        }
        let (mem, trace) = Self::resolve(mem, &cfg, Some(trace))?;
        let pages = cfg.validate(mem.len())?;
        Self::build(mem, cfg, vec![0; pages], trace)
    }

    /// A guest resuming from a known expected-version table (one entry per page, 0 = all
    /// zeros), e.g. the [`versions`](Self::versions) of an earlier guest over the same region.
    /// Pages with a non-zero version count as touched (the final check re-reads them).
    pub fn with_versions(mem: &'m [AtomicU64], cfg: WorkloadConfig, versions: Vec<u32>) -> Result<Self, WorkloadError> {
        let (mem, trace) = Self::resolve(mem, &cfg, None)?;
        Self::build(mem, cfg, versions, trace)
    }

    /// For a `trace` workload: loads the trace (unless given) and narrows `mem` to its footprint.
    fn resolve(
        mem: &'m [AtomicU64],
        cfg: &WorkloadConfig,
        loaded: Option<Arc<PageTrace>>,
    ) -> Result<(&'m [AtomicU64], Option<Arc<PageTrace>>), WorkloadError> {
        let WorkloadKind::Trace { path } = &cfg.kind else {
            return Ok((mem, None));
        };
        let trace = match loaded {
            Some(t) => t,
            None => Arc::new(PageTrace::load(path).map_err(SharedTraceError::from)?),
        };
        let footprint = trace.footprint_pages() as usize;
        let pages = mem.len() / WORDS_PER_PAGE;
        if footprint > pages {
            return Err(WorkloadError::TraceTooLarge { trace: path.display().to_string(), footprint, pages });
        }
        Ok((&mem[..footprint * WORDS_PER_PAGE], Some(trace)))
    }

    fn build(
        mem: &'m [AtomicU64],
        cfg: WorkloadConfig,
        versions: Vec<u32>,
        trace: Option<Arc<PageTrace>>,
    ) -> Result<Self, WorkloadError> {
        let pages = cfg.validate(mem.len())?;
        if versions.len() != pages {
            return Err(config_err(
                "expected-version table length",
                versions.len(),
                &format!("exactly the region's page count ({pages})"),
            ));
        }
        let ranges = partition(pages, cfg.threads);
        let trace = trace.map(|t| {
            let counts = ranges.iter().map(|r| TracePattern::new(Arc::clone(&t), r.clone()).total()).collect();
            (t, counts)
        });
        Ok(Self {
            mem,
            ranges,
            touched: versions.iter().map(|&v| v != 0).collect(),
            versions,
            cfg,
            stats: Stats { final_check_passed: false, ..Stats::default() },
            trace,
            #[cfg(test)]
            panic_in_thread: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WorkloadConfig {
        &self.cfg
    }

    /// Number of pages in the region.
    pub fn pages(&self) -> usize {
        self.versions.len()
    }

    /// The page range owned by each thread.
    pub fn thread_ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// The expected version of every page (0 = never written).
    pub fn versions(&self) -> &[u32] {
        &self.versions
    }

    /// Consumes the guest, returning its expected-version table.
    pub fn into_versions(self) -> Vec<u32> {
        self.versions
    }

    /// Number of pages this guest has read or written (or inherited with a non-zero version).
    pub fn pages_touched(&self) -> u64 {
        self.touched.iter().filter(|&&t| t).count() as u64
    }

    /// Page operations `populate` + `access` will perform (for a progress total).
    pub fn planned_operations(&self) -> u64 {
        let populate = if self.cfg.populate { self.pages() as u64 } else { 0 };
        populate + self.planned_access_total()
    }

    fn planned_access_total(&self) -> u64 {
        (0..self.ranges.len()).map(|t| self.planned_for_thread(t)).sum()
    }

    fn accesses_for_thread(&self, t: usize) -> u64 {
        let n = self.ranges.len() as u64;
        self.cfg.accesses / n + u64::from((t as u64) < self.cfg.accesses % n)
    }

    fn planned_for_thread(&self, t: usize) -> u64 {
        match &self.trace {
            Some((_, counts)) => counts[t],
            None => planned_accesses(&self.cfg.kind, self.ranges[t].len(), self.accesses_for_thread(t)),
        }
    }

    fn begin_stage(progress: &Progress, phase: Phase, ops: u64) {
        progress.set_phase(phase);
        let want = progress.done.load(Ordering::Relaxed) + ops;
        progress.total.fetch_max(want, Ordering::Relaxed);
    }

    /// Splits the version and touched tables into each thread's mutable part.
    fn split_mut(&mut self) -> Vec<(usize, &mut [u32], &mut [bool])> {
        let mut items = Vec::with_capacity(self.ranges.len());
        let mut versions = self.versions.as_mut_slice();
        let mut touched = self.touched.as_mut_slice();
        for r in &self.ranges {
            let (v, v_rest) = versions.split_at_mut(r.len());
            let (t, t_rest) = touched.split_at_mut(r.len());
            items.push((r.start, v, t));
            versions = v_rest;
            touched = t_rest;
        }
        items
    }

    /// Verifies and writes the next version of every page once, each thread its range in
    /// order (normally version 0 → 1, which also checks the engine zero-fills new pages).
    pub fn populate(&mut self, progress: &Progress) -> Result<(), WorkloadError> {
        Self::begin_stage(progress, Phase::Populate, self.pages() as u64);
        let start = Instant::now();
        let ctx = Ctx { mem: self.mem, progress, abort: AtomicBool::new(false), first_error: OnceLock::new() };
        #[cfg(test)]
        let panic_in = self.panic_in_thread;
        let items = self.split_mut();
        let outs = parallel(&ctx, items, |_t, (first, versions, touched)| {
            #[cfg(test)]
            if panic_in == Some(_t) {
                panic!("injected test panic in thread {_t}");
            }
            let mut out = ThreadOut::default();
            let mut ticker = Ticker { progress, pending: 0 };
            for (i, (v, t)) in versions.iter_mut().zip(touched.iter_mut()).enumerate() {
                if ctx.should_stop() {
                    return Err(ctx.interrupted());
                }
                let page = first + i;
                verify_page(ctx.mem, page, *v).map_err(|m| ctx.fail(m.into()))?;
                *v = next_version(*v);
                write_page(ctx.mem, page, *v);
                *t = true;
                out.reads += 1;
                out.writes += 1;
                ticker.tick();
            }
            Ok(out)
        });
        self.stats.populate_secs += start.elapsed().as_secs_f64();
        for o in outs? {
            self.stats.reads_verified += o.reads;
            self.stats.writes += o.writes;
        }
        Ok(())
    }

    /// Runs the configured access pattern: every access verifies all 512 words of the page
    /// and, with probability `write_fraction` (for a trace: if the trace says so), writes the
    /// next version.
    pub fn access(&mut self, progress: &Progress) -> Result<(), WorkloadError> {
        Self::begin_stage(progress, Phase::Access, self.planned_access_total());
        let start = Instant::now();
        let ctx = Ctx { mem: self.mem, progress, abort: AtomicBool::new(false), first_error: OnceLock::new() };
        let kind = self.cfg.kind.clone();
        let trace = self.trace.as_ref().map(|(t, _)| Arc::clone(t));
        let seed = self.cfg.seed;
        let write_fraction = self.cfg.write_fraction;
        let phase_count = kind.phase_count();
        let per_thread: Vec<u64> = (0..self.ranges.len()).map(|t| self.accesses_for_thread(t)).collect();
        #[cfg(test)]
        let panic_in = self.panic_in_thread;
        let items = self.split_mut();
        let outs = parallel(&ctx, items, |t, (first, versions, touched)| {
            #[cfg(test)]
            if panic_in == Some(t) {
                panic!("injected test panic in thread {t}");
            }
            let stream = mix64(seed ^ mix64(t as u64 + 1));
            let mut pattern: Box<dyn AccessPattern> = match &trace {
                Some(tr) => Box::new(TracePattern::new(Arc::clone(tr), first..first + versions.len())),
                None => match pattern::build(&kind, versions.len(), per_thread[t], stream) {
                    Some(p) => p,
                    None => {
                        return Err(ctx.fail(config_err("workload", &kind, "a generated pattern or a loaded trace")));
                    }
                },
            };
            let mut write_rng = Xoshiro256::for_stream(seed, !(t as u64));
            let mut out = ThreadOut {
                phase_counts: vec![0; phase_count],
                phase_spans: vec![None; phase_count],
                ..ThreadOut::default()
            };
            let mut ticker = Ticker { progress, pending: 0 };
            let mut current: Option<(usize, Instant)> = None;
            let close = |out: &mut ThreadOut, phase: usize, began: Instant, now: Instant| {
                let span = out.phase_spans[phase].get_or_insert((began, now));
                span.0 = span.0.min(began);
                span.1 = span.1.max(now);
            };
            while let Some(a) = pattern.next_access() {
                if ctx.should_stop() {
                    return Err(ctx.interrupted());
                }
                if current.map(|c| c.0) != Some(a.phase) {
                    let now = Instant::now();
                    if let Some((p, began)) = current {
                        close(&mut out, p, began, now);
                    }
                    current = Some((a.phase, now));
                }
                let page = first + a.page;
                let v = &mut versions[a.page];
                verify_page(ctx.mem, page, *v).map_err(|m| ctx.fail(m.into()))?;
                out.reads += 1;
                if a.write.unwrap_or_else(|| write_rng.chance(write_fraction)) {
                    *v = next_version(*v);
                    write_page(ctx.mem, page, *v);
                    out.writes += 1;
                }
                touched[a.page] = true;
                out.accesses += 1;
                out.phase_counts[a.phase] += 1;
                ticker.tick();
            }
            if let Some((p, began)) = current {
                close(&mut out, p, began, Instant::now());
            }
            Ok(out)
        });
        let elapsed = start.elapsed().as_secs_f64();
        let outs = outs?;
        self.stats.access_secs += elapsed;
        let mut phase_counts = vec![0u64; phase_count];
        let mut phase_spans: Vec<Option<(Instant, Instant)>> = vec![None; phase_count];
        for o in &outs {
            self.stats.reads_verified += o.reads;
            self.stats.writes += o.writes;
            self.stats.accesses += o.accesses;
            for p in 0..phase_count {
                phase_counts[p] += o.phase_counts[p];
                if let Some((a, b)) = o.phase_spans[p] {
                    let span = phase_spans[p].get_or_insert((a, b));
                    span.0 = span.0.min(a);
                    span.1 = span.1.max(b);
                }
            }
        }
        self.stats.phase_throughput = phase_counts
            .iter()
            .zip(&phase_spans)
            .map(|(&n, span)| match span {
                Some((a, b)) => rate(n, b.duration_since(*a)),
                None => 0.0,
            })
            .collect();
        Ok(())
    }

    /// Re-reads every touched page once and verifies it against its expected version
    /// (catches pages the engine lost or corrupted after their last access).
    /// Returns the number of pages checked.
    pub fn final_check(&mut self, progress: &Progress) -> Result<u64, WorkloadError> {
        Self::begin_stage(progress, Phase::FinalCheck, self.pages_touched());
        let start = Instant::now();
        let ctx = Ctx { mem: self.mem, progress, abort: AtomicBool::new(false), first_error: OnceLock::new() };
        let items: Vec<(usize, &[u32], &[bool])> =
            self.ranges.iter().map(|r| (r.start, &self.versions[r.clone()], &self.touched[r.clone()])).collect();
        let outs = parallel(&ctx, items, |_t, (first, versions, touched)| {
            let mut out = ThreadOut::default();
            let mut ticker = Ticker { progress, pending: 0 };
            for (i, (&v, &t)) in versions.iter().zip(touched).enumerate() {
                if !t {
                    continue;
                }
                if ctx.should_stop() {
                    return Err(ctx.interrupted());
                }
                verify_page(ctx.mem, first + i, v).map_err(|m| ctx.fail(m.into()))?;
                out.reads += 1;
                ticker.tick();
            }
            Ok(out)
        });
        self.stats.final_check_secs += start.elapsed().as_secs_f64();
        let checked: u64 = outs?.iter().map(|o| o.reads).sum();
        self.stats.reads_verified += checked;
        self.stats.final_checked_pages = checked;
        self.stats.final_check_passed = true;
        Ok(checked)
    }

    /// The report of everything this guest did so far.
    pub fn report(&self) -> WorkloadReport {
        let phase_throughput = if self.stats.phase_throughput.is_empty() {
            vec![0.0; self.cfg.kind.phase_count()]
        } else {
            self.stats.phase_throughput.clone()
        };
        WorkloadReport {
            kind: self.cfg.kind.name().to_string(),
            threads: self.ranges.len(),
            pages: self.pages() as u64,
            accesses: self.stats.accesses,
            reads_verified: self.stats.reads_verified,
            writes: self.stats.writes,
            pages_touched: self.pages_touched(),
            final_checked_pages: self.stats.final_checked_pages,
            populate_secs: self.stats.populate_secs,
            access_secs: self.stats.access_secs,
            final_check_secs: self.stats.final_check_secs,
            access_throughput_per_sec: rate(self.stats.accesses, Duration::from_secs_f64(self.stats.access_secs)),
            phase_throughput,
            verified: self.stats.final_check_passed,
        }
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    let secs = d.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Runs a whole workload: populate (if configured), the access stage, then the final check
/// (if configured). See [`Guest`] to run the stages separately.
pub fn run(mem: &[AtomicU64], cfg: &WorkloadConfig, progress: &Progress) -> Result<WorkloadReport, WorkloadError> {
    Guest::new(mem, cfg.clone())?.run_stages(progress, |_| {})
}

impl Guest<'_> {
    /// Runs the configured stages as [`run`] does, calling `at(stage)` in this thread just before
    /// each stage starts and `at(Phase::Done)` after the last one (also when a stage failed):
    /// a caller can read counters exactly at the stage boundaries.
    pub fn run_stages(
        &mut self,
        progress: &Progress,
        mut at: impl FnMut(Phase),
    ) -> Result<WorkloadReport, WorkloadError> {
        let (populate, final_check) = (self.cfg.populate, self.cfg.final_check);
        let final_estimate = if final_check && populate { self.pages() as u64 } else { 0 };
        progress.total.fetch_add(self.planned_operations() + final_estimate, Ordering::Relaxed);
        let result = (|| {
            if populate {
                at(Phase::Populate);
                self.populate(progress)?;
            }
            at(Phase::Access);
            self.access(progress)?;
            if final_check {
                at(Phase::FinalCheck);
                self.final_check(progress)?;
            }
            Ok(())
        })();
        at(Phase::Done);
        progress.set_phase(Phase::Done);
        result.map(|()| self.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkloadKind;
    use crate::verify::WORDS_PER_PAGE;

    const PAGES: usize = 256;

    fn region(pages: usize) -> Vec<AtomicU64> {
        (0..pages * WORDS_PER_PAGE).map(|_| AtomicU64::new(0)).collect()
    }

    fn kinds() -> [WorkloadKind; 5] {
        [
            WorkloadKind::zipf(),
            WorkloadKind::scan(),
            WorkloadKind::stride(),
            WorkloadKind::Uniform,
            WorkloadKind::phases(),
        ]
    }

    fn cfg(kind: WorkloadKind, threads: usize) -> WorkloadConfig {
        WorkloadConfig { kind, accesses: 3000, threads, seed: 42, ..WorkloadConfig::default() }
    }

    fn flip(mem: &[AtomicU64], page: usize, word: usize) {
        mem[page * WORDS_PER_PAGE + word].fetch_xor(0x10, Ordering::Relaxed);
    }

    fn mismatch_page(err: &WorkloadError) -> usize {
        match err {
            WorkloadError::Mismatch { page, .. } => *page,
            e => panic!("expected a mismatch, got {e}"),
        }
    }

    #[test]
    fn every_workload_verifies_with_1_and_3_threads() {
        for kind in kinds() {
            for threads in [1, 3] {
                let mem = region(PAGES);
                let progress = Progress::new();
                let c = cfg(kind.clone(), threads);
                let r = run(&mem, &c, &progress).unwrap();
                let accesses = match kind {
                    WorkloadKind::Scan { passes } | WorkloadKind::Stride { passes, .. } => {
                        u64::from(passes) * PAGES as u64
                    }
                    _ => 3000,
                };
                assert!(r.verified, "{kind}/{threads}");
                assert_eq!(r.accesses, accesses, "{kind}/{threads}");
                assert_eq!(r.writes, PAGES as u64 + accesses);
                assert_eq!(r.pages_touched, PAGES as u64);
                assert_eq!(r.final_checked_pages, PAGES as u64);
                assert_eq!(r.reads_verified, 2 * PAGES as u64 + accesses);
                assert_eq!(r.phase_throughput.len(), kind.phase_count());
                assert!(r.phase_throughput.iter().all(|&t| t > 0.0), "{r:?}");
                assert_eq!(progress.phase(), Phase::Done);
                let done = progress.done.load(Ordering::Relaxed);
                assert_eq!(done, 2 * PAGES as u64 + accesses);
                assert_eq!(progress.total.load(Ordering::Relaxed), done);
            }
        }
    }

    #[test]
    fn run_stages_calls_back_at_every_stage_boundary() {
        let mem = region(16);
        let progress = Progress::new();
        let mut seen = Vec::new();
        let r = Guest::new(&mem, cfg(WorkloadKind::scan(), 2))
            .unwrap()
            .run_stages(&progress, |p| seen.push((p, progress.phase(), progress.done.load(Ordering::Relaxed))))
            .unwrap();
        assert!(r.verified);
        // Each callback sees the previous stage finished and the next not started.
        assert_eq!(
            seen,
            [
                (Phase::Populate, Phase::Idle, 0),
                (Phase::Access, Phase::Populate, 16),
                (Phase::FinalCheck, Phase::Access, 16 + 48),
                (Phase::Done, Phase::FinalCheck, 16 + 48 + 16),
            ]
        );
        let mut seen = Vec::new();
        let c = WorkloadConfig { populate: false, final_check: false, ..cfg(WorkloadKind::scan(), 1) };
        Guest::new(&region(16), c).unwrap().run_stages(&progress, |p| seen.push(p)).unwrap();
        assert_eq!(seen, [Phase::Access, Phase::Done]);
    }

    #[test]
    fn runs_are_deterministic_per_seed() {
        let a = region(64);
        let b = region(64);
        let c = cfg(WorkloadKind::zipf(), 2);
        let mut ga = Guest::new(&a, c.clone()).unwrap();
        let mut gb = Guest::new(&b, c).unwrap();
        let p = Progress::new();
        ga.access(&p).unwrap();
        gb.access(&p).unwrap();
        assert_eq!(ga.versions(), gb.versions());
    }

    #[test]
    fn read_only_access_writes_nothing() {
        let mem = region(32);
        let c = WorkloadConfig { write_fraction: 0.0, ..cfg(WorkloadKind::Uniform, 2) };
        let r = run(&mem, &c, &Progress::new()).unwrap();
        assert_eq!(r.writes, 32);
        assert!(r.verified);
    }

    #[test]
    fn zero_region_without_populate_verifies_version_zero() {
        for kind in kinds() {
            let mem = region(PAGES);
            let c = WorkloadConfig { populate: false, write_fraction: 0.0, ..cfg(kind.clone(), 3) };
            let r = run(&mem, &c, &Progress::new()).unwrap();
            assert!(r.verified && r.writes == 0, "{kind}: {r:?}");
            assert!(mem.iter().all(|w| w.load(Ordering::Relaxed) == 0));
        }
        // With writes, untouched pages must still be zero at the end.
        let mem = region(PAGES);
        let c = WorkloadConfig { populate: false, accesses: 50, ..cfg(WorkloadKind::zipf(), 1) };
        let mut g = Guest::new(&mem, c).unwrap();
        g.access(&Progress::new()).unwrap();
        assert!(g.pages_touched() < PAGES as u64);
        verify_all_ok(&mem, g.versions());
    }

    fn verify_all_ok(mem: &[AtomicU64], versions: &[u32]) {
        crate::verify::verify_all(mem, versions).unwrap();
    }

    #[test]
    fn nonzero_page_without_populate_is_caught() {
        let mem = region(8);
        mem[5 * WORDS_PER_PAGE + 100].store(7, Ordering::Relaxed);
        let c = WorkloadConfig { populate: false, ..cfg(WorkloadKind::scan(), 2) };
        let err = run(&mem, &c, &Progress::new()).unwrap_err();
        assert_eq!(err, WorkloadError::Mismatch { page: 5, word: 100, expected: 0, found: 7, expected_version: 0 });
    }

    #[test]
    fn corruption_between_populate_and_access_is_detected() {
        for kind in kinds() {
            for threads in [1, 3] {
                let mem = region(PAGES);
                let p = Progress::new();
                let mut g = Guest::new(&mem, cfg(kind.clone(), threads)).unwrap();
                g.populate(&p).unwrap();
                let versions = g.into_versions();
                assert!(versions.iter().all(|&v| v == 1));
                flip(&mem, 77, 300);
                // Resume in a new guest from the saved table.
                let c = WorkloadConfig { populate: false, ..cfg(kind.clone(), threads) };
                let mut g = Guest::with_versions(&mem, c, versions).unwrap();
                let err = g.access(&p).and_then(|()| g.final_check(&p).map(drop)).unwrap_err();
                assert_eq!(mismatch_page(&err), 77, "{kind}/{threads}");
                assert!(err.to_string().contains("page 77 word 300"), "{err}");
            }
        }
    }

    #[test]
    fn final_check_catches_corruption_after_last_access() {
        let mem = region(PAGES);
        let p = Progress::new();
        let mut g = Guest::new(&mem, cfg(WorkloadKind::Uniform, 3)).unwrap();
        g.populate(&p).unwrap();
        g.access(&p).unwrap();
        flip(&mem, 200, 0);
        let err = g.final_check(&p).unwrap_err();
        assert_eq!(mismatch_page(&err), 200);
    }

    #[test]
    fn stale_page_is_detected() {
        // The engine writing back an old copy of a page: restore the populate-time content.
        let mem = region(16);
        let p = Progress::new();
        let c = WorkloadConfig { accesses: 0, ..cfg(WorkloadKind::scan(), 1) };
        let mut g = Guest::new(&mem, c).unwrap();
        g.populate(&p).unwrap();
        let old: Vec<u64> =
            mem[3 * WORDS_PER_PAGE..4 * WORDS_PER_PAGE].iter().map(|w| w.load(Ordering::Relaxed)).collect();
        g.access(&p).unwrap(); // 3 passes: page 3 is now at version 4
        for (w, v) in mem[3 * WORDS_PER_PAGE..].iter().zip(old) {
            w.store(v, Ordering::Relaxed);
        }
        match g.final_check(&p).unwrap_err() {
            WorkloadError::Mismatch { page, expected_version, .. } => assert_eq!((page, expected_version), (3, 4)),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn corruption_by_another_thread_is_detected() {
        // Read-only accesses so the owner never overwrites the corruption: it must be caught
        // either during the access stage or by the final check.
        let mem = region(PAGES);
        let p = Progress::new();
        let c = WorkloadConfig { accesses: 200_000, write_fraction: 0.0, ..cfg(WorkloadKind::Uniform, 2) };
        let mut g = Guest::new(&mem, c).unwrap();
        g.populate(&p).unwrap();
        let err = std::thread::scope(|s| {
            let corrupter = s.spawn(|| {
                while p.done.load(Ordering::Relaxed) < PAGES as u64 + 1000 {
                    std::thread::yield_now();
                }
                flip(&mem, 123, 511);
            });
            let access = g.access(&p);
            corrupter.join().unwrap(); // the flip happened before the final check
            access.and_then(|()| g.final_check(&p).map(drop))
        })
        .unwrap_err();
        assert_eq!(mismatch_page(&err), 123);
    }

    #[test]
    fn mismatch_stops_all_threads_quickly() {
        let mem = region(PAGES);
        let p = Progress::new();
        let c = WorkloadConfig { populate: false, accesses: 100_000_000, ..cfg(WorkloadKind::Uniform, 3) };
        // Page 0 belongs to thread 0; every thread runs until the abort flag stops it.
        mem[0].store(1, Ordering::Relaxed);
        let err = run(&mem, &c, &p).unwrap_err();
        assert_eq!(mismatch_page(&err), 0);
        assert!(p.done.load(Ordering::Relaxed) < 10_000_000);
    }

    #[test]
    fn cancel_stops_the_run() {
        let mem = region(PAGES);
        let p = Progress::new();
        let c = WorkloadConfig { accesses: u64::MAX / 2, ..cfg(WorkloadKind::zipf(), 2) };
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                while p.phase() != Phase::Access {
                    std::thread::yield_now();
                }
                p.cancel();
            });
            run(&mem, &c, &p)
        });
        assert!(matches!(result, Err(WorkloadError::Cancelled { .. })), "{result:?}");
    }

    #[test]
    fn worker_panic_is_an_error() {
        let mem = region(PAGES);
        let p = Progress::new();
        let c = WorkloadConfig { accesses: u64::MAX / 2, ..cfg(WorkloadKind::Uniform, 3) };
        let mut g = Guest::new(&mem, c).unwrap();
        g.panic_in_thread = Some(1);
        match g.access(&p).unwrap_err() {
            WorkloadError::WorkerPanicked { thread, message } => {
                assert_eq!(thread, 1);
                assert!(message.contains("injected"), "{message}");
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn threads_own_disjoint_contiguous_ranges() {
        let mem = region(10);
        let g = Guest::new(&mem, cfg(WorkloadKind::Uniform, 3)).unwrap();
        assert_eq!(g.thread_ranges(), [0..3, 3..6, 6..10]);
    }

    #[test]
    fn invalid_config_is_rejected() {
        let mem = region(2);
        assert!(matches!(Guest::new(&mem[..100], WorkloadConfig::default()), Err(WorkloadError::Config { .. })));
        assert!(Guest::new(&mem, cfg(WorkloadKind::Uniform, 3)).is_err());
        assert!(Guest::with_versions(&mem, WorkloadConfig::default(), vec![0; 3]).is_err());
    }

    #[test]
    fn phases_report_one_throughput_per_phase() {
        let mem = region(PAGES);
        let c = WorkloadConfig {
            kind: WorkloadKind::Phases { hot_fraction: 0.1, phases: 5 },
            accesses: 5000,
            ..cfg(WorkloadKind::Uniform, 3)
        };
        let r = run(&mem, &c, &Progress::new()).unwrap();
        assert_eq!(r.phase_throughput.len(), 5);
        assert!(r.phase_throughput.iter().all(|&t| t > 0.0), "{r:?}");
    }

    /// A trace over 40 pages: a scan of writes, then a strided read pattern with writes.
    fn small_trace() -> PageTrace {
        use crate::trace::TraceAccess;
        let first = (0..40).map(|page| TraceAccess { page, write: true });
        let then = (0..300u32).map(|i| TraceAccess { page: (i * 7) % 40, write: i % 3 == 0 });
        PageTrace::from_accesses("small", 40, first.chain(then)).unwrap()
    }

    #[test]
    fn a_trace_replays_over_its_footprint() {
        let trace = small_trace();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.vmtrace");
        trace.save(&path).unwrap();
        for threads in [1, 3] {
            for populate in [true, false] {
                let mem = region(64);
                let c = WorkloadConfig {
                    kind: WorkloadKind::Trace { path: path.clone() },
                    populate,
                    ..cfg(WorkloadKind::Uniform, threads)
                };
                let r = run(&mem, &c, &Progress::new()).unwrap();
                assert!(r.verified, "{threads}/{populate}: {r:?}");
                assert_eq!((r.kind.as_str(), r.pages, r.accesses), ("trace", 40, 340));
                let populated = if populate { 40 } else { 0 };
                assert_eq!(r.writes, populated + trace.writes(), "the trace decides which accesses write");
                assert_eq!(r.pages_touched, 40);
                // Pages past the footprint are never touched.
                assert!(mem[40 * WORDS_PER_PAGE..].iter().all(|w| w.load(Ordering::Relaxed) == 0));
            }
        }
    }

    #[test]
    fn a_trace_replay_catches_corruption() {
        let trace = Arc::new(small_trace());
        let mem = region(40);
        let p = Progress::new();
        let c = WorkloadConfig { populate: true, ..cfg(WorkloadKind::Uniform, 2) };
        let mut g = Guest::with_trace(&mem, c, Arc::clone(&trace)).unwrap();
        assert_eq!(g.config().kind.name(), "trace");
        g.populate(&p).unwrap();
        flip(&mem, 13, 5);
        let err = g.access(&p).unwrap_err();
        assert_eq!(mismatch_page(&err), 13);
    }

    #[test]
    fn a_trace_needs_memory_for_its_footprint_and_a_readable_file() {
        let mem = region(16);
        let err = Guest::with_trace(&mem, WorkloadConfig::default(), Arc::new(small_trace())).unwrap_err();
        assert!(matches!(err, WorkloadError::TraceTooLarge { footprint: 40, pages: 16, .. }), "{err}");
        assert!(err.to_string().contains("at least 1 MiB"), "{err}");
        let c = WorkloadConfig {
            kind: WorkloadKind::Trace { path: "/nonexistent/t.vmtrace".into() },
            ..cfg(WorkloadKind::Uniform, 1)
        };
        let err = Guest::new(&mem, c).unwrap_err();
        assert!(matches!(err, WorkloadError::Trace(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/t.vmtrace"), "{err}");
    }
}
