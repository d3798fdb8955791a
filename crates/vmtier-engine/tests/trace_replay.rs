//! The predictors against a real program's faults, with no timing: the faults an LRU memory of
//! 25% of the footprint takes on the recorded `sort` trace (`traces/sort.lackey.gz`), fed one by
//! one; a prediction the rest of the sequence touches counts as used. This is what each
//! predictor could do if every prediction arrived in time, the figure docs/prefetch.md quotes:
//!
//! ```sh
//! cargo test --release -p vmtier-engine --test trace_replay -- --nocapture
//! ```

use std::collections::{HashSet, VecDeque};

use vmtier_engine::{PrefetcherKind, prefetch};
use vmtier_workload::PageTrace;

/// The pages an LRU memory of `cap` pages faults on, in order.
fn lru_faults(pages: impl Iterator<Item = u64>, cap: usize) -> Vec<u64> {
    let mut resident: HashSet<u64> = HashSet::new();
    // Recency order with lazy deletion: (page, stamp); a page's live stamp is in `last`.
    let mut order: VecDeque<(u64, u64)> = VecDeque::new();
    let mut last = std::collections::HashMap::new();
    let mut faults = Vec::new();
    for (stamp, p) in pages.enumerate() {
        let stamp = stamp as u64;
        if !resident.contains(&p) {
            faults.push(p);
            resident.insert(p);
            while resident.len() > cap {
                let (q, s) = order.pop_front().expect("a resident page is in the order");
                if last.get(&q) == Some(&s) {
                    resident.remove(&q);
                    last.remove(&q);
                }
            }
        }
        last.insert(p, stamp);
        order.push_back((p, stamp));
    }
    faults
}

/// Faults avoided and pages issued by `kind` on `faults` ([`prefetch::replay`]).
fn replay(kind: PrefetcherKind, faults: &[u64], pages: u64) -> (usize, usize) {
    prefetch::replay(&mut *kind.build(pages, 64), faults)
}

#[test]
fn on_sort_faults_history_avoids_the_most() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../traces/sort.lackey.gz");
    let trace = PageTrace::load(path).expect("the recorded sort trace loads");
    let footprint = u64::from(trace.footprint_pages());
    let faults = lru_faults(trace.accesses().map(|a| u64::from(a.page)), footprint as usize / 4);
    let mut avoided = Vec::new();
    for kind in [PrefetcherKind::Readahead, PrefetcherKind::Stride, PrefetcherKind::Leap, PrefetcherKind::History] {
        let (a, i) = replay(kind, &faults, footprint);
        eprintln!(
            "{kind}: avoids {a} of {} faults ({:.1}%), issues {i} ({:.1}% used)",
            faults.len(),
            100.0 * a as f64 / faults.len() as f64,
            100.0 * a as f64 / i.max(1) as f64
        );
        avoided.push(a);
    }
    // The streams of a merge sort: history follows them at least as well as leap, and far
    // better than a single stride.
    let [_, stride, leap, history] = avoided[..] else { unreachable!("four predictors ran") };
    assert!(history >= leap, "history {history}, leap {leap}");
    assert!(history > stride, "history {history}, stride {stride}");
}
