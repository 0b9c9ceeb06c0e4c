//! What the operator knows about every plugin's endpoints: a plain in-memory structure with
//! pure update functions. The reconciler says which endpoints should exist, the prober
//! records what each probe found, and the status writer and the publisher read from it.
//!
//! The one rule that keeps restarts quiet: an endpoint not yet probed keeps the published
//! state it had before (taken from the resource's status), so a restarted operator renders
//! the same status and the same ConfigMap until a probe says otherwise.

use std::collections::{BTreeMap, HashMap};

use hector_plugin_sdk::endpoints::{EmbedderFacts, ModelFacts};

use crate::crd::PluginInfo;

/// A HectorPlugin, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for PluginKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a probe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection, or a probe RPC failed or timed out.
    Unreachable,
    /// The plugin answered that it is not healthy.
    Unhealthy,
    /// The plugin reports a name, type or version other than the resource's.
    IdentityMismatch,
}

impl FailureKind {
    /// The condition reason for this kind of failure.
    pub fn reason(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "Unreachable",
            FailureKind::Unhealthy => "PluginUnhealthy",
            FailureKind::IdentityMismatch => "IdentityMismatch",
        }
    }
}

/// What one probe of one endpoint found.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeOutcome {
    /// Serving, healthy and the right plugin; with what it reports about its model if asked.
    Healthy(Option<Facts>),
    /// Failed, with the reason in the plugin's or the transport's words.
    Failed(FailureKind, String),
}

/// Model or embedder facts a plugin reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// Name and version from GetManifest (empty when the plugin reports none).
    pub name: Option<String>,
    /// Version from GetManifest.
    pub version: Option<String>,
    /// From GetModelInfo.
    pub model: Option<ModelFacts>,
    /// From GetEmbedderInfo.
    pub embedder: Option<EmbedderFacts>,
}

impl Facts {
    /// Facts as recorded in a status, for carrying them over a restart.
    pub fn from_status(info: &PluginInfo) -> Self {
        let model_name = info.model_name.clone().unwrap_or_default();
        Facts {
            name: info.name.clone(),
            version: info.version.clone(),
            model: (info.dimension.is_none() && info.model_name.is_some()).then(|| ModelFacts {
                model_name: model_name.clone(),
                max_tokens: info.max_tokens,
            }),
            embedder: info.dimension.map(|dimension| EmbedderFacts {
                model_name,
                dimension,
            }),
        }
    }

    /// These facts, with the model or embedder facts of `known` where this read has none: a
    /// plugin that did not answer GetModelInfo or GetEmbedderInfo this time (a timeout) has
    /// not changed its model, and dropping it would flap the status and the ConfigMap.
    pub fn or_known(self, known: Option<&Facts>) -> Facts {
        Facts {
            model: self.model.or_else(|| known.and_then(|k| k.model.clone())),
            embedder: self
                .embedder
                .or_else(|| known.and_then(|k| k.embedder.clone())),
            ..self
        }
    }

    /// Facts as the status shows them.
    pub fn to_status(&self) -> PluginInfo {
        PluginInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            model_name: self
                .model
                .as_ref()
                .map(|m| m.model_name.clone())
                .or_else(|| self.embedder.as_ref().map(|e| e.model_name.clone())),
            max_tokens: self.model.as_ref().and_then(|m| m.max_tokens),
            dimension: self.embedder.as_ref().map(|e| e.dimension),
        }
    }
}

/// How far an endpoint's Pod has come (an external endpoint is always `Ready`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Its containers run but have not all passed their startup probes. It is probed all the
    /// same, so that a healthy reading is at hand when the Pod turns Ready (the kubelet often
    /// reports "started" and "Ready" in one status update); its failures are not counted,
    /// because the plugin may still be starting.
    Starting,
    /// Started, not Ready.
    Started,
    /// Ready.
    Ready,
}

impl From<bool> for Stage {
    fn from(ready: bool) -> Self {
        if ready { Self::Ready } else { Self::Started }
    }
}

