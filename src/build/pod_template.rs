//! `spec.podTemplate`: what a person adds to the plugin's Pods, checked and merged onto the
//! Pod template the operator builds. The operator's own parts always win: its labels (the
//! selector among them) and annotations, its volumes and mounts, the environment it sets, the
//! ports, probes and command. An overlay that would touch them is refused, with the field
//! path, before anything is built.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::access::{is_dns1123_label, is_dns1123_subdomain};
use crate::crd::PodTemplateOverlay;

/// Prefix of every label and annotation key the operator reserves for itself.
const RESERVED_PREFIX: &str = "hector.dev/";
/// Labels the operator (or the Deployment controller) sets on every plugin Pod.
const RESERVED_LABELS: [&str; 6] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "pod-template-hash",
];
/// The API server's limit on all annotations of an object together, less room for the
/// operator's own.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024 - 1024;

/// The operator's own volumes of a plugin Pod, with where the plugin container mounts them.
pub(super) const OPERATOR_VOLUMES: [(&str, &str); 4] = [
    ("launcher", super::LAUNCHER_DIR),
    ("config", super::CONFIG_DIR),
    ("apiserver", super::deployment::API_SERVER_CREDENTIALS_DIR),
    ("tmp", "/tmp"),
];

/// One refused part of `spec.podTemplate`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct OverlayError {
    /// The field, e.g. `spec.podTemplate.volumes[0].name`.
    pub path: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

fn refuse(path: String, reason: impl Into<String>) -> OverlayError {
    OverlayError {
        path,
        reason: reason.into(),
    }
}

/// Whether `key` is a label or annotation key: an optional DNS-subdomain prefix and `/`, then
/// a name of at most 63 letters, digits, `-`, `_` or `.`, starting and ending alphanumeric.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_dns1123_subdomain) && name.len() <= 63 && is_name_shape(name)
}

