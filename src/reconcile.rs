//! The controller: for each HectorPlugin, resolve its configuration, apply the objects that
//! run it, tell the prober which endpoints to probe, and write its status. Level-triggered:
//! every run starts from the observed state (watch caches), so running it again changes
//! nothing, and a deleted or edited child comes back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, watch};

use crate::apply::{FIELD_MANAGER, apply};
use crate::build::{self, BuildError, PLUGIN_LABEL, Settings};
use crate::cache_index::{self, Cache, CacheIndex};
use crate::config::{ConfigError, ResolvedConfig, resolve};
use crate::crd::{HectorPlugin, HectorPluginStatus};
use crate::event_queue::{self, EventQueue};
use crate::index::{Facts, PluginKey, Stage};
use crate::metrics::{Metrics, PluginState};
use crate::mounts;
use crate::multiwatch;
use crate::ownership::{self, conflict_message, controlled_by};
use crate::probe::{Identity, ProbeSpec, Prober};
use crate::publish;
use crate::readiness::Readiness;
use crate::recorder::{Event, EventType, Recorder};
use crate::rollout::{self, pod_ready};
use crate::status::{self, ConfigVerdict, Failure, Inputs, Rollout};
use crate::trim;

/// Label on everything the operator writes, so its watches see only its own objects.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=hector-operator";
/// How often a plugin is reconciled with nothing happening (no writes when nothing changed).
/// Every input of a reconcile arrives on a watch or the probe-change channel (and a lagging
/// channel reconciles every plugin), so this is only a safety net; at 10,000 plugins, every
/// 5 minutes was 33 reconciles a second, most of the operator's idle CPU.
const RESYNC: Duration = Duration::from_secs(3600);
/// How often the publisher re-renders every namespace with nothing happening.
const PUBLISH_RESYNC: Duration = Duration::from_secs(60);
/// Namespaces whose endpoints ConfigMaps are written at once.
const PUBLISH_CONCURRENCY: usize = 8;

/// What every scope shares.
pub struct Shared {
    /// API client.
    pub client: Client,
    /// Builder settings.
    pub settings: Settings,
    /// Name of the endpoints ConfigMap in each namespace.
    pub configmap: String,
    /// Directory of the per-plugin remote executables named in `plugins.yaml`.
    pub plugin_dir: String,
    /// Probes.
    pub prober: Arc<Prober>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Events.
    pub recorder: Recorder,
    /// Plugins whose probe state changed (wakes their reconcile).
    pub changes: broadcast::Sender<PluginKey>,
    /// The last status written per plugin: the watch lags behind our own writes.
    pub written: Mutex<HashMap<PluginKey, HectorPluginStatus>>,
    /// What `/readyz` reports; the watches record whether they listed.
    pub readiness: Arc<Readiness>,
    /// Plugins the publisher could not publish, with the reason and message.
    pub left_out: Mutex<HashMap<PluginKey, (&'static str, String)>>,
    /// Reconciles run at once.
    pub concurrency: u16,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The namespaces the controller covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace: one cluster-wide watch per kind.
    All,
    /// These namespaces: one watch per namespace and kind, merged into one cache per kind.
    Namespaces(Vec<String>),
}

impl Scope {
    fn covers(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(list) => list.iter().any(|ns| ns == namespace),
        }
    }
}

/// A kind's watch events in `scope`, trimmed and applied to `writer`'s store, with a future
/// that turns true once the kind is listed everywhere in the scope (false if the watch ended
/// first).
fn watch_kind<K>(
    scope: &Scope,
    shared: &Arc<Shared>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    resource: &'static str,
    trim: fn(&mut K),
) -> (
    BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    BoxFuture<'static, bool>,
)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let client = &shared.client;
    match scope {
        Scope::All => {
            let store = writer.as_reader();
            let events = observed(watcher(Api::all(client.clone()), config), resource, shared)
                .default_backoff()
                .modify(trim)
                .reflect(writer)
                .boxed();
            (
                events,
                async move { store.wait_until_ready().await.is_ok() }.boxed(),
            )
        }
        Scope::Namespaces(list) => {
            let streams = list.iter().map(|ns| {
                let api = Api::namespaced(client.clone(), ns);
                let events = observed(watcher(api, config.clone()), resource, shared)
                    .default_backoff()
                    .modify(trim);
                (ns.clone(), events)
            });
            let (events, listed) = multiwatch::merge_streams(streams, writer);
            (events, async move { listed.wait().await }.boxed())
        }
    }
}

/// Per-scope context of a reconcile: shared parts plus this scope's watch caches.
pub struct Ctx {
    shared: Arc<Shared>,
    plugins: Cache<HectorPlugin>,
    pods: Cache<Pod>,
    replicasets: Cache<ReplicaSet>,
    deployments: Cache<Deployment>,
    services: Cache<Service>,
    network_policies: Cache<NetworkPolicy>,
    configmaps: Cache<ConfigMap>,
    mount_events: Cache<CoreEvent>,
    indexes: Indexes,
    /// When each plugin's latest generation was first seen on the watch, until its reconcile.
    seen: Mutex<HashMap<PluginKey, (i64, Instant)>>,
    /// The resourceVersion of each plugin when its reconcile last asked for publication.
    requested: Mutex<HashMap<PluginKey, String>>,
    publish: PublishRequests,
    /// Events waiting to be recorded.
    events: EventQueue,
    /// True once every watch cache has its first full list.
    synced: watch::Receiver<bool>,
}

/// The lookups a reconcile makes, indexed so that none scans a whole cache.
pub struct Indexes {
    /// HectorPlugins by namespace.
    pub plugins: CacheIndex<HectorPlugin>,
    /// Pods by `namespace/plugin label`.
    pub pods: CacheIndex<Pod>,
    /// ReplicaSets by the UID of their controller (a plugin's Deployment).
    pub replicasets: CacheIndex<ReplicaSet>,
    /// FailedMount Events by `namespace/Pod name`.
    pub events: CacheIndex<CoreEvent>,
}

impl Default for Indexes {
    fn default() -> Self {
        Self {
            plugins: CacheIndex::new(|p: &HectorPlugin| p.namespace()),
            pods: CacheIndex::new(|p: &Pod| {
                Some(cache_index::scoped(
                    &p.namespace()?,
                    p.labels().get(PLUGIN_LABEL)?,
                ))
            }),
            replicasets: CacheIndex::new(|rs: &ReplicaSet| {
                ownership::controller_uid(&rs.metadata).map(str::to_string)
            }),
            events: CacheIndex::new(|e: &CoreEvent| {
                Some(cache_index::scoped(
                    &e.namespace()?,
                    e.involved_object.name.as_deref()?,
                ))
            }),
        }
    }
}

/// What the prober is told for one plugin.
struct ProbePlan {
    spec: ProbeSpec,
    /// Endpoint addresses, with how far each one's Pod has come.
    wanted: BTreeMap<String, Stage>,
    /// Failed probes before an endpoint is unpublished.
    threshold: u32,
}

/// Requests to publish a namespace, each stamped with when it was made: the publisher
/// reports how long its oldest unserved request waited for the ConfigMap write.
#[derive(Clone)]
struct PublishRequests {
    requests: mpsc::UnboundedSender<(String, Instant)>,
    /// Namespaces with a publication on a Pod's readiness not yet written (see
    /// [`PublishRequests::written_first`]).
    urgent: Arc<watch::Sender<HashSet<String>>>,
}

/// The longest a status write waits for its namespace's publication (see
/// [`PublishRequests::written_first`]). A ConfigMap write takes milliseconds, and a failed one
/// frees the waiters at once, so only a write the API server does not answer runs into it
/// (well within a reconcile's own deadline).
const PUBLICATION_FIRST: Duration = Duration::from_secs(5);

impl PublishRequests {
    fn new(requests: mpsc::UnboundedSender<(String, Instant)>) -> Self {
        Self {
            requests,
            urgent: Arc::new(watch::Sender::new(HashSet::new())),
        }
    }

    /// Asks the publisher to render `namespace` again.
    fn send(&self, namespace: String) -> Result<(), mpsc::error::SendError<(String, Instant)>> {
        self.requests.send((namespace, Instant::now()))
    }

    /// Asks for a publication that a Pod turning Ready (or not) made: what agents wait for.
    /// The namespace's status writes wait for it ([`PublishRequests::written_first`]).
    fn send_urgent(
        &self,
        namespace: String,
    ) -> Result<(), mpsc::error::SendError<(String, Instant)>> {
        self.urgent
            .send_if_modified(|u| u.insert(namespace.clone()));
        self.send(namespace).inspect_err(|e| {
            // No publisher (stopped): nothing will serve the namespace, so nobody waits.
            self.served(&e.0.0);
        })
    }

    /// Waits (at most [`PUBLICATION_FIRST`]) until no urgent publication of `namespace` is
    /// left to write. The status write and Events that a Pod event causes would otherwise
    /// reach the API server in the same instant as the ConfigMap write and slow it, on the
    /// path from a Pod turning Ready to agents seeing it; and a status that adds an endpoint
    /// asks for a publication itself first, so it never names an endpoint before
    /// `hector-plugins` does.
    async fn written_first(&self, namespace: &str) {
        let mut urgent = self.urgent.subscribe();
        let _ = tokio::time::timeout(
            PUBLICATION_FIRST,
            urgent.wait_for(|u| !u.contains(namespace)),
        )
        .await;
    }

