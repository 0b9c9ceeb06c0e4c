//! The launcher's server loop: accept, route each connection (see [`crate::sniff`]), and
//! either serve it locally (health, plus request-by-request forwarding) or splice it to the
//! plugin. Either way, calls reserved to the launcher are refused stream by stream (see
//! [`crate::policy`]). When the launcher drains, every connection is asked to go away (HTTP/2 GOAWAY)
//! and may finish what it has in flight. A spliced connection belongs to the plugin that was
//! current when it was routed; when that plugin is replaced after a configuration change,
//! its connections are asked to go away the same way, and their clients connect again, to
//! the new plugin.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::access::Authenticator;
use crate::backend::Backends;
use crate::drain::{Closing, Drain};
use crate::frames::{Downstream, GOAWAY};
use crate::guard::{Guard, GuardError, Sink};
use crate::idle::{Activity, IdleWatch, Step};
use crate::keepalive::Keepalive;
use crate::limit::ConnectionLimit;
use crate::policy::{Peer, Plaintext, Refusal};
use crate::sniff::{EMPTY_SETTINGS, Next, Route, Sniffer};
use crate::tls::TlsSocket;

/// How connections are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardMode {
    /// Route whole connections by their first request; plugin connections are spliced.
    Connection,
    /// Serve every connection locally and forward request by request.
    Request,
}

/// How long a new connection may take to show its first request before it is served locally.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(300);
/// On drain, how long a spliced connection's GOAWAY waits to go out together with the
/// plugin's next output (see [`Downstream::ask_goaway`]) before it is sent on its own.
const QUIET_GOAWAY_AFTER: Duration = Duration::from_millis(100);

/// How long a TLS client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection and call must pass besides the method rule: TLS, and the caller.
#[derive(Clone, Default)]
pub struct Gate {
    /// Serve TLS; plaintext connections then reach only `grpc.health.v1`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Check every call's caller.
    pub auth: Option<Arc<Authenticator>>,
}

/// What bounds the connections the launcher keeps open, besides the drain.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The cap on spliced connections.
    pub connections: ConnectionLimit,
    /// How long a spliced connection may go without a byte either way.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive on accepted connections and on TCP connections to the plugin.
    pub keepalive: Option<Keepalive>,
}

/// Serves until `drain` is closed; the connections it accepted carry on until they end.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    backends: Backends,
    mode: ForwardMode,
    drain: Drain,
    gate: Gate,
    limits: Limits,
) {
    let mut closing = drain.closing();
    loop {
        let (stream, peer) = tokio::select! {
            // Dropping the listener refuses new connections at once rather than leaving them
            // in the backlog.
            _ = closing.wait() => return,
            accepted = next_connection(&listener, limits.keepalive) => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let backends = backends.clone();
        let open = drain.track();
        let closing = drain.closing();
        let gate = gate.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let connection = Connection {
                peer,
                router,
                backends: &backends,
                mode,
                gate: &gate,
                limits: &limits,
            };
            if let Err(e) = connection.accept(stream, closing).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
        });
    }
}

/// The next client connection, with its TCP options set.
async fn next_connection(
    listener: &TcpListener,
    keepalive: Option<Keepalive>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    crate::keepalive::tune(&stream, keepalive);
    Ok((stream, peer))
}

/// An accepted connection and what it is served with.
struct Connection<'a> {
    peer: SocketAddr,
    router: axum::Router,
    backends: &'a Backends,
    mode: ForwardMode,
    gate: &'a Gate,
    limits: &'a Limits,
}

