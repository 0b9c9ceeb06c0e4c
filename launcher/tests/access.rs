//! The launcher closed to the network: TLS with a certificate pinned by fingerprint, and
//! callers admitted by their ServiceAccount token. The issuer here is a local HTTPS server
//! with the API server's two discovery paths and a key of the test's own; the same checks
//! against a real API server and real tokens run in the cluster tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
use hector_plugin_sdk::proto::{GenerateRequest, Message};
use tonic::transport::Channel;
use tonic::{Code, Request};

#[path = "support/secure.rs"]
mod secure;

use secure::{AUDIENCE, Keys, fake_issuer, tls_channel};

type TestResult = Result<(), Box<dyn std::error::Error>>;
const POD_UID: &str = "6f1c2a9e-0000-4000-8000-00000000cafe";

fn echo_llm() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_hector-plugin-launcher")).with_file_name("echo-llm");
    assert!(
        p.exists(),
        "{} missing: build the workspace binaries",
        p.display()
    );
    p
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A launcher process with TLS and the caller check.
struct Launcher {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
    _config: tempfile::TempDir,
}

impl Launcher {
    fn start(issuer: SocketAddr, credentials: &std::path::Path, forward: &str) -> Self {
        Self::start_with(issuer, credentials, forward, &[])
    }

    /// Started with `extra` flags too.
    fn start_with(
        issuer: SocketAddr,
        credentials: &std::path::Path,
        forward: &str,
        extra: &[&str],
    ) -> Self {
        let config = tempfile::tempdir().expect("dir");
        std::fs::write(config.path().join("prefix"), "echo: ").expect("config");
        let addr = format!(
            "127.0.0.1:{}",
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port()
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_hector-plugin-launcher"))
            .args([
                "--listen",
                &addr,
                "--type",
                "llm_provider",
                "--launch",
                "network",
            ])
            .args(["--forward", forward, "--tls", "--auth"])
            .args([
                "--allow-namespace",
                "agents",
                "--allow-service-account",
                "ops/prober",
            ])
            .arg("--apiserver")
            .arg(format!("https://{issuer}"))
            .arg("--apiserver-credentials")
            .arg(credentials)
            .args(extra)
            .arg("--config-dir")
            .arg(config.path())
            .arg("--")
            .arg(echo_llm())
            .env("HECTOR_POD_UID", POD_UID)
            .env("HECTOR_LAUNCHER_DRAIN_DELAY", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("launcher");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    log.lock().expect("lock").push_str(&(line + "\n"));
                }
            });
        }
        Self {
            child,
            addr,
            log,
            _config: config,
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// The fingerprint the launcher logged at start.
    async fn fingerprint(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(f) = self
                .log()
                .split("fingerprint=")
                .nth(1)
                .map(|rest| rest.chars().take(71).collect::<String>())
            {
                return f;
            }
            assert!(
                Instant::now() < deadline,
                "no fingerprint logged:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hello() -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: "hello".into(),
            ..Default::default()
        }],
        tools: vec![],
    }
}

fn with_token(token: Option<&str>) -> Request<GenerateRequest> {
    let mut request = Request::new(hello());
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    request
}

async fn generate(channel: &Channel, token: Option<&str>) -> Result<String, tonic::Status> {
    LlmProviderClient::new(channel.clone())
        .generate(with_token(token))
        .await
        .map(|r| r.into_inner().text)
}

