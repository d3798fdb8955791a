//! `vmtier inspect`: a real log (written with vmtier-repl's `LogWriter`) over real tier-2 slots
//! (written with `SsdStore`) and tier-3 segments (`ObjectTier`), then damaged in the ways the
//! command must name. No KVM needed.

mod common;
#[path = "../../vmtier-storage/tests/common/s3.rs"]
mod s3;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use vmtier_repl::log::log_key;
use vmtier_repl::{Checkpoint, ClusterKey, Location, LogWriter, PageLoc, PageTag, map_digest};
use vmtier_storage::object::{ObjectConfig, ObjectTier};
use vmtier_storage::ssd::{SlotId, SsdConfig, SsdStore};

use common::describe;

const PAGES: u32 = 16;
const SLOTS_PER_FILE: u32 = 8;

/// A replicated VM's data directory: config, log with three checkpoints of epoch 1, tier 2.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    /// page → (slot, crc) of the newest checkpoint.
    map: HashMap<u32, (u32, u32)>,
    /// page → keyed tag of the newest checkpoint's copy.
    tags: HashMap<u32, PageTag>,
    /// The cluster key (`dir/cluster.key`).
    key: ClusterKey,
}

/// Makes the cluster key `dir/cluster.key`.
fn keygen(dir: &Path) -> ClusterKey {
    ClusterKey::generate(&dir.join("cluster.key")).expect("keygen")
}

fn page_bytes(page: u32, version: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (page as usize * 31 + version as usize * 7 + i) as u8;
    }
    b
}

impl Fixture {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn record(&self, seq: u64) -> PathBuf {
        self.data().join("shared").join(log_key(seq))
    }

    fn inspect(&self, extra: &[&str]) -> Output {
        let cfg = self.config.to_string_lossy().into_owned();
        let mut args = vec!["inspect", "--config", cfg.as_str(), "--json"];
        args.extend_from_slice(extra);
        common::vmtier_in(&self.dir, &args)
    }
}

/// Checkpoint 1: full, every page in its own slot; 2 and 3: deltas rewriting pages 3 and 5
/// into new slots (the old slots stay written, as a primary's committed copies do until freed).
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let data = dir.join("data");
    let config = dir.join("vm.toml");
    let key = keygen(&dir);
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[engine.tier2]\nslots_per_file = {SLOTS_PER_FILE}\ndirect_io = false\n\
             [replication]\nkey_file = {:?}\n",
            data.to_string_lossy(),
            dir.join("cluster.key").to_string_lossy()
        ),
    )
    .expect("write config");
    let store = vmtier_repl::open_store(&ObjectConfig::new(data.join("shared").to_string_lossy())).expect("store");
    let mut log = LogWriter::claim(store, &key, "test-host:1").expect("claim");
    assert_eq!(log.epoch(), 1);
    let mut cfg = SsdConfig::new(data.join("tier2").join("e000001"));
    cfg.slots_per_file = SLOTS_PER_FILE;
    cfg.direct_io = false;
    let ssd = SsdStore::open(cfg).expect("tier 2");
    let mut map = HashMap::new();
    let mut tags = HashMap::new();
    let mut write = |page: u32, version: u32, map: &mut HashMap<u32, (u32, u32)>| {
        let slot = ssd.alloc().expect("alloc");
        let bytes = page_bytes(page, version);
        let crc = ssd.write(slot, &bytes).expect("write");
        map.insert(page, (slot.0, crc));
        let tag = key.page_tag(page, &bytes);
        tags.insert(page, tag);
        PageLoc { page, loc: Location::Ssd { store: 1, slot: slot.0 }, crc, tag }
    };
    let digest = |map: &HashMap<u32, (u32, u32)>| map_digest(map.iter().map(|(&p, &(_, c))| (p, c)));
    let pages: Vec<PageLoc> = (0..PAGES).map(|p| write(p, 0, &mut map)).collect();
    let full = Checkpoint { full: true, guest_bytes: 1 << 20, pages, digest: digest(&map), ..Checkpoint::default() };
    assert_eq!(log.commit(&full).expect("commit 1"), 1);
    for (seq, page) in [(2u64, 3u32), (3, 5)] {
        let pages = vec![write(page, seq as u32, &mut map)];
        let delta = Checkpoint { guest_bytes: 1 << 20, pages, digest: digest(&map), ..Checkpoint::default() };
        assert_eq!(log.commit(&delta).expect("commit"), seq);
    }
    ssd.sync().expect("sync");
    log.heartbeat(3).expect("heartbeat");
    Fixture { _tmp: tmp, dir, config, map, tags, key }
}

