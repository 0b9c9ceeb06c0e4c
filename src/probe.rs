//! The prober: one task per distinct address probed ([`Target`]), each with its own reused
//! gRPC channel, so a slow plugin never delays another and a thousand plugins naming one
//! address cost one connection and one probe per period. Every (jittered) period it asks the
//! standard `grpc.health.v1` health, the plugin's own `Health` RPC and `GetManifest`, and its
//! model or embedder facts when they may have changed (see [`FactsSchedule`]); the reading is
//! judged for each plugin naming the target (identity differs per plugin) and goes into the
//! [`Index`], and a change of what others see, facts included, is announced on the change
//! channel (which wakes the reconciler and the publisher).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hector_plugin_sdk::endpoints::{EmbedderFacts, ModelFacts};
use hector_plugin_sdk::net::TcpKeepalive;
use hector_plugin_sdk::proto::embedder_provider_client::EmbedderProviderClient;
use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
use hector_plugin_sdk::proto::{Empty, ManifestResponse};
use hector_plugin_sdk::tls::{Connector, Pin, PinVerifier, client_config_for, pod_uri};
use hector_plugin_sdk::token::TokenSource;
use hector_plugin_sdk::{LifecycleClient, PluginType, SdkError};
use tokio::sync::{Notify, broadcast};
use tokio::task::AbortHandle;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::index::{EndpointChanges, Facts, FailureKind, Index, PluginKey, ProbeOutcome, Stage};
use crate::metrics::Metrics;

/// What a plugin must report about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// Plugin type.
    pub plugin_type: PluginType,
}

/// How to probe one plugin's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Expected identity.
    pub identity: Identity,
    /// Time between probes.
    pub period: Duration,
    /// Time one probe RPC may take.
    pub timeout: Duration,
    /// Served by the launcher over TLS with a certificate naming its Pod, to callers with a
    /// token: the prober verifies the certificate names the Pod it expects, reports its
    /// fingerprint, and sends the operator's token. External endpoints get neither TLS nor
    /// the token (which every launcher accepts, so it must not go anywhere else).
    pub secure: bool,
    /// The UID of the Pod behind each endpoint (`ip:port`), which its certificate must name.
    pub pod_uids: BTreeMap<String, String>,
}

/// Checks what a plugin reports against what the resource says. Fields the plugin leaves
/// empty are not reported, never wrong: Hector's own Go SDK answers with an empty manifest.
pub fn check_identity(reported: &ManifestResponse, expected: &Identity) -> Result<(), String> {
    let mut wrong = Vec::new();
    if !reported.name.is_empty() && reported.name != expected.name {
        wrong.push(format!(
            "name {:?} (expected {:?})",
            reported.name, expected.name
        ));
    }
    let bare = |v: &str| v.trim_start_matches('v').to_string();
    if !reported.version.is_empty() && bare(&reported.version) != bare(&expected.version) {
        wrong.push(format!(
            "version {:?} (expected {:?})",
            reported.version, expected.version
        ));
    }
    if !reported.r#type.is_empty() && reported.r#type != expected.plugin_type.as_str() {
        wrong.push(format!(
            "type {:?} (expected {:?})",
            reported.r#type,
            expected.plugin_type.as_str()
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("the plugin reports {}", wrong.join(", ")))
    }
}

/// The least time a probe's connection may take. TCP sends its first SYN again after one
/// second: a shorter limit turns one dropped SYN into a failed probe. A Pod that has just
/// started — a new operator leader — has its first SYNs dropped by NetworkPolicy enforcers
/// until its IP has reached them through the API server.
pub const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 keepalive of a probe channel, idle or not: a PING after 30 s without anything read,
/// closed when unanswered for 10 s, so that a cached channel whose peer vanished without
/// closing reconnects rather than failing every later probe on a dead connection. Probes
/// less than two minutes apart keep it under the three PINGs without an answer that gRPC
/// servers (grpc-go, gRPC core) allow; past that, a server may close the idle channel, which
/// the next probe reopens.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A probe's channel and whether it has connected: a first probe starts over on a new
/// connection only while the connect is still under way (see [`Prober::read_new`]).
pub struct Probing {
    channel: Channel,
    connected: Arc<AtomicBool>,
}

impl Probing {
    /// A channel to `address` that connects on first use and reconnects by itself; with
    /// `tls`, over TLS checked by that verifier. Sockets get the TCP keepalive of every
    /// plugin connection ([`TcpKeepalive`]). Notes when a connection is made.
    fn new(
        address: &str,
        timeout: Duration,
        tls: Option<Arc<PinVerifier>>,
    ) -> Result<Self, String> {
        let connected = Arc::new(AtomicBool::new(false));
        let channel = marked_channel(address, timeout, tls, Arc::clone(&connected))?;
        Ok(Self { channel, connected })
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Sets `connected` once its connector has made a connection.
#[derive(Clone)]
struct Marking<C> {
    inner: C,
    connected: Arc<AtomicBool>,
}

impl<C> tower::Service<http::Uri> for Marking<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
    C::Error: Send + 'static,
{
    type Response = C::Response;
    type Error = C::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, C::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), C::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let made = self.inner.call(uri);
        let connected = Arc::clone(&self.connected);
        Box::pin(async move {
            let made = made.await;
            if made.is_ok() {
                connected.store(true, Ordering::Relaxed);
            }
            made
        })
    }
}

fn marked_channel(
    address: &str,
    timeout: Duration,
    tls: Option<Arc<PinVerifier>>,
    connected: Arc<AtomicBool>,
) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("bad address {address:?}: {e}"))
        .map(|e| {
            let e = e
                .connect_timeout(timeout.max(MIN_CONNECT_TIMEOUT))
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            match tls {
                Some(verifier) => e.connect_with_connector_lazy(Marking {
                    inner: Connector::new(client_config_for(verifier)),
                    connected,
                }),
                None => e.connect_with_connector_lazy(Marking {
                    inner: TcpKeepalive::default().connector(None),
                    connected,
                }),
            }
        })
}

/// The verifier for a launcher endpoint: any certificate whose signature verifies and that
/// names `pod_uid`, so that an address now held by another Pod is not taken for this one.
pub fn launcher_verifier(pod_uid: Option<&str>) -> Arc<PinVerifier> {
    PinVerifier::new(Pin::Any {
        expect_uri_san: pod_uid.map(pod_uri),
    })
}

