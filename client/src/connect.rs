//! One endpoint's connection: opened when a call first needs it, by one connect at a time
//! that every call waiting for it shares (each waits with its own deadline, and the connect
//! goes on when they give up, so a connect slower than their deadlines still completes for
//! the next call); watched by keepalive PINGs; forgotten when it ends, so a dead connection
//! holds no socket.
//!
//! hyper-util's `Singleton` pool also shares one connect between callers, but it cancels
//! the connect when the last waiting caller gives up — with short deadlines and a slow
//! connect, no connection would ever open — and it hands out only a service wrapper, where
//! calls here need the connection's socket and state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use h2::client::SendRequest;
use http::uri::Authority;
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use hector_plugin_sdk::net::TcpKeepalive;
use hector_plugin_sdk::tls;

use crate::balance::{Failure, Observed, Stage};
use crate::keepalive::{self, Activity, Keepalive};
use crate::pool::{AttemptError, describe, io_text, lock};
use crate::secure::PluginTls;
use crate::socket::{SharedStream, Socket, peer_closed};

/// Per-stream and per-connection receive windows: large enough that streaming answers are
/// not held back by flow control on a fast network (hyper's client defaults).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// What hears of an endpoint's connection failing.
pub(crate) type FailureHook = Box<dyn Fn(SocketAddr, &AttemptError) + Send + Sync>;

/// How connections are opened and watched, and who hears when a connect ends.
pub(crate) struct Connecting {
    /// The longest a connect (TCP, TLS, HTTP/2 preface) may take.
    pub timeout: Duration,
    /// HTTP/2 PINGs.
    pub keepalive: Keepalive,
    /// The socket options.
    pub tcp: TcpKeepalive,
    /// Sockets open now (a socket counts until it is closed, whoever held it last).
    pub open: Arc<AtomicUsize>,
    /// Connects that ended so far, and a wake-up for calls waiting for one: a call waiting
    /// for one endpoint's connect goes to another endpoint whose connect ended first.
    pub ended: AtomicU64,
    pub changed: Notify,
    /// Told about every failed connect, whether a call waits for it or not, and about every
    /// connection found dead by its keepalive.
    pub on_failure: FailureHook,
}

impl Connecting {
    /// The count of ended connects, to compare with later (see [`Self::ended`]).
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }
}

/// What a connection's calls and its connection task share: the calls' activity (for the
/// keepalive) and whether, and why, the connection ended.
#[derive(Debug, Default)]
pub(crate) struct Life {
    pub activity: Activity,
    closed: AtomicBool,
    reason: OnceLock<String>,
}

impl Life {
    fn close(&self, reason: Option<String>) {
        if let Some(reason) = reason {
            let _ = self.reason.set(reason);
        }
        self.closed.store(true, Ordering::Release);
    }

    /// Why the connection ended, when this side knows better than the HTTP/2 client (its
    /// keepalive PING went unanswered).
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }
}

/// An open connection: its sender, this side's address of it, its socket (to see a peer's
/// close before a call is sent over it), over TLS the fingerprint of the certificate it
/// accepted, and its life.
#[derive(Clone)]
pub(crate) struct Conn {
    pub id: u64,
    pub sender: SendRequest<Bytes>,
    pub local: Option<SocketAddr>,
    socket: Arc<Socket>,
    pub fingerprint: Option<String>,
    pub life: Arc<Life>,
}

impl Conn {
    /// Whether the connection is still acceptable under `tls`: plaintext when there is none,
    /// else a certificate that is still pinned.
    pub fn fits(&self, tls: Option<&PluginTls>) -> bool {
        match (tls, &self.fingerprint) {
            (None, None) => true,
            (Some(t), Some(fp)) => t.accepts(fp),
            _ => false,
        }
    }

