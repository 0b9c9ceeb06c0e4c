//! TCP keepalive on the launcher's connections: the clients' connections it accepts and its
//! own TCP connections to the plugin.
//!
//! A client whose node or network went away without closing its connection leaves nothing
//! to read: a spliced connection would hold its two threads, its plugin connection and a
//! place under `--max-connections` until the idle timeout, or for ever with that off.
//! Keepalive probes find such a peer within a bounded time (the idle time, then
//! [`PROBES`] unanswered probes [`INTERVAL`] apart), after which reads fail and the
//! connection is torn down. Probes carry no data, so they do not count as traffic for the
//! idle timeout. The plugin is always on loopback, where a peer cannot vanish this way; its
//! connection gets the same options so that no TCP connection of the launcher is without.

use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// The time between two probes once the connection has been idle for the keepalive time
/// (shorter when that time is).
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is taken for dead.
pub const PROBES: u32 = 6;

/// TCP keepalive timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// How long a connection is idle before the first probe.
    pub idle: Duration,
}

impl Keepalive {
    /// Keepalive after `seconds` of idleness; `None` for 0 (off).
    pub fn after_seconds(seconds: u32) -> Option<Self> {
        (seconds > 0).then(|| Self {
            idle: Duration::from_secs(u64::from(seconds)),
        })
    }

    /// The probe interval: [`INTERVAL`], or the idle time when that is shorter.
    pub fn interval(&self) -> Duration {
        self.idle.min(INTERVAL)
    }

    /// Turns keepalive on for `socket` with these timings.
    pub fn apply(&self, socket: &impl AsFd) -> std::io::Result<()> {
        let params = TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval())
            .with_retries(PROBES);
        SockRef::from(socket).set_tcp_keepalive(&params)
    }
}

/// Sets a connection's TCP options: no Nagle delay (gRPC's small frames go out at once) and,
/// if on, keepalive. A failure is logged and the connection used as it is: neither option
/// is needed for it to work.
pub fn tune(socket: &tokio::net::TcpStream, keepalive: Option<Keepalive>) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    if let Some(k) = keepalive
        && let Err(e) = k.apply(socket)
    {
        tracing::debug!(error = %e, "cannot turn TCP keepalive on");
    }
}

/// Connects to the plugin at `address` (`HOST:PORT`) with the options of [`tune`].
pub async fn connect(
    address: &str,
    keepalive: Option<Keepalive>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpStream::connect(address).await?;
    tune(&socket, keepalive);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options as the kernel reports them (getsockopt).
    fn read_back(socket: &impl AsFd) -> (bool, Duration, Duration, u32, bool) {
        let s = SockRef::from(socket);
        (
            s.keepalive().expect("SO_KEEPALIVE"),
            s.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            s.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            s.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
            s.tcp_nodelay().expect("TCP_NODELAY"),
        )
    }

    #[test]
    fn seconds_zero_is_off_and_the_interval_never_exceeds_the_idle_time() {
        assert_eq!(Keepalive::after_seconds(0), None);
        let k = Keepalive::after_seconds(60).expect("on");
        assert_eq!((k.idle, k.interval()), (Duration::from_secs(60), INTERVAL));
        let short = Keepalive::after_seconds(3).expect("on");
        assert_eq!(short.interval(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn the_plugin_connection_gets_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let address = listener.local_addr().expect("address").to_string();
        let keepalive = Keepalive::after_seconds(45);
        let socket = connect(&address, keepalive).await.expect("connect");
        assert_eq!(
            read_back(&socket),
            (true, Duration::from_secs(45), INTERVAL, PROBES, true)
        );
        // Off: the kernel's default, no keepalive.
        let plain = connect(&address, None).await.expect("connect");
        assert!(!read_back(&plain).0);
    }
}
