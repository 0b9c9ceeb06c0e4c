//! The endpoint set of one remote plugin and the rules of per-call balancing: which endpoint
//! serves the next call, which endpoints are out (down, or ejected for failing calls), and
//! whether a failed attempt may be retried on another endpoint. Pure: no I/O and no clock
//! (callers pass the time and what they observed), so every rule is unit-tested here.

use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// HTTP/2 error code REFUSED_STREAM (RFC 9113 §7): the stream was closed before any
/// application processing.
pub const REFUSED_STREAM: u32 = 0x7;
/// HTTP/2 error code CANCEL: the stream is no longer needed (a gRPC server sends it when the
/// call's deadline passes or the handler gave up).
pub const CANCEL: u32 = 0x8;

/// Whether an endpoint takes calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Takes calls.
    Up,
    /// Its connection failed; only tried when no endpoint is up, until a probe or a call
    /// succeeds.
    Down {
        /// Why it was taken out, for messages.
        reason: String,
    },
    /// Its calls kept timing out or failing ([`Ejection`]); only tried when no endpoint is up.
    /// Probed once `until` has passed, and back when the probe succeeds.
    Ejected {
        /// Why it was taken out, for messages.
        reason: String,
        /// When it may come back.
        until: Instant,
    },
}

/// Outlier ejection, after Envoy's consecutive-failure detector: an endpoint whose calls fail
/// `consecutive_failures` times in a row (no answer before the caller's deadline, a stream
/// that stalls past it, `UNAVAILABLE` or `DEADLINE_EXCEEDED` from the plugin side) leaves the
/// rotation for `base` times the number of its recent ejections, at most `max`. An ejection
/// that would leave no endpoint up does not happen (Envoy's panic threshold): a plugin whose
/// every endpoint is slow is still called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// Failed calls in a row that eject an endpoint; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// The first ejection's length, and the unit of growth for repeated ones. Each `base`
    /// spent back in the rotation without an ejection forgets one earlier ejection.
    pub base: Duration,
    /// The longest ejection.
    pub max: Duration,
}

impl Default for Ejection {
    /// Envoy's defaults: 5 failures in a row, 30 s, at most 300 s.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

impl Ejection {
    /// Whether `failures` failed calls in a row call for an ejection.
    pub fn due(&self, failures: u32) -> bool {
        self.consecutive_failures > 0 && failures >= self.consecutive_failures
    }

    /// How long the `n`-th ejection in a row (from 1) lasts.
    pub fn period(&self, n: u32) -> Duration {
        self.base.saturating_mul(n.max(1)).min(self.max)
    }
}

#[derive(Clone, Debug)]
struct Entry {
    addr: SocketAddr,
    state: State,
    /// Recent ejections, which lengthen the next one.
    ejections: u32,
    /// When it last came back from an ejection (recent ejections are forgotten over time).
    back_since: Option<Instant>,
}

impl Entry {
    fn up(&self) -> bool {
        self.state == State::Up
    }
}

/// What [`EndpointSet::replace`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Endpoints that appeared.
    pub added: Vec<SocketAddr>,
    /// Endpoints that are no longer published.
    pub removed: Vec<SocketAddr>,
}