/// One endpoint's probe history.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointState {
    /// Whether any probe has finished since this operator started.
    pub probed: bool,
    /// Whether agents may use it now.
    pub published: bool,
    /// Consecutive failed probes.
    pub failures: u32,
    /// The last failure, kept until a probe succeeds.
    pub last_failure: Option<(FailureKind, String)>,
    /// Whether its Pod's Ready condition is true (always true for an external endpoint).
    pub ready: bool,
    /// Whether its Pod's containers have not all started yet (failed probes are not counted).
    pub starting: bool,
    /// `sha256:…` of the TLS certificate its last healthy probe verified (launcher-run
    /// plugins); agents pin it.
    pub fingerprint: Option<String>,
}

/// How an endpoint looks from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointView {
    /// Published to agents.
    Published,
    /// Not probed yet, or failing but still under the threshold.
    Pending,
    /// Unpublished because of a failure.
    Unhealthy(FailureKind, String),
}

impl EndpointState {
    /// A new endpoint; `was_published` carries the state the status recorded.
    pub fn new(was_published: bool, stage: Stage) -> Self {
        Self {
            probed: false,
            published: was_published,
            failures: 0,
            last_failure: None,
            ready: stage == Stage::Ready,
            starting: stage == Stage::Starting,
            fingerprint: None,
        }
    }

    /// Sets how far its Pod has come; returns whether that changed whether agents may use it.
    pub fn set_stage(&mut self, stage: Stage) -> bool {
        let before = self.usable();
        self.ready = stage == Stage::Ready;
        self.starting = stage == Stage::Starting;
        before != self.usable()
    }

    /// Whether agents may use it: its Pod is ready and its probes pass.
    pub fn usable(&self) -> bool {
        self.published && self.ready
    }

    /// Applies one probe outcome; returns whether what others see changed.
    pub fn record(&mut self, outcome: &ProbeOutcome, threshold: u32) -> bool {
        if self.starting && matches!(outcome, ProbeOutcome::Failed(..)) {
            return false;
        }
        let before = (self.view(threshold), self.probed);
        self.probed = true;
        match outcome {
            ProbeOutcome::Healthy(_) => {
                self.failures = 0;
                self.published = true;
                self.last_failure = None;
            }
            ProbeOutcome::Failed(kind, message) => {
                self.failures = self.failures.saturating_add(1);
                self.last_failure = Some((*kind, message.clone()));
                // A wrong plugin is wrong at once; health failures get the threshold.
                if *kind == FailureKind::IdentityMismatch || self.failures >= threshold.max(1) {
                    self.published = false;
                }
            }
        }
        // A first probe that confirms the carried state changes nothing others see.
        before.0 != self.view(threshold)
    }

    /// The endpoint as the status and the publisher see it.
    pub fn view(&self, threshold: u32) -> EndpointView {
        if self.usable() {
            return EndpointView::Published;
        }
        match &self.last_failure {
            Some((kind, message))
                if *kind == FailureKind::IdentityMismatch || self.failures >= threshold.max(1) =>
            {
                EndpointView::Unhealthy(*kind, message.clone())
            }
            _ => EndpointView::Pending,
        }
    }
}

/// Everything known about one plugin.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PluginState {
    /// Consecutive failures that unpublish an endpoint.
    pub threshold: u32,
    /// Endpoints by `ip:port`.
    pub endpoints: BTreeMap<String, EndpointState>,
    /// What the plugin reports about itself (carried from the status until probed).
    pub facts: Option<Facts>,
}