fn json(out: &Output, code: i32) -> Value {
    assert_eq!(out.status.code(), Some(code), "{}", describe(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", describe(out)))
}

fn problems(v: &Value) -> Vec<(String, String, String)> {
    v["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            (
                p["what"].as_str().unwrap().to_string(),
                p["key_or_location"].as_str().unwrap().to_string(),
                format!("{} / {}", p["detail"].as_str().unwrap(), p["affects"].as_str().unwrap()),
            )
        })
        .collect()
}

#[test]
fn clean_log_and_stores_exit_0() {
    let f = fixture();
    let v = json(&f.inspect(&[]), 0);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["log"]["records"], 3);
    assert_eq!(v["log"]["full_checkpoints"], 1);
    assert_eq!(v["log"]["newest_committed"]["seq"], 3);
    assert_eq!(v["lease"]["claims"], serde_json::json!([1]));
    assert_eq!(v["lease"]["heartbeat"]["last_committed"], 3);
    assert_eq!(v["pages"]["pages"], PAGES);
    assert_eq!(v["pages"]["tier2_own"], PAGES);
    assert_eq!(v["pages"]["read_back"], PAGES);
    assert_eq!(v["recoverable"]["checkpoint"]["seq"], 3);
    assert!(v["orphans"].as_array().unwrap().is_empty(), "{v:#}");

    // The human summary says the same.
    let out = common::vmtier_in(&f.dir, &["inspect", "--config", f.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no problems found"), "{text}");
    assert!(text.contains("newest committed checkpoint: checkpoint 3"), "{text}");

    // The log directory as PATH (pages are not read without the config).
    let shared = f.data().join("shared");
    let key = f.dir.join("cluster.key");
    let v = json(
        &common::vmtier_in(
            &f.dir,
            &["inspect", shared.to_str().unwrap(), "--key-file", key.to_str().unwrap(), "--json"],
        ),
        0,
    );
    assert_eq!(v["kind"], "log");
    assert_eq!(v["pages"]["checked"], false);
    // Without the key, a log cannot be inspected: the error says how to get one.
    let out = common::vmtier_in(&f.dir, &["inspect", shared.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key-file"), "{}", describe(&out));
}

#[test]
fn flipped_byte_in_a_record_names_it_and_the_intact_checkpoint_before() {
    let f = fixture();
    let path = f.record(2);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - vmtier_repl::record::TRAILER_LEN - 3; // in the body, before the MAC
    bytes[at] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let v = json(&f.inspect(&[]), 1);
    assert_eq!(v["ok"], false);
    let ps = problems(&v);
    assert!(ps.iter().any(|(w, k, d)| w == "damaged record" && k == &log_key(2) && d.contains("corrupt")), "{ps:#?}");
    assert_eq!(v["log"]["newest_intact_before_damage"]["seq"], 1, "{v:#}");
    assert_eq!(v["recoverable"]["checkpoint"]["seq"], 1, "{v:#}");
    // Checkpoint 1's pages are still all there.
    assert_eq!(v["pages"]["read_back"], PAGES);
}

#[test]
fn truncated_record_names_it_and_the_intact_checkpoint_before() {
    let f = fixture();
    let path = f.record(3);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();
    let out = f.inspect(&[]);
    let v = json(&out, 1);
    let ps = problems(&v);
    assert!(ps.iter().any(|(w, k, d)| w == "damaged record" && k == &log_key(3) && d.contains("truncated")), "{ps:#?}");
    assert!(ps.iter().any(|(_, _, d)| d.contains("checkpoints from 3 on are lost")), "{ps:#?}");
    assert_eq!(v["recoverable"]["checkpoint"]["seq"], 2, "{v:#}");
    // In words, too.
    let out = common::vmtier_in(&f.dir, &["inspect", "--config", f.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&log_key(3)) && text.contains("truncated"), "{text}");
    assert!(text.contains("newest intact checkpoint before the first damage: checkpoint 2"), "{text}");
}

#[test]
fn overwritten_tier2_slot_names_the_page_and_location() {
    let f = fixture();
    let (slot, _) = f.map[&5];
    let mut cfg = SsdConfig::new(f.data().join("tier2").join("e000001"));
    cfg.slots_per_file = SLOTS_PER_FILE;
    cfg.direct_io = false;
    let reader = SsdStore::open_reader(cfg).unwrap();
    let (file, offset) = reader.file_path(SlotId(slot));
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().write_all_at(&[0xAB; 512], offset + 100).unwrap();
    let v = json(&f.inspect(&[]), 1);
    let ps = problems(&v);
    let want = format!("tier-2 slot {slot} of epoch 1");
    assert!(
        ps.iter().any(|(w, k, d)| w == "page does not match its checksum"
            && k.starts_with(&want)
            && d.contains("guest page 5")),
        "{ps:#?}"
    );
    assert_eq!(v["pages"]["bad"], 1);
    assert_eq!(v["pages"]["read_back"], PAGES - 1);
}

/// A page replaced by one with the same crc32c (anyone can compute one) but without the
/// cluster key's tag: inspect names it as failing authentication.
#[test]
fn forged_tier2_page_with_a_matching_crc_fails_authentication() {
    let f = fixture();
    let (slot, crc) = f.map[&6];
    let mut cfg = SsdConfig::new(f.data().join("tier2").join("e000001"));
    cfg.slots_per_file = SLOTS_PER_FILE;
    cfg.direct_io = false;
    let reader = SsdStore::open_reader(cfg).unwrap();
    let (file, offset) = reader.file_path(SlotId(slot));
    let mut forged = vec![0xEEu8; 4096];
    vmtier_storage::fault::force_crc32c(&mut forged, crc);
    assert_eq!(crc32c::crc32c(&forged), crc, "the forgery matches the crc");
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().write_all_at(&forged, offset).unwrap();
    let v = json(&f.inspect(&[]), 1);
    let ps = problems(&v);
    assert!(
        ps.iter().any(|(_, k, d)| k.starts_with(&format!("tier-2 slot {slot} of epoch 1"))
            && d.contains("guest page 6")
            && d.contains("keyed tag")),
        "{ps:#?}"
    );
    assert_eq!(v["pages"]["bad"], 1, "{v:#}");
}

/// Another cluster's key: inspect refuses every record, naming the key.
#[test]
fn the_wrong_key_is_named() {
    let f = fixture();
    let other = f.dir.join("other.key");
    ClusterKey::generate(&other).unwrap();
    let shared = f.data().join("shared");
    let out = common::vmtier_in(
        &f.dir,
        &["inspect", shared.to_str().unwrap(), "--key-file", other.to_str().unwrap(), "--json"],
    );
    let v = json(&out, 1);
    let ps = problems(&v);
    assert!(
        ps.iter().any(|(_, k, d)| k == &log_key(1) && d.contains("another cluster key") && d.contains("other.key")),
        "{ps:#?}"
    );
    // A key file others can read is refused before anything is read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = common::vmtier_in(&f.dir, &["inspect", shared.to_str().unwrap(), "--key-file", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"), "{}", describe(&out));
}

#[test]
fn orphaned_epoch_directory_is_reported_not_an_error() {
    let f = fixture();
    let orphan = f.data().join("tier2").join("e000000");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("slots-00000.dat"), vec![7u8; 8192]).unwrap();
    let v = json(&f.inspect(&[]), 0);
    let orphans = v["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{v:#}");
    assert_eq!(orphans[0]["epoch"], 0);
    assert_eq!(orphans[0]["tier"], "tier2");
    assert!(orphans[0]["bytes"].as_u64().unwrap() >= 8192, "{v:#}");
}

fn write_segments(dir: &Path) -> ObjectTier {
    write_segments_at(ObjectConfig::new(dir.to_string_lossy()))
}

fn write_segments_at(cfg: ObjectConfig) -> ObjectTier {
    let tier = ObjectTier::open(cfg).unwrap();
    let pages: Vec<Vec<u8>> = (0..4).map(|p| page_bytes(p, 9)).collect();
    let refs: Vec<(u64, &[u8])> = pages.iter().enumerate().map(|(i, p)| (i as u64, p.as_slice())).collect();
    tier.write_segment(&refs).unwrap();
    tier.write_segment(&refs[..2]).unwrap();
    tier
}

#[test]
fn tier3_segments_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let seg_dir = tmp.path().join("t3");
    let _tier = write_segments(&seg_dir);
    let v = json(&common::vmtier_in(tmp.path(), &["inspect", seg_dir.to_str().unwrap(), "--json"]), 0);
    assert_eq!(v["kind"], "tier3");
    assert_eq!(v["segments"][0]["segments"], 2);
    assert_eq!(v["segments"][0]["pages"], 6);

    // A flipped byte in page 2 of segment 0.
    let seg = seg_dir.join("seg-00000000.vts");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&seg).unwrap();
    let mut b = [0u8; 1];
    let off = vmtier_storage::segment::page_offset(2) + 17;
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 1], off).unwrap();
    let v = json(&common::vmtier_in(tmp.path(), &["inspect", seg_dir.to_str().unwrap(), "--json"]), 1);
    let ps = problems(&v);
    assert!(ps.iter().any(|(_, k, _)| k.ends_with("seg-00000000.vts page 2")), "{ps:#?}");
    assert_eq!(v["segments"][0]["bad_pages"], 1);
}

