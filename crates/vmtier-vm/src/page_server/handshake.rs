//! The handshake a VMM sends when it connects to a page server: Firecracker's userfaultfd
//! handshake, with a backward-compatible vmtier extension.
//!
//! One `sendmsg` on the Unix stream socket carries:
//!
//! | part | content |
//! |---|---|
//! | data | a JSON array of regions, UTF-8, at most [`MAX_MESSAGE`] bytes, no framing |
//! | `SCM_RIGHTS` fd 0 | the userfaultfd the VMM registered its guest memory with |
//! | `SCM_RIGHTS` fd 1 | vmtier extension only: the guest memory memfd |
//!
//! Each region is an object with these fields (Firecracker's `GuestRegionUffdMapping`):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `base_host_virt_addr` | u64 | where the region is mapped in the VMM |
//! | `size` | u64 | bytes, a multiple of the page size |
//! | `offset` | u64 | where the region's contents start in the snapshot memory file |
//! | `page_size` | u64 | bytes per page (current Firecracker) |
//! | `page_size_kib` | u64 | KiB per page (older Firecracker); either form, or both if they agree |
//! | `vmtier_memfd_offset` | u64 | extension: where the region starts in the memfd (fd 1) |
//!
//! A Firecracker VMM sends one fd and no extension field; a vmtier VMM handing over its memfd
//! sends two fds and `vmtier_memfd_offset` in every region. A peer that mixes the two (two fds
//! without the field, or the field with one fd) is refused, as are unknown fields, so a future
//! Firecracker field is reported rather than silently ignored.
//!
//! [`parse`] is a pure function of the bytes and the number of fds received, so it can be
//! fuzzed without sockets.

use serde::{Deserialize, Serialize};

/// Largest handshake accepted, in bytes. Firecracker's messages are a few hundred bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most regions in one handshake.
pub const MAX_REGIONS: usize = 256;
/// Smallest page size (x86-64 base pages).
pub const MIN_PAGE_SIZE: u64 = 4096;
/// Largest page size (1 GiB huge pages).
pub const MAX_PAGE_SIZE: u64 = 1 << 30;
/// End of the largest user address space (5-level paging).
const USER_SPACE_END: u64 = 1 << 57;

/// One region of guest memory as the VMM maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Region {
    /// Address of the region in the VMM's address space (where faults are reported).
    pub host_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Offset of the region's contents in the snapshot memory file.
    pub file_offset: u64,
    /// Page size in bytes: the unit of faults and copies.
    pub page_size: u64,
    /// Offset of the region in the guest memfd (vmtier extension), when one was passed.
    pub memfd_offset: Option<u64>,
}

impl Region {
    /// One past the last host address.
    pub fn host_end(&self) -> u64 {
        self.host_addr + self.size
    }

    /// Whether `addr` lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        (self.host_addr..self.host_end()).contains(&addr)
    }

    /// Pages in the region.
    pub fn pages(&self) -> u64 {
        self.size / self.page_size
    }
}

/// A parsed, validated handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The regions, sorted by host address, pairwise disjoint.
    pub regions: Vec<Region>,
    /// Whether the peer passed its guest memfd (fd 1): the vmtier extension.
    pub memfd: bool,
}

impl Handshake {
    /// The region containing host address `addr`, with its index.
    pub fn region_of(&self, addr: u64) -> Option<(usize, &Region)> {
        let i = self.regions.partition_point(|r| r.host_end() <= addr);
        self.regions.get(i).filter(|r| r.contains(addr)).map(|r| (i, r))
    }

    /// Total guest memory in bytes.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// The message a VMM sends: Firecracker's form (`page_size` in bytes), plus
    /// `vmtier_memfd_offset` where a region carries one.
    pub fn encode(regions: &[Region]) -> Vec<u8> {
        let wire: Vec<WireRegion> = regions
            .iter()
            .map(|r| WireRegion {
                base_host_virt_addr: r.host_addr,
                size: r.size,
                offset: r.file_offset,
                page_size: Some(r.page_size),
                page_size_kib: None,
                vmtier_memfd_offset: r.memfd_offset,
            })
            .collect();
        serde_json::to_vec(&wire).expect("serialising plain integers cannot fail")
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WireRegion {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_size_kib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vmtier_memfd_offset: Option<u64>,
}

/// Which address space two overlapping regions collide in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// The VMM's address space.
    Host,
    /// The snapshot memory file.
    File,
    /// The guest memfd.
    Memfd,
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Space::Host => "host address space",
            Space::File => "memory file",
            Space::Memfd => "guest memfd",
        })
    }
}

