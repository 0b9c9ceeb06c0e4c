//! Publication latency of the real plugins, measured as `make bench-operator` measures it:
//! all of them scaled 0 → 1 at once and, per Pod, the time from the Pod seen Ready to its
//! address seen in (a) its Service's EndpointSlice and (b) `hector-plugins`. Every time is
//! when this program saw the watch event, so watch delivery costs the same on all three.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use crate::Error;
use crate::namespaces;
use crate::plugins::{self, Layout};
use crate::published::{self, Task};

enum Event {
    PodReady(String),
    InSlice(String),
    Published(Vec<String>),
}

/// What the scale-up showed.
pub struct Latency {
    /// Pods that turned Ready.
    pub ready: usize,
    /// Pods there should be.
    pub expected: usize,
    /// Of the Ready Pods, those whose address reached the EndpointSlice / `hector-plugins`.
    pub in_slice: usize,
    /// See `in_slice`.
    pub published: usize,
    /// Milliseconds from Ready to the EndpointSlice, sorted.
    pub slice_ms: Vec<f64>,
    /// Milliseconds from Ready to `hector-plugins`, sorted.
    pub published_ms: Vec<f64>,
    /// Pods seen in `hector-plugins` no later than in their EndpointSlice.
    pub published_first: usize,
    /// Pods seen in both.
    pub in_both: usize,
    /// From the scale-up to the last address seen (the longest round).
    pub took: Duration,
}

impl Latency {
    /// The samples of `self` and `other` together.
    pub fn merge(mut self, other: Latency) -> Latency {
        self.ready += other.ready;
        self.expected += other.expected;
        self.in_slice += other.in_slice;
        self.published += other.published;
        self.slice_ms.extend(other.slice_ms);
        self.slice_ms.sort_by(f64::total_cmp);
        self.published_ms.extend(other.published_ms);
        self.published_ms.sort_by(f64::total_cmp);
        self.published_first += other.published_first;
        self.in_both += other.in_both;
        self.took = self.took.max(other.took);
        self
    }
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn bench_namespace(o: &impl ResourceExt) -> bool {
    o.namespace().is_some_and(|n| namespaces::is_plugins(&n))
}

fn watch_pods(client: &Client, tx: mpsc::UnboundedSender<(Instant, Event)>) -> Task {
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().labels("app.kubernetes.io/component=hector-plugin");
    Task(tokio::spawn(
        watcher(api, config).applied_objects().for_each(move |p| {
            if let Ok(p) = p
                && bench_namespace(&p)
                && ready(&p)
                && let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone())
            {
                let _ = tx.send((Instant::now(), Event::PodReady(ip)));
            }
            futures::future::ready(())
        }),
    ))
}

fn watch_slices(client: &Client, tx: mpsc::UnboundedSender<(Instant, Event)>) -> Task {
    let api: Api<EndpointSlice> = Api::all(client.clone());
    Task(tokio::spawn(
        watcher(api, watcher::Config::default())
            .applied_objects()
            .for_each(move |s| {
                if let Ok(s) = s
                    && bench_namespace(&s)
                {
                    let ready = s
                        .endpoints
                        .into_iter()
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true));
                    for a in ready.flat_map(|e| e.addresses) {
                        let _ = tx.send((Instant::now(), Event::InSlice(a)));
                    }
                }
                futures::future::ready(())
            }),
    ))
}

fn forward_published(
    mut rx: mpsc::UnboundedReceiver<published::Seen>,
    tx: mpsc::UnboundedSender<(Instant, Event)>,
) -> Task {
    Task(tokio::spawn(async move {
        while let Some(seen) = rx.recv().await {
            let ips = seen
                .file
                .plugins
                .values()
                .flat_map(|p| p.endpoints.iter())
                .filter_map(|e| e.rsplit_once(':').map(|(ip, _)| ip.to_string()))
                .collect();
            let _ = tx.send((seen.at, Event::Published(ips)));
        }
    }))
}