impl Change {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The endpoints of one plugin with their state, and the round-robin position.
#[derive(Clone, Debug, Default)]
pub struct EndpointSet {
    entries: Vec<Entry>,
    next: usize,
}

impl EndpointSet {
    /// Makes `addrs` the published set: kept endpoints keep their state, new ones start up
    /// (they were just published as healthy), missing ones are dropped.
    pub fn replace(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Change {
        let mut wanted: Vec<SocketAddr> = addrs.into_iter().collect();
        wanted.sort();
        wanted.dedup();
        let removed: Vec<SocketAddr> = self
            .entries
            .iter()
            .map(|e| e.addr)
            .filter(|a| wanted.binary_search(a).is_err())
            .collect();
        let added: Vec<SocketAddr> = wanted
            .iter()
            .copied()
            .filter(|a| !self.entries.iter().any(|e| e.addr == *a))
            .collect();
        let entries: Vec<Entry> = wanted
            .into_iter()
            .map(|addr| match self.entries.iter().find(|e| e.addr == addr) {
                Some(old) => old.clone(),
                None => Entry {
                    addr,
                    state: State::Up,
                    ejections: 0,
                    back_since: None,
                },
            })
            .collect();
        self.entries = entries;
        Change { added, removed }
    }

    /// The endpoint for the next attempt of a call, skipping those already `tried` by it:
    /// round-robin over the endpoints that are up; when none is, over the ones that are
    /// out (a call then still has a chance, and a recovered endpoint is found by it).
    pub fn pick(&mut self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        self.pick_ranked(tried, |_| 0).map(|(addr, _)| addr)
    }

    /// [`Self::pick`] where the endpoints that are up are taken by `rank`, lowest first, and
    /// round-robin among those of the same rank (the pool ranks those with an open connection
    /// first, then those without, then those whose connect is under way: a call would wait
    /// for it, where another endpoint may answer at once). Also says whether the endpoint
    /// picked is up.
    pub fn pick_ranked(
        &mut self,
        tried: &[SocketAddr],
        rank: impl Fn(SocketAddr) -> u8,
    ) -> Option<(SocketAddr, bool)> {
        let untried = |e: &&Entry| !tried.contains(&e.addr);
        let best = self
            .entries
            .iter()
            .filter(untried)
            .filter(|e| e.up())
            .map(|e| rank(e.addr))
            .min();
        let tier = |e: &&Entry| match best {
            Some(r) => e.up() && rank(e.addr) == r,
            None => true,
        };
        let count = self.entries.iter().filter(untried).filter(tier).count();
        if count == 0 {
            return None;
        }
        let index = self.next % count;
        self.next = self.next.wrapping_add(1);
        self.entries
            .iter()
            .filter(untried)
            .filter(tier)
            .nth(index)
            .map(|e| (e.addr, e.up()))
    }

    /// The endpoints that are up.
    pub fn up(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.entries.iter().filter(|e| e.up()).map(|e| e.addr)
    }

    /// Takes `addr` out of the rotation because its connection failed; true when it was up.
    pub fn mark_down(&mut self, addr: SocketAddr, reason: impl Into<String>) -> bool {
        match self.entries.iter_mut().find(|e| e.addr == addr) {
            Some(entry) => {
                let was_up = entry.up();
                entry.state = State::Down {
                    reason: reason.into(),
                };
                was_up
            }
            None => false,
        }
    }

    /// Puts `addr` back into the rotation at `now`: one that is down at once, an ejected one
    /// only once its ejection has run out. True when it came back.
    pub fn mark_up(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let Some(entry) = self.entries.iter_mut().find(|e| e.addr == addr) else {
            return false;
        };
        match entry.state {
            State::Up => false,
            State::Ejected { until, .. } if until > now => false,
            State::Ejected { .. } => {
                entry.state = State::Up;
                entry.back_since = Some(now);
                true
            }
            State::Down { .. } => {
                entry.state = State::Up;
                true
            }
        }
    }

    /// Ejects `addr` at `now` under `rules`, unless it is not up or it is the last endpoint
    /// up. The length of the ejection when it happened.
    pub fn eject(
        &mut self,
        addr: SocketAddr,
        reason: impl Into<String>,
        now: Instant,
        rules: &Ejection,
    ) -> Option<Duration> {
        let others_up = self
            .entries
            .iter()
            .filter(|e| e.addr != addr && e.up())
            .count();
        let entry = self.entries.iter_mut().find(|e| e.addr == addr)?;
        if !entry.up() || others_up == 0 {
            return None;
        }
        // Envoy lowers the multiplier while the endpoint behaves; here by one per `base`
        // spent back in the rotation.
        let forgotten = match (entry.back_since, rules.base.as_nanos()) {
            (Some(since), base) if base > 0 => {
                u32::try_from(now.saturating_duration_since(since).as_nanos() / base)
                    .unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        entry.ejections = entry.ejections.saturating_sub(forgotten).saturating_add(1);
        let period = rules.period(entry.ejections);
        entry.state = State::Ejected {
            reason: reason.into(),
            until: now + period,
        };
        Some(period)
    }

    /// Every endpoint, sorted.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.entries.iter().map(|e| e.addr).collect()
    }

    /// The endpoints out of the rotation (down or ejected), sorted.
    pub fn down(&self) -> Vec<SocketAddr> {
        self.entries
            .iter()
            .filter(|e| !e.up())
            .map(|e| e.addr)
            .collect()
    }

    /// The endpoints ejected now, sorted.
    pub fn ejected(&self) -> Vec<SocketAddr> {
        self.entries
            .iter()
            .filter(|e| matches!(e.state, State::Ejected { .. }))
            .map(|e| e.addr)
            .collect()
    }

    /// The endpoints to probe at `now`: those down, and those whose ejection has run out.
    pub fn to_probe(&self, now: Instant) -> Vec<SocketAddr> {
        self.entries
            .iter()
            .filter(|e| match e.state {
                State::Up => false,
                State::Down { .. } => true,
                State::Ejected { until, .. } => until <= now,
            })
            .map(|e| e.addr)
            .collect()
    }

    /// The state of `addr`, when it is an endpoint.
    pub fn state(&self, addr: SocketAddr) -> Option<&State> {
        self.entries
            .iter()
            .find(|e| e.addr == addr)
            .map(|e| &e.state)
    }

    /// Whether `addr` is an endpoint.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.entries.iter().any(|e| e.addr == addr)
    }
}

/// Whether a call's final gRPC status counts as a failure of the endpoint for
/// [`Ejection`]: the plugin side was unavailable or ran out of time. Any other status is an
/// answer, which a healthy endpoint gives.
pub fn failed_status(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

/// How far an attempt got before it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Opening the connection (TCP connect, HTTP/2 handshake): nothing of the call was sent.
    Connect,
    /// Handing the request to an open connection, or waiting for the response headers.
    Send,
}

/// What was observed about a failed attempt, taken from the error by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// How far the attempt got.
    pub stage: Stage,
    /// The innermost I/O error's kind, if there was one.
    pub io: Option<ErrorKind>,
    /// The HTTP client handed the request back: it was never given to the connection.
    pub returned: bool,
    /// The HTTP/2 error code, if the failure carries one.
    pub h2_reason: Option<u32>,
    /// The failure came from the peer (its RST_STREAM or GOAWAY), not from this side.
    pub h2_remote: bool,
    /// The failure is a stream reset (RST_STREAM).
    pub h2_reset: bool,
    /// The failure is a GOAWAY.
    pub h2_go_away: bool,
}

impl Observed {
    /// An observation with nothing but the stage.
    pub fn at(stage: Stage) -> Self {
        Self {
            stage,
            io: None,
            returned: false,
            h2_reason: None,
            h2_remote: false,
            h2_reset: false,
            h2_go_away: false,
        }
    }
}

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nothing listens there: the connection was refused.
    Refused,
    /// No connection could be opened (timeout, unreachable network, handshake failure).
    NoConnection,
    /// The connection was already gone; the request was handed back unsent.
    NotSent,
    /// The peer refused the stream before processing it (REFUSED_STREAM).
    RefusedStream,
    /// The peer's GOAWAY covers this stream: it was not processed.
    GoAway,
    /// The peer cancelled the stream after taking it (RST_STREAM CANCEL): it may have run,
    /// and the endpoint is alive.
    Cancelled,
    /// The request may have reached the plugin before the connection failed.
    Lost,
    /// The request was sent and the caller's deadline passed before the answer: it may have
    /// run, and the endpoint may be alive but slow (it counts for [`Ejection`]).
    TimedOut,
}

