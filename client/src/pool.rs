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
//!
//! Dead and slow endpoints are found and avoided: connections are watched by HTTP/2
//! keepalive PINGs ([`crate::keepalive`]) and TCP keepalive ([`hector_plugin_sdk::net`]);
//! one connect per endpoint serves every call waiting for it (`connect.rs`); calls keep
//! their deadline to the last message; and an endpoint whose calls keep timing out or failing
//! is ejected for a while ([`Ejection`]).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use h2::client::SendRequest;
use http::header::{CONNECTION, CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use hyper::body::Bytes;
use tokio::sync::Notify;
use tonic::Status;

use hector_plugin_sdk::net::TcpKeepalive;
use hector_plugin_sdk::proto::{HealthRequest, HealthResponse};
use hector_plugin_sdk::token::{AUTHORIZATION, TokenSource};

use crate::balance::{Ejection, EndpointSet, Failure, Observed, Stage, State, failed_status};
use crate::body::{ReadError, Remote, read_all, status_response};
use crate::connect::{Conn, Connecting, IDLE, Life, Slot};
use crate::deadline;
use crate::keepalive::Keepalive;
use crate::secure::PluginTls;

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
#[derive(Clone, Debug)]
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

/// How a pool opens, watches and judges its connections. The defaults are
/// [`DEFAULT_CONNECT_TIMEOUT`], [`Keepalive::default`], [`TcpKeepalive::default`] and
/// [`Ejection::default`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// The longest opening a connection may take (TCP, TLS, HTTP/2 preface), whatever the
    /// callers' deadlines: one connect serves every call waiting for it.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive PINGs.
    pub keepalive: Keepalive,
    /// TCP keepalive and `TCP_USER_TIMEOUT`.
    pub tcp: TcpKeepalive,
    /// Outlier ejection.
    pub ejection: Ejection,
}

/// How long opening a connection may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalive: Keepalive::default(),
            tcp: TcpKeepalive::default(),
            ejection: Ejection::default(),
        }
    }
}

/// The endpoints and their connections, under one lock, so that no connection is opened
/// for an endpoint that is no longer in the set.
struct Endpoints {
    set: EndpointSet,
    slots: HashMap<SocketAddr, Arc<Slot>>,
    /// TLS for new connections; none means plaintext.
    tls: Option<Arc<PluginTls>>,
}

/// The endpoints of the remote plugin and their connections.
pub struct Pool {
    endpoints: Arc<Mutex<Endpoints>>,
    connecting: Arc<Connecting>,
    ejection: Ejection,
    /// What the endpoints are, for messages ("\"echo\" (published in …)", "at a:1,b:2").
    label: Mutex<String>,
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
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The endpoint an attempt goes to.
struct Pick {
    slot: Arc<Slot>,
    up: bool,
    tls: Option<Arc<PluginTls>>,
}

/// A call that went out and got its response head.
struct Sent {
    response: Response<h2::RecvStream>,
    local: Option<SocketAddr>,
    call: InFlight,
}

/// Why an attempt sent nothing, or what it met.
enum Missed {
    /// It failed.
    Failed(AttemptError),
    /// It waited for a connect while another endpoint's ended: pick again.
    Elsewhere,
}

/// A call in flight on a connection (its keepalive PINGs idle connections differently); it
/// ends when this is dropped.
pub(crate) struct InFlight(Arc<Life>);

impl InFlight {
    fn new(life: Arc<Life>) -> Self {
        life.activity.call_started();
        Self(life)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.activity.call_ended();
    }
}

/// What a call's response body reports when it ends: whether the endpoint answered (for
/// outlier ejection) and, as data arrives, that the connection is alive (for keepalive).
pub(crate) struct Report {
    endpoints: Arc<Mutex<Endpoints>>,
    slot: Arc<Slot>,
    call: InFlight,
    ejection: Ejection,
}

impl Report {
    /// Data arrived.
    pub fn answered(&self) {
        self.call.0.activity.answered();
    }