impl PluginState {
    /// Published endpoints, sorted.
    pub fn published(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .filter(|(_, s)| s.usable())
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// The certificate fingerprints of published endpoints that have one.
    pub fn certificates(&self) -> BTreeMap<String, String> {
        self.endpoints
            .iter()
            .filter(|(_, s)| s.usable())
            .filter_map(|(a, s)| Some((a.clone(), s.fingerprint.clone()?)))
            .collect()
    }

    /// Every endpoint with its view, sorted by address.
    pub fn views(&self) -> Vec<(String, EndpointView)> {
        self.endpoints
            .iter()
            .map(|(a, s)| (a.clone(), s.view(self.threshold)))
            .collect()
    }
}

/// All plugins' states.
#[derive(Debug, Default)]
pub struct Index {
    plugins: HashMap<PluginKey, PluginState>,
}

/// What [`Index::set_endpoints`] changed, so the caller can start and stop probes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EndpointChanges {
    /// Endpoints to start probing.
    pub added: Vec<String>,
    /// Endpoints no longer wanted.
    pub removed: Vec<String>,
}

impl Index {
    /// Sets the endpoints `key` should have (address to Pod readiness; endpoints of started
    /// Pods are probed even while not ready, so an unhealthy one is unpublished with the
    /// plugin's own reason). New ones start as `carried` says (the endpoints its status
    /// listed as published); `facts` seeds what the plugin reports.
    pub fn set_endpoints(
        &mut self,
        key: &PluginKey,
        wanted: &BTreeMap<String, Stage>,
        threshold: u32,
        carried: &[String],
        facts: Option<Facts>,
    ) -> EndpointChanges {
        let state = self.plugins.entry(key.clone()).or_default();
        state.threshold = threshold;
        if state.facts.is_none() {
            state.facts = facts;
        }
        let mut changes = EndpointChanges::default();
        state.endpoints.retain(|addr, _| {
            let keep = wanted.contains_key(addr);
            if !keep {
                changes.removed.push(addr.clone());
            }
            keep
        });
        for (addr, stage) in wanted {
            match state.endpoints.get_mut(addr) {
                Some(e) => {
                    e.set_stage(*stage);
                }
                None => {
                    state.endpoints.insert(
                        addr.clone(),
                        EndpointState::new(carried.contains(addr), *stage),
                    );
                    changes.added.push(addr.clone());
                }
            }
        }
        changes
    }

    /// Records a probe; returns whether the plugin's published state or facts changed.
    /// Facts a probe read replace the known ones when they differ (a new configuration may
    /// serve another model); see [`Facts::or_known`]. Probes of endpoints no longer wanted
    /// are ignored.
    pub fn record(&mut self, key: &PluginKey, address: &str, outcome: &ProbeOutcome) -> bool {
        let Some(state) = self.plugins.get_mut(key) else {
            return false;
        };
        let threshold = state.threshold;
        let Some(endpoint) = state.endpoints.get_mut(address) else {
            return false;
        };
        let mut changed = endpoint.record(outcome, threshold);
        if let ProbeOutcome::Healthy(Some(read)) = outcome {
            let facts = read.clone().or_known(state.facts.as_ref());
            if state.facts.as_ref() != Some(&facts) {
                state.facts = Some(facts);
                changed = true;
            }
        }
        changed
    }

    /// Sets the certificate fingerprint a healthy probe of an endpoint verified; returns
    /// whether it changed (a restarted launcher makes a new key).
    pub fn set_fingerprint(&mut self, key: &PluginKey, address: &str, fingerprint: String) -> bool {
        let Some(e) = self.endpoint_mut(key, address) else {
            return false;
        };
        let changed = e.fingerprint.as_ref() != Some(&fingerprint);
        e.fingerprint = Some(fingerprint);
        changed
    }

    /// Sets how far the Pod of an endpoint already known has come; returns whether that
    /// changed whether agents may use it.
    pub fn set_stage(&mut self, key: &PluginKey, address: &str, stage: Stage) -> bool {
        self.endpoint_mut(key, address)
            .is_some_and(|e| e.set_stage(stage))
    }

    fn endpoint_mut(&mut self, key: &PluginKey, address: &str) -> Option<&mut EndpointState> {
        self.plugins
            .get_mut(key)
            .and_then(|s| s.endpoints.get_mut(address))
    }

