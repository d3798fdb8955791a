//! The page content scheme and its verification.
//!
//! Page `p` at version `v` holds, in word `i` (0..512):
//!
//! | version | word `i`                                                          |
//! |---------|-------------------------------------------------------------------|
//! | 0       | `0` — never written; the engine must zero-fill untouched pages    |
//! | v ≥ 1   | `mix64((p << 32) ^ v) ^ ((i + 1) · 0x9E3779B97F4A7C15)`           |
//!
//! The content depends on the page number, so a page served at the wrong address is caught;
//! on the version, so a stale copy (an older write-back) is caught; and on the word index, so
//! shifted or partially copied data is caught. Expected versions live in the guest's private
//! memory, never in the region under test.

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::content::{PAGE_SIZE, WORDS_PER_PAGE, expected_word, next_version};
use crate::content::{WORD_STRIDE, page_base};
use crate::error::WorkloadError;

/// A mismatch found while verifying one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Page number within the region.
    pub page: usize,
    /// Word index within the page (0..512).
    pub word: usize,
    /// The value the word should hold.
    pub expected: u64,
    /// The value read from the region.
    pub found: u64,
    /// The version the page should be at.
    pub expected_version: u32,
}

impl From<Mismatch> for WorkloadError {
    fn from(m: Mismatch) -> Self {
        WorkloadError::Mismatch {
            page: m.page,
            word: m.word,
            expected: m.expected,
            found: m.found,
            expected_version: m.expected_version,
        }
    }
}

#[inline]
fn page_words(mem: &[AtomicU64], page: usize) -> &[AtomicU64] {
    &mem[page * WORDS_PER_PAGE..(page + 1) * WORDS_PER_PAGE]
}

/// Reads all 512 words of `page` and checks them against `version`.
pub fn verify_page(mem: &[AtomicU64], page: usize, version: u32) -> Result<(), Mismatch> {
    let words = page_words(mem, page);
    let mismatch =
        |word: usize, expected: u64, found: u64| Mismatch { page, word, expected, found, expected_version: version };
    if version == 0 {
        for (i, w) in words.iter().enumerate() {
            let found = w.load(Ordering::Relaxed);
            if found != 0 {
                return Err(mismatch(i, 0, found));
            }
        }
    } else {
        let base = page_base(page, version);
        let mut salt = 0u64;
        for (i, w) in words.iter().enumerate() {
            salt = salt.wrapping_add(WORD_STRIDE);
            let expected = base ^ salt;
            let found = w.load(Ordering::Relaxed);
            if found != expected {
                return Err(mismatch(i, expected, found));
            }
        }
    }
    Ok(())
}

/// Writes the content of `version` to all 512 words of `page`.
pub fn write_page(mem: &[AtomicU64], page: usize, version: u32) {
    let words = page_words(mem, page);
    if version == 0 {
        for w in words {
            w.store(0, Ordering::Relaxed);
        }
        return;
    }
    let base = page_base(page, version);
    let mut salt = 0u64;
    for w in words {
        salt = salt.wrapping_add(WORD_STRIDE);
        w.store(base ^ salt, Ordering::Relaxed);
    }
}

/// Verifies every page of `mem` against `expected` (one version per page, 0 = all zeros).
///
/// Returns the number of pages verified. Single-threaded; for a final check after a threaded
/// run prefer [`crate::Guest::final_check`].
pub fn verify_all(mem: &[AtomicU64], expected: &[u32]) -> Result<u64, WorkloadError> {
    let pages = crate::config::region_pages(mem.len())?;
    if expected.len() != pages {
        return Err(WorkloadError::Config {
            what: "expected-version table length",
            value: expected.len().to_string(),
            allowed: format!("exactly the region's page count ({pages})"),
        });
    }
    for (page, &version) in expected.iter().enumerate() {
        verify_page(mem, page, version)?;
    }
    Ok(pages as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(pages: usize) -> Vec<AtomicU64> {
        (0..pages * WORDS_PER_PAGE).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn write_then_verify_round_trips() {
        let mem = region(4);
        for p in 0..4 {
            verify_page(&mem, p, 0).unwrap();
            write_page(&mem, p, 3);
            verify_page(&mem, p, 3).unwrap();
            assert!(verify_page(&mem, p, 2).is_err());
            assert!(verify_page(&mem, p, 0).is_err());
        }
        assert_eq!(mem[WORDS_PER_PAGE + 5].load(Ordering::Relaxed), expected_word(1, 3, 5));
    }

    #[test]
    fn wrong_page_content_is_caught() {
        let mem = region(2);
        write_page(&mem, 0, 1);
        // Copy page 0 over page 1: same version, wrong address.
        for i in 0..WORDS_PER_PAGE {
            let v = mem[i].load(Ordering::Relaxed);
            mem[WORDS_PER_PAGE + i].store(v, Ordering::Relaxed);
        }
        let m = verify_page(&mem, 1, 1).unwrap_err();
        assert_eq!((m.page, m.word, m.expected_version), (1, 0, 1));
    }

    #[test]
    fn verify_all_reports_page_and_word() {
        let mem = region(8);
        let mut versions = vec![0u32; 8];
        for p in [1, 4, 6] {
            write_page(&mem, p, 1);
            versions[p] = 1;
        }
        assert_eq!(verify_all(&mem, &versions).unwrap(), 8);
        mem[4 * WORDS_PER_PAGE + 17].fetch_xor(1 << 40, Ordering::Relaxed);
        match verify_all(&mem, &versions).unwrap_err() {
            WorkloadError::Mismatch { page, word, expected, found, expected_version } => {
                assert_eq!((page, word, expected_version), (4, 17, 1));
                assert_eq!(expected ^ found, 1 << 40);
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn next_version_skips_zero() {
        assert_eq!(next_version(0), 1);
        assert_eq!(next_version(5), 6);
        assert_eq!(next_version(u32::MAX), 1);
    }
}
