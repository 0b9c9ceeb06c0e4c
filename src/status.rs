//! The status a HectorPlugin should show, computed from what the reconciler and the prober
//! know; pure, so every phase and condition is tested without a cluster.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{HectorPluginStatus, Phase};
use crate::index::{EndpointView, FailureKind, PluginState};

/// The summary: the plugin serves on at least one published healthy endpoint and its spec is
/// fully rolled out.
pub const READY: &str = "Ready";
/// kstatus: the spec is not yet realized (Pods rolling out, endpoints being verified).
pub const RECONCILING: &str = "Reconciling";
/// kstatus: no progress without outside action (invalid configuration, Pods that cannot be
/// created, scheduled or run).
pub const STALLED: &str = "Stalled";
/// Whether the configuration could be resolved.
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
    Pods(Pods),
}

/// The plugin's Deployment and Pods as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pods {
    /// Desired replicas.
    pub desired: i32,
    /// Whether the Deployment controller has seen the Deployment's current generation.
    pub observed: bool,
    /// Pods up to date with the current template (0 until `observed`).
    pub updated: i32,
    /// Pods whose Ready condition is true.
    pub ready: i32,
    /// Pods available per the Deployment.
    pub available: i32,
    /// Pods that exist and are not terminating, of any template.
    pub current: i32,
    /// Why Pods are not starting, from their container states (e.g. `CrashLoopBackOff`).
    pub waiting: Vec<String>,
    /// Why Pods cannot be created or placed, if they cannot.
    pub blocked: Option<Blocked>,
}

impl Pods {
    /// Whether the Deployment is at the desired state: its current generation seen, every
    /// desired Pod up to date, available and Ready, and no other Pod left.
    pub fn rolled_out(&self) -> bool {
        self.observed
            && self.updated >= self.desired
            && self.available >= self.desired
            && self.ready >= self.desired
            && self.current <= self.desired
    }
}

/// Why the plugin's Pods cannot be created or placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// `FailedCreate` (quota, Pod Security admission, a webhook), `Unschedulable`, or
    /// `ProgressDeadlineExceeded`.
    pub reason: &'static str,
    /// The API's own message.
    pub message: String,
}

/// Container waiting reasons that do not pass with time: the Pod needs a change.
const STUCK_WAITING: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

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
    /// `spec.replicas`.
    pub replicas: i32,
    /// The Pods' label selector as a string; `None` for a plugin given by `spec.endpoint`.
    pub selector: Option<String>,
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
    /// Whether this transition deserves a Warning rather than a Normal event. `Ready` only
    /// sums up the other conditions, whose own Events carry the warning.
    pub fn is_warning(&self) -> bool {
        self.type_ != READY
            && self.status == "False"
            && !matches!(self.reason.as_str(), "ScaledToZero" | "Probing")
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

impl Cond {
    fn is_true(&self) -> bool {
        self.status == "True"
    }
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
    let pods = match &inputs.rollout {
        Rollout::Pods(p) => Some(p),
        _ => None,
    };
    let scaled_to_zero = pods.is_some_and(|p| p.desired == 0);

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

    let stalled = stalled_condition(inputs, &config, &healthy);
    let reconciling = reconciling_condition(inputs, &stalled, &deployed, &healthy);
    let ready = ready_condition(inputs, &published, [&config, &deployed, &healthy, &publish]);

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
    } else if let Some(b) = pods.and_then(|p| p.blocked.as_ref()) {
        let phase = if b.reason == "Unschedulable" {
            Phase::Pending
        } else {
            Phase::Failed
        };
        (phase, deployed.message.clone())
    } else if total == 0 && pods.is_some_and(|p| p.ready == 0 && p.updated == 0) {
        (Phase::Pending, deployed.message.clone())
    } else {
        (Phase::Progressing, deployed.message.clone())
    };

    let conditions = [
        ready,
        reconciling,
        stalled,
        config,
        deployed,
        healthy,
        publish,
    ]
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

    let (replicas, desired) = match &inputs.rollout {
        Rollout::External => (None, 1),
        Rollout::NotApplied => (Some(0), inputs.replicas),
        Rollout::Pods(p) => (Some(p.current), p.desired),
    };
    HectorPluginStatus {
        phase: Some(phase),
        observed_generation: inputs.generation,
        conditions,
        address: inputs.address.clone(),
        endpoints_summary: Some(format!("{}/{desired}", published.len())),
        endpoints: published,
        plugin: inputs
            .probes
            .and_then(|p| p.facts.as_ref())
            .map(|f| f.to_status())
            .filter(|p| p != &Default::default()),
        message: Some(message),
        replicas,
        selector: inputs.selector.clone(),
    }
}

