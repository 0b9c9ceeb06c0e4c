//! The `HectorPlugin` custom resource (`hector.dev/v1alpha1`): a Hector plugin run remotely.
//!
//! Doc comments on fields become the schema descriptions `kubectl explain` shows, so they are
//! written for the person applying the resource.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, PodSecurityContext,
    ResourceRequirements, SecurityContext, Toleration, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use kube::core::Rule;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a configuration key must look like: a ConfigMap key, since plain values are stored
/// under their key in the plugin's ConfigMap and secret ones mounted as files of that name.
/// Letters, digits, `-`, `_` and `.`, but not `.` or `..` and not starting with `..`
/// (Kubernetes' `IsConfigMapKey`; RE2 has no look-ahead, hence the two-part form).
pub const CONFIG_KEY_PATTERN: &str = "^[.]?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$";

/// The longest configuration key: a ConfigMap key's limit.
pub const CONFIG_KEY_MAX: usize = 253;

/// Most keys a configuration map (`spec.config`, `configSchema.defaults`) may have. Also
/// what lets the API server bound the cost of the CEL rules over their keys.
pub const CONFIG_KEYS_MAX: usize = 256;

/// Whether `key` can be a configuration key (see [`CONFIG_KEY_PATTERN`], [`CONFIG_KEY_MAX`]).
pub fn is_config_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= CONFIG_KEY_MAX
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && !key.starts_with("..")
}

/// The keys of `spec.config` that cannot be configuration keys, sorted. The CRD cannot
/// refuse them: its values are untyped (any scalar), and the API server compiles no CEL rule
/// over a map of untyped values, nor does it support `propertyNames`. So the reconciler must
/// (and the plugin's ConfigMap would be refused otherwise).
pub fn invalid_config_keys(config: &BTreeMap<String, serde_json::Value>) -> Vec<String> {
    config
        .keys()
        .filter(|k| !is_config_key(k))
        .cloned()
        .collect()
}

/// The CEL rule that every key of the map at `field` is a configuration key.
fn config_keys_rule(field: &str) -> Rule {
    Rule::new(format!(
        "self.all(k, size(k) <= {CONFIG_KEY_MAX} && k.matches('{CONFIG_KEY_PATTERN}'))"
    ))
    .message(kube::core::Message::Message(format!(
        "{field}: every key must be a valid ConfigMap key: at most {CONFIG_KEY_MAX} letters, \
         digits, '-', '_' or '.', and not '.', '..' or starting with '..'"
    )))
}

/// Desired state of a HectorPlugin: which plugin to run and how, or where an already running
/// plugin is reached.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hector.dev",
    version = "v1alpha1",
    kind = "HectorPlugin",
    plural = "hectorplugins",
    singular = "hectorplugin",
    shortname = "hp",
    category = "hector",
    namespaced,
    status = "HectorPluginStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Serving on a published healthy endpoint, with the spec fully rolled out"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"string","jsonPath":".status.endpointsSummary","description":"Published healthy endpoints / desired replicas"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.manifest.version","description":"Plugin version"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Type","type":"string","priority":1,"jsonPath":".spec.manifest.type","description":"Plugin type"}"#,
    printcolumn = r#"{"name":"Address","type":"string","priority":1,"jsonPath":".status.address","description":"Where agents reach the plugin"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","description":"Why the plugin is (not) Ready"}"#
)]
#[x_kube(
    validation = Rule::new("has(self.image) != has(self.endpoint)").message("exactly one of spec.image (run the plugin in Pods) or spec.endpoint (use a plugin running elsewhere) must be set"),
    validation = Rule::new("!has(self.image) || (has(self.command) && size(self.command) > 0)").message("spec.command (the plugin executable inside the image) is required with spec.image"),
    validation = Rule::new("!has(self.endpoint) || !has(self.secretConfig) || size(self.secretConfig) == 0").message("spec.secretConfig cannot be delivered to a plugin given by spec.endpoint; configure it where it runs"),
    validation = Rule::new("!has(self.endpoint) || !has(self.access) || ((!has(self.access.open) || !self.access.open) && (!has(self.access.namespaces) || size(self.access.namespaces) == 0) && (!has(self.access.serviceAccounts) || size(self.access.serviceAccounts) == 0))").message("spec.access cannot be enforced for a plugin given by spec.endpoint (the operator runs no Pods for it); restrict its callers where it runs"),
)]
#[serde(rename_all = "camelCase")]
pub struct HectorPluginSpec {
    /// The plugin's manifest: its identity and declared configuration, as in its
    /// `.plugin.yaml` (generate with `hectorctl manifest convert`).
    pub manifest: PluginManifest,

