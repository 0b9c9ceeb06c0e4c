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
use crate::policy::{Peer, Plaintext};
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
const IDLE_GOAWAY_AFTER: Duration = Duration::from_millis(100);

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

/// Serves until `drain` is closed; the connections it accepted carry on until they end.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    backends: Backends,
    mode: ForwardMode,
    drain: Drain,
    gate: Gate,
) {
    let mut closing = drain.closing();
    loop {
        let (stream, peer) = tokio::select! {
            // Dropping the listener refuses new connections at once rather than leaving them
            // in the backlog.
            _ = closing.wait() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let backends = backends.clone();
        let open = drain.track();
        let closing = drain.closing();
        let gate = gate.clone();
        tokio::spawn(async move {
            if let Err(e) = accept(stream, peer, router, &backends, mode, closing, &gate).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
        });
    }
}

/// Takes a new connection: with TLS on, a TLS client is served once its handshake is done
/// and a plaintext one only locally (health); otherwise as it comes.
async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    backends: &Backends,
    mode: ForwardMode,
    closing: Closing,
    gate: &Gate,
) -> std::io::Result<()> {
    let Some(acceptor) = &gate.tls else {
        return handle(
            Client::Tcp(stream),
            peer,
            router,
            backends,
            mode,
            closing,
            gate,
        )
        .await;
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
        handle(
            Client::Tls(Box::new(tls)),
            peer,
            router,
            backends,
            mode,
            closing,
            gate,
        )
        .await
    } else {
        serve_local(stream, Vec::new(), peer, router, closing, true).await
    }
}

/// A client connection, before it is routed.
enum Client {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

async fn handle(
    mut client: Client,
    peer: SocketAddr,
    router: axum::Router,
    backends: &Backends,
    mode: ForwardMode,
    mut closing: Closing,
    gate: &Gate,
) -> std::io::Result<()> {
    let (route, replay, goaway_sent) = match mode {
        ForwardMode::Request => (Route::Local, Vec::new(), false),
        ForwardMode::Connection => {
            let sniffed = match &mut client {
                Client::Tcp(s) => tokio::time::timeout(SNIFF_TIMEOUT, sniff(s, &mut closing)).await,
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
    match route {
        Route::Local => match client {
            Client::Tcp(s) => serve_local(s, replay, peer, router, closing, false).await,
            Client::Tls(s) => serve_local(*s, replay, peer, router, closing, false).await,
        },
        Route::Plugin => {
            // Counted as the plugin's until the splice ends, so that a retiring plugin is
            // stopped only once its clients have left.
            let (backend, _counted) = backends.pick();
            let closing = Either(closing, backend.drain.closing());
            let to = SpliceTo {
                address: &backend.address,
                replay,
                goaway_sent,
                closing,
                peer,
                auth: gate.auth.clone(),
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
    replay: Vec<u8>,
    goaway_sent: bool,
    closing: Either,
    peer: SocketAddr,
    auth: Option<Arc<Authenticator>>,
}

impl SpliceTo<'_> {
    /// Connects to the plugin and splices `client` to it.
    async fn run<C: Duplex>(self, client: C) -> std::io::Result<()> {
        let Self {
            address,
            replay,
            goaway_sent,
            closing,
            peer,
            auth,
        } = self;
        if let Some(path) = address.strip_prefix("unix:") {
            let plugin = tokio::net::UnixStream::connect(path.trim_start_matches("//"))
                .await?
                .into_std()?;
            splice(client, plugin, replay, goaway_sent, closing, peer, auth).await
        } else {
            let plugin = TcpStream::connect(address).await?;
            plugin.set_nodelay(true)?;
            splice(
                client,
                plugin.into_std()?,
                replay,
                goaway_sent,
                closing,
                peer,
                auth,
            )
            .await
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
/// itself. On drain, a GOAWAY goes to the client between two of the plugin's frames.
async fn splice<C: Duplex, P: Duplex>(
    client: C,
    plugin: P,
    replay: Vec<u8>,
    goaway_sent: bool,
    mut closing: Either,
    peer: SocketAddr,
    auth: Option<Arc<Authenticator>>,
) -> std::io::Result<()> {
    client.blocking()?;
    plugin.blocking()?;
    let (mut client_r, client_w) = (client.duplicate()?, client);
    let (mut plugin_r, mut plugin_w) = (plugin.duplicate()?, plugin);
    let downstream = Arc::new(Downstream::new(client_w, goaway_sent));
    let up = std::thread::spawn({
        let downstream = downstream.clone();
        move || {
            let mut sink = SpliceSink {
                plugin: &mut plugin_w,
                client: &downstream,
            };
            let r = guard_client(&mut client_r, &mut sink, &replay, peer, auth);
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
            r.map_err(|e| match e {
                GuardError::Io(e) => e,
                other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
            })
        }
    });
    let down = std::thread::spawn({
        let downstream = downstream.clone();
        move || {
            let r = copy_frames(&mut plugin_r, &downstream);
            downstream.finish(|client| client.close_write());
            r
        }
    });
    // Wait off the runtime thread.
    let joined = tokio::task::spawn_blocking(move || {
        let a = up.join();
        let b = down.join();
        match (a, b) {
            (Ok(Ok(())), Ok(Ok(()))) => Ok(()),
            (Ok(Err(e)), _) | (_, Ok(Err(e))) => Err(e),
            _ => Err(std::io::Error::other("splice thread panicked")),
        }
    });
    tokio::pin!(joined);
    tokio::select! {
        result = joined.as_mut() => return result.map_err(std::io::Error::other)?,
        _ = closing.wait() => downstream.ask_goaway(),
    }
    // A connection on which the plugin says nothing for a moment gets its GOAWAY anyway.
    tokio::select! {
        result = joined.as_mut() => return result.map_err(std::io::Error::other)?,
        _ = tokio::time::sleep(IDLE_GOAWAY_AFTER) => {
            // Blocking: a client that reads nothing may leave its socket full, and must not
            // hold up the runtime.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = downstream.goaway_now() {
                    tracing::debug!(error = %e, "cannot send GOAWAY");
                }
            });
        }
    }
    joined.await.map_err(std::io::Error::other)?
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
