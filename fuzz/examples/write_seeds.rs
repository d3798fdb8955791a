//! Writes the seed corpora of the fuzz targets (`fuzz/seeds/<target>/`) with vmtier's own
//! encoders, so that every target starts from valid inputs of its format.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds` (from the repository
//! root). The seeds are committed; run this again after a format changes.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use vmtier_repl::record::{self, Checkpoint, Claim, Fence, Heartbeat, Heat, Location, PageLoc, Record, map_digest};
use vmtier_storage::segment;
use vmtier_vm::page_server::handshake::{Handshake, Region};
use vmtier_workload::trace::format;
use vmtier_workload::trace::lackey::{self, ImportOptions};

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let w = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)
    };
    let with_mode = |mode: u8, b: &[u8]| -> Vec<u8> { [&[mode][..], b].concat() };

    // Replication records: whole (mode 0) and as bodies to be sealed (mode kind << 1 | 1).
    let log = sample_log();
    let key = vmtier_fuzz::fuzz_key();
    let hb = record::encode_heartbeat(key, &Heartbeat {
        epoch: 3,
        holder: "host-a:4242".into(),
        counter: 17,
        unix_ms: 1_700_000_000_000,
        last_committed: 4,
    });
    let claim = record::encode_claim(key, &Claim { epoch: 4, created_unix_ms: 1, nonce: 77, holder: "host-b".into() });
    let mut frames: Vec<(String, Vec<u8>)> =
        log.iter().map(|r| (format!("seq{}", r.seq()), record::encode(key, r))).collect();
    frames.push(("heartbeat".into(), hb));
    frames.push(("claim".into(), claim));
    for (name, bytes) in &frames {
        let kind = u16::from_le_bytes([bytes[10], bytes[11]]) as u8;
        w("record", &format!("{name}.whole"), &with_mode(0, bytes))?;
        let body = &bytes[record::HEADER_LEN..bytes.len() - record::TRAILER_LEN];
        w("record", &format!("{name}.body"), &with_mode(kind << 1 | 1, body))?;
    }

    // The apply path: the whole log, as chunks `len u16, mode u8, bytes`.
    let mut chunks = Vec::new();
    let mut sealed = Vec::new();
    for r in &log {
        let bytes = record::encode(key, r);
        let kind = u16::from_le_bytes([bytes[10], bytes[11]]) as u8;
        chunks.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        chunks.push(0);
        chunks.extend_from_slice(&bytes);
        let body = &bytes[record::HEADER_LEN..bytes.len() - record::TRAILER_LEN];
        sealed.extend_from_slice(&(body.len() as u16).to_le_bytes());
        sealed.push(kind << 1 | 1);
        sealed.extend_from_slice(body);
    }
    w("replica_apply", "log.whole", &chunks)?;
    w("replica_apply", "log.bodies", &sealed)?;

    // Segments: one and three pages, whole (mode 0); sealed fields (mode 1); pages (mode 2).
    for n in [1usize, 3] {
        let pages: Vec<(u64, Vec<u8>)> = (0..n).map(|i| (100 + i as u64, vec![i as u8 + 1; 4096])).collect();
        let refs: Vec<(u64, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        let (obj, _) = segment::encode(&refs).expect("encode a segment");
        w("segment_index", &format!("{n}pages.whole"), &with_mode(0, &obj))?;
        let mut fields = vec![(n - 1) as u8];
        for v in [segment::VERSION, n as u32, 4096, n as u32, segment::VERSION] {
            fields.extend_from_slice(&v.to_le_bytes());
        }
        let index_at = segment::encoded_len(n) - segment::FOOTER_LEN - n * segment::INDEX_ENTRY_LEN;
        fields.extend_from_slice(&obj[index_at..index_at + n * segment::INDEX_ENTRY_LEN]);
        w("segment_index", &format!("{n}pages.sealed"), &with_mode(1, &fields))?;
    }
    w("segment_index", "pages", &with_mode(2, &[7, 0, 0, 0, 0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0, 0, 0, 2]))?;

    // Tier 2: two slot files of 4 slots, reads with the real checksum, a span, a bad checksum.
    let mut t2 = vec![0x83, 3];
    for (slot, span, flags) in [(1u32, 0u8, 1u8), (0, 3, 0b1011), (6, 0, 0)] {
        t2.extend_from_slice(&slot.to_le_bytes());
        t2.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        t2.extend_from_slice(&[span, flags]);
    }
    t2.extend((0..4 * 4096).map(|i| (i / 4096) as u8 + 1));
    w("tier2_slots", "two_files", &t2)?;

    // Handshakes: Firecracker's (one fd) and vmtier's (two fds, memfd offsets).
    let fc = [
        Region { host_addr: 0x7f00_0000_0000, size: 1 << 21, file_offset: 0, page_size: 4096, memfd_offset: None },
        Region {
            host_addr: 0x7f00_1000_0000,
            size: 1 << 21,
            file_offset: 1 << 21,
            page_size: 1 << 21,
            memfd_offset: None,
        },
    ];
    w("handshake", "firecracker", &with_mode(1, &Handshake::encode(&fc)))?;
    let vt: Vec<Region> = fc.iter().map(|r| Region { memfd_offset: Some(r.file_offset), ..*r }).collect();
    w("handshake", "vmtier", &with_mode(2, &Handshake::encode(&vt)))?;
    w(
        "handshake",
        "page_size_kib",
        &with_mode(1, br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4}]"#),
    )?;

    // Configuration files: the repository's examples.
    for name in ["vmtier.toml", "ha.toml", "scale.toml"] {
        let text = std::fs::read(repo.join("examples").join(name))?;
        w("run_config", name, &text)?;
        if let Some(engine) = engine_table(&text) {
            w("engine_config", name, &engine)?;
        }
    }
    w("engine_config", "small.toml", b"memory = \"64MiB\"\ndram = \"16MiB\"\n[mtm]\npolicy = \"threshold\"\n")?;

    // Lackey: a few lines of real valgrind output, per line (mode 0), as a file (mode 1, with
    // and without instruction fetches), as a gzip file (mode 2).
    let text = lackey_text(&repo)?;
    w("lackey", "lines", &with_mode(0, &text))?;
    w("lackey", "file", &with_mode(1, &text))?;
    w("lackey", "file_instructions", &with_mode(0x81, &text))?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&text)?;
    let gz = gz.finish()?;
    w("lackey", "gzip", &with_mode(2, &gz[2..]))?;

    // Trace files: encoded from an imported trace, whole (mode 0) and to be sealed (mode 1).
    let trace = lackey::import_reader(text.as_slice(), "seed.lackey", &ImportOptions::default(), &mut |_| {})
        .expect("the seed text imports");
    let file = format::encode(&trace);
    w("trace_file", "whole", &with_mode(0, &file))?;
    w("trace_file", "sealed", &with_mode(1, &file[..file.len() - 4]))?;

    // VM state: a vCPU state as the micro-VM saves it, in a state file and alone.
    let mut vcpu = vmtier_vm::VcpuState {
        regs: kvm_bindings::kvm_regs { rip: 0x20_0000, rsp: 0x1ff_f000, rflags: 0x3002, ..Default::default() },
        sregs: kvm_bindings::kvm_sregs { cr3: 0x1000, cr0: 0x8000_0011, ..Default::default() },
        fpu: kvm_bindings::kvm_fpu { fcw: 0x37f, ..Default::default() },
        xsave: Some(Box::new([0; 1024])),
        xcrs: Some(kvm_bindings::kvm_xcrs::default()),
    };
    if let Some(x) = vcpu.xsave.as_mut() {
        x[7] = 0xdead_beef;
    }
    let state_file = vmtier_vm::snapshot::encode_state(1 << 24, &vcpu);
    w("vm_state", "file.whole", &with_mode(0, &state_file))?;
    w("vm_state", "file.sealed", &with_mode(1, &state_file[..state_file.len() - 4]))?;
    let state = vcpu.to_bytes();
    w("vm_state", "vcpu.whole", &with_mode(2, &state))?;
    w("vm_state", "vcpu.sealed", &with_mode(3, &state[..state.len() - 4]))?;

    // Guest programs: the micro-VM's own headers, and a minimal program of one segment (the
    // whole built guest is 600 KiB, mostly padding).
    let built = vmtier_vm::GUEST_ELF;
    assert!(vmtier_vm::GuestImage::parse(built).is_ok());
    w("guest_elf", "guest_headers.elf", &built[..built.len().min(1024)])?;
    w("guest_elf", "minimal.elf", &minimal_elf())?;
    Ok(())
}

