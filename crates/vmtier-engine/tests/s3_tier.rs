//! The engine with tier 3 on a real S3-compatible server (`s3s-fs`): pages moved to segment
//! objects on the server read back byte for byte, through guest memory and `read_page`, and a
//! segment corrupted on the server is detected and never served.
//!
//! Needs the `s3s-fs` binary: `scripts/s3-test-server.sh install`, or point `VMTIER_S3S_FS` at
//! it. Set `VMTIER_SKIP_S3=1` to skip.

mod common;

use vmtier_engine::page_table::POISONED;
use vmtier_engine::{Engine, Tier};

use common::s3::S3Server;
use common::{check_page, config, configure_tier3, flip_byte, page_bytes, read_host, tier3_location, write_page};

#[test]
fn tier3_on_s3_server() {
    let Some(server) = S3Server::start_or_skip("tier3_on_s3_server") else {
        return;
    };
    let (mut cfg, _dir) = config(128, 64);
    configure_tier3(&mut cfg, &server, "vm-0/tier3");
    let engine = Engine::start(cfg).expect("start engine on S3");
    let mem = engine.guest_words();
    for p in 0..16 {
        write_page(mem, p, p as u64 + 1);
    }
    // Resident pages straight to tier 3, and tier-2 pages down to tier 3.
    for p in 0..8 {
        assert!(engine.move_page(p, Tier::Object).expect("move to S3"), "page {p}");
    }
    for p in 8..12 {
        assert!(engine.move_page(p, Tier::Ssd).expect("evict"), "page {p}");
        assert!(engine.move_page(p, Tier::Object).expect("move tier 2 -> S3"), "page {p}");
    }
    for p in 0..12 {
        assert_eq!(engine.page(p).unwrap().tier(), 3, "page {p}");
    }
    let snap = engine.snapshot();
    assert_eq!(snap.pages_in_tier["3"], 12);
    assert!(snap.tier3_segments >= 1 && snap.tier3_bytes_written >= 12 * 4096, "{snap:?}");
    // The objects are on the server.
    let objects = server.bucket_dir().join("vm-0/tier3");
    let (name, _) = tier3_location(&engine, 0);
    assert!(objects.join(&name).is_file(), "{name} stored under {}", objects.display());

    // Host reads from S3, then guest reads (faults served from S3).
    for p in 0..12 {
        assert_eq!(read_host(&engine, p).expect("read_page from S3"), page_bytes(p, p as u64 + 1), "page {p}");
    }
    for p in 1..12 {
        check_page(mem, p, p as u64 + 1);
    }
    assert!(engine.snapshot().tier3_hits >= 11);
    // Up to tier 2 and back down, then read again.
    assert!(engine.move_page(5, Tier::Ssd).expect("evict page 5"));
    assert!(engine.move_page(5, Tier::Object).expect("page 5 back to S3"));
    check_page(mem, 5, 6);

    // Corrupt page 0's copy on the server: detected, never served, poisoned on promotion.
    let (name, offset) = tier3_location(&engine, 0);
    flip_byte(&objects.join(name), offset + 100);
    let e = read_host(&engine, 0).expect_err("corrupt S3 copy must not be read");
    assert!(e.is_corruption(), "{e}");
    let e = engine.move_page(0, Tier::Dram).expect_err("promotion of a corrupt page");
    assert!(e.is_corruption(), "{e}");
    assert!(engine.page(0).unwrap().word & POISONED != 0);
    let snap = engine.shutdown();
    assert_eq!(snap.corrupt_pages, 1, "{snap:?}");
    assert_eq!(snap.io_errors, 0, "{snap:?}");
    drop(server);
}