fn sdk_reason(e: &SdkError) -> (FailureKind, String) {
    match e {
        SdkError::Rpc { status, .. } if status.code() == Code::Unavailable => {
            (FailureKind::Unreachable, status.message().to_string())
        }
        other => (FailureKind::Unreachable, other.to_string()),
    }
}

/// What one probe round of a target found, before it is judged for each plugin naming it.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// No answer, a failed RPC, or the plugin reports itself unhealthy.
    Failed(FailureKind, String),
    /// Healthy; what it reports about itself, and its facts when they were read.
    Answered {
        /// GetManifest's answer (empty when the plugin does not implement it).
        manifest: Box<ManifestResponse>,
        /// Name, version and model or embedder facts, when asked for.
        facts: Option<Facts>,
    },
}

impl Reading {
    /// The outcome for a plugin expecting `identity`: the same answer may be right for one
    /// plugin and the wrong plugin for another naming the same address.
    pub fn judge(&self, identity: &Identity) -> ProbeOutcome {
        match self {
            Reading::Failed(kind, message) => ProbeOutcome::Failed(*kind, message.clone()),
            Reading::Answered { manifest, facts } => match check_identity(manifest, identity) {
                Err(message) => ProbeOutcome::Failed(FailureKind::IdentityMismatch, message),
                Ok(()) => ProbeOutcome::Healthy(facts.clone()),
            },
        }
    }

    fn healthy(&self) -> bool {
        matches!(self, Reading::Answered { .. })
    }
}

/// Probes `channel` once as a plugin of `plugin_type`, each RPC limited to `limit`, sending
/// `token` with every plugin call; returns what it found and how many RPCs it sent.
pub async fn read(
    channel: &Channel,
    plugin_type: PluginType,
    limit: Duration,
    want_facts: bool,
    token: TokenSource,
) -> (Reading, u64) {
    let mut rpcs = 0;
    let reading = read_counting(channel, plugin_type, limit, want_facts, token, &mut rpcs).await;
    (reading, rpcs)
}

async fn read_counting(
    channel: &Channel,
    plugin_type: PluginType,
    limit: Duration,
    want_facts: bool,
    token: TokenSource,
    rpcs: &mut u64,
) -> Reading {
    let timed_out = |what: &str| {
        Reading::Failed(
            FailureKind::Unreachable,
            format!("{what} timed out after {limit:?}"),
        )
    };

    // The three RPCs go out together on the one connection: their frames share writes and
    // reads, so a round costs about one round trip of syscalls and wakeups instead of three.
    // They are still judged in order: when the plugin's own Health fails, its message is the
    // reason to report.
    let lifecycle = LifecycleClient::new(channel.clone(), plugin_type).with_token(token.clone());
    let authorize = token;
    let mut health = HealthClient::new(channel.clone());
    let check = HealthCheckRequest {
        service: String::new(),
    };
    *rpcs += 3;
    let (own, standard, manifest) = tokio::join!(
        tokio::time::timeout(limit, lifecycle.health()),
        tokio::time::timeout(limit, health.check(check)),
        tokio::time::timeout(limit, lifecycle.manifest()),
    );
    match own {
        Err(_) => return timed_out("Health"),
        Ok(Err(e)) => {
            let (kind, message) = sdk_reason(&e);
            return Reading::Failed(kind, message);
        }
        Ok(Ok(h)) if !h.healthy => {
            let message = if h.message.is_empty() {
                "the plugin reports unhealthy".to_string()
            } else {
                h.message
            };
            return Reading::Failed(FailureKind::Unhealthy, message);
        }
        Ok(Ok(_)) => {}
    }
    match standard {
        Err(_) => return timed_out("grpc.health.v1 Check"),
        Ok(Ok(r)) => {
            let status = r.into_inner().status;
            if status != ServingStatus::Serving as i32 {
                let name = ServingStatus::try_from(status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN");
                return Reading::Failed(
                    FailureKind::Unhealthy,
                    format!("grpc.health.v1 reports {name}"),
                );
            }
        }
        // A plugin without grpc.health.v1 is judged by its own Health RPC alone.
        Ok(Err(s)) if s.code() == Code::Unimplemented => {}
        Ok(Err(s)) => {
            return Reading::Failed(
                FailureKind::Unreachable,
                format!("grpc.health.v1 Check: {}", s.message()),
            );
        }
    }
    let manifest = match manifest {
        Err(_) => return timed_out("GetManifest"),
        // A plugin that does not implement GetManifest reports nothing, like an empty answer.
        Ok(Err(SdkError::Rpc { status, .. })) if status.code() == Code::Unimplemented => {
            ManifestResponse::default()
        }
        Ok(Err(e)) => {
            let (kind, message) = sdk_reason(&e);
            return Reading::Failed(kind, message);
        }
        Ok(Ok(m)) => m,
    };
    if !want_facts {
        return Reading::Answered {
            manifest: Box::new(manifest),
            facts: None,
        };
    }
    let mut facts = Facts {
        name: (!manifest.name.is_empty()).then(|| manifest.name.clone()),
        version: (!manifest.version.is_empty()).then(|| manifest.version.clone()),
        ..Default::default()
    };
    // Facts are a courtesy: a plugin that does not answer is still healthy.
    match plugin_type {
        PluginType::LlmProvider => {
            let mut llm = LlmProviderClient::with_interceptor(channel.clone(), authorize);
            *rpcs += 1;
            if let Ok(Ok(info)) = tokio::time::timeout(limit, llm.get_model_info(Empty {})).await {
                let info = info.into_inner();
                facts.model = Some(ModelFacts {
                    model_name: info.model_name,
                    max_tokens: (info.max_tokens > 0).then_some(info.max_tokens),
                });
            }
        }
        PluginType::EmbedderProvider => {
            let mut embedder = EmbedderProviderClient::with_interceptor(channel.clone(), authorize);
            *rpcs += 1;
            if let Ok(Ok(info)) =
                tokio::time::timeout(limit, embedder.get_embedder_info(Empty {})).await
            {
                let info = info.into_inner();
                facts.embedder = Some(EmbedderFacts {
                    model_name: info.model_name,
                    dimension: info.dimension,
                });
            }
        }
        _ => {}
    }
    Reading::Answered {
        manifest: Box::new(manifest),
        facts: Some(facts),
    }
}

/// Probes `channel` once for one plugin, sending `token` with every plugin call.
pub async fn probe_once(
    channel: &Channel,
    spec: &ProbeSpec,
    want_facts: bool,
    token: TokenSource,
) -> ProbeOutcome {
    let (reading, _) = read(
        channel,
        spec.identity.plugin_type,
        spec.timeout,
        want_facts,
        token,
    )
    .await;
    reading.judge(&spec.identity)
}

/// A healthy endpoint reads its facts again after this many probes without: slow, since
/// facts change only with the plugin's configuration, which mostly rolls new Pods (read at
/// once), while a plugin reloading in place is still caught within minutes (30 probes are
/// 5 minutes at the default period of 10 s).
pub const FACTS_REFRESH_PROBES: u32 = 30;

/// When a target's probes read the plugin's facts (GetManifest's name and version,
/// GetModelInfo or GetEmbedderInfo): while a plugin naming it has none known, on the first
/// healthy probe (a new target, or one back after failing, e.g. restarted with another
/// configuration), and then every [`FACTS_REFRESH_PROBES`] healthy probes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FactsSchedule {
    /// Whether the last probe found the target healthy.
    healthy: bool,
    /// Healthy probes since the facts were last read.
    since_read: u32,
}