    /// The publisher served `namespace` (written, found unchanged, or failed).
    fn served(&self, namespace: &str) {
        self.urgent.send_if_modified(|u| u.remove(namespace));
    }

    /// The publisher stopped: nobody waits for it any more.
    fn stopped(&self) {
        self.urgent.send_if_modified(|u| {
            let had = !u.is_empty();
            u.clear();
            had
        });
    }
}

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API request failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The error.
        source: kube::Error,
    },
    /// Objects could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The reconcile did not finish in time (an API request that does not answer).
    #[error("reconcile did not finish within {0:?}; an API request is not answering")]
    Stalled(Duration),
}

impl ReconcileError {
    fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Api { .. } if self.is_fenced() => "fenced",
            ReconcileError::Api { .. } => "api_error",
            ReconcileError::Build(_) => "build_error",
            ReconcileError::Stalled(_) => "stalled",
        }
    }

    /// Whether the write was refused because this replica no longer leads: nothing to
    /// report on the resource, the next leader does the work.
    fn is_fenced(&self) -> bool {
        match self {
            ReconcileError::Api {
                source: kube::Error::Service(e),
                ..
            } => e.is::<crate::fence::Fenced>() || e.to_string().contains("leader lease"),
            _ => false,
        }
    }

    /// How the resource shows this failure.
    fn failure(&self) -> Failure {
        match self {
            ReconcileError::Build(e) => Failure {
                reason: "BuildFailed",
                message: e.to_string(),
                permanent: true,
            },
            ReconcileError::Stalled(_) => Failure {
                reason: "ApiError",
                message: self.to_string(),
                permanent: false,
            },
            ReconcileError::Api {
                action,
                source: kube::Error::Api(s),
            } => {
                // 409 and 429 pass with time; other 4xx need a change; 5xx are the server's.
                let (reason, permanent) = match s.code {
                    403 => ("Forbidden", true),
                    409 => ("Conflict", false),
                    429 => ("Throttled", false),
                    400..=499 => ("ApplyRejected", true),
                    _ => ("ApiError", false),
                };
                Failure {
                    reason,
                    message: format!("{action}: {} ({} {})", s.message, s.code, s.reason),
                    permanent,
                }
            }
            ReconcileError::Api { action, source } => Failure {
                reason: "ApiError",
                message: format!("{action}: {source}"),
                permanent: false,
            },
        }
    }
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    move |source| ReconcileError::Api { action, source }
}

fn key_of(plugin: &HectorPlugin) -> PluginKey {
    PluginKey {
        namespace: plugin.namespace().unwrap_or_default(),
        name: plugin.name_any(),
    }
}

/// The configuration verdict, with the resolved configuration when valid. Whether the
/// referenced Secrets exist is not known here (the operator cannot read Secrets); the kubelet
/// tells, through the Pods (see [`mounts`]).
fn resolve_config(plugin: &HectorPlugin) -> (ConfigVerdict, Option<ResolvedConfig>) {
    let spec = &plugin.spec;
    // The admission policy rejects these at apply; this covers clusters without it.
    let bad = crate::crd::invalid_config_keys(&spec.config);
    if !bad.is_empty() {
        return (
            ConfigVerdict::Invalid(
                "InvalidValue",
                format!(
                    "spec.config keys {bad:?} are not valid ConfigMap keys (at most 253 \
                     letters, digits, '-', '_' or '.', not '.', '..' or starting with '..')"
                ),
            ),
            None,
        );
    }
    let resolved = match resolve(
        &spec.manifest.config_schema,
        &spec.config,
        &spec.secret_config,
    ) {
        Ok(r) => r,
        Err(errors) => {
            let reason = match errors.first() {
                Some(ConfigError::MissingRequired { .. }) => "MissingRequiredKey",
                _ => "InvalidValue",
            };
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return (ConfigVerdict::Invalid(reason, text.join("; ")), None);
        }
    };
    // The CRD's rules reject these at apply; this keeps an invalid allowlist from ever
    // reaching a NetworkPolicy or the launcher's flags (e.g. a CRD older than the operator).
    if let Err(errors) = crate::access::check(spec) {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return (
            ConfigVerdict::Invalid("InvalidAccess", text.join("; ")),
            None,
        );
    }
    if let Err(errors) = build::check_pod_template(&spec.pod_template) {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return (
            ConfigVerdict::Invalid("InvalidPodTemplate", text.join("; ")),
            None,
        );
    }
    let mut message = format!(
        "{} key(s), {} from Secrets",
        resolved.values.len() + resolved.secrets.len(),
        resolved.secrets.len()
    );
    if !resolved.undeclared.is_empty() {
        message.push_str(&format!(
            "; not declared by the manifest, passed through: {}",
            resolved.undeclared.join(", ")
        ));
    }
    (ConfigVerdict::Valid(message), Some(resolved))
}

/// Whether the child may be written: absent (create it), ours (update it), or someone
/// else's (leave it alone).
enum Claim<K> {
    Free,
    Ours(K),
    Taken(String),
}

