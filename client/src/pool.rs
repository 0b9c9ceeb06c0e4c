//! Calls to a remote plugin's endpoints: one HTTP/2 connection per endpoint, opened when
//! first needed and reopened when it dies, each call sent to the endpoint the balancer picks
//! and retried elsewhere only when it provably never reached the one that failed. Both the
//! library's [`crate::PluginChannel`] and the `hector-plugin-remote` executable send their
//! calls through this.
//!
//! The HTTP/2 client is `h2` itself rather than hyper's wrapper: it sends a call's headers
//! and message in one write (hyper waits for flow-control credit between the two, which
//! costs the plugin an extra wake-up per call), and it says exactly whether a stream was
//! opened, which is what retrying safely depends on.
//!
//! A plugin that published certificates is reached over TLS pinned to them ([`PluginTls`]);
//! every call, `Health` probes included, carries the caller's token when there is one.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use h2::client::SendRequest;
use http::header::{CONNECTION, CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::Status;

use hector_plugin_sdk::proto::{HealthRequest, HealthResponse};
use hector_plugin_sdk::tls;
use hector_plugin_sdk::token::{AUTHORIZATION, TokenSource};

use crate::balance::{EndpointSet, Failure, Observed, Stage};
use crate::body::{ReadError, Remote, read_all, status_response};
use crate::deadline;
use crate::secure::PluginTls;
use crate::socket::{SharedStream, peer_closed};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Per-stream and per-connection receive windows: large enough that streaming answers are
/// not held back by flow control on a fast network (hyper's client defaults).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// The largest `Health` answer read.
const MAX_HEALTH_BYTES: usize = 64 * 1024;

type Body = tonic::body::Body;

/// Which endpoint answered a call; every response [`Pool::forward`] returns carries it in its
/// extensions (tonic hands them on: `response.extensions().get::<Served>()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Served {
    /// The endpoint the call was sent to.
    pub endpoint: SocketAddr,
    /// This side's address of the connection it went over. Through a Service's virtual IP,
    /// the endpoint is that IP, and this is what tells connections apart.
    pub local: Option<SocketAddr>,
}

/// A failed attempt on one endpoint.
#[derive(Debug)]
pub struct AttemptError {
    /// What kind of failure, for retrying and health.
    pub failure: Failure,
    /// What happened, for people.
    pub detail: String,
}

/// The parts of the caller's request that every attempt reuses.
#[derive(Clone, Debug)]
pub struct Call {
    /// `/service/method`.
    pub path: PathAndQuery,
    /// Metadata and gRPC headers, passed on unchanged except `grpc-timeout`.
    pub headers: HeaderMap,
    /// The message.
    pub body: Bytes,
    /// The caller's deadline, from `grpc-timeout`.
    pub deadline: Option<Instant>,
}

/// The largest request message forwarded (plugin messages are small; this bounds memory).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

impl Call {
    /// A call from a gRPC request received at `received`: its path, headers, whole message
    /// and the deadline its `grpc-timeout` sets; or the error response to send back.
    pub async fn read<B>(
        request: Request<B>,
        received: Instant,
    ) -> Result<Self, Response<tonic::body::Body>>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        // The caller's timeout bounds every attempt.
        let deadline = parts
            .headers
            .get(deadline::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(deadline::parse)
            .map(|d| received + d);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let body = match read_all(body, MAX_REQUEST_BYTES).await {
            Ok(b) => b,
            Err(e @ ReadError::TooLarge { .. }) => {
                return Err(status_response(Status::resource_exhausted(e.to_string())));
            }
            Err(e) => return Err(status_response(Status::cancelled(e.to_string()))),
        };
        Ok(Call {
            path,
            headers: parts.headers,
            body,
            deadline,
        })
    }

    /// The request head for one attempt on `authority` over a connection of `scheme`
    /// (`http`, or `https` over TLS), with the time left as its timeout.
    fn request(&self, authority: &Authority, scheme: &str, left: Option<Duration>) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        // Building from parsed parts cannot fail; the bare path is a harmless fallback.
        *request.uri_mut() = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query(self.path.clone())
            .build()
            .unwrap_or_else(|_| Uri::from(self.path.clone()));
        let headers = request.headers_mut();
        *headers = self.headers.clone();
        // HTTP/2 forbids connection-specific headers; a gRPC host sends none, but a stray
        // one must not make every call fail.
        for name in [
            CONNECTION,
            http::header::UPGRADE,
            http::header::TRANSFER_ENCODING,
        ] {
            headers.remove(name);
        }
        if headers.get(TE).is_some_and(|v| v != "trailers") {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
        if let Some(left) = left
            && let Ok(v) = HeaderValue::from_str(&deadline::encode(left))
        {
            headers.insert(deadline::HEADER, v);
        }
        request
    }
}

