//! HTTP/2 keepalive: PINGs on every connection to a plugin, and a connection whose PING goes
//! unanswered is closed, failing its calls at once rather than at their deadlines (or never,
//! for calls without one). This finds a peer that stopped answering without closing: a frozen
//! process, a node gone, a network that drops packets.
//!
//! hyper's HTTP/2 client has the same keepalive (`keep_alive_interval`/`timeout`/
//! `while_idle`), but it is private to that client, which this crate does not use (see
//! [`crate::pool`]); `h2`'s `PingPong` is the building block it is made of.
//!
//! What is ours is the budget: gRPC servers in Go (grpc-go) and C/C++/Python (gRPC core), by
//! their default policy, close a connection with `GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")`
//! — failing the calls on it — when a client sends a third PING without having been sent
//! HEADERS or DATA since (calls in flight or not; past that, PINGs less than five minutes
//! apart with calls in flight, and any without). Plugins built with Hector's Go SDK are such
//! servers (the launcher hands plugin connections to the plugin unchanged), and an LLM call
//! can be quiet for minutes. So, like gRPC core's own client (`max_pings_without_data`), at
//! most two PINGs go out without an answer frame (response headers or data) arriving in
//! between, one of which is kept for calls: an idle connection gets one PING after its last
//! answer, a call in flight the other, and past the budget calls in flight get one every five
//! minutes and a bit. An idle connection is then left to TCP keepalive
//! ([`hector_plugin_sdk::net`]), which finds a dead host or network; a frozen process is
//! found by the PING of the next call.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use h2::{Ping, PingPong};

/// PINGs without an answer frame in between, at most (gRPC core's `max_pings_without_data`
/// default; servers close the connection at the third).
pub const MAX_PINGS_WITHOUT_DATA: u32 = 2;
/// Of those, PINGs while no call is in flight, at most.
pub const MAX_IDLE_PINGS_WITHOUT_DATA: u32 = 1;
/// Past the budget, the least time between PINGs while calls are in flight: the five minutes
/// grpc-go and gRPC core require by default, and a margin for PINGs delayed on the way.
pub const MIN_PING_INTERVAL_PAST_BUDGET: Duration = Duration::from_secs(5 * 60 + 10);

/// When PINGs go out and how long an answer may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub timeout: Duration,
    /// Whether a PING also goes out while no call is in flight (one after each answer; see
    /// the module's budget).
    pub while_idle: bool,
}

impl Default for Keepalive {
    /// A PING every 10 s, idle or not, answered within 5 s.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            while_idle: true,
        }
    }
}

/// What a connection's calls tell its keepalive: whether it has carried a call, how many are
/// in flight, and how many answer frames (response heads and data) have arrived so far.
#[derive(Debug, Default)]
pub struct Activity {
    carried: AtomicBool,
    in_flight: AtomicUsize,
    answers: AtomicU64,
}

