//! Builds the guest program (`guest/main.rs`) with the same `rustc` that builds this crate:
//! `#![no_std]` for the host target, statically linked at 2 MiB by `guest/guest.ld`. Nothing is
//! downloaded; the host toolchain's `core` is all it needs.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let guest = manifest.join("guest");
    for entry in std::fs::read_dir(&guest).expect("guest/ exists") {
        println!("cargo::rerun-if-changed={}", entry.expect("readable dir").path().display());
    }
    println!("cargo::rerun-if-changed={}", manifest.join("abi.rs").display());
    println!("cargo::rerun-if-changed={}", manifest.join("../vmtier-workload/src/content.rs").display());

    let elf = out.join("vmtier-guest.elf");
    let status = Command::new(&rustc)
        .args(["--edition", "2024", "--crate-type", "bin", "--crate-name", "vmtier_guest"])
        .args(["-C", "panic=abort", "-C", "opt-level=2", "-C", "debuginfo=0"])
        .args(["-C", "relocation-model=static", "-C", "code-model=small"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib", "-C", "link-arg=-static"])
        .args(["-C", "link-arg=-Wl,--build-id=none"])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", guest.join("guest.ld").display()))
        .arg("-o")
        .arg(&elf)
        .arg(guest.join("main.rs"))
        // The guest is built for the host target, whatever cargo is building for.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run rustc for the guest program");
    assert!(status.success(), "building the guest program failed (see the rustc errors above)");
}