/// Why a handshake was refused. Region numbers count from 0 in the order the peer sent them.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer closed the connection without sending anything.
    #[error("the peer sent no handshake (empty message)")]
    Empty,
    /// The message exceeds [`MAX_MESSAGE`].
    #[error("the handshake is longer than {max} bytes; send at most {MAX_REGIONS} regions")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// No file descriptor came with the message.
    #[error("no file descriptor came with the handshake: pass the userfaultfd with SCM_RIGHTS in the same sendmsg")]
    NoFd,
    /// More descriptors than the protocol defines.
    #[error(
        "{count} file descriptors came with the handshake; expected 1 (the userfaultfd) or 2 (the userfaultfd and \
         vmtier's guest memfd); Firecracker's guest_memfd mode (3) is not supported"
    )]
    TooManyFds {
        /// How many came.
        count: usize,
    },
    /// Not a JSON array of region objects.
    #[error("the handshake is not a JSON array of guest memory regions")]
    Json(#[source] serde_json::Error),
    /// An empty array.
    #[error("the handshake lists no memory regions")]
    NoRegions,
    /// Too many regions.
    #[error("the handshake lists {count} regions; at most {MAX_REGIONS} are accepted")]
    TooManyRegions {
        /// How many were sent.
        count: usize,
    },
    /// Neither `page_size` nor `page_size_kib`.
    #[error("region {region} has neither `page_size` nor `page_size_kib`")]
    NoPageSize {
        /// Region index.
        region: usize,
    },
    /// Both page-size fields, disagreeing.
    #[error("region {region}: `page_size` = {page_size} disagrees with `page_size_kib` = {page_size_kib}")]
    PageSizeMismatch {
        /// Region index.
        region: usize,
        /// Bytes.
        page_size: u64,
        /// KiB.
        page_size_kib: u64,
    },
    /// A page size that is not a power of two in range.
    #[error("region {region}: page size {page_size} is not a power of two from 4096 bytes to 1 GiB")]
    BadPageSize {
        /// Region index.
        region: usize,
        /// Bytes.
        page_size: u64,
    },
    /// A zero-sized region.
    #[error("region {region} has size 0")]
    ZeroSize {
        /// Region index.
        region: usize,
    },
    /// A field not a multiple of the page size.
    #[error("region {region}: `{field}` = {value:#x} is not a multiple of the page size {page_size}")]
    Misaligned {
        /// Region index.
        region: usize,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The region's page size.
        page_size: u64,
    },
    /// A range that wraps around or leaves the address space.
    #[error("region {region}: `{field}` + `size` overflows (past {limit:#x})")]
    OutOfRange {
        /// Region index.
        region: usize,
        /// The field.
        field: &'static str,
        /// The bound exceeded.
        limit: u64,
    },
    /// Two regions overlap.
    #[error("regions {a} and {b} overlap in the {space}")]
    Overlap {
        /// One region.
        a: usize,
        /// The other.
        b: usize,
        /// Where.
        space: Space,
    },
    /// Two fds but a region without `vmtier_memfd_offset`.
    #[error(
        "region {region} has no `vmtier_memfd_offset`, but a second file descriptor (a guest memfd) was passed; \
         every region must say where it lies in the memfd"
    )]
    NoMemfdOffset {
        /// Region index.
        region: usize,
    },
    /// `vmtier_memfd_offset` without a memfd.
    #[error(
        "region {region} has `vmtier_memfd_offset`, but no guest memfd was passed; send the memfd as the second \
         file descriptor, or drop the field"
    )]
    MemfdOffsetWithoutMemfd {
        /// Region index.
        region: usize,
    },
}

