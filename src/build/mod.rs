//! Pure builders of the Kubernetes objects that run one HectorPlugin: its configuration
//! ConfigMap, Deployment, Service and NetworkPolicy. No I/O: the controller applies what
//! these return.

mod config_map;
mod deployment;
mod network_policy;
mod pod_template;
mod service;

pub use config_map::{CONFIG_HASH_ANNOTATION, config_map};
pub use deployment::{API_SERVER_CREDENTIALS_DIR, deployment};
pub use network_policy::network_policy;
pub use pod_template::{OverlayError, check as check_pod_template};
pub use service::service;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::access::{self, Callers, OperatorIdentity};
use crate::crd::{HectorPlugin, ImagePullPolicy};

/// Label on every object made for a plugin, naming the HectorPlugin; also the Pod selector.
pub const PLUGIN_LABEL: &str = "hector.dev/plugin";
/// Where the launcher reads the plugin's configuration inside the Pod.
pub const CONFIG_DIR: &str = "/etc/hector/config";
/// Where the init container puts the launcher.
pub const LAUNCHER_DIR: &str = "/hector/bin";
/// The launcher's path inside the operator image.
pub const LAUNCHER_IN_IMAGE: &str = "/usr/local/bin/hector-plugin-launcher";

/// Operator-wide settings the builders need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The image holding the launcher (the operator's own image).
    pub launcher_image: String,
    /// Its pull policy.
    pub launcher_pull_policy: ImagePullPolicy,
    /// Who the operator is: every plugin admits its prober.
    pub operator: OperatorIdentity,
}

/// Why objects cannot be built for a resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The resource has no namespace, name or uid yet (it was not read from the API server).
    #[error("the HectorPlugin has no {0}; only stored resources can own objects")]
    Unstored(&'static str),
    /// `spec.access` is invalid (the reconciler reports this earlier, as ConfigValid=False).
    #[error("{0}")]
    InvalidAccess(String),
    /// `spec.podTemplate` is invalid (reported earlier too, as ConfigValid=False).
    #[error("{0}")]
    InvalidPodTemplate(String),
}

/// Name of the plugin's configuration ConfigMap.
pub fn config_map_name(plugin: &HectorPlugin) -> String {
    format!("{}-config", plugin.name_any())
}

/// Labels on every object made for `plugin`.
pub fn labels(plugin: &HectorPlugin) -> BTreeMap<String, String> {
    let mut l = selector(plugin);
    l.insert(
        "app.kubernetes.io/name".into(),
        plugin.spec.manifest.name.clone(),
    );
    l.insert("app.kubernetes.io/instance".into(), plugin.name_any());
    l.insert(
        "app.kubernetes.io/version".into(),
        plugin.spec.manifest.version.clone(),
    );
    l.insert("app.kubernetes.io/component".into(), "hector-plugin".into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "hector-operator".into(),
    );
    l
}

/// The Pod selector: only the owning resource's name, so it never has to change.
pub fn selector(plugin: &HectorPlugin) -> BTreeMap<String, String> {
    BTreeMap::from([(PLUGIN_LABEL.to_string(), plugin.name_any())])
}

/// The Pod selector as a label selector string (`hector.dev/plugin=NAME`), as the scale
/// subresource reports it.
pub fn selector_string(plugin: &HectorPlugin) -> String {
    selector(plugin)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata for an object named `name`, owned by `plugin` (garbage-collected with it).
fn owned_meta(plugin: &HectorPlugin, name: String) -> Result<ObjectMeta, BuildError> {
    let namespace = plugin
        .namespace()
        .ok_or(BuildError::Unstored("namespace"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace),
        labels: Some(labels(plugin)),
        owner_references: Some(vec![owner(plugin)?]),
        ..Default::default()
    })
}

/// Who may call `plugin`'s Pods; nothing is built from an invalid `spec.access`.
fn callers(plugin: &HectorPlugin) -> Result<Callers, BuildError> {
    let namespace = plugin
        .namespace()
        .ok_or(BuildError::Unstored("namespace"))?;
    access::callers(&namespace, &plugin.spec.access).map_err(|errors| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        BuildError::InvalidAccess(text.join("; "))
    })
}

fn owner(plugin: &HectorPlugin) -> Result<OwnerReference, BuildError> {
    if plugin.meta().uid.is_none() {
        return Err(BuildError::Unstored("uid"));
    }
    plugin
        .controller_owner_ref(&())
        .ok_or(BuildError::Unstored("name"))
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::crd::HectorPlugin;

    /// A stored resource as the API server would return it.
    pub fn plugin(yaml: &str) -> HectorPlugin {
        let mut p: HectorPlugin = serde_norway::from_str(yaml).expect("fixture parses");
        p.metadata.namespace.get_or_insert_with(|| "agents".into());
        p.metadata.uid = Some("0b1c2d3e-0000-4000-8000-000000000001".into());
        p
    }

    pub const LLM: &str = r#"
apiVersion: hector.dev/v1alpha1
kind: HectorPlugin
metadata: {name: my-llm}
spec:
  manifest:
    name: my-llm
    version: 1.2.0
    type: llm_provider
    configSchema:
      required: [api_key, model]
      optional: [temperature]
      defaults: {temperature: "0.7"}
  image: example.org/my-llm:1.2.0
  command: ["/plugin/my-llm"]
  args: ["--verbose"]
  config: {model: big-1, max_tokens: 512}
  secretConfig:
    - {key: api_key, secretKeyRef: {name: llm-secrets, key: api-key}}
"#;

    pub fn settings() -> super::Settings {
        super::Settings {
            launcher_image: "hector.dev/hector-operator:dev".into(),
            launcher_pull_policy: crate::crd::ImagePullPolicy::IfNotPresent,
            operator: crate::access::OperatorIdentity {
                namespace: "hector-system".into(),
                service_account: "hector-operator".into(),
                pod_labels: [
                    ("app.kubernetes.io/name", "hector-operator"),
                    ("app.kubernetes.io/instance", "hector-operator"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            },
        }
    }
}
