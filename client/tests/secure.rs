//! Pinned TLS and the caller's token against real gRPC servers on loopback: a plugin that
//! published certificates is reached over TLS pinned to them, a wrong pin stops the call
//! before anything reaches the server, republished certificates are followed, a plugin
//! without certificates stays plaintext, and every call carries the current token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hector_plugin_client::{ChannelOptions, Directory, PluginChannel, served};
use hector_plugin_sdk::endpoints::{EndpointsFile, PublishedPlugin, SCHEMA_VERSION};
use hector_plugin_sdk::proto::llm_provider_server::{LlmProvider, LlmProviderServer};
use hector_plugin_sdk::proto::*;
use hector_plugin_sdk::tls;
use hector_plugin_sdk::token::{AUTHORIZATION, RECHECK, TokenSource};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An LLM that answers `echo: TEXT`.
struct Echo;

#[tonic::async_trait]
impl LlmProvider for Echo {
    type GenerateStreamingStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<StreamChunk, Status>> + Send>>;

    async fn initialize(
        &self,
        _: Request<InitializeRequest>,
    ) -> Result<Response<InitializeResponse>, Status> {
        Ok(Response::new(InitializeResponse::default()))
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
            message: String::new(),
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
        Ok(Response::new(StatusResponse::default()))
    }
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let text = request
            .get_ref()
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        Ok(Response::new(GenerateResponse {
            text: format!("echo: {text}"),
            ..Default::default()
        }))
    }
    async fn generate_streaming(
        &self,
        _: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamingStream>, Status> {
        Err(Status::unimplemented("not here"))
    }
    async fn get_model_info(&self, _: Request<Empty>) -> Result<Response<ModelInfo>, Status> {
        Ok(Response::new(ModelInfo::default()))
    }
}