/// `Ready`: true exactly when at least one endpoint is published and the spec is fully
/// rolled out; otherwise the reason and message of the condition that explains it best.
fn ready_condition(inputs: &Inputs<'_>, published: &[String], subs: [&Cond; 4]) -> Cond {
    let [config, deployed, healthy, publish] = subs;
    let rolled_out = match &inputs.rollout {
        Rollout::External => true,
        Rollout::NotApplied => false,
        Rollout::Pods(p) => p.rolled_out(),
    };
    if config.is_true()
        && inputs.failure.is_none()
        && inputs.publication.is_none()
        && !published.is_empty()
        && rolled_out
    {
        return cond(
            READY,
            "True",
            "Ready",
            format!(
                "serving on {} published endpoint(s); the spec is rolled out",
                published.len()
            ),
        );
    }
    if matches!(&inputs.rollout, Rollout::Pods(p) if p.desired == 0) && config.is_true() {
        return cond(
            READY,
            "False",
            "ScaledToZero",
            "spec.replicas is 0: nothing serves, as asked".into(),
        );
    }
    // The first sub-condition that is not true explains it; but Pods that are merely not
    // Ready are usually the effect of failing probes, so Healthy explains those first.
    let not_ready_pods = !deployed.is_true() && deployed.reason == "PodsNotReady";
    let culprit = [config, deployed, healthy, publish]
        .into_iter()
        .filter(|c| !(not_ready_pods && c.type_ == DEPLOYED))
        .chain([deployed])
        .find(|c| !c.is_true());
    match culprit {
        Some(c) => cond(READY, "False", c.reason, c.message.clone()),
        // Every sub-condition holds but the Deployment is still settling (an old Pod left).
        None => cond(READY, "False", "RollingOut", deployed.message.clone()),
    }
}

/// `Stalled`: what keeps the plugin from progressing until someone changes something.
fn stalled_condition(inputs: &Inputs<'_>, config: &Cond, healthy: &Cond) -> Cond {
    let pods = match &inputs.rollout {
        Rollout::Pods(p) => Some(p),
        _ => None,
    };
    let stuck: Vec<&String> = pods
        .map(|p| {
            p.waiting
                .iter()
                .filter(|w| {
                    w.rsplit(": ")
                        .next()
                        .is_some_and(|r| STUCK_WAITING.contains(&r))
                })
                .collect()
        })
        .unwrap_or_default();
    let why: Option<(&'static str, String)> = if !config.is_true() {
        Some((config.reason, config.message.clone()))
    } else if let Some(f) = inputs.failure.as_ref().filter(|f| f.permanent) {
        Some((f.reason, f.message.clone()))
    } else if let Some(b) = pods.and_then(|p| p.blocked.as_ref()) {
        Some((b.reason, b.message.clone()))
    } else if !stuck.is_empty() {
        let list: Vec<&str> = stuck.iter().map(|s| s.as_str()).collect();
        Some((
            "PodsFailing",
            format!("Pods cannot run: {}", list.join(", ")),
        ))
    } else if healthy.reason == "IdentityMismatch" {
        Some((healthy.reason, healthy.message.clone()))
    } else {
        inputs.publication.clone()
    };
    match why {
        Some((reason, message)) => cond(STALLED, "True", reason, message),
        None => cond(
            STALLED,
            "False",
            "AsExpected",
            "nothing keeps the plugin from its spec".into(),
        ),
    }
}