impl FactsSchedule {
    /// Whether the next probe should read facts; `known`: every plugin naming the target has
    /// its facts.
    pub fn want(&self, known: bool) -> bool {
        !known || !self.healthy || self.since_read + 1 >= FACTS_REFRESH_PROBES
    }

    /// Notes whether a probe found the target healthy; `asked`: it was told to read facts.
    pub fn record(&mut self, healthy: bool, asked: bool) {
        if healthy {
            self.healthy = true;
            self.since_read = if asked {
                0
            } else {
                self.since_read.saturating_add(1)
            };
        } else {
            self.healthy = false;
        }
    }
}

/// How the prober reaches an address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain gRPC without a token: an external endpoint (`spec.endpoint`).
    Plain,
    /// TLS to a launcher whose certificate names the Pod (by UID, when known), with the
    /// operator's token.
    Launcher(Option<String>),
}

/// What the prober probes: one address, reached one way, asked as one plugin type. Every
/// plugin endpoint that names the same target shares its connection and its probes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    /// Plain or TLS to a launcher.
    pub transport: Transport,
    /// The plugin type whose Health RPC is asked.
    pub plugin_type: PluginType,
}

impl Target {
    /// The target of `address` for a plugin probed as `spec` says.
    pub fn of(address: &str, spec: &ProbeSpec) -> Self {
        Target {
            address: address.to_string(),
            transport: if spec.secure {
                Transport::Launcher(spec.pod_uids.get(address).cloned())
            } else {
                Transport::Plain
            },
            plugin_type: spec.identity.plugin_type,
        }
    }
}

/// How long the first read of a target never found healthy may take before it starts over on
/// a new connection (see [`Prober::read_new`]); it doubles each time. A connect and a Health
/// RPC within a cluster take milliseconds; a dropped SYN is sent again only after a second.
const FIRST_HEDGE: Duration = Duration::from_millis(250);

/// The first wait before asking a target never found healthy again within one period (see
/// [`Prober::run`]); it doubles on each retry.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest wait between reads of a target behind a starting Pod. The kubelet's startup
/// probe asks every 2 s (the Pod template's startup period) and the Pod turns Ready right
/// after it passes; found healthy first, the Pod is published on its
/// Ready event alone, without a probe at Ready on the way. A starting Pod's refusals are not
/// counted, and starting ends with the startup window, so the extra reads are bounded.
const STARTING_RETRY: Duration = Duration::from_millis(200);

/// How long to wait before reading a target never found healthy again: `retry` (which
/// doubles), but never more than [`STARTING_RETRY`] while its Pod is starting.
fn retry_wait(retry: Duration, starting: bool) -> Duration {
    if starting {
        retry.min(STARTING_RETRY)
    } else {
        retry
    }
}

/// `period` stretched or shrunk by up to a tenth at random, so that targets started together
/// (a new leader, a bulk apply) spread their probes over the period instead of in bursts.
pub fn jittered(period: Duration) -> Duration {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    // The top 53 bits, as a fraction in [0, 1).
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    period.mul_f64(0.9 + 0.2 * fraction)
}

/// One probed target: the plugin endpoints naming it, its last reading (for plugins that
/// start naming it between two probes), and its task.
struct TargetState {
    subscribers: HashSet<PluginKey>,
    /// The last reading, with the last facts read carried into it.
    last: Option<Reading>,
    /// Cuts the wait before the next probe short (see [`Prober::probe_soon`]).
    wake: Arc<Notify>,
    task: AbortHandle,
}

#[derive(Default)]
struct Targets {
    live: HashMap<Target, TargetState>,
    /// The target each plugin endpoint (plugin, address) is probed through.
    of: HashMap<(PluginKey, String), Target>,
}

impl Targets {
    /// Takes `key`'s endpoint at `address` off its target; the target stops with its last
    /// subscriber.
    fn unsubscribe(&mut self, key: &PluginKey, address: &str) {
        let Some(target) = self.of.remove(&(key.clone(), address.to_string())) else {
            return;
        };
        if let Some(state) = self.live.get_mut(&target) {
            state.subscribers.remove(key);
            if state.subscribers.is_empty() {
                state.task.abort();
                self.live.remove(&target);
            }
        }
    }
}

