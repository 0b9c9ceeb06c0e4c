//! The controller: for each HectorPlugin, resolve its configuration, apply the objects that
//! run it, tell the prober which endpoints to probe, and write its status. Level-triggered:
//! every run starts from the observed state (watch caches), so running it again changes
//! nothing, and a deleted or edited child comes back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{broadcast, mpsc, watch};

use crate::apply::{FIELD_MANAGER, apply};
use crate::build::{self, BuildError, PLUGIN_LABEL, Settings};
use crate::config::{ConfigError, ResolvedConfig, resolve};
use crate::crd::{HectorPlugin, HectorPluginStatus};
use crate::index::{Facts, PluginKey};
use crate::metrics::Metrics;
use crate::probe::{Identity, ProbeSpec, Prober};
use crate::publish;
use crate::status::{self, ConfigVerdict, Inputs, Rollout};

/// Label on everything the operator writes, so its watches see only its own objects.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=hector-operator";
/// How often a plugin is reconciled with nothing happening (no writes when nothing changed).
const RESYNC: Duration = Duration::from_secs(300);
/// How often the publisher re-renders every namespace with nothing happening.
const PUBLISH_RESYNC: Duration = Duration::from_secs(60);

/// What every scope shares.
pub struct Shared {
    /// API client.
    pub client: Client,
    /// Builder settings.
    pub settings: Settings,
    /// Name of the endpoints ConfigMap in each namespace.
    pub configmap: String,
    /// Path of the remote-plugin executable written into `plugins.yaml`.
    pub remote_path: String,
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
}

/// The namespaces one controller covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// One namespace.
    Namespace(String),
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::All => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }

    fn covers(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => ns == namespace,
        }
    }
}

/// Per-scope context of a reconcile: shared parts plus this scope's watch caches.
pub struct Ctx {
    shared: Arc<Shared>,
    plugins: Store<HectorPlugin>,
    pods: Store<Pod>,
    secrets: Store<PartialObjectMeta<Secret>>,
    deployments: Store<Deployment>,
    services: Store<Service>,
    configmaps: Store<ConfigMap>,
    publish: mpsc::UnboundedSender<String>,
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
}

impl ReconcileError {
    fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Api { .. } => "api_error",
            ReconcileError::Build(_) => "build_error",
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

/// The configuration verdict, with the resolved configuration when valid.
fn resolve_config(
    plugin: &HectorPlugin,
    secrets: &Store<PartialObjectMeta<Secret>>,
) -> (ConfigVerdict, Option<ResolvedConfig>) {
    let spec = &plugin.spec;
    let ns = plugin.namespace().unwrap_or_default();
    let mut resolved = match resolve(
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
    let mut missing = BTreeSet::new();
    for (config_key, secret) in &resolved.secrets {
        match secrets.get(&ObjectRef::new(&secret.name).within(&ns)) {
            Some(meta) => {
                resolved.secret_versions.insert(
                    secret.name.clone(),
                    meta.resource_version().unwrap_or_default(),
                );
            }
            None => {
                missing.insert(format!(
                    "Secret {:?} (for config key {config_key:?}) not found in namespace {ns}",
                    secret.name
                ));
            }
        }
    }
    if !missing.is_empty() {
        let text: Vec<String> = missing.into_iter().collect();
        return (
            ConfigVerdict::Invalid("SecretNotFound", text.join("; ")),
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

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `ip:port`, with IPv6 addresses in brackets.
fn endpoint_address(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Whether a Pod's containers passed their startup probes (its endpoint can be probed).
fn pod_started(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.started == Some(true)))
}

/// Why a Pod's containers are not running, e.g. `plugin: CrashLoopBackOff`.
fn waiting_reasons(p: &Pod) -> Vec<String> {
    let Some(status) = &p.status else {
        return vec![];
    };
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    statuses
        .filter_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            // Normal steps of a starting Pod are not worth reporting.
            if matches!(reason, "ContainerCreating" | "PodInitializing") {
                return None;
            }
            Some(format!("{}: {reason}", c.name))
        })
        .collect()
}

impl Ctx {
    /// Waits until every watch cache has its first full list (instant afterwards).
    async fn caches_ready(&self) -> bool {
        self.pods.wait_until_ready().await.is_ok()
            && self.secrets.wait_until_ready().await.is_ok()
            && self.deployments.wait_until_ready().await.is_ok()
            && self.services.wait_until_ready().await.is_ok()
            && self.configmaps.wait_until_ready().await.is_ok()
    }

    fn plugin_pods(&self, plugin: &HectorPlugin) -> Vec<Arc<Pod>> {
        let ns = plugin.namespace();
        let name = plugin.name_any();
        self.pods.state_filter(|p| {
            p.namespace() == ns
                && p.labels().get(PLUGIN_LABEL) == Some(&name)
                && p.metadata.deletion_timestamp.is_none()
        })
    }

    fn rollout(&self, plugin: &HectorPlugin, deployment: Option<&Deployment>) -> Rollout {
        let Some(d) = deployment else {
            return Rollout::NotApplied;
        };
        let pods = self.plugin_pods(plugin);
        let observed = d
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .zip(d.metadata.generation)
            .is_some_and(|(o, g)| o >= g);
        let updated = if observed {
            d.status
                .as_ref()
                .and_then(|s| s.updated_replicas)
                .unwrap_or(0)
        } else {
            0
        };
        let mut waiting: Vec<String> = pods.iter().flat_map(|p| waiting_reasons(p)).collect();
        waiting.sort();
        waiting.dedup();
        Rollout::Pods {
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            updated,
            ready: i32::try_from(pods.iter().filter(|p| pod_ready(p)).count()).unwrap_or(i32::MAX),
            waiting,
        }
    }

    /// Endpoints of the plugin's started Pods, with whether each Pod is Ready.
    fn pod_endpoints(&self, plugin: &HectorPlugin) -> BTreeMap<String, bool> {
        self.plugin_pods(plugin)
            .iter()
            .filter(|p| pod_ready(p) || pod_started(p))
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.as_ref()?;
                Some((endpoint_address(ip, plugin.spec.port), pod_ready(p)))
            })
            .collect()
    }

