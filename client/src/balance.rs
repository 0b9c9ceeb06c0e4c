//! The endpoint set of one remote plugin and the rules of per-call balancing: which endpoint
//! serves the next call, which endpoints are out, and whether a failed attempt may be retried
//! on another endpoint. Pure: no I/O and no clock (callers pass what they observed), so every
//! rule is unit-tested here.

use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;

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
    /// Failed; only tried when no endpoint is up, until a probe or a call succeeds.
    Down {
        /// Why it was taken out, for messages.
        reason: String,
    },
}

#[derive(Clone, Debug)]
struct Entry {
    addr: SocketAddr,
    state: State,
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
        let mut entries: Vec<Entry> = wanted
            .into_iter()
            .map(|addr| Entry {
                addr,
                state: State::Up,
            })
            .collect();
        for entry in &mut entries {
            if let Some(old) = self.entries.iter().find(|e| e.addr == entry.addr) {
                entry.state = old.state.clone();
            }
        }
        self.entries = entries;
        Change { added, removed }
    }

    /// The endpoint for the next attempt of a call, skipping those already `tried` by it:
    /// round-robin over the endpoints that are up; when none is, over the ones that are
    /// down (a call then still has a chance, and a recovered endpoint is found by it).
    pub fn pick(&mut self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let candidates = |up: bool| {
            self.entries
                .iter()
                .filter(move |e| (e.state == State::Up) == up && !tried.contains(&e.addr))
                .map(|e| e.addr)
        };
        let up = candidates(true).count();
        let (pool_up, count) = if up > 0 {
            (true, up)
        } else {
            (false, candidates(false).count())
        };
        if count == 0 {
            return None;
        }
        let index = self.next % count;
        self.next = self.next.wrapping_add(1);
        candidates(pool_up).nth(index)
    }

    /// Takes `addr` out of the rotation; true when it was up.
    pub fn mark_down(&mut self, addr: SocketAddr, reason: impl Into<String>) -> bool {
        match self.entries.iter_mut().find(|e| e.addr == addr) {
            Some(entry) => {
                let was_up = entry.state == State::Up;
                entry.state = State::Down {
                    reason: reason.into(),
                };
                was_up
            }
            None => false,
        }
    }

    /// Puts `addr` back into the rotation; true when it was down.
    pub fn mark_up(&mut self, addr: SocketAddr) -> bool {
        match self.entries.iter_mut().find(|e| e.addr == addr) {
            Some(entry) if entry.state != State::Up => {
                entry.state = State::Up;
                true
            }
            _ => false,
        }
    }

    /// Every endpoint, sorted.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.entries.iter().map(|e| e.addr).collect()
    }

    /// The endpoints that are down, sorted.
    pub fn down(&self) -> Vec<SocketAddr> {
        self.entries
            .iter()
            .filter(|e| e.state != State::Up)
            .map(|e| e.addr)
            .collect()
    }
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
        !matches!(self, Failure::Lost | Failure::Cancelled)
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
        assert!(s.mark_up(addr(2)));
        assert!(!s.mark_up(addr(2)), "already up");
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
    }
}
