mod common;
use std::sync::atomic::Ordering;
use vmtier_engine::Engine;
use vmtier_workload::verify::expected_word;

fn one(handlers: usize, seed: u64) -> Option<String> {
    let (mut cfg, _dir) = common::config(1024, 64);
    cfg.fault.handler_threads = handlers;
    cfg.tier2.direct_io = std::env::var("DIO").is_ok();
    let engine = Engine::start(cfg).unwrap();
    let mem = engine.guest_words();
    let out = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4usize)
            .map(|t| {
                let engine = &engine;
                s.spawn(move || {
                    let mem = engine.guest_words();
                    let mut ver = vec![0u32; 256];
                    let mut x = seed ^ (t as u64 * 7919 + 1);
                    for _ in 0..5000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let lp = (x % 256) as usize;
                        let p = t * 256 + lp;
                        let w0 = mem[p * 512].load(Ordering::Relaxed);
                        let want = if ver[lp] == 0 { 0 } else { expected_word(p, ver[lp], 0) };
                        if w0 != want {
                            let mut found = String::from("?");
                            'o: for q in 0..1024 {
                                for v in 1..100 {
                                    if expected_word(q, v, 0) == w0 {
                                        found = format!("page {q} v{v}");
                                        break 'o;
                                    }
                                }
                            }
                            if w0 == 0 {
                                found = "zeros".into();
                            }
                            return Some(format!(
                                "handlers {handlers}: page {p} want v{} found {found}; view {:?}",
                                ver[lp],
                                engine.page(p).unwrap()
                            ));
                        }
                        ver[lp] += 1;
                        for i in 0..512 {
                            mem[p * 512 + i].store(expected_word(p, ver[lp], i), Ordering::Relaxed);
                        }
                    }
                    None
                })
            })
            .collect();
        hs.into_iter().filter_map(|h| h.join().unwrap()).next()
    });
    let _ = mem;
    let snap = engine.shutdown();
    out.map(|o| {
        format!(
            "{o}\n  snap faults {} wp {} reclaims {} clean {} parked {}",
            snap.faults, snap.write_faults, snap.direct_reclaims, snap.clean_evictions, snap.parked
        )
    })
}

#[test]
fn diag() {
    for handlers in [1, 2] {
        for seed in 1..6 {
            if let Some(m) = one(handlers, seed) {
                println!("{m}");
            }
        }
    }
}