    async fn record_event(&self, plugin: &HectorPlugin, t: &status::Transition) {
        let event = Event {
            type_: if t.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason.clone(),
            note: Some(format!("{} is {}: {}", t.type_, t.status, t.message)),
            action: t.type_.clone(),
            secondary: None,
        };
        self.shared.metrics.api_write("event");
        if let Err(e) = self
            .shared
            .recorder
            .publish(&event, &plugin.object_ref(&()))
            .await
        {
            tracing::warn!(plugin = %key_of(plugin), error = %e, "cannot record an event");
        }
    }

    /// Applies the plugin's objects; returns the live Deployment (if any) afterwards.
    async fn apply_children(
        &self,
        plugin: &HectorPlugin,
        config: &ResolvedConfig,
    ) -> Result<Option<Deployment>, ReconcileError> {
        let client = &self.shared.client;
        let ns = plugin.namespace().unwrap_or_default();
        let metrics = &self.shared.metrics;

        let cm = build::config_map(plugin, config)?;
        let cm_name = build::config_map_name(plugin);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let live_cm = self.configmaps.get(&ObjectRef::new(&cm_name).within(&ns));
        if apply(&cms, &cm_name, &cm, live_cm.as_deref())
            .await
            .map_err(api_err(format!("apply ConfigMap {ns}/{cm_name}")))?
        {
            metrics.api_write("configmap");
        }

        let name = plugin.name_any();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let live_d = self.deployments.get(&ObjectRef::new(&name).within(&ns));
        let live_s = self.services.get(&ObjectRef::new(&name).within(&ns));
        let mut deployment = live_d.as_deref().cloned();
        match build::deployment(plugin, config, &self.shared.settings)? {
            Some(d) => {
                if apply(&deployments, &name, &d, live_d.as_deref())
                    .await
                    .map_err(api_err(format!("apply Deployment {ns}/{name}")))?
                {
                    metrics.api_write("deployment");
                    tracing::info!(plugin = %key_of(plugin), "applied Deployment");
                    // The cache catches up shortly; until then judge by what we applied.
                    deployment = Some(d);
                }
            }
            None => {
                if live_d.is_some() {
                    self.delete(&deployments, &name, "deployment").await?;
                }
                deployment = None;
            }
        }
        match build::service(plugin)? {
            Some(s) => {
                let wrote = apply(&services, &name, &s, live_s.as_deref())
                    .await
                    .map_err(api_err(format!("apply Service {ns}/{name}")))?;
                if wrote {
                    metrics.api_write("service");
                    tracing::info!(plugin = %key_of(plugin), "applied Service");
                }
            }
            None if live_s.is_some() => self.delete(&services, &name, "service").await?,
            None => {}
        }
        Ok(deployment)
    }

