//! What authentication costs per page and per record on this machine: HMAC-SHA256 page tags
//! and record MACs against crc32c, medians of 7 rounds.
//!
//! `cargo run --release -p vmtier-repl --example mac_cost`

use std::hint::black_box;
use std::time::Instant;

use vmtier_repl::ClusterKey;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per call of `f`, median of 7 rounds of `n` calls.
fn per_call(n: u32, mut f: impl FnMut(u32)) -> f64 {
    median(
        (0..7)
            .map(|_| {
                let t = Instant::now();
                for i in 0..n {
                    f(i);
                }
                t.elapsed().as_nanos() as f64 / f64::from(n)
            })
            .collect(),
    )
}

fn main() {
    let key = ClusterKey::from_bytes(&[0x42; 32], "bench").expect("key");
    let page: Vec<u8> = (0..4096u32).map(|i| (i * 31) as u8).collect();
    let tag = per_call(50_000, |i| {
        black_box(key.page_tag(i, black_box(&page)));
    });
    let verify = per_call(50_000, |i| {
        black_box(key.verify_page(i, black_box(&page), &[0; 16]));
    });
    let crc = per_call(200_000, |_| {
        black_box(crc32c::crc32c(black_box(&page)));
    });
    // A checkpoint record of 1000 pages in the writer's own tier 2 (29 bytes each) and a heartbeat.
    let record = vec![7u8; 32 + 53 + 1000 * 29];
    let rec_mac = per_call(5_000, |_| {
        black_box(key.record_mac("log/00000000000000000001.rec", black_box(&record)));
    });
    let small = vec![7u8; 80];
    let hb_mac = per_call(200_000, |_| {
        black_box(key.record_mac("lease/heartbeat", black_box(&small)));
    });
    println!(
        "4 KiB page: HMAC-SHA256 tag {tag:.0} ns, tag check {verify:.0} ns, crc32c {crc:.0} ns ({:.1}x)",
        tag / crc
    );
    println!(
        "record MAC: 1000-page checkpoint ({} bytes) {:.1} us, heartbeat {hb_mac:.0} ns",
        record.len(),
        rec_mac / 1000.0
    );
}
