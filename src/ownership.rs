//! Which objects belong to a HectorPlugin. The operator acts only on objects it created: a
//! child is ours when its controller owner reference names the plugin's uid, and a Pod is one
//! of the plugin's endpoints only through the chain Pod → ReplicaSet → Deployment → plugin.
//! A label can be copied by anyone; an owner reference to a uid cannot be forged into a chain
//! of objects the operator itself created.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The uid of `meta`'s controller owner, if it has one.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Whether the object's controller is the object with `owner_uid`.
pub fn controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    !owner_uid.is_empty() && controller_uid(meta) == Some(owner_uid)
}

/// Who controls an object, for a message: `HectorPlugin other (uid …)`, or that nobody does.
pub fn controller_text(meta: &ObjectMeta) -> String {
    match meta
        .owner_references
        .as_ref()
        .and_then(|refs| refs.iter().find(|r| r.controller == Some(true)))
    {
        Some(r) => format!("it is controlled by {} {}", r.kind, r.name),
        None => "it has no controller".to_string(),
    }
}

/// The message of a name conflict: `kind ns/name` exists and is not the plugin's.
pub fn conflict_message(kind: &str, meta: &ObjectMeta) -> String {
    format!(
        "{kind} {}/{} already exists and was not created for this HectorPlugin ({}); \
         the operator leaves it untouched: remove or rename it, or rename the HectorPlugin",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        controller_text(meta),
    )
}

/// The Pods that are endpoints of the plugin with `plugin_uid`: those whose controller is a
/// ReplicaSet controlled by the plugin's Deployment (itself controlled by the plugin).
pub fn owned_pods<'a>(
    plugin_uid: &str,
    deployment: Option<&Deployment>,
    replicasets: impl IntoIterator<Item = &'a Arc<ReplicaSet>>,
    pods: impl IntoIterator<Item = Arc<Pod>>,
) -> Vec<Arc<Pod>> {
    let Some(d) = deployment.filter(|d| controlled_by(&d.metadata, plugin_uid)) else {
        return vec![];
    };
    let Some(d_uid) = d.metadata.uid.as_deref() else {
        return vec![];
    };
    let sets: HashSet<&str> = replicasets
        .into_iter()
        .filter(|rs| controlled_by(&rs.metadata, d_uid))
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    pods.into_iter()
        .filter(|p| controller_uid(&p.metadata).is_some_and(|uid| sets.contains(uid)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn meta(name: &str, uid: &str, owner: Option<(&str, &str)>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(uid.into()),
            owner_references: owner.map(|(kind, uid)| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: kind.into(),
                    name: "owner".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..Default::default()
        }
    }

    fn pod(name: &str, owner_uid: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: meta(
                name,
                &format!("pod-{name}"),
                owner_uid.map(|u| ("ReplicaSet", u)),
            ),
            ..Default::default()
        })
    }

    #[test]
    fn only_pods_of_the_plugins_own_replicasets_are_endpoints() {
        let deployment = Deployment {
            metadata: meta("p", "dep-1", Some(("HectorPlugin", "plugin-1"))),
            ..Default::default()
        };
        let ours = Arc::new(ReplicaSet {
            metadata: meta("p-abc", "rs-1", Some(("Deployment", "dep-1"))),
            ..Default::default()
        });
        let foreign = Arc::new(ReplicaSet {
            metadata: meta("x-abc", "rs-2", Some(("Deployment", "dep-other"))),
            ..Default::default()
        });
        let pods = vec![
            pod("a", Some("rs-1")),
            pod("copied-label", None),
            pod("other-rs", Some("rs-2")),
        ];
        let owned = owned_pods(
            "plugin-1",
            Some(&deployment),
            [&ours, &foreign],
            pods.clone(),
        );
        let names: Vec<_> = owned
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["a"]);
        // A Deployment of the same name that the plugin does not control owns nothing.
        assert!(owned_pods("plugin-2", Some(&deployment), [&ours], pods).is_empty());
    }

    #[test]
    fn conflicts_name_the_object_and_its_controller() {
        let m = meta("billing-config", "u", None);
        let text = conflict_message("ConfigMap", &m);
        assert!(text.contains("ConfigMap ns/billing-config"), "{text}");
        assert!(text.contains("no controller"), "{text}");
        assert!(!controlled_by(&m, "u"));
        assert!(!controlled_by(&m, ""));
        let owned = meta("x", "u", Some(("HectorPlugin", "p-uid")));
        assert!(controlled_by(&owned, "p-uid"));
        assert!(conflict_message("Service", &owned).contains("controlled by HectorPlugin owner"));
    }
}