    /// Container image holding the plugin executable. Set this or `endpoint`. At most 512
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// When the kubelet pulls the image (default: Kubernetes' default for the tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// The plugin executable inside the image and any leading arguments, e.g.
    /// `["/plugin/my-llm"]`. Required with `image`. At most 64 entries of at most 4096
    /// characters each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,

    /// Extra arguments passed to the plugin executable. At most 256 entries of at most 4096
    /// characters each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 4096)))]
    pub args: Vec<String>,

    /// How the plugin executable expects to be started: `goPlugin` for binaries built with
    /// Hector's Go SDK (HashiCorp go-plugin handshake, unmodified), `network` for plugins
    /// that listen on the address given in `HECTOR_PLUGIN_ADDR`.
    #[serde(default)]
    pub launch: LaunchMode,

    /// The port the plugin is served on in its Pods and Service.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Number of plugin Pods. Also the scale subresource's replicas: `kubectl scale` and a
    /// HorizontalPodAutoscaler targeting the HectorPlugin write it, and the operator passes it
    /// on to the Deployment (an HPA must target the HectorPlugin, not its Deployment).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// Plugin configuration: key to scalar value (strings, numbers and booleans are passed to
    /// the plugin's Initialize as strings). Overrides the manifest's defaults. Never put
    /// secrets here; use secretConfig. At most 256 keys; a key must be a valid ConfigMap key
    /// (at most 253 letters, digits, `-`, `_` or `.`, not `.`, `..` or starting with `..`),
    /// since the plain values are stored in the plugin's ConfigMap under their keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "scalar_map_schema")]
    pub config: BTreeMap<String, serde_json::Value>,

    /// Configuration keys whose values come from Secrets. They are mounted into the plugin
    /// Pod and passed to Initialize; they never appear in logs, events, status or the
    /// endpoints ConfigMap. Overrides `config` and the manifest's defaults. At most 256.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["key"])
    )]
    pub secret_config: Vec<SecretConfig>,

    /// Environment variables for the plugin container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// CPU and memory requests and limits for the plugin container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the plugin Pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the plugin Pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Service account the plugin Pods run as (default: the namespace's default). At most 253
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,

    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// How the operator and the kubelet check the plugin's health.
    #[serde(default)]
    pub health: HealthSettings,

    /// `host:port` of a plugin already running elsewhere; the operator then runs no Pods and
    /// only probes and publishes it. Set this or `image`. At most 259 characters (a
    /// 253-character host name, `:` and a port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 259),
        regex(pattern = r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
    )]
    pub endpoint: Option<String>,

    /// Who may call the plugin. By default only ServiceAccounts of the plugin's own namespace;
    /// `namespaces` and `serviceAccounts` admit more. Enforced twice: by a NetworkPolicy (which
    /// Pods may connect) and by the launcher in every plugin Pod (TLS, and a ServiceAccount
    /// token checked on every call). Not allowed with `endpoint`: a plugin running elsewhere is
    /// protected where it runs.
    #[serde(default, skip_serializing_if = "AccessSpec::is_default")]
    pub access: AccessSpec,

    /// Additions to the plugin's Pods: labels and annotations, affinity, topology spread,
    /// priority class, Pod security context, and volumes with their mounts, security context
    /// and `envFrom` for the plugin container. What the operator sets itself (its labels,
    /// selector, annotations, volumes, mounts, environment, ports, probes, command) always
    /// wins; an overlay that would change it is refused with the field path.
    #[serde(default, skip_serializing_if = "PodTemplateOverlay::is_empty")]
    pub pod_template: PodTemplateOverlay,
}

/// What `spec.podTemplate` adds to the plugin's Pod template.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverlay {
    /// Labels and annotations for the plugin Pods.
    #[serde(default, skip_serializing_if = "PodMetadataOverlay::is_empty")]
    pub metadata: PodMetadataOverlay,
    /// Affinity of the plugin Pods (node affinity, Pod affinity and anti-affinity), as a
    /// Pod's `spec.affinity` (`kubectl explain pod.spec.affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the plugin Pods spread over topology domains, as a Pod's
    /// `spec.topologySpreadConstraints`. A constraint without a `labelSelector` gets the
    /// plugin Pods' own selector (`hector.dev/plugin: NAME`). At most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the plugin Pods. At most 253 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Pod security context, as a Pod's `spec.securityContext`. Each field set here replaces
    /// the operator's default for it (`runAsNonRoot: true`, `runAsUser`/`fsGroup` 65532,
    /// seccomp `RuntimeDefault`); the namespace's Pod Security admission still judges the
    /// result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// More volumes for the plugin Pods, as a Pod's `spec.volumes` (`kubectl explain
    /// pod.spec.volumes`), mounted with `container.volumeMounts`. Names must differ from the
    /// operator's own volumes (`launcher`, `tmp`, `config`, `apiserver`). At most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<Volume>,
    /// Additions to the plugin container.
    #[serde(default, skip_serializing_if = "ContainerOverlay::is_empty")]
    pub container: ContainerOverlay,
}

