//! The deterministic core shared by the in-process guest and the micro-VM's guest programs:
//! the random number generators and the page content scheme (see [`crate::verify`]).
//!
//! This file uses `core` only: the freestanding guest in `crates/vmtier-vm/guest` compiles it
//! too (`#[path]`), so a page written inside a VM and one written by a host thread follow the
//! same scheme bit for bit.

/// One SplitMix64 finalisation step: a fast, well-distributed 64-bit mix.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 generator (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Creates a generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Returns the next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }
}

/// xoshiro256** generator (Blackman, Vigna 2018), seeded through SplitMix64.
#[derive(Debug, Clone)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    /// Creates a generator from `seed`; every seed (including 0) gives a valid state.
    pub fn new(seed: u64) -> Self {
        let mut sm = SplitMix64::new(seed);
        Self { s: [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()] }
    }

    /// Creates a generator for one of several independent streams derived from `seed`.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        Self::new(mix64(seed ^ mix64(stream.wrapping_add(0xA076_1D64_78BD_642F))))
    }

    /// Returns the next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Returns a uniform `f64` in `[0, 1)` with 53 bits of precision.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Returns a uniform integer in `[0, n)` (multiply-shift; bias below 2^-64 · n).
    /// `n` must be non-zero.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Returns `true` with probability `p` (`p >= 1` is always true, `p <= 0` never).
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        if p >= 1.0 {
            true
        } else if p <= 0.0 {
            false
        } else {
            self.next_f64() < p
        }
    }
}

/// Bytes per guest page.
pub const PAGE_SIZE: usize = 4096;
/// 64-bit words per guest page.
pub const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;

/// Added per word index to the page base (the golden-ratio constant).
pub const WORD_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

/// The value of word 0 of page `page` at version `version`, before the word salt.
#[inline]
pub fn page_base(page: usize, version: u32) -> u64 {
    mix64(((page as u64) << 32) ^ u64::from(version))
}

/// The value of word `word` of page `page` at version `version`.
#[inline]
pub fn expected_word(page: usize, version: u32, word: usize) -> u64 {
    if version == 0 { 0 } else { page_base(page, version) ^ (word as u64 + 1).wrapping_mul(WORD_STRIDE) }
}

/// The version after `version` (never 0, which means "never written").
#[inline]
pub fn next_version(version: u32) -> u32 {
    version.wrapping_add(1).max(1)
}
