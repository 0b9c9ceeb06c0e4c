//! Protocol tests: real plugins (Rust SDK, Go go-plugin, Python grpcio) served through the
//! real launcher binary, called by a Rust gRPC client over loopback.
//!
//! The Rust example binaries must be built first (`cargo build --workspace --bins`, which
//! `make test` does); the Go plugin is built here with `go`, the Python plugin runs in the
//! virtualenv `tests/setup/deps` prepares.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hector_plugin_sdk::proto::{
    EmbedRequest, Empty, GenerateRequest, Message,
    embedder_provider_client::EmbedderProviderClient, llm_provider_client::LlmProviderClient,
    stream_chunk::ChunkType,
};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of another workspace package, built next to the launcher.
fn sibling_bin(name: &str) -> PathBuf {
    let launcher = PathBuf::from(env!("CARGO_BIN_EXE_hector-plugin-launcher"));
    let path = launcher.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The Go go-plugin test plugin, built once per test run.
fn go_plugin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("hector-go-llm-{}", std::process::id()));
        let status = Command::new(repo_root().join("tests/plugins/go-llm/build.sh"))
            .arg(&out)
            .status()
            .expect("run tests/plugins/go-llm/build.sh (is Go installed?)");
        assert!(status.success(), "building the Go plugin failed: {status}");
        out
    })
    .clone()
}

/// The Go go-plugin host (Hector's way of starting plugins), built once per test run.
fn go_host() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("hector-go-host-{}", std::process::id()));
        let status = Command::new(repo_root().join("tests/plugins/go-llm/build.sh"))
            .arg(&out)
            .arg("./cmd/host")
            .status()
            .expect("run tests/plugins/go-llm/build.sh (is Go installed?)");
        assert!(status.success(), "building the Go host failed: {status}");
        out
    })
    .clone()
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("HECTOR_PYTHON") {
        return p.into();
    }
    let cache = std::env::var("HECTOR_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache")
                })
                .join("hector-operator")
        });
    let py = cache.join("venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run tests/setup/deps first",
        py.display()
    );
    py
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A launcher process serving one plugin, with its config directory.
struct Launched {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Launched {
    fn start(plugin_type: &str, launch: &str, config: &[(&str, &str)], command: &[&str]) -> Self {
        Self::start_with(plugin_type, launch, config, command, &[], &[])
    }

