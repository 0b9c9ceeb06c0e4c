//! Keepalive against a grpc-go server with its default policy — the go-plugin test plugin
//! (`tests/plugins/go-llm`, built here with `go`), which is how plugins built with Hector's Go
//! SDK serve. Such a server closes a connection that sends a fourth PING without having been
//! sent anything (GOAWAY `too_many_pings`); the client's keepalive stays within that budget,
//! so its connection survives idle time and quiet calls even with PINGs due every 100 ms.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use hector_plugin_client::{ChannelOptions, Keepalive, PluginChannel, served};
use hector_plugin_sdk::PluginType;
use hector_plugin_sdk::proto::{GenerateRequest, InitializeRequest, Message};
use hyper::body::Bytes;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The go-plugin test plugin, built once per test run.
fn go_llm() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Built into the target's scratch directory, replaced by the next run.
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hector-go-llm");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/plugins/go-llm/build.sh");
        let status = Command::new(script)
            .arg(&out)
            .status()
            .expect("run tests/plugins/go-llm/build.sh (is Go installed?)");
        assert!(status.success(), "building the Go plugin failed: {status}");
        out
    })
    .clone()
}

/// The plugin, started as a go-plugin host starts it; killed when dropped.
struct GoPlugin {
    child: Child,
    /// Its unix socket.
    socket: String,
}

impl GoPlugin {
    fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let mut child = Command::new(go_llm())
            .env("HECTOR_PLUGIN", "hector_plugin_v1")
            .env("PLUGIN_PROTOCOL_VERSIONS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        // CORE|APP|unix|PATH|grpc
        let socket = line
            .trim()
            .split('|')
            .nth(3)
            .ok_or_else(|| format!("unexpected handshake {line:?}"))?
            .to_string();
        Ok(Self { child, socket })
    }

    /// A loopback TCP port passing every connection on to the plugin's socket unchanged.
    async fn tcp(&self) -> Result<String, Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let socket = self.socket.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                });
            }
        });
        Ok(addr)
    }
}

impl Drop for GoPlugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
async fn a_grpc_go_server_closes_a_connection_on_its_fourth_ping_without_a_call() -> TestResult {
    // What the budget is for: were this to change, the budget could go.
    let plugin = GoPlugin::start()?;
    let stream = tokio::net::UnixStream::connect(&plugin.socket).await?;
    let (_sender, mut conn): (h2::client::SendRequest<Bytes>, _) =
        h2::client::handshake(stream).await?;
    let mut pings = conn.ping_pong().ok_or("no ping_pong")?;
    let conn = tokio::spawn(conn);
    let mut answered = 0;
    for _ in 0..6 {
        match tokio::time::timeout(Duration::from_secs(2), pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => answered += 1,
            _ => break,
        }
    }
    assert_eq!(answered, 3, "the fourth PING is refused");
    let end = tokio::time::timeout(Duration::from_secs(5), conn).await??;
    let err = end.expect_err("closed by the server");
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err}");
    assert!(err.is_go_away() && err.is_remote(), "{err}");
    Ok(())
}

#[tokio::test]
async fn keepalive_keeps_its_connection_to_a_grpc_go_server_idle_and_in_quiet_calls() -> TestResult
{
    let plugin = GoPlugin::start()?;
    let addr = plugin.tcp().await?;
    // A PING due every 100 ms: without the budget, the server would close the connection
    // after 400 ms of idleness or of a quiet call.
    let options = ChannelOptions::new().keepalive(Keepalive {
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        while_idle: true,
    });
    let channel = PluginChannel::connect_with(&addr, PluginType::LlmProvider, &options).await?;
    let mut llm = channel.llm()?;
    llm.initialize(InitializeRequest {
        config: [("prefix".to_string(), "go: ".to_string())].into(),
    })
    .await?;
    let first = served(&llm.generate(ask("hello")).await?).ok_or("served")?;

    tokio::time::sleep(Duration::from_secs(2)).await;
    // Three seconds without a frame from the server.
    let mut quiet = tonic::Request::new(ask("sleep:3000"));
    quiet.set_timeout(Duration::from_secs(20));
    let after_quiet = served(&llm.generate(quiet).await?).ok_or("served")?;
    let last = served(&llm.generate(ask("again")).await?).ok_or("served")?;
    assert!(first.local.is_some());
    assert_eq!(after_quiet.local, first.local, "the same connection");
    assert_eq!(last.local, first.local, "the same connection");
    assert!(channel.down().is_empty());
    Ok(())
}
