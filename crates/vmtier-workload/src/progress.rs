//! Progress counters a caller can poll (e.g. for a progress bar) and a cancel flag.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// The stage a run is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing started yet.
    Idle,
    /// First write of every page.
    Populate,
    /// The access pattern runs.
    Access,
    /// Every touched page is re-read once.
    FinalCheck,
    /// The run finished (successfully or not).
    Done,
}

impl Phase {
    /// A short lowercase name: `idle`, `populate`, `access`, `final-check`, `done`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Populate => "populate",
            Phase::Access => "access",
            Phase::FinalCheck => "final-check",
            Phase::Done => "done",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Phase::Populate,
            2 => Phase::Access,
            3 => Phase::FinalCheck,
            4 => Phase::Done,
            _ => Phase::Idle,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shared progress of a run. All counters use relaxed atomics; readers see approximate,
/// monotonically increasing values.
#[derive(Debug, Default)]
pub struct Progress {
    /// Page operations completed so far (populate writes, accesses and final-check reads).
    pub done: AtomicU64,
    /// Page operations planned so far; grows as each stage starts.
    pub total: AtomicU64,
    /// Set by the caller to cancel the run; workers stop within one page access.
    pub stop: AtomicBool,
    phase: AtomicU8,
}

impl Progress {
    /// Creates idle progress with all counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current stage.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// The current stage as a string (`populate`, `access`, …).
    pub fn phase_name(&self) -> &'static str {
        self.phase().as_str()
    }

    /// Asks the run to stop; it returns [`crate::WorkloadError::Cancelled`].
    pub fn cancel(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sets the current stage (runners other than this crate's guest, such as the micro-VM, report
    /// theirs here).
    pub fn set_phase(&self, phase: Phase) {
        let v = match phase {
            Phase::Idle => 0,
            Phase::Populate => 1,
            Phase::Access => 2,
            Phase::FinalCheck => 3,
            Phase::Done => 4,
        };
        self.phase.store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_round_trips() {
        let p = Progress::new();
        assert_eq!(p.phase_name(), "idle");
        for ph in [Phase::Populate, Phase::Access, Phase::FinalCheck, Phase::Done] {
            p.set_phase(ph);
            assert_eq!(p.phase(), ph);
        }
        assert_eq!(Phase::FinalCheck.to_string(), "final-check");
    }
}