impl PodTemplateOverlay {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Labels and annotations for the plugin Pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PodMetadataOverlay {
    /// Labels. Keys under `hector.dev/` and the `app.kubernetes.io/` labels the operator
    /// sets (name, instance, version, component, managed-by) are reserved. At most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,
    /// Annotations, e.g. for a mutating webhook or a service mesh. Keys under `hector.dev/`
    /// are reserved. At most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
}

impl PodMetadataOverlay {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

/// Additions to the plugin container.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverlay {
    /// Security context of the plugin container, as a container's `securityContext`. Each
    /// field set here replaces the operator's default for it (no privilege escalation,
    /// read-only root filesystem, all capabilities dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// Mounts of `spec.podTemplate.volumes` into the plugin container, at paths outside the
    /// operator's own mounts (`/hector/bin`, `/etc/hector/config`,
    /// `/var/run/secrets/hector.dev/apiserver`, `/tmp`). At most 32.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volume_mounts: Vec<VolumeMount>,
    /// Environment variables from ConfigMaps or Secrets, as a container's `envFrom` (the
    /// kubelet reads them; the operator never does). `spec.env` and the operator's own
    /// variables win over these. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub env_from: Vec<EnvFromSource>,
}

impl ContainerOverlay {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Most entries each list of `spec.access` may have.
pub const ACCESS_ENTRIES_MAX: usize = 64;

/// A namespace name (a DNS-1123 label), as a CEL/RE2 pattern; its 63-character limit is the
/// schema's `maxLength`.
pub const NAMESPACE_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// `NAMESPACE/NAME` or `NAMESPACE/*`, as a CEL/RE2 pattern: a DNS-1123 label (bounded to 63
/// here, since the whole entry has one `maxLength`), `/`, then `*` or a DNS-1123 subdomain.
/// Character classes instead of escapes keep it the same in Rust, CEL and YAML.
pub const SERVICE_ACCOUNT_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/([*]|[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$";

/// The longest `spec.access.serviceAccounts` entry: a 63-character namespace, `/` and a
/// 253-character ServiceAccount name.
pub const SERVICE_ACCOUNT_ENTRY_MAX: usize = 63 + 1 + 253;

/// Who may call a plugin run in Pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new(
    "!has(self.open) || !self.open || ((!has(self.namespaces) || size(self.namespaces) == 0) && (!has(self.serviceAccounts) || size(self.serviceAccounts) == 0))"
).message(
    "spec.access.open: true admits every caller, so it cannot be combined with spec.access.namespaces or spec.access.serviceAccounts; remove the lists, or set open: false"
).field_path(".open").reason(kube::core::Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct AccessSpec {
    /// Admit every caller that can reach the plugin's Pods, from any namespace and without a
    /// ServiceAccount token (traffic is still TLS). A development escape hatch: anyone in the
    /// cluster can then spend the plugin's credentials. Cannot be combined with `namespaces` or
    /// `serviceAccounts`. Default false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub open: bool,

    /// More namespaces whose ServiceAccounts may all call the plugin; the plugin's own
    /// namespace is always allowed. Each a namespace name (a DNS-1123 label: at most 63
    /// lowercase letters, digits or `-`, starting and ending with a letter or digit). At most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "namespaces_schema")]
    pub namespaces: Vec<String>,

    /// Single ServiceAccounts that may call the plugin, as `NAMESPACE/NAME`, or `NAMESPACE/*`
    /// for every ServiceAccount of that namespace. Their namespaces are also let through the
    /// plugin's NetworkPolicy; the launcher then admits only the listed accounts. At most 64
    /// entries of at most 317 characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "service_accounts_schema")]
    pub service_accounts: Vec<String>,
}

impl AccessSpec {
    /// Whether nothing is set: only the plugin's own namespace may call.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A list of namespace names, each checked by a CEL rule so that the API server's error
/// names the entry and says what a namespace name is (a bare `pattern` only prints the regex).
fn namespaces_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let rule = format!("self.matches('{NAMESPACE_PATTERN}')");
    schemars::json_schema!({
        "type": "array",
        "maxItems": ACCESS_ENTRIES_MAX,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "x-kubernetes-validations": [{
                "rule": rule,
                "message": "must be a namespace name: a DNS-1123 label of at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                "reason": "FieldValueInvalid"
            }]
        }
    })
}

/// A list of `NAMESPACE/NAME` or `NAMESPACE/*` entries, checked entry by entry as above.
fn service_accounts_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let rule = format!("self.matches('{SERVICE_ACCOUNT_PATTERN}')");
    schemars::json_schema!({
        "type": "array",
        "maxItems": ACCESS_ENTRIES_MAX,
        "items": {
            "type": "string",
            "minLength": 3,
            "maxLength": SERVICE_ACCOUNT_ENTRY_MAX,
            "x-kubernetes-validations": [{
                "rule": rule,
                "message": "must be NAMESPACE/NAME (one ServiceAccount) or NAMESPACE/* (every ServiceAccount of the namespace), in lowercase: a namespace name, '/', then '*' or a ServiceAccount name",
                "reason": "FieldValueInvalid"
            }]
        }
    })
}

fn default_port() -> i32 {
    50051
}

fn default_replicas() -> i32 {
    1
}

/// A map whose values may be any scalar; the API server keeps them as given.
fn scalar_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": CONFIG_KEYS_MAX,
        "additionalProperties": {
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

/// The plugin's identity and declared configuration, from its `.plugin.yaml`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginManifest {
    /// The plugin's name as it reports it through GetManifest. At most 253 characters.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The plugin's semantic version (MAJOR.MINOR.PATCH). At most 128 characters.
    #[schemars(length(max = 128), regex(pattern = r"^v?\d+\.\d+\.\d+([-+].*)?$"))]
    pub version: String,
    /// The kind of plugin, which decides the gRPC service it serves.
    #[serde(rename = "type")]
    pub plugin_type: PluginTypeName,
    /// Wire protocol; only `grpc`.
    #[serde(default)]
    pub protocol: Protocol,
    /// The Hector versions the plugin works with, e.g. `>=0.1.0`. At most 128 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub hector_version: Option<String>,
    /// Author of the plugin. At most 256 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub author: Option<String>,
    /// One-line description of the plugin. At most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// The configuration keys the plugin declares.
    #[serde(default)]
    pub config_schema: ConfigSchemaSpec,
    /// Feature flags such as streaming or function_calling. At most 64 flags, each named by
    /// 1 to 64 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) >= 1 && size(k) <= 64)").message("spec.manifest.capabilities: every flag name must be 1 to 64 characters"))]
    pub capabilities: BTreeMap<String, bool>,
}

/// Declared configuration keys.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.required) || !has(self.optional) || self.required.all(k, !(k in self.optional))").message("a key cannot be both required and optional"))]
pub struct ConfigSchemaSpec {
    /// Keys that must be set (by a default, `spec.config` or `spec.secretConfig`). At most
    /// 64; each a valid ConfigMap key (at most 253 letters, digits, `-`, `_` or `.`, not `.`,
    /// `..` or starting with `..`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 253), regex(pattern = CONFIG_KEY_PATTERN))
    )]
    pub required: Vec<String>,
    /// Keys that may be set. At most 64; each a valid ConfigMap key, as in `required`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 253), regex(pattern = CONFIG_KEY_PATTERN))
    )]
    pub optional: Vec<String>,
    /// Default values of declared keys. At most 256 keys, each a valid ConfigMap key as in
    /// `required`; values of at most 4096 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = CONFIG_KEYS_MAX,
        "additionalProperties" = {"type": "string", "maxLength": 4096}
    ))]
    #[x_kube(validation = config_keys_rule("spec.manifest.configSchema.defaults"))]
    pub defaults: BTreeMap<String, String>,
}

