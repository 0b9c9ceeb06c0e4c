//! What closing a plugin costs: one unary `Generate` through the launcher with TLS and the
//! caller check (`--tls --auth`) against the plaintext launcher, on a reused connection
//! (p50, p99), and the cost of a new connection (connect, handshake, first call).
//!
//! Run with `make bench`. `BENCH_CALLS` (unary calls per path, default 5000) and
//! `BENCH_CONNECTIONS` (new connections per path, default 300).

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/procs.rs"]
mod procs;
#[path = "../tests/support/secure.rs"]
mod secure;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
use hector_plugin_sdk::proto::{GenerateRequest, Message};
use procs::{Server, echo_llm, env_usize, free_addr};
use secure::{AUDIENCE, Keys, fake_issuer, tls_channel};
use tonic::transport::Channel;

/// CPU time a launcher process (not its plugin) has used so far.
fn cpu_time(server: &Server) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.0.id())).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 14th field
    // of the line, stime the 15th, in clock ticks.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let used = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    Duration::from_micros(used * 1_000_000 / ticks)
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
        r.metadata_mut().insert("authorization", header(t));
    }
    r
}

/// The header value for `token`, made once per token as an agent's client does (the client
/// library re-reads its token file at most once a second), and sent never indexed.
fn header(token: &str) -> tonic::metadata::AsciiMetadataValue {
    thread_local! {
        static MADE: std::cell::RefCell<Option<(String, tonic::metadata::AsciiMetadataValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    MADE.with_borrow_mut(|made| {
        if made.as_ref().is_none_or(|(t, _)| t != token) {
            let mut value: tonic::metadata::AsciiMetadataValue =
                format!("Bearer {token}").parse().expect("ascii");
            value.set_sensitive(true);
            *made = Some((token.to_string(), value));
        }
        made.as_ref().map(|(_, v)| v.clone()).expect("made")
    })
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
    while let Err(e) = LlmProviderClient::new(channel.clone())
        .generate(authorized(token))
        .await
    {
        assert!(Instant::now() < deadline, "launcher never answered: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn main() {
    let calls = env_usize("BENCH_CALLS", 5000);
    let connections = env_usize("BENCH_CONNECTIONS", 300);
    // Servers (and the issuer) on their own CPUs, the client on the first (BENCH_PIN=0: all
    // float), as `overhead` does: the client's runtime is built after pinning, so its
    // workers inherit the client's CPU.
    let placement = cpu::pin_servers();
    let keys = Keys::new(&["bench"]);
    let (issuer, credentials) = {
        let keys = keys.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("issuer runtime");
            rt.block_on(async move {
                let _ = tx.send(fake_issuer(keys).await);
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("the issuer started")
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        + 1_800;
    let token = Some(keys.token(0, "agents", "bench", AUDIENCE, exp));
    let auth_args = |addr: &std::net::SocketAddr, dir: &std::path::Path| -> Vec<String> {
        vec![
            "--auth".into(),
            "--allow-namespace".into(),
            "agents".into(),
            "--apiserver".into(),
            format!("https://{addr}"),
            "--apiserver-credentials".into(),
            dir.display().to_string(),
        ]
    };
    // (name, launcher flags, TLS, token)
    let paths: Vec<(&str, Vec<String>, bool, bool)> = vec![
        ("launcher plaintext", vec![], false, false),
        ("launcher --tls", vec!["--tls".into()], true, false),
        (
            "launcher --auth (plaintext)",
            auth_args(&issuer, credentials.path()),
            false,
            true,
        ),
        (
            "launcher --tls --auth",
            [
                vec!["--tls".to_string()],
                auth_args(&issuer, credentials.path()),
            ]
            .concat(),
            true,
            true,
        ),
    ];
    let addrs: Vec<String> = paths.iter().map(|_| free_addr()).collect();
    let _servers: Vec<Server> = paths
        .iter()
        .zip(&addrs)
        .map(|((_, args, _, _), addr)| launcher(addr, args))
        .collect();
    if let Some((client, _)) = &placement {
        assert!(cpu::pin_to(client), "cannot pin the client");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // Each path's way to open a connection: TLS pinned to the launcher's certificate, or
        // plaintext; and the token it sends.
        let mut pins = Vec::new();
        for ((_, _, tls, _), addr) in paths.iter().zip(&addrs) {
            pins.push(if *tls {
                Some(learn_fingerprint(addr).await)
            } else {
                None
            });
        }
        let open = |i: usize| {
            let addr = addrs[i].clone();
            let pin = pins[i].clone();
            async move {
                match pin {
                    Some(pin) => tls_channel(&addr, &pin).await.map(|(c, _)| c).ok(),
                    None => hector_plugin_sdk::connect(&addr, Duration::from_secs(5))
                        .await
                        .ok(),
                }
            }
        };
        let tokens: Vec<Option<String>> = paths
            .iter()
            .map(|(_, _, _, auth)| auth.then(|| token.clone()).flatten())
            .collect();
        let mut channels = Vec::new();
        for i in 0..paths.len() {
            let deadline = Instant::now() + Duration::from_secs(60);
            let ch = loop {
                if let Some(ch) = open(i).await {
                    break ch;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never accepted a connection",
                    paths[i].0
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            wait_ready(&ch, &tokens[i]).await;
            for _ in 0..200 {
                let _ = LlmProviderClient::new(ch.clone())
                    .generate(authorized(&tokens[i]))
                    .await;
            }
            channels.push(ch);
        }

        // Reused connections, alternating in rounds so every path sees the same machine.
        let mut lat: Vec<Vec<Duration>> = paths.iter().map(|_| Vec::new()).collect();
        let cpu_before: Vec<Duration> = _servers.iter().map(cpu_time).collect();
        let rounds = 10;
        for _ in 0..rounds {
            for (i, ch) in channels.iter().enumerate() {
                let mut client = LlmProviderClient::new(ch.clone());
                for _ in 0..calls / rounds {
                    let s = Instant::now();
                    client
                        .generate(authorized(&tokens[i]))
                        .await
                        .expect("Generate");
                    lat[i].push(s.elapsed());
                }
            }
        }
        let cpu_per_call: Vec<Duration> = _servers
            .iter()
            .zip(&cpu_before)
            .map(|(s, before)| (cpu_time(s).saturating_sub(*before)) / calls.max(1) as u32)
            .collect();
        // New connections: connect, handshake, one call.
        let mut fresh: Vec<Vec<Duration>> = paths.iter().map(|_| Vec::new()).collect();
        for _ in 0..connections {
            for i in 0..paths.len() {
                let s = Instant::now();
                let ch = open(i).await.expect("connect");
                LlmProviderClient::new(ch)
                    .generate(authorized(&tokens[i]))
                    .await
                    .expect("Generate");
                fresh[i].push(s.elapsed());
            }
        }
        println!(
            "closed plugin cost on loopback ({calls} unary calls per path on a reused connection, \
             {connections} new connections)"
        );
        match &placement {
            Some((client, servers)) => println!(
                "client on CPU {client:?}, servers on CPUs {servers:?} (BENCH_PIN=0 to float)"
            ),
            None => println!("client and servers share the CPUs"),
        }
        println!(
            "{:<34} {:>10} {:>10} {:>12} {:>12} {:>16}",
            "path", "p50", "p99", "new conn p50", "p50 added", "launcher CPU/call"
        );
        let base = percentile(&mut lat[0], 0.5).as_secs_f64();
        for (i, (name, ..)) in paths.iter().enumerate() {
            let p50 = percentile(&mut lat[i], 0.5);
            let p99 = percentile(&mut lat[i], 0.99);
            let conn = percentile(&mut fresh[i], 0.5);
            println!(
                "{name:<34} {p50:>10.1?} {p99:>10.1?} {conn:>12.1?} {:>11.1}% {:>16.1?}",
                (p50.as_secs_f64() / base - 1.0) * 100.0,
                cpu_per_call[i]
            );
        }
        println!("target: TLS and the caller check add <= 15% to p50 on a reused connection");
    });
}