#[test]
fn a_path_of_no_known_kind_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
    let out = common::vmtier_in(tmp.path(), &["inspect", tmp.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected a replication log"), "{err}");
    let out = common::vmtier_in(tmp.path(), &["inspect"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// A failover: epoch 2 claims the log (a fence at seq 4) and commits a full checkpoint (seq 5)
/// whose pages stay in epoch 1's store but page 7, rewritten into its own.
fn failover(f: &Fixture) -> LogWriter {
    let data = f.data();
    let store = vmtier_repl::open_store(&ObjectConfig::new(data.join("shared").to_string_lossy())).expect("store");
    let mut log = LogWriter::claim(store, &f.key, "test-host:2").expect("claim");
    assert_eq!(log.epoch(), 2);
    let mut cfg = SsdConfig::new(data.join("tier2").join("e000002"));
    cfg.slots_per_file = SLOTS_PER_FILE;
    cfg.direct_io = false;
    let ssd = SsdStore::open(cfg).expect("tier 2");
    let slot = ssd.alloc().unwrap();
    let crc7 = ssd.write(slot, &page_bytes(7, 20)).unwrap();
    let tag7 = f.key.page_tag(7, &page_bytes(7, 20));
    ssd.sync().unwrap();
    let mut pages: Vec<PageLoc> = f
        .map
        .iter()
        .filter(|&(&p, _)| p != 7)
        .map(|(&page, &(s, crc))| PageLoc { page, loc: Location::Ssd { store: 1, slot: s }, crc, tag: f.tags[&page] })
        .collect();
    pages.push(PageLoc { page: 7, loc: Location::Ssd { store: 2, slot: slot.0 }, crc: crc7, tag: tag7 });
    let digest = map_digest(pages.iter().map(|p| (p.page, p.crc)));
    let full = Checkpoint { full: true, guest_bytes: 1 << 20, pages, digest, ..Checkpoint::default() };
    assert_eq!(log.commit(&full).expect("commit"), 5);
    log.heartbeat(5).unwrap();
    log
}

#[test]
fn a_failover_log_is_clean_and_its_predecessors_store_is_not_orphaned() {
    let f = fixture();
    let mut log = failover(&f);
    let v = json(&f.inspect(&[]), 0);
    assert_eq!(v["log"]["fences"], 1, "{v:#}");
    assert_eq!(v["log"]["epochs"], serde_json::json!([1, 2]));
    assert_eq!(v["log"]["newest_committed"]["seq"], 5);
    assert_eq!(v["pages"]["tier2_earlier"], PAGES - 1);
    assert_eq!(v["pages"]["tier2_own"], 1);
    assert_eq!(v["pages"]["read_back"], PAGES);
    assert!(v["orphans"].as_array().unwrap().is_empty(), "{v:#}");

    // A checkpoint whose digest disagrees with the replayed map: the replay names it.
    let bad = Checkpoint { guest_bytes: 1 << 20, digest: 12345, ..Checkpoint::default() };
    assert_eq!(log.commit(&bad).expect("commit"), 6);
    let v = json(&f.inspect(&[]), 1);
    let ps = problems(&v);
    assert!(ps.iter().any(|(w, k, d)| w == "replay fails" && k == &log_key(6) && d.contains("digest")), "{ps:#?}");
    assert_eq!(v["recoverable"]["checkpoint"]["seq"], 5, "{v:#}");
}

#[test]
fn a_full_checkpoint_after_the_damage_is_what_can_be_recovered() {
    let f = fixture();
    failover(&f);
    // Damage record 2: 3..=4 cannot be replayed from 1, but 5 is full and starts over.
    let path = f.record(2);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let v = json(&f.inspect(&[]), 1);
    let ps = problems(&v);
    assert!(
        ps.iter().any(|(_, k, d)| k == &log_key(2) && d.contains("records 2..=4") && d.contains("full checkpoint 5")),
        "{ps:#?}"
    );
    assert_eq!(v["log"]["newest_intact_before_damage"]["seq"], 1, "{v:#}");
    assert_eq!(v["recoverable"]["checkpoint"]["seq"], 5, "{v:#}");
    assert_eq!(v["pages"]["read_back"], PAGES);
}

#[test]
fn tier3_pages_of_the_checkpoint_and_every_epochs_segments_are_checked() {
    let f = fixture();
    let data = f.data();
    // Page 9 moves to tier 3 of epoch 1 (checkpoint 4); an epoch-0 tier 3 is left behind.
    let tier = ObjectTier::open(ObjectConfig::new(data.join("tier3").join("e000001").to_string_lossy())).unwrap();
    let content = page_bytes(9, 4);
    let (loc, crc) = tier.write_segment(&[(9, content.as_slice())]).unwrap()[0];
    let _old = write_segments(&data.join("tier3").join("e000000"));
    let store = vmtier_repl::open_store(&ObjectConfig::new(data.join("shared").to_string_lossy())).unwrap();
    let mut log = LogWriter::claim(store, &f.key, "test-host:3").unwrap();
    let mut map: HashMap<u32, u32> = f.map.iter().map(|(&p, &(_, c))| (p, c)).collect();
    map.insert(9, crc);
    let mut pages: Vec<PageLoc> = f
        .map
        .iter()
        .filter(|&(&p, _)| p != 9)
        .map(|(&page, &(s, crc))| PageLoc { page, loc: Location::Ssd { store: 1, slot: s }, crc, tag: f.tags[&page] })
        .collect();
    let tag = f.key.page_tag(9, &content);
    pages.push(PageLoc {
        page: 9,
        loc: Location::Object { store: 1, segment: loc.segment, index: loc.index },
        crc,
        tag,
    });
    let digest = map_digest(map.iter().map(|(&p, &c)| (p, c)));
    let full = Checkpoint { full: true, guest_bytes: 1 << 20, pages, digest, ..Checkpoint::default() };
    assert_eq!(log.commit(&full).unwrap(), 5);

    let v = json(&f.inspect(&[]), 0);
    assert_eq!(v["pages"]["tier3_earlier"], 1, "{v:#}");
    assert_eq!(v["pages"]["read_back"], PAGES);
    let segs = v["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 2, "{v:#}");
    let orphans = v["orphans"].as_array().unwrap();
    assert!(orphans.iter().any(|o| o["tier"] == "tier3" && o["epoch"] == 0 && o["bytes"].as_u64() > Some(0)), "{v:#}");

    // Damage page 9's copy: the segment check and the read-back both name it.
    let seg = data.join("tier3").join("e000001").join(format!("seg-{:08x}.vts", loc.segment));
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.write_all_at(&[0x55; 8], vmtier_storage::segment::page_offset(loc.index) + 8).unwrap();
    let v = json(&f.inspect(&[]), 1);
    let ps = problems(&v);
    assert!(
        ps.iter().any(|(w, k, d)| w == "page does not match its checksum"
            && k.starts_with(&format!("tier-3 page {} of segment seg-{:08x}.vts of epoch 1", loc.index, loc.segment))
            && d.contains("guest page 9")),
        "{ps:#?}"
    );
    assert!(ps.iter().any(|(w, _, _)| w == "segment page does not match its checksum"), "{ps:#?}");
}

#[test]
fn a_log_and_segments_in_s3() {
    let Some(server) = s3::S3Server::start_or_skip("a_log_and_segments_in_s3") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let shared = server.config("vm-0/ha");
    let store = vmtier_repl::open_store(&shared).unwrap();
    let key = keygen(tmp.path());
    let mut log = LogWriter::claim(store, &key, "s3-host:1").unwrap();
    let empty = Checkpoint { full: true, guest_bytes: 1 << 20, ..Checkpoint::default() };
    assert_eq!(log.commit(&empty).unwrap(), 1);
    let _tier = write_segments_at(server.config("vm-0/t3"));
    let config = tmp.path().join("vm.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[replication]\nshared = {:?}\nendpoint = {:?}\nregion = \"us-east-1\"\n\
             access_key_id = {:?}\nsecret_access_key = {:?}\nallow_http = true\nkey_file = {:?}\n",
            tmp.path().join("data").to_string_lossy(),
            shared.url,
            shared.endpoint.as_deref().unwrap(),
            s3::ACCESS_KEY,
            s3::SECRET_KEY,
            tmp.path().join("cluster.key").to_string_lossy()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let v = json(&common::vmtier_in(tmp.path(), &["inspect", "--config", cfg, "--json"]), 0);
    assert_eq!(v["kind"], "log");
    assert_eq!(v["log"]["newest_committed"]["seq"], 1, "{v:#}");
    let url = format!("s3://{}/vm-0/ha", s3::BUCKET);
    let v = json(&common::vmtier_in(tmp.path(), &["inspect", &url, "--config", cfg, "--json"]), 0);
    assert_eq!(v["kind"], "log");
    let url = format!("s3://{}/vm-0/t3", s3::BUCKET);
    let v = json(&common::vmtier_in(tmp.path(), &["inspect", &url, "--config", cfg, "--json"]), 0);
    assert_eq!(v["kind"], "tier3");
    assert_eq!(v["segments"][0]["segments"], 2, "{v:#}");
    let url = format!("s3://{}/vm-0/nothing", s3::BUCKET);
    let out = common::vmtier_in(tmp.path(), &["inspect", &url, "--config", cfg]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