/// Plugin types, as named in manifests.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PluginTypeName {
    /// Text generation (`hector.plugin.LLMProvider`).
    #[serde(rename = "llm_provider")]
    LlmProvider,
    /// Vector storage and search (`hector.plugin.DatabaseProvider`).
    #[serde(rename = "database_provider")]
    DatabaseProvider,
    /// Text to vectors (`hector.plugin.EmbedderProvider`).
    #[serde(rename = "embedder_provider")]
    EmbedderProvider,
    /// Tools for agents (`hector.plugin.ToolProvider`).
    #[serde(rename = "tool_provider")]
    ToolProvider,
    /// Agent reasoning (`hector.plugin.ReasoningStrategy`).
    #[serde(rename = "reasoning_strategy")]
    ReasoningStrategy,
}

impl From<PluginTypeName> for hector_plugin_sdk::PluginType {
    fn from(t: PluginTypeName) -> Self {
        use hector_plugin_sdk::PluginType as P;
        match t {
            PluginTypeName::LlmProvider => P::LlmProvider,
            PluginTypeName::DatabaseProvider => P::DatabaseProvider,
            PluginTypeName::EmbedderProvider => P::EmbedderProvider,
            PluginTypeName::ToolProvider => P::ToolProvider,
            PluginTypeName::ReasoningStrategy => P::ReasoningStrategy,
        }
    }
}

