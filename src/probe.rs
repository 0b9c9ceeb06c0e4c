//! The prober: one task per endpoint, each with its own reused gRPC channel, so a slow
//! plugin never delays another. Every period it asks the standard `grpc.health.v1` health,
//! the plugin's own `Health` RPC and `GetManifest` (identity), and its model or embedder
//! facts when they may have changed (see [`FactsSchedule`]); outcomes go into the [`Index`],
//! and a change of what others see, facts included, is announced on the change channel
//! (which wakes the reconciler and the publisher).

use std::collections::{BTreeMap, HashMap};
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
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::index::{EndpointChanges, Facts, FailureKind, Index, PluginKey, ProbeOutcome};
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

/// A channel to `address` that connects on first use and reconnects by itself; with
/// `tls`, over TLS checked by that verifier. Sockets get the TCP keepalive of every plugin
/// connection ([`TcpKeepalive`]).
pub fn channel(
    address: &str,
    timeout: Duration,
    tls: Option<Arc<PinVerifier>>,
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
                Some(verifier) => {
                    e.connect_with_connector_lazy(Connector::new(client_config_for(verifier)))
                }
                None => e.connect_with_connector_lazy(TcpKeepalive::default().connector(None)),
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

/// Probes `channel` once, sending `token` with every plugin call.
pub async fn probe_once(
    channel: &Channel,
    spec: &ProbeSpec,
    want_facts: bool,
    token: TokenSource,
) -> ProbeOutcome {
    let limit = spec.timeout;
    let timed_out = |what: &str| {
        ProbeOutcome::Failed(
            FailureKind::Unreachable,
            format!("{what} timed out after {limit:?}"),
        )
    };

    // The plugin's own Health first: when it is unhealthy its message is the reason to report.
    let lifecycle =
        LifecycleClient::new(channel.clone(), spec.identity.plugin_type).with_token(token.clone());
    let authorize = token;
    match tokio::time::timeout(limit, lifecycle.health()).await {
        Err(_) => return timed_out("Health"),
        Ok(Err(e)) => {
            let (kind, message) = sdk_reason(&e);
            return ProbeOutcome::Failed(kind, message);
        }
        Ok(Ok(h)) if !h.healthy => {
            let message = if h.message.is_empty() {
                "the plugin reports unhealthy".to_string()
            } else {
                h.message
            };
            return ProbeOutcome::Failed(FailureKind::Unhealthy, message);
        }
        Ok(Ok(_)) => {}
    }

    let mut health = HealthClient::new(channel.clone());
    let check = HealthCheckRequest {
        service: String::new(),
    };
    match tokio::time::timeout(limit, health.check(check)).await {
        Err(_) => return timed_out("grpc.health.v1 Check"),
        Ok(Ok(r)) => {
            let status = r.into_inner().status;
            if status != ServingStatus::Serving as i32 {
                let name = ServingStatus::try_from(status)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN");
                return ProbeOutcome::Failed(
                    FailureKind::Unhealthy,
                    format!("grpc.health.v1 reports {name}"),
                );
            }
        }
        // A plugin without grpc.health.v1 is judged by its own Health RPC alone.
        Ok(Err(s)) if s.code() == Code::Unimplemented => {}
        Ok(Err(s)) => {
            return ProbeOutcome::Failed(
                FailureKind::Unreachable,
                format!("grpc.health.v1 Check: {}", s.message()),
            );
        }
    }

    let manifest = match tokio::time::timeout(limit, lifecycle.manifest()).await {
        Err(_) => return timed_out("GetManifest"),
        // A plugin that does not implement GetManifest reports nothing, like an empty answer.
        Ok(Err(SdkError::Rpc { status, .. })) if status.code() == Code::Unimplemented => {
            ManifestResponse::default()
        }
        Ok(Err(e)) => {
            let (kind, message) = sdk_reason(&e);
            return ProbeOutcome::Failed(kind, message);
        }
        Ok(Ok(m)) => m,
    };
    if let Err(message) = check_identity(&manifest, &spec.identity) {
        return ProbeOutcome::Failed(FailureKind::IdentityMismatch, message);
    }
    if !want_facts {
        return ProbeOutcome::Healthy(None);
    }
    let mut facts = Facts {
        name: (!manifest.name.is_empty()).then(|| manifest.name.clone()),
        version: (!manifest.version.is_empty()).then(|| manifest.version.clone()),
        ..Default::default()
    };
    // Facts are a courtesy: a plugin that does not answer is still healthy.
    match spec.identity.plugin_type {
        PluginType::LlmProvider => {
            let mut llm = LlmProviderClient::with_interceptor(channel.clone(), authorize);
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
    ProbeOutcome::Healthy(Some(facts))
}

/// A healthy endpoint reads its facts again after this many probes without: slow, since
/// facts change only with the plugin's configuration, which mostly rolls new Pods (read at
/// once), while a plugin reloading in place is still caught within minutes (30 probes are
/// 5 minutes at the default period of 10 s).
pub const FACTS_REFRESH_PROBES: u32 = 30;

/// When one endpoint's probe task reads the plugin's facts (GetManifest's name and version,
/// GetModelInfo or GetEmbedderInfo): while the plugin has none known, on the first healthy
/// probe of the endpoint (a new Pod, or one back after failing, e.g. restarted with another
/// configuration), and then every [`FACTS_REFRESH_PROBES`] healthy probes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FactsSchedule {
    /// Whether the last probe found the endpoint healthy.
    healthy: bool,
    /// Healthy probes since the facts were last read.
    since_read: u32,
}

impl FactsSchedule {
    /// Whether the next probe should read facts; `known`: the plugin's facts are known.
    pub fn want(&self, known: bool) -> bool {
        !known || !self.healthy || self.since_read + 1 >= FACTS_REFRESH_PROBES
    }

    /// Notes a probe's outcome; `asked`: it was told to read facts.
    pub fn record(&mut self, outcome: &ProbeOutcome, asked: bool) {
        match outcome {
            ProbeOutcome::Healthy(_) => {
                self.healthy = true;
                self.since_read = if asked {
                    0
                } else {
                    self.since_read.saturating_add(1)
                };
            }
            ProbeOutcome::Failed(..) => self.healthy = false,
        }
    }
}

/// Runs and stops the per-endpoint probe tasks.
pub struct Prober {
    index: Arc<Mutex<Index>>,
    specs: Mutex<HashMap<PluginKey, ProbeSpec>>,
    /// Probe tasks by plugin and address, with the UID of the Pod each expects there.
    tasks: Mutex<HashMap<(PluginKey, String), ProbeTask>>,
    /// The operator's own token, for launchers that check callers.
    token: TokenSource,
    changes: broadcast::Sender<PluginKey>,
    metrics: Arc<Metrics>,
}

/// A probe task, and the UID of the Pod it expects at its address.
type ProbeTask = (AbortHandle, Option<String>);

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
            tasks: Mutex::default(),
            changes,
            metrics,
            token,
        })
    }

    /// The shared index.
    pub fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Sets the endpoints of `key` and how to probe them; new endpoints are probed at once.
    pub fn set(
        self: &Arc<Self>,
        key: &PluginKey,
        spec: ProbeSpec,
        threshold: u32,
        wanted: &BTreeMap<String, bool>,
        carried: &[String],
        facts: Option<Facts>,
    ) {
        let pod_uids = spec.pod_uids.clone();
        lock(&self.specs).insert(key.clone(), spec);
        let EndpointChanges { added, removed } =
            lock(&self.index).set_endpoints(key, wanted, threshold, carried, facts);
        let mut tasks = lock(&self.tasks);
        for address in removed {
            if let Some((task, _)) = tasks.remove(&(key.clone(), address)) {
                task.abort();
            }
        }
        let mut start = added;
        // An address now held by another Pod (same IP, new Pod) is probed afresh, with the
        // new Pod's identity.
        for (address, uid) in &pod_uids {
            if let Some((task, known)) = tasks.get(&(key.clone(), address.clone()))
                && known.as_ref() != Some(uid)
            {
                task.abort();
                if !start.contains(address) {
                    start.push(address.clone());
                }
            }
        }
        for address in start {
            let me = Arc::clone(self);
            let task_key = key.clone();
            let task_address = address.clone();
            let uid = pod_uids.get(&address).cloned();
            let task_uid = uid.clone();
            let handle =
                tokio::spawn(async move { me.run(task_key, task_address, task_uid).await });
            tasks.insert((key.clone(), address), (handle.abort_handle(), uid));
        }
    }

    /// Stops probing a deleted plugin and forgets it.
    pub fn forget(&self, key: &PluginKey) {
        lock(&self.specs).remove(key);
        let addresses = lock(&self.index).remove(key);
        let mut tasks = lock(&self.tasks);
        for address in addresses {
            if let Some((task, _)) = tasks.remove(&(key.clone(), address)) {
                task.abort();
            }
        }
    }

    /// Stops every probe (shutdown).
    pub fn stop_all(&self) {
        lock(&self.specs).clear();
        for (_, (task, _)) in lock(&self.tasks).drain() {
            task.abort();
        }
    }

    async fn run(self: Arc<Self>, key: PluginKey, address: String, pod_uid: Option<String>) {
        let Some(first) = lock(&self.specs).get(&key).cloned() else {
            return;
        };
        let verifier = first.secure.then(|| launcher_verifier(pod_uid.as_deref()));
        let channel = match channel(&address, first.timeout, verifier.clone()) {
            Ok(c) => c,
            Err(message) => {
                self.record(
                    &key,
                    &address,
                    &ProbeOutcome::Failed(FailureKind::Unreachable, message),
                );
                return;
            }
        };
        let mut facts = FactsSchedule::default();
        loop {
            let Some(spec) = lock(&self.specs).get(&key).cloned() else {
                return;
            };
            if !lock(&self.index).wants(&key, &address) {
                return;
            }
            let want_facts = facts.want(lock(&self.index).has_facts(&key));
            let started = Instant::now();
            let token = if spec.secure {
                self.token.clone()
            } else {
                TokenSource::none()
            };
            let outcome = probe_once(&channel, &spec, want_facts, token).await;
            if let (ProbeOutcome::Healthy(_), Some(verifier)) = (&outcome, &verifier)
                && let Some(fingerprint) = verifier.accepted()
                && lock(&self.index).set_fingerprint(&key, &address, fingerprint)
            {
                let _ = self.changes.send(key.clone());
            }
            facts.record(&outcome, want_facts);
            {
                // Under the specs lock: once `forget` has removed the spec, no probe still
                // in flight brings the deleted plugin's series back.
                let specs = lock(&self.specs);
                if specs.contains_key(&key) {
                    self.metrics.observe_probe(
                        &key,
                        started.elapsed(),
                        match &outcome {
                            ProbeOutcome::Healthy(_) => None,
                            ProbeOutcome::Failed(kind, _) => Some(kind.reason()),
                        },
                    );
                }
            }
            if let ProbeOutcome::Failed(kind, message) = &outcome {
                tracing::debug!(plugin = %key, %address, reason = kind.reason(), message, "probe failed");
            }
            self.record(&key, &address, &outcome);
            tokio::time::sleep(spec.period).await;
        }
    }

    fn record(&self, key: &PluginKey, address: &str, outcome: &ProbeOutcome) {
        let changed = lock(&self.index).record(key, address, outcome);
        if changed {
            match outcome {
                ProbeOutcome::Healthy(_) => {
                    tracing::info!(plugin = %key, %address, "endpoint healthy or plugin facts changed")
                }
                ProbeOutcome::Failed(kind, message) => {
                    tracing::warn!(plugin = %key, %address, reason = kind.reason(), message, "endpoint state changed")
                }
            }
            // No receiver only means nothing is running yet to care.
            let _ = self.changes.send(key.clone());
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
        let healthy = ProbeOutcome::Healthy(None);
        let failed = ProbeOutcome::Failed(FailureKind::Unreachable, "refused".into());
        let mut schedule = FactsSchedule::default();
        // A new endpoint reads them, even when the plugin's facts are known.
        assert!(schedule.want(true));
        schedule.record(&healthy, true);
        let mut between = 0;
        while !schedule.want(true) {
            schedule.record(&healthy, false);
            between += 1;
        }
        assert_eq!(between, FACTS_REFRESH_PROBES - 1, "then every Nth probe");
        schedule.record(&healthy, true);
        assert!(!schedule.want(true));
        // Unknown facts are asked for every time.
        assert!(schedule.want(false));
        // Failing (restart, new configuration): read again on the way back.
        schedule.record(&failed, false);
        assert!(schedule.want(true));
        schedule.record(&failed, true);
        assert!(schedule.want(true), "a failed probe read nothing");
        schedule.record(&healthy, true);
        assert!(!schedule.want(true));
    }
}