/// Runs and stops the probes, one task per distinct [`Target`], whatever the number of
/// plugins naming it; each round's reading is judged and recorded for every one of them.
pub struct Prober {
    index: Arc<Mutex<Index>>,
    specs: Mutex<HashMap<PluginKey, Arc<ProbeSpec>>>,
    targets: Mutex<Targets>,
    /// The operator's own token, for launchers that check callers.
    token: TokenSource,
    changes: broadcast::Sender<PluginKey>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop probing; the data is still consistent per call.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Prober {
    /// A prober writing into `index` and announcing changes on `changes`.
    pub fn new(
        index: Arc<Mutex<Index>>,
        changes: broadcast::Sender<PluginKey>,
        metrics: Arc<Metrics>,
        token: TokenSource,
    ) -> Arc<Self> {
        Arc::new(Self {
            index,
            specs: Mutex::default(),
            targets: Mutex::default(),
            changes,
            metrics,
            token,
        })
    }

    /// The shared index.
    pub fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Number of targets probed (one connection each).
    pub fn target_count(&self) -> usize {
        lock(&self.targets).live.len()
    }

    /// Sets the endpoints of `key` and how to probe them. An endpoint naming a target
    /// already probed gets that target's last reading at once; a new target is probed at once.
    /// Returns whether endpoints were added or removed.
    pub fn set(
        self: &Arc<Self>,
        key: &PluginKey,
        spec: ProbeSpec,
        threshold: u32,
        wanted: &BTreeMap<String, Stage>,
        carried: &[String],
        facts: Option<Facts>,
    ) -> bool {
        let spec = Arc::new(spec);
        lock(&self.specs).insert(key.clone(), Arc::clone(&spec));
        let EndpointChanges { added, removed } =
            lock(&self.index).set_endpoints(key, wanted, threshold, carried, facts);
        let mut late = Vec::new();
        {
            let mut targets = lock(&self.targets);
            for address in &removed {
                targets.unsubscribe(key, address);
            }
            for address in wanted.keys() {
                // An address now held by another Pod (same IP, new Pod) or asked as another
                // type is another target.
                let target = Target::of(address, &spec);
                let endpoint = (key.clone(), address.clone());
                if targets.of.get(&endpoint) == Some(&target) {
                    continue;
                }
                targets.unsubscribe(key, address);
                targets.of.insert(endpoint, target.clone());
                match targets.live.get_mut(&target) {
                    Some(state) => {
                        state.subscribers.insert(key.clone());
                        if let Some(reading) = &state.last {
                            late.push((address.clone(), reading.clone()));
                        }
                    }
                    None => {
                        let me = Arc::clone(self);
                        let task_target = target.clone();
                        let wake = Arc::new(Notify::new());
                        let task_wake = Arc::clone(&wake);
                        let handle =
                            tokio::spawn(async move { me.run(task_target, task_wake).await });
                        targets.live.insert(
                            target,
                            TargetState {
                                subscribers: HashSet::from([key.clone()]),
                                last: None,
                                wake,
                                task: handle.abort_handle(),
                            },
                        );
                    }
                }
            }
            self.metrics.set_probe_targets(targets.live.len());
        }
        for (address, reading) in late {
            self.record(key, &address, &reading.judge(&spec.identity));
        }
        !added.is_empty() || !removed.is_empty()
    }

    /// Probes the target behind `key`'s endpoint at `address` now instead of at the end of
    /// its period: its Pod just turned Ready, so the plugin very likely answers now, and
    /// publication should not wait a period for it.
    pub fn probe_soon(&self, key: &PluginKey, address: &str) {
        let targets = lock(&self.targets);
        if let Some(state) = targets
            .of
            .get(&(key.clone(), address.to_string()))
            .and_then(|t| targets.live.get(t))
        {
            state.wake.notify_one();
        }
    }

    /// Stops probing a deleted plugin and forgets it.
    pub fn forget(&self, key: &PluginKey) {
        lock(&self.specs).remove(key);
        let addresses = lock(&self.index).remove(key);
        let mut targets = lock(&self.targets);
        for address in addresses {
            targets.unsubscribe(key, &address);
        }
        self.metrics.set_probe_targets(targets.live.len());
    }

    /// Stops every probe (shutdown).
    pub fn stop_all(&self) {
        lock(&self.specs).clear();
        let mut targets = lock(&self.targets);
        for (_, state) in targets.live.drain() {
            state.task.abort();
        }
        targets.of.clear();
        self.metrics.set_probe_targets(0);
    }

    /// Whether a Pod behind `target` is starting: its containers run and the kubelet's
    /// startup probe has not passed yet.
    fn starting(&self, target: &Target) -> bool {
        let keys = self.subscriber_keys(target);
        let index = lock(&self.index);
        keys.iter().any(|k| index.is_starting(k, &target.address))
    }

    /// The plugins naming `target` now, with their probe specs.
    fn subscribers(&self, target: &Target) -> Vec<(PluginKey, Arc<ProbeSpec>)> {
        let keys = self.subscriber_keys(target);
        let specs = lock(&self.specs);
        keys.into_iter()
            .filter_map(|k| specs.get(&k).map(|s| (k, Arc::clone(s))))
            .collect()
    }

    /// The plugins naming `target` now.
    fn subscriber_keys(&self, target: &Target) -> Vec<PluginKey> {
        lock(&self.targets)
            .live
            .get(target)
            .map(|s| s.subscribers.iter().cloned().collect())
            .unwrap_or_default()
    }

    async fn run(self: Arc<Self>, target: Target, wake: Arc<Notify>) {
        let verifier = match &target.transport {
            Transport::Launcher(uid) => Some(launcher_verifier(uid.as_deref())),
            Transport::Plain => None,
        };
        let token = match target.transport {
            Transport::Launcher(_) => self.token.clone(),
            Transport::Plain => TokenSource::none(),
        };
        let mut schedule = FactsSchedule::default();
        let mut channel_made = None;
        let mut ever_healthy = false;
        loop {
            let subscribers = self.subscribers(&target);
            let Some(period) = subscribers.iter().map(|(_, s)| s.period).min() else {
                return;
            };
            let limit = subscribers
                .iter()
                .map(|(_, s)| s.timeout)
                .max()
                .unwrap_or(period);
            let make = || Probing::new(&target.address, limit, verifier.clone());
            let channel = match channel_made.take().map_or_else(make, Ok) {
                Ok(c) => channel_made.insert(c),
                Err(message) => {
                    self.fan_out(
                        &target,
                        &Reading::Failed(FailureKind::Unreachable, message),
                        None,
                    );
                    return;
                }
            };
            let known = {
                let index = lock(&self.index);
                subscribers.iter().all(|(k, _)| index.has_facts(k))
            };
            let want_facts = schedule.want(known);
            let round = Instant::now();
            let mut started = round;
            let reading = if ever_healthy {
                self.read_timed(&target, &channel.channel, limit, want_facts, &token)
                    .await
            } else {
                self.read_new(
                    &target,
                    channel,
                    &make,
                    &wake,
                    limit,
                    FIRST_HEDGE,
                    want_facts,
                    &token,
                )
                .await
            };
            let mut healthy =
                self.record_round(&target, reading, want_facts, &verifier, &mut schedule);
            // A target never found healthy yet (a new Service kube-proxy does not route yet, a
            // plugin still starting) is asked again on a short, doubling backoff within its
            // period instead of a whole period later. Failed retries are not recorded: a
            // failure counts once per period, as always; the first healthy answer is.
            let mut retry = FIRST_RETRY;
            loop {
                let wait = retry_wait(retry, self.starting(&target));
                if ever_healthy || healthy || round.elapsed() + wait >= period {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = wake.notified() => {}
                }
                retry = retry.saturating_mul(2);
                started = Instant::now();
                let reading = self
                    .read_new(
                        &target,
                        channel,
                        &make,
                        &wake,
                        limit,
                        FIRST_HEDGE,
                        want_facts,
                        &token,
                    )
                    .await;
                if reading.healthy() {
                    healthy =
                        self.record_round(&target, reading, want_facts, &verifier, &mut schedule);
                }
            }
            ever_healthy |= healthy;
            tokio::select! {
                // Time spent on retries counts towards the period; the last read does not,
                // as before (a slow answer does not make probes back to back).
                () = tokio::time::sleep(jittered(period).saturating_sub(started - round)) => {}
                () = wake.notified() => {}
            }
        }
    }

    /// Probes a target never found healthy yet, starting over on a new connection when the
    /// connect is late or its wake comes (its Pod just turned Ready) before it connected. The connect under way
    /// may be waiting out TCP's one-second retransmission of a first SYN that a NetworkPolicy
    /// enforcer dropped (it learns a new Pod's address through the API server, late, and drops
    /// packets while it rebuilds its rules): a new socket sends a new SYN at once, so the
    /// plugin is found healthy before its Pod turns Ready, and publication does not wait.
    /// The patience doubles from `patience` ([`FIRST_HEDGE`]) until it exceeds `limit`, when
    /// the read's own timeout ends it.
    #[allow(clippy::too_many_arguments)]
    async fn read_new(
        &self,
        target: &Target,
        probing: &mut Probing,
        make: &(dyn Fn() -> Result<Probing, String> + Sync),
        wake: &Notify,
        limit: Duration,
        mut patience: Duration,
        want_facts: bool,
        token: &TokenSource,
    ) -> Reading {
        loop {
            let why = {
                let read = self.read_timed(target, &probing.channel, limit, want_facts, token);
                tokio::pin!(read);
                loop {
                    tokio::select! {
                        reading = &mut read => return reading,
                        // Once connected, a slow answer is the plugin's: a new connection
                        // would not make it faster, so the read goes on.
                        () = wake.notified() => if !probing.connected() {
                            break "woken";
                        },
                        () = tokio::time::sleep(patience) => {
                            patience = patience.saturating_mul(2);
                            if !probing.connected() {
                                break "late";
                            }
                        }
                    }
                }
            };
            if let Ok(fresh) = make() {
                tracing::debug!(address = %target.address, why, "probing a new target on a new connection");
                self.metrics.probe_reconnected();
                *probing = fresh;
            }
        }
    }

    /// Probes `target` once and counts the round in the metrics.
    async fn read_timed(
        &self,
        target: &Target,
        channel: &Channel,
        limit: Duration,
        want_facts: bool,
        token: &TokenSource,
    ) -> Reading {
        let started = Instant::now();
        let (reading, rpcs) = read(
            channel,
            target.plugin_type,
            limit,
            want_facts,
            token.clone(),
        )
        .await;
        self.metrics.observe_probe_round(started.elapsed(), rpcs);
        reading
    }

    /// Records one reading of `target` for every plugin naming it; returns whether it was
    /// healthy.
    fn record_round(
        &self,
        target: &Target,
        reading: Reading,
        want_facts: bool,
        verifier: &Option<Arc<PinVerifier>>,
        schedule: &mut FactsSchedule,
    ) -> bool {
        let healthy = reading.healthy();
        schedule.record(healthy, want_facts);
        let fingerprint = match (&reading, verifier) {
            (Reading::Answered { .. }, Some(v)) => v.accepted(),
            _ => None,
        };
        if let Reading::Failed(kind, message) = &reading {
            tracing::debug!(address = %target.address, reason = kind.reason(), message, "probe failed");
        }
        self.fan_out(target, &reading, fingerprint);
        healthy
    }

    /// Records `reading` for every plugin naming `target` now, and keeps it for those that
    /// start naming it before the next probe.
    fn fan_out(&self, target: &Target, reading: &Reading, fingerprint: Option<String>) {
        {
            let mut targets = lock(&self.targets);
            let Some(state) = targets.live.get_mut(target) else {
                return;
            };
            let carried = match (reading, &state.last) {
                (
                    Reading::Answered {
                        manifest,
                        facts: None,
                    },
                    Some(Reading::Answered { facts, .. }),
                ) => Reading::Answered {
                    manifest: manifest.clone(),
                    facts: facts.clone(),
                },
                _ => reading.clone(),
            };
            state.last = Some(carried);
        }
        let subscribers = self.subscribers(target);
        // Plugins naming one target mostly expect one identity: judge each identity once.
        let mut judged: Vec<(&Identity, ProbeOutcome)> = Vec::new();
        let outcomes: Vec<(PluginKey, ProbeOutcome)> = subscribers
            .iter()
            .map(|(key, spec)| {
                let outcome = match judged.iter().find(|(i, _)| **i == spec.identity) {
                    Some((_, o)) => o.clone(),
                    None => {
                        let o = reading.judge(&spec.identity);
                        judged.push((&spec.identity, o.clone()));
                        o
                    }
                };
                (key.clone(), outcome)
            })
            .collect();
        // A failure of a Pod still starting is not counted, in the metrics either (an alert
        // on failed probes must not fire for a plugin that is merely loading).
        let starting: Vec<bool> = {
            let index = lock(&self.index);
            outcomes
                .iter()
                .map(|(key, _)| index.is_starting(key, &target.address))
                .collect()
        };
        {
            // Under the specs lock: once `forget` has removed the spec, no probe still in
            // flight brings the deleted plugin's series back.
            let specs = lock(&self.specs);
            for ((key, outcome), starting) in outcomes.iter().zip(starting) {
                let uncounted = starting && matches!(outcome, ProbeOutcome::Failed(..));
                if specs.contains_key(key) && !uncounted {
                    self.metrics.observe_probe(
                        key,
                        match outcome {
                            ProbeOutcome::Healthy(_) => None,
                            ProbeOutcome::Failed(kind, _) => Some(kind.reason()),
                        },
                    );
                }
            }
        }
        // One lock of the index for the whole round; changes are announced after it.
        let mut changed = Vec::new();
        {
            let mut index = lock(&self.index);
            for (key, outcome) in &outcomes {
                let mut announce = false;
                if let (ProbeOutcome::Healthy(_), Some(fingerprint)) = (outcome, &fingerprint) {
                    announce |= index.set_fingerprint(key, &target.address, fingerprint.clone());
                }
                if index.record(key, &target.address, outcome) {
                    log_change(key, &target.address, outcome);
                    announce = true;
                }
                if announce {
                    changed.push(key);
                }
            }
        }
        for key in changed {
            // No receiver only means nothing is running yet to care.
            let _ = self.changes.send(key.clone());
        }
    }

    fn record(&self, key: &PluginKey, address: &str, outcome: &ProbeOutcome) {
        let changed = lock(&self.index).record(key, address, outcome);
        if changed {
            log_change(key, address, outcome);
            // No receiver only means nothing is running yet to care.
            let _ = self.changes.send(key.clone());
        }
    }
}

fn log_change(key: &PluginKey, address: &str, outcome: &ProbeOutcome) {
    match outcome {
        ProbeOutcome::Healthy(_) => {
            tracing::info!(plugin = %key, %address, "endpoint healthy or plugin facts changed")
        }
        ProbeOutcome::Failed(kind, message) => {
            tracing::warn!(plugin = %key, %address, reason = kind.reason(), message, "endpoint state changed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Identity {
        Identity {
            name: "echo-llm".into(),
            version: "1.2.0".into(),
            plugin_type: PluginType::LlmProvider,
        }
    }

    #[test]
    fn an_empty_manifest_is_not_reported_and_passes() {
        assert_eq!(
            check_identity(&ManifestResponse::default(), &expected()),
            Ok(())
        );
    }

    #[test]
    fn matching_identity_passes_with_or_without_a_v() {
        let m = ManifestResponse {
            name: "echo-llm".into(),
            version: "v1.2.0".into(),
            r#type: "llm_provider".into(),
            ..Default::default()
        };
        assert_eq!(check_identity(&m, &expected()), Ok(()));
    }

    #[test]
    fn every_wrong_field_is_named() {
        let m = ManifestResponse {
            name: "other".into(),
            version: "2.0.0".into(),
            r#type: "embedder_provider".into(),
            ..Default::default()
        };
        let err = check_identity(&m, &expected()).expect_err("mismatch");
        assert!(
            err.contains("name \"other\" (expected \"echo-llm\")"),
            "{err}"
        );
        assert!(err.contains("version \"2.0.0\""), "{err}");
        assert!(err.contains("type \"embedder_provider\""), "{err}");
    }

    #[test]
    fn facts_are_read_on_the_first_healthy_probe_after_a_failure_and_then_slowly() {
        let mut schedule = FactsSchedule::default();
        // A new target reads them, even when the plugins' facts are known.
        assert!(schedule.want(true));
        schedule.record(true, true);
        let mut between = 0;
        while !schedule.want(true) {
            schedule.record(true, false);
            between += 1;
        }
        assert_eq!(between, FACTS_REFRESH_PROBES - 1, "then every Nth probe");
        schedule.record(true, true);
        assert!(!schedule.want(true));
        // Unknown facts are asked for every time.
        assert!(schedule.want(false));
        // Failing (restart, new configuration): read again on the way back.
        schedule.record(false, false);
        assert!(schedule.want(true));
        schedule.record(false, true);
        assert!(schedule.want(true), "a failed probe read nothing");
        schedule.record(true, true);
        assert!(!schedule.want(true));
    }

    #[test]
    fn one_reading_is_judged_per_plugin_identity() {
        let reading = Reading::Answered {
            manifest: Box::new(ManifestResponse {
                name: "echo-llm".into(),
                version: "1.2.0".into(),
                r#type: "llm_provider".into(),
                ..Default::default()
            }),
            facts: None,
        };
        assert_eq!(reading.judge(&expected()), ProbeOutcome::Healthy(None));
        let other = Identity {
            name: "other-llm".into(),
            ..expected()
        };
        assert!(matches!(
            reading.judge(&other),
            ProbeOutcome::Failed(FailureKind::IdentityMismatch, m) if m.contains("other-llm")
        ));
        let failed = Reading::Failed(FailureKind::Unreachable, "refused".into());
        assert_eq!(
            failed.judge(&expected()),
            ProbeOutcome::Failed(FailureKind::Unreachable, "refused".into())
        );
    }

    #[test]
    fn endpoints_share_a_target_by_address_transport_and_type() {
        let spec = |secure: bool, uid: Option<&str>| ProbeSpec {
            identity: expected(),
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            secure,
            pod_uids: uid
                .map(|u| BTreeMap::from([("10.0.0.1:50051".to_string(), u.to_string())]))
                .unwrap_or_default(),
        };
        let plain = Target::of("10.0.0.1:50051", &spec(false, None));
        assert_eq!(plain, Target::of("10.0.0.1:50051", &spec(false, Some("x"))));
        assert_eq!(plain.transport, Transport::Plain);
        assert_ne!(plain, Target::of("10.0.0.2:50051", &spec(false, None)));
        // A launcher is another target, and a new Pod at the same address another again.
        let pod_a = Target::of("10.0.0.1:50051", &spec(true, Some("a")));
        assert_eq!(pod_a.transport, Transport::Launcher(Some("a".into())));
        assert_ne!(pod_a, plain);
        assert_ne!(pod_a, Target::of("10.0.0.1:50051", &spec(true, Some("b"))));
        let mut embedder = spec(false, None);
        embedder.identity.plugin_type = PluginType::EmbedderProvider;
        assert_ne!(plain, Target::of("10.0.0.1:50051", &embedder));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probe_soon_cuts_the_wait_of_a_period_short_and_only_for_its_own_target() {
        let (a, b) = (serve_quiet().await, serve_quiet().await);
        let metrics = Arc::new(Metrics::default());
        let prober = Prober::new(
            Arc::new(Mutex::new(Index::default())),
            broadcast::channel(16).0,
            Arc::clone(&metrics),
            TokenSource::none(),
        );
        let key = |name: &str| PluginKey {
            namespace: "agents".into(),
            name: name.into(),
        };
        let spec = ProbeSpec {
            identity: expected(),
            period: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
            secure: false,
            pod_uids: BTreeMap::new(),
        };
        for (name, address) in [("a", &a), ("b", &b)] {
            prober.set(
                &key(name),
                spec.clone(),
                3,
                &BTreeMap::from([(address.clone(), Stage::Ready)]),
                &[],
                None,
            );
        }
        let probes = |name: &str| probes_of(&metrics, name);
        let wait_for = |name: &'static str, n: f64| {
            let metrics = Arc::clone(&metrics);
            async move {
                while probes_of(&metrics, name) < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        // Each new target is probed at once, then waits its (hour-long) period.
        tokio::time::timeout(Duration::from_secs(20), wait_for("a", 1.0))
            .await
            .expect("first probe of a");
        tokio::time::timeout(Duration::from_secs(20), wait_for("b", 1.0))
            .await
            .expect("first probe of b");
        prober.probe_soon(&key("a"), &a);
        tokio::time::timeout(Duration::from_secs(20), wait_for("a", 2.0))
            .await
            .expect("a second probe of a, long before its period");
        assert_eq!(probes("b"), 1.0, "the other target still waits its period");
        // An endpoint nobody probes is ignored.
        prober.probe_soon(&key("c"), &a);
        prober.stop_all();
    }

    /// `hector_operator_probes_total` of plugin `agents/NAME` (-1 when absent).
    /// The value of one series (name and labels, as rendered) in `metrics`.
    fn series(metrics: &Metrics, series: &str) -> Option<f64> {
        let prefix = format!("{series} ");
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
    }

    fn probes_of(metrics: &Metrics, name: &str) -> f64 {
        let name =
            format!("hector_operator_probes_total{{namespace=\"agents\",plugin=\"{name}\"}}");
        series(metrics, &name).unwrap_or(-1.0)
    }

    /// A free loopback address.
    fn free_address() -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    }

    /// Starts [`Quiet`] at `address` and initializes it.
    async fn start_quiet(address: std::net::SocketAddr) {
        tokio::spawn(hector_plugin_sdk::serve_llm(
            Quiet,
            hector_plugin_sdk::ServeOptions::new(address),
        ));
        let client = loop {
            if let Ok(c) =
                hector_plugin_sdk::connect(&address.to_string(), Duration::from_secs(1)).await
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        LifecycleClient::new(client, PluginType::LlmProvider)
            .initialize(Default::default())
            .await
            .expect("initialize");
    }

    /// A running, initialized [`Quiet`] plugin's address.
    async fn serve_quiet() -> String {
        let address = free_address();
        start_quiet(address).await;
        address.to_string()
    }

    /// An LLM plugin that reports nothing about itself.
    struct Quiet;

    impl hector_plugin_sdk::Plugin for Quiet {
        fn manifest(&self) -> ManifestResponse {
            ManifestResponse::default()
        }
        async fn initialize(&self, _: hector_plugin_sdk::Config) -> Result<(), String> {
            Ok(())
        }
    }

    impl hector_plugin_sdk::LlmPlugin for Quiet {
        async fn generate(
            &self,
            _: hector_plugin_sdk::proto::GenerateRequest,
        ) -> Result<hector_plugin_sdk::proto::GenerateResponse, tonic::Status> {
            Ok(Default::default())
        }
        async fn model_info(&self) -> Result<hector_plugin_sdk::proto::ModelInfo, tonic::Status> {
            Ok(Default::default())
        }
    }

    /// A loopback listener whose accept queue is full, so that the kernel drops every SYN
    /// sent to it (as a NetworkPolicy enforcer does before it knows a new Pod); the filling
    /// connections are returned to keep it full.
    async fn dropping_syns() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen");
        let address = listener.local_addr().expect("address");
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(address),
            )
            .await
            {
                fillers.push(s);
            }
        }
        assert!(!fillers.is_empty(), "no connection filled the accept queue");
        (listener, fillers)
    }

    /// A prober, a target at a black hole and a channel to it, for [`Prober::read_new`].
    fn first_probe_through(black_hole: &str) -> (Arc<Prober>, Arc<Metrics>, Target, Probing) {
        let metrics = Arc::new(Metrics::default());
        let prober = Prober::new(
            Arc::new(Mutex::new(Index::default())),
            broadcast::channel(16).0,
            Arc::clone(&metrics),
            TokenSource::none(),
        );
        let target = Target {
            address: black_hole.to_string(),
            transport: Transport::Plain,
            plugin_type: PluginType::LlmProvider,
        };
        let first = Probing::new(black_hole, LONG, None).expect("channel");
        (prober, metrics, target, first)
    }

    /// Limits far beyond the tests' own guards: only a new connection can answer in time.
    const LONG: Duration = Duration::from_secs(3600);

    fn reconnects(metrics: &Metrics) -> f64 {
        series(metrics, "hector_operator_probe_reconnects_total").unwrap_or(0.0)
    }

    /// A first probe whose SYN was dropped starts over on a new connection once its answer is
    /// late, without waiting for TCP to send the SYN again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_first_probe_starts_over_on_a_new_connection() {
        let (listener, _fillers) = dropping_syns().await;
        let black_hole = listener.local_addr().expect("address").to_string();
        let plugin = serve_quiet().await;
        let (prober, metrics, target, mut first) = first_probe_through(&black_hole);
        let make = || Probing::new(&plugin, LONG, None);
        let wake = Notify::new();
        let token = TokenSource::none();
        let reading = tokio::time::timeout(
            Duration::from_secs(30),
            prober.read_new(
                &target,
                &mut first,
                &make,
                &wake,
                LONG,
                FIRST_HEDGE,
                false,
                &token,
            ),
        )
        .await
        .expect("a new connection answers; the first one never would");
        assert!(reading.healthy(), "{:?}", reading.judge(&expected()));
        assert_eq!(reconnects(&metrics), 1.0);
    }

    /// A plugin that accepted the connection but has not answered yet keeps it: the probe
    /// waits for its answer (here, until the read's limit), on the one connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connected_but_silent_first_probe_keeps_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let silent = listener.local_addr().expect("address").to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        let (prober, metrics, target, mut first) = first_probe_through(&silent);
        let make = || Probing::new(&silent, LONG, None);
        // The Pod turns Ready while the plugin is still silent: no reason for a new connection.
        let wake = Arc::new(Notify::new());
        let ready = Arc::clone(&wake);
        let notifier = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            ready.notify_one();
        });
        let token = TokenSource::none();
        let limit = Duration::from_secs(2);
        let reading = tokio::time::timeout(
            Duration::from_secs(30),
            prober.read_new(
                &target,
                &mut first,
                &make,
                &wake,
                limit,
                FIRST_HEDGE,
                false,
                &token,
            ),
        )
        .await
        .expect("the read ends at its limit");
        assert!(!reading.healthy());
        assert_eq!(
            reconnects(&metrics),
            0.0,
            "no new connection once connected"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(notifier.is_finished(), "the wake came during the read");
        holder.abort();
    }

    /// A wake (the Pod turned Ready) starts a first probe over on a new connection at once,
    /// however patient the probe still was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_woken_first_probe_starts_over_on_a_new_connection() {
        let (listener, _fillers) = dropping_syns().await;
        let black_hole = listener.local_addr().expect("address").to_string();
        let plugin = serve_quiet().await;
        let (prober, metrics, target, mut first) = first_probe_through(&black_hole);
        let make = || Probing::new(&plugin, LONG, None);
        let wake = Notify::new();
        let token = TokenSource::none();
        let read = prober.read_new(&target, &mut first, &make, &wake, LONG, LONG, false, &token);
        tokio::pin!(read);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut read)
                .await
                .is_err(),
            "the first connect must be waiting on its dropped SYN"
        );
        assert_eq!(reconnects(&metrics), 0.0);
        wake.notify_one();
        let reading = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the woken read answers on a new connection");
        assert!(reading.healthy(), "{:?}", reading.judge(&expected()));
        assert_eq!(reconnects(&metrics), 1.0);
    }

    /// A prober of plugin `agents/NAME` at a free loopback address nothing listens on yet, at
    /// `stage`, with a failure threshold of 1 and a period of an hour (without the retries
    /// inside a period, nothing would be probed again in a test).
    fn hour_long_target(
        name: &str,
        stage: Stage,
    ) -> (std::net::SocketAddr, Arc<Metrics>, Arc<Prober>, PluginKey) {
        let address = free_address();
        let metrics = Arc::new(Metrics::default());
        let prober = Prober::new(
            Arc::new(Mutex::new(Index::default())),
            broadcast::channel(16).0,
            Arc::clone(&metrics),
            TokenSource::none(),
        );
        let key = PluginKey {
            namespace: "agents".into(),
            name: name.into(),
        };
        let spec = ProbeSpec {
            identity: expected(),
            period: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
            secure: false,
            pod_uids: BTreeMap::new(),
        };
        prober.set(
            &key,
            spec,
            1,
            &BTreeMap::from([(address.to_string(), stage)]),
            &[],
            None,
        );
        (address, metrics, prober, key)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_target_not_yet_answering_is_asked_again_soon_without_counting_failures() {
        let (address, metrics, prober, key) = hour_long_target("late", Stage::Ready);
        let endpoint = address.to_string();
        // The plugin comes up after the first probe was refused.
        tokio::time::sleep(Duration::from_millis(300)).await;
        start_quiet(address).await;
        let state = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(e) = prober
                    .index()
                    .get(&key)
                    .and_then(|s| s.endpoints.get(&endpoint).cloned())
                    .filter(|e| e.usable())
                {
                    return e;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("published within the first period");
        assert_eq!(state.failures, 0);
        // Recorded: the first refusal and the healthy answer; the refused retries between
        // them were sent (RPCs counted) but not recorded as failures.
        assert_eq!(probes_of(&metrics, "late"), 2.0);
        let rpcs = series(&metrics, "hector_operator_probe_rpcs_total").unwrap_or(0.0);
        assert!(
            rpcs > 6.0,
            "retries went out between the two recorded rounds: {rpcs} RPCs"
        );
        prober.stop_all();
    }

    /// A Pod whose containers run but have not started is probed: its refusals count
    /// nowhere (not in its state, not in the metrics), and the healthy answer that follows is
    /// at hand when the Pod turns Ready.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_starting_pod_is_probed_without_counting_its_refusals() {
        // Threshold 1: a single counted refusal would make the endpoint unhealthy.
        let (address, metrics, prober, key) = hour_long_target("loading", Stage::Starting);
        let endpoint = address.to_string();
        let rpcs = || series(&metrics, "hector_operator_probe_rpcs_total").unwrap_or(0.0);
        tokio::time::timeout(Duration::from_secs(20), async {
            while rpcs() < 2.0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("refused probes went out");
        let state = |prober: &Prober| {
            prober
                .index()
                .get(&key)
                .and_then(|s| s.endpoints.get(&endpoint).cloned())
                .expect("known")
        };
        let refused = state(&prober);
        assert_eq!(refused.failures, 0);
        assert_eq!(refused.view(1), crate::index::EndpointView::Pending);
        assert_eq!(probes_of(&metrics, "loading"), -1.0, "no probe counted");
        assert!(
            !metrics
                .render()
                .contains("hector_operator_probe_failures_total{")
        );

        start_quiet(address).await;
        tokio::time::timeout(Duration::from_secs(30), async {
            while !state(&prober).published {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("a healthy answer while starting");
        assert!(!state(&prober).usable(), "not Ready yet");
        assert!(
            prober.index().set_stage(&key, &endpoint, Stage::Ready),
            "usable the moment its Pod turns Ready"
        );
        assert_eq!(probes_of(&metrics, "loading"), 1.0, "the healthy probe");
        prober.stop_all();
    }

    #[test]
    fn a_starting_pods_retries_stop_doubling_at_the_cap() {
        let waits = |starting: bool| -> Vec<Duration> {
            (0..6)
                .map(|i| retry_wait(FIRST_RETRY.saturating_mul(1 << i), starting))
                .collect()
        };
        let ms = Duration::from_millis;
        assert_eq!(
            waits(false),
            [ms(100), ms(200), ms(400), ms(800), ms(1600), ms(3200)]
        );
        assert_eq!(
            waits(true),
            [ms(100), ms(200), ms(200), ms(200), ms(200), ms(200)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_starting_pod_is_read_more_often_than_one_that_has_started() {
        // Neither answers (nothing listens): the starting one is read every 200 ms; the
        // started one (startup passed, not Ready) on the doubling backoff, at most 6 reads
        // in 4 s (0, 0.1, 0.3, 0.7, 1.5, 3.1 s).
        let (_, starting_metrics, starting, _) = hour_long_target("loading", Stage::Starting);
        let (_, started_metrics, started, _) = hour_long_target("unready", Stage::Started);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let reads =
            |m: &Metrics| series(m, "hector_operator_probe_duration_seconds_count").unwrap_or(0.0);
        let (fast, slow) = (reads(&starting_metrics), reads(&started_metrics));
        starting.stop_all();
        started.stop_all();
        assert!(slow <= 6.0, "started: {slow} reads");
        assert!(
            fast >= slow + 3.0,
            "starting: {fast} reads, started: {slow}"
        );
    }

    #[test]
    fn jitter_stays_within_a_tenth_and_varies() {
        let period = Duration::from_secs(10);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(period)).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= period.mul_f64(0.9) && *d <= period.mul_f64(1.1)),
            "{draws:?}"
        );
        let distinct: HashSet<Duration> = draws.iter().copied().collect();
        assert!(
            distinct.len() > 100,
            "only {} distinct periods",
            distinct.len()
        );
    }
}
