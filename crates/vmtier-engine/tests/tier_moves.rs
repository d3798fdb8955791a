//! Page contents never change across tier moves: random sequences of guest writes and reads,
//! hand-driven moves between DRAM, tier 2 and tier 3, compactions and host-side reads, checked
//! byte for byte against a model. The DRAM cap holds throughout.

mod common;

use std::collections::HashMap;

use proptest::prelude::*;
use vmtier_engine::{Engine, Tier};

use common::{WORDS, check_page, config, page_bytes, read_host, retry_busy, write_page};

const PAGES: usize = 128;
const DRAM_PAGES: usize = 64;

#[derive(Debug, Clone)]
enum Op {
    /// Write all 512 words of a page through guest memory.
    Write(usize, u64),
    /// Read all 512 words of a page through guest memory.
    Read(usize),
    /// Move a page by hand.
    Move(usize, Tier),
    /// Compact tier 2 and tier 3.
    Compact,
    /// Read a page with `read_page` (no fault).
    ReadHost(usize),
    /// Read every page of the guest through guest memory: more pages than the DRAM budget, so
    /// faults must reclaim.
    ReadAll,
}

fn page() -> impl Strategy<Value = usize> {
    // Mostly a few pages, so operations pile up on the same pages; sometimes any page.
    prop_oneof![3 => 0..8usize, 1 => 0..PAGES]
}

fn tier() -> impl Strategy<Value = Tier> {
    prop_oneof![Just(Tier::Dram), Just(Tier::Ssd), Just(Tier::Object)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (page(), prop_oneof![1 => Just(0u64), 6 => 1..u64::MAX]).prop_map(|(p, v)| Op::Write(p, v)),
        4 => page().prop_map(Op::Read),
        8 => (page(), tier()).prop_map(|(p, t)| Op::Move(p, t)),
        1 => Just(Op::Compact),
        3 => page().prop_map(Op::ReadHost),
        1 => Just(Op::ReadAll),
    ]
}

fn start() -> (Engine, tempfile::TempDir) {
    let (mut cfg, dir) = config(PAGES as u64, DRAM_PAGES as u64);
    // Small slot files, so compaction of tier 2 has files to drain and delete.
    cfg.tier2.slots_per_file = 8;
    (Engine::start(cfg).expect("start engine"), dir)
}

fn run(ops: &[Op]) {
    let (engine, _dir) = start();
    let mem = engine.guest_words();
    assert_eq!(mem.len(), PAGES * WORDS);
    let mut model: HashMap<usize, u64> = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Write(p, v) => {
                write_page(mem, p, v);
                model.insert(p, v);
            }
            Op::Read(p) => check_page(mem, p, model.get(&p).copied().unwrap_or(0)),
            Op::Move(p, t) => {
                let before = engine.page(p).expect("page").tier();
                let moved = retry_busy("move_page", || engine.move_page(p, t))
                    .unwrap_or_else(|e| panic!("step {step}: move page {p} (tier {before}) to {t:?}: {e}"));
                let after = engine.page(p).expect("page").tier();
                if moved {
                    let want = match t {
                        Tier::Dram => 1,
                        Tier::Ssd => 2,
                        Tier::Object => 3,
                    };
                    // A page moved down whose content is all zeros becomes a zero page.
                    let zero = model.get(&p).copied().unwrap_or(0) == 0;
                    assert!(
                        after == want || (zero && after == 0),
                        "step {step}: page {p} moved {before} -> {t:?} but is in tier {after}"
                    );
                }
            }
            Op::Compact => engine.compact(),
            Op::ReadHost(p) => {
                let got = read_host(&engine, p).unwrap_or_else(|e| panic!("step {step}: read_page {p}: {e}"));
                assert!(
                    got == page_bytes(p, model.get(&p).copied().unwrap_or(0)),
                    "step {step}: read_page {p} differs"
                );
            }
            Op::ReadAll => {
                for p in 0..PAGES {
                    check_page(mem, p, model.get(&p).copied().unwrap_or(0));
                }
            }
        }
        let snap = engine.snapshot();
        assert!(snap.resident_bytes <= snap.dram_budget_bytes, "step {step}: {snap:?}");
    }
    // Everything, both ways: host reads first (no faults), then through the guest.
    for p in 0..PAGES {
        let want = model.get(&p).copied().unwrap_or(0);
        let got = read_host(&engine, p).unwrap_or_else(|e| panic!("final read_page {p}: {e}"));
        assert!(got == page_bytes(p, want), "final read_page {p} differs (tier {})", engine.page(p).unwrap().tier());
    }
    for p in 0..PAGES {
        check_page(mem, p, model.get(&p).copied().unwrap_or(0));
    }
    let snap = engine.shutdown();
    assert!(snap.peak_resident_bytes <= snap.dram_budget_bytes, "{snap:?}");
    assert_eq!(snap.corrupt_pages, 0, "{snap:?}");
    assert_eq!(snap.io_errors, 0, "{snap:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn contents_survive_any_sequence_of_moves(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops);
    }
}

/// A fixed sequence through every kind of move, including a round trip 1 -> 2 -> 3 -> 2 -> 1 and
/// tier-3 compaction of released segments.
#[test]
fn round_trip_through_every_tier() {
    let ops = [
        Op::Write(1, 11),
        Op::Write(2, 22),
        Op::Move(1, Tier::Ssd),
        Op::ReadHost(1),
        Op::Move(1, Tier::Object),
        Op::ReadHost(1),
        Op::Move(1, Tier::Ssd),
        Op::Move(1, Tier::Dram),
        Op::Read(1),
        Op::Move(2, Tier::Object),
        Op::Write(2, 23),
        Op::Move(2, Tier::Object),
        Op::Compact,
        Op::ReadHost(2),
        Op::Read(2),
        Op::Write(3, 0),
        Op::Move(3, Tier::Ssd),
        Op::ReadAll,
        Op::Compact,
        Op::ReadAll,
    ];
    run(&ops);
}