    /// Whether a call may go out on it: it has not ended, and the peer has not closed it. The
    /// HTTP/2 client would see a peer's close only when its connection task next reads, and
    /// a call sent meanwhile would count as lost although it cannot have reached the plugin.
    /// (Over TLS a peer that shuts down cleanly sends close_notify first, which looks like
    /// data here; its HTTP/2 GOAWAY, sent before that, already makes such calls safe to
    /// retry.)
    fn usable(&self) -> bool {
        !self.life.closed.load(Ordering::Acquire) && !peer_closed(&self.socket)
    }
}

/// Cancels a task when dropped, unless disarmed.
#[derive(Debug)]
struct AbortOnDrop(Option<AbortHandle>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

type Outcome = Option<Result<Conn, AttemptError>>;

enum SlotState {
    Idle,
    /// A connect is under way; its outcome arrives on `done`. Dropping the state (the slot
    /// was removed, and no call waits any more) cancels it.
    Connecting {
        id: u64,
        done: watch::Receiver<Outcome>,
        task: AbortOnDrop,
    },
    Open(Conn),
}

/// One endpoint: its connection and its run of failed calls (for outlier ejection).
pub(crate) struct Slot {
    pub addr: SocketAddr,
    pub authority: Authority,
    state: Mutex<SlotState>,
    /// [`OPEN`], [`IDLE`] or [`CONNECTING`], as `state` is (read without the lock).
    phase: AtomicU8,
    /// Calls in a row that timed out, stalled or failed on the plugin side.
    pub failures: AtomicU32,
}

/// A connection is open: calls go out at once. Ranks first when picking an endpoint.
pub(crate) const OPEN: u8 = 0;
/// No connection and no connect under way.
pub(crate) const IDLE: u8 = 1;
/// A connect is under way: a call would wait for it.
pub(crate) const CONNECTING: u8 = 2;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Slot {
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            // A socket address is always a valid authority; the fallback only names it.
            authority: Authority::try_from(addr.to_string())
                .unwrap_or_else(|_| Authority::from_static("remote-plugin")),
            state: Mutex::new(SlotState::Idle),
            phase: AtomicU8::new(IDLE),
            failures: AtomicU32::new(0),
        })
    }

    /// [`OPEN`], [`IDLE`] or [`CONNECTING`].
    pub fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    fn set(&self, state: &mut SlotState, next: SlotState) -> SlotState {
        self.phase.store(
            match next {
                SlotState::Idle => IDLE,
                SlotState::Connecting { .. } => CONNECTING,
                SlotState::Open(_) => OPEN,
            },
            Ordering::Relaxed,
        );
        std::mem::replace(state, next)
    }

    /// Starts a connect when there is no connection and none under way.
    pub fn prepare(self: &Arc<Self>, how: &Arc<Connecting>, tls: Option<&Arc<PluginTls>>) {
        let mut state = lock(&self.state);
        if matches!(*state, SlotState::Idle) {
            self.start(&mut state, how, tls);
        }
    }

    /// Drops an open connection that `tls` no longer accepts (its calls keep it until they
    /// end); false when a connect is under way, whose outcome would not fit either.
    pub fn keep_under(&self, tls: Option<&PluginTls>) -> bool {
        let mut state = lock(&self.state);
        match &*state {
            SlotState::Idle => true,
            SlotState::Open(c) => {
                if !c.fits(tls) {
                    self.set(&mut state, SlotState::Idle);
                }
                true
            }
            SlotState::Connecting { .. } => false,
        }
    }

    /// The endpoint's connection: the open one unless it is `stale` or no longer usable, else
    /// the outcome of the connect under way, or of a new one. The flag says whether the
    /// connection was already open. Callers bound the wait with their own deadline; the
    /// connect goes on without them.
    pub async fn connection(
        self: &Arc<Self>,
        how: &Arc<Connecting>,
        tls: Option<&Arc<PluginTls>>,
        stale: Option<u64>,
    ) -> Result<(Conn, bool), AttemptError> {
        let mut done = {
            let mut state = lock(&self.state);
            match &*state {
                SlotState::Open(c) if Some(c.id) != stale && c.usable() => {
                    return Ok((c.clone(), true));
                }
                SlotState::Connecting { done, .. } => done.clone(),
                _ => self.start(&mut state, how, tls),
            }
        };
        match done.wait_for(Option::is_some).await {
            Ok(outcome) => match outcome.as_ref() {
                Some(Ok(conn)) => Ok((conn.clone(), false)),
                Some(Err(e)) => Err(e.clone()),
                None => Err(abandoned()),
            },
            Err(_) => Err(abandoned()),
        }
    }

    fn start(
        self: &Arc<Self>,
        state: &mut SlotState,
        how: &Arc<Connecting>,
        tls: Option<&Arc<PluginTls>>,
    ) -> watch::Receiver<Outcome> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let slot = Arc::downgrade(self);
        let how = how.clone();
        let tls = tls.cloned();
        let addr = self.addr;
        let task = tokio::spawn(async move {
            let attempt = connect(addr, id, &how, tls.as_deref(), slot.clone());
            let outcome = match tokio::time::timeout(how.timeout, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => Err(AttemptError {
                    failure: Failure::NoConnection,
                    detail: format!("connect timed out after {}ms", how.timeout.as_millis()),
                }),
            };
            if let Some(slot) = slot.upgrade() {
                let mut state = lock(&slot.state);
                if matches!(&*state, SlotState::Connecting { id: current, .. } if *current == id) {
                    let next = match &outcome {
                        Ok(conn) => SlotState::Open(conn.clone()),
                        Err(_) => SlotState::Idle,
                    };
                    // This task is the one the state would cancel: it is ending anyway.
                    if let SlotState::Connecting { task, .. } = slot.set(&mut state, next) {
                        task.disarm();
                    }
                }
            }
            if let Err(e) = &outcome {
                (how.on_failure)(addr, e);
            }
            let _ = tx.send(Some(outcome));
            how.ended.fetch_add(1, Ordering::Release);
            how.changed.notify_waiters();
        });
        self.set(
            state,
            SlotState::Connecting {
                id,
                done: rx.clone(),
                task: AbortOnDrop(Some(task.abort_handle())),
            },
        );
        rx
    }

    /// Forgets connection `id` once it has ended.
    fn forget(&self, id: u64) {
        let mut state = lock(&self.state);
        if matches!(&*state, SlotState::Open(c) if c.id == id) {
            self.set(&mut state, SlotState::Idle);
        }
    }
}