fn is_name_shape(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Whether `value` can be a label value: empty, or a name of at most 63 characters.
fn is_label_value(value: &str) -> bool {
    value.is_empty() || (value.len() <= 63 && is_name_shape(value))
}

/// Whether `path` is `dir` or lies under it.
fn within(path: &str, dir: &str) -> bool {
    let path = path.trim_end_matches('/');
    path == dir || path.starts_with(&format!("{dir}/"))
}

/// Every problem of `overlay`, each with its field path; empty when it may be applied.
pub fn check(overlay: &PodTemplateOverlay) -> Result<(), Vec<OverlayError>> {
    let base = "spec.podTemplate";
    let mut errors = Vec::new();
    for (key, value) in &overlay.metadata.labels {
        let path = format!("{base}.metadata.labels[{key:?}]");
        if key.starts_with(RESERVED_PREFIX) || RESERVED_LABELS.contains(&key.as_str()) {
            errors.push(refuse(
                path,
                format!(
                    "reserved: the operator sets this label (keys under {RESERVED_PREFIX} and \
                     {} are its own)",
                    RESERVED_LABELS.join(", ")
                ),
            ));
        } else if !is_qualified_name(key) {
            errors.push(refuse(
                path,
                "not a label key: an optional DNS subdomain and '/', then at most 63 letters, \
                 digits, '-', '_' or '.', starting and ending with a letter or digit",
            ));
        } else if !is_label_value(value) {
            errors.push(refuse(
                path,
                format!(
                    "{value:?} is not a label value: at most 63 letters, digits, '-', '_' or \
                     '.', starting and ending with a letter or digit, or empty"
                ),
            ));
        }
    }
    let mut annotation_bytes = 0;
    for (key, value) in &overlay.metadata.annotations {
        annotation_bytes += key.len() + value.len();
        let path = format!("{base}.metadata.annotations[{key:?}]");
        if key.starts_with(RESERVED_PREFIX) {
            errors.push(refuse(
                path,
                format!("reserved: annotations under {RESERVED_PREFIX} are the operator's own"),
            ));
        } else if !is_qualified_name(key) {
            errors.push(refuse(
                path,
                "not an annotation key: an optional DNS subdomain and '/', then at most 63 \
                 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ));
        }
    }
    if annotation_bytes > ANNOTATIONS_MAX_BYTES {
        errors.push(refuse(
            format!("{base}.metadata.annotations"),
            format!(
                "{annotation_bytes} bytes; keys and values together may have at most \
                 {ANNOTATIONS_MAX_BYTES}"
            ),
        ));
    }

    let mut names: Vec<&str> = Vec::new();
    for (i, volume) in overlay.volumes.iter().enumerate() {
        let path = format!("{base}.volumes[{i}].name");
        let name = volume.name.as_str();
        if OPERATOR_VOLUMES.iter().any(|(v, _)| *v == name) {
            errors.push(refuse(
                path,
                format!(
                    "{name:?} is one of the operator's own volumes ({}); choose another name",
                    OPERATOR_VOLUMES.map(|(v, _)| v).join(", ")
                ),
            ));
        } else if !is_dns1123_label(name) {
            errors.push(refuse(
                path,
                format!(
                    "{name:?} is not a volume name: at most 63 lowercase letters, digits or \
                     '-', starting and ending with a letter or digit"
                ),
            ));
        } else if names.contains(&name) {
            errors.push(refuse(path, format!("{name:?} is given twice")));
        }
        names.push(name);
    }

    let mut paths: Vec<&str> = Vec::new();
    for (i, mount) in overlay.container.volume_mounts.iter().enumerate() {
        let path = format!("{base}.container.volumeMounts[{i}]");
        if !overlay.volumes.iter().any(|v| v.name == mount.name) {
            errors.push(refuse(
                format!("{path}.name"),
                format!(
                    "{:?} is not a volume of spec.podTemplate.volumes (only those can be \
                     mounted)",
                    mount.name
                ),
            ));
        }
        let at = mount.mount_path.as_str();
        if !at.starts_with('/') || at.split('/').any(|part| part == "..") {
            errors.push(refuse(
                format!("{path}.mountPath"),
                format!("{at:?} must be an absolute path without '..'"),
            ));
        } else if let Some((_, own)) = OPERATOR_VOLUMES.iter().find(|(_, dir)| within(at, dir)) {
            errors.push(refuse(
                format!("{path}.mountPath"),
                format!("{at:?} is at or under {own}, where the operator mounts its own volume"),
            ));
        } else if paths.contains(&at.trim_end_matches('/')) {
            errors.push(refuse(
                format!("{path}.mountPath"),
                format!("{at:?} is mounted twice"),
            ));
        }
        paths.push(at.trim_end_matches('/'));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `theirs` over `ours`, field by field at the top level: every field `theirs` sets replaces
/// the operator's default for it.
fn overlay_fields<T: Serialize + DeserializeOwned + Clone>(ours: &T, theirs: &T) -> T {
    let (Ok(serde_json::Value::Object(mut merged)), Ok(serde_json::Value::Object(given))) =
        (serde_json::to_value(ours), serde_json::to_value(theirs))
    else {
        return ours.clone();
    };
    merged.extend(given.into_iter().filter(|(_, v)| !v.is_null()));
    serde_json::from_value(serde_json::Value::Object(merged)).unwrap_or_else(|_| ours.clone())
}

/// Merges a checked `overlay` onto `template`, whose first container is the plugin's, with
/// the operator's parts winning; `selector` is the plugin Pods' selector, given to topology
/// spread constraints that have none.
pub(super) fn merge(
    overlay: &PodTemplateOverlay,
    selector: &BTreeMap<String, String>,
    template: &mut PodTemplateSpec,
) {
    let meta = template.metadata.get_or_insert_with(Default::default);
    for (field, given) in [
        (&mut meta.labels, &overlay.metadata.labels),
        (&mut meta.annotations, &overlay.metadata.annotations),
    ] {
        if given.is_empty() {
            continue;
        }
        let ours = field.take().unwrap_or_default();
        let mut merged = given.clone();
        merged.extend(ours);
        *field = Some(merged);
    }
    let pod: &mut PodSpec = template.spec.get_or_insert_with(Default::default);
    if let Some(affinity) = &overlay.affinity {
        pod.affinity = Some(affinity.clone());
    }
    if !overlay.topology_spread_constraints.is_empty() {
        let constraints = overlay
            .topology_spread_constraints
            .iter()
            .cloned()
            .map(|mut c| {
                c.label_selector.get_or_insert_with(|| LabelSelector {
                    match_labels: Some(selector.clone()),
                    match_expressions: None,
                });
                c
            })
            .collect();
        pod.topology_spread_constraints = Some(constraints);
    }
    if let Some(class) = &overlay.priority_class_name {
        pod.priority_class_name = Some(class.clone());
    }
    if let Some(theirs) = &overlay.security_context {
        pod.security_context = Some(match &pod.security_context {
            Some(ours) => overlay_fields(ours, theirs),
            None => theirs.clone(),
        });
    }
    if !overlay.volumes.is_empty() {
        pod.volumes
            .get_or_insert_with(Vec::new)
            .extend(overlay.volumes.iter().cloned());
    }
    let Some(container): Option<&mut Container> = pod.containers.first_mut() else {
        return;
    };
    let given = &overlay.container;
    if let Some(theirs) = &given.security_context {
        container.security_context = Some(match &container.security_context {
            Some(ours) => overlay_fields(ours, theirs),
            None => theirs.clone(),
        });
    }
    if !given.volume_mounts.is_empty() {
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(given.volume_mounts.iter().cloned());
    }
    // Kubernetes gives `env` precedence over `envFrom` for a name in both, so the
    // operator's variables (and spec.env) win without further work.
    if !given.env_from.is_empty() {
        container.env_from = Some(given.env_from.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(yaml: &str) -> PodTemplateOverlay {
        serde_norway::from_str(yaml).expect("overlay parses")
    }

    fn paths(yaml: &str) -> Vec<String> {
        check(&overlay(yaml))
            .expect_err("refused")
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_reasonable_overlay_passes() {
        let o = overlay(
            r#"
metadata:
  labels: {team: search, example.org/tier: gold, empty: ""}
  annotations: {sidecar.example.org/inject: "true"}
volumes: [{name: models, emptyDir: {}}, {name: certs, secret: {secretName: ca}}]
container:
  volumeMounts: [{name: models, mountPath: /models}, {name: certs, mountPath: /etc/certs/}]
  envFrom: [{secretRef: {name: extra}}]
"#,
        );
        assert_eq!(check(&o), Ok(()));
    }

    #[test]
    fn reserved_labels_and_annotations_are_refused_with_their_path() {
        let errors = paths(
            r#"
metadata:
  labels: {hector.dev/plugin: other, app.kubernetes.io/managed-by: me, pod-template-hash: x, "bad key!": v, ok: "no spaces"}
  annotations: {hector.dev/config-hash: forged, fine.example.org/x: y}
"#,
        );
        let expect = [
            "spec.podTemplate.metadata.labels[\"app.kubernetes.io/managed-by\"]: reserved",
            "spec.podTemplate.metadata.labels[\"bad key!\"]: not a label key",
            "spec.podTemplate.metadata.labels[\"hector.dev/plugin\"]: reserved",
            "spec.podTemplate.metadata.labels[\"ok\"]: \"no spaces\" is not a label value",
            "spec.podTemplate.metadata.labels[\"pod-template-hash\"]: reserved",
            "spec.podTemplate.metadata.annotations[\"hector.dev/config-hash\"]: reserved",
        ];
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
        for (e, want) in errors.iter().zip(expect) {
            assert!(e.starts_with(want), "{e} / {want}");
        }
        let big = "x".repeat(ANNOTATIONS_MAX_BYTES);
        let errors = paths(&format!("metadata: {{annotations: {{a: {big}}}}}"));
        assert!(
            errors[0].starts_with("spec.podTemplate.metadata.annotations: "),
            "{errors:?}"
        );
    }

    #[test]
    fn volumes_may_not_take_the_operators_names_or_paths() {
        let errors = paths(
            r#"
volumes: [{name: launcher, emptyDir: {}}, {name: data, emptyDir: {}}, {name: data, emptyDir: {}}, {name: Bad_Name, emptyDir: {}}]
container:
  volumeMounts:
    - {name: data, mountPath: /etc/hector/config/extra}
    - {name: data, mountPath: /tmp}
    - {name: data, mountPath: relative}
    - {name: apiserver, mountPath: /elsewhere}
    - {name: data, mountPath: /data}
    - {name: data, mountPath: /data/}
    - {name: data, mountPath: /hector/binaries}
"#,
        );
        let expect = [
            "spec.podTemplate.volumes[0].name: \"launcher\" is one of the operator's own volumes",
            "spec.podTemplate.volumes[2].name: \"data\" is given twice",
            "spec.podTemplate.volumes[3].name: \"Bad_Name\" is not a volume name",
            "spec.podTemplate.container.volumeMounts[0].mountPath: \"/etc/hector/config/extra\" is at or under /etc/hector/config",
            "spec.podTemplate.container.volumeMounts[1].mountPath: \"/tmp\" is at or under /tmp",
            "spec.podTemplate.container.volumeMounts[2].mountPath: \"relative\" must be an absolute path",
            "spec.podTemplate.container.volumeMounts[3].name: \"apiserver\" is not a volume of spec.podTemplate.volumes",
            "spec.podTemplate.container.volumeMounts[5].mountPath: \"/data/\" is mounted twice",
        ];
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
        for (e, want) in errors.iter().zip(expect) {
            assert!(e.starts_with(want), "{e} / {want}");
        }
    }

    #[test]
    fn the_operators_labels_and_annotations_win_even_over_an_unchecked_overlay() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let o = overlay(
            "metadata: {labels: {hector.dev/plugin: other, team: a}, annotations: {hector.dev/config-hash: forged}}",
        );
        let ours = |k: &str, v: &str| Some(BTreeMap::from([(k.to_string(), v.to_string())]));
        let mut t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: ours("hector.dev/plugin", "mine"),
                annotations: ours("hector.dev/config-hash", "real"),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container::default()],
                ..Default::default()
            }),
        };
        merge(&o, &BTreeMap::new(), &mut t);
        let meta = t.metadata.expect("metadata");
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["hector.dev/plugin"], "mine");
        assert_eq!(labels["team"], "a");
        assert_eq!(
            meta.annotations.expect("annotations")["hector.dev/config-hash"],
            "real"
        );
    }

    #[test]
    fn the_callers_fields_replace_only_the_defaults_they_set() {
        use k8s_openapi::api::core::v1::SecurityContext;
        let ours = SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        };
        let theirs = SecurityContext {
            read_only_root_filesystem: Some(false),
            run_as_user: Some(1000),
            ..Default::default()
        };
        let merged = overlay_fields(&ours, &theirs);
        assert_eq!(merged.allow_privilege_escalation, Some(false));
        assert_eq!(merged.read_only_root_filesystem, Some(false));
        assert_eq!(merged.run_as_user, Some(1000));
    }
}