    async fn delete<K>(
        &self,
        api: &Api<K>,
        name: &str,
        resource: &str,
    ) -> Result<(), ReconcileError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.shared.metrics.api_write(resource);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_err(format!("delete {resource} {name}"))(e)),
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
        self.shared.metrics.api_write("status");
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
        let (pod, ready) = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                (p, pod_ready(p) && p.metadata.deletion_timestamp.is_none())
            }
            Ok(watcher::Event::Delete(p)) => (p, false),
            _ => return,
        };
        let (Some(ns), Some(name)) = (pod.namespace(), pod.labels().get(PLUGIN_LABEL)) else {
            return;
        };
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_ref()) else {
            return;
        };
        let Some(plugin) = self.plugins.get(&ObjectRef::new(name).within(&ns)) else {
            return;
        };
        let key = key_of(&plugin);
        if self.shared.prober.index().set_ready(
            &key,
            &endpoint_address(ip, plugin.spec.port),
            ready,
        ) {
            let _ = self.publish.send(ns);
        }
    }

    /// Forgets a deleted plugin: probes stop and its entry leaves the ConfigMap.
    fn forget(&self, plugin: &HectorPlugin) {
        let key = key_of(plugin);
        self.shared.prober.forget(&key);
        self.shared.metrics.set_phase(&key, None);
        self.shared
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let _ = self.publish.send(key.namespace);
    }
}

async fn reconcile(plugin: Arc<HectorPlugin>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_plugin(&plugin, &ctx).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    ctx.shared.metrics.reconciled(label, started.elapsed());
    result
}

async fn reconcile_plugin(plugin: &HectorPlugin, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let key = key_of(plugin);
    // Judging from half-filled caches would rewrite objects and status that are fine.
    if !ctx.caches_ready().await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if plugin.metadata.deletion_timestamp.is_some() {
        ctx.forget(plugin);
        return Ok(Action::await_change());
    }
    let spec = &plugin.spec;
    let (verdict, resolved) = resolve_config(plugin, &ctx.secrets);
    let external = spec.endpoint.is_some();

    let deployment = match &resolved {
        Some(config) => ctx.apply_children(plugin, config).await?,
        // Invalid configuration: nothing new is applied; what already runs keeps running.
        None => ctx
            .deployments
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .as_deref()
            .cloned(),
    };
    let rollout = if external {
        Rollout::External
    } else {
        ctx.rollout(plugin, deployment.as_ref())
    };
    let wanted = match &spec.endpoint {
        Some(endpoint) => BTreeMap::from([(endpoint.clone(), true)]),
        None => ctx.pod_endpoints(plugin),
    };

    let current = plugin.status.clone();
    let carried: Vec<String> = current
        .as_ref()
        .map(|s| s.endpoints.clone())
        .unwrap_or_default();
    let carried_facts = current
        .as_ref()
        .and_then(|s| s.plugin.as_ref())
        .map(Facts::from_status);
    let probe_spec = ProbeSpec {
        identity: Identity {
            name: spec.manifest.name.clone(),
            version: spec.manifest.version.clone(),
            plugin_type: spec.manifest.plugin_type.into(),
        },
        period: Duration::from_secs(u64::try_from(spec.health.period_seconds).unwrap_or(10)),
        timeout: Duration::from_secs(u64::try_from(spec.health.timeout_seconds).unwrap_or(2)),
    };
    let threshold = u32::try_from(spec.health.failure_threshold).unwrap_or(3);
    ctx.shared.prober.set(
        &key,
        probe_spec,
        threshold,
        &wanted,
        &carried,
        carried_facts,
    );

    let state = ctx.shared.prober.index().get(&key);
    let inputs = Inputs {
        generation: plugin.metadata.generation,
        config: verdict,
        rollout,
        probes: state.as_ref(),
        address: Some(publish::address(plugin)),
        configmap: &ctx.shared.configmap,
    };
    let desired = status::compute(&inputs, current.as_ref(), Timestamp::now());
    ctx.shared.metrics.set_phase(&key, desired.phase);
    // The publisher renders from the same index, in its own task: agents learn of a change
    // without waiting for the status write and its Events.
    let _ = ctx.publish.send(key.namespace.clone());
    let already_written = ctx
        .shared
        .written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        == Some(&desired);
    if current.as_ref() != Some(&desired) && !already_written {
        let baseline = ctx
            .shared
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
            .or(current.clone());
        ctx.write_status(plugin, &desired).await?;
        tracing::info!(plugin = %key, phase = ?desired.phase, endpoints = desired.endpoints.len(), "status updated");
        ctx.shared
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), desired.clone());
        for t in status::transitions(baseline.as_ref(), &desired) {
            ctx.record_event(plugin, &t).await;
        }
    }
    Ok(Action::requeue(RESYNC))
}

