//! The status a HectorPlugin should show, computed from what the reconciler and the prober
//! know; pure, so every phase and condition is tested without a cluster.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{HectorPluginStatus, Phase};
use crate::index::{EndpointView, FailureKind, PluginState};

/// Condition types, in the order they are listed.
pub const CONFIG_VALID: &str = "ConfigValid";
/// Pods (or the external endpoint) are in place.
pub const DEPLOYED: &str = "Deployed";
/// Every endpoint passes its probes.
pub const HEALTHY: &str = "Healthy";
/// At least one endpoint is in the endpoints ConfigMap.
pub const PUBLISHED: &str = "Published";

/// Whether the configuration could be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigVerdict {
    /// Resolved; the message says what it holds.
    Valid(String),
    /// Not usable: a CamelCase reason and a message for humans.
    Invalid(&'static str, String),
}

/// The state of the plugin's Pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// `spec.endpoint`: nothing runs in the cluster.
    External,
    /// Nothing applied (configuration invalid before any Pod ran).
    NotApplied,
    /// The Deployment as observed.
    Pods {
        /// Desired replicas.
        desired: i32,
        /// Pods up to date with the current template.
        updated: i32,
        /// Pods whose Ready condition is true.
        ready: i32,
        /// Why Pods are not starting, from their container states (e.g. `CrashLoopBackOff`).
        waiting: Vec<String>,
    },
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Configuration verdict.
    pub config: ConfigVerdict,
    /// Pods.
    pub rollout: Rollout,
    /// Probe state (absent before anything is known).
    pub probes: Option<&'a PluginState>,
    /// The address agents use.
    pub address: Option<String>,
    /// Name of the endpoints ConfigMap, for messages.
    pub configmap: &'a str,
    /// Why the plugin's objects could not be applied this time, if they could not.
    pub failure: Option<Failure>,
    /// Why the publisher left the plugin out of the endpoints ConfigMap, if it did:
    /// a reason (`PublicationTooLarge`, `NameConflict`) and a message.
    pub publication: Option<(&'static str, String)>,
}

/// A failure to apply the plugin's objects, as the resource shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase reason of the `Deployed=False` condition, e.g. `NameConflict`.
    pub reason: &'static str,
    /// What happened, with the API's own message where there is one.
    pub message: String,
    /// Whether only a change by a person helps (phase `Failed`) rather than time (`Degraded`).
    pub permanent: bool,
}

/// A condition that changed, for an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Condition type.
    pub type_: String,
    /// New status (`True`, `False`, `Unknown`).
    pub status: String,
    /// New reason.
    pub reason: String,
    /// New message.
    pub message: String,
}

impl Transition {
    /// Whether this transition deserves a Warning rather than a Normal event.
    pub fn is_warning(&self) -> bool {
        self.status == "False" && !matches!(self.reason.as_str(), "ScaledToZero" | "Probing")
    }

    /// The Event note, cut to the API's limit on notes.
    pub fn note(&self) -> String {
        truncate_note(&format!(
            "{} is {}: {}",
            self.type_, self.status, self.message
        ))
    }
}

/// The API rejects Event notes over 1 KiB; a longer text is cut at a character boundary and
/// marked as cut.
pub const NOTE_LIMIT: usize = 1024;

