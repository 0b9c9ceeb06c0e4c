//! Turning a validated manifest into a `HectorPlugin` resource.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use crate::crd::{
    ConfigSchemaSpec, HealthSettings, HectorPlugin, HectorPluginSpec, LaunchMode, PluginManifest,
    Protocol, SecretConfig, SecretKeyRef,
};
use crate::manifest::Manifest;

/// Choices the manifest does not make: where the plugin runs and how it is configured.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Container image with the plugin executable (or `None` with `endpoint`).
    pub image: Option<String>,
    /// Plugin executable and leading arguments; default `/plugin/<name>`.
    pub command: Vec<String>,
    /// Launch mode.
    pub launch: LaunchMode,
    /// Plain configuration values.
    pub config: BTreeMap<String, String>,
    /// Secret-backed configuration keys.
    pub secrets: Vec<SecretConfig>,
    /// Namespace of the resource.
    pub namespace: Option<String>,
    /// An already running plugin instead of an image.
    pub endpoint: Option<String>,
}

/// Parses `KEY=VALUE`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Parses `KEY=SECRET/SECRETKEY`.
pub fn parse_secret(s: &str) -> Result<SecretConfig, String> {
    let (key, reference) =
        parse_key_value(s).map_err(|_| format!("{s:?} is not KEY=SECRET/KEY"))?;
    match reference.split_once('/') {
        Some((name, secret_key)) if !name.is_empty() && !secret_key.is_empty() => {
            Ok(SecretConfig {
                key,
                secret_key_ref: SecretKeyRef {
                    name: name.to_string(),
                    key: secret_key.to_string(),
                },
            })
        }
        _ => Err(format!("{s:?} is not KEY=SECRET/KEY")),
    }
}

/// The manifest part of the resource.
pub fn manifest_spec(m: &Manifest) -> PluginManifest {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    PluginManifest {
        name: m.name.clone(),
        version: m.version.to_string(),
        plugin_type: m.plugin_type.into(),
        protocol: Protocol::Grpc,
        hector_version: non_empty(&m.hector_version),
        author: non_empty(&m.author),
        description: non_empty(&m.description),
        config_schema: ConfigSchemaSpec {
            required: m.config_schema.required.clone(),
            optional: m.config_schema.optional.clone(),
            defaults: m.config_schema.defaults.clone(),
        },
        capabilities: m.capabilities.clone(),
    }
}

/// Builds the resource; its name is the manifest name as a DNS-1123 label.
pub fn to_resource(m: &Manifest, o: &ConvertOptions) -> HectorPlugin {
    let command = if o.image.is_some() && o.command.is_empty() {
        vec![format!("/plugin/{}", m.name)]
    } else if o.image.is_some() {
        o.command.clone()
    } else {
        Vec::new()
    };
    let spec = HectorPluginSpec {
        manifest: manifest_spec(m),
        image: o.image.clone(),
        image_pull_policy: None,
        command,
        args: vec![],
        launch: o.launch,
        port: 50051,
        replicas: 1,
        config: o
            .config
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
        secret_config: o.secrets.clone(),
        env: vec![],
        resources: None,
        node_selector: BTreeMap::new(),
        tolerations: vec![],
        service_account_name: None,
        image_pull_secrets: vec![],
        health: HealthSettings::default(),
        endpoint: o.endpoint.clone(),
        access: Default::default(),
        pod_template: Default::default(),
    };
    HectorPlugin {
        metadata: ObjectMeta {
            name: Some(m.resource_name()),
            namespace: o.namespace.clone(),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "hector".to_string(),
            )])),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("nokey").is_err());
        let s = parse_secret("api_key=llm-secrets/api-key").expect("valid");
        assert_eq!(
            (
                s.key.as_str(),
                s.secret_key_ref.name.as_str(),
                s.secret_key_ref.key.as_str()
            ),
            ("api_key", "llm-secrets", "api-key")
        );
        assert!(parse_secret("api_key=llm-secrets").is_err());
        assert!(parse_secret("api_key=/k").is_err());
    }

    #[test]
    fn converts_with_defaults() {
        let report = crate::manifest::validate(
            "x.plugin.yaml",
            "plugin:\n  name: My_LLM\n  version: \"1.2.3\"\n  type: llm_provider\n  protocol: grpc\n  hector_version: \">=0.1.0\"\n",
        );
        let m = report.manifest.expect("valid");
        let r = to_resource(
            &m,
            &ConvertOptions {
                image: Some("example.org/llm:1".into()),
                namespace: Some("agents".into()),
                ..Default::default()
            },
        );
        assert_eq!(r.metadata.name.as_deref(), Some("my-llm"));
        assert_eq!(r.spec.command, ["/plugin/My_LLM"]);
        assert_eq!(r.spec.manifest.version, "1.2.3");
        assert_eq!(r.spec.launch, LaunchMode::GoPlugin);
    }
}