impl Connection<'_> {
    /// Takes a new connection: with TLS on, a TLS client is served once its handshake is
    /// done and a plaintext one only locally (health); otherwise as it comes.
    async fn accept(self, stream: TcpStream, closing: Closing) -> std::io::Result<()> {
        let Some(acceptor) = &self.gate.tls else {
            return self.handle(Client::Tcp(stream), closing).await;
        };
        let mut first = [0u8; 1];
        let n = match tokio::time::timeout(SNIFF_TIMEOUT, stream.peek(&mut first)).await {
            Ok(peeked) => peeked?,
            Err(_) => return Ok(()),
        };
        if n == 1 && first[0] == crate::tls::HANDSHAKE_RECORD {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(handshake) => handshake?,
                Err(_) => return Ok(()),
            };
            self.handle(Client::Tls(Box::new(tls)), closing).await
        } else {
            serve_local(stream, Vec::new(), self.peer, self.router, closing, true).await
        }
    }

    async fn handle(self, mut client: Client, mut closing: Closing) -> std::io::Result<()> {
        let (route, replay, goaway_sent) = match self.mode {
            ForwardMode::Request => (Route::Local, Vec::new(), false),
            ForwardMode::Connection => {
                let sniffed = match &mut client {
                    Client::Tcp(s) => {
                        tokio::time::timeout(SNIFF_TIMEOUT, sniff(s, &mut closing)).await
                    }
                    Client::Tls(s) => {
                        tokio::time::timeout(SNIFF_TIMEOUT, sniff(s.as_mut(), &mut closing)).await
                    }
                };
                match sniffed {
                    Ok(result) => result?,
                    Err(_) => return Ok(()),
                }
            }
        };
        let peer = self.peer;
        match route {
            Route::Local => match client {
                Client::Tcp(s) => serve_local(s, replay, peer, self.router, closing, false).await,
                Client::Tls(s) => serve_local(*s, replay, peer, self.router, closing, false).await,
            },
            Route::Plugin => {
                let limit = &self.limits.connections;
                // Held until the splice ends.
                let Some(_admitted) = limit.admit() else {
                    let refusal = Refusal::ConnectionLimit(limit.max());
                    crate::policy::record(&refusal, Some(peer));
                    let reason = refusal.message();
                    return match client {
                        Client::Tcp(mut s) => crate::limit::refuse(&mut s, &reason).await,
                        Client::Tls(mut s) => crate::limit::refuse(s.as_mut(), &reason).await,
                    };
                };
                // Counted as the plugin's until the splice ends, so that a retiring plugin is
                // stopped only once its clients have left.
                let (backend, _counted) = self.backends.pick();
                let to = SpliceTo {
                    address: &backend.address,
                    keepalive: self.limits.keepalive,
                    setup: Setup {
                        replay,
                        goaway_sent,
                        closing: Either(closing, backend.drain.closing()),
                        peer,
                        auth: self.gate.auth.clone(),
                        idle_timeout: self.limits.idle_timeout,
                    },
                };
                match client {
                    Client::Tcp(s) => to.run(s.into_std()?).await,
                    Client::Tls(s) => {
                        let (socket, conn) = s.into_inner();
                        to.run(TlsSocket::new(socket.into_std()?, conn)).await
                    }
                }
            }
        }
    }
}

/// A client connection, before it is routed.
enum Client {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Serves a connection with the launcher's own HTTP/2 server (health, and request-by-request
/// forwarding); `plaintext` marks its requests as having come without TLS where TLS is
/// required.
async fn serve_local<S>(
    stream: S,
    replay: Vec<u8>,
    peer: SocketAddr,
    router: axum::Router,
    mut closing: Closing,
    plaintext: bool,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Rewind::new(replay, stream));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let service = WithPeer {
        router,
        peer,
        plaintext,
    };
    let conn = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result.map_err(std::io::Error::other),
        _ = closing.wait() => conn.as_mut().graceful_shutdown(),
    }
    conn.await.map_err(std::io::Error::other)
}

/// Where and how a routed client connection is spliced, whatever its transport.
struct SpliceTo<'a> {
    address: &'a str,
    keepalive: Option<Keepalive>,
    setup: Setup,
}

/// What a splice needs besides its two sockets.
struct Setup {
    /// The client's bytes read while routing it.
    replay: Vec<u8>,
    /// A GOAWAY went out while routing it.
    goaway_sent: bool,
    closing: Either,
    peer: SocketAddr,
    auth: Option<Arc<Authenticator>>,
    idle_timeout: Option<Duration>,
}

impl SpliceTo<'_> {
    /// Connects to the plugin and splices `client` to it.
    async fn run<C: Duplex>(self, client: C) -> std::io::Result<()> {
        if let Some(path) = self.address.strip_prefix("unix:") {
            let plugin = tokio::net::UnixStream::connect(path.trim_start_matches("//"))
                .await?
                .into_std()?;
            splice(client, plugin, self.setup).await
        } else {
            let plugin = crate::keepalive::connect(self.address, self.keepalive).await?;
            splice(client, plugin.into_std()?, self.setup).await
        }
    }
}