/// `text`, cut to [`NOTE_LIMIT`] bytes.
pub fn truncate_note(text: &str) -> String {
    if text.len() <= NOTE_LIMIT {
        return text.to_string();
    }
    const MARK: &str = " …(cut)";
    let mut end = NOTE_LIMIT - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

struct Cond {
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    message: String,
}

/// The status to show, given the current one (whose transition times are kept for
/// conditions that did not change).
pub fn compute(
    inputs: &Inputs<'_>,
    current: Option<&HectorPluginStatus>,
    now: Timestamp,
) -> HectorPluginStatus {
    let views = inputs.probes.map(PluginState::views).unwrap_or_default();
    let published: Vec<String> = inputs
        .probes
        .map(PluginState::published)
        .unwrap_or_default();
    let unhealthy: Vec<(&String, FailureKind, &String)> = views
        .iter()
        .filter_map(|(a, v)| match v {
            EndpointView::Unhealthy(k, m) => Some((a, *k, m)),
            _ => None,
        })
        .collect();
    let pending = views
        .iter()
        .filter(|(_, v)| *v == EndpointView::Pending)
        .count();
    let scaled_to_zero = matches!(inputs.rollout, Rollout::Pods { desired: 0, .. });

    let config = match &inputs.config {
        ConfigVerdict::Valid(m) => cond(CONFIG_VALID, "True", "Resolved", m.clone()),
        ConfigVerdict::Invalid(r, m) => cond(CONFIG_VALID, "False", r, m.clone()),
    };
    let deployed = match (&inputs.failure, &inputs.rollout) {
        (Some(f), _) => cond(DEPLOYED, "False", f.reason, f.message.clone()),
        (None, rollout) => deployed_condition(rollout),
    };
    let total = views.len();

    let healthy = if scaled_to_zero {
        cond(
            HEALTHY,
            "False",
            "ScaledToZero",
            "no endpoints to probe".into(),
        )
    } else if total == 0 {
        cond(
            HEALTHY,
            "Unknown",
            "NoEndpoints",
            "no ready endpoint to probe yet".into(),
        )
    } else if let Some((_, kind, _)) = unhealthy.first() {
        let detail: Vec<String> = unhealthy
            .iter()
            .map(|(a, _, m)| format!("{a}: {m}"))
            .collect();
        cond(
            HEALTHY,
            "False",
            kind.reason(),
            format!(
                "{} of {total} endpoints unhealthy: {}",
                unhealthy.len(),
                detail.join("; ")
            ),
        )
    } else if pending > 0 && published.is_empty() {
        cond(
            HEALTHY,
            "Unknown",
            "Probing",
            format!("probing {pending} new endpoint(s)"),
        )
    } else {
        cond(
            HEALTHY,
            "True",
            "Healthy",
            format!("{}/{total} endpoints pass their probes", published.len()),
        )
    };
    let publish = if let Some((reason, message)) = &inputs.publication {
        cond(PUBLISHED, "False", reason, message.clone())
    } else if !published.is_empty() {
        cond(
            PUBLISHED,
            "True",
            "Published",
            format!(
                "{} endpoint(s) in ConfigMap {}",
                published.len(),
                inputs.configmap
            ),
        )
    } else if scaled_to_zero {
        cond(
            PUBLISHED,
            "False",
            "ScaledToZero",
            "not published: no Pods".into(),
        )
    } else if let ConfigVerdict::Invalid(..) = inputs.config {
        cond(
            PUBLISHED,
            "False",
            "ConfigInvalid",
            "not published: the configuration is invalid".into(),
        )
    } else {
        cond(
            PUBLISHED,
            "False",
            "NoHealthyEndpoints",
            "not published: no endpoint passes its probes".into(),
        )
    };

    let (phase, message) = if let ConfigVerdict::Invalid(_, m) = &inputs.config {
        (Phase::Failed, m.clone())
    } else if let Some(f) = &inputs.failure {
        let phase = if f.permanent {
            Phase::Failed
        } else {
            Phase::Degraded
        };
        (phase, f.message.clone())
    } else if let Some((_, m)) = &inputs.publication
        && !published.is_empty()
    {
        (Phase::Degraded, m.clone())
    } else if scaled_to_zero {
        (Phase::Pending, "scaled to zero".to_string())
    } else if !unhealthy.is_empty() {
        (Phase::Degraded, healthy.message.clone())
    } else if !published.is_empty() {
        (
            Phase::Ready,
            format!("serving on {} endpoint(s)", published.len()),
        )
    } else if total == 0
        && matches!(
            &inputs.rollout,
            Rollout::Pods {
                ready: 0,
                updated: 0,
                ..
            }
        )
    {
        (Phase::Pending, deployed.message.clone())
    } else {
        (Phase::Progressing, deployed.message.clone())
    };

    let conditions = [config, deployed, healthy, publish]
        .into_iter()
        .map(|c| {
            let previous = current.and_then(|s| s.conditions.iter().find(|p| p.type_ == c.type_));
            let since = match previous {
                Some(p) if p.status == c.status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: c.type_.into(),
                status: c.status.into(),
                reason: c.reason.into(),
                message: c.message,
                last_transition_time: since,
                observed_generation: inputs.generation,
            }
        })
        .collect();

    HectorPluginStatus {
        phase: Some(phase),
        observed_generation: inputs.generation,
        conditions,
        address: inputs.address.clone(),
        endpoints: published,
        plugin: inputs
            .probes
            .and_then(|p| p.facts.as_ref())
            .map(|f| f.to_status())
            .filter(|p| p != &Default::default()),
        message: Some(message),
    }
}

/// `Deployed` from the state of the Pods alone.
fn deployed_condition(rollout: &Rollout) -> Cond {
    match rollout {
        Rollout::External => cond(
            DEPLOYED,
            "True",
            "ExternalEndpoint",
            "the plugin runs outside the cluster (spec.endpoint); no Pods".into(),
        ),
        Rollout::NotApplied => cond(
            DEPLOYED,
            "False",
            "ConfigInvalid",
            "no Pods are created until the configuration is valid".into(),
        ),
        Rollout::Pods { desired: 0, .. } => cond(
            DEPLOYED,
            "True",
            "ScaledToZero",
            "spec.replicas is 0".into(),
        ),
        Rollout::Pods {
            desired,
            updated,
            ready,
            waiting,
        } => {
            let mut message = format!("{ready}/{desired} Pods ready, {updated} up to date");
            if !waiting.is_empty() {
                message.push_str(&format!("; waiting: {}", waiting.join(", ")));
            }
            if ready >= desired && updated >= desired {
                cond(DEPLOYED, "True", "PodsReady", message)
            } else if updated < desired {
                cond(DEPLOYED, "False", "RollingOut", message)
            } else {
                cond(DEPLOYED, "False", "PodsNotReady", message)
            }
        }
    }
}

fn cond(type_: &'static str, status: &'static str, reason: &'static str, message: String) -> Cond {
    Cond {
        type_,
        status,
        reason,
        message,
    }
}

/// Conditions whose status or reason differ between `old` and `new`.
pub fn transitions(old: Option<&HectorPluginStatus>, new: &HectorPluginStatus) -> Vec<Transition> {
    new.conditions
        .iter()
        .filter(|c| {
            let before = old.and_then(|s| s.conditions.iter().find(|p| p.type_ == c.type_));
            before.is_none_or(|p| p.status != c.status || p.reason != c.reason)
        })
        .map(|c| Transition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Facts, Index, PluginKey, ProbeOutcome};
    use std::collections::BTreeMap;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("valid")
    }

    fn key() -> PluginKey {
        PluginKey {
            namespace: "ns".into(),
            name: "p".into(),
        }
    }

    fn pods(desired: i32, ready: i32) -> Rollout {
        Rollout::Pods {
            desired,
            updated: desired,
            ready,
            waiting: vec![],
        }
    }

    fn inputs<'a>(rollout: Rollout, probes: Option<&'a PluginState>) -> Inputs<'a> {
        Inputs {
            generation: Some(2),
            config: ConfigVerdict::Valid("2 keys".into()),
            rollout,
            probes,
            address: Some("p.ns.svc:50051".into()),
            configmap: "hector-plugins",
            failure: None,
            publication: None,
        }
    }

    fn condition<'a>(s: &'a HectorPluginStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn healthy_endpoints_make_it_ready_and_published() {
        let mut index = Index::default();
        index.set_endpoints(
            &key(),
            &BTreeMap::from([("10.0.0.1:50051".to_string(), true)]),
            3,
            &[],
            None,
        );
        index.record(
            &key(),
            "10.0.0.1:50051",
            &ProbeOutcome::Healthy(Some(Facts {
                model: Some(hector_plugin_sdk::endpoints::ModelFacts {
                    model_name: "echo-1".into(),
                    max_tokens: Some(2048),
                }),
                ..Default::default()
            })),
        );
        let state = index.get(&key()).expect("known");
        let s = compute(&inputs(pods(1, 1), Some(&state)), None, now());
        assert_eq!(s.phase, Some(Phase::Ready));
        assert_eq!(s.endpoints, ["10.0.0.1:50051"]);
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(condition(&s, PUBLISHED).status, "True");
        assert_eq!(condition(&s, HEALTHY).reason, "Healthy");
        assert_eq!(
            s.plugin.as_ref().and_then(|p| p.model_name.as_deref()),
            Some("echo-1")
        );
        let conditions: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(conditions, [CONFIG_VALID, DEPLOYED, HEALTHY, PUBLISHED]);
    }

    #[test]
    fn invalid_config_fails_without_pods() {
        let mut i = inputs(Rollout::NotApplied, None);
        i.config = ConfigVerdict::Invalid("SecretNotFound", "Secret s not found".into());
        let s = compute(&i, None, now());
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(condition(&s, CONFIG_VALID).reason, "SecretNotFound");
        assert_eq!(condition(&s, DEPLOYED).status, "False");
        assert_eq!(condition(&s, PUBLISHED).reason, "ConfigInvalid");
        assert_eq!(s.message.as_deref(), Some("Secret s not found"));
    }

    #[test]
    fn event_notes_fit_the_api_limit() {
        let long = "é".repeat(2000);
        let cut = truncate_note(&long);
        assert!(cut.len() <= NOTE_LIMIT, "{}", cut.len());
        assert!(cut.ends_with("(cut)"));
        assert_eq!(truncate_note("short"), "short");
        let t = Transition {
            type_: DEPLOYED.into(),
            status: "False".into(),
            reason: "ApplyRejected".into(),
            message: "x".repeat(5000),
        };
        assert!(t.note().len() <= NOTE_LIMIT);
    }

    #[test]
    fn an_apply_failure_is_on_the_resource_never_an_empty_status() {
        let mut i = inputs(Rollout::NotApplied, None);
        i.failure = Some(Failure {
            reason: "NameConflict",
            message: "ConfigMap ns/p-config exists and was not created by this HectorPlugin".into(),
            permanent: true,
        });
        let s = compute(&i, None, now());
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(condition(&s, DEPLOYED).status, "False");
        assert_eq!(condition(&s, DEPLOYED).reason, "NameConflict");
        assert!(s.message.as_deref().is_some_and(|m| m.contains("p-config")));
        let t = transitions(None, &s);
        assert!(
            t.iter()
                .any(|t| t.reason == "NameConflict" && t.is_warning()),
            "a Warning Event: {t:?}"
        );
        i.failure = Some(Failure {
            reason: "ApiError",
            message: "apply Deployment ns/p: 503 etcd unavailable".into(),
            permanent: false,
        });
        let s = compute(&i, None, now());
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(condition(&s, DEPLOYED).reason, "ApiError");
    }

    #[test]
    fn a_plugin_left_out_of_the_configmap_is_not_published() {
        let mut index = Index::default();
        index.set_endpoints(
            &key(),
            &BTreeMap::from([("10.0.0.1:50051".to_string(), true)]),
            3,
            &[],
            None,
        );
        index.record(&key(), "10.0.0.1:50051", &ProbeOutcome::Healthy(None));
        let state = index.get(&key()).expect("known");
        let mut i = inputs(pods(1, 1), Some(&state));
        i.publication = Some((
            "PublicationTooLarge",
            "left out of ConfigMap hector-plugins: it would exceed 1000000 bytes".into(),
        ));
        let s = compute(&i, None, now());
        assert_eq!(condition(&s, PUBLISHED).status, "False");
        assert_eq!(condition(&s, PUBLISHED).reason, "PublicationTooLarge");
        assert_eq!(s.phase, Some(Phase::Degraded));
    }

    #[test]
    fn unhealthy_endpoints_degrade_and_name_the_plugins_reason() {
        let mut index = Index::default();
        index.set_endpoints(
            &key(),
            &BTreeMap::from([("a:1".to_string(), true), ("b:1".to_string(), true)]),
            1,
            &[],
            None,
        );
        index.record(&key(), "a:1", &ProbeOutcome::Healthy(None));
        index.record(
            &key(),
            "b:1",
            &ProbeOutcome::Failed(FailureKind::Unhealthy, "upstream down".into()),
        );
        let state = index.get(&key()).expect("known");
        let s = compute(&inputs(pods(2, 2), Some(&state)), None, now());
        assert_eq!(s.phase, Some(Phase::Degraded));
        let h = condition(&s, HEALTHY);
        assert_eq!(
            (h.status.as_str(), h.reason.as_str()),
            ("False", "PluginUnhealthy")
        );
        assert!(h.message.contains("b:1: upstream down"), "{}", h.message);
        assert_eq!(s.endpoints, ["a:1"]);
        assert_eq!(condition(&s, PUBLISHED).status, "True");
    }

    #[test]
    fn identity_mismatch_is_its_own_reason() {
        let mut index = Index::default();
        index.set_endpoints(
            &key(),
            &BTreeMap::from([("a:1".to_string(), true)]),
            3,
            &[],
            None,
        );
        index.record(
            &key(),
            "a:1",
            &ProbeOutcome::Failed(FailureKind::IdentityMismatch, "reports name x".into()),
        );
        let state = index.get(&key()).expect("known");
        let s = compute(&inputs(pods(1, 1), Some(&state)), None, now());
        assert_eq!(condition(&s, HEALTHY).reason, "IdentityMismatch");
        assert_eq!(condition(&s, PUBLISHED).status, "False");
        assert!(s.endpoints.is_empty());
    }

    #[test]
    fn scaled_to_zero_is_pending_and_unpublished() {
        let s = compute(&inputs(pods(0, 0), None), None, now());
        assert_eq!(s.phase, Some(Phase::Pending));
        assert_eq!(condition(&s, PUBLISHED).reason, "ScaledToZero");
        assert!(s.endpoints.is_empty());
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time_and_yield_no_transitions() {
        let mut index = Index::default();
        index.set_endpoints(
            &key(),
            &BTreeMap::from([("a:1".to_string(), true)]),
            3,
            &[],
            None,
        );
        index.record(&key(), "a:1", &ProbeOutcome::Healthy(None));
        let state = index.get(&key()).expect("known");
        let first = compute(&inputs(pods(1, 1), Some(&state)), None, now());
        let later = Timestamp::from_second(1_800_000_100).expect("valid");
        let second = compute(&inputs(pods(1, 1), Some(&state)), Some(&first), later);
        assert_eq!(first, second, "same inputs, same status: nothing to write");
        assert!(transitions(Some(&first), &second).is_empty());
        assert_eq!(transitions(None, &first).len(), 4);
    }

    #[test]
    fn waiting_reasons_show_in_deployed() {
        let rollout = Rollout::Pods {
            desired: 1,
            updated: 1,
            ready: 0,
            waiting: vec!["plugin: CrashLoopBackOff".into()],
        };
        let s = compute(&inputs(rollout, None), None, now());
        let d = condition(&s, DEPLOYED);
        assert_eq!(d.reason, "PodsNotReady");
        assert!(d.message.contains("CrashLoopBackOff"), "{}", d.message);
        assert_eq!(s.phase, Some(Phase::Progressing));
    }
}
