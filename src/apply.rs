//! Server-side apply of the objects a plugin owns, under one field manager, skipped when
//! the live object already holds everything we would apply: the steady state makes no
//! write, and drift (a field we set, changed by someone else) is repaired.

use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "hector-operator";

/// Whether every field of `desired` has the same value in `live`. Lists match element by
/// element; fields only `live` has (defaults, other managers') are ignored, as server-side
/// apply leaves them alone too.
pub fn contains(live: &Value, desired: &Value) -> bool {
    difference(live, desired).is_none()
}

/// The path of the first field of `desired` that `live` does not hold, if any.
pub fn difference(live: &Value, desired: &Value) -> Option<String> {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().find_map(|(k, dv)| match l.get(k) {
            Some(lv) => difference(lv, dv).map(|p| join(k, &p)),
            // The API server omits zero values (Go's `omitempty`): absent equals false, 0, "".
            None => (!is_zero(dv)).then(|| k.clone()),
        }),
        (Value::Array(d), Value::Array(l)) if d.len() == l.len() => d
            .iter()
            .zip(l)
            .enumerate()
            .find_map(|(i, (dv, lv))| difference(lv, dv).map(|p| join(&i.to_string(), &p))),
        (Value::Null, _) => None,
        (d, l) if d == l => None,
        _ => Some(String::new()),
    }
}

fn join(head: &str, tail: &str) -> String {
    if tail.is_empty() {
        head.to_string()
    } else {
        format!("{head}.{tail}")
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
    }
}

/// Applies `desired` unless `live` already contains it; returns whether it wrote.
pub async fn apply<K>(
    api: &Api<K>,
    name: &str,
    desired: &K,
    live: Option<&K>,
) -> Result<bool, kube::Error>
where
    K: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    if let Some(live) = live {
        let (Ok(l), Ok(d)) = (serde_json::to_value(live), serde_json::to_value(desired)) else {
            return Err(kube::Error::SerdeError(serde::de::Error::custom(
                "object does not serialize",
            )));
        };
        match difference(&l, &d) {
            None => return Ok(false),
            Some(path) => tracing::info!(name, field = %path, "live object differs; applying"),
        }
    }
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_are_not_drift() {
        let desired = json!({"spec": {"replicas": 1, "template": {"containers": [{"name": "p", "image": "a"}]}}});
        let live = json!({"spec": {"replicas": 1, "revisionHistoryLimit": 10,
            "template": {"containers": [{"name": "p", "image": "a", "terminationMessagePath": "/dev/termination-log"}]}},
            "status": {"readyReplicas": 1}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_or_missing_field_is_drift() {
        let desired = json!({"spec": {"replicas": 1, "template": {"containers": [{"name": "p", "image": "a"}]}}});
        let edited = json!({"spec": {"replicas": 1, "template": {"containers": [{"name": "p", "image": "b"}]}}});
        assert!(!contains(&edited, &desired));
        let scaled = json!({"spec": {"replicas": 3, "template": {"containers": [{"name": "p", "image": "a"}]}}});
        assert!(!contains(&scaled, &desired));
        let extra_container = json!({"spec": {"replicas": 1, "template": {"containers": [
            {"name": "p", "image": "a"}, {"name": "x"}]}}});
        assert!(!contains(&extra_container, &desired));
        let no_labels = json!({"metadata": {}});
        assert!(!contains(
            &no_labels,
            &json!({"metadata": {"labels": {"a": "b"}}})
        ));
        assert!(contains(&no_labels, &json!({"metadata": {"labels": {}}})));
    }

    #[test]
    fn zero_values_the_server_omits_are_not_drift() {
        let desired = json!({"volumeMounts": [{"name": "tmp", "readOnly": false, "subPath": ""}]});
        let live = json!({"volumeMounts": [{"name": "tmp"}]});
        assert!(contains(&live, &desired));
        let set = json!({"volumeMounts": [{"name": "tmp", "readOnly": true}]});
        assert!(!contains(&live, &set));
    }
}
