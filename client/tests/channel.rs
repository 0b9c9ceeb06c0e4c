//! The balanced channel against real gRPC servers on loopback: calls spread per call, each
//! response says which endpoint served it, endpoints that stop or disappear cost no call
//! that never reached them, and a call that did reach a dying endpoint is not repeated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hector_plugin_client::{ClientError, Directory, PluginChannel, served};
use hector_plugin_sdk::PluginType;
use hector_plugin_sdk::endpoints::{EndpointsFile, PublishedPlugin, SCHEMA_VERSION};
use hector_plugin_sdk::proto::llm_provider_server::{LlmProvider, LlmProviderServer};
use hector_plugin_sdk::proto::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::task::{JoinHandle, JoinSet};
use tonic::{Code, Request, Response, Status};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An LLM that answers `TAG: TEXT`, or sleeps first for `sleep:MS`, and counts its calls.
struct Echo {
    tag: String,
    calls: Arc<AtomicUsize>,
}

fn last(req: &GenerateRequest) -> String {
    req.messages
        .last()
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl LlmProvider for Echo {
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
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let text = last(request.get_ref());
        if let Some(ms) = text.strip_prefix("sleep:").and_then(|m| m.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(Response::new(GenerateResponse {
            text: format!("{}: {text}", self.tag),
            ..Default::default()
        }))
    }
    async fn generate_streaming(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamingStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let text = format!("{}: {}", self.tag, last(request.get_ref()));
        let chunks: Vec<Result<StreamChunk, Status>> = text
            .split(' ')
            .map(|w| {
                Ok(StreamChunk {
                    text: w.to_string(),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
    async fn get_model_info(&self, _: Request<Empty>) -> Result<Response<ModelInfo>, Status> {
        Ok(Response::new(ModelInfo {
            model_name: self.tag.clone(),
            ..Default::default()
        }))
    }
}

/// A server on a loopback port; `stop` closes the listener and every connection at once, as
/// a killed process would.
struct Server {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(tag: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(AtomicUsize::new(0));
        let routes = tonic::service::Routes::new(LlmProviderServer::new(Echo {
            tag: tag.to_string(),
            calls: calls.clone(),
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
            calls,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn document(endpoints: &[SocketAddr]) -> EndpointsFile {
    let mut file = EndpointsFile {
        schema_version: SCHEMA_VERSION,
        namespace: "agents".into(),
        plugins: BTreeMap::new(),
    };
    file.plugins.insert(
        "echo".into(),
        PublishedPlugin {
            name: "echo".into(),
            plugin_type: "llm_provider".into(),
            address: "echo.agents.svc:50051".into(),
            endpoints: endpoints.iter().map(ToString::to_string).collect(),
            ..Default::default()
        },
    );
    file
}

fn ask(text: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        tools: vec![],
    }
}

#[tokio::test]
async fn calls_are_spread_per_call_and_say_where_they_landed() -> TestResult {
    let servers = [
        Server::start("s0").await,
        Server::start("s1").await,
        Server::start("s2").await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let directory = Directory::fixed(document(&addrs), "test");
    let channel = directory.plugin("echo").await?;
    assert_eq!(channel.plugin_type(), PluginType::LlmProvider);
    let mut llm = channel.llm()?;
    let mut counts: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for i in 0..300 {
        let response = llm.generate(ask(&format!("call {i}"))).await?;
        let at = served(&response).ok_or("no Served extension")?;
        // The endpoint reported is the server that really answered.
        let index = addrs
            .iter()
            .position(|a| *a == at.endpoint)
            .ok_or("unknown")?;
        assert!(response.get_ref().text.starts_with(&format!("s{index}: ")));
        assert!(at.local.is_some());
        *counts.entry(at.endpoint).or_default() += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100]
    );
    for s in &servers {
        assert_eq!(s.calls.load(Ordering::SeqCst), 100);
    }

    // Streaming answers pass through, and say where they came from too.
    let response = llm.generate_streaming(ask("a b c")).await?;
    assert!(served(&response).is_some());
    let mut stream = response.into_inner();
    let mut words = Vec::new();
    while let Some(chunk) = stream.message().await? {
        words.push(chunk.text);
    }
    assert_eq!(words.len(), 4, "{words:?}");
    Ok(())
}

#[tokio::test]
async fn a_stopped_endpoint_costs_no_call_that_never_reached_it() -> TestResult {
    let mut servers = [
        Server::start("s0").await,
        Server::start("s1").await,
        Server::start("s2").await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let channel = Directory::fixed(document(&addrs), "test")
        .plugin("echo")
        .await?;
    let mut llm = channel.llm()?;
    for i in 0..9 {
        llm.generate(ask(&format!("warm {i}"))).await?;
    }
    // Stopped between two calls: every later call finds its connection closed or refused,
    // which proves it never reached s0, so it must be served elsewhere.
    servers[0].stop().await;
    let mut counts: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for i in 0..60 {
        let r = llm.generate(ask(&format!("after {i}"))).await?;
        *counts
            .entry(served(&r).ok_or("served")?.endpoint)
            .or_default() += 1;
    }
    assert_eq!(counts.get(&addrs[0]), None, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 60);
    assert_eq!(channel.down(), [addrs[0]], "out of the rotation");
    Ok(())
}

#[tokio::test]
async fn a_call_that_reached_a_dying_endpoint_fails_unavailable_and_is_not_repeated() -> TestResult
{
    let mut servers = [Server::start("s0").await, Server::start("s1").await];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let channel = PluginChannel::connect(
        &format!("{},{}", addrs[0], addrs[1]),
        PluginType::LlmProvider,
    )
    .await?;
    let mut llm = channel.llm()?;
    let first = served(&llm.generate(ask("who")).await?)
        .ok_or("served")?
        .endpoint;
    // Round robin: the next call goes to the other one, which dies while it works on it.
    let victim = usize::from(first == addrs[0]);
    let call = {
        let mut llm = llm.clone();
        tokio::spawn(async move { llm.generate(ask("sleep:2000")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        servers[victim].calls.load(Ordering::SeqCst),
        1,
        "it arrived"
    );
    servers[victim].stop().await;
    let status = call.await?.expect_err("the call was lost");
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    assert!(
        status.message().contains(&addrs[victim].to_string())
            && status.message().contains("during the call"),
        "{status}"
    );
    let survivor = &servers[1 - victim];
    assert_eq!(
        survivor.calls.load(Ordering::SeqCst),
        1,
        "not repeated on the survivor"
    );
    Ok(())
}

#[tokio::test]
async fn the_callers_deadline_is_kept_on_this_side() -> TestResult {
    let server = Server::start("slow").await;
    let channel = PluginChannel::connect(&server.addr.to_string(), PluginType::LlmProvider).await?;
    let mut request = tonic::Request::new(ask("sleep:3000"));
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = channel
        .llm()?
        .generate(request)
        .await
        .expect_err("too slow");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn republished_endpoints_are_followed_from_a_file() -> TestResult {
    let a = Server::start("a").await;
    let b = Server::start("b").await;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("endpoints.json");
    std::fs::write(&path, document(&[a.addr]).render())?;
    let directory = Directory::follow_file(&path).await?;
    let mut llm = directory.plugin("echo").await?.llm()?;
    assert!(
        llm.generate(ask("x"))
            .await?
            .get_ref()
            .text
            .starts_with("a:")
    );

    std::fs::write(&path, document(&[b.addr]).render())?;
    let changed = Instant::now();
    loop {
        let text = llm.generate(ask("x")).await?.into_inner().text;
        if text.starts_with("b:") {
            break;
        }
        assert!(changed.elapsed() < Duration::from_secs(3), "b never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Unpublished: calls fail UNAVAILABLE until it is back.
    let mut empty = document(&[]);
    empty.plugins.clear();
    std::fs::write(&path, empty.render())?;
    let changed = Instant::now();
    loop {
        match llm.generate(ask("x")).await {
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s}");
                break;
            }
            Ok(_) => assert!(changed.elapsed() < Duration::from_secs(3), "still served"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn wrong_types_unknown_plugins_and_unreachable_addresses_say_so() -> TestResult {
    let directory = Directory::fixed(document(&["127.0.0.1:9".parse()?]), "the test file");
    let channel = directory.plugin("echo").await?;
    let err = channel.embedder().expect_err("an llm");
    assert!(matches!(err, ClientError::TypeMismatch { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "plugin \"echo\" is of type llm_provider, not embedder_provider"
    );
    let err = directory.plugin("nope").await.expect_err("not published");
    assert_eq!(
        err.to_string(),
        "no plugin named \"nope\" is published in the test file (published: echo); it is unhealthy or absent"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let channel =
        PluginChannel::connect(&format!("127.0.0.1:{port}"), PluginType::LlmProvider).await?;
    let status = channel
        .llm()?
        .generate(ask("x"))
        .await
        .expect_err("nothing listens");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        format!(
            "cannot reach remote plugin at 127.0.0.1:{port}: 127.0.0.1:{port}: connection refused"
        )
    );
    let probed = channel.probe(Duration::from_secs(1)).await;
    assert!(
        matches!(&probed[..], [(_, Err(reason))] if reason == "connection refused"),
        "{probed:?}"
    );

    let err = PluginChannel::connect("no-such-host.invalid:1", PluginType::LlmProvider)
        .await
        .expect_err("unresolvable");
    assert!(
        err.to_string()
            .starts_with("cannot resolve remote plugin at no-such-host.invalid:1: "),
        "{err}"
    );
    let err = PluginChannel::connect("no-port", PluginType::LlmProvider)
        .await
        .expect_err("bad address");
    assert!(err.to_string().contains("host:port"), "{err}");
    Ok(())
}