/// Scales every real plugin of `layout` to 1 replica at once and measures until every Pod
/// is Ready, in its EndpointSlice and published, or until `timeout`. Addresses in `used`
/// (those of earlier rounds, which a new Pod may be given again) are left out, so that no
/// sample is an address still published from before.
pub async fn scale_up(
    client: &Client,
    layout: &Layout,
    timeout: Duration,
    used: &mut HashSet<String>,
) -> Result<Latency, Error> {
    let expected = layout.real().count();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (cm_task, cm_rx) = published::watch(client);
    let _tasks = [
        watch_pods(client, tx.clone()),
        watch_slices(client, tx.clone()),
        forward_published(cm_rx, tx),
        cm_task,
    ];

    eprintln!("[bench-scale] scaling the {expected} real plugins to 1 replica at once");
    let scaled = Instant::now();
    plugins::scale_real(client, layout, 1).await?;
    let deadline = scaled + timeout;
    let mut ready_at: HashMap<String, Instant> = HashMap::new();
    let mut slice_at: HashMap<String, Instant> = HashMap::new();
    let mut cm_at: HashMap<String, Instant> = HashMap::new();
    let mut last = scaled;
    let complete = |ready: &HashMap<String, Instant>, seen: &HashMap<String, Instant>| {
        ready.len() >= expected && ready.keys().all(|ip| seen.contains_key(ip))
    };
    while !(complete(&ready_at, &slice_at) && complete(&ready_at, &cm_at)) {
        let Ok(Some((at, event))) = tokio::time::timeout_at(deadline.into(), rx.recv()).await
        else {
            eprintln!("[bench-scale] scale-up incomplete after {timeout:?}");
            break;
        };
        last = last.max(at);
        match event {
            Event::PodReady(ip) => {
                ready_at.entry(ip).or_insert(at);
            }
            Event::InSlice(ip) => {
                slice_at.entry(ip).or_insert(at);
            }
            Event::Published(ips) => {
                for ip in ips {
                    cm_at.entry(ip).or_insert(at);
                }
            }
        }
    }
    let reused = ready_at.keys().filter(|ip| used.contains(*ip)).count();
    if reused > 0 {
        eprintln!("[bench-scale] {reused} Pods had an address of an earlier round: left out");
    }
    let fresh: Vec<String> = ready_at.keys().cloned().collect();
    ready_at.retain(|ip, _| !used.contains(ip));
    used.extend(fresh);
    let ready_ips: HashSet<&String> = ready_at.keys().collect();
    let both: Vec<(&Instant, &Instant)> = ready_ips
        .iter()
        .filter_map(|ip| Some((cm_at.get(*ip)?, slice_at.get(*ip)?)))
        .collect();
    Ok(Latency {
        published_first: both.iter().filter(|(cm, slice)| cm <= slice).count(),
        in_both: both.len(),
        ready: ready_at.len(),
        expected: expected.saturating_sub(reused),
        in_slice: ready_ips
            .iter()
            .filter(|ip| slice_at.contains_key(**ip))
            .count(),
        published: ready_ips
            .iter()
            .filter(|ip| cm_at.contains_key(**ip))
            .count(),
        slice_ms: since_ready(&ready_at, &slice_at),
        published_ms: since_ready(&ready_at, &cm_at),
        took: last.saturating_duration_since(scaled),
    })
}

fn since_ready(ready_at: &HashMap<String, Instant>, seen: &HashMap<String, Instant>) -> Vec<f64> {
    let mut v: Vec<f64> = ready_at
        .iter()
        .filter_map(|(ip, ready)| {
            // Seen before the Pod event arrived: counts as zero.
            Some(
                seen.get(ip)?
                    .saturating_duration_since(*ready)
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The nearest-rank percentile of `sorted`, as `make bench-operator` takes it.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let i = ((last as f64) * p).round() as usize;
    sorted.get(i.min(last)).copied()
}