impl From<hector_plugin_sdk::PluginType> for PluginTypeName {
    fn from(t: hector_plugin_sdk::PluginType) -> Self {
        use hector_plugin_sdk::PluginType as P;
        match t {
            P::LlmProvider => PluginTypeName::LlmProvider,
            P::DatabaseProvider => PluginTypeName::DatabaseProvider,
            P::EmbedderProvider => PluginTypeName::EmbedderProvider,
            P::ToolProvider => PluginTypeName::ToolProvider,
            P::ReasoningStrategy => PluginTypeName::ReasoningStrategy,
        }
    }
}

/// Wire protocol.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Protocol {
    /// gRPC, the only protocol of Hector plugins.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
}

/// How the plugin executable is started inside its Pod.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LaunchMode {
    /// A binary built with Hector's Go SDK: started with the go-plugin handshake.
    #[default]
    #[serde(rename = "goPlugin")]
    GoPlugin,
    /// A network-native plugin listening on `HECTOR_PLUGIN_ADDR`.
    #[serde(rename = "network")]
    Network,
}

impl LaunchMode {
    /// The launcher's `--launch` value.
    pub fn launcher_flag(self) -> &'static str {
        match self {
            LaunchMode::GoPlugin => "go-plugin",
            LaunchMode::Network => "network",
        }
    }
}

/// Image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is not on the node.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl ImagePullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// One configuration key taken from a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretConfig {
    /// The configuration key the plugin receives: a valid ConfigMap key (at most 253
    /// letters, digits, `-`, `_` or `.`, not `.`, `..` or starting with `..`).
    #[schemars(length(min = 1, max = 253), regex(pattern = CONFIG_KEY_PATTERN))]
    pub key: String,
    /// The Secret and key holding the value.
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in the plugin's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret (a Secret key has the form of a ConfigMap key).
    #[schemars(length(min = 1, max = 253), regex(pattern = CONFIG_KEY_PATTERN))]
    pub key: String,
}

/// Health checking.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthSettings {
    /// Seconds between health checks.
    #[serde(default = "default_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
    /// Seconds before one health check times out.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: i32,
    /// Consecutive failed checks before the plugin counts as unhealthy and is unpublished.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
    /// Seconds a plugin container may take to start (the plugin's start, handshake and
    /// Initialize, e.g. loading a model) before the kubelet restarts it; default 120. Raise
    /// it for plugins that load for longer. 2 to 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 3600))]
    pub startup_timeout_seconds: Option<i32>,
}

/// The startup window when `spec.health.startupTimeoutSeconds` is not set.
pub const DEFAULT_STARTUP_TIMEOUT_SECONDS: i32 = 120;

impl HealthSettings {
    /// The startup window in seconds.
    pub fn startup_timeout(&self) -> i32 {
        self.startup_timeout_seconds
            .unwrap_or(DEFAULT_STARTUP_TIMEOUT_SECONDS)
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            period_seconds: default_period(),
            timeout_seconds: default_timeout(),
            failure_threshold: default_failure_threshold(),
            startup_timeout_seconds: None,
        }
    }
}

fn default_period() -> i32 {
    10
}

fn default_timeout() -> i32 {
    2
}

fn default_failure_threshold() -> i32 {
    3
}

/// Observed state of a HectorPlugin.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HectorPluginStatus {
    /// Summary: Pending, Progressing, Ready, Degraded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: Ready (the summary), Reconciling and Stalled (kstatus), then
    /// ConfigValid, Deployed, Healthy, Published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Stable address agents use: the Service's DNS name and port, or the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Healthy `ip:port` endpoints behind the address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// What the running plugin reports about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginInfo>,
    /// Human-readable detail of the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Plugin Pods that exist (the Deployment's `status.replicas`): the scale subresource's
    /// current replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The plugin Pods' label selector as a string (`hector.dev/plugin=NAME`): the scale
    /// subresource's selector, with which an autoscaler finds the Pods' metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Published healthy endpoints out of desired replicas, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints_summary: Option<String>,
}