impl Activity {
    /// A call went out on the connection.
    pub fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if !self.carried.load(Ordering::Relaxed) {
            self.carried.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the connection has carried a call.
    pub fn carried(&self) -> bool {
        self.carried.load(Ordering::Relaxed)
    }

    /// A call on the connection ended (answered, failed or dropped).
    pub fn call_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A response head or a data frame arrived.
    pub fn answered(&self) {
        self.answers.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn answers(&self) -> u64 {
        self.answers.load(Ordering::Relaxed)
    }
}

/// Decides, at each tick, whether a PING goes out. Pure: the caller passes the time and what
/// the calls reported.
#[derive(Clone, Debug)]
pub struct Pinger {
    settings: Keepalive,
    /// PINGs sent since the last answer frame.
    unanswered: u32,
    /// The answer count at the last tick.
    seen_answers: u64,
    last_ping: Option<Instant>,
}

impl Pinger {
    /// A pinger for a new connection.
    pub fn new(settings: Keepalive) -> Self {
        Self {
            settings,
            unanswered: 0,
            seen_answers: 0,
            last_ping: None,
        }
    }

    /// Whether a PING goes out at `now`, given whether the connection has carried a call, the
    /// answer frames counted so far and the calls in flight; when it does, it is counted as
    /// sent. A connection that has carried no call gets none: a launcher routes a connection
    /// by its first request, and answers nothing on it before.
    pub fn due(&mut self, now: Instant, carried: bool, answers: u64, in_flight: usize) -> bool {
        if !carried {
            return false;
        }
        if answers != self.seen_answers {
            self.seen_answers = answers;
            self.unanswered = 0;
        }
        let due = if in_flight == 0 {
            self.settings.while_idle && self.unanswered < MAX_IDLE_PINGS_WITHOUT_DATA
        } else {
            self.unanswered < MAX_PINGS_WITHOUT_DATA
                || self.last_ping.is_none_or(|at| {
                    now.saturating_duration_since(at) >= MIN_PING_INTERVAL_PAST_BUDGET
                })
        };
        if due {
            self.unanswered = self.unanswered.saturating_add(1);
            self.last_ping = Some(now);
        }
        due
    }
}

/// Sends PINGs on the connection of `pings` as `settings` say, and returns when one went
/// unanswered for `settings.timeout` (the connection is then to be closed). When the
/// connection itself fails, the PINGs stop and this never returns: the connection's own
/// future reports that.
pub async fn watch(mut pings: PingPong, settings: Keepalive, activity: &Activity) {
    let mut pinger = Pinger::new(settings);
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; a new connection has just proven itself.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        if !pinger.due(
            now,
            activity.carried(),
            activity.answers(),
            activity.in_flight(),
        ) {
            continue;
        }
        match tokio::time::timeout(settings.timeout, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(while_idle: bool) -> Keepalive {
        Keepalive {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            while_idle,
        }
    }

    #[test]
    fn at_most_two_pings_go_out_without_an_answer_frame_one_of_them_for_calls() {
        let mut p = Pinger::new(settings(true));
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        assert!(p.due(at(10), true, 0, 0), "idle: one");
        assert!(!p.due(at(20), true, 0, 0), "and no more");
        assert!(!p.due(at(400), true, 0, 0), "however long it stays idle");
        assert!(p.due(at(410), true, 0, 1), "the spare one is for a call");
        assert!(
            !p.due(at(420), true, 0, 1),
            "a third would get the connection closed"
        );
        // An answer frame arrived: the budget is back.
        assert!(p.due(at(430), true, 1, 1));
        assert!(p.due(at(440), true, 1, 1));
        assert!(!p.due(at(450), true, 1, 1));
        assert!(!p.due(at(460), true, 1, 0));
    }

    #[test]
    fn past_the_budget_calls_in_flight_get_a_ping_every_five_minutes_and_a_bit() {
        let mut p = Pinger::new(settings(true));
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        assert!(p.due(at(10), true, 5, 1));
        assert!(p.due(at(20), true, 5, 1));
        assert!(!p.due(at(30), true, 5, 1));
        assert!(
            !p.due(at(20 + 300), true, 5, 1),
            "five minutes exactly is too close"
        );
        assert!(p.due(at(20 + 310), true, 5, 1));
        assert!(!p.due(at(20 + 320), true, 5, 1));
        assert!(!p.due(at(20 + 620), true, 5, 0), "none when idle");
        assert!(p.due(at(20 + 630), true, 5, 1));
    }

    #[test]
    fn a_connection_that_carried_no_call_gets_no_ping() {
        let mut p = Pinger::new(settings(true));
        let t = Instant::now();
        assert!(!p.due(t, false, 0, 0));
        assert!(!p.due(t + Duration::from_secs(60), false, 0, 0));
        assert!(p.due(t + Duration::from_secs(70), true, 0, 1));
    }

    #[test]
    fn without_while_idle_only_connections_with_calls_are_pinged() {
        let mut p = Pinger::new(settings(false));
        let t = Instant::now();
        assert!(!p.due(t, true, 0, 0));
        assert!(p.due(t + Duration::from_secs(10), true, 0, 2));
        assert!(!p.due(t + Duration::from_secs(20), true, 0, 0));
    }
}
