//! Errors of trace import, encoding and decoding.

use std::fmt;
use std::io;
use std::sync::Arc;

/// Example of a lackey record, quoted by the parse errors.
const LACKEY_EXAMPLE: &str = "` L 04222cac,4` (kind I, L, S or M; hex address; decimal size)";

/// What went wrong reading, importing or writing a page trace. Every message names the file
/// (and, for lackey text, the line) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened.
    #[error("cannot open trace file {path}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading failed (including a corrupt or truncated gzip stream).
    #[error("cannot read {path} after line {line} (a damaged or truncated .gz file? re-record or re-compress it)")]
    Read {
        /// The file.
        path: String,
        /// Lines read before the failure.
        line: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The input is not valgrind lackey output at all.
    #[error(
        "{path} is not valgrind lackey output: line {line} is `{text}`; expected records like \
         {LACKEY_EXAMPLE} as written by `valgrind --tool=lackey --trace-mem=yes`, plain or gzip"
    )]
    NotLackey {
        /// The file.
        path: String,
        /// The first line that is not lackey output (1-based).
        line: u64,
        /// That line, truncated and escaped.
        text: String,
    },
    /// A line in the middle of lackey output is not a lackey record.
    #[error("{path} line {line}: {reason}: `{text}`; lackey records look like {LACKEY_EXAMPLE}")]
    Malformed {
        /// The file.
        path: String,
        /// The line (1-based).
        line: u64,
        /// What is wrong with it.
        reason: &'static str,
        /// The line, truncated and escaped.
        text: String,
    },
    /// The lackey output holds no memory access the import keeps.
    #[error(
        "{path} has no memory accesses ({lines} lines, {instructions} instruction fetches); was it \
         recorded with `--trace-mem=yes`? (instruction fetches count only with --instructions)"
    )]
    NoAccesses {
        /// The file.
        path: String,
        /// Lines read.
        lines: u64,
        /// Instruction fetches seen (and left out).
        instructions: u64,
    },
    /// More distinct pages than the format holds.
    #[error("{path} line {line}: more than {max} distinct pages; split the trace")]
    TooManyPages {
        /// The file.
        path: String,
        /// Where the limit was crossed.
        line: u64,
        /// The limit.
        max: u64,
    },
    /// A binary trace does not start with the magic.
    #[error("{path} is not a vmtier page trace (bad magic); import lackey output with `vmtier trace import`")]
    BadMagic {
        /// The file.
        path: String,
    },
    /// A binary trace of a format version this build does not know.
    #[error("{path} is a vmtier page trace of version {version}; this build reads version {supported}: re-import it")]
    UnsupportedVersion {
        /// The file.
        path: String,
        /// The file's version.
        version: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A binary trace is shorter than its header says.
    #[error("{path} is truncated: {found} bytes, the header says {expected}; re-import it")]
    Truncated {
        /// The file.
        path: String,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// A binary trace failed its checksum.
    #[error("{path} is corrupt: crc32c {computed:#010x} does not match the stored {stored:#010x}; re-import it")]
    Checksum {
        /// The file.
        path: String,
        /// The stored checksum.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// A binary trace passed its checksum but does not decode (written by a buggy writer).
    #[error("{path} is corrupt: {what}; re-import it")]
    Corrupt {
        /// The file.
        path: String,
        /// What does not hold.
        what: String,
    },
    /// The trace could not be written.
    #[error("cannot write trace file {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl TraceError {
    pub(crate) fn corrupt(path: &str, what: impl Into<String>) -> Self {
        TraceError::Corrupt { path: path.to_string(), what: what.into() }
    }
}

/// A [`TraceError`] that can be cloned and compared (by message), for error types that must
/// be `Clone + PartialEq` such as [`WorkloadError`](crate::WorkloadError).
#[derive(Debug, Clone)]
pub struct SharedTraceError(pub Arc<TraceError>);

impl From<TraceError> for SharedTraceError {
    fn from(e: TraceError) -> Self {
        Self(Arc::new(e))
    }
}

impl PartialEq for SharedTraceError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl fmt::Display for SharedTraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedTraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

/// `text` for an error message: at most 60 characters, control characters escaped.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 60;
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim_end_matches(['\n', '\r']);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() { out.extend(c.escape_default()) } else { out.push(c) }
    }
    out
}