/// An open connection: its sender, this side's address of it, its socket (to see a peer's
/// close before a call is sent over it), and over TLS the fingerprint of the certificate it
/// accepted (to drop it when the plugin withdraws that certificate).
#[derive(Clone)]
struct Conn {
    sender: SendRequest<Bytes>,
    local: Option<SocketAddr>,
    socket: Arc<tokio::net::TcpStream>,
    fingerprint: Option<String>,
}

impl Conn {
    /// Whether the connection is still acceptable under `tls`: plaintext when there is none,
    /// else a certificate that is still pinned.
    fn fits(&self, tls: Option<&PluginTls>) -> bool {
        match (tls, &self.fingerprint) {
            (None, None) => true,
            (Some(t), Some(fp)) => t.accepts(fp),
            _ => false,
        }
    }
}

/// One endpoint's connection, shared by every call to it.
struct Slot {
    authority: Authority,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

/// The endpoints of the remote plugin and their connections.
pub struct Pool {
    set: Mutex<EndpointSet>,
    slots: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
    /// What the endpoints are, for messages ("\"echo\" (published in …)", "at a:1,b:2").
    label: Mutex<String>,
    /// TLS for new connections; none means plaintext.
    tls: Mutex<Option<PluginTls>>,
    /// The caller's token, added to every call.
    token: Mutex<TokenSource>,
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

/// Locks a mutex, recovering the data if another thread panicked while holding it (every
/// update under these locks is a single step, so the data stays consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    /// An empty pool.
    pub fn new() -> Self {
        Self {
            set: Mutex::new(EndpointSet::default()),
            slots: Mutex::new(HashMap::new()),
            label: Mutex::new(String::new()),
            tls: Mutex::new(None),
            token: Mutex::new(TokenSource::none()),
        }
    }

    /// Sets the TLS of new connections (none: plaintext). Open connections that it would not
    /// accept — a withdrawn certificate, a change between TLS and plaintext — are closed once
    /// their calls finish.
    pub fn set_tls(&self, tls: Option<PluginTls>) {
        {
            let mut current = lock(&self.tls);
            if *current == tls {
                return;
            }
            match &tls {
                Some(t) => {
                    tracing::info!(certificates = ?t.fingerprints(), "remote plugin's certificates changed")
                }
                None => tracing::info!("remote plugin published no certificates; plaintext"),
            }
            current.clone_from(&tls);
        }
        lock(&self.slots).retain(|_, slot| match slot.conn.try_lock() {
            Ok(mut conn) => {
                if conn.as_ref().is_some_and(|c| !c.fits(tls.as_ref())) {
                    *conn = None;
                }
                true
            }
            // A connection being opened under the old settings: the slot is dropped, and the
            // next call opens a new one under the new settings.
            Err(_) => false,
        });
    }

    /// The TLS new connections use.
    pub fn tls(&self) -> Option<PluginTls> {
        lock(&self.tls).clone()
    }

    /// Sets the token every call carries from now on.
    pub fn set_token(&self, token: TokenSource) {
        *lock(&self.token) = token;
    }

    /// The token calls carry.
    pub fn token(&self) -> TokenSource {
        lock(&self.token).clone()
    }

    /// Sets the text naming the target in messages.
    pub fn set_label(&self, label: String) {
        *lock(&self.label) = label;
    }

    /// The text naming the target.
    pub fn label(&self) -> String {
        lock(&self.label).clone()
    }

    /// Makes `addrs` the endpoint set; connections to endpoints that left are closed once
    /// their calls finish.
    pub fn set_endpoints(&self, addrs: Vec<SocketAddr>) {
        let (change, now) = {
            let mut set = lock(&self.set);
            let change = set.replace(addrs);
            (change, set.addrs())
        };
        if change.is_empty() {
            return;
        }
        let mut slots = lock(&self.slots);
        for gone in &change.removed {
            slots.remove(gone);
        }
        tracing::info!(added = ?change.added, removed = ?change.removed, endpoints = ?now, "remote endpoints changed");
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        lock(&self.set).addrs()
    }

