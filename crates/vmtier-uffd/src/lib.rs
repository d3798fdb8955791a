//! Low-level Linux memory primitives for vmtier.
//!
//! This crate is where vmtier's `unsafe` code for memory lives: hand-written userfaultfd
//! bindings (ioctl numbers and struct sizes checked at compile time), memfd-backed guest memory,
//! shared mappings, and page-aligned buffers for `O_DIRECT` I/O. Everything above it is safe Rust.

mod buf;

pub use buf::{AlignedBuf, BUF_ALIGN};

/// Size of a base page, the unit vmtier tracks and moves.
pub const PAGE_SIZE: usize = 4096;
