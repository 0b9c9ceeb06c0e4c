//! What the launcher costs: unary `Generate` latency (p50/p99) and streaming throughput,
//! calling `echo-llm` directly versus through `hector-plugin-launcher`, on loopback.
//!
//! Run with `make bench` (builds the release binaries first). Environment knobs:
//! `BENCH_CALLS` (unary calls, default 5000), `BENCH_STREAMS` (streams, default 2000),
//! `BENCH_WORDS` (words per streamed answer, default 500), `BENCH_LAUNCHER_ARGS` (extra
//! launcher flags, e.g. `--forward request`), `BENCH_PIN=0` (do not pin client and servers to
//! separate CPUs), `BENCH_EXTRA=NAME=HOST:PORT` (one more row: an initialized LLM plugin
//! reached some other way, such as through a plain TCP relay, for comparison),
//! `BENCH_DIRECT_ADDR` (where the directly called plugin listens, so such a relay can point
//! at it; it is initialized by the benchmark).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/procs.rs"]
mod procs;

use cpu::{allowed_cpus, pin_to};
use hector_plugin_sdk::proto::{GenerateRequest, Message, llm_provider_client::LlmProviderClient};
use procs::{Server, echo_llm, env_usize, free_addr};
use tonic::transport::Channel;

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

/// A server process: the plugin alone, or the launcher hosting it.
fn spawn(mut cmd: Command, name: &str) -> Server {
    Server(
        cmd.env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}")),
    )
}

fn launcher(listen: &str, launch: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hector-plugin-launcher"));
    cmd.args([
        "--listen",
        listen,
        "--type",
        "llm_provider",
        "--launch",
        launch,
    ]);
    if let Ok(extra) = std::env::var("BENCH_LAUNCHER_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    cmd.arg("--").arg(echo_llm());
    cmd
}

fn main() {
    let calls = env_usize("BENCH_CALLS", 5000);
    let streams = env_usize("BENCH_STREAMS", 2000);
    let words = env_usize("BENCH_WORDS", 500);

    // The load generator gets the first CPU and the server side (the plugin alone, or the
    // launcher with its plugin) the others, so both sides of each comparison have the same
    // CPUs and the client's own scheduling does not pollute the figures. BENCH_PIN=0 turns
    // this off.
    let cpus = allowed_cpus();
    let placement = cpu::pin_servers();
    let pin = placement.is_some();
    let (client_cpus, server_cpus) = placement.unwrap_or_else(|| (cpus.clone(), cpus.clone()));

    let extra = std::env::var("BENCH_EXTRA")
        .ok()
        .map(|v| match v.split_once('=') {
            Some((name, addr)) => (name.to_string(), addr.to_string()),
            None => ("extra".to_string(), v),
        });

    let direct_addr = std::env::var("BENCH_DIRECT_ADDR").unwrap_or_else(|_| free_addr());
    let mut direct = Command::new(echo_llm());
    direct.env("HECTOR_PLUGIN_ADDR", &direct_addr);
    let _direct = spawn(direct, "echo-llm");
    let goplugin_addr = free_addr();
    let _goplugin = spawn(launcher(&goplugin_addr, "go-plugin"), "launcher");
    let network_addr = free_addr();
    let _network = spawn(launcher(&network_addr, "network"), "launcher");

    if pin {
        assert!(pin_to(&client_cpus), "cannot pin the client");
    }
    // Built after pinning, so its worker threads inherit the client's CPUs.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut results = rt.block_on(async {
        let d = connect(&direct_addr).await;
        // The direct server is not initialized by anyone else.
        hector_plugin_sdk::LifecycleClient::new(
            d.clone(),
            hector_plugin_sdk::PluginType::LlmProvider,
        )
        .initialize(Default::default())
        .await
        .expect("Initialize");
        let mut clients = vec![
            LlmProviderClient::new(d),
            LlmProviderClient::new(connect(&goplugin_addr).await),
            LlmProviderClient::new(connect(&network_addr).await),
        ];
        if let Some((_, addr)) = &extra {
            clients.push(LlmProviderClient::new(connect(addr).await));
        }
        for c in clients.iter_mut() {
            for _ in 0..200 {
                c.generate(request("warm up")).await.expect("warm-up");
            }
        }
        // Alternate in rounds so every path sees the same machine conditions.
        let text = vec!["word"; words].join(" ");
        let mut samples: Vec<Samples> = clients.iter().map(|_| Samples::default()).collect();
        let rounds = 10;
        for _ in 0..rounds {
            for (c, s) in clients.iter_mut().zip(samples.iter_mut()) {
                round(c, calls / rounds, streams / rounds, &text, s).await;
            }
        }
        samples
    });

    println!(
        "launcher overhead on loopback ({calls} unary calls, {streams} streams of {} chunks)",
        words + 1
    );
    if pin {
        println!(
            "client on CPU {client_cpus:?}, servers on CPUs {server_cpus:?} (BENCH_PIN=0 to float)"
        );
    } else {
        println!("client and servers share CPUs {cpus:?}");
    }
    println!(
        "{:<22} {:>10} {:>10} {:>16} {:>10} {:>10}",
        "path", "p50", "p99", "stream chunks/s", "p50 added", "kept"
    );
    let mut names = vec![
        "direct (TCP)".to_string(),
        "launcher go-plugin".to_string(),
        "launcher network".to_string(),
    ];
    names.extend(extra.map(|(name, _)| name));
    let base_p50 = results[0].percentile(0.50).as_secs_f64();
    let base_rate = results[0].chunks_per_sec();
    for (name, f) in names.iter().zip(results.iter_mut()) {
        let (p50, p99) = (f.percentile(0.50), f.percentile(0.99));
        let added = (p50.as_secs_f64() / base_p50 - 1.0) * 100.0;
        let kept = f.chunks_per_sec() / base_rate * 100.0;
        println!(
            "{name:<22} {:>10.1?} {:>10.1?} {:>16.0} {:>9.1}% {:>9.1}%",
            p50,
            p99,
            f.chunks_per_sec(),
            added,
            kept
        );
    }
    println!("target: the launcher adds <= 10% to p50 and keeps >= 90% of the streaming rate");
}
