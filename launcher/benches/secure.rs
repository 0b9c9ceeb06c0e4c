//! What closing a plugin costs: one unary `Generate` through the launcher with TLS and the
//! caller check (`--tls --auth`) against the plaintext launcher, on a reused connection
//! (p50, p99), and the cost of a new connection (connect, handshake, first call).
//!
//! Run with `make bench`. `BENCH_CALLS` (unary calls per path, default 5000) and
//! `BENCH_CONNECTIONS` (new connections per path, default 300).

#[path = "../tests/support/secure.rs"]
mod secure;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
use hector_plugin_sdk::proto::{GenerateRequest, Message};
use secure::{AUDIENCE, Keys, fake_issuer, tls_channel};
use tonic::transport::Channel;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

fn echo_llm() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_hector-plugin-launcher")).with_file_name("echo-llm");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --release --workspace --bins`",
        p.display()
    );
    p
}

fn launcher(listen: &str, extra: &[String]) -> Server {
    let config = std::env::temp_dir().join(format!("hector-bench-secure-{}", std::process::id()));
    std::fs::create_dir_all(&config).expect("config dir");
    Server(
        Command::new(env!("CARGO_BIN_EXE_hector-plugin-launcher"))
            .args([
                "--listen",
                listen,
                "--type",
                "llm_provider",
                "--launch",
                "network",
            ])
            .args(extra)
            .arg("--config-dir")
            .arg(&config)
            .arg("--")
            .arg(echo_llm())
            .env("RUST_LOG", "warn")
            .env("HECTOR_POD_UID", "bench")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start launcher"),
    )
}

fn request() -> tonic::Request<GenerateRequest> {
    tonic::Request::new(GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: "how fast is this".into(),
            ..Default::default()
        }],
        tools: vec![],
    })
}

fn authorized(token: &Option<String>) -> tonic::Request<GenerateRequest> {
    let mut r = request();
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    r
}

/// The fingerprint of a `--tls` launcher's certificate, seen in a handshake that a
/// deliberately wrong pin then refuses.
async fn learn_fingerprint(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(seen) = secure::seen_fingerprint(addr).await {
            return seen;
        }
        assert!(Instant::now() < deadline, "{addr} never served TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

async fn wait_ready(channel: &Channel, token: &Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while LlmProviderClient::new(channel.clone())
        .generate(authorized(token))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "launcher never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn main() {
    let calls = env_usize("BENCH_CALLS", 5000);
    let connections = env_usize("BENCH_CONNECTIONS", 300);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let keys = Keys::new(&["bench"]);
        let (issuer, credentials) = fake_issuer(keys.clone()).await;
        let token = Some(keys.token(0, "agents", "bench", AUDIENCE, i64::MAX / 2));
        let plain_addr = free_addr();
        let secure_addr = free_addr();
        let _plain = launcher(&plain_addr, &[]);
        let _secure = launcher(
            &secure_addr,
            &[
                "--tls".into(),
                "--auth".into(),
                "--allow-namespace".into(),
                "agents".into(),
                "--apiserver".into(),
                format!("https://{issuer}"),
                "--apiserver-credentials".into(),
                credentials.path().display().to_string(),
            ],
        );
        let pin = learn_fingerprint(&secure_addr).await;
        let plain = loop {
            if let Ok(ch) = hector_plugin_sdk::connect(&plain_addr, Duration::from_secs(1)).await {
                break ch;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (secure, _) = tls_channel(&secure_addr, &pin).await.expect("TLS channel");
        wait_ready(&plain, &None).await;
        wait_ready(&secure, &token).await;

        // Reused connections, alternating in rounds so both see the same machine.
        let mut lat = [Vec::new(), Vec::new()];
        for c in [&plain, &secure] {
            for _ in 0..200 {
                let _ = LlmProviderClient::new(c.clone())
                    .generate(authorized(&token))
                    .await;
            }
        }
        let rounds = 10;
        for _ in 0..rounds {
            for (i, (c, t)) in [(&plain, &None), (&secure, &token)].into_iter().enumerate() {
                let mut client = LlmProviderClient::new(c.clone());
                for _ in 0..calls / rounds {
                    let s = Instant::now();
                    client.generate(authorized(t)).await.expect("Generate");
                    lat[i].push(s.elapsed());
                }
            }
        }
        // New connections: connect, handshake, one call.
        let mut fresh = [Vec::new(), Vec::new()];
        for _ in 0..connections {
            let s = Instant::now();
            let ch = hector_plugin_sdk::connect(&plain_addr, Duration::from_secs(5))
                .await
                .expect("connect");
            LlmProviderClient::new(ch)
                .generate(request())
                .await
                .expect("Generate");
            fresh[0].push(s.elapsed());
            let s = Instant::now();
            let (ch, _) = tls_channel(&secure_addr, &pin).await.expect("TLS connect");
            LlmProviderClient::new(ch)
                .generate(authorized(&token))
                .await
                .expect("Generate");
            fresh[1].push(s.elapsed());
        }
        println!(
            "closed plugin cost on loopback ({calls} unary calls per path on a reused connection, \
             {connections} new connections)"
        );
        println!(
            "{:<34} {:>10} {:>10} {:>12} {:>12}",
            "path", "p50", "p99", "new conn p50", "p50 added"
        );
        let base = percentile(&mut lat[0], 0.5).as_secs_f64();
        for (i, name) in ["launcher plaintext", "launcher --tls --auth"]
            .iter()
            .enumerate()
        {
            let p50 = percentile(&mut lat[i], 0.5);
            let p99 = percentile(&mut lat[i], 0.99);
            let conn = percentile(&mut fresh[i], 0.5);
            println!(
                "{name:<34} {p50:>10.1?} {p99:>10.1?} {conn:>12.1?} {:>11.1}%",
                (p50.as_secs_f64() / base - 1.0) * 100.0
            );
        }
        println!("target: TLS and the caller check add <= 15% to p50 on a reused connection");
    });
}