fn abandoned() -> AttemptError {
    AttemptError {
        failure: Failure::NoConnection,
        detail: "connect abandoned".into(),
    }
}

/// Opens a TCP connection, runs the pinned TLS handshake when `pins` asks for it, and starts
/// HTTP/2 on it with its keepalive.
async fn connect(
    addr: SocketAddr,
    id: u64,
    how: &Arc<Connecting>,
    pins: Option<&PluginTls>,
    slot: Weak<Slot>,
) -> Result<Conn, AttemptError> {
    let started = tokio::time::Instant::now();
    let stream = how
        .tcp
        .connect(&addr.ip().to_string(), addr.port(), None)
        .await
        .map_err(|e| {
            let mut o = Observed::at(Stage::Connect);
            o.io = Some(e.kind());
            AttemptError {
                failure: Failure::classify(&o),
                detail: io_text(&e),
            }
        })?;
    let local = stream.local_addr().ok();
    let stream = SharedStream::new(stream, Some(how.open.clone()));
    let socket = stream.peer();
    let Some(pins) = pins else {
        let (sender, life) = start_h2(stream, addr, id, socket.clone(), how.clone(), slot).await?;
        answered(&socket, started, how.timeout).await?;
        return Ok(Conn {
            id,
            sender,
            local,
            socket,
            fingerprint: None,
            life,
        });
    };
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(pins.config())
        .connect(name, stream)
        .await
        .map_err(|e| {
            let detail = match tls::refusal(&e) {
                Some(refusal) => pins.refusal_text(addr, &refusal),
                None => format!("TLS handshake failed: {}", io_text(&e)),
            };
            AttemptError {
                failure: Failure::NoConnection,
                detail,
            }
        })?;
    let fingerprint = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .map(|cert| tls::fingerprint(cert));
    let (sender, life) = start_h2(stream, addr, id, socket.clone(), how.clone(), slot).await?;
    Ok(Conn {
        id,
        sender,
        local,
        socket,
        // Pinned TLS always has a certificate; an empty one still marks the connection TLS.
        fingerprint: Some(fingerprint.unwrap_or_default()),
        life,
    })
}

