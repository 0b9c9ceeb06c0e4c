//! `make bench-operator`: how fast the operator publishes, next to Kubernetes' own endpoint
//! controller, and what it costs when idle. Needs a cluster with the operator running
//! (`make deploy`) and the example images loaded; prints its figures, asserts nothing.
//!
//! For N plugins (`BENCH_PLUGINS`, default 20) scaled from 0 to 1 replica at once, it watches
//! Pods, EndpointSlices and the namespace's `hector-plugins` ConfigMap and takes, per Pod,
//! the time from the Pod turning Ready to (a) its address in the Service's EndpointSlice and
//! (b) its address in `hector-plugins`. Every time is when this program saw the watch event,
//! so watch delivery costs the same on all three. Then it stays idle for `BENCH_IDLE_SECS`
//! (default 300) and reports the operator's API writes in that time and its resident memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hector_plugin_sdk::endpoints::EndpointsFile;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;

enum Seen {
    PodReady(String),
    InSlice(String),
    Published(Vec<String>),
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The leader's /metrics through the API server's Pod proxy.
async fn leader_metrics(client: &Client) -> Result<String, Error> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "hector-system");
    let holder = leases
        .get("hector-operator")
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .ok_or("no operator leads")?;
    let uri = format!("/api/v1/namespaces/hector-system/pods/{holder}:8080/proxy/metrics");
    Ok(client
        .request_text(http::Request::get(uri).body(Vec::new())?)
        .await?)
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let n = env_u64("BENCH_PLUGINS", 20) as usize;
    let idle = Duration::from_secs(env_u64("BENCH_IDLE_SECS", 300));
    let client = Client::try_default().await?;
    let ns = format!("bench-op-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": ns, "labels": {"hector.dev/test-namespace": "true"}}}),
            )?,
        )
        .await?;
    let result = run(&client, &ns, n, idle).await;
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    result
}