/// `ip:port`, with IPv6 addresses in brackets.
fn endpoint_address(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// How far a Pod has come, if its endpoint is to be probed at all: once every container runs
/// (its Ready condition may turn true in the same update that says its containers started).
fn pod_stage(p: &Pod) -> Option<Stage> {
    if pod_ready(p) {
        return Some(Stage::Ready);
    }
    let containers = p.status.as_ref()?.container_statuses.as_ref()?;
    if containers.is_empty() {
        return None;
    }
    if containers.iter().all(|c| c.started == Some(true)) {
        return Some(Stage::Started);
    }
    containers
        .iter()
        .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .then_some(Stage::Starting)
}

impl Ctx {
    /// Waits until every watch cache has its first full list (instant afterwards). Many
    /// reconciles wait here at once; they wait on a channel made for many waiters, never on
    /// the stores themselves (see [`sync_gate`]).
    async fn caches_ready(&self) -> bool {
        let mut synced = self.synced.clone();
        synced.wait_for(|s| *s).await.is_ok()
    }

    /// The plugin's Deployment from the cache, if the plugin controls it.
    fn own_deployment(&self, plugin: &HectorPlugin) -> Option<Arc<Deployment>> {
        let uid = plugin.uid().unwrap_or_default();
        self.deployments
            .get(
                &ObjectRef::new(&plugin.name_any()).within(&plugin.namespace().unwrap_or_default()),
            )
            .filter(|d| controlled_by(&d.metadata, &uid))
    }

    /// The plugin's Pods: only those of its own ReplicaSets, never a Pod for its label alone.
    fn plugin_pods(&self, plugin: &HectorPlugin) -> Vec<Arc<Pod>> {
        let ns = plugin.namespace().unwrap_or_default();
        let name = plugin.name_any();
        let deployment = self.own_deployment(plugin);
        let labelled: Vec<Arc<Pod>> = self
            .pods
            .get_all(self.indexes.pods.get(&cache_index::scoped(&ns, &name)))
            .into_iter()
            .filter(|p| {
                p.labels().get(PLUGIN_LABEL) == Some(&name)
                    && p.metadata.deletion_timestamp.is_none()
            })
            .collect();
        let sets = self.deployment_sets(deployment.as_deref());
        ownership::owned_pods(
            &plugin.uid().unwrap_or_default(),
            deployment.as_deref(),
            sets.iter(),
            labelled,
        )
    }

    /// The ReplicaSets a Deployment controls.
    fn deployment_sets(&self, deployment: Option<&Deployment>) -> Vec<Arc<ReplicaSet>> {
        let Some(uid) = deployment.and_then(|d| d.metadata.uid.as_deref()) else {
            return vec![];
        };
        self.replicasets
            .get_all(self.indexes.replicasets.get(uid))
            .into_iter()
            .filter(|rs| controlled_by(&rs.metadata, uid))
            .collect()
    }

    fn rollout(&self, plugin: &HectorPlugin, deployment: Option<&Deployment>) -> Rollout {
        let Some(d) = deployment else {
            return Rollout::NotApplied;
        };
        let pods = self.plugin_pods(plugin);
        // The ReplicaSets of the live Deployment (the one passed may be what was just applied).
        let sets = self.deployment_sets(self.own_deployment(plugin).as_deref());
        Rollout::Pods(rollout::observe(d, &sets, &pods))
    }

    /// Missing Secrets or Secret keys, as the kubelet reports them for the plugin's Pods
    /// that cannot mount their configuration.
    fn secret_problems(&self, plugin: &HectorPlugin) -> Vec<String> {
        if plugin.spec.secret_config.is_empty() {
            return vec![];
        }
        let ns = plugin.namespace().unwrap_or_default();
        let mut out = Vec::new();
        for pod in self.plugin_pods(plugin) {
            if mounts::volumes_mounted(&pod) {
                continue;
            }
            let events = self.mount_events.get_all(
                self.indexes
                    .events
                    .get(&cache_index::scoped(&ns, &pod.name_any())),
            );
            let messages = mounts::kubelet_messages(&pod, &events);
            out.extend(mounts::secret_problems(
                &ns,
                &plugin.spec.secret_config,
                &messages,
            ));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Endpoints of the plugin's running Pods, with how far each Pod has come.
    fn pod_endpoints(&self, plugin: &HectorPlugin) -> BTreeMap<String, Stage> {
        self.plugin_pods(plugin)
            .iter()
            .filter_map(|p| {
                let stage = pod_stage(p)?;
                let ip = p.status.as_ref()?.pod_ip.as_ref()?;
                Some((endpoint_address(ip, plugin.spec.port), stage))
            })
            .collect()
    }

    /// What to probe for `plugin`: its endpoint, or its started Pods' endpoints.
    fn probe_plan(&self, plugin: &HectorPlugin) -> ProbePlan {
        let spec = &plugin.spec;
        let external = spec.endpoint.is_some();
        ProbePlan {
            spec: ProbeSpec {
                identity: Identity {
                    name: spec.manifest.name.clone(),
                    version: spec.manifest.version.clone(),
                    plugin_type: spec.manifest.plugin_type.into(),
                },
                period: Duration::from_secs(
                    u64::try_from(spec.health.period_seconds).unwrap_or(10),
                ),
                timeout: Duration::from_secs(
                    u64::try_from(spec.health.timeout_seconds).unwrap_or(2),
                ),
                secure: !external,
                pod_uids: if external {
                    BTreeMap::new()
                } else {
                    self.pod_uids(plugin)
                },
            },
            wanted: match &spec.endpoint {
                Some(endpoint) => BTreeMap::from([(endpoint.clone(), Stage::Ready)]),
                None => self.pod_endpoints(plugin),
            },
            threshold: u32::try_from(spec.health.failure_threshold).unwrap_or(3),
        }
    }

    /// The UID of the Pod behind each endpoint of [`Ctx::pod_endpoints`].
    fn pod_uids(&self, plugin: &HectorPlugin) -> BTreeMap<String, String> {
        self.plugin_pods(plugin)
            .iter()
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.as_ref()?;
                Some((
                    endpoint_address(ip, plugin.spec.port),
                    p.metadata.uid.clone()?,
                ))
            })
            .collect()
    }

    /// Hands the Events of `transitions` to the event queue, to be recorded in order.
    async fn queue_events(&self, plugin: &HectorPlugin, transitions: Vec<status::Transition>) {
        let recorder = self.shared.recorder.clone();
        let reference = plugin.object_ref(&());
        let key = key_of(plugin);
        let job = async move {
            for t in transitions {
                let event = Event {
                    type_: if t.is_warning() {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: t.reason.clone(),
                    note: Some(t.note()),
                    action: t.type_.clone(),
                };
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::warn!(plugin = %key, error = %e, "cannot record an event");
                }
            }
        };
        if !self.events.push(job.boxed()).await {
            tracing::debug!(plugin = %key_of(plugin), "event queue closed; events dropped");
        }
    }

    /// Whether the child `name` may be written for `plugin`: looked up in the watch cache
    /// (which holds only labelled objects), else read from the API, since an object of that
    /// name without our label may exist and must not be taken over.
    async fn claim<K>(
        &self,
        api: &Api<K>,
        kind: &str,
        name: &str,
        cached: Option<Arc<K>>,
        plugin: &HectorPlugin,
    ) -> Result<Claim<K>, ReconcileError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let ns = plugin.namespace().unwrap_or_default();
        let live = match cached {
            Some(c) => Some((*c).clone()),
            None => api
                .get_opt(name)
                .await
                .map_err(api_err(format!("read {kind} {ns}/{name}")))?,
        };
        let uid = plugin.uid().unwrap_or_default();
        Ok(match live {
            None => Claim::Free,
            Some(obj) if controlled_by(obj.meta(), &uid) => Claim::Ours(obj),
            Some(obj) => Claim::Taken(conflict_message(kind, obj.meta())),
        })
    }

    /// Creates, updates or leaves alone the child `name`; returns whether it wrote, or the
    /// name conflict that keeps it from writing.
    async fn put<K>(
        &self,
        api: &Api<K>,
        kind: &str,
        name: &str,
        desired: &K,
        claim: Claim<K>,
    ) -> Result<Result<bool, String>, ReconcileError>
    where
        K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    {
        let ns = desired.meta().namespace.clone().unwrap_or_default();
        match claim {
            Claim::Taken(conflict) => Ok(Err(conflict)),
            // A plain create: it fails if the name was taken since we looked, where an apply
            // would merge into the other object.
            Claim::Free => {
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                match api.create(&params, desired).await {
                    Ok(_) => Ok(Ok(true)),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err(format!(
                        "{kind} {ns}/{name} was created by someone else just now; \
                         the operator leaves it untouched"
                    ))),
                    Err(e) => Err(api_err(format!("create {kind} {ns}/{name}"))(e)),
                }
            }
            Claim::Ours(live) => {
                // The uid makes the apply fail, rather than merge, if the object was replaced
                // by someone else's since the cache saw it.
                let mut desired = desired.clone();
                desired.meta_mut().uid = live.meta().uid.clone();
                apply(api, name, &desired, Some(&live))
                    .await
                    .map(Ok)
                    .map_err(api_err(format!("apply {kind} {ns}/{name}")))
            }
        }
    }

    /// Applies the plugin's objects; returns the live Deployment (if any) afterwards, or the
    /// name conflicts that kept objects from being written.
    async fn apply_children(
        &self,
        plugin: &HectorPlugin,
        config: &ResolvedConfig,
    ) -> Result<(Option<Deployment>, Vec<String>), ReconcileError> {
        let client = &self.shared.client;
        let ns = plugin.namespace().unwrap_or_default();
        let mut conflicts = Vec::new();

        let cm = build::config_map(plugin, config)?;
        let cm_name = build::config_map_name(plugin);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let cached = self.configmaps.get(&ObjectRef::new(&cm_name).within(&ns));
        let claim = self
            .claim(&cms, "ConfigMap", &cm_name, cached, plugin)
            .await?;
        if let Err(c) = self.put(&cms, "ConfigMap", &cm_name, &cm, claim).await? {
            conflicts.push(c);
        }

        let name = plugin.name_any();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let cached_d = self.deployments.get(&ObjectRef::new(&name).within(&ns));
        let cached_s = self.services.get(&ObjectRef::new(&name).within(&ns));
        let uid = plugin.uid().unwrap_or_default();

        // Before the Deployment, so that a new plugin's Pods start behind their policy.
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        let cached_np = self
            .network_policies
            .get(&ObjectRef::new(&name).within(&ns));
        match build::network_policy(plugin, &self.shared.settings)? {
            Some(np) => {
                let claim = self
                    .claim(&policies, "NetworkPolicy", &name, cached_np, plugin)
                    .await?;
                match self
                    .put(&policies, "NetworkPolicy", &name, &np, claim)
                    .await?
                {
                    Ok(true) => tracing::info!(plugin = %key_of(plugin), "applied NetworkPolicy"),
                    Ok(false) => {}
                    Err(c) => conflicts.push(c),
                }
            }
            None => {
                if let Some(live) = cached_np.filter(|n| controlled_by(&n.metadata, &uid)) {
                    self.delete(&policies, "NetworkPolicy", &*live).await?;
                }
            }
        }

        let mut deployment = None;
        match build::deployment(plugin, config, &self.shared.settings)? {
            Some(d) => {
                let claim = self
                    .claim(&deployments, "Deployment", &name, cached_d, plugin)
                    .await?;
                let live = match &claim {
                    Claim::Ours(l) => Some(l.clone()),
                    _ => None,
                };
                match self
                    .put(&deployments, "Deployment", &name, &d, claim)
                    .await?
                {
                    Ok(true) => {
                        tracing::info!(plugin = %key_of(plugin), "applied Deployment");
                        // The cache catches up shortly; until then judge by what we applied.
                        deployment = Some(d);
                    }
                    Ok(false) => deployment = live,
                    Err(c) => conflicts.push(c),
                }
            }
            // Only an object of ours is removed; without one in the cache there is none.
            None => {
                if let Some(live) = cached_d.filter(|d| controlled_by(&d.metadata, &uid)) {
                    self.delete(&deployments, "Deployment", &*live).await?;
                }
            }
        }
        match build::service(plugin)? {
            Some(svc) => {
                let claim = self
                    .claim(&services, "Service", &name, cached_s, plugin)
                    .await?;
                match self.put(&services, "Service", &name, &svc, claim).await? {
                    Ok(true) => tracing::info!(plugin = %key_of(plugin), "applied Service"),
                    Ok(false) => {}
                    Err(c) => conflicts.push(c),
                }
            }
            None => {
                if let Some(live) = cached_s.filter(|s| controlled_by(&s.metadata, &uid)) {
                    self.delete(&services, "Service", &*live).await?;
                }
            }
        }
        Ok((deployment, conflicts))
    }

    /// Deletes a child of ours, and only that very object (uid precondition).
    async fn delete<K>(&self, api: &Api<K>, kind: &str, live: &K) -> Result<(), ReconcileError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let name = live.meta().name.clone().unwrap_or_default();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: live.meta().uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => Ok(()),
            Err(e) => Err(api_err(format!("delete {kind} {name}"))(e)),
        }
    }

    async fn write_status(
        &self,
        plugin: &HectorPlugin,
        status: &HectorPluginStatus,
    ) -> Result<(), ReconcileError> {
        let ns = plugin.namespace().unwrap_or_default();
        let api: Api<HectorPlugin> = Api::namespaced(self.shared.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": "hector.dev/v1alpha1",
            "kind": "HectorPlugin",
            "status": status,
        });
        api.patch_status(
            &plugin.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(api_err(format!("write status of {}", key_of(plugin))))?;
        Ok(())
    }

    /// The fast path of publication: a Pod turning Ready (or not) changes what is published
    /// at once, without waiting for its plugin's reconcile.
    fn pod_readiness(&self, event: &Result<watcher::Event<Pod>, watcher::Error>) {
        let (pod, stage) = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                let stage = pod_stage(p);
                if p.metadata.deletion_timestamp.is_some() && stage == Some(Stage::Ready) {
                    (p, Some(Stage::Started))
                } else {
                    (p, stage)
                }
            }
            Ok(watcher::Event::Delete(p)) => (p, None),
            _ => return,
        };
        let ready = stage == Some(Stage::Ready);
        let listed = matches!(event, Ok(watcher::Event::InitApply(_)));
        let (Some(ns), Some(name)) = (pod.namespace(), pod.labels().get(PLUGIN_LABEL)) else {
            return;
        };
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_ref()) else {
            return;
        };
        let Some(plugin) = self.plugins.get(&ObjectRef::new(name).within(&ns)) else {
            return;
        };
        // Only the plugin's own Pods count, not every Pod carrying its label.
        let deployment = self.own_deployment(&plugin);
        let owned = ownership::owned_pods(
            &plugin.uid().unwrap_or_default(),
            deployment.as_deref(),
            self.deployment_sets(deployment.as_deref()).iter(),
            [Arc::new(pod.clone())],
        );
        if owned.is_empty() {
            return;
        }
        let key = key_of(&plugin);
        let address = endpoint_address(ip, plugin.spec.port);
        // Read before `probe_now`, which adds a new endpoint with the stage it has now.
        let (known, was_ready) = {
            let index = self.shared.prober.index();
            (index.wants(&key, &address), index.is_ready(&key, &address))
        };
        if !known && stage.is_some() {
            // A Pod whose containers just began to run is probed now, not after its plugin's
            // reconcile has come round: the probe is what publication waits for.
            let _ = self.probe_now(&plugin);
        }
        let (became_usable, usable) = {
            let mut index = self.shared.prober.index();
            let changed = index.set_stage(&key, &address, stage.unwrap_or(Stage::Started));
            let usable = index.usable(&key, &address);
            // A Pod listed already Ready was not seen turning Ready: counted, every Pod of a
            // new leader would be, though what their statuses carry stays published.
            if ready && !was_ready && !usable && !listed {
                self.shared.metrics.ready_before_healthy();
            }
            (changed, usable)
        };
        if became_usable {
            let _ = self.publish.send_urgent(ns);
        } else if ready && !usable {
            // Ready but no healthy probe yet (the last one found the plugin still starting):
            // probe now rather than a period later.
            self.shared.prober.probe_soon(&key, &address);
        }
    }

    /// Tells the prober what to probe for `plugin` now; endpoints new to it start as its
    /// status says (published or not) and with the facts its status carries. Returns whether
    /// its set of endpoints changed.
    fn probe_now(&self, plugin: &HectorPlugin) -> bool {
        let ProbePlan {
            spec,
            wanted,
            threshold,
        } = self.probe_plan(plugin);
        let current = plugin.status.as_ref();
        let carried: Vec<String> = current.map(|s| s.endpoints.clone()).unwrap_or_default();
        let facts = current
            .and_then(|s| s.plugin.as_ref())
            .map(Facts::from_status);
        self.shared
            .prober
            .set(&key_of(plugin), spec, threshold, &wanted, &carried, facts)
    }

    /// Keeps `status` as the plugin's last written status while the watch cache does not show
    /// it yet (the cache lags behind our own writes); once it does, the cache is the copy.
    /// Checked under the lock [`Ctx::caught_up`] takes, after the cache was updated, so an
    /// event that overtakes the write's response leaves no copy behind.
    fn remember_written(&self, key: &PluginKey, status: &HectorPluginStatus) {
        let mut written = lock(&self.shared.written);
        let cached = self
            .plugins
            .get(&ObjectRef::new(&key.name).within(&key.namespace));
        if still_needed(cached.as_ref().and_then(|p| p.status.as_ref()), status) {
            written.insert(key.clone(), status.clone());
        } else {
            written.remove(key);
        }
    }

    /// The watch shows `plugin` (the cache already holds it): the copy of its last written
    /// status goes once the cache shows that status. Without this, every plugin's status would
    /// be held twice for good (at 10,000 plugins, tens of MiB).
    fn caught_up(&self, plugin: &HectorPlugin) {
        let Some(status) = plugin.status.as_ref() else {
            return;
        };
        let key = key_of(plugin);
        let mut written = lock(&self.shared.written);
        if written
            .get(&key)
            .is_some_and(|w| !still_needed(Some(status), w))
        {
            written.remove(&key);
        }
    }

    /// Notes when a plugin's new generation (or its deletion) is first seen, for the queue
    /// latency metric.
    fn note_seen(&self, event: &watcher::Event<HectorPlugin>) {
        let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event else {
            return;
        };
        let generation = p.metadata.generation.unwrap_or_default();
        let pending = p.metadata.deletion_timestamp.is_some()
            || p.status.as_ref().and_then(|s| s.observed_generation) != Some(generation);
        if pending {
            lock(&self.seen)
                .entry(key_of(p))
                .or_insert((generation, Instant::now()));
        }
    }

    /// A reconcile of `plugin` starts: how long it waited since its change was seen.
    fn note_started(&self, plugin: &HectorPlugin) {
        let key = key_of(plugin);
        let generation = plugin.metadata.generation.unwrap_or_default();
        let mut seen = lock(&self.seen);
        if let Some((asked, at)) = seen.get(&key).copied()
            && asked <= generation
        {
            seen.remove(&key);
            drop(seen);
            self.shared.metrics.reconcile_queued(at.elapsed());
        }
    }

    /// Forgets a deleted plugin: probes stop and its entry leaves the ConfigMap.
    fn forget(&self, plugin: &HectorPlugin) {
        let key = key_of(plugin);
        lock(&self.seen).remove(&key);
        lock(&self.requested).remove(&key);
        self.shared.prober.forget(&key);
        self.shared.metrics.forget_plugin(&key);
        lock(&self.shared.written).remove(&key);
        lock(&self.shared.left_out).remove(&key);
        let _ = self.publish.send(key.namespace);
    }
}

