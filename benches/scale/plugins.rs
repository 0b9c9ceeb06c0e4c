//! Which plugins a run makes, where, and applying them quickly.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hector_operator::crd::HectorPlugin;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::Error;
use crate::namespaces::{MANAGER, PREFIX};

/// Plugins per namespace.
pub const PER_NAMESPACE: usize = 50;
/// Plugins that run their own Pods (the rest name an endpoint).
pub const REAL: usize = 50;
/// Requests in flight while applying.
pub const CONCURRENCY: usize = 32;

/// One HectorPlugin to make.
pub struct Planned {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The address it names, or `None` for a plugin with its own Pods.
    pub endpoint: Option<String>,
}

/// Every plugin of one run.
pub struct Layout {
    /// The namespaces, in order.
    pub namespaces: Vec<String>,
    /// The plugins, namespace by namespace.
    pub plugins: Vec<Planned>,
}

impl Layout {
    /// `n` plugins in `n / 50` namespaces (at least one); `min(n, 50)` of them, spread evenly,
    /// run Pods, and the others name `backends` in turn.
    pub fn new(n: usize, backends: &[String]) -> Self {
        let namespace_count = (n / PER_NAMESPACE).max(1);
        let per_namespace = n.div_ceil(namespace_count);
        let real = n.min(REAL);
        let stride = (n / real.max(1)).max(1);
        let namespaces: Vec<String> = (0..namespace_count)
            .map(|k| format!("{PREFIX}{k}"))
            .collect();
        let mut plugins = Vec::with_capacity(n);
        let mut next_backend = 0;
        for i in 0..n {
            let namespace = namespaces[(i / per_namespace).min(namespace_count - 1)].clone();
            let is_real = i % stride == 0 && i / stride < real;
            let planned = if is_real || backends.is_empty() {
                Planned {
                    namespace,
                    name: format!("pod-{i}"),
                    endpoint: None,
                }
            } else {
                next_backend += 1;
                Planned {
                    namespace,
                    name: format!("ep-{i}"),
                    endpoint: Some(backends[(next_backend - 1) % backends.len()].clone()),
                }
            };
            plugins.push(planned);
        }
        Self {
            namespaces,
            plugins,
        }
    }

    /// The endpoint plugins' names by namespace: what must be published.
    pub fn endpoint_plugins(&self) -> HashMap<String, HashSet<String>> {
        let mut by_ns: HashMap<String, HashSet<String>> = HashMap::new();
        for p in self.plugins.iter().filter(|p| p.endpoint.is_some()) {
            by_ns
                .entry(p.namespace.clone())
                .or_default()
                .insert(p.name.clone());
        }
        by_ns
    }

    /// The plugins with their own Pods.
    pub fn real(&self) -> impl Iterator<Item = &Planned> {
        self.plugins.iter().filter(|p| p.endpoint.is_none())
    }
}

/// The HectorPlugin for `p`: an echo-llm either at its endpoint or in Pods, at 0 replicas.
pub fn body(p: &Planned) -> Value {
    let manifest = json!({"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"});
    let spec = match &p.endpoint {
        Some(endpoint) => json!({"manifest": manifest, "endpoint": endpoint}),
        // With the default health settings (a probe every 10 s), as a user gets them: a Pod
        // turning Ready is probed at once whatever the period, so the publication latency
        // does not depend on it, and the idle figures are those of a default install.
        None => json!({
            "manifest": manifest,
            "image": "hector.dev/echo-llm:dev", "imagePullPolicy": "Never",
            "command": ["/plugin/echo-llm"], "replicas": 0,
        }),
    };
    json!({
        "apiVersion": "hector.dev/v1alpha1", "kind": "HectorPlugin",
        "metadata": {"name": p.name, "namespace": p.namespace},
        "spec": spec,
    })
}

async fn apply(client: &Client, p: &Planned) -> Result<(), Error> {
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &p.namespace);
    let params = PatchParams::apply(MANAGER).force();
    let body = body(p);
    let mut attempt = 1;
    loop {
        match api.patch(&p.name, &params, &Patch::Apply(&body)).await {
            Ok(_) => return Ok(()),
            // An API server this busy may drop a request; applying again is harmless.
            Err(e) if attempt < 3 => {
                eprintln!(
                    "[bench-scale] apply {}/{} failed ({e}); trying again",
                    p.namespace, p.name
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("apply {}/{}: {e}", p.namespace, p.name).into()),
        }
    }
}

/// Applies every plugin, `CONCURRENCY` at a time, printing progress every tenth; returns how
/// long it took. Stops at a plugin refused three times.
pub async fn apply_all(client: &Client, layout: &Layout) -> Result<Duration, Error> {
    let started = Instant::now();
    let total = layout.plugins.len();
    let step = total.div_ceil(10).max(1);
    let mut done: usize = 0;
    let mut results = futures::stream::iter(layout.plugins.iter().map(|p| apply(client, p)))
        .buffer_unordered(CONCURRENCY);
    while let Some(r) = results.next().await {
        r?;
        done += 1;
        if done.is_multiple_of(step) || done == total {
            eprintln!(
                "[bench-scale] applied {done}/{total} plugins ({:.1?})",
                started.elapsed()
            );
        }
    }
    Ok(started.elapsed())
}

/// Sets every real plugin's replicas to `replicas` at once.
pub async fn scale_real(client: &Client, layout: &Layout, replicas: i32) -> Result<(), Error> {
    let patch = json!({"spec": {"replicas": replicas}});
    futures::stream::iter(layout.real().map(|p| {
        let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &p.namespace);
        let patch = &patch;
        async move {
            api.patch(&p.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(|e| Error::from(format!("scale {}/{}: {e}", p.namespace, p.name)))
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .try_for_each(|_| async { Ok(()) })
    .await
}