/// Parses and validates a handshake of `bytes` that arrived with `fds` file descriptors.
pub fn parse(bytes: &[u8], fds: usize) -> Result<Handshake, HandshakeError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(HandshakeError::TooLong { max: MAX_MESSAGE });
    }
    if bytes.is_empty() {
        return Err(HandshakeError::Empty);
    }
    let memfd = match fds {
        0 => return Err(HandshakeError::NoFd),
        1 => false,
        2 => true,
        count => return Err(HandshakeError::TooManyFds { count }),
    };
    let wire: Vec<WireRegion> = serde_json::from_slice(bytes).map_err(HandshakeError::Json)?;
    if wire.is_empty() {
        return Err(HandshakeError::NoRegions);
    }
    if wire.len() > MAX_REGIONS {
        return Err(HandshakeError::TooManyRegions { count: wire.len() });
    }
    let mut regions = Vec::with_capacity(wire.len());
    for (i, w) in wire.iter().enumerate() {
        regions.push((i, region(i, w, memfd)?));
    }
    for space in [Space::Host, Space::File, Space::Memfd] {
        let key = |r: &Region| match space {
            Space::Host => r.host_addr,
            Space::File => r.file_offset,
            Space::Memfd => r.memfd_offset.unwrap_or(0),
        };
        if space == Space::Memfd && !memfd {
            continue;
        }
        regions.sort_by_key(|(_, r)| key(r));
        for pair in regions.windows(2) {
            let ((a, ra), (b, rb)) = (pair[0], pair[1]);
            if key(&ra) + ra.size > key(&rb) {
                return Err(HandshakeError::Overlap { a: a.min(b), b: a.max(b), space });
            }
        }
    }
    regions.sort_by_key(|(_, r)| r.host_addr);
    Ok(Handshake { regions: regions.into_iter().map(|(_, r)| r).collect(), memfd })
}

