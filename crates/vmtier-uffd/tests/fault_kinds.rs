//! End-to-end checks of the bindings against the running kernel: each fault kind is raised by a
//! real access and resolved by the matching ioctl.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use vmtier_uffd::uffd::{feature, mode};
use vmtier_uffd::{AlignedBuf, Event, FaultKind, Filled, Memfd, PAGE_SIZE, SharedMapping, Uffd};

const FEATURES: u64 =
    feature::MISSING_SHMEM | feature::MINOR_SHMEM | feature::WP_HUGETLBFS_SHMEM | feature::PAGEFAULT_FLAG_WP;

struct Fixture {
    memfd: Memfd,
    map: Arc<SharedMapping>,
    uffd: Arc<Uffd>,
}

fn fixture(pages: usize) -> Fixture {
    let memfd = Memfd::create("uffd-test", (pages * PAGE_SIZE) as u64).unwrap();
    let map = Arc::new(SharedMapping::new(&memfd).unwrap());
    let uffd = Arc::new(Uffd::new(FEATURES).unwrap());
    uffd.register(&map, mode::MISSING | mode::WP | mode::MINOR).unwrap();
    Fixture { memfd, map, uffd }
}

/// Runs `access` on another thread and returns the fault events it raised, resolving each with
/// `resolve`.
fn with_handler(
    f: &Fixture,
    access: impl FnOnce(&SharedMapping) + Send + 'static,
    mut resolve: impl FnMut(&Uffd, Event),
) -> Vec<Event> {
    let map = Arc::clone(&f.map);
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let d2 = Arc::clone(&done);
    let t = std::thread::spawn(move || {
        access(&map);
        d2.store(true, Ordering::SeqCst);
        tx.send(()).unwrap();
    });
    let mut seen = Vec::new();
    let mut events = Vec::new();
    while !done.load(Ordering::SeqCst) {
        events.clear();
        f.uffd.read_events(&mut events, 16, Some(Duration::from_millis(20))).unwrap();
        for &e in &events {
            seen.push(e);
            resolve(&f.uffd, e);
        }
        assert!(seen.len() < 100, "runaway faults: {seen:?}");
    }
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    t.join().unwrap();
    seen
}

#[test]
fn missing_wp_minor_cycle() {
    let f = fixture(4);
    let base = f.map.base();
    let mut page = AlignedBuf::zeroed(PAGE_SIZE);
    page[..8].copy_from_slice(&42u64.to_le_bytes());

    // Read of an absent page: MISSING, filled write-protected.
    let p = page.clone();
    let ev = with_handler(
        &f,
        |m| assert_eq!(m.as_words()[0].load(Ordering::Relaxed), 42),
        move |u, e| {
            let Event::Fault { address, kind: FaultKind::Missing, write: false } = e else { panic!("{e:?}") };
            assert_eq!(u.copy(address, &p, true, true).unwrap(), Filled::Done);
        },
    );
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0], Event::Fault { address: base, kind: FaultKind::Missing, write: false });

    // First write: WP fault, then the write lands.
    let ev = with_handler(
        &f,
        |m| m.as_words()[1].store(7, Ordering::Relaxed),
        |u, e| {
            let Event::Fault { address, kind: FaultKind::WriteProtect, write: true } = e else { panic!("{e:?}") };
            u.write_protect(address, PAGE_SIZE, false, true).unwrap();
        },
    );
    assert_eq!(ev.len(), 1);
    let mut back = [0u8; 16];
    f.memfd.read_at(&mut back, 0).unwrap();
    assert_eq!(u64::from_le_bytes(back[8..].try_into().unwrap()), 7);

    // Zap from the mapping: the next access is MINOR and sees the same data.
    f.map.zap(0, PAGE_SIZE).unwrap();
    let ev = with_handler(
        &f,
        |m| assert_eq!(m.as_words()[1].load(Ordering::Relaxed), 7),
        |u, e| {
            let Event::Fault { address, kind: FaultKind::Minor, .. } = e else { panic!("{e:?}") };
            u.continue_(address, PAGE_SIZE, false).unwrap();
        },
    );
    assert_eq!(ev.len(), 1);

    // Punch the page out of the memfd: MISSING again; zero-filled without a copy.
    f.memfd.punch_hole(0, PAGE_SIZE as u64).unwrap();
    let ev = with_handler(
        &f,
        |m| assert_eq!(m.as_words()[1].load(Ordering::Relaxed), 0),
        |u, e| {
            let Event::Fault { address, kind: FaultKind::Missing, .. } = e else { panic!("{e:?}") };
            u.zeropage(address, PAGE_SIZE).unwrap();
        },
    );
    assert_eq!(ev.len(), 1);
    // A second fill of a present page reports EEXIST as AlreadyPresent.
    assert_eq!(f.uffd.copy(base, &page, false, true).unwrap(), Filled::AlreadyPresent);
}

#[test]
fn write_fault_on_absent_page_reports_write() {
    let f = fixture(2);
    let ev = with_handler(
        &f,
        |m| m.as_words()[512].store(5, Ordering::Relaxed),
        |u, e| {
            let Event::Fault { address, kind: FaultKind::Missing, write: true } = e else { panic!("{e:?}") };
            u.copy(address, &AlignedBuf::zeroed(PAGE_SIZE), false, true).unwrap();
        },
    );
    assert_eq!(ev.len(), 1);
    assert!(f.memfd.resident_bytes().unwrap() >= PAGE_SIZE as u64);
}

#[test]
fn write_protect_after_each_kind_of_fill() {
    let f = fixture(4);
    let base = f.map.base();
    // Write fault on an absent page, zero-filled writable.
    with_handler(
        &f,
        |m| m.as_words()[0].store(1, Ordering::Relaxed),
        |u, e| {
            let Event::Fault { address, .. } = e else { panic!() };
            u.zeropage(address, PAGE_SIZE).unwrap();
        },
    );
    f.uffd.write_protect(base, PAGE_SIZE, true, false).expect("WP after zeropage");
    // Zapped (sampled) page.
    f.map.zap(0, PAGE_SIZE).unwrap();
    f.uffd.write_protect(base, PAGE_SIZE, true, false).expect("WP of a zapped page");
    // Copy-filled writable page.
    with_handler(
        &f,
        |m| m.as_words()[512].store(1, Ordering::Relaxed),
        |u, e| {
            let Event::Fault { address, .. } = e else { panic!() };
            u.copy(address, &AlignedBuf::zeroed(PAGE_SIZE), false, true).unwrap();
        },
    );
    f.uffd.write_protect(base + PAGE_SIZE, PAGE_SIZE, true, false).expect("WP after copy");
}
