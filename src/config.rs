//! Resolution of a plugin's configuration: manifest defaults, then `spec.config`, then
//! `spec.secretConfig`, each layer overriding the one before.
//!
//! Undeclared keys (in neither `required`, `optional` nor `defaults`) are passed to the
//! plugin unchanged, because Hector passes them too and plugins may accept more than they
//! declare; they are reported as warnings so typos surface in the resource's events. When a
//! manifest declares no keys at all, nothing is reported.

use std::collections::BTreeMap;

use crate::crd::{ConfigSchemaSpec, SecretConfig, SecretKeyRef};

/// The configuration a plugin receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedConfig {
    /// Plain values, safe to store in a ConfigMap.
    pub values: BTreeMap<String, String>,
    /// Keys whose values live in Secrets; the values themselves are never read by the
    /// operator, only mounted into the plugin Pod.
    pub secrets: BTreeMap<String, SecretKeyRef>,
    /// Keys the manifest does not declare (passed through).
    pub undeclared: Vec<String>,
}

/// Why a configuration cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required key has no value from any layer.
    #[error(
        "required config key {key:?} is not set (set spec.config.{key} or add it to spec.secretConfig)"
    )]
    MissingRequired {
        /// The key.
        key: String,
    },
    /// A value is a list or a mapping.
    #[error("spec.config.{key}: must be a string, number or boolean, not {kind}")]
    NotScalar {
        /// The key.
        key: String,
        /// What was given instead.
        kind: &'static str,
    },
}

/// A JSON scalar as the string a plugin receives.
fn scalar(v: &serde_json::Value) -> Result<String, &'static str> {
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Null => Ok(String::new()),
        serde_json::Value::Array(_) => Err("a list"),
        serde_json::Value::Object(_) => Err("a mapping"),
    }
}

/// Resolves configuration; every problem is reported, not just the first.
pub fn resolve(
    schema: &ConfigSchemaSpec,
    config: &BTreeMap<String, serde_json::Value>,
    secret_config: &[SecretConfig],
) -> Result<ResolvedConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut values = schema.defaults.clone();
    for (key, value) in config {
        match scalar(value) {
            Ok(s) => {
                values.insert(key.clone(), s);
            }
            Err(kind) => errors.push(ConfigError::NotScalar {
                key: key.clone(),
                kind,
            }),
        }
    }
    let mut secrets = BTreeMap::new();
    for s in secret_config {
        // A secret overrides a plain value of the same key, which must then not be stored.
        values.remove(&s.key);
        secrets.insert(s.key.clone(), s.secret_key_ref.clone());
    }
    for key in &schema.required {
        if !values.contains_key(key) && !secrets.contains_key(key) {
            errors.push(ConfigError::MissingRequired { key: key.clone() });
        }
    }
    let declares = |k: &String| {
        schema.required.contains(k)
            || schema.optional.contains(k)
            || schema.defaults.contains_key(k)
    };
    let schema_is_empty =
        schema.required.is_empty() && schema.optional.is_empty() && schema.defaults.is_empty();
    let undeclared = if schema_is_empty {
        Vec::new()
    } else {
        values
            .keys()
            .chain(secrets.keys())
            .filter(|k| !declares(k))
            .cloned()
            .collect()
    };
    if errors.is_empty() {
        Ok(ResolvedConfig {
            values,
            secrets,
            undeclared,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> ConfigSchemaSpec {
        ConfigSchemaSpec {
            required: vec!["api_key".into(), "model".into()],
            optional: vec!["temperature".into(), "stream".into()],
            defaults: [("temperature".to_string(), "0.7".to_string())].into(),
        }
    }

    fn secret(key: &str) -> SecretConfig {
        SecretConfig {
            key: key.into(),
            secret_key_ref: SecretKeyRef {
                name: "llm".into(),
                key: "api-key".into(),
            },
        }
    }

    #[test]
    fn layers_override_in_order_and_scalars_become_strings() {
        let config = BTreeMap::from([
            ("model".to_string(), json!("m1")),
            ("temperature".to_string(), json!(0.2)),
            ("stream".to_string(), json!(true)),
        ]);
        let r = resolve(&schema(), &config, &[secret("api_key")]).expect("valid");
        assert_eq!(r.values["model"], "m1");
        assert_eq!(r.values["temperature"], "0.2");
        assert_eq!(r.values["stream"], "true");
        assert!(!r.values.contains_key("api_key"));
        assert_eq!(r.secrets["api_key"].name, "llm");
        assert!(r.undeclared.is_empty());
    }

    #[test]
    fn defaults_apply_when_not_overridden() {
        let config = BTreeMap::from([("model".to_string(), json!(7))]);
        let r = resolve(&schema(), &config, &[secret("api_key")]).expect("valid");
        assert_eq!(r.values["temperature"], "0.7");
        assert_eq!(r.values["model"], "7");
    }

    #[test]
    fn secret_overrides_plain_value_and_never_stores_it() {
        let config = BTreeMap::from([
            ("model".to_string(), json!("m")),
            ("api_key".to_string(), json!("plain")),
        ]);
        let r = resolve(&schema(), &config, &[secret("api_key")]).expect("valid");
        assert!(!r.values.values().any(|v| v == "plain"));
    }

    #[test]
    fn every_problem_is_reported() {
        let config = BTreeMap::from([("temperature".to_string(), json!([1]))]);
        let errors = resolve(&schema(), &config, &[]).expect_err("invalid");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.contains(&ConfigError::MissingRequired {
            key: "api_key".into()
        }));
        assert!(errors.contains(&ConfigError::MissingRequired {
            key: "model".into()
        }));
        assert!(errors.contains(&ConfigError::NotScalar {
            key: "temperature".into(),
            kind: "a list"
        }));
        assert!(
            errors[0].to_string().contains("spec.config")
                || errors[0].to_string().contains("required")
        );
    }

    #[test]
    fn undeclared_keys_pass_through_and_are_reported() {
        let config = BTreeMap::from([
            ("model".to_string(), json!("m")),
            ("modle".to_string(), json!("typo")),
        ]);
        let r = resolve(&schema(), &config, &[secret("api_key")]).expect("valid");
        assert_eq!(r.values["modle"], "typo");
        assert_eq!(r.undeclared, ["modle"]);
        let r = resolve(&ConfigSchemaSpec::default(), &config, &[]).expect("valid");
        assert!(r.undeclared.is_empty(), "no schema, nothing to report");
    }
}