    /// The endpoints that are out of the rotation.
    pub fn down(&self) -> Vec<SocketAddr> {
        lock(&self.set).down()
    }

    /// Puts an endpoint back into the rotation.
    pub fn mark_up(&self, addr: SocketAddr) {
        if lock(&self.set).mark_up(addr) {
            tracing::info!(endpoint = %addr, "remote endpoint back in rotation");
        }
    }

    /// Takes an endpoint out of the rotation.
    pub fn mark_down(&self, addr: SocketAddr, reason: &str) {
        if lock(&self.set).mark_down(addr, reason) {
            tracing::warn!(endpoint = %addr, reason, "remote endpoint out of rotation");
        }
    }

    fn slot(&self, addr: SocketAddr) -> Arc<Slot> {
        lock(&self.slots)
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(Slot {
                    authority: Authority::try_from(addr.to_string())
                        .unwrap_or_else(|_| Authority::from_static("remote-plugin")),
                    conn: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }

    /// Sends one call, balancing and retrying as [`crate::balance`] decides, and returns the
    /// response (errors become trailers-only gRPC statuses; successes carry [`Served`]).
    pub async fn forward(&self, call: Call) -> Response<Body> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        loop {
            let picked = lock(&self.set).pick(&tried);
            let Some(addr) = picked else {
                return status_response(self.unavailable(&tried, &failures));
            };
            let left = match call.deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => {
                        return status_response(Status::deadline_exceeded(
                            "deadline exceeded before the remote plugin answered",
                        ));
                    }
                },
                None => None,
            };
            match self.attempt(addr, &call, left).await {
                Ok((response, local)) => {
                    self.mark_up(addr);
                    let endpoint = addr.to_string();
                    let mut response = response.map(|b| Body::new(Remote::new(b, endpoint)));
                    response.extensions_mut().insert(Served {
                        endpoint: addr,
                        local,
                    });
                    return response;
                }
                Err(e) => {
                    if e.failure.endpoint_down() {
                        self.mark_down(addr, &e.detail);
                    }
                    if e.failure.retry_safe() {
                        tracing::debug!(endpoint = %addr, failure = %e.failure, "retrying on another endpoint");
                        tried.push(addr);
                        failures.push(format!("{addr}: {}", e.detail));
                        continue;
                    }
                    return status_response(sent_call_failed(&call, addr, &e));
                }
            }
        }
    }

    fn unavailable(&self, tried: &[SocketAddr], failures: &[String]) -> Status {
        let label = self.label();
        if tried.is_empty() {
            return Status::unavailable(format!("remote plugin {label} has no endpoint to call"));
        }
        Status::unavailable(format!(
            "cannot reach remote plugin {label}: {}",
            failures.join("; ")
        ))
    }

    /// One attempt on one endpoint: the response head and this side's address of the
    /// connection. A cached connection found dead before the call was handed to it is
    /// replaced once, on the same endpoint.
    async fn attempt(
        &self,
        addr: SocketAddr,
        call: &Call,
        left: Option<Duration>,
    ) -> Result<(Response<h2::RecvStream>, Option<SocketAddr>), AttemptError> {
        let slot = self.slot(addr);
        let connect_within = left.map_or(CONNECT_TIMEOUT, |l| l.min(CONNECT_TIMEOUT));
        let tls = self.tls();
        let (conn, reused) = live_conn(&slot, addr, false, connect_within, tls.as_ref()).await?;
        let (sender, local, secure) = match conn.sender.ready().await {
            Ok(s) => (s, conn.local, conn.fingerprint.is_some()),
            Err(e) if reused => {
                tracing::debug!(endpoint = %addr, error = %e, "connection closed; reconnecting");
                let (fresh, _) = live_conn(&slot, addr, true, connect_within, tls.as_ref()).await?;
                let sender = fresh.sender.ready().await.map_err(|e| not_sent(&e))?;
                (sender, fresh.local, fresh.fingerprint.is_some())
            }
            Err(e) => return Err(not_sent(&e)),
        };
        let scheme = if secure { "https" } else { "http" };
        let mut request = call.request(&slot.authority, scheme, left);
        // The caller's identity is this side's, whatever the request came with.
        if let Some(token) = self.token().header() {
            request.headers_mut().insert(AUTHORIZATION, token);
        }
        let response = send(sender, request, call.body.clone()).await?;
        Ok((response, local))
    }

