//! The idle timeout of spliced connections: a connection on which no byte has gone either
//! way for the timeout first gets an HTTP/2 GOAWAY, like the drain's, so that a client that
//! honours it closes the connection itself, with nothing lost (a call it sends meanwhile is
//! still served: the GOAWAY lets every stream finish). One that neither closes nor uses the
//! connection within a further grace period is closed by the launcher.
//!
//! Traffic is counted in bytes read from either side, not in calls: a streaming call that
//! keeps sending keeps its connection, and so does a client's HTTP/2 PING; a unary call
//! that is silent for longer than the timeout does not. Counting open calls would mean
//! following every stream's state in both directions on the splice's hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest grace period between an idle connection's GOAWAY and its closing.
pub const MAX_GRACE: Duration = Duration::from_secs(5);

/// When a spliced connection last carried a byte; shared by its two threads and its watch.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last read that returned bytes.
    last: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Notes that bytes were just read.
    pub fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// Milliseconds since the connection was spliced.
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the watch does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Look again after this long.
    Wait(Duration),
    /// Send the GOAWAY, and look again after this long.
    Goaway(Duration),
    /// Close the connection; nothing more to watch.
    Close,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Active,
    /// The GOAWAY went out when the last read was at this millisecond.
    Warned {
        last: u64,
    },
    Closed,
}

/// One connection's idle watch.
#[derive(Debug)]
pub struct IdleWatch {
    timeout: u64,
    grace: u64,
    state: State,
}

impl IdleWatch {
    /// Watches for `timeout` without traffic; the grace period is as long, at most
    /// [`MAX_GRACE`].
    pub fn new(timeout: Duration) -> Self {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        Self {
            timeout: millis(timeout),
            grace: millis(timeout.min(MAX_GRACE)),
            state: State::Active,
        }
    }

    /// When to look first.
    pub fn first_look(&self) -> Duration {
        Duration::from_millis(self.timeout)
    }

    /// Looks at `activity` now.
    pub fn look(&mut self, activity: &Activity) -> Step {
        self.step(activity.now(), activity.last.load(Ordering::Relaxed))
    }

    /// The step at millisecond `now` when the last read was at `last`. Both are whole
    /// milliseconds, rounded down: a connection counts as idle for a time only once a
    /// millisecond more has passed, so that it is never taken for idle early.
    fn step(&mut self, now: u64, last: u64) -> Step {
        let idle = now.saturating_sub(last).saturating_sub(1);
        match self.state {
            State::Active if idle >= self.timeout => {
                self.state = State::Warned { last };
                Step::Goaway(Duration::from_millis(self.grace))
            }
            State::Active => Step::Wait(Duration::from_millis(self.timeout - idle)),
            // Used since the GOAWAY: a call that crossed it, which is served; the connection
            // is idle again only a whole timeout after it.
            State::Warned { last: warned } if warned != last => {
                self.state = State::Active;
                self.step(now, last)
            }
            State::Warned { .. } => {
                let limit = self.timeout.saturating_add(self.grace);
                if idle >= limit {
                    self.state = State::Closed;
                    Step::Close
                } else {
                    Step::Wait(Duration::from_millis(limit - idle))
                }
            }
            State::Closed => Step::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_idle_connection_gets_a_goaway_then_is_closed() {
        let mut w = IdleWatch::new(ms(1000));
        assert_eq!(w.first_look(), ms(1000));
        // Idle for at least 999.x ms only: not yet.
        assert_eq!(w.step(1000, 0), Step::Wait(ms(1)));
        assert_eq!(w.step(1001, 0), Step::Goaway(ms(1000)));
        assert_eq!(w.step(1500, 0), Step::Wait(ms(501)));
        assert_eq!(w.step(2001, 0), Step::Close);
        assert_eq!(w.step(9000, 0), Step::Close);
    }

    #[test]
    fn traffic_moves_the_deadline() {
        let mut w = IdleWatch::new(ms(1000));
        // Read at 700 ms: idle only from there.
        assert_eq!(w.step(1000, 700), Step::Wait(ms(701)));
        assert_eq!(w.step(1701, 1600), Step::Wait(ms(900)));
        assert_eq!(w.step(2601, 1600), Step::Goaway(ms(1000)));
        // A call crossed the GOAWAY: the connection is idle again a whole timeout later.
        assert_eq!(w.step(3601, 3000), Step::Wait(ms(400)));
        assert_eq!(w.step(4001, 3000), Step::Goaway(ms(1000)));
        assert_eq!(w.step(5001, 3000), Step::Close);
    }

    #[test]
    fn the_grace_period_is_bounded() {
        let mut w = IdleWatch::new(Duration::from_secs(300));
        assert_eq!(w.step(300_001, 0), Step::Goaway(MAX_GRACE));
        assert_eq!(w.step(305_001, 0), Step::Close);
        // The shortest timeout still waits a millisecond.
        assert_eq!(IdleWatch::new(Duration::ZERO).first_look(), ms(1));
    }

    #[test]
    fn activity_is_measured_from_the_splice() {
        let a = Activity::default();
        let mut w = IdleWatch::new(Duration::from_secs(60));
        a.touch();
        assert!(matches!(w.look(&a), Step::Wait(d) if d > Duration::from_secs(59)));
    }
}