/// A small log: a full checkpoint, a delta, a fence, a delta of the next epoch.
fn sample_log() -> Vec<Record> {
    let mut map = std::collections::BTreeMap::new();
    let ckpt =
        |seq: u64, epoch: u64, full: bool, pages: Vec<PageLoc>, map: &mut std::collections::BTreeMap<u32, u32>| {
            if full {
                map.clear();
            }
            for p in &pages {
                if p.loc == Location::Zero {
                    map.remove(&p.page);
                } else {
                    map.insert(p.page, p.crc);
                }
            }
            Record::Checkpoint(Checkpoint {
                seq,
                epoch,
                created_unix_ms: 1_700_000_000_000 + seq,
                guest_bytes: 1 << 24,
                full,
                pages,
                heat_full: full,
                heat: vec![Heat { page: 1, freq: 90, age: 0 }, Heat { page: 2, freq: 10, age: 3 }],
                digest: map_digest(map.iter().map(|(&p, &c)| (p, c))),
                vcpu: if full { vec![1, 2, 3, 4] } else { Vec::new() },
            })
        };
    vec![
        ckpt(
            1,
            2,
            true,
            vec![
                PageLoc { page: 1, loc: Location::Ssd { store: 2, slot: 5 }, crc: 11, tag: [0x7a; 16] },
                PageLoc { page: 2, loc: Location::Object { store: 2, segment: 1, index: 3 }, crc: 22, tag: [0x7a; 16] },
                PageLoc { page: 3, loc: Location::Ssd { store: 1, slot: 9 }, crc: 33, tag: [0x7a; 16] },
                PageLoc { page: 4, loc: Location::Object { store: 1, segment: 2, index: 0 }, crc: 44, tag: [0x7a; 16] },
            ],
            &mut map,
        ),
        ckpt(
            2,
            2,
            false,
            vec![
                PageLoc { page: 1, loc: Location::Zero, crc: 0, tag: [0; 16] },
                PageLoc { page: 5, loc: Location::Ssd { store: 2, slot: 6 }, crc: 55, tag: [0x7a; 16] },
            ],
            &mut map,
        ),
        Record::Fence(Fence { seq: 3, epoch: 3, created_unix_ms: 1_700_000_000_003, holder: "host-b:7".into() }),
        ckpt(4, 3, false, vec![PageLoc { page: 2, loc: Location::Ssd { store: 3, slot: 0 }, crc: 23, tag: [0x7a; 16] }], &mut map),
    ]
}

