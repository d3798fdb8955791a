//! Watching the primary's lease: [`LeaseWatch`] tells when `lease/heartbeat` has stopped
//! changing.
//!
//! The primary rewrites its heartbeat ([`LogWriter::heartbeat`](crate::LogWriter::heartbeat))
//! with a new counter each time. The watcher compares what it reads with what it read before, on
//! its *own* monotonic clock: clocks of different hosts are never compared (the heartbeat's
//! `unix_ms` is informational only). The lease has expired when the heartbeat has not changed for
//! `timeout` — the secondary may then claim the log, which fences the old primary whether it is
//! dead or only slow.
//!
//! Only a heartbeat *newer* than every one seen before — a higher `(epoch, counter)` — counts as
//! a change. Heartbeats are authenticated, but an old one can be copied back over the current
//! one (a replay), and the heartbeat can be deleted; neither restarts the clock, so whoever can
//! write the shared store without the key cannot keep a dead primary's lease alive. Replays are
//! counted ([`LeaseWatch::replays`]).

use std::time::{Duration, Instant};

use crate::auth::ClusterKey;
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
    /// `(epoch, counter)` of the newest heartbeat seen.
    newest: Option<(u64, u64)>,
    changed_at: Option<Instant>,
    replays: u64,
}

impl LeaseWatch {
    /// A watcher that declares the lease expired after `timeout` without a change.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, last: None, newest: None, changed_at: None, replays: 0 }
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
    /// Only a heartbeat newer than all seen before restarts it (see the [module docs](self)).
    pub fn observe_at(&mut self, hb: Option<Heartbeat>, now: Instant) -> LeaseStatus {
        let stamp = hb.as_ref().map(|h| (h.epoch, h.counter));
        let newer = match (stamp, self.newest) {
            (Some(s), Some(n)) => s > n,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if newer {
            self.newest = stamp;
            self.changed_at = Some(now);
        } else if self.last.is_none() {
            self.changed_at = Some(now); // the first observation starts the clock
        } else if stamp.is_some_and(|s| Some(s) < self.newest) && self.last.as_ref() != Some(&hb) {
            self.replays += 1;
            tracing::warn!(
                epoch = stamp.map(|s| s.0),
                counter = stamp.map(|s| s.1),
                newest = ?self.newest,
                "an older heartbeat replaced a newer one (a replay): ignored, it does not keep the lease alive"
            );
        }
        self.last = Some(hb);
        let silent_for = now.saturating_duration_since(self.changed_at.unwrap_or(now));
        if silent_for >= self.timeout { LeaseStatus::Expired { silent_for } } else { LeaseStatus::Alive }
    }

    /// Older heartbeats seen after a newer one (replays), ignored.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// Records an observation made now.
    pub fn observe(&mut self, hb: Option<Heartbeat>) -> LeaseStatus {
        self.observe_at(hb, Instant::now())
    }

    /// Reads the heartbeat from `store` and observes it. A damaged heartbeat is an error (and
    /// not an observation): the caller decides whether to keep watching.
    pub fn poll(&mut self, store: &dyn SharedStore, key: &ClusterKey) -> Result<LeaseStatus, LogError> {
        let hb = read_heartbeat(store, key)?;
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
        // Deleting the heartbeat does not restart the clock: only a newer heartbeat does.
        assert_eq!(w.observe_at(None, t0 + Duration::from_millis(12)), LeaseStatus::Alive);
        assert!(matches!(w.observe_at(None, t0 + Duration::from_millis(21)), LeaseStatus::Expired { .. }));
    }

    /// An old heartbeat written back (replayed) never keeps the lease alive.
    #[test]
    fn replayed_heartbeats_do_not_keep_the_lease() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut w = LeaseWatch::new(Duration::from_millis(100));
        assert_eq!(w.observe_at(hb(5), s(0)), LeaseStatus::Alive);
        assert_eq!(w.observe_at(hb(6), s(50)), LeaseStatus::Alive);
        // The primary dies; an attacker alternates old heartbeats.
        for (i, c) in [1, 5, 2, 5, 1].into_iter().enumerate() {
            w.observe_at(hb(c), s(60 + 10 * i as u64));
        }
        assert!(matches!(w.observe_at(hb(3), s(151)), LeaseStatus::Expired { .. }));
        assert_eq!(w.replays(), 6);
        // A new epoch's first heartbeat is newer, whatever its counter.
        let new = Some(Heartbeat { epoch: 2, holder: "b".into(), counter: 1, unix_ms: 0, last_committed: 0 });
        assert_eq!(w.observe_at(new, s(160)), LeaseStatus::Alive);
    }
}