impl Failure {
    /// Classifies an attempt's failure. Only what proves that the request never reached the
    /// plugin counts as unsent; anything else is [`Failure::Lost`].
    pub fn classify(o: &Observed) -> Self {
        match o.stage {
            Stage::Connect if o.io == Some(ErrorKind::ConnectionRefused) => Failure::Refused,
            Stage::Connect => Failure::NoConnection,
            Stage::Send if o.returned => Failure::NotSent,
            // A peer's REFUSED_STREAM promises the stream was not processed (RFC 9113 §8.7).
            Stage::Send if o.h2_remote && o.h2_reset && o.h2_reason == Some(REFUSED_STREAM) => {
                Failure::RefusedStream
            }
            // The HTTP/2 client reports the peer's GOAWAY to streams above its last stream id
            // only (and to streams opened after it): those were not processed.
            Stage::Send if o.h2_remote && o.h2_go_away => Failure::GoAway,
            Stage::Send if o.h2_remote && o.h2_reset && o.h2_reason == Some(CANCEL) => {
                Failure::Cancelled
            }
            Stage::Send => Failure::Lost,
        }
    }

    /// Whether the call may be sent to another endpoint: only when this one provably never
    /// received it, so no call runs twice.
    pub fn retry_safe(self) -> bool {
        !matches!(self, Failure::Lost | Failure::Cancelled | Failure::TimedOut)
    }

