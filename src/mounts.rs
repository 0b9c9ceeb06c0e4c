//! Missing Secrets and Secret keys, read from what the kubelet reports about the plugin's
//! Pods (their waiting reasons and `FailedMount` Events). The operator has no permission on
//! Secrets at all, so it learns of a missing one the way a person would: from the Pod that
//! cannot start. Pure: the reconciler hands in what its watches hold.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Event, Pod};

use crate::crd::SecretConfig;

/// Whether the kubelet has mounted the Pod's volumes: some container ran or runs.
pub fn volumes_mounted(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .any(|c| {
            c.state
                .as_ref()
                .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
        })
}

/// When the kubelet last said it: the newest of an Event's timestamps.
fn last_seen(e: &Event) -> Option<k8s_openapi::jiff::Timestamp> {
    [
        e.series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0),
        e.last_timestamp.as_ref().map(|t| t.0),
        e.event_time.as_ref().map(|t| t.0),
        e.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// The kubelet's words about the Pod's volumes and configuration: its latest `FailedMount`
/// Event about this very Pod (by uid; earlier ones describe a state that may have changed,
/// e.g. a Secret created since without the key), and `CreateContainerConfigError` waiting
/// messages.
pub fn kubelet_messages<'a>(pod: &'a Pod, events: &'a [impl AsRef<Event>]) -> Vec<&'a str> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let mut out: Vec<&str> = events
        .iter()
        .map(AsRef::as_ref)
        .filter(|e| e.reason.as_deref() == Some("FailedMount"))
        .filter(|e| !uid.is_empty() && e.involved_object.uid.as_deref() == Some(uid))
        .max_by_key(|e| last_seen(e))
        .and_then(|e| e.message.as_deref())
        .into_iter()
        .collect();
    if let Some(status) = &pod.status {
        out.extend(
            status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten())
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                .filter(|w| w.reason.as_deref() == Some("CreateContainerConfigError"))
                .filter_map(|w| w.message.as_deref()),
        );
    }
    out
}

/// Every quoted name after `prefix` and before `suffix` in `text`, e.g. the `NAME` of
/// `secret "NAME" not found`.
fn quoted_between<'a>(text: &'a str, prefix: &str, suffix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let after = &rest[i + prefix.len()..];
        if let Some(end) = after.find('"') {
            if after[end..].starts_with(&format!("\"{suffix}")) {
                out.push(&after[..end]);
            }
            rest = &after[end..];
        } else {
            break;
        }
    }
    out
}

/// Secret names and Secret keys the kubelet could not find, from its messages:
/// `secret "NAME" not found` (also `secrets "NAME"`), `references non-existent secret key:
/// KEY`, and `couldn't find key KEY in Secret NS/NAME`.
fn missing(messages: &[&str]) -> (BTreeSet<String>, BTreeSet<(Option<String>, String)>) {
    let mut secrets = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for m in messages {
        for prefix in ["secret \"", "secrets \""] {
            for name in quoted_between(m, prefix, " not found") {
                secrets.insert(name.to_string());
            }
        }
        for part in m.split("references non-existent secret key: ").skip(1) {
            let key: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect();
            if !key.is_empty() {
                keys.insert((None, key));
            }
        }
        for part in m.split("couldn't find key ").skip(1) {
            let mut words = part.split_whitespace();
            let (Some(key), Some("in"), Some("Secret"), Some(at)) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                continue;
            };
            let name = at.rsplit('/').next().unwrap_or(at);
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                .collect();
            keys.insert((Some(name), key.to_string()));
        }
    }
    (secrets, keys)
}

/// What is missing for the plugin's `secretConfig`, one sentence per config key, judged from
/// the kubelet's messages about Pods whose volumes are not mounted yet.
pub fn secret_problems(
    namespace: &str,
    secret_config: &[SecretConfig],
    messages: &[&str],
) -> Vec<String> {
    let (secrets, keys) = missing(messages);
    let mut out = Vec::new();
    for s in secret_config {
        let r = &s.secret_key_ref;
        if secrets.contains(&r.name) {
            out.push(format!(
                "Secret {:?} (for config key {:?}) not found in namespace {namespace}",
                r.name, s.key
            ));
        } else if keys
            .iter()
            .any(|(name, key)| key == &r.key && name.as_ref().is_none_or(|n| n == &r.name))
        {
            out.push(format!(
                "Secret {:?} has no key {:?} (for config key {:?}) in namespace {namespace}",
                r.name, r.key, s.key
            ));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretKeyRef;

    fn refs() -> Vec<SecretConfig> {
        vec![
            SecretConfig {
                key: "api_key".into(),
                secret_key_ref: SecretKeyRef {
                    name: "llm-secrets".into(),
                    key: "api-key".into(),
                },
            },
            SecretConfig {
                key: "org".into(),
                secret_key_ref: SecretKeyRef {
                    name: "org-secrets".into(),
                    key: "org".into(),
                },
            },
        ]
    }

    #[test]
    fn a_missing_secret_is_named_with_its_config_key() {
        let m =
            ["MountVolume.SetUp failed for volume \"config\" : secret \"llm-secrets\" not found"];
        let p = secret_problems("agents", &refs(), &m);
        assert_eq!(
            p,
            ["Secret \"llm-secrets\" (for config key \"api_key\") not found in namespace agents"]
        );
    }

    #[test]
    fn a_missing_key_is_named_with_its_secret() {
        let m = [
            "MountVolume.SetUp failed for volume \"config\" : references non-existent secret key: api-key",
        ];
        let p = secret_problems("agents", &refs(), &m);
        assert_eq!(
            p,
            [
                "Secret \"llm-secrets\" has no key \"api-key\" (for config key \"api_key\") in namespace agents"
            ]
        );
        let env = ["couldn't find key org in Secret agents/org-secrets"];
        assert_eq!(secret_problems("agents", &refs(), &env).len(), 1);
    }

    fn event(uid: &str, message: &str, second: i64) -> Event {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        Event {
            reason: Some("FailedMount".into()),
            message: Some(message.into()),
            involved_object: k8s_openapi::api::core::v1::ObjectReference {
                uid: Some(uid.into()),
                ..Default::default()
            },
            last_timestamp: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(second).expect("time"),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_latest_report_about_the_pod_counts() {
        let pod = Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                uid: Some("pod-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let events = [
            event("pod-1", "secret \"llm-secrets\" not found", 100),
            event("pod-1", "references non-existent secret key: api-key", 200),
            event("pod-2", "secret \"org-secrets\" not found", 300),
        ]
        .map(std::sync::Arc::new);
        let messages = kubelet_messages(&pod, &events);
        assert_eq!(messages, ["references non-existent secret key: api-key"]);
        let p = secret_problems("agents", &refs(), &messages);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("has no key"), "{p:?}");
    }

    #[test]
    fn aggregated_messages_report_every_problem_and_unrelated_ones_none() {
        let m = [
            "MountVolume.SetUp failed for volume \"config\" : [secrets \"org-secrets\" not found, references non-existent secret key: api-key]",
        ];
        assert_eq!(secret_problems("agents", &refs(), &m).len(), 2);
        let other = ["MountVolume.SetUp failed for volume \"x\" : configmap \"c\" not found"];
        assert!(secret_problems("agents", &refs(), &other).is_empty());
        assert!(secret_problems("agents", &refs(), &[]).is_empty());
    }
}