/// `Reconciling`: the spec is not realized yet and the operator (or Kubernetes) is on it.
/// False while stalled: waiting would not help.
fn reconciling_condition(
    inputs: &Inputs<'_>,
    stalled: &Cond,
    deployed: &Cond,
    healthy: &Cond,
) -> Cond {
    if stalled.is_true() {
        return cond(
            RECONCILING,
            "False",
            "Stalled",
            "no progress without a change: see the Stalled condition".into(),
        );
    }
    if let Some(f) = &inputs.failure {
        return cond(RECONCILING, "True", f.reason, f.message.clone());
    }
    let rolling = match &inputs.rollout {
        Rollout::Pods(p) => !p.rolled_out(),
        Rollout::NotApplied => true,
        Rollout::External => false,
    };
    if rolling {
        return cond(
            RECONCILING,
            "True",
            deployed.reason,
            deployed.message.clone(),
        );
    }
    if healthy.status == "Unknown" {
        return cond(RECONCILING, "True", healthy.reason, healthy.message.clone());
    }
    cond(
        RECONCILING,
        "False",
        "Reconciled",
        match inputs.generation {
            Some(g) => format!("generation {g} is realized"),
            None => "the spec is realized".into(),
        },
    )
}

/// `Deployed` from the state of the Pods alone.
fn deployed_condition(rollout: &Rollout) -> Cond {
    let p = match rollout {
        Rollout::External => {
            return cond(
                DEPLOYED,
                "True",
                "ExternalEndpoint",
                "the plugin runs outside the cluster (spec.endpoint); no Pods".into(),
            );
        }
        Rollout::NotApplied => {
            return cond(
                DEPLOYED,
                "False",
                "ConfigInvalid",
                "no Pods are created until the configuration is valid".into(),
            );
        }
        Rollout::Pods(p) => p,
    };
    if p.desired == 0 {
        return if p.current == 0 {
            cond(
                DEPLOYED,
                "True",
                "ScaledToZero",
                "spec.replicas is 0".into(),
            )
        } else {
            cond(
                DEPLOYED,
                "False",
                "RollingOut",
                format!("scaling to 0: {} Pod(s) left", p.current),
            )
        };
    }
    let mut message = format!(
        "{}/{} Pods ready, {} up to date",
        p.ready, p.desired, p.updated
    );
    if !p.waiting.is_empty() {
        message.push_str(&format!("; waiting: {}", p.waiting.join(", ")));
    }
    if let Some(b) = &p.blocked {
        return cond(
            DEPLOYED,
            "False",
            b.reason,
            format!("{}; {message}", b.message),
        );
    }
    if p.rolled_out() {
        cond(DEPLOYED, "True", "PodsReady", message)
    } else if !p.observed || p.updated < p.desired || p.current > p.desired {
        cond(DEPLOYED, "False", "RollingOut", message)
    } else {
        cond(DEPLOYED, "False", "PodsNotReady", message)
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

/// Conditions whose status or reason differ between `old` and `new`. `Reconciling` and
/// `Stalled` only restate the others for tools (kstatus): their changes make no Events.
pub fn transitions(old: Option<&HectorPluginStatus>, new: &HectorPluginStatus) -> Vec<Transition> {
    new.conditions
        .iter()
        .filter(|c| c.type_ != RECONCILING && c.type_ != STALLED)
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
    use crate::index::{Facts, Index, PluginKey, ProbeOutcome, Stage};
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

    /// A Deployment whose current generation was seen, with every desired Pod up to date
    /// and `ready` of them Ready (and available).
    fn pods(desired: i32, ready: i32) -> Rollout {
        Rollout::Pods(Pods {
            desired,
            observed: true,
            updated: desired,
            ready,
            available: ready,
            current: desired,
            ..Default::default()
        })
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
            replicas: 1,
            selector: Some("hector.dev/plugin=p".into()),
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
            &BTreeMap::from([("10.0.0.1:50051".to_string(), Stage::Ready)]),
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
        assert_eq!(
            conditions,
            [
                READY,
                RECONCILING,
                STALLED,
                CONFIG_VALID,
                DEPLOYED,
                HEALTHY,
                PUBLISHED
            ]
        );
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Ready")
        );
        assert_eq!(condition(&s, RECONCILING).status, "False");
        assert_eq!(condition(&s, STALLED).status, "False");
        assert_eq!(s.endpoints_summary.as_deref(), Some("1/1"));
        assert_eq!(s.replicas, Some(1));
        assert_eq!(s.selector.as_deref(), Some("hector.dev/plugin=p"));
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
            &BTreeMap::from([("10.0.0.1:50051".to_string(), Stage::Ready)]),
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
            &BTreeMap::from([
                ("a:1".to_string(), Stage::Ready),
                ("b:1".to_string(), Stage::Ready),
            ]),
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
            &BTreeMap::from([("a:1".to_string(), Stage::Ready)]),
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
            &BTreeMap::from([("a:1".to_string(), Stage::Ready)]),
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
        // Reconciling and Stalled make no Events of their own.
        let types: Vec<String> = transitions(None, &first)
            .into_iter()
            .map(|t| t.type_)
            .collect();
        assert_eq!(types, [READY, CONFIG_VALID, DEPLOYED, HEALTHY, PUBLISHED]);
    }

    #[test]
    fn waiting_reasons_show_in_deployed() {
        let rollout = Rollout::Pods(Pods {
            desired: 1,
            observed: true,
            updated: 1,
            current: 1,
            waiting: vec!["plugin: CrashLoopBackOff".into()],
            ..Default::default()
        });
        let s = compute(&inputs(rollout, None), None, now());
        let d = condition(&s, DEPLOYED);
        assert_eq!(d.reason, "PodsNotReady");
        assert!(d.message.contains("CrashLoopBackOff"), "{}", d.message);
        assert_eq!(s.phase, Some(Phase::Progressing));
        // A crash loop does not pass with time: stalled, not reconciling.
        let stalled = condition(&s, STALLED);
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "PodsFailing")
        );
        assert!(stalled.message.contains("plugin: CrashLoopBackOff"));
        assert_eq!(condition(&s, RECONCILING).status, "False");
        assert_eq!(condition(&s, READY).status, "False");
    }

    fn published_state(addresses: &[&str]) -> PluginState {
        let mut index = Index::default();
        index.set_endpoints(
            &key(),
            &addresses
                .iter()
                .map(|a| (a.to_string(), Stage::Ready))
                .collect(),
            3,
            &[],
            None,
        );
        for a in addresses {
            index.record(&key(), a, &ProbeOutcome::Healthy(None));
        }
        index.get(&key()).expect("known")
    }

    fn status_reason(s: &HectorPluginStatus, t: &str) -> (String, String) {
        let c = condition(s, t);
        (c.status.clone(), c.reason.clone())
    }

    fn pair(status: &str, reason: &str) -> (String, String) {
        (status.to_string(), reason.to_string())
    }

    #[test]
    fn serving_while_rolling_out_is_not_ready_but_reconciling() {
        let state = published_state(&["a:1"]);
        // A new template: one Pod up to date of two, the old ones still serving.
        let rollout = Rollout::Pods(Pods {
            desired: 2,
            observed: true,
            updated: 1,
            ready: 2,
            available: 2,
            current: 3,
            ..Default::default()
        });
        let s = compute(&inputs(rollout, Some(&state)), None, now());
        assert_eq!(s.phase, Some(Phase::Ready), "the phase only says it serves");
        assert_eq!(status_reason(&s, READY), pair("False", "RollingOut"));
        assert_eq!(status_reason(&s, RECONCILING), pair("True", "RollingOut"));
        assert_eq!(status_reason(&s, STALLED), pair("False", "AsExpected"));
        assert_eq!(s.endpoints_summary.as_deref(), Some("1/2"));
        assert_eq!(s.replicas, Some(3));
        // An unseen generation is not rolled out either, whatever its counts say.
        let unseen = Rollout::Pods(Pods {
            observed: false,
            ..match pods(1, 1) {
                Rollout::Pods(p) => p,
                _ => unreachable!(),
            }
        });
        let s = compute(&inputs(unseen, Some(&state)), None, now());
        assert_eq!(status_reason(&s, READY), pair("False", "RollingOut"));
    }

    #[test]
    fn new_endpoints_being_probed_are_reconciling_with_the_probe_reason() {
        let mut index = Index::default();
        index.set_endpoints(
            &key(),
            &BTreeMap::from([("a:1".to_string(), Stage::Ready)]),
            3,
            &[],
            None,
        );
        let state = index.get(&key()).expect("known");
        let s = compute(&inputs(pods(1, 1), Some(&state)), None, now());
        assert_eq!(status_reason(&s, READY), pair("False", "Probing"));
        assert_eq!(status_reason(&s, RECONCILING), pair("True", "Probing"));
        assert_eq!(s.endpoints_summary.as_deref(), Some("0/1"));
    }

    #[test]
    fn refused_pod_creation_is_failed_create_stalled_with_the_apis_message() {
        let quota = "pods \"p-1\" is forbidden: exceeded quota: q";
        let rollout = Rollout::Pods(Pods {
            desired: 1,
            observed: true,
            blocked: Some(Blocked {
                reason: "FailedCreate",
                message: quota.into(),
            }),
            ..Default::default()
        });
        let s = compute(&inputs(rollout, None), None, now());
        let d = condition(&s, DEPLOYED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("False", "FailedCreate")
        );
        assert!(d.message.starts_with(quota), "{}", d.message);
        assert!(d.message.contains("0/1 Pods ready"), "{}", d.message);
        let stalled = condition(&s, STALLED);
        assert_eq!(
            (
                stalled.status.as_str(),
                stalled.reason.as_str(),
                stalled.message.as_str()
            ),
            ("True", "FailedCreate", quota)
        );
        assert_eq!(status_reason(&s, RECONCILING), pair("False", "Stalled"));
        assert_eq!(status_reason(&s, READY), pair("False", "FailedCreate"));
        assert_eq!(s.phase, Some(Phase::Failed));
        let t = transitions(None, &s);
        assert!(
            t.iter()
                .any(|t| t.type_ == DEPLOYED && t.reason == "FailedCreate" && t.is_warning()),
            "{t:?}"
        );
    }

    #[test]
    fn an_unschedulable_pod_is_its_own_reason_not_a_bare_rollout() {
        let message = "0/1 nodes are available: 1 Insufficient cpu.";
        let rollout = Rollout::Pods(Pods {
            desired: 1,
            observed: true,
            updated: 1,
            current: 1,
            blocked: Some(Blocked {
                reason: "Unschedulable",
                message: message.into(),
            }),
            ..Default::default()
        });
        let s = compute(&inputs(rollout, None), None, now());
        assert_eq!(status_reason(&s, DEPLOYED), pair("False", "Unschedulable"));
        assert_eq!(status_reason(&s, READY), pair("False", "Unschedulable"));
        assert_eq!(
            condition(&s, READY).message,
            condition(&s, DEPLOYED).message
        );
        assert_eq!(status_reason(&s, STALLED), pair("True", "Unschedulable"));
        assert_eq!(s.phase, Some(Phase::Pending));
    }

    #[test]
    fn scaled_to_zero_is_reconciled_not_ready_and_no_failure() {
        let s = compute(&inputs(pods(0, 0), None), None, now());
        assert_eq!(status_reason(&s, READY), pair("False", "ScaledToZero"));
        // kstatus: neither reconciling nor stalled with a current generation is Current.
        assert_eq!(status_reason(&s, RECONCILING), pair("False", "Reconciled"));
        assert_eq!(status_reason(&s, STALLED), pair("False", "AsExpected"));
        assert_eq!(s.endpoints_summary.as_deref(), Some("0/0"));
        assert_eq!(s.replicas, Some(0));
        assert!(
            transitions(None, &s).iter().all(|t| !t.is_warning()),
            "no Warning for a deliberate scale to zero"
        );
        // Pods still going away: still reconciling.
        let draining = Rollout::Pods(Pods {
            observed: true,
            current: 2,
            ..Default::default()
        });
        let s = compute(&inputs(draining, None), None, now());
        assert_eq!(status_reason(&s, RECONCILING), pair("True", "RollingOut"));
        assert_eq!(status_reason(&s, READY), pair("False", "ScaledToZero"));
    }

    #[test]
    fn an_invalid_configuration_stalls_with_its_reason() {
        let mut i = inputs(Rollout::NotApplied, None);
        i.config = ConfigVerdict::Invalid(
            "InvalidPodTemplate",
            "spec.podTemplate.volumes[0].name: \"tmp\" is one of the operator's own volumes".into(),
        );
        let s = compute(&i, None, now());
        assert_eq!(
            status_reason(&s, STALLED),
            pair("True", "InvalidPodTemplate")
        );
        assert!(
            condition(&s, STALLED)
                .message
                .starts_with("spec.podTemplate.volumes[0]")
        );
        assert_eq!(status_reason(&s, RECONCILING), pair("False", "Stalled"));
        assert_eq!(
            status_reason(&s, READY),
            pair("False", "InvalidPodTemplate")
        );
        assert_eq!(s.endpoints_summary.as_deref(), Some("0/1"));
        // Old Pods still serving do not make a refused spec Ready.
        let state = published_state(&["a:1"]);
        i.rollout = pods(1, 1);
        i.probes = Some(&state);
        let s = compute(&i, None, now());
        assert_eq!(
            status_reason(&s, READY),
            pair("False", "InvalidPodTemplate")
        );
    }

    #[test]
    fn a_passing_api_failure_is_reconciling_and_a_permanent_one_stalled() {
        let mut i = inputs(Rollout::NotApplied, None);
        i.failure = Some(Failure {
            reason: "ApiError",
            message: "apply Deployment ns/p: 503".into(),
            permanent: false,
        });
        let s = compute(&i, None, now());
        assert_eq!(status_reason(&s, RECONCILING), pair("True", "ApiError"));
        assert_eq!(status_reason(&s, STALLED), pair("False", "AsExpected"));
        assert_eq!(status_reason(&s, READY), pair("False", "ApiError"));
        i.failure = Some(Failure {
            reason: "NameConflict",
            message: "Service ns/p exists".into(),
            permanent: true,
        });
        let s = compute(&i, None, now());
        assert_eq!(status_reason(&s, STALLED), pair("True", "NameConflict"));
        assert_eq!(status_reason(&s, RECONCILING), pair("False", "Stalled"));
    }

    #[test]
    fn unready_pods_of_an_unhealthy_plugin_are_explained_by_its_health() {
        let mut index = Index::default();
        index.set_endpoints(
            &key(),
            &BTreeMap::from([("a:1".to_string(), Stage::Started)]),
            1,
            &[],
            None,
        );
        index.record(
            &key(),
            "a:1",
            &ProbeOutcome::Failed(FailureKind::Unhealthy, "upstream down".into()),
        );
        let state = index.get(&key()).expect("known");
        let s = compute(&inputs(pods(1, 0), Some(&state)), None, now());
        assert_eq!(status_reason(&s, DEPLOYED), pair("False", "PodsNotReady"));
        assert_eq!(status_reason(&s, READY), pair("False", "PluginUnhealthy"));
        assert!(condition(&s, READY).message.contains("upstream down"));
        // A plugin reporting another identity needs a change of image or manifest.
        index.record(
            &key(),
            "a:1",
            &ProbeOutcome::Failed(FailureKind::IdentityMismatch, "reports name x".into()),
        );
        let state = index.get(&key()).expect("known");
        let s = compute(&inputs(pods(1, 0), Some(&state)), None, now());
        assert_eq!(status_reason(&s, STALLED), pair("True", "IdentityMismatch"));
    }

    #[test]
    fn an_external_plugin_has_no_selector_and_counts_one_endpoint() {
        let state = published_state(&["far:50051"]);
        let mut i = inputs(Rollout::External, Some(&state));
        i.selector = None;
        let s = compute(&i, None, now());
        assert_eq!(status_reason(&s, READY), pair("True", "Ready"));
        assert_eq!(s.endpoints_summary.as_deref(), Some("1/1"));
        assert_eq!((s.replicas, s.selector.as_deref()), (None, None));
    }

    #[test]
    fn ready_transitions_are_never_warnings() {
        let t = Transition {
            type_: READY.into(),
            status: "False".into(),
            reason: "RollingOut".into(),
            message: "0/1 Pods ready".into(),
        };
        assert!(!t.is_warning());
        let t = Transition {
            type_: DEPLOYED.into(),
            ..t
        };
        assert!(t.is_warning());
    }
}
