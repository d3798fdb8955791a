//! A page whose stored content changed during its last residency comes back writable: reading
//! it after an eviction costs one MISSING fault and no write-protect fault, and its next
//! eviction writes the new content. A page stored for the first time, or one that came back
//! writable but was not modified, comes back write-protected.

mod common;

use vmtier_engine::{Engine, Tier};

use common::{check_page, config, page_bytes, read_host, retry_busy, write_page};

#[test]
fn written_pages_come_back_writable() {
    let (cfg, _dir) = config(128, 64);
    let engine = Engine::start(cfg).expect("start engine");
    let mem = engine.guest_words();

    // Stored for the first time: that says nothing about rewrites, so it comes back
    // write-protected and its rewrite is a write-protect fault.
    write_page(mem, 0, 10);
    assert!(retry_busy("evict", || engine.move_page(0, Tier::Ssd)).unwrap());
    let before = engine.snapshot();
    check_page(mem, 0, 10);
    assert!(!engine.page(0).unwrap().dirty(), "installed clean");
    write_page(mem, 0, 10);
    assert_eq!(engine.snapshot().write_faults - before.write_faults, 1);
    assert!(retry_busy("evict", || engine.move_page(0, Tier::Ssd)).unwrap());

    // That rewrite kept the content, which the eviction's checksum sees: still not "written".
    // Now change it.
    check_page(mem, 0, 10);
    write_page(mem, 0, 15);
    assert!(retry_busy("evict", || engine.move_page(0, Tier::Ssd)).unwrap());

    // Page 0 was modified during its last residency, so a read fault installs it writable.
    let before = engine.snapshot();
    check_page(mem, 0, 15);
    write_page(mem, 0, 11);
    let after = engine.snapshot();
    assert_eq!(after.faults - before.faults, 1, "one MISSING fault for the read");
    assert_eq!(after.write_faults - before.write_faults, 0, "no write-protect fault for the write after it");
    // The write is not lost: the eviction writes it out and it reads back.
    assert!(retry_busy("evict", || engine.move_page(0, Tier::Ssd)).unwrap());
    assert_eq!(read_host(&engine, 0).unwrap(), page_bytes(0, 11));

    // Read again (installed writable: modified last time) but not written: the eviction still
    // writes it out, finds it unchanged, and the hint clears.
    check_page(mem, 0, 11);
    assert!(retry_busy("evict", || engine.move_page(0, Tier::Ssd)).unwrap());
    // So the next read installs it write-protected: a write after it is a write-protect fault,
    // and that write reaches storage too.
    let before = engine.snapshot();
    check_page(mem, 0, 11);
    assert!(!engine.page(0).unwrap().dirty(), "installed clean");
    write_page(mem, 0, 12);
    let after = engine.snapshot();
    assert_eq!(after.write_faults - before.write_faults, 1);
    assert!(retry_busy("evict", || engine.move_page(0, Tier::Ssd)).unwrap());
    assert_eq!(read_host(&engine, 0).unwrap(), page_bytes(0, 12));
    check_page(mem, 0, 12);
    drop(engine);
}