    /// Calls the plugin's own `Health` RPC of `service` on one endpoint.
    pub async fn health(
        &self,
        addr: SocketAddr,
        service: &str,
        timeout: Duration,
    ) -> Result<HealthResponse, ProbeError> {
        let path = PathAndQuery::try_from(format!("/{service}/Health"))
            .map_err(|e| ProbeError::Failed(format!("invalid service {service:?}: {e}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let call = Call {
            path,
            headers,
            body: grpc_frame(&HealthRequest {}),
            deadline: None,
        };
        let run = async {
            let (response, _) = self
                .attempt(addr, &call, Some(timeout))
                .await
                .map_err(|e| ProbeError::Failed(e.detail))?;
            unary_answer::<HealthResponse>(response).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Failed(format!(
                "Health did not answer within {}ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// The status for a call that failed after it was sent (it is not retried). Once the caller's
/// deadline has passed, that is what the failure means (a gRPC server cancels the stream when
/// the deadline it was given passes); a peer's cancel is a cancel; anything else is the
/// plugin becoming unreachable.
fn sent_call_failed(call: &Call, addr: SocketAddr, e: &AttemptError) -> Status {
    if call.deadline.is_some_and(|d| Instant::now() >= d) {
        return Status::deadline_exceeded(format!(
            "deadline exceeded while remote plugin at {addr} handled the call ({})",
            e.detail
        ));
    }
    match e.failure {
        Failure::Cancelled => {
            Status::cancelled(format!("remote plugin at {addr} cancelled the call"))
        }
        _ => Status::unavailable(format!(
            "remote plugin at {addr} failed during the call: {}",
            e.detail
        )),
    }
}

/// Sends the head and the message of one call in one go and waits for the response head.
async fn send(
    mut sender: SendRequest<Bytes>,
    request: Request<()>,
    body: Bytes,
) -> Result<Response<h2::RecvStream>, AttemptError> {
    let end = body.is_empty();
    // An error here means no stream was opened: nothing was sent.
    let (response, mut stream) = sender
        .send_request(request, end)
        .map_err(|e| not_sent(&e))?;
    if !end && let Err(e) = stream.send_data(body, true) {
        return Err(stream_error(&e));
    }
    response.await.map_err(|e| stream_error(&e))
}

/// A length-prefixed, uncompressed gRPC message.
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    // Encoding into a Vec cannot run out of room.
    let _ = message.encode(&mut out);
    Bytes::from(out)
}

/// Why a `Health` probe of one endpoint gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The plugin side refused this caller (`UNAUTHENTICATED` or `PERMISSION_DENIED`).
    #[error("{}", status_text(&Status::new(*code, message.clone())))]
    Refused {
        /// The status code.
        code: tonic::Code,
        /// The server's message, which names the caller and the rule.
        message: String,
    },
    /// Anything else: unreachable, unhealthy, a malformed answer, another status.
    #[error("{0}")]
    Failed(String),
}

impl ProbeError {
    fn of_status(status: &Status) -> Self {
        match status.code() {
            code @ (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
                ProbeError::Refused {
                    code,
                    message: status.message().to_string(),
                }
            }
            _ => ProbeError::Failed(status_text(status)),
        }
    }
}

/// Reads a unary gRPC answer: its status (from the head or the trailers) and its message.
async fn unary_answer<M: prost::Message + Default>(
    response: Response<h2::RecvStream>,
) -> Result<M, ProbeError> {
    let failed = ProbeError::Failed;
    let (head, mut stream) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(failed(format!("HTTP status {}", head.status)));
    }
    if let Some(status) = Status::from_header_map(&head.headers)
        && status.code() != tonic::Code::Ok
    {
        return Err(ProbeError::of_status(&status));
    }
    let mut data = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk.map_err(|e| failed(describe(&e)))?;
        let _ = stream.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        if data.len() > MAX_HEALTH_BYTES {
            return Err(failed("answer too large".into()));
        }
    }
    let trailers = stream.trailers().await.map_err(|e| failed(describe(&e)))?;
    if let Some(status) = trailers.as_ref().and_then(Status::from_header_map)
        && status.code() != tonic::Code::Ok
    {
        return Err(ProbeError::of_status(&status));
    }
    match data.as_slice() {
        [0, a, b, c, d, message @ ..]
            if u32::from_be_bytes([*a, *b, *c, *d]) as usize == message.len() =>
        {
            M::decode(message).map_err(|e| failed(format!("undecodable answer: {e}")))
        }
        _ => Err(failed("malformed gRPC answer".into())),
    }
}

/// A gRPC status as a short reason.
fn status_text(s: &Status) -> String {
    match (s.code(), s.message()) {
        (tonic::Code::Unimplemented, _) => {
            "the endpoint does not serve this plugin type (Unimplemented)".into()
        }
        (code, "") => format!("{code:?}"),
        (code, message) => format!("{code:?}: {message}"),
    }
}

/// The endpoint's live connection, opening one if there is none or `fresh` asks for a new
/// one; the flag returned tells whether an existing connection was reused.
async fn live_conn(
    slot: &Slot,
    addr: SocketAddr,
    fresh: bool,
    timeout: Duration,
    tls: Option<&PluginTls>,
) -> Result<(Conn, bool), AttemptError> {
    let mut guard = slot.conn.lock().await;
    // A connection the peer has closed is replaced before a call goes out on it: the HTTP/2
    // client would see the close only when its connection task next reads, and a call sent
    // meanwhile would count as lost although it cannot have reached the plugin. (Over TLS a
    // peer that shuts down cleanly sends close_notify first, which looks like data here;
    // its HTTP/2 GOAWAY, sent before that, already makes such calls safe to retry.)
    if !fresh
        && let Some(c) = guard.as_ref()
        && c.fits(tls)
        && !peer_closed(&c.socket)
    {
        return Ok((c.clone(), true));
    }
    let conn = connect(addr, timeout, tls).await?;
    *guard = Some(conn.clone());
    Ok((conn, false))
}

/// Opens a TCP connection, runs the pinned TLS handshake when `tls` asks for it, and starts
/// HTTP/2 on it, all within `timeout`.
async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    pins: Option<&PluginTls>,
) -> Result<Conn, AttemptError> {
    let started = tokio::time::Instant::now();
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let mut o = Observed::at(Stage::Connect);
            o.io = Some(e.kind());
            return Err(AttemptError {
                failure: Failure::classify(&o),
                detail: io_text(&e),
            });
        }
        Err(_) => {
            return Err(AttemptError {
                failure: Failure::NoConnection,
                detail: format!("connect timed out after {}ms", timeout.as_millis()),
            });
        }
    };
    // Calls are small request/response exchanges: send each at once.
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let stream = SharedStream::new(stream);
    let socket = stream.peer();
    let Some(pins) = pins else {
        let sender = start_h2(stream, addr).await?;
        return Ok(Conn {
            sender,
            local,
            socket,
            fingerprint: None,
        });
    };
    let left = timeout.saturating_sub(started.elapsed());
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let handshake = tokio_rustls::TlsConnector::from(pins.config()).connect(name, stream);
    let stream = match tokio::time::timeout(left, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let detail = match tls::refusal(&e) {
                Some(refusal) => pins.refusal_text(addr, &refusal),
                None => format!("TLS handshake failed: {}", io_text(&e)),
            };
            return Err(AttemptError {
                failure: Failure::NoConnection,
                detail,
            });
        }
        Err(_) => {
            return Err(AttemptError {
                failure: Failure::NoConnection,
                detail: format!("TLS handshake timed out after {}ms", timeout.as_millis()),
            });
        }
    };
    let fingerprint = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .map(|cert| tls::fingerprint(cert));
    let sender = start_h2(stream, addr).await?;
    Ok(Conn {
        sender,
        local,
        socket,
        // Pinned TLS always has a certificate; an empty one still marks the connection TLS.
        fingerprint: Some(fingerprint.unwrap_or_default()),
    })
}

