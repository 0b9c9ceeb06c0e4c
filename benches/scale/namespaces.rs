//! The bench's namespaces: made with labels that say whose they are, and deleted (waiting
//! until they are gone) before each size and at the end, also after a failure or Ctrl-C.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::Error;

/// Every bench namespace's name starts with this.
pub const PREFIX: &str = "bench-scale-";
/// The namespace of the echo-llm servers that endpoint plugins name.
pub const BACKENDS: &str = "bench-scale-backends";
/// Field manager of everything the bench applies.
pub const MANAGER: &str = "bench-scale";

/// Which bench namespaces to delete.
#[derive(Clone, Copy)]
pub enum Which {
    /// The plugins' namespaces; the backends stay for the next size.
    Plugins,
    /// Everything, backends included.
    All,
}

impl Which {
    fn matches(self, name: &str) -> bool {
        name.starts_with(PREFIX)
            && match self {
                Which::Plugins => name != BACKENDS,
                Which::All => true,
            }
    }
}

/// Whether `name` is one of the plugins' namespaces (not the backends').
pub fn is_plugins(name: &str) -> bool {
    Which::Plugins.matches(name)
}

/// Creates (or takes over) `name`; the test-namespace label lets the cluster's `down` remove
/// it too.
pub async fn apply(client: &Client, name: &str) -> Result<(), Error> {
    let body = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"hector.dev/test-namespace": "true"}},
    });
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| format!("namespace {name}: {e}"))?;
    Ok(())
}

/// Creates `names`, `concurrency` at a time.
pub async fn apply_all(client: &Client, names: &[String], concurrency: usize) -> Result<(), Error> {
    futures::stream::iter(names.iter().map(|n| apply(client, n)))
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

/// Waits until the service account controller has made `default` in `ns`: Pods are refused
/// before it exists.
pub async fn wait_default_account(
    client: &Client,
    ns: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    while accounts.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            return Err(format!("no default ServiceAccount in {ns} after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn existing(client: &Client, which: Which) -> Result<Vec<String>, Error> {
    Ok(Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .filter(|n| which.matches(n))
        .collect())
}

/// Deletes the chosen bench namespaces and waits until they are gone, printing progress.
pub async fn delete_and_wait(
    client: &Client,
    which: Which,
    timeout: Duration,
) -> Result<(), Error> {
    let api = Api::<Namespace>::all(client.clone());
    let names = existing(client, which).await?;
    if names.is_empty() {
        return Ok(());
    }
    let total = names.len();
    eprintln!("[bench-scale] deleting {total} namespaces");
    for name in &names {
        // Already terminating, or gone meanwhile: both are what we want.
        let _ = api.delete(name, &DeleteParams::background()).await;
    }
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let left = existing(client, which).await?;
        if left.is_empty() {
            eprintln!(
                "[bench-scale] {total} namespaces gone after {:.0?}",
                started.elapsed()
            );
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "{} namespaces still there after {timeout:?}: {}",
                left.len(),
                left.join(" ")
            )
            .into());
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "[bench-scale] {}/{total} namespaces still terminating",
                left.len()
            );
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
