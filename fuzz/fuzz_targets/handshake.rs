//! The page-server handshake (`vmtier_vm::page_server::handshake::parse`): the JSON a VMM sends
//! over the page server's socket, with the number of file descriptors that came with it.
//!
//! Input: `fds u8` (`% 4`), then the message bytes.
//! Checks: no panic; an accepted handshake's regions are sorted by host address, pairwise
//! disjoint in the host, file and memfd spaces, page-aligned, each found by `region_of` at its
//! first and last byte; encoding the regions and parsing them again gives the same handshake.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmtier_vm::page_server::handshake::{self, Handshake};

fuzz_target!(|data: &[u8]| {
    let Some((&fds, msg)) = data.split_first() else { return };
    let fds = usize::from(fds % 4);
    let Ok(hs) = handshake::parse(msg, fds) else { return };
    assert!(!hs.regions.is_empty());
    assert_eq!(hs.memfd, fds == 2);
    for (i, r) in hs.regions.iter().enumerate() {
        assert!(r.page_size.is_power_of_two() && r.page_size >= handshake::MIN_PAGE_SIZE);
        assert!(r.size > 0 && r.size % r.page_size == 0 && r.host_addr % r.page_size == 0);
        assert_eq!(r.memfd_offset.is_some(), hs.memfd);
        assert_eq!(hs.region_of(r.host_addr).map(|(j, _)| j), Some(i));
        assert_eq!(hs.region_of(r.host_end() - 1).map(|(j, _)| j), Some(i));
        if let Some(next) = hs.regions.get(i + 1) {
            assert!(r.host_end() <= next.host_addr, "regions {i} and {} overlap", i + 1);
        }
    }
    let total: u64 = hs.regions.iter().map(|r| r.pages() * r.page_size).sum();
    assert_eq!(total, hs.total_size());
    let again = handshake::parse(&Handshake::encode(&hs.regions), fds).expect("an encoded handshake must parse");
    assert_eq!(again, hs);
});