/// Lifecycle phase.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; nothing running yet.
    Pending,
    /// Pods are starting or the plugin is being verified.
    Progressing,
    /// Healthy and published.
    Ready,
    /// Running but unhealthy; unpublished.
    Degraded,
    /// Cannot work as specified (e.g. invalid configuration).
    Failed,
}

/// Identity and model facts reported by the plugin.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginInfo {
    /// Name from GetManifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Version from GetManifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Model served (LLM and embedder plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// Token limit of the model (LLM plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i32>,
    /// Vector dimension (embedder plugins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension: Option<i32>,
}

/// The CRD as installed. The Kubernetes types that `spec.podTemplate` embeds keep their
/// structure but lose their field descriptions (their own API documents them: `kubectl
/// explain pod.spec.volumes`): with them the CRD would be five times larger, close to the
/// 256 KiB that `kubectl apply` can record.
pub fn crd() -> CustomResourceDefinition {
    use kube::CustomResourceExt;
    let crd = HectorPlugin::crd();
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    if let Some(versions) = value["spec"]["versions"].as_array_mut() {
        for version in versions {
            let overlay = &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
                ["podTemplate"]["properties"];
            let Some(fields) = overlay.as_object_mut() else {
                continue;
            };
            for (name, field) in fields.iter_mut() {
                if matches!(name.as_str(), "container" | "metadata") {
                    for inner in field["properties"].as_object_mut().into_iter().flatten() {
                        strip_nested_descriptions(inner.1);
                    }
                } else {
                    strip_nested_descriptions(field);
                }
            }
        }
    }
    serde_json::from_value(value).unwrap_or(crd)
}