/// Each request's path and `authorization` header, as the server received them.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A plugin server on loopback, over TLS with a fresh self-signed certificate or in
/// plaintext; it records every request's path and `authorization` header.
struct Server {
    addr: SocketAddr,
    fingerprint: Option<String>,
    seen: Seen,
    handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(with_tls: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (acceptor, fingerprint) = if with_tls {
            let (acceptor, fp) = tls_acceptor();
            (Some(acceptor), Some(fp))
        } else {
            (None, None)
        };
        let routes = tonic::service::Routes::new(LlmProviderServer::new(Echo));
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (record, shook) = (seen.clone(), handshakes.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (routes, record, acceptor) = (routes.clone(), record.clone(), acceptor.clone());
                let shook = shook.clone();
                tokio::spawn(async move {
                    let service =
                        tower::service_fn(move |r: http::Request<hyper::body::Incoming>| {
                            let header = r
                                .headers()
                                .get(AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            if let Ok(mut s) = record.lock() {
                                s.push((r.uri().path().to_string(), header));
                            }
                            let mut routes = routes.clone();
                            async move {
                                tower::Service::call(&mut routes, r.map(tonic::body::Body::new))
                                    .await
                            }
                        });
                    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let service = TowerToHyperService::new(service);
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            shook.fetch_add(1, Ordering::SeqCst);
                            let _ = http
                                .http2_only()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = http
                                .http2_only()
                                .serve_connection(TokioIo::new(tcp), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            fingerprint,
            seen,
            handshakes,
            task,
        }
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn generate_calls(&self) -> Vec<Option<String>> {
        self.requests()
            .into_iter()
            .filter(|(path, _)| path.ends_with("/Generate"))
            .map(|(_, auth)| auth)
            .collect()
    }
}

fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "urn:hector:pod:test".try_into().expect("URI"),
    ));
    let cert = params.self_signed(&key).expect("self-signed");
    let fingerprint = tls::fingerprint(cert.der());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .expect("certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    )
}

/// The endpoints document publishing `echo` at `addr` with `certificate` (none: plaintext).
fn document(addr: SocketAddr, certificate: Option<&str>) -> EndpointsFile {
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
            endpoints: vec![addr.to_string()],
            certificates: certificate
                .map(|c| BTreeMap::from([(addr.to_string(), c.to_string())]))
                .unwrap_or_default(),
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

fn no_token() -> ChannelOptions {
    ChannelOptions::new().token(TokenSource::none())
}

#[tokio::test]
async fn a_plugin_with_certificates_is_called_over_pinned_tls() -> TestResult {
    let server = Server::start(true).await;
    let fp = server.fingerprint.clone().expect("TLS server");
    let directory = Directory::fixed(document(server.addr, Some(&fp)), "test");
    let channel = directory.plugin_with("echo", &no_token()).await?;
    let mut llm = channel.llm()?;
    let answer = llm.generate(ask("hello")).await?;
    assert_eq!(answer.get_ref().text, "echo: hello");
    assert_eq!(served(&answer).map(|s| s.endpoint), Some(server.addr));
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(server.generate_calls().len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_wrong_pin_fails_the_call_clearly_and_nothing_reaches_the_server() -> TestResult {
    let server = Server::start(true).await;
    let served_fp = server.fingerprint.clone().expect("TLS server");
    let other = tls::fingerprint(b"another launcher's certificate");
    let directory = Directory::fixed(document(server.addr, Some(&other)), "test");
    let mut llm = directory.plugin_with("echo", &no_token()).await?.llm()?;
    let status = llm
        .generate(ask("secret prompt"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let expected = format!(
        "certificate of {} is {served_fp} which plugin \"echo\" did not publish",
        server.addr
    );
    assert!(status.message().contains(&expected), "{status:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 0);
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    Ok(())
}

#[tokio::test]
async fn a_plugin_without_certificates_stays_plaintext() -> TestResult {
    let server = Server::start(false).await;
    let directory = Directory::fixed(document(server.addr, None), "test");
    let mut llm = directory.plugin_with("echo", &no_token()).await?.llm()?;
    assert_eq!(
        llm.generate(ask("plain")).await?.get_ref().text,
        "echo: plain"
    );
    assert_eq!(server.generate_calls(), [None], "no token was configured");

    // And a TLS server is not talked to in plaintext just because nothing was published.
    let tls_server = Server::start(true).await;
    let directory = Directory::fixed(document(tls_server.addr, None), "test");
    let mut llm = directory.plugin_with("echo", &no_token()).await?.llm()?;
    assert!(llm.generate(ask("plain")).await.is_err());
    assert!(tls_server.generate_calls().is_empty());
    Ok(())
}

/// Writes `doc` to `path` by rename, as a ConfigMap volume update replaces the file.
fn publish(path: &Path, doc: &EndpointsFile) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.render())?;
    std::fs::rename(tmp, path)
}

#[tokio::test]
async fn republished_certificates_are_used_for_new_connections() -> TestResult {
    let server = Server::start(true).await;
    let fp = server.fingerprint.clone().expect("TLS server");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("endpoints.json");
    let stale = tls::fingerprint(b"the certificate of the Pod that was here before");
    publish(&path, &document(server.addr, Some(&stale)))?;
    let directory = Directory::follow_file(&path).await?;
    let mut llm = directory.plugin_with("echo", &no_token()).await?.llm()?;
    assert!(
        llm.generate(ask("early")).await.is_err(),
        "stale pin refused"
    );

    publish(&path, &document(server.addr, Some(&fp)))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match llm.generate(ask("later")).await {
            Ok(answer) => {
                assert_eq!(answer.get_ref().text, "echo: later");
                break;
            }
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the new pin was never used: {status:?}"),
        }
    }

    // Withdrawing the certificate closes the connection made under it: the next call is
    // refused in a new handshake instead of reusing the old connection.
    publish(&path, &document(server.addr, Some(&stale)))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while llm.generate(ask("after")).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the withdrawn pin was still used"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[cfg(unix)]
#[tokio::test]
async fn every_call_carries_the_current_token() -> TestResult {
    use std::os::unix::fs::symlink;
    let server = Server::start(true).await;
    let fp = server.fingerprint.clone().expect("TLS server");
    let dir = tempfile::tempdir()?;
    // Kubelet's projected volume: token -> ..data/token, ..data -> a timestamped directory.
    let first = dir.path().join("..first");
    std::fs::create_dir(&first)?;
    std::fs::write(first.join("token"), "token-one\n")?;
    symlink("..first", dir.path().join("..data"))?;
    symlink("..data/token", dir.path().join("token"))?;

    let directory = Directory::fixed(document(server.addr, Some(&fp)), "test");
    let options = ChannelOptions::new().token_file(dir.path().join("token"));
    let channel = directory.plugin_with("echo", &options).await?;
    let mut llm = channel.llm()?;
    for _ in 0..3 {
        llm.generate(ask("hi")).await?;
    }
    let probed = channel.probe(Duration::from_secs(1)).await;
    assert!(probed.iter().all(|(_, r)| r.is_ok()), "{probed:?}");

    let second = dir.path().join("..second");
    std::fs::create_dir(&second)?;
    std::fs::write(second.join("token"), "token-two\n")?;
    symlink("..second", dir.path().join("..data_tmp"))?;
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data"))?;
    tokio::time::sleep(RECHECK + Duration::from_millis(100)).await;
    for _ in 0..2 {
        llm.generate(ask("hi")).await?;
    }

    let one = Some("Bearer token-one".to_string());
    let two = Some("Bearer token-two".to_string());
    assert_eq!(
        server.generate_calls(),
        [one.clone(), one.clone(), one.clone(), two.clone(), two]
    );
    let health: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|(path, _)| path.ends_with("/Health"))
        .collect();
    assert!(!health.is_empty(), "{:?}", server.requests());
    assert!(
        health.iter().all(|(_, auth)| auth == &one),
        "probes carry it too: {health:?}"
    );

    let err = directory
        .plugin_with(
            "echo",
            &ChannelOptions::new().token_file(dir.path().join("missing")),
        )
        .await
        .expect_err("a named token file must exist");
    assert!(err.to_string().contains("missing"), "{err}");
    Ok(())
}

#[tokio::test]
async fn fixed_addresses_are_plaintext_and_carry_the_token() -> TestResult {
    let server = Server::start(false).await;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("token");
    std::fs::write(&path, "addr-token")?;
    let options = ChannelOptions::new().token_file(&path);
    let channel = PluginChannel::connect_with(
        &server.addr.to_string(),
        hector_plugin_sdk::PluginType::LlmProvider,
        &options,
    )
    .await?;
    channel.llm()?.generate(ask("x")).await?;
    assert_eq!(
        server.generate_calls(),
        [Some("Bearer addr-token".to_string())]
    );
    Ok(())
}