    /// The call ended with the gRPC status `code` (none: the plugin side sent none).
    pub fn finished(self, code: Option<tonic::Code>) {
        match code {
            Some(code) if failed_status(code) => record_failure(
                &self.endpoints,
                &self.slot,
                &self.ejection,
                &format!("the plugin side answered {code:?}"),
            ),
            _ => {
                // A plain load first: most calls find nothing to reset.
                if self.slot.failures.load(Ordering::Relaxed) != 0 {
                    self.slot.failures.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// The caller's deadline passed while the answer was still coming.
    pub fn stalled(self) {
        record_failure(
            &self.endpoints,
            &self.slot,
            &self.ejection,
            "an answer stalled past the deadline",
        );
    }

    /// The connection failed while the answer was coming.
    pub fn lost(self, reason: &str) {
        let reason = self.call.0.reason().unwrap_or(reason);
        if lock(&self.endpoints).set.mark_down(self.slot.addr, reason) {
            tracing::warn!(endpoint = %self.slot.addr, reason, "remote endpoint out of rotation");
        }
    }
}

/// How close to its deadline a caller must give up for the endpoint to be blamed: callers
/// compute their deadline before sending, this side on receipt, so theirs passes first.
pub(crate) const CANCEL_MARGIN: Duration = Duration::from_millis(100);

/// Whether a call given up on now had (about) reached `deadline`.
pub(crate) fn near_deadline(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|at| Instant::now() + CANCEL_MARGIN >= at)
}

/// Counts a call waiting for its response head as a timeout of its endpoint when the caller
/// drops it at its deadline (disarmed by clearing `deadline` once the wait ends).
struct CancelledNearDeadline<'a> {
    endpoints: &'a Mutex<Endpoints>,
    slot: &'a Slot,
    ejection: &'a Ejection,
    deadline: Option<Instant>,
}

impl Drop for CancelledNearDeadline<'_> {
    fn drop(&mut self) {
        if near_deadline(self.deadline) {
            record_failure(
                self.endpoints,
                self.slot,
                self.ejection,
                "the caller's deadline passed before an answer",
            );
        }
    }
}

/// Counts a call that failed on `slot`'s endpoint, and ejects the endpoint when that makes
/// too many in a row.
fn record_failure(endpoints: &Mutex<Endpoints>, slot: &Slot, ejection: &Ejection, reason: &str) {
    let failures = slot
        .failures
        .fetch_add(1, Ordering::Relaxed)
        .saturating_add(1);
    if !ejection.due(failures) {
        return;
    }
    // Counted afresh whether or not the ejection happens: an endpoint that was out, or the
    // last one up, needs as many failures again.
    slot.failures.store(0, Ordering::Relaxed);
    let ejected = lock(endpoints)
        .set
        .eject(slot.addr, reason, Instant::now(), ejection);
    if let Some(period) = ejected {
        tracing::warn!(
            endpoint = %slot.addr,
            failures,
            reason,
            seconds = period.as_secs_f64(),
            "remote endpoint ejected"
        );
    }
}

/// The gRPC status code in `headers`, if any.
fn grpc_code(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

impl Pool {
    /// An empty pool with the default settings.
    pub fn new() -> Self {
        Self::with_settings(PoolSettings::default())
    }

    /// An empty pool with `settings`.
    pub fn with_settings(settings: PoolSettings) -> Self {
        let endpoints = Arc::new(Mutex::new(Endpoints {
            set: EndpointSet::default(),
            slots: HashMap::new(),
            tls: None,
        }));
        let gone = Arc::downgrade(&endpoints);
        Self {
            endpoints,
            connecting: Arc::new(Connecting {
                timeout: settings.connect_timeout,
                keepalive: settings.keepalive,
                tcp: settings.tcp,
                open: Arc::new(AtomicUsize::new(0)),
                ended: AtomicU64::new(0),
                changed: Notify::new(),
                // A connect that failed takes its endpoint out even when no call waited.
                on_failure: Box::new(move |addr, e| {
                    if let Some(endpoints) = gone.upgrade()
                        && e.failure.endpoint_down()
                        && lock(&endpoints).set.mark_down(addr, &e.detail)
                    {
                        tracing::warn!(endpoint = %addr, reason = e.detail, "remote endpoint out of rotation");
                    }
                }),
            }),
            ejection: settings.ejection,
            label: Mutex::new(String::new()),
            token: Mutex::new(TokenSource::none()),
        }
    }

    /// The settings this pool was made with.
    pub fn settings(&self) -> PoolSettings {
        PoolSettings {
            connect_timeout: self.connecting.timeout,
            keepalive: self.connecting.keepalive,
            tcp: self.connecting.tcp,
            ejection: self.ejection,
        }
    }

    /// Sets the TLS of new connections (none: plaintext). Open connections that it would not
    /// accept — a withdrawn certificate, a change between TLS and plaintext — are closed once
    /// their calls finish.
    pub fn set_tls(&self, tls: Option<PluginTls>) {
        let mut endpoints = lock(&self.endpoints);
        if endpoints.tls.as_deref() == tls.as_ref() {
            return;
        }
        match &tls {
            Some(t) => {
                tracing::info!(certificates = ?t.fingerprints(), "remote plugin's certificates changed")
            }
            None => tracing::info!("remote plugin published no certificates; plaintext"),
        }
        for slot in endpoints.slots.values_mut() {
            // A connection being opened under the old settings: a new slot takes over, and
            // the next call opens a connection under the new settings.
            if !slot.keep_under(tls.as_ref()) {
                *slot = Slot::new(slot.addr);
            }
        }
        endpoints.tls = tls.map(Arc::new);
    }

    /// The TLS new connections use.
    pub fn tls(&self) -> Option<PluginTls> {
        lock(&self.endpoints).tls.as_deref().cloned()
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
        let mut endpoints = lock(&self.endpoints);
        let change = endpoints.set.replace(addrs);
        if change.is_empty() {
            return;
        }
        for gone in &change.removed {
            endpoints.slots.remove(gone);
        }
        let now = endpoints.set.addrs();
        drop(endpoints);
        tracing::info!(added = ?change.added, removed = ?change.removed, endpoints = ?now, "remote endpoints changed");
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        lock(&self.endpoints).set.addrs()
    }

    /// The endpoints that are out of the rotation (down or ejected).
    pub fn down(&self) -> Vec<SocketAddr> {
        lock(&self.endpoints).set.down()
    }

    /// The endpoints ejected now for failing calls (see [`Ejection`]).
    pub fn ejected(&self) -> Vec<SocketAddr> {
        lock(&self.endpoints).set.ejected()
    }

    /// The endpoints to probe now: those down, and those whose ejection has run out.
    pub fn to_probe(&self) -> Vec<SocketAddr> {
        lock(&self.endpoints).set.to_probe(Instant::now())
    }

    /// The state of endpoint `addr`, if it is one.
    pub fn state(&self, addr: SocketAddr) -> Option<State> {
        lock(&self.endpoints).set.state(addr).cloned()
    }

    /// How many endpoints have a connection slot (at most one per endpoint in the set).
    pub fn slots(&self) -> usize {
        lock(&self.endpoints).slots.len()
    }

    /// How many sockets this pool has open now, including those of connections that left
    /// the pool and still carry calls.
    pub fn open_sockets(&self) -> usize {
        self.connecting.open.load(Ordering::Relaxed)
    }

    /// Puts an endpoint back into the rotation (an ejected one only once its ejection ran out).
    pub fn mark_up(&self, addr: SocketAddr) {
        if lock(&self.endpoints).set.mark_up(addr, Instant::now()) {
            tracing::info!(endpoint = %addr, "remote endpoint back in rotation");
        }
    }

    /// Takes an endpoint out of the rotation.
    pub fn mark_down(&self, addr: SocketAddr, reason: &str) {
        if lock(&self.endpoints).set.mark_down(addr, reason) {
            tracing::warn!(endpoint = %addr, reason, "remote endpoint out of rotation");
        }
    }

    /// The endpoint for the next attempt (see [`EndpointSet::pick_ranked`]): those with an
    /// open connection first, then those without, then those being connected. Every endpoint
    /// that is up and has no connection gets one started now, so that it joins the rotation
    /// without a call waiting for it while others could answer.
    fn pick(&self, tried: &[SocketAddr]) -> Option<Pick> {
        let mut guard = lock(&self.endpoints);
        let endpoints = &mut *guard;
        let tls = endpoints.tls.clone();
        for addr in endpoints.set.up() {
            let slot = endpoints
                .slots
                .entry(addr)
                .or_insert_with(|| Slot::new(addr));
            if slot.phase() == IDLE {
                slot.prepare(&self.connecting, tls.as_ref());
            }
        }
        let slots = &endpoints.slots;
        let rank = |addr: SocketAddr| slots.get(&addr).map_or(IDLE, |s| s.phase());
        let (addr, up) = endpoints.set.pick_ranked(tried, rank)?;
        let slot = endpoints
            .slots
            .entry(addr)
            .or_insert_with(|| Slot::new(addr))
            .clone();
        Some(Pick { slot, up, tls })
    }

    /// Endpoint `addr`'s slot, when it is an endpoint.
    fn slot_of(&self, addr: SocketAddr) -> Option<Pick> {
        let mut guard = lock(&self.endpoints);
        let endpoints = &mut *guard;
        if !endpoints.set.contains(addr) {
            return None;
        }
        let slot = endpoints
            .slots
            .entry(addr)
            .or_insert_with(|| Slot::new(addr))
            .clone();
        Some(Pick {
            slot,
            up: false,
            tls: endpoints.tls.clone(),
        })
    }

    /// Sends one call, balancing and retrying as [`crate::balance`] decides, and returns the
    /// response (errors become trailers-only gRPC statuses; successes carry [`Served`]). The
    /// call's deadline is kept here, to its last message.
    pub async fn forward(&self, call: Call) -> Response<Body> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        loop {
            let left = match call.deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return status_response(deadline_passed(&failures)),
                },
                None => None,
            };
            let ended = self.connecting.ended();
            let Some(pick) = self.pick(&tried) else {
                return status_response(self.unavailable(&tried, &failures));
            };
            let addr = pick.slot.addr;
            let e = match self.attempt(&pick, &call, left, Some(ended)).await {
                Ok(sent) => {
                    if !pick.up {
                        self.mark_up(addr);
                    }
                    let report = Report {
                        endpoints: self.endpoints.clone(),
                        slot: pick.slot,
                        call: sent.call,
                        ejection: self.ejection,
                    };
                    let (parts, stream) = sent.response.into_parts();
                    let body = Remote::new(stream, addr.to_string()).with_deadline(call.deadline);
                    let body = if hyper::body::Body::is_end_stream(&body) {
                        // Trailers-only: the call ended with its head.
                        report.finished(grpc_code(&parts.headers));
                        body
                    } else {
                        body.with_report(report)
                    };
                    let mut response = Response::from_parts(parts, Body::new(body));
                    response.extensions_mut().insert(Served {
                        endpoint: addr,
                        local: sent.local,
                    });
                    return response;
                }
                Err(Missed::Elsewhere) => continue,
                Err(Missed::Failed(e)) => e,
            };
            if e.failure == Failure::TimedOut {
                record_failure(&self.endpoints, &pick.slot, &self.ejection, &e.detail);
                return status_response(Status::deadline_exceeded(format!(
                    "deadline exceeded: remote plugin at {addr} did not answer in time"
                )));
            }
            if e.failure.endpoint_down() {
                self.mark_down(addr, &e.detail);
            }
            if !e.failure.retry_safe() {
                return status_response(sent_call_failed(&call, addr, &e));
            }
            tracing::debug!(endpoint = %addr, failure = %e.failure, "retrying on another endpoint");
            tried.push(addr);
            failures.push(format!("{addr}: {}", e.detail));
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

    /// One attempt on one endpoint: the response head, this side's address of the
    /// connection and the call's place on it. A cached connection found dead before the call
    /// was handed to it is replaced once, on the same endpoint. With `switch` (the count of
    /// ended connects when the endpoint was picked), a call waiting for this endpoint's
    /// connect gives up on it when another connect ends first: another endpoint may be ready.
    async fn attempt(
        &self,
        pick: &Pick,
        call: &Call,
        left: Option<Duration>,
        switch: Option<u64>,
    ) -> Result<Sent, Missed> {
        let deadline = call.deadline;
        let slot = &pick.slot;
        let tls = pick.tls.as_ref();
        let ready = async {
            let (conn, reused) = self.connection(slot, tls, switch).await?;
            match conn.sender.clone().ready().await {
                Ok(sender) => Ok((sender, conn)),
                Err(e) if reused => {
                    tracing::debug!(endpoint = %slot.addr, error = %e, "connection closed; reconnecting");
                    let (fresh, _) = slot
                        .connection(&self.connecting, tls, Some(conn.id))
                        .await
                        .map_err(Missed::Failed)?;
                    let sender = fresh
                        .sender
                        .clone()
                        .ready()
                        .await
                        .map_err(|e| Missed::Failed(not_sent(&e)))?;
                    Ok((sender, fresh))
                }
                Err(e) => Err(Missed::Failed(not_sent(&e))),
            }
        };
        // Until the call goes out, it may go elsewhere; the deadline only stops the waiting.
        let (sender, conn) = match deadline {
            Some(at) => tokio::time::timeout_at(at.into(), ready)
                .await
                .unwrap_or_else(|_| Err(Missed::Failed(waited(slot.addr)))),
            None => ready.await,
        }?;
        let scheme = if conn.fingerprint.is_some() {
            "https"
        } else {
            "http"
        };
        let mut request = call.request(&slot.authority, scheme, left);
        // The caller's identity is this side's, whatever the request came with.
        if let Some(token) = self.token().header() {
            request.headers_mut().insert(AUTHORIZATION, token);
        }
        let in_flight = InFlight::new(conn.life.clone());
        let sending = send(sender, request, call.body.clone());
        // The caller may give up at its own deadline a moment before ours (it computed the
        // deadline before sending, this side on receipt) and drop this future: that is still a
        // call the endpoint did not answer in time.
        let mut cancelled = CancelledNearDeadline {
            endpoints: &self.endpoints,
            slot,
            ejection: &self.ejection,
            deadline,
        };
        let response = match deadline {
            Some(at) => match tokio::time::timeout_at(at.into(), sending).await {
                Ok(r) => r,
                Err(_) => Err(AttemptError {
                    failure: Failure::TimedOut,
                    detail: "no answer before the deadline".into(),
                }),
            },
            None => sending.await,
        }
        .map_err(|mut e| {
            cancelled.deadline = None;
            // A connection this side closed for want of an answer to its PING says so.
            if let Some(reason) = conn.life.reason() {
                e.detail = reason.to_string();
            }
            Missed::Failed(e)
        })?;
        cancelled.deadline = None;
        conn.life.activity.answered();
        Ok(Sent {
            response,
            local: conn.local,
            call: in_flight,
        })
    }

    /// `slot`'s connection (see [`Slot::connection`]); with `switch`, [`Missed::Elsewhere`]
    /// when another connect ends while this one is still under way.
    async fn connection(
        &self,
        slot: &Arc<Slot>,
        tls: Option<&Arc<PluginTls>>,
        switch: Option<u64>,
    ) -> Result<(Conn, bool), Missed> {
        let failed = Missed::Failed;
        let waiting = slot.connection(&self.connecting, tls, None);
        let mut waiting = std::pin::pin!(waiting);
        // Most calls find the connection open.
        if let Poll::Ready(r) = futures::poll!(waiting.as_mut()) {
            return r.map_err(failed);
        }
        let Some(seen) = switch else {
            return waiting.await.map_err(failed);
        };
        let notified = self.connecting.changed.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if self.connecting.ended() != seen {
            return Err(Missed::Elsewhere);
        }
        tokio::select! {
            biased;
            r = waiting.as_mut() => r.map_err(failed),
            () = notified => match futures::poll!(waiting.as_mut()) {
                Poll::Ready(r) => r.map_err(failed),
                Poll::Pending => Err(Missed::Elsewhere),
            },
        }
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
        let Some(pick) = self.slot_of(addr) else {
            return Err(ProbeError::Failed(format!("{addr} is not an endpoint")));
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let call = Call {
            path,
            headers,
            body: grpc_frame(&HealthRequest {}),
            // Kept by the timeout below, which says what did not answer.
            deadline: None,
        };
        let run = async {
            let sent = match self.attempt(&pick, &call, Some(timeout), None).await {
                Ok(sent) => sent,
                Err(Missed::Failed(e)) => return Err(ProbeError::Failed(e.detail)),
                Err(Missed::Elsewhere) => {
                    return Err(ProbeError::Failed("no connection".to_string()));
                }
            };
            let answer = unary_answer::<HealthResponse>(sent.response).await;
            drop(sent.call);
            answer
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

/// The status for a call whose deadline passed before any endpoint took it, with what the
/// attempts met.
fn deadline_passed(failures: &[String]) -> Status {
    if failures.is_empty() {
        return Status::deadline_exceeded("deadline exceeded before the remote plugin answered");
    }
    Status::deadline_exceeded(format!(
        "deadline exceeded before the remote plugin answered ({})",
        failures.join("; ")
    ))
}

/// The caller's deadline passed while it waited for a connection to `addr`: nothing was sent.
fn waited(addr: SocketAddr) -> AttemptError {
    AttemptError {
        failure: Failure::NotSent,
        detail: format!("no connection to {addr} was ready by the deadline"),
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
