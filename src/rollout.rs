//! What a plugin's Deployment, ReplicaSets and Pods say about its rollout: how many Pods are
//! up to date, Ready and available, and why Pods cannot be created (quota, Pod Security
//! admission: the ReplicaSet's `ReplicaFailure`), placed (`PodScheduled=False Unschedulable`)
//! or started (container waiting reasons). Pure, so every case is tested without a cluster.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;

use crate::status::{Blocked, Pods};

/// Whether a Pod's Ready condition is true.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why a Pod's containers are not running, e.g. `plugin: CrashLoopBackOff`.
pub fn waiting_reasons(p: &Pod) -> Vec<String> {
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

/// The scheduler's message when it cannot place the Pod.
fn unschedulable(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.clone().unwrap_or_default())
}

/// A condition of type `type_` with status True, as (reason, message).
fn true_condition<'a>(
    conditions: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a str>, Option<&'a str>)>,
    type_: &str,
) -> Option<(Option<&'a str>, &'a str)> {
    conditions
        .into_iter()
        .find(|(t, s, _, _)| *t == type_ && *s == "True")
        .map(|(_, _, reason, message)| (reason, message.unwrap_or_default()))
}

/// Why Pods cannot be created or placed, in the order a person should look: creation refused
/// (the API's message, e.g. `exceeded quota` or a Pod Security violation), no node fits, or
/// the Deployment gave up waiting for progress.
fn blocked(
    deployment: &Deployment,
    replicasets: &[Arc<ReplicaSet>],
    pods: &[Arc<Pod>],
) -> Option<Blocked> {
    let d_conditions = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_deref(),
                c.message.as_deref(),
            )
        });
    let rs_conditions = replicasets
        .iter()
        .filter_map(|rs| rs.status.as_ref()?.conditions.as_ref())
        .flatten()
        .map(|c| {
            (
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_deref(),
                c.message.as_deref(),
            )
        });
    // The Deployment copies its new ReplicaSet's failure, a moment later.
    if let Some((_, message)) =
        true_condition(d_conditions.clone().chain(rs_conditions), "ReplicaFailure")
    {
        return Some(Blocked {
            reason: "FailedCreate",
            message: message.to_string(),
        });
    }
    if let Some(message) = pods.iter().find_map(|p| unschedulable(p)) {
        return Some(Blocked {
            reason: "Unschedulable",
            message,
        });
    }
    let deadline = d_conditions.clone().find(|(t, s, r, _)| {
        *t == "Progressing" && *s == "False" && *r == Some("ProgressDeadlineExceeded")
    });
    deadline.map(|(_, _, _, message)| Blocked {
        reason: "ProgressDeadlineExceeded",
        message: message.unwrap_or_default().to_string(),
    })
}