/// Whichever of two reasons to go away comes first: the launcher draining, or the plugin
/// being replaced.
struct Either(Closing, Closing);

impl Either {
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.0.wait() => {}
            _ = self.1.wait() => {}
        }
    }
}

/// A socket the blocking splice can use from two threads.
trait Duplex: std::io::Read + std::io::Write + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn blocking(&self) -> std::io::Result<()>;
    fn close_write(&self);
    fn close(&self);
}

/// TCP and Unix sockets offer the same calls under the same names.
macro_rules! duplex {
    ($socket:ty) => {
        impl Duplex for $socket {
            fn duplicate(&self) -> std::io::Result<Self> {
                self.try_clone()
            }
            fn blocking(&self) -> std::io::Result<()> {
                self.set_nonblocking(false)
            }
            fn close_write(&self) {
                let _ = self.shutdown(std::net::Shutdown::Write);
            }
            fn close(&self) {
                let _ = self.shutdown(std::net::Shutdown::Both);
            }
        }
    };
}

duplex!(std::net::TcpStream);
duplex!(std::os::unix::net::UnixStream);

impl Duplex for TlsSocket {
    fn duplicate(&self) -> std::io::Result<Self> {
        TlsSocket::duplicate(self)
    }
    fn blocking(&self) -> std::io::Result<()> {
        self.socket().set_nonblocking(false)
    }
    fn close_write(&self) {
        if let Ok(mut this) = TlsSocket::duplicate(self) {
            this.close_notify();
        }
        let _ = self.socket().shutdown(std::net::Shutdown::Write);
    }
    fn close(&self) {
        let _ = self.socket().shutdown(std::net::Shutdown::Both);
    }
}

/// Copies both directions until both ends are done. Blocking threads rather than the async
/// runtime: a blocked read returns the data in one system call, where readiness polling
/// needs several, and this path carries every plugin call. The client's bytes go through a
/// [`Guard`], which refuses calls reserved to the launcher stream by stream and answers them
/// itself. On drain, a GOAWAY goes to the client between two of the plugin's frames; so it
/// does when the connection has been idle for the idle timeout, and the connection is
/// closed if it stays idle (see [`crate::idle`]).
async fn splice<C: Duplex, P: Duplex>(client: C, plugin: P, setup: Setup) -> std::io::Result<()> {
    let Setup {
        replay,
        goaway_sent,
        mut closing,
        peer,
        auth,
        idle_timeout,
    } = setup;
    client.blocking()?;
    plugin.blocking()?;
    // Handles kept here to close both sockets when idle: the threads may be blocked in a
    // read or a write on theirs.
    let closers = match idle_timeout {
        Some(_) => Some((client.duplicate()?, plugin.duplicate()?)),
        None => None,
    };
    let (mut client_r, client_w) = (client.duplicate()?, client);
    let (mut plugin_r, mut plugin_w) = (plugin.duplicate()?, plugin);
    let downstream = Arc::new(Downstream::new(client_w, goaway_sent));
    let activity = Arc::new(Activity::default());
    let (up_done, up) = tokio::sync::oneshot::channel();
    spawn_thread("splice-client", {
        let downstream = downstream.clone();
        let activity = activity.clone();
        move || {
            let mut sink = SpliceSink {
                plugin: &mut plugin_w,
                client: &downstream,
            };
            let r = guard_client(&mut client_r, &mut sink, &replay, peer, auth, &activity);
            match &r {
                Ok(()) | Err(GuardError::Io(_)) => plugin_w.close_write(),
                Err(e) => {
                    // What the plugin would do with a connection that breaks the protocol,
                    // without it ever seeing the offending bytes.
                    tracing::info!(%peer, error = %e, "closing a spliced connection");
                    plugin_w.close();
                    downstream.finish(|client| client.close());
                }
            }
            let _ = up_done.send(r.map_err(|e| match e {
                GuardError::Io(e) => e,
                other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
            }));
        }
    })?;
    let (down_done, down) = tokio::sync::oneshot::channel();
    let copier = spawn_thread("splice-plugin", {
        let downstream = downstream.clone();
        let activity = activity.clone();
        move || {
            let r = copy_frames(&mut plugin_r, &downstream, &activity);
            downstream.finish(|client| client.close_write());
            let _ = down_done.send(r);
        }
    });
    if let Err(e) = copier {
        // The client's thread ends once its socket is closed.
        downstream.finish(|client| client.close());
        return Err(e);
    }
    let joined = async move {
        match (up.await, down.await) {
            (Ok(Ok(())), Ok(Ok(()))) => Ok(()),
            (Ok(Err(e)), _) | (_, Ok(Err(e))) => Err(e),
            _ => Err(std::io::Error::other("splice thread panicked")),
        }
    };
    tokio::pin!(joined);
    let mut drained = false;
    // On drain, a connection on which the plugin says nothing for a moment gets its GOAWAY
    // anyway.
    let mut goaway_at: Option<tokio::time::Instant> = None;
    let mut idle = idle_timeout.map(IdleWatch::new);
    let mut look_at = idle
        .as_ref()
        .map(|w| tokio::time::Instant::now() + w.first_look());
    loop {
        tokio::select! {
            result = joined.as_mut() => return result,
            _ = closing.wait(), if !drained => {
                drained = true;
                downstream.ask_goaway();
                goaway_at = Some(tokio::time::Instant::now() + QUIET_GOAWAY_AFTER);
            }
            _ = tokio::time::sleep_until(goaway_at.unwrap_or_else(tokio::time::Instant::now)),
                if goaway_at.is_some() => {
                goaway_at = None;
                send_goaway(&downstream);
            }
            _ = tokio::time::sleep_until(look_at.unwrap_or_else(tokio::time::Instant::now)),
                if look_at.is_some() => {
                let step = idle.as_mut().map_or(Step::Close, |w| w.look(&activity));
                look_at = match step {
                    Step::Wait(after) => Some(tokio::time::Instant::now() + after),
                    Step::Goaway(after) => {
                        tracing::debug!(%peer, "spliced connection idle: asking it to go away (HTTP/2 GOAWAY)");
                        send_goaway(&downstream);
                        Some(tokio::time::Instant::now() + after)
                    }
                    Step::Close => {
                        tracing::debug!(%peer, "spliced connection still idle after its GOAWAY: closing it");
                        if let Some((client, plugin)) = &closers {
                            client.close();
                            plugin.close();
                        }
                        None
                    }
                };
            }
        }
    }
}