fn error_policy(plugin: Arc<HectorPlugin>, error: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(plugin = %key_of(&plugin), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Writes the endpoints ConfigMap of every namespace it is told about, when its content
/// changes. The only writer of those ConfigMaps.
async fn publish_loop(
    ctx: Arc<Ctx>,
    scope: Scope,
    mut dirty: mpsc::UnboundedReceiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    if ctx.plugins.wait_until_ready().await.is_err()
        || ctx.configmaps.wait_until_ready().await.is_err()
    {
        return;
    }
    let mut written = publish::WrittenByNamespace::new();
    let mut tick = tokio::time::interval(PUBLISH_RESYNC);
    loop {
        let mut namespaces = BTreeSet::new();
        tokio::select! {
            _ = shutdown.changed() => return,
            ns = dirty.recv() => match ns {
                Some(ns) => { namespaces.insert(ns); }
                None => return,
            },
            _ = tick.tick() => {
                namespaces.extend(ctx.plugins.state().iter().filter_map(|p| p.namespace()));
                namespaces.extend(
                    ctx.configmaps
                        .state()
                        .iter()
                        .filter(|c| c.name_any() == ctx.shared.configmap)
                        .filter_map(|c| c.namespace()),
                );
                collect_garbage(&ctx, &scope);
            }
        }
        while let Ok(ns) = dirty.try_recv() {
            namespaces.insert(ns);
        }
        for ns in namespaces {
            if let Err(e) = publish_namespace(&ctx, &ns, &mut written).await {
                tracing::warn!(namespace = %ns, error = %e, "cannot write the endpoints ConfigMap; retrying");
                let retry = ctx.publish.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let _ = retry.send(ns);
                });
            }
        }
    }
}

/// Stops probes of plugins that vanished while a watch was down (no delete event seen).
fn collect_garbage(ctx: &Ctx, scope: &Scope) {
    let present: BTreeSet<PluginKey> = ctx.plugins.state().iter().map(|p| key_of(p)).collect();
    let known = ctx.shared.prober.index().keys();
    for key in known {
        if scope.covers(&key.namespace) && !present.contains(&key) {
            ctx.shared.prober.forget(&key);
        }
    }
}

async fn publish_namespace(
    ctx: &Ctx,
    ns: &str,
    written: &mut publish::WrittenByNamespace,
) -> Result<(), kube::Error> {
    let name = &ctx.shared.configmap;
    let plugins: Vec<Arc<HectorPlugin>> = ctx
        .plugins
        .state_filter(|p| p.namespace().as_deref() == Some(ns));
    let states: Vec<_> = {
        let index = ctx.shared.prober.index();
        plugins.iter().map(|p| index.get(&key_of(p))).collect()
    };
    let current = ctx.configmaps.get(&ObjectRef::new(name).within(ns));
    if plugins.is_empty() && current.is_none() {
        return Ok(());
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
    let file = publish::render(ns, &sources, previous.as_ref(), Timestamp::now());
    let data = publish::configmap_data(&file, &ctx.shared.remote_path);
    let published: usize = file.plugins.values().map(|p| p.endpoints.len()).sum();
    ctx.shared.metrics.set_published(ns, published);
    let empty = BTreeMap::new();
    let live = current.as_deref().map(|c| {
        (
            c.metadata.resource_version.as_deref().unwrap_or_default(),
            c.data.as_ref().unwrap_or(&empty),
        )
    });
    if !publish::needs_write(&data, live, written.get_mut(ns)) {
        return Ok(());
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "hector-operator".to_string(),
                ),
                (
                    "app.kubernetes.io/component".to_string(),
                    "plugin-endpoints".to_string(),
                ),
            ])),
            ..Default::default()
        },
        data: Some(data.clone()),
        ..Default::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.shared.client.clone(), ns);
    ctx.shared.metrics.api_write("configmap");
    let after = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
    ctx.shared.metrics.configmap_written(ns);
    tracing::info!(namespace = %ns, configmap = %name, plugins = file.plugins.len(), endpoints = published, "published endpoints");
    written.insert(
        ns.to_string(),
        publish::Written {
            before: current.and_then(|c| c.metadata.resource_version.clone()),
            after: after.metadata.resource_version.unwrap_or_default(),
            data,
            caught_up: false,
        },
    );
    Ok(())
}

