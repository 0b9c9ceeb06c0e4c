//! What `hector-plugin-remote` costs: unary `Generate` latency (p50/p99) and streaming
//! throughput, calling `echo-llm` directly over loopback TCP versus through the remote
//! executable, started as a go-plugin child and called over its Unix socket like Hector does.
//!
//! Build the release binaries first (`cargo build --release -p echo-llm -p
//! hector-plugin-remote`), then `cargo bench -p hector-plugin-remote --bench overhead`.
//! Environment knobs: `BENCH_CALLS` (unary calls, default 5000), `BENCH_STREAMS` (streams,
//! default 2000), `BENCH_WORDS` (words per streamed answer, default 500), `BENCH_PIN=0` (do
//! not pin the client and the servers to separate CPUs).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hector_plugin_sdk::proto::{GenerateRequest, Message, llm_provider_client::LlmProviderClient};
use hector_plugin_sdk::{LifecycleClient, PluginType};
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

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn remote() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hector-plugin-remote"))
}

fn echo_llm() -> PathBuf {
    let p = remote().with_file_name("echo-llm");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --release -p echo-llm -p hector-plugin-remote`",
        p.display()
    );
    p
}

async fn connect(addr: &str) -> Channel {
    for _ in 0..200 {
        if let Ok(ch) = hector_plugin_sdk::connect(addr, Duration::from_secs(1)).await
            && LifecycleClient::new(ch.clone(), PluginType::LlmProvider)
                .health()
                .await
                .is_ok()
        {
            return ch;
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

/// Restricts the calling thread (and what it starts later) to `cpus`.
fn pin_to(cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it and nothing else.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The CPUs this process may use.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in `pin_to`; sched_getaffinity writes only into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Starts the remote executable as Hector does and returns it with its socket address.
fn start_remote() -> (Server, String) {
    let mut child = Command::new(remote())
        .env("HECTOR_PLUGIN", "hector_plugin_v1")
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hector-plugin-remote");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("handshake line");
    // CORE|APP|unix|PATH|grpc|
    let fields: Vec<&str> = line.trim().split('|').collect();
    assert!(
        fields.len() >= 5 && fields[2] == "unix" && fields[4] == "grpc",
        "unexpected handshake {line:?}"
    );
    (server, format!("unix:{}", fields[3]))
}

fn main() {
    let calls = env_usize("BENCH_CALLS", 5000);
    let streams = env_usize("BENCH_STREAMS", 2000);
    let words = env_usize("BENCH_WORDS", 500);

    // The load generator gets the first CPU and the servers (the plugin, and the remote in
    // front of it) the others, as in the launcher's benchmark.
    let cpus = allowed_cpus();
    let pin = std::env::var("BENCH_PIN").map_or(true, |v| v != "0") && cpus.len() >= 2;
    let (client_cpus, server_cpus) = if pin {
        (vec![cpus[0]], cpus[1..].to_vec())
    } else {
        (cpus.clone(), cpus.clone())
    };
    if pin {
        assert!(pin_to(&server_cpus), "cannot pin the servers");
    }
    let direct_addr = free_addr();
    let _direct = Server(
        Command::new(echo_llm())
            .env("HECTOR_PLUGIN_ADDR", &direct_addr)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start echo-llm"),
    );
    let (_remote, remote_addr) = start_remote();
    if pin {
        assert!(pin_to(&client_cpus), "cannot pin the client");
    }

    // Built after pinning, so its worker threads inherit the client's CPUs.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut results = rt.block_on(async {
        let d = connect(&direct_addr).await;
        // Nobody else initializes the plugin: the remote answers Initialize itself.
        LifecycleClient::new(d.clone(), PluginType::LlmProvider)
            .initialize(Default::default())
            .await
            .expect("Initialize echo-llm");
        let r = hector_plugin_sdk::connect(&remote_addr, Duration::from_secs(5))
            .await
            .expect("connect to the remote's socket");
        LifecycleClient::new(r.clone(), PluginType::LlmProvider)
            .initialize([("remote_address".to_string(), direct_addr.clone())].into())
            .await
            .expect("Initialize the remote");
        let mut clients = [LlmProviderClient::new(d), LlmProviderClient::new(r)];
        for c in clients.iter_mut() {
            for _ in 0..200 {
                c.generate(request("warm up")).await.expect("warm-up");
            }
        }
        // Alternate in rounds so both paths see the same machine conditions.
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
        "hector-plugin-remote overhead on loopback ({calls} unary calls, {streams} streams of {} chunks)",
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
        "{:<28} {:>10} {:>10} {:>16} {:>10} {:>10}",
        "path", "p50", "p99", "stream chunks/s", "p50 added", "kept"
    );
    let names = ["direct (TCP)", "via remote (unix → TCP)"];
    let base_p50 = results[0].percentile(0.50);
    let base_rate = results[0].chunks_per_sec();
    for (name, f) in names.iter().zip(results.iter_mut()) {
        let (p50, p99) = (f.percentile(0.50), f.percentile(0.99));
        let added = p50.saturating_sub(base_p50);
        let kept = f.chunks_per_sec() / base_rate * 100.0;
        println!(
            "{name:<28} {:>10.1?} {:>10.1?} {:>16.0} {:>10.1?} {:>9.1}%",
            p50,
            p99,
            f.chunks_per_sec(),
            added,
            kept
        );
    }
}
