//! Protocol tests: real plugins (Rust SDK, Go go-plugin, Python grpcio) served through the
//! real launcher binary, called by a Rust gRPC client over loopback.
//!
//! The Rust example binaries must be built first (`cargo build --workspace --bins`, which
//! `make test` does); the Go plugin is built here with `go`, the Python plugin runs in the
//! virtualenv `tests/setup/deps` prepares.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// Everything the launcher printed so far, stdout and stderr, read as it comes.
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
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
        Self::spawn(dir, &config_dir, plugin_type, launch, command, extra, env)
    }

    /// Starts the launcher on `config_dir`, which the caller has laid out.
    fn spawn(
        dir: tempfile::TempDir,
        config_dir: &Path,
        plugin_type: &str,
        launch: &str,
        command: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_hector-plugin-launcher"))
            .args(["--listen", &addr, "--type", plugin_type, "--launch", launch])
            .args(["--health-interval", "0.2", "--start-timeout", "60"])
            .args(extra)
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--")
            .args(command)
            // Tests that do not look at the drain should not wait for it; the others pass
            // --drain-delay, which wins over the environment.
            .env("HECTOR_LAUNCHER_DRAIN_DELAY", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start launcher");
        // Read as it comes: a test can wait for a line, and a chatty launcher never blocks
        // on a full pipe.
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for stream in streams.into_iter().flatten() {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            }));
        }
        Launched {
            child,
            addr,
            dir,
            log,
            readers,
        }
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
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.log_so_far()
    }

    /// What the launcher printed so far.
    fn log_so_far(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until the launcher has printed a line containing `needle`.
    async fn wait_for_log(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log_so_far().contains(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "launcher exited ({status}) before logging {needle:?}: {}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the launcher did not log {needle:?} within {within:?}:\n{}",
                self.log_so_far()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
    let check = client.check(HealthCheckRequest {
        service: service.into(),
    });
    let resp = tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .ok()?
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

#[tokio::test]
async fn drain_fails_health_then_finishes_in_flight_calls() -> TestResult {
    let bin = go_plugin();
    let drain_delay = Duration::from_secs(2);
    let mut l = Launched::start_with(
        "llm_provider",
        "go-plugin",
        &[("prefix", "go says: "), ("shutdown_file", "$DIR/shutdown")],
        &[bin.to_str().ok_or("path")?],
        // The in-flight call and the connection opened during the delay fill the cap; the
        // call is silent for 3 s, well within the idle timeout.
        &[
            "--drain-delay",
            "2",
            "--drain-timeout",
            "20",
            "--max-connections",
            "2",
            "--idle-timeout",
            "10",
            "--tcp-keepalive",
            "5",
        ],
        &[],
    );
    let ch = l.channel().await;
    let mut client = LlmProviderClient::new(l.plugin_channel().await);
    assert_eq!(generate_within(&mut client, "warm").await?, "go says: warm");
    // A call that is still running when the drain ends and connections are told to go away.
    let long = tokio::spawn({
        let mut client = client.clone();
        async move { generate_within(&mut client, "sleep:3000").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    l.signal_term();

    // Health fails at once, for the plugin's service and the whole server.
    while health(&ch, "hector.plugin.LLMProvider").await != Some(ServingStatus::NotServing) {
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "health still not NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&ch, "").await, Some(ServingStatus::NotServing));
    // The mirror of the plugin's own Health (every 0.2 s here) must not flip it back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        health(&ch, "hector.plugin.LLMProvider").await,
        Some(ServingStatus::NotServing)
    );

    // During the drain delay, new connections are still served: spliced plugin calls, and
    // probes (which see NOT_SERVING).
    let mut fresh = LlmProviderClient::new(l.plugin_channel().await);
    let answer = generate_within(&mut fresh, "still here").await?;
    assert_eq!(answer, "go says: still here");
    let probe = hector_plugin_sdk::connect(&l.addr, Duration::from_secs(2)).await?;
    assert_eq!(health(&probe, "").await, Some(ServingStatus::NotServing));
    assert_eq!(
        metric(&l.addr, "hector_launcher_spliced_connections").await,
        2
    );
    assert_eq!(metric(&l.addr, REFUSED_FOR_LIMIT).await, 0);
    assert!(
        signalled.elapsed() < drain_delay,
        "the checks above must run during the drain delay"
    );
    drop((fresh, probe));

    // After the delay the launcher waits for the call in flight.
    tokio::time::sleep_until((signalled + drain_delay + Duration::from_millis(300)).into()).await;
    assert!(
        l.child.try_wait()?.is_none(),
        "the launcher must wait for the call in flight"
    );
    let answer = long.await??;
    assert_eq!(answer, "go says: sleep:3000");
    assert!(
        signalled.elapsed() > drain_delay,
        "the call outlived the drain delay"
    );

    let status = l.wait_exit(Duration::from_secs(20)).await;
    let out = l.output();
    assert!(status.success(), "launcher exit: {status}\n{out}");
    assert_eq!(std::fs::read_to_string(l.path("shutdown"))?, "shutdown");
    for step in [
        "health is NOT_SERVING",
        "asked every open one to go away",
        "all connections closed",
        "plugin acknowledged Shutdown",
    ] {
        assert!(out.contains(step), "missing {step:?} in:\n{out}");
    }
    Ok(())
}

#[tokio::test]
async fn drain_second_signal_skips_the_wait() -> TestResult {
    let bin = sibling_bin("echo-llm");
    let mut l = Launched::start_with(
        "llm_provider",
        "network",
        &[],
        &[bin.to_str().ok_or("path")?],
        &["--drain-delay", "60"],
        &[],
    );
    let ch = l.channel().await;
    l.signal_term();
    wait_health(&ch, "", ServingStatus::NotServing).await;
    let second = Instant::now();
    l.signal_term();
    let status = l.wait_exit(Duration::from_secs(15)).await;
    let out = l.output();
    assert!(status.success(), "launcher exit: {status}\n{out}");
    assert!(second.elapsed() < Duration::from_secs(10), "{out}");
    assert!(out.contains("skipping the rest of the drain"), "{out}");
    assert!(out.contains("plugin acknowledged Shutdown"), "{out}");
    Ok(())
}

/// A stand-in for a Kubernetes Service address: each new connection goes to the backend
/// published at that moment, and stays there (as with kube-proxy and conntrack).
async fn service_address(backend: Arc<Mutex<String>>) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let to = backend.lock().map(|b| b.clone()).unwrap_or_default();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&to).await {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Ok(addr)
}

/// Whether a failed call provably never left the client: hyper hands a request back unsent
/// ("operation was canceled: connection closed") when it was queued on a connection that a
/// GOAWAY had just closed. gRPC clients retry such calls transparently; tonic does not.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            return e.is_canceled();
        }
        source = e.source();
    }
    false
}

/// One Generate call, bounded in time so that a broken drain fails the test instead of
/// hanging it.
async fn generate_within(
    client: &mut LlmProviderClient<Channel>,
    text: &str,
) -> Result<String, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(10), client.generate(user(text))).await {
        Ok(answer) => answer.map(|a| a.into_inner().text),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 10 s")),
    }
}

/// What a client calling in a loop over one Channel saw while its server drained.
#[derive(Debug, Default)]
struct LoopOutcome {
    before: u32,
    after: u32,
    from_a: u32,
    from_b: u32,
    retried: Vec<String>,
    failures: Vec<String>,
}