/// Runs the controller and the publisher for one scope until `shutdown` turns true.
pub async fn run_scope(shared: Arc<Shared>, scope: Scope, shutdown: watch::Receiver<bool>) {
    let client = shared.client.clone();
    let managed = watcher::Config::default().labels(MANAGED_BY);
    let (publish_tx, publish_rx) = mpsc::unbounded_channel();

    let (plugins, plugins_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let (secrets, secrets_writer) = reflector::store();
    let (deployments, deployments_writer) = reflector::store();
    let (services, services_writer) = reflector::store();
    let (configmaps, configmaps_writer) = reflector::store();
    let ctx = Arc::new(Ctx {
        shared: Arc::clone(&shared),
        plugins: plugins.clone(),
        pods,
        secrets,
        deployments,
        services,
        configmaps,
        publish: publish_tx,
    });

    let forget_ctx = Arc::clone(&ctx);
    let plugin_stream = watcher(
        scope.api::<HectorPlugin>(&client),
        watcher::Config::default(),
    )
    .default_backoff()
    .inspect(move |event| {
        if let Ok(watcher::Event::Delete(plugin)) = event {
            tracing::info!(plugin = %key_of(plugin), "HectorPlugin deleted");
            forget_ctx.forget(plugin);
        }
    })
    .reflect(plugins_writer)
    .applied_objects();
    let ready_ctx = Arc::clone(&ctx);
    let pod_stream = watcher(
        scope.api::<Pod>(&client),
        watcher::Config::default().labels(PLUGIN_LABEL),
    )
    .default_backoff()
    .reflect(pods_writer)
    .inspect(move |event| ready_ctx.pod_readiness(event))
    .touched_objects();
    // Metadata only: secret values never enter the operator's memory.
    let secret_stream = watcher(
        scope.api::<PartialObjectMeta<Secret>>(&client),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(secrets_writer)
    .touched_objects();
    let deployment_stream = watcher(scope.api::<Deployment>(&client), managed.clone())
        .default_backoff()
        .reflect(deployments_writer)
        .touched_objects();
    let service_stream = watcher(scope.api::<Service>(&client), managed.clone())
        .default_backoff()
        .reflect(services_writer)
        .touched_objects();
    let endpoints_name = shared.configmap.clone();
    let cm_publish = ctx.publish.clone();
    let configmap_stream = watcher(scope.api::<ConfigMap>(&client), managed)
        .default_backoff()
        .reflect(configmaps_writer)
        .touched_objects()
        .inspect(move |cm| {
            // Someone else changed or deleted the endpoints ConfigMap: render it again.
            if let Ok(cm) = cm
                && cm.name_any() == endpoints_name
                && let Some(ns) = cm.namespace()
            {
                let _ = cm_publish.send(ns);
            }
        });

    let mapper_plugins = plugins.clone();
    let scope_for_trigger = scope.clone();
    let trigger =
        tokio_stream_wrapper(shared.changes.subscribe()).filter_map(move |key| {
            let in_scope = scope_for_trigger.covers(&key.namespace);
            async move {
                in_scope.then(|| ObjectRef::<HectorPlugin>::new(&key.name).within(&key.namespace))
            }
        });

    let mut stop = shutdown.clone();
    let controller = Controller::for_stream(plugin_stream, plugins.clone())
        .owns_stream(deployment_stream)
        .owns_stream(service_stream)
        .owns_stream(configmap_stream)
        .watches_stream(pod_stream, |pod: Pod| {
            let ns = pod.namespace()?;
            let name = pod.labels().get(PLUGIN_LABEL)?.clone();
            Some(ObjectRef::new(&name).within(&ns))
        })
        .watches_stream(secret_stream, move |secret: PartialObjectMeta<Secret>| {
            let ns = secret.namespace();
            let name = secret.name_any();
            mapper_plugins
                .state()
                .iter()
                .filter(|p| {
                    p.namespace() == ns
                        && p.spec
                            .secret_config
                            .iter()
                            .any(|s| s.secret_key_ref.name == name)
                })
                .map(|p| ObjectRef::from_obj(&**p))
                .collect::<Vec<_>>()
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
    tracing::info!(?scope, "controller started");
    futures::join!(controller, publisher);
}

/// A broadcast receiver as a stream; a lagging receiver just skips ahead (the periodic
/// resync covers what it missed).
fn tokio_stream_wrapper<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(v) => return Some((v, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