/// The rollout of `deployment` (as applied or as observed), with its `replicasets` and `pods`
/// (the plugin's own: see [`crate::ownership`]).
pub fn observe(
    deployment: &Deployment,
    replicasets: &[Arc<ReplicaSet>],
    pods: &[Arc<Pod>],
) -> Pods {
    let status = deployment.status.as_ref();
    let observed = status
        .and_then(|s| s.observed_generation)
        .zip(deployment.metadata.generation)
        .is_some_and(|(o, g)| o >= g);
    let count = |f: fn(&k8s_openapi::api::apps::v1::DeploymentStatus) -> Option<i32>| {
        status.and_then(f).unwrap_or(0)
    };
    let mut waiting: Vec<String> = pods.iter().flat_map(|p| waiting_reasons(p)).collect();
    waiting.sort();
    waiting.dedup();
    Pods {
        desired: deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1),
        observed,
        // Until the controller has seen this generation its counts describe the last one.
        updated: if observed {
            count(|s| s.updated_replicas)
        } else {
            0
        },
        ready: i32::try_from(pods.iter().filter(|p| pod_ready(p)).count()).unwrap_or(i32::MAX),
        available: count(|s| s.available_replicas),
        current: count(|s| s.replicas),
        waiting,
        blocked: blocked(deployment, replicasets, pods),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid object")
    }

    fn deployment(status: serde_json::Value) -> Deployment {
        from(json!({
            "metadata": {"name": "p", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
    }

    fn pod(status: serde_json::Value) -> Arc<Pod> {
        Arc::new(from(json!({"metadata": {"name": "p-1"}, "status": status})))
    }

    #[test]
    fn a_finished_rollout_is_rolled_out() {
        let d = deployment(json!({
            "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
        }));
        let ready = pod(json!({"conditions": [{"type": "Ready", "status": "True"}]}));
        let p = observe(&d, &[], &[ready.clone(), ready]);
        assert_eq!(
            (p.desired, p.updated, p.ready, p.available, p.current),
            (2, 2, 2, 2, 2)
        );
        assert!(p.rolled_out());
        assert_eq!(p.blocked, None);
    }

    #[test]
    fn counts_of_an_unseen_generation_are_not_trusted() {
        let d = deployment(json!({
            "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
        }));
        let p = observe(&d, &[], &[]);
        assert!(!p.observed);
        assert_eq!(p.updated, 0);
        assert!(!p.rolled_out());
        // An old Pod still running keeps the rollout open, too.
        let d = deployment(json!({
            "observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 3,
        }));
        let ready = pod(json!({"conditions": [{"type": "Ready", "status": "True"}]}));
        assert!(!observe(&d, &[], &[ready.clone(), ready.clone(), ready]).rolled_out());
    }

    #[test]
    fn a_refused_pod_creation_is_failed_create_with_the_apis_message() {
        let quota = "pods \"p-5d4\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1";
        let rs: Arc<ReplicaSet> = Arc::new(from(json!({
            "metadata": {"name": "p-5d4"},
            "spec": {"selector": {}},
            "status": {"replicas": 0, "conditions": [
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": quota}
            ]},
        })));
        let d = deployment(json!({"observedGeneration": 2}));
        let b = observe(&d, &[rs], &[]).blocked.expect("blocked");
        assert_eq!(b.reason, "FailedCreate");
        assert_eq!(b.message, quota);
        // The same from the Deployment's own copy of the condition.
        let d = deployment(json!({"observedGeneration": 2, "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": "violates PodSecurity \"restricted:latest\""}
        ]}));
        let b = observe(&d, &[], &[]).blocked.expect("blocked");
        assert_eq!(b.reason, "FailedCreate");
        assert!(b.message.contains("PodSecurity"));
        // A cleared failure blocks nothing.
        let d = deployment(json!({"observedGeneration": 2, "conditions": [
            {"type": "ReplicaFailure", "status": "False", "reason": "FailedCreate"}
        ]}));
        assert_eq!(observe(&d, &[], &[]).blocked, None);
    }

    #[test]
    fn an_unplaceable_pod_is_unschedulable_with_the_schedulers_message() {
        let d = deployment(json!({"observedGeneration": 2, "replicas": 1}));
        let message =
            "0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints.";
        let pending = pod(json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ]}));
        let b = observe(&d, &[], &[pending]).blocked.expect("blocked");
        assert_eq!((b.reason, b.message.as_str()), ("Unschedulable", message));
        // Scheduled, or not yet looked at by the scheduler: nothing blocks.
        let scheduling = pod(json!({"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "SchedulerError"}
        ]}));
        assert_eq!(observe(&d, &[], &[scheduling]).blocked, None);
    }

    #[test]
    fn a_deployment_past_its_deadline_says_so() {
        let d = deployment(json!({"observedGeneration": 2, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet \"p-1\" has timed out progressing."}
        ]}));
        let b = observe(&d, &[], &[]).blocked.expect("blocked");
        assert_eq!(b.reason, "ProgressDeadlineExceeded");
        assert!(b.message.contains("timed out"));
    }

    #[test]
    fn waiting_reasons_name_the_container_and_skip_normal_steps() {
        let p = pod(json!({
            "initContainerStatuses": [{"name": "install-launcher", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "PodInitializing"}}}],
            "containerStatuses": [{"name": "plugin", "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
        }));
        let d = deployment(json!({"observedGeneration": 2}));
        assert_eq!(
            observe(&d, &[], &[p.clone(), p]).waiting,
            ["plugin: CrashLoopBackOff"]
        );
    }
}