async fn run(client: &Client, ns: &str, n: usize, idle: Duration) -> Result<(), Error> {
    let plugins: Api<hector_operator::crd::HectorPlugin> = Api::namespaced(client.clone(), ns);
    eprintln!("[bench] namespace {ns}: creating {n} plugins at 0 replicas");
    for i in 0..n {
        let body = json!({
            "apiVersion": "hector.dev/v1alpha1", "kind": "HectorPlugin",
            "metadata": {"name": format!("p{i:02}")},
            "spec": {
                "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"},
                "image": "hector.dev/echo-llm:dev", "imagePullPolicy": "Never",
                "command": ["/plugin/echo-llm"], "replicas": 0,
                "health": {"periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 2},
            }
        });
        plugins
            .patch(
                &format!("p{i:02}"),
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&body),
            )
            .await?;
    }
    // Services exist once every plugin is reconciled.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    while services.list(&ListParams::default()).await?.items.len() < n {
        if Instant::now() > deadline {
            return Err("plugins were not reconciled in 2 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Seen)>();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t = tx.clone();
    let pod_watch = tokio::spawn(
        watcher(pods, watcher::Config::default())
            .applied_objects()
            .for_each(move |p| {
                if let Ok(p) = p
                    && ready(&p)
                    && let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone())
                {
                    let _ = t.send((Instant::now(), Seen::PodReady(ip)));
                }
                futures::future::ready(())
            }),
    );
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let t = tx.clone();
    let slice_watch = tokio::spawn(
        watcher(slices, watcher::Config::default())
            .applied_objects()
            .for_each(move |s| {
                if let Ok(s) = s {
                    for e in s.endpoints {
                        if e.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                            for a in e.addresses {
                                let _ = t.send((Instant::now(), Seen::InSlice(a)));
                            }
                        }
                    }
                }
                futures::future::ready(())
            }),
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let t = tx.clone();
    let cm_watch = tokio::spawn(
        watcher(
            cms,
            watcher::Config::default().fields("metadata.name=hector-plugins"),
        )
        .applied_objects()
        .for_each(move |c| {
            if let Ok(c) = c
                && let Some(file) = c
                    .data
                    .as_ref()
                    .and_then(|d| d.get("endpoints.json"))
                    .and_then(|t| EndpointsFile::parse(t).ok())
            {
                let ips = file
                    .plugins
                    .values()
                    .flat_map(|p| p.endpoints.iter())
                    .filter_map(|e| e.rsplit_once(':').map(|(ip, _)| ip.to_string()))
                    .collect();
                let _ = t.send((Instant::now(), Seen::Published(ips)));
            }
            futures::future::ready(())
        }),
    );
    drop(tx);

    eprintln!("[bench] scaling all {n} plugins to 1 replica at once");
    let scaled = Instant::now();
    for i in 0..n {
        plugins
            .patch(
                &format!("p{i:02}"),
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"replicas": 1}})),
            )
            .await?;
    }
    let mut ready_at: HashMap<String, Instant> = HashMap::new();
    let mut slice_at: HashMap<String, Instant> = HashMap::new();
    let mut cm_at: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while cm_at.len() < n || slice_at.len() < n || ready_at.len() < n {
        let Ok(Some((at, seen))) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            return Err(format!(
                "timed out: {} ready, {} in slices, {} published",
                ready_at.len(),
                slice_at.len(),
                cm_at.len()
            )
            .into());
        };
        match seen {
            Seen::PodReady(ip) => {
                ready_at.entry(ip).or_insert(at);
            }
            Seen::InSlice(ip) => {
                slice_at.entry(ip).or_insert(at);
            }
            Seen::Published(ips) => {
                for ip in ips {
                    cm_at.entry(ip).or_insert(at);
                }
            }
        }
    }
    pod_watch.abort();
    slice_watch.abort();
    cm_watch.abort();
    let all_published = scaled.elapsed();

    let since_ready = |m: &HashMap<String, Instant>| {
        let mut v: Vec<f64> = ready_at
            .iter()
            .filter_map(|(ip, r)| {
                let t = m.get(ip)?;
                // Seen before the Pod event arrived: count as zero.
                Some(t.saturating_duration_since(*r).as_secs_f64() * 1000.0)
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let a = since_ready(&slice_at);
    let b = since_ready(&cm_at);
    let (a50, a99, b50, b99) = (
        percentile(&a, 0.5),
        percentile(&a, 0.99),
        percentile(&b, 0.5),
        percentile(&b, 0.99),
    );
    println!(
        "plugins scaled up at once: {n} (all published {all_published:.2?} after the scale-up)"
    );
    println!("| from Pod Ready to … | p50 | p99 |");
    println!("|---|---|---|");
    println!("| (a) address in the Service's EndpointSlice | {a50:.0} ms | {a99:.0} ms |");
    println!("| (b) address in hector-plugins | {b50:.0} ms | {b99:.0} ms |");
    let ratio = if a50 > 0.0 { b50 / a50 } else { f64::INFINITY };
    println!("ratio b/a at p50: {ratio:.2} (goal ≤ 1.0)");

    eprintln!("[bench] idle for {idle:?}: counting the operator's API writes");
    let before = leader_metrics(client).await?;
    tokio::time::sleep(idle).await;
    let after = leader_metrics(client).await?;
    let writes = metric_sum(&after, "hector_operator_api_writes_total")
        - metric_sum(&before, "hector_operator_api_writes_total");
    let rss = metric_sum(&after, "hector_operator_resident_memory_bytes");
    println!(
        "API writes while idle for {}s: {writes} (goal 0)",
        idle.as_secs()
    );
    println!(
        "operator resident memory with {n} plugins: {:.1} MiB",
        rss / 1024.0 / 1024.0
    );
    eprintln!("[bench] done; the namespace and its plugins are deleted");
    Ok(())
}
