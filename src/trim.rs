//! What the watch caches keep: every object without the fields the operator never reads,
//! so that memory follows what it uses. `managedFields` and kubectl's
//! `last-applied-configuration` annotation each repeat much of an object; a Pod's spec is
//! never read (its status says all the operator needs).

use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;

/// The annotation `kubectl apply` keeps a full copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops the bookkeeping copies from an object's metadata.
pub fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Only `managedFields`: for objects the operator writes back whole (the endpoints
/// ConfigMap, replaced from the cached copy), so that nothing else of theirs is lost.
pub fn managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Any object, by its metadata.
pub fn object<K: kube::Resource>(obj: &mut K) {
    metadata(obj.meta_mut());
}

/// A Pod: metadata trimmed and no spec.
pub fn pod(pod: &mut Pod) {
    metadata(&mut pod.metadata);
    pod.spec = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn only_bookkeeping_and_pod_specs_go() {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                labels: Some([("hector.dev/plugin".to_string(), "x".to_string())].into()),
                annotations: Some(
                    [
                        (LAST_APPLIED.to_string(), "{...}".to_string()),
                        ("team".to_string(), "a".to_string()),
                    ]
                    .into(),
                ),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.1".into()),
                ..Default::default()
            }),
        };
        pod(&mut p);
        assert_eq!(p.metadata.managed_fields, None);
        assert_eq!(
            p.metadata.annotations,
            Some([("team".to_string(), "a".to_string())].into())
        );
        assert!(p.metadata.labels.is_some());
        assert!(p.spec.is_none());
        assert_eq!(p.status.and_then(|s| s.pod_ip).as_deref(), Some("10.0.0.1"));
        let mut only_last_applied = ObjectMeta {
            annotations: Some([(LAST_APPLIED.to_string(), "{}".to_string())].into()),
            ..Default::default()
        };
        metadata(&mut only_last_applied);
        assert_eq!(only_last_applied.annotations, None);
    }

    #[test]
    fn an_object_written_back_whole_loses_only_its_managed_fields() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let meta = ObjectMeta {
            name: Some("hector-plugins".into()),
            annotations: Some([(LAST_APPLIED.to_string(), "{}".to_string())].into()),
            ..Default::default()
        };
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..meta.clone()
            },
            ..Default::default()
        };
        managed_fields(&mut cm);
        assert_eq!(cm.metadata, meta);
    }
}
