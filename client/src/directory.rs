//! The published plugins of a namespace, followed as they change: from the `hector-plugins`
//! ConfigMap through the Kubernetes API (a watch: changes arrive as soon as the operator
//! writes them), or from a mounted `endpoints.json` (re-read by path every second, so a
//! ConfigMap volume's swapped `..data` link is followed as soon as kubelet makes the swap).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hector_plugin_sdk::endpoints::{EndpointsFile, PublishedPlugin, SCHEMA_VERSION};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ClientError;

/// How often an endpoints file is read again.
pub const FILE_POLL: Duration = Duration::from_secs(1);
/// How long the first answer of the Kubernetes API may take.
#[cfg(feature = "kube")]
pub const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(15);

/// Aborts a background task when the last handle to it goes.
#[derive(Debug)]
pub(crate) struct TaskGuard(pub(crate) Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The published plugins of one namespace, kept up to date in the background. Cheap to
/// clone; the background work stops when the last clone (and every
/// [`PluginChannel`](crate::PluginChannel) made from it) is dropped.
#[derive(Clone, Debug)]
pub struct Directory {
    current: watch::Receiver<Arc<EndpointsFile>>,
    place: Arc<str>,
    _task: Arc<TaskGuard>,
}

impl Directory {
    /// Follows the endpoints file at `path` (typically the `endpoints.json` of a mounted
    /// `hector-plugins` ConfigMap). The first read must succeed; later failures keep the last
    /// good content (and are logged), so a kubelet update in progress does not empty it.
    pub async fn follow_file(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let text = read_file(&path).await?;
        let first = parse(&text, &path.display().to_string())?;
        let (tx, rx) = watch::channel(Arc::new(first));
        let task = tokio::spawn(poll_file(path.clone(), text, tx));
        Ok(Self {
            current: rx,
            place: path.display().to_string().into(),
            _task: Arc::new(TaskGuard(vec![task])),
        })
    }

    /// Watches ConfigMap `name` of `namespace` through the Kubernetes API. Waits for the
    /// API's first answer (at most [`FIRST_LIST_TIMEOUT`]); a ConfigMap that does not exist
    /// means no plugin is published yet. Needs `get`, `list` and `watch` on that ConfigMap.
    #[cfg(feature = "kube")]
    pub async fn watch_configmap(
        client: kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Self, ClientError> {
        crate::configmap::watch(client, namespace, name).await
    }

    /// Watches the operator's `hector-plugins` ConfigMap of `namespace`.
    #[cfg(feature = "kube")]
    pub async fn watch_namespace(
        client: kube::Client,
        namespace: &str,
    ) -> Result<Self, ClientError> {
        Self::watch_configmap(
            client,
            namespace,
            hector_plugin_sdk::endpoints::DEFAULT_CONFIGMAP,
        )
        .await
    }

    /// A directory that never changes, e.g. for tests or a document obtained elsewhere.
    pub fn fixed(file: EndpointsFile, place: impl Into<String>) -> Self {
        let (_tx, rx) = watch::channel(Arc::new(file));
        Self {
            current: rx,
            place: place.into().into(),
            _task: Arc::new(TaskGuard(Vec::new())),
        }
    }

    /// Assembles a directory from a channel fed by a background task.
    #[cfg_attr(not(feature = "kube"), allow(dead_code))]
    pub(crate) fn from_parts(
        current: watch::Receiver<Arc<EndpointsFile>>,
        place: String,
        task: JoinHandle<()>,
    ) -> Self {
        Self {
            current,
            place: place.into(),
            _task: Arc::new(TaskGuard(vec![task])),
        }
    }

    /// Where the plugins are published, for messages: a file path or `configmap NS/NAME`.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// The document as it is now.
    pub fn current(&self) -> Arc<EndpointsFile> {
        self.current.borrow().clone()
    }

    /// One published plugin as it is now.
    pub fn get(&self, name: &str) -> Option<PublishedPlugin> {
        self.current.borrow().plugins.get(name).cloned()
    }

    /// One published plugin, or an error naming what is published instead.
    pub fn require(&self, name: &str) -> Result<PublishedPlugin, ClientError> {
        let current = self.current();
        current
            .plugins
            .get(name)
            .cloned()
            .ok_or_else(|| ClientError::NotPublished {
                name: name.to_string(),
                place: self.place.to_string(),
                known: current.plugins.keys().cloned().collect(),
            })
    }

    /// Waits until plugin `name` is published, at most `timeout`.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<PublishedPlugin, ClientError> {
        let mut rx = self.current.clone();
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(p) = rx.borrow_and_update().plugins.get(name) {
                    return Some(p.clone());
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(Some(p)) => Ok(p),
            Ok(None) => self.require(name),
            Err(_) => Err(ClientError::NotPublishedInTime {
                name: name.to_string(),
                place: self.place.to_string(),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// A receiver that sees every new version of the document.
    pub fn subscribe(&self) -> watch::Receiver<Arc<EndpointsFile>> {
        self.current.clone()
    }
}

/// An empty document: nothing published (yet).
#[cfg_attr(not(feature = "kube"), allow(dead_code))]
pub(crate) fn empty(namespace: &str) -> EndpointsFile {
    EndpointsFile {
        schema_version: SCHEMA_VERSION,
        namespace: namespace.to_string(),
        plugins: Default::default(),
    }
}

/// Parses a document, naming `place` in the error.
pub(crate) fn parse(text: &str, place: &str) -> Result<EndpointsFile, ClientError> {
    EndpointsFile::parse(text).map_err(|source| ClientError::Parse {
        place: place.to_string(),
        source,
    })
}

async fn read_file(path: &PathBuf) -> Result<String, ClientError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|source| ClientError::ReadFile {
            path: path.clone(),
            source,
        })
}

/// Reads `path` every [`FILE_POLL`] and publishes its content when it changed and parses.
/// Reading by path (not keeping the file open) follows kubelet's `..data` link swap.
async fn poll_file(path: PathBuf, mut last: String, tx: watch::Sender<Arc<EndpointsFile>>) {
    let place = path.display().to_string();
    let mut problem: Option<String> = None;
    loop {
        tokio::time::sleep(FILE_POLL).await;
        if tx.is_closed() {
            return;
        }
        let result = match read_file(&path).await {
            Ok(text) if text == last => Ok(None),
            Ok(text) => parse(&text, &place).map(|file| Some((text, file))),
            Err(e) => Err(e),
        };
        match result {
            Ok(None) => {}
            Ok(Some((text, file))) => {
                last = text;
                problem = None;
                tx.send_replace(Arc::new(file));
            }
            Err(e) => {
                let now = e.to_string();
                // Once per distinct problem: it is usually retried every second.
                if problem.as_deref() != Some(now.as_str()) {
                    tracing::warn!(problem = %now, "endpoints file; keeping the last content");
                    problem = Some(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hector_plugin_sdk::endpoints::PublishedPlugin;

    pub(crate) fn doc(plugins: &[(&str, &[&str])]) -> EndpointsFile {
        let mut f = empty("agents");
        for (name, endpoints) in plugins {
            f.plugins.insert(
                name.to_string(),
                PublishedPlugin {
                    name: name.to_string(),
                    plugin_type: "llm_provider".into(),
                    address: format!("{name}.agents.svc:50051"),
                    endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
                    ..Default::default()
                },
            );
        }
        f
    }

    #[tokio::test]
    async fn a_file_is_followed_and_bad_content_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("endpoints.json");
        assert!(matches!(
            Directory::follow_file(&path).await,
            Err(ClientError::ReadFile { .. })
        ));
        std::fs::write(&path, doc(&[("echo", &["10.0.0.1:1"])]).render()).expect("write");
        let d = Directory::follow_file(&path).await.expect("follows");
        assert_eq!(d.get("echo").map(|p| p.endpoints.len()), Some(1));
        let err = d.require("nope").expect_err("not published");
        assert!(err.to_string().contains("echo"), "{err}");

        std::fs::write(&path, "{ not json").expect("write");
        tokio::time::sleep(FILE_POLL * 2).await;
        assert!(d.get("echo").is_some(), "kept the last good content");

        let mut rx = d.subscribe();
        rx.borrow_and_update();
        std::fs::write(&path, doc(&[("vec", &["10.0.0.2:1"])]).render()).expect("write");
        tokio::time::timeout(FILE_POLL * 3, rx.changed())
            .await
            .expect("changed within three polls")
            .expect("still followed");
        assert!(d.get("echo").is_none() && d.get("vec").is_some());
        let found = d
            .wait_for("vec", Duration::from_millis(10))
            .await
            .expect("published");
        assert_eq!(found.name, "vec");
        let err = d
            .wait_for("late", Duration::from_millis(50))
            .await
            .expect_err("never published");
        assert!(
            matches!(err, ClientError::NotPublishedInTime { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn waiting_sees_a_plugin_published_later() {
        let (tx, rx) = watch::channel(Arc::new(doc(&[])));
        let d = Directory::from_parts(rx, "test".into(), tokio::spawn(async {}));
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait_for("echo", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(Arc::new(doc(&[("echo", &["10.0.0.1:1"])])));
        let found = waiter.await.expect("joined").expect("published");
        assert_eq!(found.endpoints, ["10.0.0.1:1"]);
    }
}