/// Sends the GOAWAY off the runtime thread: a client that reads nothing may leave its
/// socket full, and must not hold up the runtime.
fn send_goaway<C: std::io::Write + Send + 'static>(downstream: &Arc<Downstream<C>>) {
    let downstream = downstream.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = downstream.goaway_now() {
            tracing::debug!(error = %e, "cannot send GOAWAY");
        }
    });
}

/// Starts a splice thread; failing to (the process is out of threads) fails the connection
/// rather than the launcher.
fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
}

/// The guard's outputs on a spliced connection: the plugin's socket, and the client's
/// shared write side for the launcher's own answers.
struct SpliceSink<'a, P, C> {
    plugin: &'a mut P,
    client: &'a Downstream<C>,
}

impl<P: std::io::Write, C: std::io::Write> Sink for SpliceSink<'_, P, C> {
    fn to_plugin(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.plugin.write_all(bytes)
    }

    fn to_client(&mut self, frames: &[u8]) -> std::io::Result<()> {
        self.client.inject(frames)
    }
}

/// Passes the client's bytes, `replay` first, through a [`Guard`] until the client is done.
fn guard_client(
    from: &mut impl std::io::Read,
    sink: &mut impl Sink,
    replay: &[u8],
    peer: SocketAddr,
    auth: Option<Arc<Authenticator>>,
    activity: &Activity,
) -> Result<(), GuardError> {
    let mut guard = Guard::new(Some(peer), auth);
    guard.feed(replay, sink)?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        activity.touch();
        guard.feed(&buf[..n], sink)?;
    }
}

/// The router, with the client's address in every request's extensions (for the log line
/// of a refused call).
#[derive(Clone)]
struct WithPeer {
    router: axum::Router,
    peer: SocketAddr,
    plaintext: bool,
}

