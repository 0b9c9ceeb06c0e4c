//! Pinned TLS against a real gRPC server over tokio-rustls with a self-signed certificate, as
//! the operator's prober uses it: a tonic `Channel` through `tls::Connector`, the token added
//! by `TokenSource` as an interceptor. A refused certificate means the server never sees a
//! request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hector_plugin_sdk::tls::{self, Pin, PinVerifier, Refusal};
use hector_plugin_sdk::token::{AUTHORIZATION, TokenSource};
use hector_plugin_sdk::{LifecycleClient, PluginType};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A self-signed certificate naming `uri` and its key.
fn certificate(uri: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(uri.try_into().expect("an ASCII URI")));
    let cert = params.self_signed(&key).expect("self-signed");
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A gRPC health server over TLS on loopback that counts the requests it receives and keeps
/// their `authorization` headers.
struct Server {
    addr: SocketAddr,
    fingerprint: String,
    requests: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<Option<String>>>>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(uri: &str) -> Server {
    let (cert, key) = certificate(uri);
    let fingerprint = tls::fingerprint(&cert);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_, health) = tonic_health::server::health_reporter();
    let routes = tonic::service::Routes::new(health);
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (requests.clone(), auth.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let routes = routes.clone();
            let (count, seen) = (count.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = tower::service_fn(move |r: http::Request<hyper::body::Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    let header = r
                        .headers()
                        .get(AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    if let Ok(mut s) = seen.lock() {
                        s.push(header);
                    }
                    let mut routes = routes.clone();
                    async move { tower::Service::call(&mut routes, r.map(tonic::body::Body::new)).await }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .await;
            });
        }
    });
    Server {
        addr,
        fingerprint,
        requests,
        auth,
        task,
    }
}

async fn channel_to(addr: SocketAddr, pin: Pin) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_with_connector(tls::Connector::new(tls::client_config(pin)))
        .await
}

async fn check(channel: Channel) -> Result<i32, tonic::Status> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(answer.into_inner().status)
}

#[tokio::test]
async fn a_client_pinned_to_the_servers_fingerprint_is_answered() -> TestResult {
    let server = serve("urn:hector:pod:one").await;
    let pin = Pin::fingerprints([server.fingerprint.as_str()])?;
    let status = check(channel_to(server.addr, pin).await?).await?;
    assert_eq!(status, ServingStatus::Serving as i32);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_wrong_pin_refuses_the_server_before_any_request() -> TestResult {
    let server = serve("urn:hector:pod:one").await;
    let other = tls::fingerprint(b"some other certificate");
    let err = channel_to(server.addr, Pin::fingerprints([other])?)
        .await
        .expect_err("refused in the handshake");
    let refusal = tls::refusal(&err).expect("the pin check's refusal is in the error");
    assert_eq!(
        refusal,
        Refusal::NotPinned {
            seen: server.fingerprint.clone()
        }
    );
    // A lazy channel fails the call itself the same way.
    let lazy = Endpoint::from_shared(format!("http://{}", server.addr))?
        .connect_with_connector_lazy(tls::Connector::new(tls::client_config(Pin::Fingerprints(
            Default::default(),
        ))));
    let status = check(lazy).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        0,
        "nothing reached it"
    );
    Ok(())
}

#[tokio::test]
async fn learning_a_pods_fingerprint_requires_its_uri_san() -> TestResult {
    let server = serve(&tls::pod_uri("uid-1")).await;

    // The prober's way: accept the Pod's own certificate, then read what it accepted.
    let learner = PinVerifier::new(Pin::Any {
        expect_uri_san: Some(tls::pod_uri("uid-1")),
    });
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))?
        .connect_with_connector(tls::Connector::new(tls::client_config_for(learner.clone())))
        .await?;
    check(channel).await?;
    assert_eq!(learner.accepted(), Some(server.fingerprint.clone()));

    // Another Pod's uid at that address is refused and learns nothing.
    let stranger = PinVerifier::new(Pin::Any {
        expect_uri_san: Some(tls::pod_uri("uid-2")),
    });
    let err = Endpoint::from_shared(format!("http://{}", server.addr))?
        .connect_with_connector(tls::Connector::new(tls::client_config_for(
            stranger.clone(),
        )))
        .await
        .expect_err("wrong identity");
    match tls::refusal(&err) {
        Some(Refusal::WrongIdentity {
            seen,
            expected,
            found,
        }) => {
            assert_eq!(seen, server.fingerprint);
            assert_eq!(expected, "urn:hector:pod:uid-2");
            assert_eq!(found, ["urn:hector:pod:uid-1"]);
        }
        other => panic!("expected WrongIdentity, got {other:?} from {err:?}"),
    }
    assert_eq!(stranger.accepted(), None);
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        1,
        "only the learner's call"
    );
    Ok(())
}

#[tokio::test]
async fn a_pinned_call_carries_the_token_through_the_interceptor() -> TestResult {
    let server = serve("urn:hector:pod:one").await;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("token");
    std::fs::write(&path, "header.payload.signature\n")?;
    let token = TokenSource::from_file(&path)?;
    let channel = channel_to(server.addr, Pin::fingerprints([&server.fingerprint])?).await?;
    let mut client = HealthClient::with_interceptor(channel, token.clone());
    for _ in 0..2 {
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
    }

    // The SDK's lifecycle client (the prober's) sends it too; this server has no plugin
    // service, so the call is answered Unimplemented — after the server saw the header.
    let lifecycle = LifecycleClient::new(
        channel_to(server.addr, Pin::fingerprints([&server.fingerprint])?).await?,
        PluginType::LlmProvider,
    )
    .with_token(token);
    match lifecycle.health().await {
        Err(hector_plugin_sdk::SdkError::Rpc { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        }
        other => panic!("expected Unimplemented, got {other:?}"),
    }

    let seen = server.auth.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        seen,
        vec![Some("Bearer header.payload.signature".to_string()); 3]
    );
    Ok(())
}