/// The longest one reconcile may take: an API request that never answers must not stall the
/// plugin (a controller never runs two reconciles of one object at once).
const RECONCILE_DEADLINE: Duration = Duration::from_secs(30);

async fn reconcile(plugin: Arc<HectorPlugin>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    ctx.note_started(&plugin);
    let started = Instant::now();
    let result =
        match tokio::time::timeout(RECONCILE_DEADLINE, reconcile_plugin(&plugin, &ctx)).await {
            Ok(r) => r,
            Err(_) => Err(ReconcileError::Stalled(RECONCILE_DEADLINE)),
        };
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    ctx.shared.metrics.reconciled(label, started.elapsed());
    result
}

/// How soon a plugin whose name is taken by someone else's object looks again (the object
/// is not watched: it carries none of our labels).
const CONFLICT_RECHECK: Duration = Duration::from_secs(10);

async fn reconcile_plugin(plugin: &HectorPlugin, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let key = key_of(plugin);
    tracing::debug!(plugin = %key, "reconcile: start");
    // Judging from half-filled caches would rewrite objects and status that are fine.
    if !ctx.caches_ready().await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    tracing::debug!(plugin = %key, "reconcile: caches ready");
    if plugin.metadata.deletion_timestamp.is_some() {
        ctx.forget(plugin);
        return Ok(Action::await_change());
    }
    let spec = &plugin.spec;
    let (mut verdict, resolved) = resolve_config(plugin);
    let external = spec.endpoint.is_some();

    // A failed apply is kept to be shown on the resource; the status is still written.
    let mut error = None;
    let mut conflicts = Vec::new();
    let deployment = match &resolved {
        Some(config) => match ctx.apply_children(plugin, config).await {
            Ok((d, c)) => {
                conflicts = c;
                d
            }
            Err(e) if e.is_fenced() => return Err(e),
            Err(e) => {
                error = Some(e);
                ctx.own_deployment(plugin).as_deref().cloned()
            }
        },
        // Invalid configuration: nothing new is applied; what already runs keeps running.
        None => ctx.own_deployment(plugin).as_deref().cloned(),
    };
    tracing::debug!(plugin = %key, conflicts = conflicts.len(), error = ?error, "reconcile: children applied");
    let secret_problems = ctx.secret_problems(plugin);
    if !secret_problems.is_empty() && resolved.is_some() {
        verdict = ConfigVerdict::Invalid("SecretNotFound", secret_problems.join("; "));
    }
    let failure = if !conflicts.is_empty() {
        Some(Failure {
            reason: "NameConflict",
            message: conflicts.join("; "),
            permanent: true,
        })
    } else {
        error.as_ref().map(ReconcileError::failure)
    };
    let rollout = if external {
        Rollout::External
    } else {
        ctx.rollout(plugin, deployment.as_ref())
    };

    let current = plugin.status.clone();
    let endpoints_changed = ctx.probe_now(plugin);

    let state = ctx.shared.prober.index().get(&key);
    let publication = lock(&ctx.shared.left_out).get(&key).cloned();
    let inputs = Inputs {
        generation: plugin.metadata.generation,
        config: verdict,
        rollout,
        probes: state.as_ref(),
        address: Some(publish::address(plugin)),
        configmap: &ctx.shared.configmap,
        failure,
        publication,
        replicas: spec.replicas,
        selector: (!external).then(|| build::selector_string(plugin)),
    };
    let desired = status::compute(&inputs, current.as_ref(), Timestamp::now());
    ctx.shared.metrics.set_plugin(
        &key,
        PluginState {
            phase: desired.phase,
            desired_endpoints: if external {
                1
            } else {
                usize::try_from(spec.replicas).unwrap_or(0)
            },
            ready_endpoints: desired.endpoints.len(),
        },
    );
    // The publisher renders from the same index, in its own task: agents learn of a change
    // without waiting for the status write and its Events. Probe results publish themselves;
    // what is left is a changed resource or a changed set of endpoints (and the publisher's
    // own periodic pass), so a resync that finds nothing new renders nothing.
    let version = plugin.metadata.resource_version.clone().unwrap_or_default();
    let new_version = lock(&ctx.requested).insert(key.clone(), version.clone()) != Some(version);
    let already_written = lock(&ctx.shared.written).get(&key) == Some(&desired);
    let writes_status = current.as_ref() != Some(&desired) && !already_written;
    // Agents learn of an endpoint before the status names it: a publication rendered from
    // the index as it is now (or later) is written first.
    let adds = writes_status
        && desired
            .endpoints
            .iter()
            .any(|e| !current.as_ref().is_some_and(|c| c.endpoints.contains(e)));
    if adds {
        let _ = ctx.publish.send_urgent(key.namespace.clone());
    } else if endpoints_changed || new_version {
        let _ = ctx.publish.send(key.namespace.clone());
    }
    if writes_status {
        let baseline = lock(&ctx.shared.written)
            .get(&key)
            .cloned()
            .or(current.clone());
        ctx.publish.written_first(&key.namespace).await;
        tracing::debug!(plugin = %key, "reconcile: writing status");
        ctx.write_status(plugin, &desired).await?;
        tracing::info!(plugin = %key, phase = ?desired.phase, endpoints = desired.endpoints.len(), "status updated");
        ctx.remember_written(&key, &desired);
        let transitions = status::transitions(baseline.as_ref(), &desired);
        if !transitions.is_empty() {
            tracing::debug!(plugin = %key, events = transitions.len(), "reconcile: queueing events");
            ctx.queue_events(plugin, transitions).await;
        }
    }
    tracing::debug!(plugin = %key, "reconcile: done");
    if let Some(e) = error {
        return Err(e);
    }
    if !conflicts.is_empty() {
        return Ok(Action::requeue(CONFLICT_RECHECK));
    }
    // Jittered: plugins applied together would otherwise all come back in one burst.
    Ok(Action::requeue(crate::probe::jittered(RESYNC)))
}

