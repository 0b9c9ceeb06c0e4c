//! Loopback servers for the liveness tests: an LLM plugin that can be told to stall, a TCP
//! proxy that can be frozen (it stops passing bytes on without closing anything, like a
//! stopped process or a black-holed network), and a listener whose connects never complete.
//! Everything stops when dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hector_plugin_client::pool::Call;
use hector_plugin_sdk::proto::llm_provider_server::{LlmProvider, LlmProviderServer};
use hector_plugin_sdk::proto::*;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::{Code, Request, Response, Status};

/// Test results.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the plugin does with `Generate` and the first chunk of `GenerateStreaming`.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// `Generate` never answers.
    pub stall: AtomicBool,
    /// Calls received (both methods).
    pub calls: AtomicUsize,
}

struct Plugin {
    tag: String,
    behaviour: Arc<Behaviour>,
}

#[tonic::async_trait]
impl LlmProvider for Plugin {
    type GenerateStreamingStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<StreamChunk, Status>> + Send>>;

    async fn initialize(
        &self,
        _: Request<InitializeRequest>,
    ) -> Result<Response<InitializeResponse>, Status> {
        Ok(Response::new(InitializeResponse {
            success: true,
            error: String::new(),
        }))
    }
    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        Ok(Response::new(ShutdownResponse::default()))
    }
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            healthy: true,
            message: self.tag.clone(),
        }))
    }
    async fn get_manifest(
        &self,
        _: Request<ManifestRequest>,
    ) -> Result<Response<ManifestResponse>, Status> {
        Ok(Response::new(ManifestResponse::default()))
    }
    async fn get_status(
        &self,
        _: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            status: "ready".into(),
        }))
    }
    async fn generate(
        &self,
        _: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        self.behaviour.calls.fetch_add(1, Ordering::SeqCst);
        if self.behaviour.stall.load(Ordering::SeqCst) {
            // Until the caller gives up (the server then drops this future).
            std::future::pending::<()>().await;
        }
        Ok(Response::new(GenerateResponse {
            text: self.tag.clone(),
            ..Default::default()
        }))
    }
    /// Two chunks; with the text `stall`, one and then nothing, the stream left open.
    async fn generate_streaming(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamingStream>, Status> {
        self.behaviour.calls.fetch_add(1, Ordering::SeqCst);
        let stall = request
            .get_ref()
            .messages
            .last()
            .is_some_and(|m| m.content == "stall");
        let first = tokio_stream::iter([Ok(StreamChunk {
            text: self.tag.clone(),
            ..Default::default()
        })]);
        if stall {
            use tokio_stream::StreamExt;
            Ok(Response::new(Box::pin(
                first.chain(tokio_stream::pending()),
            )))
        } else {
            let second = StreamChunk {
                text: "done".into(),
                ..Default::default()
            };
            use tokio_stream::StreamExt;
            Ok(Response::new(Box::pin(
                first.chain(tokio_stream::iter([Ok(second)])),
            )))
        }
    }
    async fn get_model_info(&self, _: Request<Empty>) -> Result<Response<ModelInfo>, Status> {
        Ok(Response::new(ModelInfo::default()))
    }
}

/// A plugin on a loopback port.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it does, and what it saw.
    pub behaviour: Arc<Behaviour>,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts a plugin answering with `tag`.
    pub async fn start(tag: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let behaviour = Arc::new(Behaviour::default());
        let routes = tonic::service::Routes::new(LlmProviderServer::new(Plugin {
            tag: tag.to_string(),
            behaviour: behaviour.clone(),
        }));
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let service = TowerToHyperService::new(routes.clone());
                conns.spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            behaviour,
            task,
        }
    }

    /// Calls received so far.
    pub fn calls(&self) -> usize {
        self.behaviour.calls.load(Ordering::SeqCst)
    }

    /// Makes `Generate` stall (or answer again).
    pub fn stall(&self, on: bool) {
        self.behaviour.stall.store(on, Ordering::SeqCst);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy in front of a server; frozen, it passes nothing on and closes nothing.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    frozen: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (frozen, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                conns.spawn(pass(client_read, server_write, watching.clone()));
                conns.spawn(pass(server_read, client_write, watching.clone()));
            }
        });
        Self { addr, frozen, task }
    }

    /// Stops passing bytes on, for good; connections stay open.
    pub fn freeze(&self) {
        let _ = self.frozen.send(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either closes; once frozen, what is read is kept back.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A listener whose accept queue is full, so that the kernel drops new SYNs: a connect to it
/// never completes (as with a peer behind a black hole). Holds the connection that fills it.
pub struct BlackHole {
    /// Where it listens.
    pub addr: SocketAddr,
    _listener: TcpListener,
    _filler: Vec<TcpStream>,
}

impl BlackHole {
    /// A full listener on loopback.
    pub async fn start() -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        // A backlog of 0 holds one connection that is never accepted; SYNs after it are
        // dropped.
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut filler = Vec::new();
        // Fill the queue: connects that complete are queued; the first that does not is the
        // proof that the queue is full.
        for _ in 0..4 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => filler.push(s),
                Ok(Err(e)) => panic!("connect to the filling listener: {e}"),
                Err(_) => {
                    return Self {
                        addr,
                        _listener: listener,
                        _filler: filler,
                    };
                }
            }
        }
        panic!("the listener's queue never filled");
    }
}

/// A listener that accepts connections and reads them, but never sends a byte: a process
/// that stopped, whose kernel still completes TCP handshakes.
pub struct Mute {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Mute {
    /// A mute listener on loopback.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                conns.spawn(async move {
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut stream, &mut sink).await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for Mute {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `Generate` request of `text`.
pub fn ask(text: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        tools: vec![],
    }
}

/// A request of `text` with a deadline of `timeout`.
pub fn ask_within(text: &str, timeout: Duration) -> tonic::Request<GenerateRequest> {
    let mut request = tonic::Request::new(ask(text));
    request.set_timeout(timeout);
    request
}

/// Waits (polling every 20 ms, at most `limit`) until `check` holds; false if it never did.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A `Generate` call for `Pool::forward`, with a deadline `timeout` from now.
pub fn generate_call(timeout: Duration) -> Call {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("te", HeaderValue::from_static("trailers"));
    // An empty GenerateRequest: a 5-byte gRPC frame with no message bytes.
    Call {
        path: PathAndQuery::from_static("/hector.plugin.LLMProvider/Generate"),
        headers,
        body: Bytes::from_static(&[0, 0, 0, 0, 0]),
        deadline: Some(Instant::now() + timeout),
    }
}

/// The gRPC status of a response `Pool::forward` returned: from its head (trailers-only) or,
/// for an answer, OK when its head says 200.
pub fn status_of(response: &http::Response<tonic::body::Body>) -> Code {
    match Status::from_header_map(response.headers()) {
        Some(s) => s.code(),
        None if response.status() == http::StatusCode::OK => Code::Ok,
        None => Code::Unknown,
    }
}