impl<B> tower::Service<http::Request<B>> for WithPeer
where
    axum::Router: tower::Service<http::Request<B>>,
{
    type Response = <axum::Router as tower::Service<http::Request<B>>>::Response;
    type Error = <axum::Router as tower::Service<http::Request<B>>>::Error;
    type Future = <axum::Router as tower::Service<http::Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<http::Request<B>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(Peer(self.peer));
        if self.plaintext {
            request.extensions_mut().insert(Plaintext);
        }
        self.router.call(request)
    }
}

/// Copies the plugin's bytes to the client, tracking frame boundaries on the way.
fn copy_frames<C: std::io::Write>(
    from: &mut impl std::io::Read,
    to: &Downstream<C>,
    activity: &Activity,
) -> std::io::Result<()> {
    // The size `std::io::copy` uses between two sockets.
    let mut buf = [0u8; 8 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        activity.touch();
        to.write(&buf[..n])?;
    }
}

/// Reads the start of a connection until its route is known. Also says whether a GOAWAY
/// was sent meanwhile (the launcher started closing connections before this one was routed).
async fn sniff<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    closing: &mut Closing,
) -> std::io::Result<(Route, Vec<u8>, bool)> {
    let mut sniffer = Sniffer::default();
    let mut buf = [0u8; 16 * 1024];
    let mut settings_sent = false;
    let mut goaway_sent = false;
    loop {
        let n = tokio::select! {
            read = stream.read(&mut buf) => read?,
            // After our SETTINGS only: that must be the first frame a server sends.
            _ = closing.wait(), if settings_sent && !goaway_sent => {
                stream.write_all(&GOAWAY).await?;
                stream.flush().await?;
                goaway_sent = true;
                continue;
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let next = sniffer.feed(&buf[..n]);
        if !settings_sent && sniffer.preface_state() == Some(true) {
            stream.write_all(&EMPTY_SETTINGS).await?;
            stream.flush().await?;
            settings_sent = true;
        }
        match next {
            Next::Read => continue,
            Next::NotHttp2 => return Ok((Route::Local, sniffer.into_forward(), goaway_sent)),
            Next::Route(route) => {
                tracing::debug!(first_path = sniffer.path(), ?route, "connection routed");
                return Ok((route, sniffer.into_forward(), goaway_sent));
            }
        }
    }
}

/// A stream that first yields bytes already read from it.
struct Rewind<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    use socket2::SockRef;

    use super::*;
    use crate::frames::{HEADER_LEN, frame_header};
    use crate::sniff::PREFACE;

    #[tokio::test]
    async fn accepted_connections_get_nodelay_and_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let address = listener.local_addr().expect("address");
        let client = TcpStream::connect(address).await.expect("connect");
        let keepalive = Keepalive::after_seconds(30);
        let (accepted, peer) = next_connection(&listener, keepalive).await.expect("accept");
        assert_eq!(peer, client.local_addr().expect("client address"));
        // As the kernel reports them (getsockopt).
        let s = SockRef::from(&accepted);
        assert!(s.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            s.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            Duration::from_secs(30)
        );
        assert_eq!(
            s.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            crate::keepalive::INTERVAL
        );
        assert_eq!(
            s.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
            crate::keepalive::PROBES
        );
        assert!(s.tcp_nodelay().expect("TCP_NODELAY"));
        // Off: no keepalive.
        let _other = TcpStream::connect(address).await.expect("connect");
        let (plain, _) = next_connection(&listener, None).await.expect("accept");
        assert!(!SockRef::from(&plain).keepalive().expect("SO_KEEPALIVE"));
    }

    /// A PING frame: eight octets of payload on stream 0.
    fn ping(n: u8) -> Vec<u8> {
        let mut f = frame_header(8, 0x6, 0, 0).to_vec();
        f.extend([n; 8]);
        f
    }

    /// Splices two socket pairs with `idle_timeout`; returns the far ends (client, plugin)
    /// and the splice.
    fn spliced(
        idle_timeout: Option<Duration>,
        drain: &Drain,
    ) -> (
        UnixStream,
        UnixStream,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let (client_far, client_near) = UnixStream::pair().expect("pair");
        let (plugin_near, plugin_far) = UnixStream::pair().expect("pair");
        let setup = Setup {
            replay: Vec::new(),
            goaway_sent: false,
            // A Drain's signal ends with its last handle: both from the one the test holds.
            closing: Either(drain.closing(), drain.closing()),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            auth: None,
            idle_timeout,
        };
        let task = tokio::spawn(splice(client_near, plugin_near, setup));
        (client_far, plugin_far, task)
    }

    /// Everything `socket` receives until the end of the stream, read off the runtime.
    fn read_all(mut socket: UnixStream) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let _ = socket.read_to_end(&mut got);
            got
        })
    }

    #[tokio::test]
    async fn an_idle_connection_gets_a_goaway_then_is_closed() {
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let drain = Drain::default();
        let (mut client, plugin, splice) = spliced(Some(timeout), &drain);
        let to_plugin = read_all(plugin);
        let (goaway, client) = tokio::task::spawn_blocking(move || {
            let mut goaway = [0u8; GOAWAY.len()];
            client.read_exact(&mut goaway).map(|()| (goaway, client))
        })
        .await
        .expect("reader")
        .expect("GOAWAY");
        assert_eq!(goaway, GOAWAY);
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        assert!(read_all(client).await.expect("reader").is_empty());
        // Closed a grace period (as long as the timeout, here) after the GOAWAY.
        assert!(started.elapsed() >= timeout * 2, "{:?}", started.elapsed());
        assert!(to_plugin.await.expect("reader").is_empty());
        splice.await.expect("task").expect("splice");
    }

    /// Traffic in either direction, a frame every 50 ms for well over the timeout, keeps the
    /// connection; once it stops, the GOAWAY comes after every frame, then the end.
    #[tokio::test]
    async fn a_connection_that_keeps_sending_is_not_idle() {
        let timeout = Duration::from_millis(400);
        for from_plugin in [true, false] {
            let drain = Drain::default();
            let (client, plugin, splice) = spliced(Some(timeout), &drain);
            let (mut sender, receiver) = if from_plugin {
                (
                    plugin.try_clone().expect("dup"),
                    client.try_clone().expect("dup"),
                )
            } else {
                (
                    client.try_clone().expect("dup"),
                    plugin.try_clone().expect("dup"),
                )
            };
            let received = read_all(receiver);
            let other_end = read_all(if from_plugin { plugin } else { client });
            let sending = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                if !from_plugin {
                    sender.write_all(PREFACE).expect("preface");
                }
                let mut sent = if from_plugin {
                    Vec::new()
                } else {
                    PREFACE.to_vec()
                };
                for n in 0..24 {
                    let frame = ping(n);
                    sender.write_all(&frame).expect("frame");
                    sent.extend(frame);
                    std::thread::sleep(Duration::from_millis(50));
                }
                (sent, started.elapsed())
            });
            let (sent, sending_for) = sending.await.expect("sender");
            // Longer than the timeout and the grace period after it together.
            assert!(sending_for > timeout * 2, "{sending_for:?}");
            let mut got = received.await.expect("reader");
            let other = other_end.await.expect("reader");
            let (traffic, goaway) = if from_plugin {
                let goaway = got.split_off(got.len() - GOAWAY.len());
                (got, goaway)
            } else {
                (got, other)
            };
            assert_eq!(
                traffic, sent,
                "from_plugin {from_plugin}: all of it, nothing between"
            );
            assert_eq!(goaway, GOAWAY, "from_plugin {from_plugin}");
            assert!(sent.len() > 24 * HEADER_LEN);
            splice.await.expect("task").expect("splice");
        }
    }

    #[tokio::test]
    async fn without_an_idle_timeout_a_quiet_connection_stays() {
        let drain = Drain::default();
        let (client, plugin, splice) = spliced(None, &drain);
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let quiet = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            let mut client = client;
            let r = client.read(&mut buf).map_err(|e| e.kind());
            (r, client)
        });
        let (read, mut client) = quiet.await.expect("reader");
        assert_eq!(
            read,
            Err(std::io::ErrorKind::WouldBlock),
            "nothing, not even a GOAWAY"
        );
        // The drain still asks it to go away.
        drain.close();
        client.set_read_timeout(None).expect("timeout");
        let mut goaway = [0u8; GOAWAY.len()];
        let got =
            tokio::task::spawn_blocking(move || client.read_exact(&mut goaway).map(|()| goaway));
        assert_eq!(got.await.expect("reader").expect("GOAWAY"), GOAWAY);
        drop(plugin);
        splice.abort();
    }
}