fn error_policy(plugin: Arc<HectorPlugin>, error: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    if error.is_fenced() {
        tracing::debug!(plugin = %key_of(&plugin), "not leading; write dropped");
        return Action::await_change();
    }
    tracing::warn!(plugin = %key_of(&plugin), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Retries of failed publications, one per namespace: a burst of failures for a namespace
/// coalesces into one retry, and each failure in a row doubles its wait (to a cap).
#[derive(Default)]
struct Retries {
    due: BTreeMap<String, (tokio::time::Instant, u32)>,
}

impl Retries {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    fn failed(&mut self, ns: &str) -> Duration {
        let attempts = self.due.get(ns).map_or(0, |(_, a)| *a);
        let wait = Self::FIRST
            .saturating_mul(1 << attempts.min(6))
            .min(Self::MAX);
        self.due.insert(
            ns.to_string(),
            (tokio::time::Instant::now() + wait, attempts + 1),
        );
        wait
    }

    fn succeeded(&mut self, ns: &str) {
        self.due.remove(ns);
    }

    fn next(&self) -> Option<tokio::time::Instant> {
        self.due.values().map(|(at, _)| *at).min()
    }

    /// Namespaces whose retry is due (they stay scheduled until they succeed).
    fn ready(&self) -> Vec<String> {
        let now = tokio::time::Instant::now();
        self.due
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(ns, _)| ns.clone())
            .collect()
    }
}

/// Writes the endpoints ConfigMap of every namespace it is told about, when its content
/// changes. The only writer of those ConfigMaps.
async fn publish_loop(
    ctx: Arc<Ctx>,
    scope: Scope,
    mut dirty: mpsc::UnboundedReceiver<(String, Instant)>,
    mut shutdown: watch::Receiver<bool>,
) {
    /// Frees every status write waiting for a publication when the publisher stops.
    struct Stopped(PublishRequests);
    impl Drop for Stopped {
        fn drop(&mut self) {
            self.0.stopped();
        }
    }
    let _stopped = Stopped(ctx.publish.clone());
    if !ctx.caches_ready().await {
        return;
    }
    let written = Arc::new(Mutex::new(publish::WrittenByNamespace::new()));
    let rendered = Arc::new(Mutex::new(HashMap::new()));
    let mut retries = Retries::default();
    let mut tick = tokio::time::interval(PUBLISH_RESYNC);
    // The first request of each namespace not yet served by a publication.
    let mut asked: HashMap<String, Instant> = HashMap::new();
    // Namespaces asked for and not yet being written, and those being written: one write in
    // flight per namespace, while other namespaces go on being written (a request never
    // waits for another namespace's write).
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut writing: HashSet<String> = HashSet::new();
    let mut in_flight: futures::stream::FuturesUnordered<BoxFuture<'static, Written>> =
        futures::stream::FuturesUnordered::new();
    let mut finished: Vec<String> = Vec::new();
    loop {
        let retry_at = retries.next();
        tokio::select! {
            _ = shutdown.changed() => return,
            ns = dirty.recv() => match ns {
                Some((ns, at)) => {
                    asked.entry(ns.clone()).or_insert(at);
                    pending.insert(ns);
                }
                None => return,
            },
            _ = tick.tick() => {
                pending.extend(ctx.plugins.scan().iter().filter_map(|p| p.namespace()));
                pending.extend(
                    ctx.configmaps
                        .scan()
                        .iter()
                        .filter(|c| c.name_any() == ctx.shared.configmap)
                        .filter_map(|c| c.namespace()),
                );
                collect_garbage(&ctx, &scope);
            }
            _ = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => pending.extend(retries.ready()),
            Some((ns, asked_at, result)) = in_flight.next(), if !in_flight.is_empty() => {
                writing.remove(&ns);
                finished.push(ns.clone());
                match result {
                    Ok(wrote) => {
                        retries.succeeded(&ns);
                        if let Some(at) = asked_at
                            && wrote
                        {
                            ctx.shared.metrics.published_after(at.elapsed());
                        }
                    }
                    Err(e) if is_fenced_error(&e) => return,
                    Err(e) => {
                        let wait = retries.failed(&ns);
                        tracing::warn!(namespace = %ns, error = %e, retry_in = ?wait, "cannot write the endpoints ConfigMap");
                    }
                }
            }
        }
        while let Ok((ns, at)) = dirty.try_recv() {
            asked.entry(ns.clone()).or_insert(at);
            pending.insert(ns);
        }
        // Served once no request of it is left: one that came during the write is not.
        for ns in finished.drain(..) {
            if !pending.contains(&ns) {
                ctx.publish.served(&ns);
            }
        }
        let now = tokio::time::Instant::now();
        let startable: Vec<String> = pending
            .iter()
            // A namespace being written is written again when that write is done; one
            // waiting for its retry, when the retry is due.
            .filter(|ns| !writing.contains(*ns))
            .filter(|ns| retries.due.get(*ns).is_none_or(|(at, _)| *at <= now))
            .take(PUBLISH_CONCURRENCY.saturating_sub(writing.len()))
            .cloned()
            .collect();
        for ns in startable {
            pending.remove(&ns);
            writing.insert(ns.clone());
            let asked_at = asked.remove(&ns);
            let (ctx, written, rendered) = (
                Arc::clone(&ctx),
                Arc::clone(&written),
                Arc::clone(&rendered),
            );
            in_flight.push(
                async move {
                    let result = publish_namespace(&ctx, &ns, &written, &rendered).await;
                    (ns, asked_at, result)
                }
                .boxed(),
            );
        }
    }
}

/// A finished publication: the namespace, when it was first asked for, and whether it wrote.
type Written = (String, Option<Instant>, Result<bool, kube::Error>);

/// Whether a write failed because this replica no longer leads (its client is fenced).
fn is_fenced_error(e: &kube::Error) -> bool {
    e.to_string().contains("leader lease")
}

/// Stops probes of plugins that vanished while a watch was down (no delete event seen).
fn collect_garbage(ctx: &Ctx, scope: &Scope) {
    let present: BTreeSet<PluginKey> = ctx.plugins.scan().iter().map(|p| key_of(p)).collect();
    let gone = |k: &PluginKey| scope.covers(&k.namespace) && !present.contains(k);
    lock(&ctx.requested).retain(|k, _| !gone(k));
    lock(&ctx.seen).retain(|k, _| !gone(k));
    let known = ctx.shared.prober.index().keys();
    for key in known {
        if scope.covers(&key.namespace) && !present.contains(&key) {
            ctx.shared.prober.forget(&key);
        }
    }
    ctx.shared
        .metrics
        .retain_plugins(|key| !scope.covers(&key.namespace) || present.contains(key));
}

/// Labels that mark the endpoints ConfigMap as the operator's own.
fn endpoints_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "hector-operator".to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "plugin-endpoints".to_string(),
        ),
    ])
}

