//! What the launcher costs: unary `Generate` latency (p50/p99) and streaming throughput,
//! calling `echo-llm` directly versus through `hector-plugin-launcher`, on loopback.
//!
//! Run with `make bench` (builds the release binaries first). Environment knobs:
//! `BENCH_CALLS` (unary calls, default 5000), `BENCH_STREAMS` (streams, default 2000),
//! `BENCH_WORDS` (words per streamed answer, default 500), `BENCH_LAUNCHER_ARGS` (extra
//! launcher flags, e.g. `--forward request`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hector_plugin_sdk::proto::{GenerateRequest, Message, llm_provider_client::LlmProviderClient};
use tonic::transport::Channel;

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

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

async fn connect(addr: &str) -> Channel {
    for _ in 0..200 {
        if let Ok(ch) = hector_plugin_sdk::connect(addr, Duration::from_secs(1)).await {
            let lc = hector_plugin_sdk::LifecycleClient::new(
                ch.clone(),
                hector_plugin_sdk::PluginType::LlmProvider,
            );
            if lc.health().await.is_ok() {
                return ch;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} never served");
}

fn request(text: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        tools: vec![],
    }
}

#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    chunks: usize,
    stream_time: Duration,
}

impl Samples {
    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort();
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        self.latencies[i]
    }

    fn chunks_per_sec(&self) -> f64 {
        self.chunks as f64 / self.stream_time.as_secs_f64()
    }
}

/// One round: `calls` unary calls, then `streams` streamed answers of `text`.
async fn round(
    client: &mut LlmProviderClient<Channel>,
    calls: usize,
    streams: usize,
    text: &str,
    into: &mut Samples,
) {
    for _ in 0..calls {
        let t = Instant::now();
        client
            .generate(request("how fast is this"))
            .await
            .expect("Generate");
        into.latencies.push(t.elapsed());
    }
    let t = Instant::now();
    for _ in 0..streams {
        let mut s = client
            .generate_streaming(request(text))
            .await
            .expect("stream")
            .into_inner();
        while let Some(_c) = s.message().await.expect("chunk") {
            into.chunks += 1;
        }
    }
    into.stream_time += t.elapsed();
}

fn main() {
    let calls = env_usize("BENCH_CALLS", 5000);
    let streams = env_usize("BENCH_STREAMS", 2000);
    let words = env_usize("BENCH_WORDS", 500);
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let direct_addr = std::env::var("BENCH_DIRECT_ADDR").unwrap_or_else(|_| free_addr());
    let _direct = Server(
        Command::new(echo_llm())
            .env("HECTOR_PLUGIN_ADDR", &direct_addr)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start echo-llm"),
    );
    let proxied_addr = free_addr();
    let _launcher = Server(
        Command::new(env!("CARGO_BIN_EXE_hector-plugin-launcher"))
            .args([
                "--listen",
                &proxied_addr,
                "--type",
                "llm_provider",
                "--launch",
                "network",
                "--",
            ])
            .arg(echo_llm())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start launcher"),
    );

    let (direct, proxied) = rt.block_on(async {
        let d = connect(&direct_addr).await;
        // The direct server is not initialized by anyone else.
        hector_plugin_sdk::LifecycleClient::new(
            d.clone(),
            hector_plugin_sdk::PluginType::LlmProvider,
        )
        .initialize(Default::default())
        .await
        .expect("Initialize");
        let p = connect(&proxied_addr).await;
        let mut dc = LlmProviderClient::new(d);
        let mut pc = LlmProviderClient::new(p);
        for _ in 0..200 {
            dc.generate(request("warm up")).await.expect("warm-up");
            pc.generate(request("warm up")).await.expect("warm-up");
        }
        // Alternate in rounds so both paths see the same machine conditions.
        let text = vec!["word"; words].join(" ");
        let (mut direct, mut proxied) = (Samples::default(), Samples::default());
        let rounds = 10;
        for _ in 0..rounds {
            round(
                &mut dc,
                calls / rounds,
                streams / rounds,
                &text,
                &mut direct,
            )
            .await;
            round(
                &mut pc,
                calls / rounds,
                streams / rounds,
                &text,
                &mut proxied,
            )
            .await;
        }
        (direct, proxied)
    });
    let (mut direct, mut proxied) = (direct, proxied);

    println!(
        "launcher overhead on loopback ({calls} unary calls, {streams} streams of {} chunks)",
        words + 1
    );
    println!(
        "{:<12} {:>12} {:>12} {:>18}",
        "path", "p50", "p99", "stream chunks/s"
    );
    let mut rows = Vec::new();
    for (name, f) in [("direct", &mut direct), ("launcher", &mut proxied)] {
        let (p50, p99) = (f.percentile(0.50), f.percentile(0.99));
        println!(
            "{name:<12} {p50:>12.1?} {p99:>12.1?} {:>18.0}",
            f.chunks_per_sec()
        );
        rows.push((p50, f.chunks_per_sec()));
    }
    let p50_overhead = (rows[1].0.as_secs_f64() / rows[0].0.as_secs_f64() - 1.0) * 100.0;
    let throughput_kept = rows[1].1 / rows[0].1 * 100.0;
    println!("p50 added by the launcher: {p50_overhead:+.1}% (target <= 10%)");
    println!("streaming throughput kept: {throughput_kept:.1}% (target >= 90%)");
}