/// Starts HTTP/2 on an open stream and runs its connection task.
async fn start_h2<T>(stream: T, addr: SocketAddr) -> Result<SendRequest<Bytes>, AttemptError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|e| AttemptError {
            failure: Failure::NoConnection,
            detail: format!("HTTP/2 handshake failed: {}", describe(&e)),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %addr, error = %describe(&e), "remote connection ended");
        }
    });
    Ok(sender)
}

/// The connection refused a new stream: the call was never sent.
fn not_sent(e: &h2::Error) -> AttemptError {
    let mut o = Observed::at(Stage::Send);
    o.returned = true;
    AttemptError {
        failure: Failure::classify(&o),
        detail: h2_text(e),
    }
}

/// Classifies a failure of an opened stream from what the HTTP/2 client reports.
fn stream_error(e: &h2::Error) -> AttemptError {
    let mut o = Observed::at(Stage::Send);
    o.h2_reason = e.reason().map(u32::from);
    o.h2_remote = e.is_remote();
    o.h2_reset = e.is_reset();
    o.h2_go_away = e.is_go_away();
    o.io = e.get_io().map(std::io::Error::kind);
    AttemptError {
        failure: Failure::classify(&o),
        detail: h2_text(e),
    }
}

fn h2_text(e: &h2::Error) -> String {
    match e.get_io() {
        Some(io) => io_text(io),
        None => describe(e),
    }
}