    /// Whether the endpoint should leave the rotation. A refused stream or a GOAWAY is the
    /// peer managing its load or restarting; the next connection decides.
    pub fn endpoint_down(self) -> bool {
        matches!(
            self,
            Failure::Refused | Failure::NoConnection | Failure::Lost
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failure::Refused => "connection refused",
            Failure::NoConnection => "no connection",
            Failure::NotSent => "connection closed before the call was sent",
            Failure::RefusedStream => "call refused before processing",
            Failure::GoAway => "connection going away before the call was processed",
            Failure::Cancelled => "call cancelled by the plugin side",
            Failure::Lost => "connection lost after the call was sent",
            Failure::TimedOut => "no answer before the deadline",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn set(ports: &[u16]) -> EndpointSet {
        let mut s = EndpointSet::default();
        s.replace(ports.iter().map(|p| addr(*p)));
        s
    }

    #[test]
    fn round_robin_spreads_calls_evenly() {
        let mut s = set(&[1, 2, 3]);
        let mut counts = [0usize; 4];
        for _ in 0..300 {
            let a = s.pick(&[]).expect("an endpoint");
            counts[usize::from(a.port())] += 1;
        }
        assert_eq!(&counts[1..], &[100, 100, 100]);
    }

    #[test]
    fn down_endpoints_leave_the_rotation_and_come_back() {
        let mut s = set(&[1, 2, 3]);
        assert!(s.mark_down(addr(2), "connection refused"));
        assert!(!s.mark_down(addr(2), "again"), "already down");
        assert_eq!(s.down(), [addr(2)]);
        for _ in 0..20 {
            assert_ne!(s.pick(&[]), Some(addr(2)));
        }
        let now = Instant::now();
        assert!(s.mark_up(addr(2), now));
        assert!(!s.mark_up(addr(2), now), "already up");
        let picked: Vec<_> = (0..6).filter_map(|_| s.pick(&[])).collect();
        assert!(picked.contains(&addr(2)), "{picked:?}");
    }

    #[test]
    fn when_everything_is_down_calls_still_try_every_endpoint() {
        let mut s = set(&[1, 2]);
        s.mark_down(addr(1), "refused");
        s.mark_down(addr(2), "refused");
        let first = s.pick(&[]).expect("a down endpoint is still tried");
        let second = s.pick(&[first]).expect("and then the other");
        assert_ne!(first, second);
        assert_eq!(s.pick(&[first, second]), None);
    }

    #[test]
    fn retries_skip_tried_endpoints_and_prefer_up_ones() {
        let mut s = set(&[1, 2, 3]);
        s.mark_down(addr(3), "refused");
        let first = s.pick(&[]).expect("up");
        let second = s.pick(&[first]).expect("the other up one");
        assert!(first != addr(3) && second != addr(3) && first != second);
        assert_eq!(s.pick(&[first, second]), Some(addr(3)), "then the down one");
        assert_eq!(s.pick(&[addr(1), addr(2), addr(3)]), None);
    }

    #[test]
    fn replacing_keeps_state_adds_and_removes() {
        let mut s = set(&[1, 2]);
        s.mark_down(addr(2), "refused");
        let change = s.replace([addr(2), addr(3), addr(3)]);
        assert_eq!(
            change,
            Change {
                added: vec![addr(3)],
                removed: vec![addr(1)]
            }
        );
        assert_eq!(s.addrs(), [addr(2), addr(3)]);
        assert_eq!(
            s.down(),
            [addr(2)],
            "state survives republishing; new ones start up"
        );
        assert!(s.replace([addr(2), addr(3)]).is_empty());
        s.replace([]);
        assert!(s.addrs().is_empty());
        assert_eq!(s.pick(&[]), None);
        assert!(
            !s.mark_down(addr(2), "gone"),
            "unknown endpoints are ignored"
        );
    }

    #[test]
    fn endpoints_are_taken_by_rank_then_round_robin_and_out_ones_last() {
        let mut s = set(&[1, 2, 3]);
        // 1 is being connected (rank 2), 2 has no connection (1), 3 has one (0).
        let rank = |a: SocketAddr| match a.port() {
            1 => 2,
            2 => 1,
            _ => 0,
        };
        for _ in 0..4 {
            assert_eq!(s.pick_ranked(&[], rank), Some((addr(3), true)));
        }
        assert_eq!(s.pick_ranked(&[addr(3)], rank), Some((addr(2), true)));
        assert_eq!(
            s.pick_ranked(&[addr(3), addr(2)], rank),
            Some((addr(1), true))
        );
        // The same rank: round robin.
        let picked: Vec<_> = (0..4)
            .filter_map(|_| s.pick_ranked(&[], |_| 1))
            .map(|(a, _)| a)
            .collect();
        assert!(
            [1, 2, 3].iter().all(|p| picked.contains(&addr(*p))),
            "{picked:?}"
        );
        // A connecting endpoint that is up still comes before one that is down.
        s.mark_down(addr(2), "refused");
        s.mark_down(addr(3), "refused");
        assert_eq!(s.pick_ranked(&[], rank), Some((addr(1), true)));
        assert_eq!(
            s.pick_ranked(&[addr(1)], rank).map(|(_, up)| up),
            Some(false)
        );
        assert_eq!(s.up().collect::<Vec<_>>(), [addr(1)]);
    }

    fn rules() -> Ejection {
        Ejection {
            consecutive_failures: 3,
            base: Duration::from_secs(10),
            max: Duration::from_secs(25),
        }
    }

    #[test]
    fn ejection_needs_consecutive_failures_and_grows_up_to_the_cap() {
        let r = rules();
        assert!(!r.due(0) && !r.due(2) && r.due(3) && r.due(4));
        let off = Ejection {
            consecutive_failures: 0,
            ..r
        };
        assert!(!off.due(100), "0 turns it off");
        assert_eq!(r.period(1), Duration::from_secs(10));
        assert_eq!(r.period(2), Duration::from_secs(20));
        assert_eq!(r.period(3), Duration::from_secs(25), "capped");

        let mut s = set(&[1, 2]);
        let t0 = Instant::now();
        assert_eq!(
            s.eject(addr(1), "timeouts", t0, &r),
            Some(Duration::from_secs(10))
        );
        assert_eq!(s.ejected(), [addr(1)]);
        assert_eq!(s.down(), [addr(1)], "out of the rotation");
        for _ in 0..10 {
            assert_eq!(s.pick(&[]), Some(addr(2)));
        }
        assert_eq!(s.eject(addr(1), "again", t0, &r), None, "already out");
        // Not probed, and not put back, before the ejection runs out.
        let early = t0 + Duration::from_secs(9);
        assert!(s.to_probe(early).is_empty());
        assert!(!s.mark_up(addr(1), early));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(s.to_probe(later), [addr(1)]);
        assert!(s.mark_up(addr(1), later));
        // Ejected again soon after: longer.
        let t1 = later + Duration::from_secs(1);
        assert_eq!(
            s.eject(addr(1), "timeouts", t1, &r),
            Some(Duration::from_secs(20))
        );
        let back = t1 + Duration::from_secs(20);
        assert!(s.mark_up(addr(1), back));
        // After two quiet periods back in the rotation, both earlier ejections are forgotten.
        let quiet = back + Duration::from_secs(20);
        assert_eq!(
            s.eject(addr(1), "timeouts", quiet, &r),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn the_last_endpoint_up_is_never_ejected() {
        let r = rules();
        let now = Instant::now();
        let mut s = set(&[1, 2, 3]);
        assert!(s.eject(addr(1), "slow", now, &r).is_some());
        s.mark_down(addr(2), "refused");
        assert_eq!(
            s.eject(addr(3), "slow", now, &r),
            None,
            "the last one up stays"
        );
        assert_eq!(s.state(addr(3)), Some(&State::Up));
        for _ in 0..5 {
            assert_eq!(s.pick(&[]), Some(addr(3)));
        }
        let single = &mut set(&[1]);
        assert_eq!(single.eject(addr(1), "slow", now, &r), None);
        assert!(single.down().is_empty());
        assert_eq!(s.eject(addr(9), "unknown", now, &r), None);
    }

    #[test]
    fn a_lost_connection_takes_an_ejected_endpoint_down_and_probes_bring_it_back() {
        let r = rules();
        let now = Instant::now();
        let mut s = set(&[1, 2]);
        s.eject(addr(1), "slow", now, &r);
        assert!(!s.mark_down(addr(1), "lost"), "it was not up");
        assert!(matches!(s.state(addr(1)), Some(State::Down { .. })));
        assert_eq!(
            s.to_probe(now),
            [addr(1)],
            "down endpoints are probed at once"
        );
        assert!(s.mark_up(addr(1), now));
        assert!(s.ejected().is_empty());
    }

    #[test]
    fn only_unavailable_and_deadline_statuses_count_as_failures() {
        use tonic::Code;
        assert!(failed_status(Code::Unavailable) && failed_status(Code::DeadlineExceeded));
        for code in [
            Code::Ok,
            Code::InvalidArgument,
            Code::Internal,
            Code::NotFound,
        ] {
            assert!(!failed_status(code), "{code:?}");
        }
    }

    fn send(f: impl FnOnce(&mut Observed)) -> Failure {
        let mut o = Observed::at(Stage::Send);
        f(&mut o);
        Failure::classify(&o)
    }

    #[test]
    fn connect_failures_never_reached_the_plugin() {
        let mut o = Observed::at(Stage::Connect);
        o.io = Some(ErrorKind::ConnectionRefused);
        assert_eq!(Failure::classify(&o), Failure::Refused);
        o.io = Some(ErrorKind::TimedOut);
        assert_eq!(Failure::classify(&o), Failure::NoConnection);
        o.io = Some(ErrorKind::ConnectionReset);
        assert_eq!(Failure::classify(&o), Failure::NoConnection);
        for f in [Failure::Refused, Failure::NoConnection] {
            assert!(f.retry_safe() && f.endpoint_down(), "{f}");
        }
    }

    #[test]
    fn only_provably_unsent_calls_are_retried() {
        assert_eq!(send(|o| o.returned = true), Failure::NotSent);
        assert_eq!(
            send(|o| {
                o.h2_remote = true;
                o.h2_reset = true;
                o.h2_reason = Some(REFUSED_STREAM);
            }),
            Failure::RefusedStream
        );
        assert_eq!(
            send(|o| {
                o.h2_remote = true;
                o.h2_go_away = true;
                o.h2_reason = Some(0);
            }),
            Failure::GoAway
        );
        for f in [Failure::NotSent, Failure::RefusedStream, Failure::GoAway] {
            assert!(f.retry_safe() && !f.endpoint_down(), "{f}");
        }
    }

    #[test]
    fn anything_else_after_sending_is_not_retried() {
        // A reset connection after the request went out: it may have run.
        assert_eq!(
            send(|o| o.io = Some(ErrorKind::ConnectionReset)),
            Failure::Lost
        );
        // Our own side refusing a stream is no promise about the peer.
        assert_eq!(
            send(|o| {
                o.h2_reset = true;
                o.h2_reason = Some(REFUSED_STREAM);
            }),
            Failure::Lost
        );
        // A peer's reset with another code, e.g. INTERNAL_ERROR.
        assert_eq!(
            send(|o| {
                o.h2_remote = true;
                o.h2_reset = true;
                o.h2_reason = Some(0x2);
            }),
            Failure::Lost
        );
        // The peer's CANCEL: it took the call (and may have run it), and it is alive.
        let cancelled = send(|o| {
            o.h2_remote = true;
            o.h2_reset = true;
            o.h2_reason = Some(CANCEL);
        });
        assert_eq!(cancelled, Failure::Cancelled);
        assert!(!cancelled.retry_safe() && !cancelled.endpoint_down());
        // Our own CANCEL is no statement about the peer.
        assert_eq!(
            send(|o| {
                o.h2_reset = true;
                o.h2_reason = Some(CANCEL);
            }),
            Failure::Lost
        );
        // A GOAWAY this side sent.
        assert_eq!(send(|o| o.h2_go_away = true), Failure::Lost);
        assert!(!Failure::Lost.retry_safe());
        assert!(Failure::Lost.endpoint_down());
        // A call that timed out may have run, and the endpoint may be merely slow.
        assert!(!Failure::TimedOut.retry_safe() && !Failure::TimedOut.endpoint_down());
    }
}
