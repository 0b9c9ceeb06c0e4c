//! The TCP side of every outgoing connection to a plugin — the agent-side client, the
//! `hector-plugin-remote` executable and the operator's prober alike: no Nagle delay, the
//! kernel's keepalive probes on idle connections, and a bound on how long sent data may stay
//! unacknowledged. hyper-util's `HttpConnector` opens the sockets with these options.
//!
//! Why both, when HTTP/2 PINGs already watch a connection: PINGs need the peer's HTTP/2
//! stack to answer, and well-behaved gRPC servers refuse more than a few of them without
//! calls (see the client's keepalive), so an idle connection is left to the kernel. TCP
//! keepalive finds a peer whose host or network is gone (nothing acknowledges), not one whose
//! process is frozen (its kernel still acknowledges) — that is what the PINGs are for.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpStream;
use tower::ServiceExt;

/// TCP keepalive and `TCP_USER_TIMEOUT` of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Idle time before the kernel sends its first keepalive probe.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes after which the kernel closes the connection.
    pub retries: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data (a request, a PING, a probe) may stay
    /// unacknowledged before the kernel closes the connection; `None` leaves the kernel's
    /// default (about fifteen minutes of retransmissions).
    pub user_timeout: Option<Duration>,
}

impl Default for TcpKeepalive {
    /// First probe after 10 s of silence, then every 5 s, closed after 3 unanswered (about
    /// 25 s); unacknowledged data closes the connection after 20 s.
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(10),
            interval: Duration::from_secs(5),
            retries: 3,
            user_timeout: Some(Duration::from_secs(20)),
        }
    }
}

impl TcpKeepalive {
    /// A connector opening sockets with these options, no Nagle delay (gRPC calls are small
    /// exchanges: each goes out at once) and, when given, a limit on the TCP connect.
    pub fn connector(&self, connect_timeout: Option<Duration>) -> HttpConnector {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(connect_timeout);
        http.set_keepalive(Some(self.idle));
        http.set_keepalive_interval(Some(self.interval));
        http.set_keepalive_retries(Some(self.retries));
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        http.set_tcp_user_timeout(self.user_timeout);
        http
    }

    /// Opens a TCP connection to `host:port` with these options (see [`Self::connector`]).
    /// A failure keeps the kind of the underlying I/O error (refused, timed out, …).
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        connect_timeout: Option<Duration>,
    ) -> io::Result<TcpStream> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let uri: http::Uri = format!("http://{authority}")
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        match self.connector(connect_timeout).oneshot(uri).await {
            Ok(stream) => Ok(stream.into_inner()),
            Err(e) => Err(innermost_io(&e)
                .map(|io| io::Error::new(io.kind(), io.to_string()))
                .unwrap_or_else(|| io::Error::other(e.to_string()))),
        }
    }
}

/// The innermost I/O error in `e`'s chain, which says what really happened.
fn innermost_io<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut found = None;
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            found = Some(io);
        }
        current = err.source();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockRef;

    #[tokio::test]
    async fn sockets_are_opened_with_the_options() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let settings = TcpKeepalive {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            retries: 4,
            user_timeout: Some(Duration::from_secs(11)),
        };
        let stream = settings
            .connect("127.0.0.1", addr.port(), Some(Duration::from_secs(1)))
            .await?;
        let socket = SockRef::from(&stream);
        assert!(socket.keepalive()?);
        assert_eq!(socket.tcp_keepalive_time()?, Duration::from_secs(7));
        assert_eq!(socket.tcp_keepalive_interval()?, Duration::from_secs(3));
        assert_eq!(socket.tcp_keepalive_retries()?, 4);
        assert_eq!(socket.tcp_user_timeout()?, Some(Duration::from_secs(11)));
        assert!(socket.tcp_nodelay()?);
        Ok(())
    }

    #[tokio::test]
    async fn failures_keep_their_kind() -> Result<(), Box<dyn std::error::Error>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let err = TcpKeepalive::default()
            .connect("127.0.0.1", port, Some(Duration::from_secs(1)))
            .await
            .expect_err("nothing listens");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        Ok(())
    }
}