async fn callers_are_checked(forward: &str) -> TestResult {
    let keys = Keys::new(&["k1", "k2"]);
    let (issuer, credentials) = fake_issuer(keys.clone()).await;
    let launcher = Launcher::start(issuer, credentials.path(), forward);
    let pin = launcher.fingerprint().await;
    let exp = now() + 3600;
    let agent = keys.token(0, "agents", "planner", AUDIENCE, exp);

    // Ready once the plugin answers an allowed caller.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (channel, pinned) = loop {
        if let Ok((ch, pinned)) = tls_channel(&launcher.addr, &pin).await
            && generate(&ch, Some(&agent)).await.is_ok()
        {
            break (ch, pinned);
        }
        assert!(
            Instant::now() < deadline,
            "never served:\n{}",
            launcher.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(generate(&channel, Some(&agent)).await?, "echo: hello");
    // The certificate names the Pod.
    let der = pinned
        .seen
        .lock()
        .expect("lock")
        .clone()
        .map(|s| s.1)
        .unwrap_or_default();
    let uri = format!("urn:hector:pod:{POD_UID}");
    assert!(
        der.windows(uri.len()).any(|w| w == uri.as_bytes()),
        "the certificate names the Pod"
    );

    // On the same connection, a later stream without a token, with a bad one, or from a
    // caller not on the list, is refused with the code that says why.
    let cases = [
        (None, Code::Unauthenticated, "carried none"),
        (
            Some(keys.token(0, "agents", "planner", "other-audience", exp)),
            Code::Unauthenticated,
            "audience",
        ),
        (
            Some(keys.token(0, "agents", "planner", AUDIENCE, now() - 7200)),
            Code::Unauthenticated,
            "expired",
        ),
        (
            Some(keys.token(0, "tenant-b", "spy", AUDIENCE, exp)),
            Code::PermissionDenied,
            "caller tenant-b/spy is not allowed",
        ),
        (
            Some(keys.token(0, "ops", "other", AUDIENCE, exp)),
            Code::PermissionDenied,
            "caller ops/other is not allowed",
        ),
        (
            Some(format!("{}x", &agent[..agent.len() - 2])),
            Code::Unauthenticated,
            "invalid token",
        ),
    ];
    for (token, code, text) in cases {
        let status = generate(&channel, token.as_deref())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{text}: {status:?}");
        assert!(
            status.message().contains(text),
            "{text}: {}",
            status.message()
        );
        assert!(
            token.is_none_or(|t| !status.message().contains(&t)),
            "the token is never echoed"
        );
    }
    // grpc.health.v1 needs no token, on this (spliced or served) TLS connection as in
    // plaintext.
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    assert_eq!(health.into_inner().status, 1, "SERVING without a token");
    // An allowed single account, and the connection still works after all the refusals.
    let prober = keys.token(0, "ops", "prober", AUDIENCE, exp);
    assert_eq!(generate(&channel, Some(&prober)).await?, "echo: hello");
    assert_eq!(generate(&channel, Some(&agent)).await?, "echo: hello");

    // The lifecycle stays the launcher's, whoever asks.
    let mut lifecycle =
        hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient::new(channel.clone());
    let mut init = Request::new(hector_plugin_sdk::proto::InitializeRequest::default());
    init.metadata_mut()
        .insert("authorization", format!("Bearer {agent}").parse()?);
    let status = lifecycle.initialize(init).await.expect_err("reserved");
    assert_eq!(status.code(), Code::PermissionDenied);

    // A key the launcher has not seen yet is fetched on first use.
    let fetches = *keys.fetches.lock().expect("lock");
    *keys.served.lock().expect("lock") = 2;
    // Unknown key ids refresh at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = keys.token(1, "agents", "planner", AUDIENCE, exp);
    assert_eq!(generate(&channel, Some(&rotated)).await?, "echo: hello");
    assert!(
        *keys.fetches.lock().expect("lock") > fetches,
        "the keys were fetched again"
    );

    // A client pinned to another certificate never completes the handshake.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let admitted = admitted_count(&launcher.addr).await;
    if let Ok((ch, _)) = tls_channel(&launcher.addr, &wrong).await {
        let status = generate(&ch, Some(&agent))
            .await
            .expect_err("must not reach the plugin");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(
        admitted_count(&launcher.addr).await,
        admitted,
        "nothing was sent"
    );

    // Plaintext: health answers, the plugin does not.
    let plain = hector_plugin_sdk::connect(&launcher.addr, Duration::from_secs(5)).await?;
    let health = tonic_health::pb::health_client::HealthClient::new(plain.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    assert_eq!(health.into_inner().status, 1, "SERVING over plaintext");
    let status = generate(&plain, Some(&agent))
        .await
        .expect_err("plaintext refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("TLS only"),
        "{}",
        status.message()
    );

    // Every refusal was counted by reason; the log names callers, never tokens.
    let metrics = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&launcher.addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: l\r\nconnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        text
    };
    for line in [
        "hector_launcher_refused_total{reason=\"unauthenticated\"} 4",
        "hector_launcher_refused_total{reason=\"not_allowed\"} 2",
        "hector_launcher_refused_total{reason=\"lifecycle\"} 1",
        "hector_launcher_refused_total{reason=\"plaintext\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    let log = launcher.log();
    assert!(!log.contains(&agent), "a token reached the log");
    assert!(log.contains("tenant-b/spy"), "{log}");
    Ok(())
}

/// The launcher's count of admitted calls, read from its plaintext metrics.
async fn admitted_count(addr: &str) -> u64 {
    metric(addr, "hector_launcher_admitted_total").await
}

/// One sample of the launcher's plaintext metrics, by its whole name (labels included).
async fn metric(addr: &str, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: l\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_are_checked_on_spliced_connections() -> TestResult {
    callers_are_checked("connection").await
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_are_checked_request_by_request() -> TestResult {
    callers_are_checked("request").await
}

/// With TLS and the caller check, `--max-connections 1`: a second TLS connection to the
/// plugin is refused as a whole (GOAWAY REFUSED_STREAM over TLS, UNAVAILABLE for the call)
/// before its caller's token is even looked at; plaintext health still answers; once the
/// first connection has gone, a new one is admitted and checked as usual.
#[tokio::test(flavor = "multi_thread")]
async fn tls_connections_over_the_cap_are_refused_before_any_check() -> TestResult {
    let keys = Keys::new(&["k1"]);
    let (issuer, credentials) = fake_issuer(keys.clone()).await;
    let launcher = Launcher::start_with(
        issuer,
        credentials.path(),
        "connection",
        &["--max-connections", "1"],
    );
    let pin = launcher.fingerprint().await;
    let agent = keys.token(0, "agents", "planner", AUDIENCE, now() + 3600);
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Ok((ch, _)) = tls_channel(&launcher.addr, &pin).await
            && generate(&ch, Some(&agent)).await.is_ok()
        {
            break ch;
        }
        assert!(
            Instant::now() < deadline,
            "never served:\n{}",
            launcher.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let admitted = admitted_count(&launcher.addr).await;

    let (second, _) = tls_channel(&launcher.addr, &pin).await?;
    let status = generate(&second, Some(&agent))
        .await
        .expect_err("over the cap");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        format!("{status:?}").contains("connection limit reached"),
        "{status:?}"
    );
    assert_eq!(
        admitted_count(&launcher.addr).await,
        admitted,
        "the refused connection's call was never checked"
    );
    assert_eq!(
        metric(
            &launcher.addr,
            "hector_launcher_refused_total{reason=\"connection_limit\"}"
        )
        .await,
        1
    );
    // The kubelet's probe: plaintext, served by the launcher itself.
    let plain = hector_plugin_sdk::connect(&launcher.addr, Duration::from_secs(5)).await?;
    let health = tonic_health::pb::health_client::HealthClient::new(plain)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    assert_eq!(health.into_inner().status, 1, "SERVING");
    assert_eq!(generate(&first, Some(&agent)).await?, "echo: hello");

    drop((first, second));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&launcher.addr, "hector_launcher_spliced_connections").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the first connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (third, _) = tls_channel(&launcher.addr, &pin).await?;
    assert_eq!(generate(&third, Some(&agent)).await?, "echo: hello");
    let denied = generate(&third, None).await.expect_err("no token");
    assert_eq!(denied.code(), Code::Unauthenticated);
    Ok(())
}