/// Waits, until `timeout` after `started`, for the server to have sent something: its
/// SETTINGS, which every HTTP/2 server sends first, at once (as gRPC's own clients, this
/// takes a connection as open only then). The kernel of a frozen process, or a black hole
/// that accepts connections, completes the TCP handshake; a call sent on such a connection
/// could not be retried elsewhere, where a connect that fails can.
async fn answered(
    socket: &Socket,
    started: tokio::time::Instant,
    timeout: Duration,
) -> Result<(), AttemptError> {
    tokio::time::timeout_at(started + timeout, socket.heard_from())
        .await
        .map_err(|_| AttemptError {
            failure: Failure::NoConnection,
            detail: format!(
                "connected, but no HTTP/2 answer within {}ms",
                timeout.as_millis()
            ),
        })
}

/// Starts HTTP/2 on an open stream and runs its connection task, which also sends the
/// keepalive PINGs and closes the connection when one goes unanswered.
async fn start_h2<T>(
    stream: T,
    addr: SocketAddr,
    id: u64,
    socket: Arc<Socket>,
    how: Arc<Connecting>,
    slot: Weak<Slot>,
) -> Result<(SendRequest<Bytes>, Arc<Life>), AttemptError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|e| AttemptError {
            failure: Failure::NoConnection,
            detail: format!("HTTP/2 handshake failed: {}", describe(&e)),
        })?;
    let life = Arc::new(Life::default());
    let watched = life.clone();
    let settings = how.keepalive;
    tokio::spawn(async move {
        // `Err(None)`: the connection failed; `Err(Some(reason))`: it is dead to keepalive.
        let ended: Result<(), Option<String>> = match conn.ping_pong() {
            Some(pings) => tokio::select! {
                r = &mut conn => r.map_err(|e| {
                    tracing::debug!(endpoint = %addr, error = %describe(&e), "remote connection failed");
                    None
                }),
                () = keepalive::watch(pings, settings, &watched.activity) => Err(Some(format!(
                    "no answer to a keepalive PING within {}ms",
                    settings.timeout.as_millis()
                ))),
            },
            None => (&mut conn).await.map_err(|e| {
                tracing::debug!(endpoint = %addr, error = %describe(&e), "remote connection failed");
                None
            }),
        };
        let dead = match ended {
            Ok(()) => {
                tracing::debug!(endpoint = %addr, "remote connection closed");
                None
            }
            Err(reason) => reason,
        };
        if let Some(reason) = &dead {
            tracing::warn!(endpoint = %addr, reason, "remote connection dead; closing it");
            // Whoever still holds the socket must not use it, and the peer, when it wakes
            // up, sees the close.
            socket.shutdown();
            (how.on_failure)(
                addr,
                &AttemptError {
                    failure: Failure::Lost,
                    detail: reason.clone(),
                },
            );
        }
        watched.close(dead);
        // Dropping the connection fails the calls still on it.
        drop(conn);
        if let Some(slot) = slot.upgrade() {
            slot.forget(id);
        }
    });
    Ok((sender, life))
}
