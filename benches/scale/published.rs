//! What the operator publishes: a watch of the bench namespaces' `hector-plugins`
//! ConfigMaps, and the wait until every endpoint plugin is in them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hector_plugin_sdk::endpoints::EndpointsFile;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Error;
use crate::namespaces;

/// The endpoints ConfigMap's name.
const CONFIG_MAP: &str = "hector-plugins";

/// A spawned watch, stopped when dropped (also when the bench is interrupted).
pub struct Task(pub JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One version of a namespace's endpoints file, and when this program saw it.
pub struct Seen {
    /// When the watch event arrived.
    pub at: Instant,
    /// The ConfigMap's namespace.
    pub namespace: String,
    /// Its parsed `endpoints.json`.
    pub file: EndpointsFile,
}

/// Watches every bench namespace's `hector-plugins` (a field selector keeps other
/// ConfigMaps off the wire).
pub fn watch(client: &Client) -> (Task, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let api: Api<ConfigMap> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}"));
    let task = tokio::spawn(watcher(api, config).applied_objects().for_each(move |cm| {
        // Stamped before parsing, as the Pod and EndpointSlice events are: what this program
        // does with an event is not the operator's latency.
        let at = Instant::now();
        if let Ok(cm) = cm
            && let Some(namespace) = cm.namespace().filter(|n| namespaces::is_plugins(n))
            && let Some(file) = endpoints_file(&cm)
        {
            let _ = tx.send(Seen {
                at,
                namespace,
                file,
            });
        }
        futures::future::ready(())
    }));
    (Task(task), rx)
}

fn endpoints_file(cm: &ConfigMap) -> Option<EndpointsFile> {
    EndpointsFile::parse(cm.data.as_ref()?.get("endpoints.json")?).ok()
}

/// How far publication got.
pub struct Published {
    /// Endpoint plugins published with at least one endpoint.
    pub count: usize,
    /// Endpoint plugins there are.
    pub total: usize,
    /// From `from` to the event that completed the set; `None` when it did not complete.
    pub after: Option<Duration>,
}

/// Waits until every plugin of `expected` (names by namespace) is published with an
/// endpoint, or until `deadline`.
pub async fn wait_all(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    expected: &HashMap<String, HashSet<String>>,
    from: Instant,
    deadline: Instant,
) -> Published {
    let total: usize = expected.values().map(HashSet::len).sum();
    let mut by_ns: HashMap<String, usize> = HashMap::new();
    let mut count = 0;
    while count < total {
        let Ok(Some(seen)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else {
            return Published {
                count,
                total,
                after: None,
            };
        };
        let Some(names) = expected.get(&seen.namespace) else {
            continue;
        };
        let now = seen
            .file
            .plugins
            .iter()
            .filter(|(name, p)| names.contains(*name) && !p.endpoints.is_empty())
            .count();
        let before = by_ns.insert(seen.namespace, now).unwrap_or(0);
        count = count + now - before;
        if count == total {
            return Published {
                count,
                total,
                after: Some(seen.at.saturating_duration_since(from)),
            };
        }
    }
    Published {
        count,
        total,
        after: Some(Duration::ZERO),
    }
}

/// The largest `hector-plugins` of the bench namespaces: bytes of its keys and values.
pub async fn largest(client: &Client) -> Result<usize, Error> {
    let api: Api<ConfigMap> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().fields(&format!("metadata.name={CONFIG_MAP}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|cm| cm.namespace().is_some_and(|n| namespaces::is_plugins(&n)))
        .map(size)
        .max()
        .unwrap_or(0))
}

fn size(cm: &ConfigMap) -> usize {
    let text: usize = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    let binary: usize = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.0.len())
        .sum();
    text + binary
}