    /// Whether the Pod of `address` of `key` is known to be Ready.
    pub fn is_ready(&self, key: &PluginKey, address: &str) -> bool {
        self.endpoint(key, address).is_some_and(|e| e.ready)
    }

    /// Whether the Pod of `address` of `key` has containers that have not started yet.
    pub fn is_starting(&self, key: &PluginKey, address: &str) -> bool {
        self.endpoint(key, address).is_some_and(|e| e.starting)
    }

    /// Whether agents may use `address` of `key` now.
    pub fn usable(&self, key: &PluginKey, address: &str) -> bool {
        self.endpoint(key, address)
            .is_some_and(EndpointState::usable)
    }

    fn endpoint(&self, key: &PluginKey, address: &str) -> Option<&EndpointState> {
        self.plugins.get(key).and_then(|s| s.endpoints.get(address))
    }

    /// Whether `address` of `key` is still wanted.
    pub fn wants(&self, key: &PluginKey, address: &str) -> bool {
        self.plugins
            .get(key)
            .is_some_and(|s| s.endpoints.contains_key(address))
    }

    /// Whether facts are known for `key` (so probes need not ask again).
    pub fn has_facts(&self, key: &PluginKey) -> bool {
        self.plugins
            .get(key)
            .and_then(|s| s.facts.as_ref())
            .is_some_and(|f| f.model.is_some() || f.embedder.is_some())
    }

    /// A copy of one plugin's state.
    pub fn get(&self, key: &PluginKey) -> Option<PluginState> {
        self.plugins.get(key).cloned()
    }

    /// Forgets a deleted plugin; returns its endpoints, to stop their probes.
    pub fn remove(&mut self, key: &PluginKey) -> Vec<String> {
        self.plugins
            .remove(key)
            .map(|s| s.endpoints.into_keys().collect())
            .unwrap_or_default()
    }

    /// Every plugin known.
    pub fn keys(&self) -> Vec<PluginKey> {
        self.plugins.keys().cloned().collect()
    }