/// Removes the descriptions of every schema below `node` (not its own).
fn strip_nested_descriptions(node: &mut serde_json::Value) {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if map.get("description").is_some_and(|d| d.is_string()) {
                    map.remove("description");
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if let serde_json::Value::Object(map) = node {
        map.iter_mut()
            .filter(|(k, _)| k.as_str() != "description")
            .for_each(|(_, v)| strip(v));
    }
}

/// The CRD as YAML, exactly as `crds/hectorplugin.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    let body = serde_norway::to_string(&crd())?;
    Ok(format!(
        "# Generated by `hector-operator crd` from src/crd.rs; do not edit.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn spec_schema() -> Value {
        let crd = super::crd();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema json");
        schema["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    /// Every schema node under `node`, with its path.
    fn walk<'a>(path: String, node: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        out.push((path.clone(), node));
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                walk(format!("{path}.{k}"), v, out);
            }
        }
        for nested in ["items", "additionalProperties"] {
            if let Some(v) = node.get(nested).filter(|v| v.is_object()) {
                walk(format!("{path}[{nested}]"), v, out);
            }
        }
    }

    fn rules(node: &Value) -> Vec<(String, String)> {
        node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["rule"].as_str().unwrap_or_default().to_string(),
                    r["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn free_text_fields_have_the_documented_limits() {
        let spec = spec_schema();
        let manifest = &spec["properties"]["manifest"]["properties"];
        let limits = [
            (&manifest["description"], 1024),
            (&manifest["author"], 256),
            (&manifest["hectorVersion"], 128),
            (&manifest["version"], 128),
            (&manifest["name"], 253),
            (&spec["properties"]["image"], 512),
            (&spec["properties"]["endpoint"], 259),
            (&spec["properties"]["serviceAccountName"], 253),
            (&spec["properties"]["command"]["items"], 4096),
            (&spec["properties"]["args"]["items"], 4096),
            (
                &manifest["configSchema"]["properties"]["defaults"]["additionalProperties"],
                4096,
            ),
        ];
        for (node, max) in limits {
            assert_eq!(node["maxLength"], max, "{node}");
            if let Some(description) = node["description"].as_str() {
                let description = description.replace('\n', " ");
                assert!(
                    description.contains(&format!("At most {max} characters")),
                    "the limit is stated for `kubectl explain`: {description}"
                );
            }
        }
        // Nothing free-text in the manifest is left unbounded.
        let mut nodes = Vec::new();
        walk(
            "spec.manifest".into(),
            &spec["properties"]["manifest"],
            &mut nodes,
        );
        for (path, node) in nodes {
            if node["type"] == "string" {
                assert!(
                    node.get("maxLength").is_some() || node.get("enum").is_some(),
                    "{path} has no maxLength"
                );
            }
            if node["type"] == "object" && node.get("additionalProperties").is_some() {
                assert!(node.get("maxProperties").is_some(), "{path}");
            }
            if node["type"] == "array" {
                assert!(node.get("maxItems").is_some(), "{path}");
            }
        }
        assert_eq!(spec["properties"]["config"]["maxProperties"], 256);
        assert_eq!(spec["properties"]["secretConfig"]["maxItems"], 256);
        assert_eq!(spec["properties"]["command"]["maxItems"], 64);
        assert_eq!(spec["properties"]["args"]["maxItems"], 256);
    }

    #[test]
    fn the_overlay_embeds_pod_types_without_their_descriptions_and_stays_small() {
        let spec = spec_schema();
        let overlay = &spec["properties"]["podTemplate"];
        let described = |node: &Value| node["description"].as_str().is_some_and(|d| !d.is_empty());
        assert!(described(overlay));
        let fields = overlay["properties"].as_object().expect("fields");
        for (name, field) in fields {
            assert!(described(field), "spec.podTemplate.{name}");
        }
        for (name, field) in overlay["properties"]["container"]["properties"]
            .as_object()
            .expect("container fields")
        {
            assert!(described(field), "spec.podTemplate.container.{name}");
        }
        // Below those fields: the structure of the Pod's types, without their prose.
        let mut nodes = Vec::new();
        walk(
            "volumes".into(),
            &overlay["properties"]["volumes"]["items"],
            &mut nodes,
        );
        assert!(nodes.len() > 100, "the volume schema is kept");
        for (path, node) in &nodes {
            assert!(node.get("description").is_none(), "{path}");
        }
        let limits = [
            (&overlay["properties"]["volumes"]["maxItems"], 32),
            (
                &overlay["properties"]["topologySpreadConstraints"]["maxItems"],
                8,
            ),
            (
                &overlay["properties"]["container"]["properties"]["volumeMounts"]["maxItems"],
                32,
            ),
            (
                &overlay["properties"]["container"]["properties"]["envFrom"]["maxItems"],
                16,
            ),
            (
                &overlay["properties"]["metadata"]["properties"]["labels"]["maxProperties"],
                64,
            ),
            (
                &overlay["properties"]["metadata"]["properties"]["annotations"]["maxProperties"],
                64,
            ),
            (
                &overlay["properties"]["priorityClassName"]["maxLength"],
                253,
            ),
        ];
        for (node, max) in limits {
            assert_eq!(*node, max);
        }
        // `kubectl apply` records the whole object in an annotation of at most 256 KiB.
        let size = serde_json::to_string(&super::crd()).expect("json").len();
        assert!(size < 96 * 1024, "the CRD is {size} bytes");
        // Unset, nothing is written: existing resources and manifests stay as they were.
        let empty = serde_json::to_value(PodTemplateOverlay::default()).expect("json");
        assert_eq!(empty, serde_json::json!({}));
    }

    #[test]
    fn the_startup_window_is_bounded_and_defaults_to_two_minutes() {
        let spec = spec_schema();
        let window = &spec["properties"]["health"]["properties"]["startupTimeoutSeconds"];
        assert_eq!(
            (window["minimum"].as_f64(), window["maximum"].as_f64()),
            (Some(2.0), Some(3600.0))
        );
        assert_eq!(HealthSettings::default().startup_timeout(), 120);
        let raised = HealthSettings {
            startup_timeout_seconds: Some(300),
            ..Default::default()
        };
        assert_eq!(raised.startup_timeout(), 300);
    }

    #[test]
    fn config_keys_must_be_configmap_keys() {
        let spec = spec_schema();
        let schema = &spec["properties"]["manifest"]["properties"]["configSchema"]["properties"];
        for list in ["required", "optional"] {
            let items = &schema[list]["items"];
            assert_eq!(items["pattern"], CONFIG_KEY_PATTERN, "{list}");
            assert_eq!(items["maxLength"], 253, "{list}");
        }
        let key = &spec["properties"]["secretConfig"]["items"]["properties"]["key"];
        assert_eq!(key["pattern"], CONFIG_KEY_PATTERN);
        assert_eq!(key["maxLength"], 253);
        let defaults = &schema["defaults"];
        let (rule, message) = rules(defaults)
            .into_iter()
            .next()
            .expect("a rule on defaults");
        assert!(rule.starts_with("self.all(k, "), "{rule}");
        assert!(
            rule.contains(&format!("k.matches('{CONFIG_KEY_PATTERN}')")),
            "{rule}"
        );
        assert!(rule.contains("size(k) <= 253"), "{rule}");
        assert!(
            message.starts_with("spec.manifest.configSchema.defaults: "),
            "{message}"
        );
        // The API server estimates a rule's cost from maxProperties; without it, refused.
        assert_eq!(defaults["maxProperties"], 256);
        let capabilities = &spec["properties"]["manifest"]["properties"]["capabilities"];
        let (rule, message) = rules(capabilities).into_iter().next().expect("a rule");
        assert_eq!(rule, "self.all(k, size(k) >= 1 && size(k) <= 64)");
        assert!(
            message.starts_with("spec.manifest.capabilities: "),
            "{message}"
        );
        assert_eq!(capabilities["maxProperties"], 64);
        // The rules of the spec itself are still there.
        assert_eq!(rules(&spec).len(), 4);
    }

    #[test]
    fn access_entries_are_checked_one_by_one_with_a_reason() {
        let spec = spec_schema();
        let access = &spec["properties"]["access"];
        for (list, max_len) in [
            ("namespaces", 63),
            ("serviceAccounts", SERVICE_ACCOUNT_ENTRY_MAX),
        ] {
            let node = &access["properties"][list];
            assert_eq!(node["maxItems"], ACCESS_ENTRIES_MAX, "{list}");
            assert_eq!(node["items"]["maxLength"], max_len, "{list}");
            let (rule, message) = rules(&node["items"]).into_iter().next().expect("a rule");
            assert!(rule.starts_with("self.matches('^"), "{list}: {rule}");
            assert!(message.starts_with("must be "), "{list}: {message}");
            assert!(
                node["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{list} is explained"
            );
        }
        let (rule, message) = rules(access).into_iter().next().expect("open rule");
        assert!(rule.contains("self.open"), "{rule}");
        assert!(message.starts_with("spec.access.open: "), "{message}");
        assert_eq!(access["x-kubernetes-validations"][0]["fieldPath"], ".open");
        assert!(
            rules(&spec).iter().any(|(r, m)| r.contains("self.endpoint")
                && r.contains("self.access")
                && m.starts_with("spec.access ")),
            "access is refused with an endpoint"
        );
        // Unset access is not written out, so existing resources and generated manifests
        // stay as they were.
        assert!(access.get("default").is_none());
        let empty = serde_json::to_value(AccessSpec::default()).expect("json");
        assert_eq!(empty, serde_json::json!({}));
    }

    /// The API server runs the CRD's patterns (RE2); the operator checks the same entries in
    /// Rust. Both must agree on every sample, or a value could pass one and not the other.
    #[test]
    fn access_patterns_agree_with_the_rust_checks() {
        let namespace = regex::Regex::new(NAMESPACE_PATTERN).expect("RE2-compatible");
        let account = regex::Regex::new(SERVICE_ACCOUNT_PATTERN).expect("RE2-compatible");
        let label63 = "a".repeat(63);
        let label64 = "a".repeat(64);
        let names = [
            "a", "agents", "a-b", "0", "-a", "a-", "A", "a_b", "a.b", "", "ns1", &label63, &label64,
        ];
        for n in names {
            let schema_ok = namespace.is_match(n) && n.len() <= 63;
            assert_eq!(
                schema_ok,
                crate::access::is_dns1123_label(n),
                "namespace {n:?}"
            );
        }
        let entries: Vec<String> = names
            .iter()
            .flat_map(|ns| {
                [
                    "*",
                    "bot",
                    "bot-1.team",
                    "Bot",
                    "a..b",
                    "",
                    "*x",
                    "a/b",
                    ".a",
                ]
                .map(|name| format!("{ns}/{name}"))
            })
            .chain(["nslash".to_string(), "a//b".to_string()])
            .collect();
        for e in &entries {
            let schema_ok = account.is_match(e) && e.len() <= SERVICE_ACCOUNT_ENTRY_MAX;
            let rust_ok = crate::access::callers(
                "x",
                &AccessSpec {
                    service_accounts: vec![e.clone()],
                    ..Default::default()
                },
            )
            .is_ok();
            assert_eq!(schema_ok, rust_ok, "service account entry {e:?}");
        }
    }

    #[test]
    fn the_rust_check_of_a_config_key_agrees_with_kubernetes() {
        let max = "k".repeat(253);
        for good in [
            "api_key", "model", "a.b", ".hidden", "a..b", "-", "_", "A-9", &max,
        ] {
            assert!(is_config_key(good), "{good:?}");
        }
        let long = "k".repeat(254);
        for bad in ["", ".", "..", "..a", "a b", "a/b", "ключ", "a:b", &long] {
            assert!(!is_config_key(bad), "{bad:?}");
        }
        let config = BTreeMap::from([
            ("ok".to_string(), serde_json::json!(1)),
            ("not ok".to_string(), serde_json::json!("x")),
            ("..".to_string(), serde_json::json!(true)),
        ]);
        assert_eq!(invalid_config_keys(&config), ["..", "not ok"]);
    }
}
