//! Watching the operator's ConfigMap through the Kubernetes API. A mounted ConfigMap reaches
//! a Pod only at kubelet's next sync (a minute or more); a watch sees the operator's write
//! within about a second.

use std::sync::Arc;

use futures::StreamExt;
use hector_plugin_sdk::endpoints::{ENDPOINTS_KEY, EndpointsFile};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::directory::{self, Directory, FIRST_LIST_TIMEOUT};
use crate::error::ClientError;

/// What one state of the ConfigMap publishes: nothing when it is absent or has no
/// `endpoints.json` (the operator writes it with the first plugin of the namespace).
fn document(
    cm: Option<&ConfigMap>,
    namespace: &str,
    place: &str,
) -> Result<EndpointsFile, ClientError> {
    match cm
        .and_then(|cm| cm.data.as_ref())
        .and_then(|d| d.get(ENDPOINTS_KEY))
    {
        Some(text) => directory::parse(text, place),
        None => Ok(directory::empty(namespace)),
    }
}

/// Starts the watch and returns once the API answered the first list.
pub async fn watch(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Directory, ClientError> {
    let place = format!("configmap {namespace}/{name}");
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    // `watch_object` lists and watches with a field selector on the name, so only
    // this one object is read (and RBAC may restrict the role to it with resourceNames).
    let mut stream = watcher::watch_object(api, name).default_backoff().boxed();
    let first = match tokio::time::timeout(FIRST_LIST_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(cm))) => document(cm.as_ref(), namespace, &place)?,
        Ok(Some(Err(e))) => {
            return Err(ClientError::Watch {
                namespace: namespace.to_string(),
                name: name.to_string(),
                source: Box::new(e),
            });
        }
        Ok(None) | Err(_) => {
            return Err(ClientError::WatchTimeout {
                namespace: namespace.to_string(),
                name: name.to_string(),
                secs: FIRST_LIST_TIMEOUT.as_secs(),
            });
        }
    };
    let (tx, rx) = watch::channel(Arc::new(first));
    let ns = namespace.to_string();
    let cm_name = name.to_string();
    let label = place.clone();
    let task = tokio::spawn(async move {
        let mut problem: Option<String> = None;
        while let Some(event) = stream.next().await {
            if tx.is_closed() {
                return;
            }
            let result = match event {
                Ok(cm) => document(cm.as_ref(), &ns, &label),
                Err(e) => Err(ClientError::Watch {
                    namespace: ns.clone(),
                    name: cm_name.clone(),
                    source: Box::new(e),
                }),
            };
            match result {
                Ok(file) => {
                    problem = None;
                    // Re-lists after a watch restart repeat the same content: no wake-up.
                    tx.send_if_modified(|cur| {
                        if **cur == file {
                            false
                        } else {
                            *cur = Arc::new(file);
                            true
                        }
                    });
                }
                Err(e) => {
                    // The watcher retries with backoff; keep the last content meanwhile.
                    let now = e.to_string();
                    if problem.as_deref() != Some(now.as_str()) {
                        tracing::warn!(problem = %now, "published endpoints; keeping the last content");
                        problem = Some(now);
                    }
                }
            }
        }
    });
    Ok(Directory::from_parts(rx, place, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_missing_configmap_or_key_publishes_nothing_and_bad_content_is_an_error() {
        let place = "configmap agents/hector-plugins";
        assert!(
            document(None, "agents", place)
                .expect("empty")
                .plugins
                .is_empty()
        );
        let mut cm = ConfigMap::default();
        assert!(
            document(Some(&cm), "agents", place)
                .expect("empty")
                .plugins
                .is_empty()
        );
        cm.data = Some(BTreeMap::from([(
            ENDPOINTS_KEY.to_string(),
            "{\"schemaVersion\": 7, \"namespace\": \"agents\"}".to_string(),
        )]));
        let err = document(Some(&cm), "agents", place).expect_err("newer schema");
        assert!(
            err.to_string().contains(place) && err.to_string().contains("schemaVersion 7"),
            "{err}"
        );
    }
}
