//! Watching the primary's lease: [`LeaseWatch`] tells when `lease/heartbeat` has stopped
//! changing.
//!
//! The primary rewrites its heartbeat ([`LogWriter::heartbeat`](crate::LogWriter::heartbeat))
//! with a new counter each time. The watcher compares what it reads with what it read before, on
//! its *own* monotonic clock: clocks of different hosts are never compared (the heartbeat's
//! `unix_ms` is informational only). The lease has expired when the heartbeat has not changed for
//! `timeout` — the secondary may then claim the log, which fences the old primary whether it is
//! dead or only slow.

use std::time::{Duration, Instant};

use crate::log::{LogError, read_heartbeat};
use crate::record::Heartbeat;
use crate::store::SharedStore;

/// What a [`LeaseWatch`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// The heartbeat changed less than `timeout` ago (or has been watched for less than that).
    Alive,
    /// The heartbeat (or its absence) has not changed for `silent_for` ≥ `timeout`.
    Expired {
        /// How long it has been unchanged, on this host's clock.
        silent_for: Duration,
    },
}

/// Watches the heartbeat for changes. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct LeaseWatch {
    timeout: Duration,
    last: Option<Option<Heartbeat>>,
    changed_at: Option<Instant>,
}

impl LeaseWatch {
    /// A watcher that declares the lease expired after `timeout` without a change.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, last: None, changed_at: None }
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The last heartbeat observed (`None`: none observed, or there was none).
    pub fn last(&self) -> Option<&Heartbeat> {
        self.last.as_ref().and_then(Option::as_ref)
    }

    /// Records an observation of the heartbeat made at `now`. The first observation starts the
    /// clock: a lease is never expired before `timeout` has passed since the watch began.
    pub fn observe_at(&mut self, hb: Option<Heartbeat>, now: Instant) -> LeaseStatus {
        if self.last.as_ref() != Some(&hb) {
            self.last = Some(hb);
            self.changed_at = Some(now);
        }
        let silent_for = now.saturating_duration_since(self.changed_at.unwrap_or(now));
        if silent_for >= self.timeout { LeaseStatus::Expired { silent_for } } else { LeaseStatus::Alive }
    }

    /// Records an observation made now.
    pub fn observe(&mut self, hb: Option<Heartbeat>) -> LeaseStatus {
        self.observe_at(hb, Instant::now())
    }

    /// Reads the heartbeat from `store` and observes it. A damaged heartbeat is an error (and
    /// not an observation): the caller decides whether to keep watching.
    pub fn poll(&mut self, store: &dyn SharedStore) -> Result<LeaseStatus, LogError> {
        let hb = read_heartbeat(store)?;
        Ok(self.observe(hb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(counter: u64) -> Option<Heartbeat> {
        Some(Heartbeat { epoch: 1, holder: "a".into(), counter, unix_ms: 0, last_committed: 0 })
    }

    #[test]
    fn expires_only_after_timeout_without_change() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut w = LeaseWatch::new(Duration::from_millis(100));
        assert_eq!(w.observe_at(hb(1), s(0)), LeaseStatus::Alive);
        assert_eq!(w.observe_at(hb(1), s(99)), LeaseStatus::Alive);
        assert_eq!(w.observe_at(hb(2), s(150)), LeaseStatus::Alive, "changed: the clock restarts");
        assert_eq!(w.observe_at(hb(2), s(249)), LeaseStatus::Alive);
        assert_eq!(w.observe_at(hb(2), s(260)), LeaseStatus::Expired { silent_for: Duration::from_millis(110) });
        assert_eq!(w.last().map(|h| h.counter), Some(2));
        // The primary comes back (or a new one starts): alive again.
        assert_eq!(w.observe_at(hb(3), s(300)), LeaseStatus::Alive);
    }

    #[test]
    fn a_missing_heartbeat_expires_too() {
        let t0 = Instant::now();
        let mut w = LeaseWatch::new(Duration::from_millis(10));
        assert_eq!(w.observe_at(None, t0), LeaseStatus::Alive);
        assert!(matches!(w.observe_at(None, t0 + Duration::from_millis(10)), LeaseStatus::Expired { .. }));
        assert_eq!(w.observe_at(hb(1), t0 + Duration::from_millis(11)), LeaseStatus::Alive);
        assert_eq!(w.observe_at(None, t0 + Duration::from_millis(12)), LeaseStatus::Alive, "deletion is a change");
    }
}
