//! The TCP stream of one upstream connection, shared between its HTTP/2 connection task (the
//! only reader and writer) and the pool, which peeks at it before sending a call over it.
//!
//! Why: when a plugin process dies between two calls, its kernel closes the connection at
//! once, but the HTTP/2 client learns of it only when its connection task next reads the
//! socket. A call sent in between would go out on a connection the peer had already closed
//! and fail as "lost after sending" although no plugin could have received it. Peeking at the
//! socket itself sees the close the moment the kernel has it.
//!
//! The stream also tells when the peer has first sent something ([`Socket::heard_from`]): an
//! HTTP/2 server starts with its SETTINGS, and a connection is only taken as open once it
//! has (a frozen process's kernel still accepts the TCP connection).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The most one read initializes and fills (reads come as the data arrives anyway).
const READ_CHUNK: usize = 16 * 1024;

/// An open socket, counted in its pool's open sockets until it is closed.
#[derive(Debug)]
pub struct Socket {
    stream: TcpStream,
    open: Option<Arc<AtomicUsize>>,
    /// Whether anything was read from the peer yet, and a wake-up for who waits for it.
    heard: AtomicBool,
    first: Notify,
}

impl Socket {
    /// Wraps `stream`, counting it in `open` (when given) while it lives.
    fn new(stream: TcpStream, open: Option<Arc<AtomicUsize>>) -> Self {
        if let Some(count) = &open {
            count.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            stream,
            open,
            heard: AtomicBool::new(false),
            first: Notify::new(),
        }
    }

    /// Returns once the peer has sent something (read through the [`SharedStream`]).
    pub async fn heard_from(&self) {
        let first = self.first.notified();
        let mut first = std::pin::pin!(first);
        first.as_mut().enable();
        if self.heard.load(Ordering::Acquire) {
            return;
        }
        first.await;
    }

    /// Closes both directions now, whoever still holds the socket: the peer sees the close
    /// and pending reads and writes here end.
    pub fn shutdown(&self) {
        let _ = SockRef::from(&self.stream).shutdown(std::net::Shutdown::Both);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(count) = &self.open {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A TCP stream that can be shared: I/O through this handle, peeks through [`Self::peer`].
#[derive(Debug)]
pub struct SharedStream(Arc<Socket>);

impl SharedStream {
    /// Wraps `stream`, counting it in `open` (when given) until the socket is closed.
    pub fn new(stream: TcpStream, open: Option<Arc<AtomicUsize>>) -> Self {
        Self(Arc::new(Socket::new(stream, open)))
    }

    /// A second handle to the socket, for [`peer_closed`]; it keeps the socket open as long
    /// as it lives.
    pub fn peer(&self) -> Arc<Socket> {
        self.0.clone()
    }
}

/// Whether the peer has closed or reset the connection, seen without taking anything from
/// the socket (a `recv` with `MSG_PEEK` on the non-blocking socket): end of stream or an
/// error says it is gone; pending data or nothing to read says it is open.
pub fn peer_closed(socket: &Socket) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match SockRef::from(&socket.stream).peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
        Err(_) => true,
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.0.stream.poll_read_ready(cx))?;
            let want = buf.remaining().min(READ_CHUNK);
            // `try_read` clears the readiness when the socket has nothing after all, so the
            // next `poll_read_ready` waits for the reactor again.
            match self.0.stream.try_read(buf.initialize_unfilled_to(want)) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 && !self.0.heard.load(Ordering::Relaxed) {
                        self.0.heard.store(true, Ordering::Release);
                        self.0.first.notify_waiters();
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.stream.poll_write_ready(cx))?;
            match self.0.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.stream.poll_write_ready(cx))?;
            match self.0.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP has no user-space buffer here to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&self.0.stream).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_peers_close_is_seen_without_reading_and_io_passes_through() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (mut server, _) = listener.accept().await?;
        let open = Arc::new(AtomicUsize::new(0));
        let mut shared = SharedStream::new(client, Some(open.clone()));
        let peer = shared.peer();
        assert_eq!(open.load(Ordering::Relaxed), 1, "counted while open");
        assert!(!peer_closed(&peer), "open, nothing to read");

        shared.write_all(b"ping").await?;
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await?;
        assert_eq!(&got, b"ping");
        let heard = {
            let peer = peer.clone();
            tokio::spawn(async move { peer.heard_from().await })
        };
        assert!(!heard.is_finished(), "nothing sent yet");
        server.write_all(b"pong").await?;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!peer_closed(&peer), "data waiting is not a close");
        let mut got = [0u8; 4];
        shared.read_exact(&mut got).await?;
        assert_eq!(&got, b"pong");
        heard.await?;
        // Once heard from, at once.
        peer.heard_from().await;

        drop(server);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(peer_closed(&peer), "the close is seen without reading");
        let mut rest = Vec::new();
        assert_eq!(
            shared.read_to_end(&mut rest).await?,
            0,
            "and reads see it too"
        );
        drop(shared);
        assert_eq!(
            open.load(Ordering::Relaxed),
            1,
            "the peek handle keeps it open"
        );
        drop(peer);
        assert_eq!(
            open.load(Ordering::Relaxed),
            0,
            "closed with the last handle"
        );
        Ok(())
    }
}