fn region(i: usize, w: &WireRegion, memfd: bool) -> Result<Region, HandshakeError> {
    let page_size = match (w.page_size, w.page_size_kib) {
        (None, None) => return Err(HandshakeError::NoPageSize { region: i }),
        (Some(b), None) => b,
        (None, Some(k)) => k.checked_mul(1024).ok_or(HandshakeError::BadPageSize { region: i, page_size: u64::MAX })?,
        (Some(b), Some(k)) => {
            if k.checked_mul(1024) != Some(b) {
                return Err(HandshakeError::PageSizeMismatch { region: i, page_size: b, page_size_kib: k });
            }
            b
        }
    };
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(HandshakeError::BadPageSize { region: i, page_size });
    }
    if w.size == 0 {
        return Err(HandshakeError::ZeroSize { region: i });
    }
    let memfd_offset = match (w.vmtier_memfd_offset, memfd) {
        (None, true) => return Err(HandshakeError::NoMemfdOffset { region: i }),
        (Some(_), false) => return Err(HandshakeError::MemfdOffsetWithoutMemfd { region: i }),
        (off, _) => off,
    };
    let aligned = [
        ("base_host_virt_addr", Some(w.base_host_virt_addr)),
        ("size", Some(w.size)),
        ("offset", Some(w.offset)),
        ("vmtier_memfd_offset", memfd_offset),
    ];
    for (field, value) in aligned {
        if let Some(value) = value
            && !value.is_multiple_of(page_size)
        {
            return Err(HandshakeError::Misaligned { region: i, field, value, page_size });
        }
    }
    let ranges = [
        ("base_host_virt_addr", Some(w.base_host_virt_addr), USER_SPACE_END),
        ("offset", Some(w.offset), i64::MAX as u64),
        ("vmtier_memfd_offset", memfd_offset, i64::MAX as u64),
    ];
    for (field, start, limit) in ranges {
        if let Some(start) = start
            && start.checked_add(w.size).is_none_or(|end| end > limit)
        {
            return Err(HandshakeError::OutOfRange { region: i, field, limit });
        }
    }
    Ok(Region { host_addr: w.base_host_virt_addr, size: w.size, file_offset: w.offset, page_size, memfd_offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn fc(regions: &str) -> Result<Handshake, HandshakeError> {
        parse(regions.as_bytes(), 1)
    }

    #[test]
    fn firecracker_page_size_in_bytes() {
        let h =
            fc(r#"[{"base_host_virt_addr":140000000000000,"size":134217728,"offset":0,"page_size":4096}]"#).unwrap();
        assert!(!h.memfd);
        assert_eq!(
            h.regions,
            vec![Region {
                host_addr: 140_000_000_000_000,
                size: 128 * MIB,
                file_offset: 0,
                page_size: 4096,
                memfd_offset: None
            }]
        );
    }

    #[test]
    fn firecracker_page_size_in_kib_and_two_regions_sorted() {
        let h = fc(r#"[
            {"base_host_virt_addr": 1099511627776, "size": 2097152, "offset": 3221225472, "page_size_kib": 4},
            {"base_host_virt_addr": 1073741824, "size": 3221225472, "offset": 0, "page_size_kib": 4}
        ]"#)
        .unwrap();
        assert_eq!(h.regions.len(), 2);
        assert_eq!(h.regions[0].host_addr, 1 << 30);
        assert_eq!(h.regions[1].file_offset, 3 << 30);
        assert!(h.regions.iter().all(|r| r.page_size == 4096));
        assert_eq!(h.total_size(), (3 << 30) + 2 * MIB);
        assert_eq!(h.region_of((1 << 30) + 5).unwrap().0, 0);
        assert_eq!(h.region_of(1 << 40).unwrap().0, 1);
        assert!(h.region_of(4 << 30).is_none());
        assert!(h.region_of(0).is_none());
    }

    #[test]
    fn both_page_size_forms_must_agree() {
        let ok =
            r#"[{"base_host_virt_addr":2097152,"size":2097152,"offset":0,"page_size":2097152,"page_size_kib":2048}]"#;
        assert_eq!(fc(ok).unwrap().regions[0].page_size, 2 * MIB);
        let bad = r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"page_size_kib":8}]"#;
        assert!(matches!(fc(bad), Err(HandshakeError::PageSizeMismatch { region: 0, .. })));
        let none = r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0}]"#;
        assert!(matches!(fc(none), Err(HandshakeError::NoPageSize { region: 0 })));
        for ps in ["1000", "2048", "0", "2147483648"] {
            let msg = format!(r#"[{{"base_host_virt_addr":0,"size":8192,"offset":0,"page_size":{ps}}}]"#);
            assert!(matches!(fc(&msg), Err(HandshakeError::BadPageSize { .. })), "{ps}");
        }
        let huge_kib = format!(r#"[{{"base_host_virt_addr":0,"size":8192,"offset":0,"page_size_kib":{}}}]"#, u64::MAX);
        assert!(matches!(fc(&huge_kib), Err(HandshakeError::BadPageSize { .. })));
    }

    #[test]
    fn extension_form_round_trips() {
        let regions = [Region {
            host_addr: 0x7f00_0000_0000,
            size: 64 * MIB,
            file_offset: 0,
            page_size: 4096,
            memfd_offset: Some(0),
        }];
        let bytes = Handshake::encode(&regions);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"vmtier_memfd_offset\":0"), "{text}");
        let h = parse(&bytes, 2).unwrap();
        assert!(h.memfd);
        assert_eq!(h.regions, regions);
        // The same regions without the extension are exactly Firecracker's message.
        let plain = [Region { memfd_offset: None, ..regions[0] }];
        let text = String::from_utf8(Handshake::encode(&plain)).unwrap();
        assert_eq!(text, r#"[{"base_host_virt_addr":139637976727552,"size":67108864,"offset":0,"page_size":4096}]"#);
        assert_eq!(parse(text.as_bytes(), 1).unwrap().regions, plain);
    }

    #[test]
    fn extension_field_and_fd_count_must_match() {
        let with = r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"vmtier_memfd_offset":0}]"#;
        let without = r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]"#;
        assert!(matches!(parse(with.as_bytes(), 1), Err(HandshakeError::MemfdOffsetWithoutMemfd { region: 0 })));
        assert!(matches!(parse(without.as_bytes(), 2), Err(HandshakeError::NoMemfdOffset { region: 0 })));
        let overlap = r#"[
            {"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096,"vmtier_memfd_offset":0},
            {"base_host_virt_addr":1048576,"size":4096,"offset":8192,"page_size":4096,"vmtier_memfd_offset":4096}
        ]"#;
        assert!(matches!(
            parse(overlap.as_bytes(), 2),
            Err(HandshakeError::Overlap { a: 0, b: 1, space: Space::Memfd })
        ));
    }

    #[test]
    fn malformed_json_is_refused() {
        for bad in [
            "",
            "not json",
            "{}",
            "[1,2]",
            r#"[{"base_host_virt_addr":-1,"size":4096,"offset":0,"page_size":4096}]"#,
            r#"[{"base_host_virt_addr":4096.5,"size":4096,"offset":0,"page_size":4096}]"#,
            r#"[{"size":4096,"offset":0,"page_size":4096}]"#,
            r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"surprise":1}]"#,
            r#"[{"base_host_virt_addr":4096,"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096}]"#,
            r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}"#,
            r#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}] trailing"#,
            "\u{feff}[]",
        ] {
            let e = fc(bad).unwrap_err();
            assert!(matches!(e, HandshakeError::Json(_) | HandshakeError::Empty), "{bad}: {e}");
        }
        assert!(matches!(fc("[]"), Err(HandshakeError::NoRegions)));
        assert!(matches!(parse(&[0xff, 0xfe, b'['], 1), Err(HandshakeError::Json(_))));
    }

    #[test]
    fn sizes_and_alignment_are_checked() {
        let r = |base: u64, size: u64, off: u64| {
            fc(&format!(r#"[{{"base_host_virt_addr":{base},"size":{size},"offset":{off},"page_size":4096}}]"#))
        };
        assert!(matches!(r(4096, 0, 0), Err(HandshakeError::ZeroSize { region: 0 })));
        assert!(matches!(r(4097, 4096, 0), Err(HandshakeError::Misaligned { field: "base_host_virt_addr", .. })));
        assert!(matches!(r(4096, 4095, 0), Err(HandshakeError::Misaligned { field: "size", .. })));
        assert!(matches!(r(4096, 4096, 12), Err(HandshakeError::Misaligned { field: "offset", .. })));
        let top = !4095u64;
        assert!(matches!(r(top, 8192, 0), Err(HandshakeError::OutOfRange { field: "base_host_virt_addr", .. })));
        assert!(matches!(r(4096, 8192, top), Err(HandshakeError::OutOfRange { field: "offset", .. })));
        let huge = fc(r#"[{"base_host_virt_addr":2097152,"size":4096,"offset":0,"page_size":2097152}]"#);
        assert!(matches!(huge, Err(HandshakeError::Misaligned { field: "size", .. })));
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let host = r#"[
            {"base_host_virt_addr":1048576,"size":1048576,"offset":0,"page_size":4096},
            {"base_host_virt_addr":0,"size":1052672,"offset":1048576,"page_size":4096}
        ]"#;
        assert!(matches!(fc(host), Err(HandshakeError::Overlap { a: 0, b: 1, space: Space::Host })));
        let file = r#"[
            {"base_host_virt_addr":0,"size":1048576,"offset":0,"page_size":4096},
            {"base_host_virt_addr":4194304,"size":1048576,"offset":4096,"page_size":4096}
        ]"#;
        assert!(matches!(fc(file), Err(HandshakeError::Overlap { space: Space::File, .. })));
        let same = r#"[
            {"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096},
            {"base_host_virt_addr":0,"size":4096,"offset":4096,"page_size":4096}
        ]"#;
        assert!(matches!(fc(same), Err(HandshakeError::Overlap { space: Space::Host, .. })));
        let adjacent = r#"[
            {"base_host_virt_addr":0,"size":4096,"offset":4096,"page_size":4096},
            {"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}
        ]"#;
        assert_eq!(fc(adjacent).unwrap().regions.len(), 2);
    }

    #[test]
    fn fd_count_is_checked() {
        let ok = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]"#;
        assert!(matches!(parse(ok, 0), Err(HandshakeError::NoFd)));
        assert!(matches!(parse(ok, 3), Err(HandshakeError::TooManyFds { count: 3 })));
        assert!(parse(ok, 1).is_ok());
    }

    #[test]
    fn too_long_and_too_many_are_refused() {
        let one = r#"{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096}"#;
        let mut long = String::from("[");
        while long.len() <= MAX_MESSAGE {
            long.push_str(one);
            long.push(',');
        }
        long.push_str(one);
        long.push(']');
        assert!(matches!(fc(&long), Err(HandshakeError::TooLong { .. })));
        let many: Vec<String> = (0..=MAX_REGIONS as u64)
            .map(|i| {
                format!(r#"{{"base_host_virt_addr":{},"size":4096,"offset":{},"page_size":4096}}"#, i * 4096, i * 4096)
            })
            .collect();
        let msg = format!("[{}]", many.join(","));
        assert!(msg.len() <= MAX_MESSAGE);
        assert!(matches!(fc(&msg), Err(HandshakeError::TooManyRegions { count }) if count == MAX_REGIONS + 1));
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = parse(b"[]", 0).unwrap_err().to_string();
        assert!(e.contains("SCM_RIGHTS"), "{e}");
        let e = parse(br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]"#, 2).unwrap_err();
        assert!(e.to_string().contains("vmtier_memfd_offset"), "{e}");
    }
}