    /// Number of published endpoints per namespace.
    pub fn published_per_namespace(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (key, state) in &self.plugins {
            *out.entry(key.namespace.clone()).or_default() += state.published().len();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PluginKey {
        PluginKey {
            namespace: "agents".into(),
            name: "llm".into(),
        }
    }

    fn ready(addrs: &[&str]) -> BTreeMap<String, Stage> {
        addrs
            .iter()
            .map(|a| (a.to_string(), Stage::Ready))
            .collect()
    }

    fn fail(kind: FailureKind) -> ProbeOutcome {
        ProbeOutcome::Failed(kind, "health file present".into())
    }

    #[test]
    fn a_new_endpoint_is_published_by_its_first_healthy_probe() {
        let mut index = Index::default();
        let changes = index.set_endpoints(&key(), &ready(&["10.0.0.1:1"]), 3, &[], None);
        assert_eq!(changes.added, vec!["10.0.0.1:1".to_string()]);
        let state = index.get(&key()).expect("known");
        assert_eq!(state.views()[0].1, EndpointView::Pending);
        assert!(state.published().is_empty());
        assert!(index.record(&key(), "10.0.0.1:1", &ProbeOutcome::Healthy(None)));
        assert_eq!(
            index.get(&key()).expect("known").published(),
            ["10.0.0.1:1"]
        );
    }

    #[test]
    fn failures_unpublish_only_at_the_threshold_and_recovery_republishes() {
        let mut index = Index::default();
        index.set_endpoints(&key(), &ready(&["a:1"]), 3, &[], None);
        index.record(&key(), "a:1", &ProbeOutcome::Healthy(None));
        assert!(!index.record(&key(), "a:1", &fail(FailureKind::Unhealthy)));
        assert!(!index.record(&key(), "a:1", &fail(FailureKind::Unhealthy)));
        assert_eq!(index.get(&key()).expect("known").published(), ["a:1"]);
        assert!(index.record(&key(), "a:1", &fail(FailureKind::Unhealthy)));
        let state = index.get(&key()).expect("known");
        assert!(state.published().is_empty());
        assert_eq!(
            state.views()[0].1,
            EndpointView::Unhealthy(FailureKind::Unhealthy, "health file present".into())
        );
        assert!(index.record(&key(), "a:1", &ProbeOutcome::Healthy(None)));
        assert_eq!(index.get(&key()).expect("known").published(), ["a:1"]);
    }

    #[test]
    fn identity_mismatch_unpublishes_at_once() {
        let mut index = Index::default();
        index.set_endpoints(&key(), &ready(&["a:1"]), 3, &["a:1".into()], None);
        assert!(index.record(&key(), "a:1", &fail(FailureKind::IdentityMismatch)));
        assert!(index.get(&key()).expect("known").published().is_empty());
    }

    #[test]
    fn carried_endpoints_stay_published_until_probed_and_a_confirming_probe_changes_nothing() {
        let mut index = Index::default();
        let facts = Facts {
            model: Some(ModelFacts {
                model_name: "m".into(),
                max_tokens: Some(5),
            }),
            ..Default::default()
        };
        index.set_endpoints(
            &key(),
            &ready(&["a:1", "b:1"]),
            3,
            &["a:1".into()],
            Some(facts.clone()),
        );
        let state = index.get(&key()).expect("known");
        assert_eq!(state.published(), ["a:1"]);
        assert_eq!(state.facts, Some(facts.clone()));
        assert!(!index.record(&key(), "a:1", &ProbeOutcome::Healthy(Some(facts))));
    }

    #[test]
    fn removed_endpoints_are_reported_and_their_late_probes_ignored() {
        let mut index = Index::default();
        index.set_endpoints(&key(), &ready(&["a:1", "b:1"]), 3, &[], None);
        let changes = index.set_endpoints(&key(), &ready(&["b:1"]), 3, &[], None);
        assert_eq!(changes.removed, vec!["a:1".to_string()]);
        assert!(!index.wants(&key(), "a:1"));
        assert!(!index.record(&key(), "a:1", &ProbeOutcome::Healthy(None)));
        assert_eq!(index.remove(&key()), vec!["b:1".to_string()]);
        assert!(index.get(&key()).is_none());
    }

    #[test]
    fn a_healthy_endpoint_of_an_unready_pod_is_not_published() {
        let mut index = Index::default();
        let mut wanted = BTreeMap::from([("a:1".to_string(), Stage::Started)]);
        index.set_endpoints(&key(), &wanted, 3, &[], None);
        index.record(&key(), "a:1", &ProbeOutcome::Healthy(None));
        let state = index.get(&key()).expect("known");
        assert!(state.published().is_empty());
        assert_eq!(state.views()[0].1, EndpointView::Pending);
        assert!(index.set_stage(&key(), "a:1", Stage::Ready), "usable now");
        assert!(!index.set_stage(&key(), "a:1", Stage::Ready), "no change");
        assert!(
            !index.set_stage(&key(), "b:1", Stage::Ready),
            "unknown endpoint"
        );
        wanted.insert("a:1".into(), Stage::Ready);
        let changes = index.set_endpoints(&key(), &wanted, 3, &[], None);
        assert!(changes.added.is_empty(), "same endpoint, now ready");
        assert_eq!(index.get(&key()).expect("known").published(), ["a:1"]);
    }

    #[test]
    fn a_starting_pod_counts_no_failure_and_a_healthy_reading_waits_for_ready() {
        let mut index = Index::default();
        let wanted = BTreeMap::from([("a:1".to_string(), Stage::Starting)]);
        index.set_endpoints(&key(), &wanted, 1, &[], None);
        let refused = fail(FailureKind::Unreachable);
        assert!(!index.record(&key(), "a:1", &refused), "not counted");
        let state = index.get(&key()).expect("known");
        assert_eq!(state.views()[0].1, EndpointView::Pending);
        assert_eq!(state.endpoints["a:1"].failures, 0);
        index.record(&key(), "a:1", &ProbeOutcome::Healthy(None));
        assert!(index.get(&key()).expect("known").published().is_empty());
        assert!(
            !index.set_stage(&key(), "a:1", Stage::Started),
            "not Ready yet"
        );
        // Started: failures count again (threshold 1 here).
        index.record(&key(), "a:1", &refused);
        assert!(matches!(
            index.get(&key()).expect("known").views()[0].1,
            EndpointView::Unhealthy(FailureKind::Unreachable, _)
        ));
        index.record(&key(), "a:1", &ProbeOutcome::Healthy(None));
        // The healthy reading taken before Ready publishes the moment the Pod turns Ready.
        assert!(
            index.set_stage(&key(), "a:1", Stage::Ready),
            "usable at once"
        );
        assert_eq!(index.get(&key()).expect("known").published(), ["a:1"]);
    }

    #[test]
    fn facts_round_trip_through_the_status() {
        let embedder = Facts {
            name: Some("e".into()),
            version: Some("1.0.0".into()),
            model: None,
            embedder: Some(EmbedderFacts {
                model_name: "hash".into(),
                dimension: 64,
            }),
        };
        assert_eq!(Facts::from_status(&embedder.to_status()), embedder);
        let llm = Facts {
            name: None,
            version: None,
            model: Some(ModelFacts {
                model_name: "echo-1".into(),
                max_tokens: Some(2048),
            }),
            embedder: None,
        };
        assert_eq!(Facts::from_status(&llm.to_status()), llm);
    }

    fn llm_facts(model: &str) -> Facts {
        Facts {
            name: Some("my-llm".into()),
            version: Some("1.2.0".into()),
            model: Some(ModelFacts {
                model_name: model.into(),
                max_tokens: Some(2048),
            }),
            embedder: None,
        }
    }

    #[test]
    fn facts_are_replaced_when_the_plugin_reports_others_and_equal_ones_change_nothing() {
        let mut index = Index::default();
        index.set_endpoints(&key(), &ready(&["a:1"]), 3, &[], Some(llm_facts("old")));
        assert!(index.record(&key(), "a:1", &ProbeOutcome::Healthy(None)));
        assert!(
            !index.record(
                &key(),
                "a:1",
                &ProbeOutcome::Healthy(Some(llm_facts("old")))
            ),
            "same facts: nothing to announce"
        );
        assert!(index.record(
            &key(),
            "a:1",
            &ProbeOutcome::Healthy(Some(llm_facts("new")))
        ));
        let state = index.get(&key()).expect("known");
        assert_eq!(state.facts, Some(llm_facts("new")));
        assert_eq!(state.published(), ["a:1"]);
        // A reseeded status (another reconcile) does not overwrite what the probe read.
        index.set_endpoints(&key(), &ready(&["a:1"]), 3, &[], Some(llm_facts("old")));
        assert_eq!(
            index.get(&key()).expect("known").facts,
            Some(llm_facts("new"))
        );
        // A read without model facts (GetModelInfo timed out) keeps the model.
        let unanswered = Facts {
            model: None,
            ..llm_facts("ignored")
        };
        assert!(!index.record(&key(), "a:1", &ProbeOutcome::Healthy(Some(unanswered))));
        assert_eq!(
            index.get(&key()).expect("known").facts,
            Some(llm_facts("new"))
        );
        // A new version reported by GetManifest is a change too.
        let upgraded = Facts {
            version: Some("1.3.0".into()),
            ..llm_facts("new")
        };
        assert!(index.record(
            &key(),
            "a:1",
            &ProbeOutcome::Healthy(Some(upgraded.clone()))
        ));
        assert_eq!(index.get(&key()).expect("known").facts, Some(upgraded));
    }
}