/// An error and its causes in one line.
pub fn describe(e: &(dyn StdError + 'static)) -> String {
    hector_plugin_sdk::client::error_chain(e)
}

/// An I/O error in the words people use ("connection refused"), without the OS error number.
pub fn io_text(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::BrokenPipe => "connection closed".into(),
        K::TimedOut => "timed out".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_like_people_write_them() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(io_text(&refused), "connection refused");
        let other = std::io::Error::other("odd");
        assert_eq!(io_text(&other), "odd");
    }

    #[test]
    fn attempts_carry_the_deadline_left_and_the_metadata() {
        let mut headers = HeaderMap::new();
        headers.insert("x-meta", HeaderValue::from_static("v"));
        headers.insert(deadline::HEADER, HeaderValue::from_static("10S"));
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        let call = Call {
            path: PathAndQuery::from_static("/hector.plugin.LLMProvider/Generate"),
            headers,
            body: Bytes::from_static(b"\0\0\0\0\0"),
            deadline: None,
        };
        let authority = Authority::from_static("10.0.0.1:50051");
        let r = call.request(&authority, "http", Some(Duration::from_millis(1500)));
        assert_eq!(
            r.uri().to_string(),
            "http://10.0.0.1:50051/hector.plugin.LLMProvider/Generate"
        );
        assert_eq!(
            r.headers().get("x-meta").map(|v| v.as_bytes()),
            Some(&b"v"[..])
        );
        assert_eq!(
            r.headers().get(deadline::HEADER).map(|v| v.as_bytes()),
            Some(&b"1500000u"[..])
        );
        assert!(
            r.headers().get(CONNECTION).is_none(),
            "not allowed in HTTP/2"
        );
        let r = call.request(&authority, "https", None);
        assert_eq!(r.uri().scheme_str(), Some("https"));
        assert_eq!(
            r.headers().get(deadline::HEADER).map(|v| v.as_bytes()),
            Some(&b"10S"[..]),
            "without a deadline of ours the header passes unchanged"
        );
    }

    #[test]
    fn failures_after_sending_become_the_right_status() {
        let addr: SocketAddr = ([10, 0, 0, 1], 50051).into();
        let call = |deadline| Call {
            path: PathAndQuery::from_static("/hector.plugin.LLMProvider/Generate"),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            deadline,
        };
        let err = |failure| AttemptError {
            failure,
            detail: "stream error received: stream no longer needed".into(),
        };
        let s = sent_call_failed(&call(None), addr, &err(Failure::Lost));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(
            s.message()
                .contains("10.0.0.1:50051 failed during the call"),
            "{s:?}"
        );
        let s = sent_call_failed(&call(None), addr, &err(Failure::Cancelled));
        assert_eq!(s.code(), tonic::Code::Cancelled);
        let later = Instant::now() + Duration::from_secs(60);
        let s = sent_call_failed(&call(Some(later)), addr, &err(Failure::Lost));
        assert_eq!(s.code(), tonic::Code::Unavailable, "time was left");
        let past = Instant::now() - Duration::from_millis(1);
        for failure in [Failure::Cancelled, Failure::Lost] {
            let s = sent_call_failed(&call(Some(past)), addr, &err(failure));
            assert_eq!(s.code(), tonic::Code::DeadlineExceeded, "{failure}");
        }
    }

    #[test]
    fn grpc_frames_are_length_prefixed() {
        let frame = grpc_frame(&HealthResponse {
            healthy: true,
            message: "ok".into(),
        });
        assert_eq!(&frame[..5], &[0, 0, 0, 0, 6]);
        assert_eq!(frame.len(), 11);
        assert_eq!(grpc_frame(&HealthRequest {}).as_ref(), &[0, 0, 0, 0, 0]);
    }
}