    fn start_with(
        plugin_type: &str,
        launch: &str,
        config: &[(&str, &str)],
        command: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).expect("config dir");
        for (k, v) in config {
            let v = v.replace("$DIR", &dir.path().display().to_string());
            std::fs::write(config_dir.join(k), v).expect("config file");
        }
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_hector-plugin-launcher"))
            .args(["--listen", &addr, "--type", plugin_type, "--launch", launch])
            .args(["--health-interval", "0.2", "--start-timeout", "60"])
            .args(extra)
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--")
            .args(command)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start launcher");
        Launched { child, addr, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn channel(&mut self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("launcher exited early with {status}: {}", self.output());
            }
            if let Ok(ch) = hector_plugin_sdk::connect(&self.addr, Duration::from_secs(1)).await
                && health(&ch, "").await == Some(ServingStatus::Serving)
            {
                return ch;
            }
            assert!(Instant::now() < deadline, "launcher never became healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A fresh connection whose first call is a plugin call, so the launcher splices it.
    async fn plugin_channel(&self) -> Channel {
        hector_plugin_sdk::connect(&self.addr, Duration::from_secs(5))
            .await
            .expect("connect to the launcher")
    }

    fn signal_term(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "launcher did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the launcher printed (after it exited).
    fn output(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut text);
        }
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn health(channel: &Channel, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel.clone());
    let resp = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(resp.into_inner().status).ok()
}

/// A channel to a plugin started on its own at `addr`, once it reports `service` serving.
async fn serving_at(addr: &str, service: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = hector_plugin_sdk::connect(addr, Duration::from_secs(1)).await
            && health(&ch, service).await == Some(ServingStatus::Serving)
        {
            return ch;
        }
        assert!(Instant::now() < deadline, "plugin never served on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_health(channel: &Channel, service: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(channel, service).await != Some(want) {
        assert!(
            Instant::now() < deadline,
            "health of {service:?} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn user(text: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![
            Message {
                role: "system".into(),
                content: "be brief".into(),
                ..Default::default()
            },
            Message {
                role: "user".into(),
                content: text.into(),
                ..Default::default()
            },
        ],
        tools: vec![],
    }
}

async fn streamed_text(client: &mut LlmProviderClient<Channel>, text: &str) -> (Vec<String>, i32) {
    let mut stream = client
        .generate_streaming(user(text))
        .await
        .expect("GenerateStreaming")
        .into_inner();
    let mut words = Vec::new();
    let mut tokens = -1;
    while let Some(chunk) = stream.message().await.expect("stream chunk") {
        match ChunkType::try_from(chunk.r#type) {
            Ok(ChunkType::Text) => words.push(chunk.text),
            Ok(ChunkType::Done) => tokens = chunk.tokens_used,
            other => panic!("unexpected chunk {other:?}"),
        }
    }
    (words, tokens)
}

#[tokio::test]
async fn rust_echo_llm_through_launcher() -> TestResult {
    let bin = sibling_bin("echo-llm");
    // Request-by-request forwarding; the other tests use the default connection splicing.
    let mut l = Launched::start_with(
        "llm_provider",
        "network",
        &[("prefix", "rust says: "), ("model", "echo-test")],
        &[bin.to_str().ok_or("path")?],
        &["--forward", "request"],
        &[],
    );
    let ch = l.channel().await;
    assert_eq!(
        health(&ch, "hector.plugin.LLMProvider").await,
        Some(ServingStatus::Serving)
    );
    let mut client = LlmProviderClient::new(ch);
    let answer = client
        .generate(user("hello remote world"))
        .await?
        .into_inner();
    assert_eq!(answer.text, "rust says: hello remote world");
    assert_eq!(answer.tokens_used, 3);
    let (chunks, tokens) = streamed_text(&mut client, "hello remote world").await;
    assert_eq!(chunks.len(), 5, "word by word: {chunks:?}");
    assert_eq!(chunks.concat(), answer.text);
    assert_eq!(tokens, 3);
    let info = client.get_model_info(Empty {}).await?.into_inner();
    assert_eq!(info.model_name, "echo-test");
    // A method the plugin lacks: the plugin's own status code comes back through the proxy.
    let mut embed = EmbedderProviderClient::new(
        hector_plugin_sdk::connect(&l.addr, Duration::from_secs(2)).await?,
    );
    let err = embed
        .embed(EmbedRequest { text: "x".into() })
        .await
        .expect_err("not an embedder");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    Ok(())
}

#[tokio::test]
async fn rust_sdk_plugin_as_go_plugin_child() -> TestResult {
    // The SDK answers go-plugin's handshake, so the launcher's default mode hosts it over a
    // Unix socket exactly like a plugin built with Hector's Go SDK.
    let bin = sibling_bin("echo-llm");
    let sockets = tempfile::tempdir()?;
    let socket_dir = sockets.path().to_str().ok_or("path")?;
    let mut l = Launched::start_with(
        "llm_provider",
        "go-plugin",
        &[("prefix", "unix says: ")],
        &[bin.to_str().ok_or("path")?],
        &[],
        &[("PLUGIN_UNIX_SOCKET_DIR", socket_dir)],
    );
    let ch = l.channel().await;
    let in_use: Vec<_> = std::fs::read_dir(sockets.path())?.collect();
    assert_eq!(
        in_use.len(),
        1,
        "one private socket directory while serving"
    );
    let mut client = LlmProviderClient::new(ch);
    let answer = client.generate(user("over a socket")).await?.into_inner();
    assert_eq!(answer.text, "unix says: over a socket");
    let (chunks, _) = streamed_text(&mut client, "over a socket").await;
    assert_eq!(chunks.concat(), answer.text);
    l.signal_term();
    let status = l.wait_exit(Duration::from_secs(20)).await;
    let out = l.output();
    assert!(status.success(), "graceful stop: {status}\n{out}");
    assert!(out.contains("plugin acknowledged Shutdown"), "{out}");
    assert!(
        out.contains("go-plugin host asked the plugin to exit") || out.contains("asked to stop"),
        "{out}"
    );
    assert!(
        std::fs::read_dir(sockets.path())?.next().is_none(),
        "socket directory removed after the plugin stopped"
    );
    Ok(())
}

#[test]
fn rust_sdk_plugin_under_hashicorp_go_plugin_host() -> TestResult {
    // The host side of HashiCorp go-plugin, as Hector runs local plugins: handshake, gRPC
    // dispense, calls, Ping, and Kill (go-plugin's controller asks the plugin to exit).
    let out = Command::new(go_host())
        .args(["-prefix", "go host: ", "-text", "hello from go"])
        .arg(sibling_bin("echo-llm"))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("initialized: true"), "{stdout}");
    assert!(
        stdout.contains("generate: go host: hello from go\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("stream: 6 chunks: go host: hello from go\n"),
        "{stdout}"
    );
    assert!(stdout.contains("ping: ok"), "{stdout}");
    assert!(stdout.contains("exited: true"), "{stdout}");
    // go-plugin warns when a plugin lacks its stdio service or ignores the controller.
    for bad in ["[WARN]", "[ERROR]", "failed to exit gracefully"] {
        assert!(!stderr.contains(bad), "host reported {bad}:\n{stderr}");
    }
    assert!(
        stderr.contains("go-plugin host asked the plugin to exit"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn go_plugin_through_launcher() -> TestResult {
    let bin = go_plugin();
    let mut l = Launched::start(
        "llm_provider",
        "go-plugin",
        &[
            ("prefix", "go says: "),
            ("health_file", "$DIR/unhealthy"),
            ("shutdown_file", "$DIR/shutdown"),
        ],
        &[bin.to_str().ok_or("path")?],
    );
    let ch = l.channel().await;
    let mut client = LlmProviderClient::new(l.plugin_channel().await);

    // Config arrived through Initialize: the prefix is the configured one.
    let answer = client.generate(user("hi there")).await?.into_inner();
    assert_eq!(answer.text, "go says: hi there");
    let (chunks, tokens) = streamed_text(&mut client, "one two three").await;
    // The Go plugin streams its whole answer split on spaces.
    assert_eq!(chunks, ["go", " says:", " one", " two", " three"]);
    assert_eq!(tokens, 3);
    let info = client.get_model_info(Empty {}).await?.into_inner();
    assert_eq!(
        (info.model_name.as_str(), info.max_tokens),
        ("go-echo", 4096)
    );

    // Metadata passes both ways.
    let mut req = tonic::Request::new(user("meta"));
    req.metadata_mut().insert("x-echo", "ping".parse()?);
    let resp = client.generate(req).await?;
    assert_eq!(
        resp.metadata().get("x-echo").and_then(|v| v.to_str().ok()),
        Some("ping")
    );

    // Deadlines reach the plugin: it sees the caller's timeout, less the time in transit.
    let mut req = tonic::Request::new(user("deadline?"));
    req.set_timeout(Duration::from_secs(5));
    let text = client.generate(req).await?.into_inner().text;
    let left: i64 = text.trim_start_matches("deadline:").parse()?;
    assert!((1..=5000).contains(&left), "plugin saw {text}");
    let text = client.generate(user("deadline?")).await?.into_inner().text;
    assert_eq!(text, "deadline:none");
    // And a call that outlives its deadline fails rather than hanging.
    let mut req = tonic::Request::new(user("sleep:3000"));
    req.set_timeout(Duration::from_millis(200));
    let err = client.generate(req).await.expect_err("deadline");
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );

    // Health follows the plugin's own Health RPC, both ways.
    std::fs::write(l.path("unhealthy"), "")?;
    wait_health(&ch, "hector.plugin.LLMProvider", ServingStatus::NotServing).await;
    wait_health(&ch, "", ServingStatus::NotServing).await;
    std::fs::remove_file(l.path("unhealthy"))?;
    wait_health(&ch, "hector.plugin.LLMProvider", ServingStatus::Serving).await;

    // SIGTERM reaches the plugin's Shutdown, and the launcher exits cleanly.
    l.signal_term();
    let status = l.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "launcher exit: {status}");
    assert_eq!(std::fs::read_to_string(l.path("shutdown"))?, "shutdown");
    let out = l.output();
    assert!(
        out.contains("[hector-go-llm-"),
        "plugin output is relayed with a prefix: {out}"
    );
    Ok(())
}

#[tokio::test]
async fn go_plugin_crash_makes_launcher_exit_non_zero() -> TestResult {
    let bin = go_plugin();
    let mut l = Launched::start(
        "llm_provider",
        "go-plugin",
        &[("prefix", "> "), ("crash_on", "boom")],
        &[bin.to_str().ok_or("path")?],
    );
    let _ = l.channel().await;
    let mut client = LlmProviderClient::new(l.plugin_channel().await);
    assert!(client.generate(user("boom")).await.is_err());
    let status = l.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(3),
        "the plugin's exit code is passed on"
    );
    Ok(())
}

#[tokio::test]
async fn refused_initialize_fails_with_the_plugin_error() -> TestResult {
    let bin = go_plugin();
    let mut l = Launched::start(
        "llm_provider",
        "go-plugin",
        &[("model", "x")],
        &[bin.to_str().ok_or("path")?],
    );
    let status = l.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let out = l.output();
    assert!(out.contains("missing required config key: prefix"), "{out}");
    Ok(())
}

#[tokio::test]
async fn python_embedder_through_launcher() -> TestResult {
    let py = python();
    let script = repo_root().join("tests/plugins/py-embedder/embedder.py");
    let mut l = Launched::start(
        "embedder_provider",
        "network",
        &[
            ("model", "py-hash"),
            ("dimension", "16"),
            ("health_file", "$DIR/unhealthy"),
            ("shutdown_file", "$DIR/shutdown"),
            ("crash_on", "crash now"),
        ],
        &[py.to_str().ok_or("path")?, script.to_str().ok_or("path")?],
    );
    let ch = l.channel().await;
    let mut client = EmbedderProviderClient::new(l.plugin_channel().await);
    let info = client.get_embedder_info(Empty {}).await?.into_inner();
    assert_eq!((info.model_name.as_str(), info.dimension), ("py-hash", 16));
    let manifest = hector_plugin_sdk::LifecycleClient::new(
        l.plugin_channel().await,
        hector_plugin_sdk::PluginType::EmbedderProvider,
    )
    .manifest()
    .await?;
    assert_eq!(
        (manifest.name.as_str(), manifest.r#type.as_str()),
        ("py-hash-embedder", "embedder_provider")
    );
    let v = client
        .embed(EmbedRequest {
            text: "hello".into(),
        })
        .await?
        .into_inner();
    assert_eq!(v.vector.len(), 16);
    let norm: f32 = v.vector.iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-4, "unit vector, norm {norm}");
    let again = client
        .embed(EmbedRequest {
            text: "hello".into(),
        })
        .await?
        .into_inner();
    assert_eq!(v.vector, again.vector, "deterministic");
    let empty = client
        .embed(EmbedRequest {
            text: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(empty.error, "text is empty");

    std::fs::write(l.path("unhealthy"), "")?;
    wait_health(
        &ch,
        "hector.plugin.EmbedderProvider",
        ServingStatus::NotServing,
    )
    .await;
    std::fs::remove_file(l.path("unhealthy"))?;
    wait_health(
        &ch,
        "hector.plugin.EmbedderProvider",
        ServingStatus::Serving,
    )
    .await;

    l.signal_term();
    let status = l.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "launcher exit: {status}");
    assert_eq!(std::fs::read_to_string(l.path("shutdown"))?, "shutdown");
    Ok(())
}

#[tokio::test]
async fn python_crash_makes_launcher_exit_non_zero() -> TestResult {
    let py = python();
    let script = repo_root().join("tests/plugins/py-embedder/embedder.py");
    let mut l = Launched::start(
        "embedder_provider",
        "network",
        &[("model", "m"), ("crash_on", "crash now")],
        &[py.to_str().ok_or("path")?, script.to_str().ok_or("path")?],
    );
    let mut client = EmbedderProviderClient::new(l.channel().await);
    assert!(
        client
            .embed(EmbedRequest {
                text: "crash now".into()
            })
            .await
            .is_err()
    );
    let status = l.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "launcher exit: {status}");
    Ok(())
}

#[test]
fn config_values_never_reach_the_log() {
    // The launcher logs key names only; a secret value must not appear in its output.
    let bin = sibling_bin("echo-llm");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut l = Launched::start(
            "llm_provider",
            "network",
            &[("api_key", "sk-very-secret-value")],
            &[bin.to_str().expect("path")],
        );
        let _ = l.channel().await;
        l.signal_term();
        let _ = l.wait_exit(Duration::from_secs(20)).await;
        let out = l.output();
        assert!(out.contains("api_key"), "key names are logged: {out}");
        assert!(
            !out.contains("sk-very-secret-value"),
            "secret leaked: {out}"
        );
    });
}

#[tokio::test]
async fn sdk_plugin_stops_cleanly_on_sigterm() -> TestResult {
    // The SDK's own signal handling, without the launcher in front.
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(sibling_bin("echo-llm"))
        .env("HECTOR_PLUGIN_ADDR", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let channel = serving_at(&addr, "hector.plugin.LLMProvider").await;
    // Before Initialize, plugin calls are refused with FAILED_PRECONDITION.
    let err = LlmProviderClient::new(channel)
        .generate(user("early"))
        .await
        .expect_err("not initialized");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: kill(2) on our own child process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        assert!(Instant::now() < deadline, "echo-llm ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    Ok(())
}

#[tokio::test]
async fn sdk_plugin_serves_on_a_unix_socket() -> TestResult {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("echo.sock");
    let addr = format!("unix:{}", socket.display());
    let mut child = Command::new(sibling_bin("echo-llm"))
        .env("HECTOR_PLUGIN_ADDR", &addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let channel = serving_at(&addr, "").await;
    let config = [("prefix".to_string(), "sock: ".to_string())].into();
    hector_plugin_sdk::LifecycleClient::new(
        channel.clone(),
        hector_plugin_sdk::PluginType::LlmProvider,
    )
    .initialize(config)
    .await?;
    let answer = LlmProviderClient::new(channel)
        .generate(user("hi"))
        .await?
        .into_inner();
    assert_eq!(answer.text, "sock: hi");
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

#[test]
fn sdk_plugin_refuses_a_foreign_go_plugin_cookie() -> TestResult {
    let out = Command::new(sibling_bin("echo-llm"))
        .env_remove("HECTOR_PLUGIN_ADDR")
        .env("HECTOR_PLUGIN", "someone_else_v2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    assert!(!out.status.success(), "must not serve for a foreign host");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HECTOR_PLUGIN") && err.contains("hector_plugin_v1"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no handshake line for a foreign host"
    );
    Ok(())
}

#[tokio::test]
async fn killing_the_launcher_takes_the_plugin_down() -> TestResult {
    let bin = sibling_bin("echo-llm");
    let mut l = Launched::start(
        "llm_provider",
        "network",
        &[],
        &[bin.to_str().ok_or("path")?],
    );
    let _ = l.channel().await;
    l.child.kill()?; // SIGKILL: no chance to stop the plugin itself
    l.child.wait()?;
    let out = l.output();
    let pid: i32 = out
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| format!("no plugin pid in the launcher log: {out}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Gone, or a zombie waiting for its new parent to reap it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = state
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X");
        if !alive {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "plugin {pid} outlived its launcher"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
