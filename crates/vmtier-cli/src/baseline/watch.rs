//! Watching a guest run: progress lines on stderr, a hook at every stage change (to read
//! counters at the start and end of the access stage), and cancellation on Ctrl-C.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vmtier_workload::{Phase, Progress};

use super::signals;

/// How often the stage is polled; the hook sees a stage change at most this late.
const POLL: Duration = Duration::from_millis(2);

/// Polls `progress` until `done()`. Calls `on_phase` at every change of stage (with the new
/// one), prints `label: stage done/total` on stderr every `every`, and cancels the run when a
/// signal arrived ([`signals::interrupted`]).
pub fn watch(
    progress: &Progress,
    label: &str,
    every: Duration,
    done: impl Fn() -> bool,
    mut on_phase: impl FnMut(Phase),
) {
    let mut last_phase = Phase::Idle;
    let mut last_line = Instant::now();
    loop {
        let finished = done();
        let phase = progress.phase();
        if phase != last_phase {
            on_phase(phase);
            last_phase = phase;
        }
        if finished {
            return;
        }
        if signals::interrupted() {
            progress.cancel();
        }
        if last_line.elapsed() >= every {
            last_line = Instant::now();
            let d = progress.done.load(Ordering::Relaxed);
            let t = progress.total.load(Ordering::Relaxed).max(1);
            eprintln!("{label}: {} {d}/{t} page operations ({:.0}%)", phase.as_str(), d as f64 * 100.0 / t as f64);
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_every_stage_of_a_run() {
        let _serial = signals::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mem: Vec<_> =
            (0..64 * vmtier_workload::WORDS_PER_PAGE).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        let cfg = vmtier_workload::WorkloadConfig { accesses: 200_000, ..Default::default() };
        let progress = Progress::new();
        let mut seen = Vec::new();
        std::thread::scope(|s| {
            let h = s.spawn(|| vmtier_workload::run(&mem, &cfg, &progress));
            watch(&progress, "test", Duration::from_secs(3600), || h.is_finished(), |p| seen.push(p));
            h.join().unwrap().unwrap();
        });
        assert_eq!(seen.last(), Some(&Phase::Done), "{seen:?}");
        assert!(seen.contains(&Phase::Access), "{seen:?}");
    }
}
