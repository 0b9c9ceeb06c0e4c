//! The launcher's server loop: accept, route each connection (see [`crate::sniff`]), and
//! either serve it locally (health, plus request-by-request forwarding) or splice it to the
//! plugin.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::sniff::{EMPTY_SETTINGS, Next, Route, Sniffer};

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

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    plugin_address: String,
    mode: ForwardMode,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
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
        let plugin_address = plugin_address.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, router, &plugin_address, mode).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    router: axum::Router,
    plugin_address: &str,
    mode: ForwardMode,
) -> std::io::Result<()> {
    let (route, replay) = match mode {
        ForwardMode::Request => (Route::Local, Vec::new()),
        ForwardMode::Connection => {
            match tokio::time::timeout(SNIFF_TIMEOUT, sniff(&mut stream)).await {
                Ok(result) => result?,
                Err(_) => return Ok(()),
            }
        }
    };
    match route {
        Route::Local => {
            let io = TokioIo::new(Rewind::new(replay, stream));
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(io, TowerToHyperService::new(router))
                .await
                .map_err(std::io::Error::other)
        }
        Route::Plugin => {
            let client = stream.into_std()?;
            if let Some(path) = plugin_address.strip_prefix("unix:") {
                let plugin = tokio::net::UnixStream::connect(path.trim_start_matches("//"))
                    .await?
                    .into_std()?;
                splice(client, plugin, replay).await
            } else {
                let plugin = TcpStream::connect(plugin_address).await?;
                plugin.set_nodelay(true)?;
                splice(client, plugin.into_std()?, replay).await
            }
        }
    }
}

/// A socket the blocking splice can use from two threads.
trait Duplex: std::io::Read + std::io::Write + Send + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn blocking(&self) -> std::io::Result<()>;
    fn close_write(&self);
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
        }
    };
}

duplex!(std::net::TcpStream);
duplex!(std::os::unix::net::UnixStream);

/// Copies both directions until both ends are done. Blocking threads rather than the async
/// runtime: a blocked read returns the data in one system call, where readiness polling
/// needs several, and this path carries every plugin call.
async fn splice<P: Duplex>(
    client: std::net::TcpStream,
    mut plugin: P,
    replay: Vec<u8>,
) -> std::io::Result<()> {
    client.blocking()?;
    plugin.blocking()?;
    std::io::Write::write_all(&mut plugin, &replay)?;
    let (mut client_r, mut client_w) = (client.duplicate()?, client);
    let (mut plugin_r, mut plugin_w) = (plugin.duplicate()?, plugin);
    let up = std::thread::spawn(move || {
        let r = std::io::copy(&mut client_r, &mut plugin_w);
        plugin_w.close_write();
        r
    });
    let down = std::thread::spawn(move || {
        let r = std::io::copy(&mut plugin_r, &mut client_w);
        client_w.close_write();
        r
    });
    // Wait off the runtime thread.
    tokio::task::spawn_blocking(move || {
        let a = up.join();
        let b = down.join();
        match (a, b) {
            (Ok(Ok(_)), Ok(Ok(_))) => Ok(()),
            (Ok(Err(e)), _) | (_, Ok(Err(e))) => Err(e),
            _ => Err(std::io::Error::other("splice thread panicked")),
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Reads the start of a connection until its route is known.
async fn sniff(stream: &mut TcpStream) -> std::io::Result<(Route, Vec<u8>)> {
    let mut sniffer = Sniffer::default();
    let mut buf = [0u8; 16 * 1024];
    let mut settings_sent = false;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let next = sniffer.feed(&buf[..n]);
        if !settings_sent && sniffer.preface_state() == Some(true) {
            stream.write_all(&EMPTY_SETTINGS).await?;
            settings_sent = true;
        }
        match next {
            Next::Read => continue,
            Next::NotHttp2 => return Ok((Route::Local, sniffer.into_forward())),
            Next::Route(route) => {
                tracing::debug!(first_path = sniffer.path(), ?route, "connection routed");
                return Ok((route, sniffer.into_forward()));
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