/// Whether `cm` is an endpoints ConfigMap this operator made.
fn is_our_endpoints(cm: &ConfigMap) -> bool {
    let labels = cm.labels();
    endpoints_labels()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// Records which plugins of `ns` could not be published and why; wakes the plugins whose
/// verdict changed so their status says it.
fn set_left_out(
    ctx: &Ctx,
    ns: &str,
    plugins: &[Arc<HectorPlugin>],
    left_out: BTreeMap<String, (&'static str, String)>,
) {
    let mut map = lock(&ctx.shared.left_out);
    for p in plugins {
        let key = key_of(p);
        let now = left_out.get(&key.name).cloned();
        let before = match &now {
            Some(v) => map.insert(key.clone(), v.clone()),
            None => map.remove(&key),
        };
        if before != now {
            tracing::info!(namespace = %ns, plugin = %key.name, left_out = ?now, "publication verdict changed");
            let _ = ctx.shared.changes.send(key);
        }
    }
}

/// Renders `ns`'s endpoints ConfigMap and writes it when it changed; true when it wrote.
async fn publish_namespace(
    ctx: &Ctx,
    ns: &str,
    written: &Mutex<publish::WrittenByNamespace>,
    rendered: &Mutex<HashMap<String, RenderInputs>>,
) -> Result<bool, kube::Error> {
    let name = &ctx.shared.configmap;
    let plugins: Vec<Arc<HectorPlugin>> = ctx.plugins.get_all(ctx.indexes.plugins.get(ns));
    let states: Vec<_> = {
        let index = ctx.shared.prober.index();
        plugins.iter().map(|p| index.get(&key_of(p))).collect()
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.shared.client.clone(), ns);
    let mut current = ctx
        .configmaps
        .get(&ObjectRef::new(name).within(ns))
        .filter(|c| is_our_endpoints(c));
    let inputs = RenderInputs {
        configmap: current
            .as_ref()
            .and_then(|c| c.metadata.resource_version.clone()),
        plugins: plugins
            .iter()
            .map(|p| (p.name_any(), p.metadata.resource_version.clone()))
            .collect(),
        states: states.clone(),
    };
    // What was rendered from these very inputs needs no second rendering (the periodic
    // pass over every namespace would otherwise parse and render each ConfigMap again).
    if current.is_some() && lock(rendered).get(ns) == Some(&inputs) {
        return Ok(false);
    }
    if plugins.is_empty() && current.is_none() {
        return Ok(false);
    }
    if current.is_none() {
        // Not in the cache (which holds only our labelled objects): someone else's ConfigMap
        // of that name must not be taken over.
        if let Some(other) = api.get_opt(name).await? {
            if !is_our_endpoints(&other) {
                let message = format!(
                    "not published: {}",
                    conflict_message("ConfigMap", &other.metadata)
                );
                let left: BTreeMap<String, (&'static str, String)> = plugins
                    .iter()
                    .map(|p| (p.name_any(), ("NameConflict", message.clone())))
                    .collect();
                set_left_out(ctx, ns, &plugins, left);
                return Ok(false);
            }
            current = Some(Arc::new(other));
        }
    }
    let sources: Vec<publish::Source<'_>> = plugins
        .iter()
        .zip(&states)
        .map(|(plugin, state)| publish::Source {
            plugin,
            state: state.as_ref(),
        })
        .collect();
    let previous = current.as_deref().and_then(publish::parse_existing);
    let publish::Bounded {
        file,
        data,
        left_out,
    } = publish::render_bounded(
        ns,
        &sources,
        previous.as_ref(),
        Timestamp::now(),
        &ctx.shared.plugin_dir,
    );
    let left: BTreeMap<String, (&'static str, String)> = left_out
        .iter()
        .map(|l| {
            (
                l.name.clone(),
                (
                    publish::PUBLICATION_TOO_LARGE,
                    l.message(&ctx.shared.configmap),
                ),
            )
        })
        .collect();
    set_left_out(ctx, ns, &plugins, left);
    let published: usize = file.plugins.values().map(|p| p.endpoints.len()).sum();
    ctx.shared.metrics.set_published(
        ns,
        plugins.iter().map(|p| {
            let name = p.name_any();
            let count = file.plugins.get(&name).map_or(0, |e| e.endpoints.len());
            (name, count)
        }),
    );
    let empty = BTreeMap::new();
    let live = current.as_deref().map(|c| {
        (
            c.metadata.resource_version.as_deref().unwrap_or_default(),
            c.data.as_ref().unwrap_or(&empty),
        )
    });
    if !publish::needs_write(&data, live, lock(written).get_mut(ns)) {
        lock(rendered).insert(ns.to_string(), inputs);
        return Ok(false);
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(endpoints_labels()),
            ..Default::default()
        },
        data: Some(data.clone()),
        ..Default::default()
    };
    let chain = publish::chain(
        current
            .as_ref()
            .and_then(|c| c.metadata.resource_version.as_deref()),
        lock(written).get(ns),
    );
    let after = match &current {
        // A plain create: it fails, instead of merging, if someone made the name meanwhile.
        None => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.create(&params, &cm).await?
        }
        Some(live) => {
            // A replace conditioned on the version we know costs the API server less than a
            // server-side apply of the whole object (no field sets to merge), and this write
            // is on the path from a Pod turning Ready to agents seeing it. It keeps what others
            // added to the object; if someone wrote since the version we know, it is refused
            // and the apply below merges into whatever is there, as it always did.
            let base = chain.base.clone().unwrap_or_default();
            let replacement = publish::replacement(live, &data, &endpoints_labels(), base);
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api.replace(name, &params, &replacement).await {
                Ok(after) => after,
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(namespace = %ns, configmap = %name, "endpoints ConfigMap changed by someone else; applying");
                    let mut cm = cm;
                    cm.metadata.uid = live.metadata.uid.clone();
                    api.patch(
                        name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&cm),
                    )
                    .await?
                }
                Err(e) => return Err(e),
            }
        }
    };
    ctx.shared.metrics.configmap_written(ns);
    tracing::info!(namespace = %ns, configmap = %name, plugins = file.plugins.len(), endpoints = published, "published endpoints");
    lock(written).insert(
        ns.to_string(),
        publish::Written {
            behind: chain.behind,
            after: after.metadata.resource_version.unwrap_or_default(),
            data,
            caught_up: false,
        },
    );
    lock(rendered).insert(ns.to_string(), inputs);
    Ok(true)
}

/// What one rendering of a namespace's endpoints was made from.
#[derive(PartialEq)]
struct RenderInputs {
    /// The resourceVersion of the endpoints ConfigMap in the cache.
    configmap: Option<String>,
    /// Each plugin's name and resourceVersion.
    plugins: Vec<(String, Option<String>)>,
    /// Each plugin's probe state.
    states: Vec<Option<crate::index::PluginState>>,
}

/// Records in `/readyz`, the log and the metrics whether a watch lists and watches; a
/// failing one is an error naming the resource (typically a missing permission or CRD).
fn observed<K, S>(
    stream: S,
    resource: &'static str,
    shared: &Arc<Shared>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K, S>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    K: Send,
{
    let shared = Arc::clone(shared);
    shared.readiness.watch_started(resource);
    stream.inspect(move |event| match event {
        Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
            shared.readiness.watch_ok(resource)
        }
        Ok(_) => {}
        Err(e) => {
            shared.metrics.watch_error(resource);
            if shared.readiness.watch_failed(resource, e.to_string()) {
                tracing::error!(resource, error = %e, "cannot list or watch {resource}: the operator works from incomplete caches until this is fixed (check its RBAC and that the CRD is installed)");
            }
        }
    })
}

/// Turns `synced` true once every store has listed. A store's readiness future keeps only the
/// waker of its last poll (a oneshot channel underneath), so of several reconciles waiting on
/// it at once only one would ever wake: the others would stall for good, which is what a new
/// leader with several plugins to reconcile met. This is the stores' only waiter.
async fn sync_gate(listed: Vec<BoxFuture<'static, bool>>, synced: watch::Sender<bool>) {
    let mut ready = true;
    for kind in listed {
        ready &= kind.await;
    }
    if ready {
        tracing::info!("watch caches synced: reconciling");
        let _ = synced.send(true);
    }
}

