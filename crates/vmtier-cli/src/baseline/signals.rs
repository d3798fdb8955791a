//! Turning SIGINT, SIGTERM and SIGHUP into a flag while a bench runs, so that Ctrl-C stops it
//! through the normal teardown path (child killed, cgroup removed, swap disabled and deleted)
//! instead of killing the process with a swap file still enabled.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Serialises the unit tests that depend on the process-wide flag.
#[cfg(test)]
pub static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether one of the signals arrived since the guard was installed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// While alive, SIGINT, SIGTERM and SIGHUP set [`interrupted`] instead of ending the process;
/// the previous dispositions come back (and the flag is cleared) on drop.
pub struct InterruptGuard {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl std::fmt::Debug for InterruptGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptGuard").field("signals", &self.old.len()).finish()
    }
}

impl InterruptGuard {
    /// Installs the handler.
    pub fn install() -> std::io::Result<Self> {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut guard = Self { old: Vec::new() };
        for sig in SIGNALS {
            // SAFETY: `sigaction` is plain data; all-zero is a valid value (empty mask, no flags).
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            act.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            // SAFETY: as above.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are to live `sigaction` values; the handler only performs an
            // atomic store, which is async-signal-safe.
            if unsafe { libc::sigaction(sig, &act, &mut old) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            guard.old.push((sig, old));
        }
        Ok(guard)
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.old {
            // SAFETY: restores a disposition that `sigaction` returned earlier for this signal.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
        INTERRUPTED.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sighup_sets_the_flag_and_the_guard_restores() {
        let _serial = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let guard = InterruptGuard::install().unwrap();
        assert!(!interrupted());
        // SAFETY: raise(3) on this thread; the installed handler only sets a flag.
        unsafe { libc::raise(libc::SIGHUP) };
        assert!(interrupted());
        drop(guard);
        assert!(!interrupted());
        // The default disposition of SIGHUP is back (we do not raise it again: it would end the
        // test process).
        // SAFETY: reading the current disposition into a zeroed struct.
        let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries.
        unsafe { libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut cur) };
        assert_ne!(cur.sa_sigaction, on_signal as *const () as libc::sighandler_t);
    }
}