/// Launcher A (drained) and B behind one Service address; a client calls Generate in a
/// loop over one plain Channel to that address while A is SIGTERMed. With
/// `retry_unsent`, calls that never left the client are retried once.
async fn loop_through_a_drain(
    retry_unsent: bool,
) -> Result<LoopOutcome, Box<dyn std::error::Error>> {
    let bin = go_plugin();
    let mut a = Launched::start_with(
        "llm_provider",
        "go-plugin",
        &[("prefix", "a: ")],
        &[bin.to_str().ok_or("path")?],
        &["--drain-delay", "1", "--drain-timeout", "10"],
        &[],
    );
    let mut b = Launched::start(
        "llm_provider",
        "go-plugin",
        &[("prefix", "b: ")],
        &[bin.to_str().ok_or("path")?],
    );
    let _ = a.channel().await;
    let _ = b.channel().await;

    // The endpoints controller: probes A like the kubelet and unpublishes it once it is not
    // ready; new connections then go to B.
    let backend = Arc::new(Mutex::new(a.addr.clone()));
    let service = service_address(backend.clone()).await?;
    let controller = tokio::spawn({
        let (a_addr, b_addr) = (a.addr.clone(), b.addr.clone());
        async move {
            loop {
                let ready = match hector_plugin_sdk::connect(&a_addr, Duration::from_secs(1)).await
                {
                    Ok(ch) => health(&ch, "").await == Some(ServingStatus::Serving),
                    Err(_) => false,
                };
                if !ready {
                    if let Ok(mut b) = backend.lock() {
                        *b = b_addr;
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // One plain Channel to the one Service address, as an agent would hold.
    let mut client =
        LlmProviderClient::new(hector_plugin_sdk::connect(&service, Duration::from_secs(5)).await?);
    let started = Instant::now();
    let mut signalled: Option<Instant> = None;
    let mut a_exited: Option<Instant> = None;
    let mut o = LoopOutcome::default();
    loop {
        let now = Instant::now();
        if signalled.is_none() && now - started > Duration::from_millis(500) {
            a.signal_term();
            signalled = Some(now);
        }
        if a_exited.is_none() && signalled.is_some() && a.child.try_wait()?.is_some() {
            a_exited = Some(now);
        }
        if a_exited.is_some_and(|t| now - t > Duration::from_millis(500)) {
            break;
        }
        assert!(now - started < Duration::from_secs(30), "A never exited");
        let mut result = generate_within(&mut client, "loop").await;
        if retry_unsent
            && let Err(status) = &result
            && never_sent(status)
        {
            o.retried.push(format!(
                "{:?} after SIGTERM: {status:?}",
                signalled.map(|s| s.elapsed())
            ));
            result = generate_within(&mut client, "loop").await;
        }
        match result {
            Ok(text) => {
                if signalled.is_some() {
                    o.after += 1;
                } else {
                    o.before += 1;
                }
                match text.as_str() {
                    "a: loop" => o.from_a += 1,
                    "b: loop" => o.from_b += 1,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            Err(status) => o.failures.push(format!(
                "{:?} after SIGTERM: {status:?}",
                signalled.map(|s| s.elapsed())
            )),
        }
    }
    controller.await?;
    let status = a.wait_exit(Duration::from_secs(1)).await;
    let out = a.output();
    assert!(status.success(), "A's exit: {status}\n{out}");
    // The client left because of the GOAWAY, not because the launcher gave up waiting.
    assert!(out.contains("all connections closed"), "{out}");
    eprintln!("{o:?}");
    Ok(o)
}

fn assert_never_failed(o: &LoopOutcome) {
    assert!(
        o.failures.is_empty(),
        "{} failed calls: {o:#?}",
        o.failures.len()
    );
    assert!(
        o.before > 0 && o.after > 0,
        "calls before and after SIGTERM: {o:?}"
    );
    assert!(o.from_a > 0 && o.from_b > 0, "answers from A and B: {o:?}");
}

/// As an agent would run it: a multi-threaded runtime, where hyper's dispatcher can accept a
/// call in the instant between the GOAWAY closing the connection and itself stopping, and
/// hand it back unsent; such a call is retried once (gRPC clients do this transparently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_goaway_so_a_looping_client_never_fails() -> TestResult {
    let o = loop_through_a_drain(true).await?;
    assert_never_failed(&o);
    assert!(
        o.retried.len() <= 1,
        "one connection, one call at a time: {o:#?}"
    );
    Ok(())
}

/// On a single-threaded runtime the same plain Channel needs no retry: the launcher sends
/// the GOAWAY together with the plugin's next response, so the client's connection closes in
/// the same step that completes its call, and its dispatcher stops before the next call is
/// queued.
#[tokio::test]
async fn drain_sends_goaway_so_a_single_threaded_plain_channel_never_fails() -> TestResult {
    let o = loop_through_a_drain(false).await?;
    assert_never_failed(&o);
    Ok(())
}

/// A config directory laid out as the kubelet lays out a ConfigMap, Secret or projected
/// volume, and updated as it updates one: the files live in a hidden timestamped directory,
/// `..data` links to it, and each key is a symlink `KEY -> ..data/KEY`. An update writes a
/// new timestamped directory, points `..data_tmp` at it and renames that over `..data` (the
/// atomic step), then adds the symlinks of new keys, removes those of removed keys and
/// deletes the old directory.
struct KubeletDir {
    path: PathBuf,
    snapshot: Option<String>,
    keys: Vec<String>,
    updates: u32,
}

impl KubeletDir {
    fn new(path: PathBuf, config: &[(&str, &str)]) -> Self {
        std::fs::create_dir(&path).expect("config dir");
        let mut dir = Self {
            path,
            snapshot: None,
            keys: Vec::new(),
            updates: 0,
        };
        dir.publish(config);
        dir
    }

    fn publish(&mut self, config: &[(&str, &str)]) {
        use std::os::unix::fs::symlink;
        self.updates += 1;
        let snapshot = format!(
            "..2026_11_30_07_00_{:02}.{:06}",
            self.updates % 60,
            self.updates
        );
        std::fs::create_dir(self.path.join(&snapshot)).expect("snapshot dir");
        for (k, v) in config {
            std::fs::write(self.path.join(&snapshot).join(k), v).expect("config file");
        }
        let tmp = self.path.join("..data_tmp");
        symlink(&snapshot, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.path.join("..data")).expect("swap ..data");
        let keys: Vec<String> = config.iter().map(|(k, _)| k.to_string()).collect();
        for k in &keys {
            if !self.keys.contains(k) {
                symlink(format!("..data/{k}"), self.path.join(k)).expect("key symlink");
            }
        }
        for k in &self.keys {
            if !keys.contains(k) {
                std::fs::remove_file(self.path.join(k)).expect("remove key symlink");
            }
        }
        if let Some(old) = self.snapshot.replace(snapshot) {
            std::fs::remove_dir_all(self.path.join(old)).expect("remove old snapshot");
        }
        self.keys = keys;
    }
}

/// The processes whose parent is `pid`, zombies included: a child the launcher has not
/// reaped is still its child.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// Waits until the launcher has exactly one child process and returns it.
async fn only_child(l: &Launched, not: Option<u32>, within: Duration) -> u32 {
    let pid = l.child.id();
    let deadline = Instant::now() + within;
    loop {
        let children = children_of(pid);
        if let [only] = children[..]
            && Some(only) != not
        {
            return only;
        }
        assert!(
            Instant::now() < deadline,
            "the launcher still has children {children:?} (old plugin {not:?}) after {within:?}:\n{}",
            l.log_so_far()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a client loop reaches the launcher.
#[derive(Clone)]
enum Caller {
    /// Unary Generate calls over one long-lived Channel; with `--forward request` several
    /// loops may share it.
    Reused(Channel),
    /// Unary Generate calls over one long-lived Channel that other loops use at the same
    /// time, on a spliced connection. When the GOAWAY that moves the connection to the new
    /// plugin arrives while another loop's call is still open on it, hyper hands the next
    /// call queued on it back unsent (`Canceled`, "connection closed"): the connection stays
    /// up for the open call but takes no new one, and tonic does not retry. gRPC's own
    /// libraries and hector-plugin-client retry such a call, as this loop does, once.
    Shared(Channel),
    /// GenerateStreaming over one long-lived Channel.
    Streaming(Channel),
    /// A new connection for every call.
    Fresh(String),
}

/// What one client loop saw: which configuration each answer came from, in order, and the
/// calls that failed.
#[derive(Debug, Default)]
struct Seen {
    answers: Vec<usize>,
    failures: Vec<String>,
    /// Calls hyper handed back unsent and that were retried ([`Caller::Shared`] only).
    retried: Vec<String>,
}

/// Client loops calling the launcher while its configuration is rotated, plus a probe loop
/// that checks health on a fresh connection each time, as the kubelet does.
struct Workload {
    stop: Arc<std::sync::atomic::AtomicBool>,
    loops: Vec<(String, Arc<Mutex<Seen>>)>,
    probe_failures: Arc<Mutex<Vec<String>>>,
    probes: Arc<std::sync::atomic::AtomicU32>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// `prefixes` are the configured prefixes in the order they are rotated in.
    fn start(addr: &str, callers: Vec<(&str, Caller)>, prefixes: &'static [&'static str]) -> Self {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut loops = Vec::new();
        let mut tasks = Vec::new();
        let started = Instant::now();
        for (name, caller) in callers {
            let seen = Arc::new(Mutex::new(Seen::default()));
            loops.push((name.to_string(), seen.clone()));
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut retried = None;
                    let result = match &caller {
                        Caller::Reused(ch) => {
                            generate_within(&mut LlmProviderClient::new(ch.clone()), "loop").await
                        }
                        Caller::Shared(ch) => {
                            let mut client = LlmProviderClient::new(ch.clone());
                            match generate_within(&mut client, "loop").await {
                                Err(status) if never_sent(&status) => {
                                    retried =
                                        Some(format!("after {:?}: {status:?}", started.elapsed()));
                                    generate_within(&mut client, "loop").await
                                }
                                other => other,
                            }
                        }
                        Caller::Streaming(ch) => {
                            streamed_within(&mut LlmProviderClient::new(ch.clone()), "loop").await
                        }
                        Caller::Fresh(addr) => {
                            match hector_plugin_sdk::connect(addr, Duration::from_secs(5)).await {
                                Ok(ch) => {
                                    generate_within(&mut LlmProviderClient::new(ch), "loop").await
                                }
                                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                            }
                        }
                    };
                    let mut seen = seen.lock().expect("seen");
                    seen.retried.extend(retried);
                    match result {
                        Ok(text) => {
                            match prefixes.iter().position(|p| text == format!("{p}loop")) {
                                Some(i) => seen.answers.push(i),
                                None => seen.failures.push(format!("unexpected answer {text:?}")),
                            }
                        }
                        Err(status) => seen
                            .failures
                            .push(format!("after {:?}: {status:?}", started.elapsed())),
                    }
                }
            }));
        }
        let probe_failures = Arc::new(Mutex::new(Vec::new()));
        let probes = Arc::new(std::sync::atomic::AtomicU32::new(0));
        tasks.push(tokio::spawn({
            let (stop, failures, probes) = (stop.clone(), probe_failures.clone(), probes.clone());
            let addr = addr.to_string();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let status =
                        match hector_plugin_sdk::connect(&addr, Duration::from_secs(5)).await {
                            Ok(ch) => health(&ch, "").await,
                            Err(_) => None,
                        };
                    probes.fetch_add(1, Ordering::Relaxed);
                    if status != Some(ServingStatus::Serving)
                        && let Ok(mut f) = failures.lock()
                    {
                        f.push(format!("after {:?}: {status:?}", started.elapsed()));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
        Self {
            stop,
            loops,
            probe_failures,
            probes,
            tasks,
        }
    }

    /// Waits until every loop has had `count` answers from configuration `config`, and
    /// returns how long that took.
    async fn wait_answers(&self, config: usize, count: usize, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let behind: Vec<String> = self
                .loops
                .iter()
                .filter_map(|(name, seen)| {
                    let seen = seen.lock().expect("seen");
                    let n = seen.answers.iter().filter(|&&a| a == config).count();
                    (n < count).then(|| format!("{name}: {n} answers from #{config}, {seen:?}"))
                })
                .collect();
            if behind.is_empty() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "after {within:?} some loops still lack answers from configuration #{config}: {behind:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the loops and checks what they saw: no failed call, no failed probe, and per
    /// loop the configurations in rotation order (never an old one after a newer one).
    async fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("client loops end")
                .expect("client loop task");
        }
        let probe_failures = self.probe_failures.lock().expect("probes").clone();
        let probes = self.probes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            probe_failures.is_empty(),
            "{} of {probes} health probes were not SERVING: {probe_failures:#?}",
            probe_failures.len()
        );
        assert!(probes > 0, "no health probe ran");
        for (name, seen) in &self.loops {
            let seen = seen.lock().expect("seen");
            assert!(
                seen.failures.is_empty(),
                "{name}: {} failed calls of {}: {:#?}",
                seen.failures.len(),
                seen.failures.len() + seen.answers.len(),
                seen.failures
            );
            // One configuration change: a shared channel connects again right after it.
            assert!(
                seen.retried.len() <= 1,
                "{name}: more than one call handed back unsent: {:#?}",
                seen.retried
            );
            assert!(
                seen.answers.windows(2).all(|w| w[0] <= w[1]),
                "{name}: answers went back to an older configuration: {:?}",
                seen.answers
            );
            eprintln!(
                "{name}: {} calls, {} retried unsent, answers per configuration {:?}",
                seen.answers.len(),
                seen.retried.len(),
                (0..=seen.answers.iter().copied().max().unwrap_or(0))
                    .map(|c| seen.answers.iter().filter(|&&a| a == c).count())
                    .collect::<Vec<_>>()
            );
        }
        eprintln!("{probes} health probes, all SERVING");
    }
}

/// One GenerateStreaming call, its chunks joined, bounded in time.
async fn streamed_within(
    client: &mut LlmProviderClient<Channel>,
    text: &str,
) -> Result<String, tonic::Status> {
    let call = async {
        let mut stream = client.generate_streaming(user(text)).await?.into_inner();
        let mut joined = String::new();
        let mut done = false;
        while let Some(chunk) = stream.message().await? {
            match ChunkType::try_from(chunk.r#type) {
                Ok(ChunkType::Text) => joined.push_str(&chunk.text),
                Ok(ChunkType::Done) => done = true,
                other => return Err(tonic::Status::internal(format!("chunk {other:?}"))),
            }
        }
        if done {
            Ok(joined)
        } else {
            Err(tonic::Status::internal(format!(
                "no DONE chunk after {joined:?}"
            )))
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 10 s")),
    }
}

/// The launcher flags of the rotation tests: poll often, and bound the old plugin's drain.
const ROTATION_FLAGS: [&str; 4] = ["--config-poll-interval", "0.2", "--drain-timeout", "10"];

/// Starts echo-llm behind the launcher with a kubelet-style config directory.
fn launch_rotating(
    launch: &str,
    command: &[&str],
    config: &[(&str, &str)],
    extra: &[&str],
) -> (Launched, KubeletDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_dir = KubeletDir::new(dir.path().join("config"), config);
    let mut flags = ROTATION_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    let path = config_dir.path.clone();
    let l = Launched::spawn(dir, &path, "llm_provider", launch, command, &flags, &[]);
    (l, config_dir)
}

/// A rotated value reaches the plugin, and no client call fails on the way: reused
/// connections (unary and streaming) are moved over, fresh connections reach the new plugin,
/// the kubelet's probe keeps seeing SERVING, the old plugin is stopped, and neither value is
/// ever logged.
async fn rotation_without_failed_calls(launch: &str, forward: &str) -> TestResult {
    const PREFIXES: &[&str] = &["s3cr3t-old: ", "s3cr3t-new: "];
    let bin = sibling_bin("echo-llm");
    let (mut l, mut config) = launch_rotating(
        launch,
        &[bin.to_str().ok_or("path")?],
        &[("prefix", PREFIXES[0]), ("model", "echo-rotating")],
        &["--forward", forward],
    );
    let _ = l.channel().await;
    let old = only_child(&l, None, Duration::from_secs(10)).await;
    let shared = l.plugin_channel().await;
    let mut callers = vec![
        (
            "reused connection",
            Caller::Reused(l.plugin_channel().await),
        ),
        ("streaming", Caller::Streaming(l.plugin_channel().await)),
        ("fresh connection per call", Caller::Fresh(l.addr.clone())),
    ];
    if forward == "request" {
        // Served by the launcher, the connection never has to go away: the next request
        // simply goes to the new plugin. A plain tonic Channel shared by two loops loses
        // nothing.
        callers.push((
            "shared connection, caller A",
            Caller::Reused(shared.clone()),
        ));
        callers.push(("shared connection, caller B", Caller::Reused(shared)));
    } else {
        callers.push((
            "second reused connection",
            Caller::Reused(l.plugin_channel().await),
        ));
        callers.push((
            "shared connection, caller A",
            Caller::Shared(shared.clone()),
        ));
        callers.push(("shared connection, caller B", Caller::Shared(shared)));
    }
    let work = Workload::start(&l.addr, callers, PREFIXES);
    work.wait_answers(0, 20, Duration::from_secs(20)).await;

    config.publish(&[("prefix", PREFIXES[1]), ("model", "echo-rotating")]);
    let took = work.wait_answers(1, 1, Duration::from_secs(20)).await;
    eprintln!("every loop answered with the new prefix {took:?} after the rotation");
    // The old plugin is stopped once its clients have moved over, long before the drain
    // timeout (10 s) would stop it anyway.
    let new = only_child(&l, Some(old), Duration::from_secs(20)).await;
    work.wait_answers(1, 20, Duration::from_secs(20)).await;
    work.finish().await;
    assert!(
        children_of(l.child.id()) == [new],
        "only the new plugin runs"
    );

    l.signal_term();
    let status = l.wait_exit(Duration::from_secs(30)).await;
    let out = l.output();
    assert!(status.success(), "launcher exit: {status}\n{out}");
    for step in [
        "configuration changed: starting a new plugin",
        "configuration applied",
        "changed=[\"prefix\"]",
        "the old plugin's connections and calls are done",
        "old plugin stopped",
    ] {
        assert!(out.contains(step), "missing {step:?} in:\n{out}");
    }
    assert!(
        !out.contains("s3cr3t"),
        "a configuration value was logged:\n{out}"
    );
    Ok(())
}

#[tokio::test]
async fn rotated_config_reaches_a_go_plugin_child_without_failed_calls() -> TestResult {
    rotation_without_failed_calls("go-plugin", "connection").await
}

#[tokio::test]
async fn rotated_config_reaches_a_network_child_without_failed_calls() -> TestResult {
    // Request by request: every connection is served by the launcher, and each request goes
    // to the plugin that is current when it arrives.
    rotation_without_failed_calls("network", "request").await
}

/// A configuration the plugin refuses is not applied: the old plugin keeps answering with
/// the old values, the failure is logged with key names and exposed in health, and the next
/// change is applied.
#[tokio::test]
async fn refused_rotation_keeps_the_old_plugin_and_a_later_one_applies() -> TestResult {
    const PREFIXES: &[&str] = &["old: ", "refused: ", "newer: "];
    const CONFIG_SERVICE: &str = "hector.launcher.Config";
    let bin = sibling_bin("echo-llm");
    let (mut l, mut config) = launch_rotating(
        "network",
        &[bin.to_str().ok_or("path")?],
        &[("prefix", PREFIXES[0]), ("max_tokens", "64")],
        &[],
    );
    let probe = l.channel().await;
    assert_eq!(
        health(&probe, CONFIG_SERVICE).await,
        Some(ServingStatus::Serving)
    );
    let old = only_child(&l, None, Duration::from_secs(10)).await;
    let work = Workload::start(
        &l.addr,
        vec![
            ("reused", Caller::Reused(l.plugin_channel().await)),
            ("fresh connection per call", Caller::Fresh(l.addr.clone())),
        ],
        PREFIXES,
    );
    work.wait_answers(0, 10, Duration::from_secs(20)).await;

    // echo-llm refuses a max_tokens that is not a number, quoting it.
    config.publish(&[
        ("prefix", PREFIXES[1]),
        ("max_tokens", "s3cr3t-not-a-number"),
    ]);
    wait_health(&probe, CONFIG_SERVICE, ServingStatus::NotServing).await;
    assert_eq!(
        children_of(l.child.id()),
        [old],
        "the refused plugin was stopped, the old one runs"
    );
    // Calls made after the refusal still reach the old plugin, with its values.
    work.wait_answers(0, 30, Duration::from_secs(20)).await;
    let mut client = LlmProviderClient::new(l.plugin_channel().await);
    assert_eq!(generate_within(&mut client, "loop").await?, "old: loop");
    let info = client.get_model_info(Empty {}).await?.into_inner();
    assert_eq!(info.max_tokens, 64);
    assert_eq!(health(&probe, "").await, Some(ServingStatus::Serving));

    config.publish(&[("prefix", PREFIXES[2]), ("max_tokens", "128")]);
    work.wait_answers(2, 1, Duration::from_secs(20)).await;
    only_child(&l, Some(old), Duration::from_secs(20)).await;
    wait_health(&probe, CONFIG_SERVICE, ServingStatus::Serving).await;
    let mut client = LlmProviderClient::new(l.plugin_channel().await);
    let info = client.get_model_info(Empty {}).await?.into_inner();
    assert_eq!(info.max_tokens, 128, "the new values are used");
    work.wait_answers(2, 10, Duration::from_secs(20)).await;
    let refused_answers: usize = work
        .loops
        .iter()
        .map(|(_, seen)| {
            seen.lock()
                .map(|s| s.answers.iter().filter(|&&a| a == 1).count())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        refused_answers, 0,
        "nothing answered with the refused configuration"
    );
    work.finish().await;

    l.signal_term();
    let status = l.wait_exit(Duration::from_secs(30)).await;
    let out = l.output();
    assert!(status.success(), "launcher exit: {status}\n{out}");
    let refusal = out
        .lines()
        .find(|line| line.contains("configuration change not applied"))
        .ok_or_else(|| format!("no refusal logged:\n{out}"))?;
    assert!(refusal.contains("ERROR"), "logged as an error: {refusal}");
    assert!(
        refusal.contains("max_tokens") && refusal.contains("[redacted]"),
        "names the key and the plugin's reason, without the value: {refusal}"
    );
    assert!(
        !out.contains("s3cr3t"),
        "a configuration value was logged:\n{out}"
    );
    Ok(())
}

/// A change made while a new plugin is starting is applied after that swap, not lost. The
/// plugin is started through `sh -c 'sleep 2; exec …'`, so each start takes two seconds and
/// the second change surely lands during the first swap.
#[tokio::test]
async fn change_during_a_swap_is_applied_after_it() -> TestResult {
    const PREFIXES: &[&str] = &["zero: ", "one: ", "two: "];
    let bin = sibling_bin("echo-llm");
    let (mut l, mut config) = launch_rotating(
        "go-plugin",
        &[
            "sh",
            "-c",
            "sleep 2; exec \"$0\"",
            bin.to_str().ok_or("path")?,
        ],
        &[("prefix", PREFIXES[0])],
        &[],
    );
    let _ = l.channel().await;
    let old = only_child(&l, None, Duration::from_secs(10)).await;
    let work = Workload::start(
        &l.addr,
        vec![("reused", Caller::Reused(l.plugin_channel().await))],
        PREFIXES,
    );
    work.wait_answers(0, 10, Duration::from_secs(20)).await;

    config.publish(&[("prefix", PREFIXES[1])]);
    l.wait_for_log(
        "configuration changed: starting a new plugin",
        Duration::from_secs(10),
    )
    .await;
    config.publish(&[("prefix", PREFIXES[2])]);
    work.wait_answers(2, 10, Duration::from_secs(40)).await;
    only_child(&l, Some(old), Duration::from_secs(20)).await;
    work.finish().await;

    l.signal_term();
    let status = l.wait_exit(Duration::from_secs(30)).await;
    let out = l.output();
    assert!(status.success(), "launcher exit: {status}\n{out}");
    let applied: Vec<&str> = out
        .lines()
        .filter(|line| line.contains("configuration applied"))
        .collect();
    assert_eq!(applied.len(), 2, "two swaps, one per change:\n{out}");
    assert!(
        applied[0].contains("generation=2") && applied[1].contains("generation=3"),
        "{applied:#?}"
    );
    Ok(())
}

// --- The plugin's lifecycle belongs to the launcher --------------------------------------

/// Asserts that a call was refused by the launcher as reserved, naming `method`.
fn assert_reserved<T: std::fmt::Debug>(result: Result<T, tonic::Status>, method: &str) {
    let status = result.expect_err("a reserved call must be refused");
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "{method}: {status:?}"
    );
    let expected = format!("{method} is reserved to the launcher: ");
    assert!(
        status.message().starts_with(&expected) && status.message().contains("network"),
        "{method}: {:?}",
        status.message()
    );
}

/// Initialize, Shutdown and go-plugin's internal services are refused from the network, as
/// the first call of a connection and as later calls on a connection whose earlier and
/// later calls pass; the plugin keeps its configuration and its process.
async fn lifecycle_is_reserved_to_the_launcher(launch: &str, forward: &str) -> TestResult {
    use hector_plugin_sdk::proto::goplugin::{
        Empty as GoEmpty, grpc_controller_client::GrpcControllerClient,
        grpc_stdio_client::GrpcStdioClient,
    };
    use hector_plugin_sdk::proto::{InitializeRequest, ShutdownRequest, StatusRequest};
    const INITIALIZE: &str = "hector.plugin.LLMProvider/Initialize";
    const SHUTDOWN: &str = "hector.plugin.LLMProvider/Shutdown";
    const CONTROLLER: &str = "plugin.GRPCController/Shutdown";
    let stolen = || InitializeRequest {
        config: [("prefix".to_string(), "st0len-value: ".to_string())].into(),
    };
    let bin = sibling_bin("echo-llm");
    let mut l = Launched::start_with(
        "llm_provider",
        launch,
        &[("prefix", "original: ")],
        &[bin.to_str().ok_or("path")?],
        &["--forward", forward],
        &[],
    );
    let probe = l.channel().await;
    let plugin = only_child(&l, None, Duration::from_secs(10)).await;

    // As the first call of a connection (which, with `--forward connection`, routes it).
    let mut first = LlmProviderClient::new(l.plugin_channel().await);
    assert_reserved(first.initialize(stolen()).await, INITIALIZE);
    let mut first = LlmProviderClient::new(l.plugin_channel().await);
    assert_reserved(first.shutdown(ShutdownRequest {}).await, SHUTDOWN);
    let mut first = GrpcControllerClient::new(l.plugin_channel().await);
    assert_reserved(first.shutdown(GoEmpty {}).await, CONTROLLER);

    // As later calls on one connection, between calls that pass.
    let channel = l.plugin_channel().await;
    let mut client = LlmProviderClient::new(channel.clone());
    let text = client.generate(user("before")).await?.into_inner().text;
    assert_eq!(text, "original: before");
    assert_reserved(client.initialize(stolen()).await, INITIALIZE);
    let text = client.generate(user("after")).await?.into_inner().text;
    assert_eq!(text, "original: after", "the configuration is unchanged");
    assert_reserved(client.shutdown(ShutdownRequest {}).await, SHUTDOWN);
    let streamed = streamed_within(&mut client, "still streaming").await?;
    assert_eq!(streamed, "original: still streaming");
    assert_reserved(
        GrpcControllerClient::new(channel.clone())
            .shutdown(GoEmpty {})
            .await,
        CONTROLLER,
    );
    assert_reserved(
        GrpcStdioClient::new(channel.clone()).stream_stdio(()).await,
        "plugin.GRPCStdio/StreamStdio",
    );
    let status = client.get_status(StatusRequest {}).await?.into_inner();
    assert_eq!(status.status, "ready", "never shut down");
    let info = client.get_model_info(Empty {}).await?.into_inner();
    assert_eq!(info.model_name, "echo-1");
    let text = client.generate(user("last")).await?.into_inner().text;
    assert_eq!(text, "original: last");

    // Health is still the launcher's, and the plugin is the process it started.
    assert_eq!(health(&probe, "").await, Some(ServingStatus::Serving));
    assert_eq!(
        children_of(l.child.id()),
        [plugin],
        "the same plugin process"
    );
    assert!(l.child.try_wait()?.is_none(), "the launcher still runs");
    // Each refusal counted and logged with the method and the caller, never its content.
    l.wait_for_log("refused_total=7", Duration::from_secs(5))
        .await;
    let log = l.log_so_far();
    assert!(!log.contains("refused_total=8"), "{log}");
    for method in [
        INITIALIZE,
        SHUTDOWN,
        CONTROLLER,
        "plugin.GRPCStdio/StreamStdio",
    ] {
        assert!(
            log.lines().any(|line| line.contains("refused a call")
                && line.contains(method)
                && line.contains("peer=127.0.0.1:")),
            "{method} refusal not logged:\n{log}"
        );
    }
    assert!(
        !log.contains("st0len-value"),
        "request content logged:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn lifecycle_is_reserved_go_plugin_spliced() -> TestResult {
    lifecycle_is_reserved_to_the_launcher("go-plugin", "connection").await
}

#[tokio::test]
async fn lifecycle_is_reserved_go_plugin_per_request() -> TestResult {
    lifecycle_is_reserved_to_the_launcher("go-plugin", "request").await
}

#[tokio::test]
async fn lifecycle_is_reserved_network_spliced() -> TestResult {
    lifecycle_is_reserved_to_the_launcher("network", "connection").await
}

#[tokio::test]
async fn lifecycle_is_reserved_network_per_request() -> TestResult {
    lifecycle_is_reserved_to_the_launcher("network", "request").await
}

/// An HPACK encoder that adds every field it does not find whole in its dynamic table to
/// it (as grpc-go's does, `:path` included) and refers to it by index afterwards, without
/// Huffman coding: a header block dropped on the way would shift the indices of every later
/// block.
#[derive(Default)]
struct IndexingEncoder {
    table: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
}

impl IndexingEncoder {
    fn encode(&mut self, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        fn integer(out: &mut Vec<u8>, value: usize, prefix: u8, flags: u8) {
            let max = (1usize << prefix) - 1;
            if value < max {
                out.push(flags | value as u8);
                return;
            }
            out.push(flags | max as u8);
            let mut rest = value - max;
            while rest >= 0x80 {
                out.push(0x80 | (rest & 0x7f) as u8);
                rest >>= 7;
            }
            out.push(rest as u8);
        }
        let mut out = Vec::new();
        for &(name, value) in fields {
            if let Some(p) = self.table.iter().position(|(n, v)| n == name && v == value) {
                integer(&mut out, 62 + p, 7, 0x80);
                continue;
            }
            out.push(0x40);
            for s in [name, value] {
                integer(&mut out, s.len(), 7, 0);
                out.extend_from_slice(s);
            }
            self.size += name.len() + value.len() + 32;
            self.table.push_front((name.to_vec(), value.to_vec()));
            while self.size > 4096 {
                let (n, v) = self.table.pop_back().expect("entries");
                self.size -= n.len() + v.len() + 32;
            }
        }
        out
    }
}

/// A hand-driven HTTP/2 client: every frame, stream id and header block is the test's own.
struct RawClient {
    socket: std::net::TcpStream,
    encoder: IndexingEncoder,
    decoder: fluke_hpack::Decoder<'static>,
    /// Received and not yet parsed.
    buffer: Vec<u8>,
    /// Per stream: header blocks (decoded), DATA, and whether it ended.
    streams: std::collections::HashMap<u32, RawStream>,
    /// A header block being received: stream and fragment.
    block: Option<(u32, Vec<u8>)>,
    /// The GOAWAY frames received, in order.
    goaways: Vec<RawGoaway>,
    /// The server closed the connection (end of stream).
    closed: bool,
}

/// A GOAWAY as received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawGoaway {
    last_stream: u32,
    code: u32,
    debug: String,
}

#[derive(Debug, Default)]
struct RawStream {
    headers: Vec<(String, String)>,
    data: Vec<u8>,
    ended: bool,
    reset: Option<u32>,
}

impl RawStream {
    fn field(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `text` field (1) of a unary GenerateResponse.
    fn text(&self) -> String {
        let mut fields = pb_fields(self.data.get(5..).unwrap_or_default());
        fields
            .remove(&1)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn pb_bytes(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(field << 3) | 2];
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
    out
}

/// Length-delimited fields of a protobuf message, by number (varints skipped).
fn pb_fields(mut bytes: &[u8]) -> std::collections::HashMap<u8, Vec<u8>> {
    fn varint(bytes: &mut &[u8]) -> usize {
        let mut value = 0;
        let mut shift = 0;
        while let Some((&b, rest)) = bytes.split_first() {
            *bytes = rest;
            value |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let mut fields = std::collections::HashMap::new();
    while !bytes.is_empty() {
        let tag = varint(&mut bytes);
        match tag & 7 {
            2 => {
                let len = varint(&mut bytes).min(bytes.len());
                fields.insert((tag >> 3) as u8, bytes[..len].to_vec());
                bytes = &bytes[len..];
            }
            0 => {
                varint(&mut bytes);
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    fields
}

/// A gRPC message: uncompressed, with its length.
fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn generate_body(text: &str) -> Vec<u8> {
    let message = [pb_bytes(1, b"user"), pb_bytes(2, text.as_bytes())].concat();
    grpc_message(&pb_bytes(1, &message))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const H2_DATA: u8 = 0x0;
const H2_HEADERS: u8 = 0x1;
const H2_RST_STREAM: u8 = 0x3;
const H2_SETTINGS: u8 = 0x4;
const H2_PING: u8 = 0x6;
const H2_GOAWAY: u8 = 0x7;
const H2_CONTINUATION: u8 = 0x9;
const H2_END_STREAM: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;
const H2_PADDED: u8 = 0x8;
const H2_PRIORITY: u8 = 0x20;

impl RawClient {
    fn connect(addr: &str) -> std::io::Result<Self> {
        let socket = std::net::TcpStream::connect(addr)?;
        // Every wait of this client is bounded.
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        socket.set_nodelay(true)?;
        let mut client = Self {
            socket,
            encoder: IndexingEncoder::default(),
            decoder: fluke_hpack::Decoder::new(),
            buffer: Vec::new(),
            streams: Default::default(),
            block: None,
            goaways: Vec::new(),
            closed: false,
        };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(raw_frame(H2_SETTINGS, 0, 0, &[]));
        client.send(&hello)?;
        Ok(client)
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.socket.write_all(bytes)
    }

    /// A unary call on `stream`: its header block in `parts` frames (the first padded and
    /// with priority fields when split), then its message with END_STREAM.
    fn call(&mut self, stream: u32, path: &str, body: &[u8], parts: usize) -> std::io::Result<()> {
        let frames = self.call_frames(stream, path, body, parts).concat();
        self.send(&frames)
    }

    /// The frames of [`RawClient::call`]: HEADERS, CONTINUATION frames, DATA.
    fn call_frames(&mut self, stream: u32, path: &str, body: &[u8], parts: usize) -> Vec<Vec<u8>> {
        let id = stream.to_string();
        let block = self.encoder.encode(&[
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", b"plugin"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"x-stream", id.as_bytes()),
        ]);
        let size = block.len().div_ceil(parts);
        let chunks: Vec<&[u8]> = block.chunks(size).collect();
        let mut frames = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let end = if last { H2_END_HEADERS } else { 0 };
            if i > 0 {
                frames.push(raw_frame(H2_CONTINUATION, end, stream, chunk));
            } else if parts > 1 {
                let mut payload = vec![2u8, 0, 0, 0, 0, 15];
                payload.extend_from_slice(chunk);
                payload.extend([0, 0]);
                let flags = H2_PADDED | H2_PRIORITY | end;
                frames.push(raw_frame(H2_HEADERS, flags, stream, &payload));
            } else {
                frames.push(raw_frame(H2_HEADERS, end, stream, chunk));
            }
        }
        frames.push(raw_frame(H2_DATA, H2_END_STREAM, stream, body));
        frames
    }

    /// Reads one more piece from the socket into the buffer; the end of the stream is
    /// noted in `closed`.
    fn read_more(&mut self) -> std::io::Result<()> {
        use std::io::Read;
        let mut buf = [0u8; 16 * 1024];
        let n = self.socket.read(&mut buf)?;
        if n == 0 {
            self.closed = true;
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buffer.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// Reads frames (answering SETTINGS and PING) until a GOAWAY has arrived.
    fn wait_goaway(&mut self) -> std::io::Result<RawGoaway> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.goaways.is_empty() {
            assert!(Instant::now() < deadline, "no GOAWAY");
            if !self.parse_one()? {
                self.read_more()?;
            }
        }
        Ok(self.goaways[0].clone())
    }

    /// Reads frames until the server closes the connection.
    fn wait_closed(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "the connection stayed open");
            if self.parse_one()? {
                continue;
            }
            match self.read_more() {
                Ok(()) => {}
                Err(_) if self.closed => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads frames until `stream` has ended (END_STREAM or RST_STREAM), answering SETTINGS
    /// and PING on the way.
    fn wait(&mut self, stream: u32) -> std::io::Result<&RawStream> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.streams.get(&stream).is_some_and(|s| s.ended) {
            assert!(Instant::now() < deadline, "stream {stream} never ended");
            if !self.parse_one()? {
                self.read_more()?;
            }
        }
        Ok(&self.streams[&stream])
    }

    /// Handles one whole frame from the buffer, if there is one.
    fn parse_one(&mut self) -> std::io::Result<bool> {
        if self.buffer.len() < 9 {
            return Ok(false);
        }
        let len = (usize::from(self.buffer[0]) << 16)
            | (usize::from(self.buffer[1]) << 8)
            | usize::from(self.buffer[2]);
        if self.buffer.len() < 9 + len {
            return Ok(false);
        }
        let frame: Vec<u8> = self.buffer.drain(..9 + len).collect();
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[9..];
        // RFC 9113 §6.10: a header block's frames follow one another with nothing between.
        if let Some((id, _)) = &self.block {
            assert!(
                kind == H2_CONTINUATION && stream == *id,
                "a frame of type {kind} on stream {stream} inside the header block of stream {id}"
            );
        }
        match kind {
            H2_GOAWAY => {
                let word = |at: usize| {
                    u32::from_be_bytes([
                        payload[at],
                        payload[at + 1],
                        payload[at + 2],
                        payload[at + 3],
                    ])
                };
                self.goaways.push(RawGoaway {
                    last_stream: word(0) & 0x7fff_ffff,
                    code: word(4),
                    debug: String::from_utf8_lossy(&payload[8..]).into_owned(),
                });
            }
            H2_SETTINGS if flags & 1 == 0 => self.send(&raw_frame(H2_SETTINGS, 1, 0, &[]))?,
            H2_PING if flags & 1 == 0 => self.send(&raw_frame(H2_PING, 1, 0, payload))?,
            H2_HEADERS | H2_CONTINUATION => {
                let fragment = if kind == H2_HEADERS {
                    assert!(self.block.is_none(), "HEADERS inside a header block");
                    let pad = if flags & H2_PADDED != 0 {
                        usize::from(payload[0])
                    } else {
                        0
                    };
                    let start = usize::from(flags & H2_PADDED != 0)
                        + if flags & H2_PRIORITY != 0 { 5 } else { 0 };
                    self.block = Some((stream, Vec::new()));
                    &payload[start..payload.len() - pad]
                } else {
                    payload
                };
                let (id, mut block) = self.block.take().expect("CONTINUATION after HEADERS");
                block.extend_from_slice(fragment);
                if flags & H2_END_HEADERS == 0 {
                    self.block = Some((id, block));
                } else {
                    let fields = self.decoder.decode(&block).expect("decodable headers");
                    let s = self.streams.entry(id).or_default();
                    s.headers.extend(fields.into_iter().map(|(n, v)| {
                        (
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    }));
                }
                if kind == H2_HEADERS && flags & H2_END_STREAM != 0 {
                    self.streams.entry(stream).or_default().ended = true;
                }
            }
            H2_DATA => {
                let s = self.streams.entry(stream).or_default();
                s.data.extend_from_slice(payload);
                if flags & H2_END_STREAM != 0 {
                    s.ended = true;
                }
            }
            H2_RST_STREAM => {
                let s = self.streams.entry(stream).or_default();
                s.reset = Some(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
                s.ended = true;
            }
            _ => {}
        }
        Ok(true)
    }
}

/// One connection, streams opened by hand: allowed calls around refused ones, header
/// blocks in one frame and split over CONTINUATION frames (padded, with priority fields),
/// each block adding to the connection's HPACK dynamic table.
fn raw_streams_on_one_connection(addr: &str) -> TestResult {
    let mut c = RawClient::connect(addr)?;
    let generate = "/hector.plugin.LLMProvider/Generate";
    let stolen = grpc_message(&pb_bytes(
        1,
        &[pb_bytes(1, b"prefix"), pb_bytes(2, b"st0len: ")].concat(),
    ));
    let refused = |s: &RawStream, method: &str| {
        assert_eq!(s.field(":status"), Some("200"), "{s:?}");
        assert_eq!(s.field("grpc-status"), Some("7"), "{s:?}");
        let message = percent_decode(s.field("grpc-message").unwrap_or_default());
        assert!(
            message.starts_with(&format!("{method} is reserved to the launcher")),
            "{message}"
        );
        assert!(s.data.is_empty(), "{s:?}");
    };
    let answered = |s: &RawStream, text: &str| {
        assert_eq!(s.field("grpc-status"), Some("0"), "{s:?}");
        assert_eq!(s.text(), text, "{s:?}");
    };

    c.call(1, generate, &generate_body("one"), 1)?;
    answered(c.wait(1)?, "original: one");
    c.call(3, "/hector.plugin.LLMProvider/Initialize", &stolen, 3)?;
    refused(c.wait(3)?, "hector.plugin.LLMProvider/Initialize");
    c.call(5, generate, &generate_body("three"), 1)?;
    answered(c.wait(5)?, "original: three");
    c.call(7, generate, &generate_body("four split"), 3)?;
    answered(c.wait(7)?, "original: four split");
    c.call(9, "/plugin.GRPCController/Shutdown", &grpc_message(&[]), 1)?;
    refused(c.wait(9)?, "plugin.GRPCController/Shutdown");
    c.call(
        11,
        "/hector.plugin.LLMProvider/Shutdown",
        &grpc_message(&[]),
        2,
    )?;
    refused(c.wait(11)?, "hector.plugin.LLMProvider/Shutdown");
    // Two calls in flight at once, one refused between them.
    c.call(13, generate, &generate_body("five"), 2)?;
    c.call(15, "/hector.plugin.LLMProvider/Initialize", &stolen, 1)?;
    c.call(17, generate, &generate_body("six"), 1)?;
    answered(c.wait(13)?, "original: five");
    refused(c.wait(15)?, "hector.plugin.LLMProvider/Initialize");
    answered(c.wait(17)?, "original: six");
    Ok(())
}

async fn raw_http2_streams(launch: &str, forward: &str, bin: PathBuf) -> TestResult {
    let mut l = Launched::start_with(
        "llm_provider",
        launch,
        &[("prefix", "original: ")],
        &[bin.to_str().ok_or("path")?],
        &["--forward", forward],
        &[],
    );
    let _ = l.channel().await;
    let plugin = only_child(&l, None, Duration::from_secs(10)).await;
    let addr = l.addr.clone();
    tokio::task::spawn_blocking(move || {
        raw_streams_on_one_connection(&addr).map_err(|e| e.to_string())
    })
    .await??;
    // Nothing reached the plugin's lifecycle: same process, same configuration.
    let mut client = LlmProviderClient::new(l.plugin_channel().await);
    let text = client.generate(user("end")).await?.into_inner().text;
    assert_eq!(text, "original: end");
    assert_eq!(children_of(l.child.id()), [plugin]);
    l.wait_for_log("refused_total=4", Duration::from_secs(5))
        .await;
    let log = l.log_so_far();
    assert!(!log.contains("refused_total=5"), "{log}");
    assert!(!log.contains("st0len"), "request content logged:\n{log}");
    Ok(())
}

#[tokio::test]
async fn raw_http2_streams_go_plugin_spliced() -> TestResult {
    raw_http2_streams("go-plugin", "connection", sibling_bin("echo-llm")).await
}

#[tokio::test]
async fn raw_http2_streams_network_spliced() -> TestResult {
    raw_http2_streams("network", "connection", sibling_bin("echo-llm")).await
}

#[tokio::test]
async fn raw_http2_streams_per_request() -> TestResult {
    raw_http2_streams("network", "request", sibling_bin("echo-llm")).await
}

/// The same against a plugin built with HashiCorp go-plugin in Go: grpc-go's HPACK decoder
/// takes the header blocks the launcher re-encodes after a refusal, and go-plugin's real
/// controller is out of reach.
#[tokio::test]
async fn raw_http2_streams_go_grpc_plugin_spliced() -> TestResult {
    raw_http2_streams("go-plugin", "connection", go_plugin()).await
}

/// GOAWAY, NO_ERROR, every stream allowed to finish: the drain's.
const DRAIN_GOAWAY: RawGoaway = RawGoaway {
    last_stream: 0x7fff_ffff,
    code: 0,
    debug: String::new(),
};

/// The drain starts while clients are in the middle of sending a header block (HEADERS
/// without END_HEADERS, its CONTINUATION not sent yet): on a spliced connection, and on
/// one whose first request is still being read to route it. Each gets the GOAWAY in the
/// gap, never inside a header block of the launcher's or the plugin's (the raw client fails
/// on any frame between a HEADERS and its CONTINUATION), completes its block afterwards,
/// and its call is answered; the launcher then exits cleanly, every connection closed.
#[tokio::test]
async fn drain_in_the_middle_of_a_header_block_finishes_the_call() -> TestResult {
    let bin = sibling_bin("echo-llm");
    let mut l = Launched::start_with(
        "llm_provider",
        "network",
        &[("prefix", "drained: ")],
        &[bin.to_str().ok_or("path")?],
        // The two connections fill the cap: the one routed after the drain began still
        // gets its place.
        &[
            "--drain-delay",
            "0",
            "--drain-timeout",
            "20",
            "--max-connections",
            "2",
        ],
        &[],
    );
    let _ = l.channel().await;
    let generate = "/hector.plugin.LLMProvider/Generate";
    let addr = l.addr.clone();
    // Both clients stop after their HEADERS frame; the rest goes once the GOAWAY is in.
    let (spliced, spliced_rest, routing, routing_rest) =
        tokio::task::spawn_blocking(move || -> Result<_, String> {
            let mut spliced = RawClient::connect(&addr).map_err(|e| e.to_string())?;
            spliced
                .call(1, generate, &generate_body("first"), 1)
                .map_err(|e| e.to_string())?;
            let first = spliced.wait(1).map_err(|e| e.to_string())?.text();
            assert_eq!(first, "drained: first");
            let mut frames = spliced.call_frames(3, generate, &generate_body("second"), 3);
            spliced.send(&frames.remove(0)).map_err(|e| e.to_string())?;

            let mut routing = RawClient::connect(&addr).map_err(|e| e.to_string())?;
            let mut routing_frames = routing.call_frames(1, generate, &generate_body("routed"), 2);
            routing
                .send(&routing_frames.remove(0))
                .map_err(|e| e.to_string())?;
            Ok((spliced, frames.concat(), routing, routing_frames.concat()))
        })
        .await??;
    l.signal_term();
    l.wait_for_log("asked every open one to go away", Duration::from_secs(10))
        .await;
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        for (mut client, rest, stream, text) in [
            (spliced, spliced_rest, 3, "drained: second"),
            (routing, routing_rest, 1, "drained: routed"),
        ] {
            let goaway = client.wait_goaway().map_err(|e| e.to_string())?;
            assert_eq!(goaway, DRAIN_GOAWAY, "stream {stream}");
            client.send(&rest).map_err(|e| e.to_string())?;
            let answer = client.wait(stream).map_err(|e| e.to_string())?;
            assert_eq!(answer.field("grpc-status"), Some("0"), "{answer:?}");
            assert_eq!(answer.text(), text);
            assert_eq!(client.goaways, [DRAIN_GOAWAY], "one GOAWAY per connection");
        }
        Ok(())
    })
    .await??;
    let status = l.wait_exit(Duration::from_secs(20)).await;
    let out = l.output();
    assert!(status.success(), "launcher exit: {status}\n{out}");
    assert!(out.contains("all connections closed"), "{out}");
    Ok(())
}

/// The launcher's metrics (plaintext HTTP/1.1, served locally).
async fn metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: l\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    text
}

/// One sample of the launcher's metrics, by its whole name (labels included).
async fn metric(addr: &str, name: &str) -> u64 {
    let text = metrics(addr).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Waits until the launcher reports `open` spliced connections.
async fn wait_spliced(addr: &str, open: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(addr, "hector_launcher_spliced_connections").await != open {
        assert!(
            Instant::now() < deadline,
            "spliced connections never became {open}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const REFUSED_FOR_LIMIT: &str = "hector_launcher_refused_total{reason=\"connection_limit\"}";
/// RST_STREAM / GOAWAY error code REFUSED_STREAM.
const H2_REFUSED_STREAM: u32 = 0x7;

/// `--max-connections 2`: a third connection to the plugin is refused before anything
/// reaches the plugin (GOAWAY, last stream 0, REFUSED_STREAM, with the reason; then closed),
/// counted, and logged; health probes, which the launcher serves itself, still work; once
/// one of the two closes, a new connection is admitted.
#[tokio::test]
async fn connections_over_the_cap_are_refused_and_health_keeps_working() -> TestResult {
    let bin = sibling_bin("echo-llm");
    let mut l = Launched::start_with(
        "llm_provider",
        "network",
        &[("prefix", "capped: ")],
        &[bin.to_str().ok_or("path")?],
        &["--max-connections", "2"],
        &[],
    );
    let ch = l.channel().await;
    let addr = l.addr.clone();
    let generate = "/hector.plugin.LLMProvider/Generate";
    let (first, second, refused) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let mut spliced = Vec::new();
        for text in ["one", "two"] {
            let mut c = RawClient::connect(&addr).map_err(|e| e.to_string())?;
            c.call(1, generate, &generate_body(text), 1)
                .map_err(|e| e.to_string())?;
            assert_eq!(
                c.wait(1).map_err(|e| e.to_string())?.text(),
                format!("capped: {text}")
            );
            spliced.push(c);
        }
        let mut over = RawClient::connect(&addr).map_err(|e| e.to_string())?;
        over.call(1, generate, &generate_body("three"), 1)
            .map_err(|e| e.to_string())?;
        let goaway = over.wait_goaway().map_err(|e| e.to_string())?;
        over.wait_closed().map_err(|e| e.to_string())?;
        assert!(
            !over.streams.contains_key(&1),
            "not answered: {:?}",
            over.streams
        );
        let second = spliced.pop().ok_or("second")?;
        let first = spliced.pop().ok_or("first")?;
        Ok((first, second, goaway))
    })
    .await??;
    assert_eq!((refused.last_stream, refused.code), (0, H2_REFUSED_STREAM));
    assert!(
        refused.debug.starts_with(
            "connection limit reached: this launcher splices at most 2 client connections at once"
        ),
        "{refused:?}"
    );

    // A gRPC client over the cap: its call fails, and says why.
    let mut over = LlmProviderClient::new(l.plugin_channel().await);
    let status = generate_within(&mut over, "four")
        .await
        .expect_err("over the cap");
    eprintln!("refused call: {status:?}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // Probes: on the connection open before, and on a new one.
    assert_eq!(health(&ch, "").await, Some(ServingStatus::Serving));
    let probe = hector_plugin_sdk::connect(&l.addr, Duration::from_secs(5)).await?;
    assert_eq!(health(&probe, "").await, Some(ServingStatus::Serving));
    assert_eq!(metric(&l.addr, REFUSED_FOR_LIMIT).await, 2);
    assert_eq!(
        metric(&l.addr, "hector_launcher_spliced_connections").await,
        2
    );
    assert_eq!(
        metric(&l.addr, "hector_launcher_spliced_connections_max").await,
        2
    );

    // One leaves: the next connection is admitted, and the other one still works.
    drop(first);
    wait_spliced(&l.addr, 1).await;
    let addr = l.addr.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut second = second;
        let mut next = RawClient::connect(&addr).map_err(|e| e.to_string())?;
        next.call(1, generate, &generate_body("four"), 1)
            .map_err(|e| e.to_string())?;
        assert_eq!(
            next.wait(1).map_err(|e| e.to_string())?.text(),
            "capped: four"
        );
        second
            .call(3, generate, &generate_body("two again"), 1)
            .map_err(|e| e.to_string())?;
        assert_eq!(
            second.wait(3).map_err(|e| e.to_string())?.text(),
            "capped: two again"
        );
        assert!(next.goaways.is_empty() && second.goaways.is_empty());
        Ok(())
    })
    .await??;
    assert_eq!(metric(&l.addr, REFUSED_FOR_LIMIT).await, 2);
    // Logged once per refused connection (the log is read as it comes).
    let deadline = Instant::now() + Duration::from_secs(5);
    while l
        .log_so_far()
        .matches("refused a connection to the plugin")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", l.log_so_far());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = l.log_so_far();
    assert_eq!(
        log.matches("refused a connection to the plugin").count(),
        2,
        "{log}"
    );
    Ok(())
}

/// `--idle-timeout 1`: a spliced connection left idle gets a GOAWAY (NO_ERROR, every
/// stream may finish) after a second and is closed a second later; one whose call keeps
/// sending (a request body sent slowly, for three times the timeout) is not; and a gRPC
/// client whose connection was closed for idleness simply connects again.
#[tokio::test]
async fn idle_spliced_connections_are_closed_but_busy_ones_are_not() -> TestResult {
    let bin = sibling_bin("echo-llm");
    let mut l = Launched::start_with(
        "llm_provider",
        "network",
        &[("prefix", "idle: ")],
        &[bin.to_str().ok_or("path")?],
        &["--idle-timeout", "1"],
        &[],
    );
    let _ = l.channel().await;
    let timeout = Duration::from_secs(1);
    let generate = "/hector.plugin.LLMProvider/Generate";
    let addr = l.addr.clone();
    let idle = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut c = RawClient::connect(&addr).map_err(|e| e.to_string())?;
        // Before the launcher's last read on this connection (the plugin's answer).
        let called = Instant::now();
        c.call(1, generate, &generate_body("then nothing"), 1)
            .map_err(|e| e.to_string())?;
        assert_eq!(
            c.wait(1).map_err(|e| e.to_string())?.text(),
            "idle: then nothing"
        );
        assert_eq!(c.wait_goaway().map_err(|e| e.to_string())?, DRAIN_GOAWAY);
        assert!(called.elapsed() >= timeout, "{:?}", called.elapsed());
        c.wait_closed().map_err(|e| e.to_string())?;
        assert!(called.elapsed() >= timeout * 2, "{:?}", called.elapsed());
        Ok(())
    });
    let addr = l.addr.clone();
    let busy = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut c = RawClient::connect(&addr).map_err(|e| e.to_string())?;
        let mut frames = c.call_frames(1, generate, &generate_body("slow sender"), 1);
        let data = frames.pop().ok_or("DATA")?;
        c.send(&frames.concat()).map_err(|e| e.to_string())?;
        // The request's message, a few octets every 300 ms over three seconds.
        let message = &data[9..];
        let pieces: Vec<&[u8]> = message.chunks(message.len().div_ceil(10)).collect();
        let started = Instant::now();
        for (i, piece) in pieces.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(300));
            let end = if i + 1 == pieces.len() {
                H2_END_STREAM
            } else {
                0
            };
            c.send(&raw_frame(H2_DATA, end, 1, piece))
                .map_err(|e| e.to_string())?;
        }
        assert!(started.elapsed() > timeout * 2, "{:?}", started.elapsed());
        assert_eq!(
            c.wait(1).map_err(|e| e.to_string())?.text(),
            "idle: slow sender"
        );
        assert!(c.goaways.is_empty(), "{:?}", c.goaways);
        Ok(())
    });
    idle.await??;
    busy.await??;

    // tonic: its connection closed for idleness, the next call connects again.
    let mut client = LlmProviderClient::new(l.plugin_channel().await);
    assert_eq!(generate_within(&mut client, "a").await?, "idle: a");
    wait_spliced(&l.addr, 0).await;
    assert_eq!(generate_within(&mut client, "b").await?, "idle: b");
    Ok(())
}

/// Established TCP connections of a process, from the kernel's table (`/proc/net/tcp`):
/// (local port, remote port, timer kind, timer expiry in clock ticks). Timer kind 2 is
/// keepalive.
fn tcp_connections_of(pid: u32) -> Vec<(u16, u16, u8, u64)> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    link.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |address: &str| {
        address
            .split(':')
            .nth(1)
            .and_then(|p| u16::from_str_radix(p, 16).ok())
            .unwrap_or(0)
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local remote st tx:rx tr:when retrnsmt uid timeout inode …
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                return None;
            }
            let (kind, when) = f[5].split_once(':')?;
            Some((
                port(f[1]),
                port(f[2]),
                u8::from_str_radix(kind, 16).ok()?,
                u64::from_str_radix(when, 16).ok()?,
            ))
        })
        .collect()
}

/// `--tcp-keepalive 30`: the connections the launcher accepts and its connections to the
/// plugin have keepalive on with 30 s of idleness before the first probe (a keepalive timer
/// due within 30 s, where the kernel's default would be none); with 0, none has.
#[tokio::test]
async fn tcp_keepalive_on_client_and_plugin_connections() -> TestResult {
    let bin = sibling_bin("echo-llm");
    for (seconds, on) in [("30", true), ("0", false)] {
        let mut l = Launched::start_with(
            "llm_provider",
            "network",
            &[("prefix", "k: ")],
            &[bin.to_str().ok_or("path")?],
            &["--tcp-keepalive", seconds],
            &[],
        );
        let _ = l.channel().await;
        let launcher_port: u16 = l.addr.rsplit(':').next().ok_or("port")?.parse()?;
        let plugin = only_child(&l, None, Duration::from_secs(10)).await;
        let plugin_port = {
            let table = std::fs::read_to_string("/proc/net/tcp")?;
            let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{plugin}/fd"))?
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|l| {
                    Some(
                        l.to_str()?
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_string(),
                    )
                })
                .collect();
            table
                .lines()
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    (f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]))
                        .then(|| u16::from_str_radix(f[1].split(':').nth(1)?, 16).ok())
                        .flatten()
                })
                .next()
                .ok_or("the plugin's listening port")?
        };
        let pid = l.child.id();
        // (accepted, to the plugin) connections of the launcher with a keepalive timer due
        // within 30 s.
        let kept = move || {
            let all = tcp_connections_of(pid);
            let count = |port_of: fn(&(u16, u16, u8, u64)) -> u16, port: u16| {
                all.iter()
                    .filter(|c| port_of(c) == port && c.2 == 2 && c.3 > 0 && c.3 <= 3000)
                    .count()
            };
            (count(|c| c.0, launcher_port), count(|c| c.1, plugin_port))
        };
        // Right after traffic a connection may show another timer (retransmission, loss
        // probe) for a moment: the table is looked at until it shows what is expected.
        let settled = |want: (usize, usize)| async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while kept() != want {
                assert!(
                    Instant::now() < deadline,
                    "(accepted, to the plugin) {:?}, expected {want:?}: {:?}",
                    kept(),
                    tcp_connections_of(pid)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if on {
            // The request forwarder's connection, from the start.
            settled((0, 1)).await;
        }
        // A spliced connection: accepted from the client, and one more to the plugin.
        let mut client = LlmProviderClient::new(l.plugin_channel().await);
        assert_eq!(generate_within(&mut client, "x").await?, "k: x");
        if on {
            settled((1, 2)).await;
        } else {
            let all = tcp_connections_of(l.child.id());
            assert!(all.len() >= 3, "accepted, forwarder, splice: {all:?}");
            assert!(all.iter().all(|c| c.2 != 2), "{all:?}");
        }
    }
    Ok(())
}