/// The `[engine]` table of a run configuration, as a TOML document of its own.
fn engine_table(text: &[u8]) -> Option<Vec<u8>> {
    let doc: toml::Table = toml::from_str(std::str::from_utf8(text).ok()?).ok()?;
    let engine = doc.get("engine")?.as_table()?;
    toml::to_string(engine).ok().map(String::into_bytes)
}

/// The first lines of the repository's sample trace, or a hand-written sample without it.
fn lackey_text(repo: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{BufRead, BufReader};
    let path = repo.join("traces").join("sort.lackey.gz");
    let mut out = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let r = BufReader::new(flate2::read::MultiGzDecoder::new(f));
        for line in r.split(b'\n').take(60) {
            out.extend_from_slice(&line?);
            out.push(b'\n');
        }
    }
    out.extend_from_slice(
        b"==123== Lackey\nI  04000a30,3\n L 1ffefffd48,8\n S 1ffefffd50,8\n M 0402a040,4\nSB 04000a30\n",
    );
    Ok(out)
}

/// A statically linked x86-64 executable of one loadable segment at the image area's start,
/// holding `hlt; jmp .-1`.
fn minimal_elf() -> Vec<u8> {
    let code = [0xf4u8, 0xeb, 0xfd];
    let base = vmtier_vm::abi::IMAGE_START_GPA;
    let mut e = vec![0u8; 64];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little-endian
    e[6] = 1; // ELF version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&base.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let mut ph = vec![0u8; 56];
    ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&base.to_le_bytes()); // vaddr
    ph[24..32].copy_from_slice(&base.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes()); // filesz
    ph[40..48].copy_from_slice(&4096u64.to_le_bytes()); // memsz
    e.extend_from_slice(&ph);
    e.extend_from_slice(&code);
    assert!(vmtier_vm::GuestImage::parse(&e).is_ok(), "the minimal ELF seed must parse");
    e
}
