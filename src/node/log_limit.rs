//! A cap on the log lines that peers can cause without the node's secret.
//!
//! Each refused connection (a TLS handshake that fails, an unreadable frame, a wrong auth
//! prefix) costs a peer one TCP connection and would cost the node one log line. journald's
//! default per-service rate limit is 10 000 messages in 30 s, after which it drops *every*
//! message of the service for the rest of the interval: a peer without the secret could hide
//! the node's own warnings that way. So each kind of such line is logged at most `burst`
//! times per `window`; the rest are counted, and the count is logged (by the caller, from
//! the node's heartbeat) as one line per kind.
//!
//! Pure: the caller passes the time, so the logic is tested without sleeping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Lines per kind and window: enough to see who it is, far below journald's limit.
pub(crate) const BURST: u32 = 20;
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Slot {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug)]
pub(crate) struct LogLimiter {
    burst: u32,
    window: Duration,
    slots: BTreeMap<&'static str, Slot>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(BURST, WINDOW)
    }
}

impl LogLimiter {
    pub(crate) fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            slots: BTreeMap::new(),
        }
    }

    /// Whether a line of this kind may be logged now; if not, it is counted.
    pub(crate) fn admit(&mut self, kind: &'static str, now: Instant) -> bool {
        let slot = self.slots.entry(kind).or_insert(Slot {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(slot.start) >= self.window {
            slot.start = now;
            slot.logged = 0;
        }
        if slot.logged < self.burst {
            slot.logged += 1;
            true
        } else {
            slot.suppressed += 1;
            false
        }
    }

    /// The lines counted instead of logged since the last call, per kind (and forgets them).
    pub(crate) fn take_suppressed(&mut self) -> Vec<(&'static str, u64)> {
        self.slots
            .iter_mut()
            .filter(|(_, s)| s.suppressed > 0)
            .map(|(k, s)| (*k, std::mem::take(&mut s.suppressed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_kind_and_window_then_counted() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3, Duration::from_secs(60));
        let admitted = (0..10).filter(|_| l.admit("a", t0)).count();
        assert_eq!(admitted, 3);
        // Another kind has its own allowance.
        assert!(l.admit("b", t0));
        assert_eq!(l.take_suppressed(), vec![("a", 7)]);
        // Reported once.
        assert_eq!(l.take_suppressed(), vec![]);
        // Still within the window: counted again.
        assert!(!l.admit("a", t0 + Duration::from_secs(59)));
        assert_eq!(l.take_suppressed(), vec![("a", 1)]);
    }

    #[test]
    fn a_new_window_admits_again() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(2, Duration::from_secs(60));
        assert!(l.admit("a", t0));
        assert!(l.admit("a", t0 + Duration::from_secs(1)));
        assert!(!l.admit("a", t0 + Duration::from_secs(2)));
        let later = t0 + Duration::from_secs(61);
        assert!(l.admit("a", later));
        assert!(l.admit("a", later));
        assert!(!l.admit("a", later));
        assert_eq!(l.take_suppressed(), vec![("a", 2)]);
    }

    #[test]
    fn nothing_suppressed_nothing_reported() {
        let t0 = Instant::now();
        let mut l = LogLimiter::default();
        for _ in 0..BURST {
            assert!(l.admit("a", t0));
        }
        assert!(l.take_suppressed().is_empty());
    }

    #[test]
    fn time_going_backwards_keeps_the_window() {
        // Instants are monotonic, but a caller's earlier `now` may arrive late.
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut l = LogLimiter::new(1, Duration::from_secs(60));
        assert!(l.admit("a", t0));
        assert!(!l.admit("a", t0 - Duration::from_secs(5)));
    }
}