/// Runs the controller and the publisher for one scope until `shutdown` turns true.
pub async fn run_scope(shared: Arc<Shared>, scope: Scope, shutdown: watch::Receiver<bool>) {
    let managed = watcher::Config::default().labels(MANAGED_BY);
    let (publish_tx, publish_rx) = mpsc::unbounded_channel();

    let (plugins, plugins_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let (replicasets, replicasets_writer) = reflector::store();
    let (deployments, deployments_writer) = reflector::store();
    let (services, services_writer) = reflector::store();
    let (network_policies, network_policies_writer) = reflector::store();
    let (configmaps, configmaps_writer) = reflector::store();
    let (mount_events, events_writer) = reflector::store();
    let (synced_tx, synced) = watch::channel(false);
    let (events, events_worker) = EventQueue::new(event_queue::CAPACITY, event_queue::CONCURRENCY);
    let ctx = Arc::new(Ctx {
        shared: Arc::clone(&shared),
        plugins: Cache::new(plugins.clone()),
        pods: Cache::new(pods.clone()),
        replicasets: Cache::new(replicasets),
        deployments: Cache::new(deployments),
        services: Cache::new(services),
        network_policies: Cache::new(network_policies),
        configmaps: Cache::new(configmaps),
        mount_events: Cache::new(mount_events),
        indexes: Indexes::default(),
        seen: Mutex::default(),
        requested: Mutex::default(),
        publish: PublishRequests::new(publish_tx),
        events,
        synced,
    });

    let (plugin_events, plugins_listed) = watch_kind(
        &scope,
        &shared,
        watcher::Config::default(),
        plugins_writer,
        "hectorplugins",
        trim::object,
    );
    let plugin_stream = plugin_events
        .inspect({
            let ctx = Arc::clone(&ctx);
            move |event| {
                if let Ok(event) = event {
                    ctx.indexes.plugins.apply(event);
                    ctx.note_seen(event);
                    if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = event {
                        ctx.caught_up(p);
                    }
                    match event {
                        watcher::Event::Delete(plugin) => {
                            tracing::info!(plugin = %key_of(plugin), "HectorPlugin deleted");
                            ctx.forget(plugin);
                        }
                        // Probes (and so publication) start as soon as a plugin is seen,
                        // not when its reconcile comes round: after a bulk apply the queue
                        // holds thousands, each writing its status and Events.
                        watcher::Event::Apply(plugin)
                            if *ctx.synced.borrow()
                                && plugin.metadata.deletion_timestamp.is_none() =>
                        {
                            if ctx.probe_now(plugin)
                                && let Some(ns) = plugin.namespace()
                            {
                                let _ = ctx.publish.send(ns);
                            }
                        }
                        _ => {}
                    }
                }
            }
        })
        .applied_objects();
    let (pod_events, pods_listed) = watch_kind(
        &scope,
        &shared,
        watcher::Config::default().labels(PLUGIN_LABEL),
        pods_writer,
        "pods",
        trim::pod,
    );
    let ready_ctx = Arc::clone(&ctx);
    let pod_stream = pod_events
        .inspect(move |event| {
            if let Ok(e) = event {
                ready_ctx.indexes.pods.apply(e);
            }
            ready_ctx.pod_readiness(event);
        })
        .touched_objects();
    // The owner chain Pod → ReplicaSet → Deployment decides which Pods are endpoints.
    let (replicaset_events, replicasets_listed) = watch_kind(
        &scope,
        &shared,
        managed.clone(),
        replicasets_writer,
        "replicasets",
        trim::object,
    );
    let replicaset_stream = replicaset_events
        .inspect({
            let ctx = Arc::clone(&ctx);
            move |event| {
                if let Ok(e) = event {
                    ctx.indexes.replicasets.apply(e);
                }
            }
        })
        .touched_objects();
    // What the kubelet says when a Pod cannot mount its configuration (a missing Secret or
    // key): the operator cannot read Secrets, so this is how it learns.
    let (mount_event_events, events_listed) = watch_kind(
        &scope,
        &shared,
        watcher::Config::default().fields("reason=FailedMount,involvedObject.kind=Pod"),
        events_writer,
        "events",
        trim::object,
    );
    let event_stream = mount_event_events
        .inspect({
            let ctx = Arc::clone(&ctx);
            move |event| {
                if let Ok(e) = event {
                    ctx.indexes.events.apply(e);
                }
            }
        })
        .touched_objects();
    let (deployment_events, deployments_listed) = watch_kind(
        &scope,
        &shared,
        managed.clone(),
        deployments_writer,
        "deployments",
        trim::object,
    );
    let deployment_stream = deployment_events.touched_objects();
    let (service_events, services_listed) = watch_kind(
        &scope,
        &shared,
        managed.clone(),
        services_writer,
        "services",
        trim::object,
    );
    let service_stream = service_events.touched_objects();
    // A deleted or edited NetworkPolicy is put back at once, like the other children.
    let (network_policy_events, network_policies_listed) = watch_kind(
        &scope,
        &shared,
        managed.clone(),
        network_policies_writer,
        "networkpolicies",
        trim::object,
    );
    let network_policy_stream = network_policy_events.touched_objects();
    let endpoints_name = shared.configmap.clone();
    let cm_publish = ctx.publish.clone();
    let (configmap_events, configmaps_listed) = watch_kind(
        &scope,
        &shared,
        managed,
        configmaps_writer,
        "configmaps",
        // Kept whole but for managedFields: the endpoints ConfigMap is replaced from this
        // copy, which must not lose anything someone else put on it.
        trim::managed_fields,
    );
    let configmap_stream = configmap_events.touched_objects().inspect(move |cm| {
        // Someone else changed or deleted the endpoints ConfigMap: render it again.
        if let Ok(cm) = cm
            && cm.name_any() == endpoints_name
            && let Some(ns) = cm.namespace()
        {
            let _ = cm_publish.send(ns);
        }
    });
    let listed = vec![
        plugins_listed,
        pods_listed,
        replicasets_listed,
        events_listed,
        deployments_listed,
        services_listed,
        network_policies_listed,
        configmaps_listed,
    ];

    let scope_for_trigger = scope.clone();
    let every_plugin = plugins.clone();
    let trigger = changes_stream(shared.changes.subscribe()).flat_map(move |change| {
        let refs: Vec<ObjectRef<HectorPlugin>> = match change {
            Some(key) if scope_for_trigger.covers(&key.namespace) => {
                vec![ObjectRef::new(&key.name).within(&key.namespace)]
            }
            Some(_) => Vec::new(),
            // Probe changes were missed: their plugins' statuses are found by reconciling
            // every plugin rather than waiting for the resync.
            None => {
                let all = every_plugin.state();
                tracing::debug!(
                    plugins = all.len(),
                    "probe changes lagged; reconciling every plugin"
                );
                all.iter()
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect()
            }
        };
        futures::stream::iter(refs)
    });

    // A probe that changed what agents may use is published at once, without waiting for
    // its plugin's reconcile (which follows, for the status).
    let probe_publish = {
        let publish = ctx.publish.clone();
        let scope = scope.clone();
        let mut stop = shutdown.clone();
        let mut changes = shared.changes.subscribe();
        let ctx = Arc::clone(&ctx);
        async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    key = changes.recv() => match key {
                        Ok(key) if scope.covers(&key.namespace) => {
                            let _ = publish.send(key.namespace);
                        }
                        Ok(_) => {}
                        // Changes were missed (a burst larger than the channel): every
                        // namespace is rendered again rather than waiting for the resync.
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "probe changes lagged; publishing every namespace");
                            for ns in ctx.indexes.plugins.keys() {
                                let _ = publish.send(ns);
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        }
    };
    let mut stop = shutdown.clone();
    let event_pods = pods.clone();
    let controller = Controller::for_stream(plugin_stream, plugins.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(shared.concurrency))
        .owns_stream(deployment_stream)
        .owns_stream(service_stream)
        .owns_stream(network_policy_stream)
        .owns_stream(configmap_stream)
        .watches_stream(pod_stream, |pod: Pod| {
            let ns = pod.namespace()?;
            let name = pod.labels().get(PLUGIN_LABEL)?.clone();
            Some(ObjectRef::new(&name).within(&ns))
        })
        .watches_stream(replicaset_stream, |rs: ReplicaSet| {
            let ns = rs.namespace()?;
            let name = rs.labels().get(PLUGIN_LABEL)?.clone();
            Some(ObjectRef::new(&name).within(&ns))
        })
        .watches_stream(event_stream, move |event: CoreEvent| {
            let ns = event.namespace()?;
            let pod = event.involved_object.name.as_deref()?;
            let pod = event_pods.get(&ObjectRef::new(pod).within(&ns))?;
            let name = pod.labels().get(PLUGIN_LABEL)?.clone();
            Some(ObjectRef::new(&name).within(&ns))
        })
        .reconcile_on(trigger)
        .graceful_shutdown_on(async move {
            let _ = stop.changed().await;
        })
        .run(reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let publisher = publish_loop(Arc::clone(&ctx), scope.clone(), publish_rx, shutdown);
    let gate = sync_gate(listed, synced_tx);
    tracing::info!(?scope, "controller started");
    // The event worker ends once every holder of the context (and so of its queue) is done.
    drop(ctx);
    futures::join!(controller, publisher, gate, probe_publish, events_worker);
}

/// Whether a copy of the status last `written` is still needed, the cache showing `cached`.
fn still_needed(cached: Option<&HectorPluginStatus>, written: &HectorPluginStatus) -> bool {
    cached != Some(written)
}

/// A broadcast receiver as a stream: `Some` for each value, `None` once for each time the
/// receiver lagged and skipped values.
fn changes_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> impl futures::Stream<Item = Option<T>> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(v) => Some((Some(v), rx)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

#[cfg(test)]
mod scale_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus,
        PodCondition, PodStatus,
    };

    fn pod_with(containers: Vec<(bool, bool)>, ready: bool) -> Pod {
        Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                container_statuses: Some(
                    containers
                        .into_iter()
                        .map(|(running, started)| ContainerStatus {
                            started: Some(started),
                            state: Some(if running {
                                ContainerState {
                                    running: Some(ContainerStateRunning::default()),
                                    ..Default::default()
                                }
                            } else {
                                ContainerState {
                                    waiting: Some(ContainerStateWaiting::default()),
                                    ..Default::default()
                                }
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A Pod is probed once every container runs; it counts as started once every container
    /// has passed its startup probe, and Ready wins over both.
    #[test]
    fn a_pods_stage_follows_its_containers() {
        assert_eq!(pod_stage(&Pod::default()), None);
        assert_eq!(pod_stage(&pod_with(vec![], false)), None);
        assert_eq!(pod_stage(&pod_with(vec![(false, false)], false)), None);
        assert_eq!(
            pod_stage(&pod_with(vec![(true, false), (false, false)], false)),
            None,
            "a sidecar still waiting"
        );
        assert_eq!(
            pod_stage(&pod_with(vec![(true, false)], false)),
            Some(Stage::Starting)
        );
        assert_eq!(
            pod_stage(&pod_with(vec![(true, true), (true, false)], false)),
            Some(Stage::Starting)
        );
        assert_eq!(
            pod_stage(&pod_with(vec![(true, true), (true, true)], false)),
            Some(Stage::Started)
        );
        assert_eq!(
            pod_stage(&pod_with(vec![(true, true)], true)),
            Some(Stage::Ready)
        );
    }

    /// A receiver that fell behind says so once (the controller then reconciles every
    /// plugin), and goes on with the values still held.
    #[tokio::test]
    async fn a_lagging_change_stream_says_it_lagged_and_goes_on() {
        let (tx, rx) = broadcast::channel(2);
        for i in 0..5 {
            tx.send(i).expect("a receiver");
        }
        drop(tx);
        let seen: Vec<Option<i32>> = changes_stream(rx).collect().await;
        assert_eq!(seen, [None, Some(3), Some(4)]);
    }

    /// An invalid `spec.access` stops the reconcile before anything is built, and the status
    /// names every bad entry by its field path.
    #[test]
    fn invalid_access_is_a_config_verdict_with_field_paths_and_applies_nothing() {
        let yaml = fixtures::LLM.replace(
            "  image:",
            "  access: {namespaces: [ok, Bad_NS], serviceAccounts: [nobody]}\n  image:",
        );
        let (verdict, resolved) = resolve_config(&fixtures::plugin(&yaml));
        assert!(resolved.is_none(), "nothing is applied");
        let ConfigVerdict::Invalid(reason, message) = verdict else {
            panic!("invalid access must not be valid: {verdict:?}");
        };
        assert_eq!(reason, "InvalidAccess");
        assert!(
            message.contains("spec.access.namespaces[1]: \"Bad_NS\""),
            "{message}"
        );
        assert!(
            message.contains("spec.access.serviceAccounts[0]: \"nobody\""),
            "{message}"
        );
        assert!(!message.contains("namespaces[0]"), "{message}");

        let (verdict, resolved) = resolve_config(&fixtures::plugin(fixtures::LLM));
        assert!(matches!(verdict, ConfigVerdict::Valid(_)), "{verdict:?}");
        assert!(resolved.is_some());
    }

    /// A refused `spec.podTemplate` is a configuration verdict naming the field, and nothing
    /// is built from it.
    #[test]
    fn an_invalid_pod_template_is_a_config_verdict_with_field_paths() {
        let yaml = fixtures::LLM.replace(
            "  image:",
            "  podTemplate: {metadata: {annotations: {hector.dev/config-hash: x}}, container: {volumeMounts: [{name: nope, mountPath: /x}]}}\n  image:",
        );
        let (verdict, resolved) = resolve_config(&fixtures::plugin(&yaml));
        assert!(resolved.is_none(), "nothing is applied");
        let ConfigVerdict::Invalid(reason, message) = verdict else {
            panic!("an invalid overlay must not be valid: {verdict:?}");
        };
        assert_eq!(reason, "InvalidPodTemplate");
        assert!(
            message.contains(
                "spec.podTemplate.metadata.annotations[\"hector.dev/config-hash\"]: reserved"
            ),
            "{message}"
        );
        assert!(
            message.contains("spec.podTemplate.container.volumeMounts[0].name: \"nope\""),
            "{message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_write_waits_for_the_publication_a_pod_asked_for_and_no_longer() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let requests = PublishRequests::new(tx);
        let started = tokio::time::Instant::now();
        // Nothing asked for: no wait.
        requests.written_first("team-a").await;
        assert_eq!(started.elapsed(), Duration::ZERO);

        // A Pod turned Ready in team-a: its status writes wait until the publisher served it;
        // team-b's do not wait at all; a plain request (a reconcile's) makes nobody wait.
        requests.send_urgent("team-a".into()).expect("send");
        requests.send("team-b".into()).expect("send");
        assert_eq!(rx.recv().await.map(|(ns, _)| ns).as_deref(), Some("team-a"));
        assert_eq!(rx.recv().await.map(|(ns, _)| ns).as_deref(), Some("team-b"));
        requests.written_first("team-b").await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        let waiting = tokio::spawn({
            let requests = requests.clone();
            async move {
                let from = tokio::time::Instant::now();
                requests.written_first("team-a").await;
                from.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        requests.served("team-a");
        let waited = waiting.await.expect("joined");
        assert_eq!(waited, Duration::from_millis(30));

        // A publication that never comes holds a status write up for PUBLICATION_FIRST only.
        requests.send_urgent("team-a".into()).expect("send");
        let from = tokio::time::Instant::now();
        requests.written_first("team-a").await;
        assert_eq!(from.elapsed(), PUBLICATION_FIRST);

        // A publisher that stops frees everyone, and nobody waits for one that is gone.
        requests.send_urgent("team-c".into()).expect("send");
        requests.stopped();
        drop(rx);
        assert!(requests.send_urgent("team-d".into()).is_err());
        let from = tokio::time::Instant::now();
        requests.written_first("team-a").await;
        requests.written_first("team-c").await;
        requests.written_first("team-d").await;
        assert_eq!(from.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_publications_retry_once_per_namespace_with_growing_waits() {
        let mut r = Retries::default();
        assert_eq!(r.next(), None);
        assert_eq!(r.failed("a"), Duration::from_secs(1));
        assert_eq!(r.failed("a"), Duration::from_secs(2));
        assert_eq!(r.failed("a"), Duration::from_secs(4));
        assert_eq!(
            r.due.len(),
            1,
            "one retry per namespace, however many failures"
        );
        for _ in 0..10 {
            r.failed("a");
        }
        assert_eq!(r.failed("a"), Retries::MAX, "capped");
        assert!(r.ready().is_empty(), "not due yet");
        tokio::time::advance(Retries::MAX + Duration::from_millis(1)).await;
        assert_eq!(r.ready(), ["a"]);
        r.succeeded("a");
        assert_eq!(r.next(), None);
        assert_eq!(
            r.failed("a"),
            Duration::from_secs(1),
            "a success resets the backoff"
        );
    }

    #[test]
    fn fenced_writes_are_recognised_and_api_rejections_keep_the_apis_words() {
        let fenced = ReconcileError::Api {
            action: "apply Deployment a/b".into(),
            source: kube::Error::Service(Box::new(crate::fence::Fenced {
                method: http::Method::PATCH,
                path: "/apis/apps/v1/namespaces/a/deployments/b".into(),
            })),
        };
        assert!(fenced.is_fenced());
        assert_eq!(fenced.kind(), "fenced");
        let quota = ReconcileError::Api {
            action: "create Deployment a/b".into(),
            source: kube::Error::Api(
                kube::core::Status::failure(
                    "deployments.apps \"b\" is forbidden: exceeded quota: q",
                    "Forbidden",
                )
                .with_code(403)
                .boxed(),
            ),
        };
        assert!(!quota.is_fenced());
        let f = quota.failure();
        assert_eq!(f.reason, "Forbidden");
        assert!(f.permanent);
        assert!(f.message.contains("exceeded quota"), "{}", f.message);
        assert!(
            f.message.starts_with("create Deployment a/b"),
            "{}",
            f.message
        );
    }
}
