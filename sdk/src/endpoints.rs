//! The published endpoints file (`endpoints.json` in the namespace's `hector-plugins`
//! ConfigMap): what the operator writes and what agents read to find remote plugins.
//!
//! One type serves both sides, so writer and readers cannot drift apart. Maps are ordered, so
//! the same state always renders the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `schemaVersion` this crate writes and understands.
pub const SCHEMA_VERSION: u32 = 1;
/// The ConfigMap key holding the JSON document.
pub const ENDPOINTS_KEY: &str = "endpoints.json";
/// The ConfigMap key holding the fragment of Hector's own configuration.
pub const PLUGINS_YAML_KEY: &str = "plugins.yaml";
/// Default name of the per-namespace ConfigMap.
pub const DEFAULT_CONFIGMAP: &str = "hector-plugins";
/// Where agents mount the ConfigMap's `endpoints.json` by default.
pub const DEFAULT_ENDPOINTS_PATH: &str = "/etc/hector/plugins/endpoints.json";
/// Environment variable naming the endpoints file for agent-side programs.
pub const ENDPOINTS_PATH_ENV: &str = "HECTOR_PLUGINS_ENDPOINTS";

/// The whole document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsFile {
    /// Format version; readers refuse versions they do not know.
    pub schema_version: u32,
    /// Namespace the plugins run in.
    pub namespace: String,
    /// Published plugins by HectorPlugin name. Only healthy plugins appear.
    #[serde(default)]
    pub plugins: BTreeMap<String, PublishedPlugin>,
}

/// One published plugin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedPlugin {
    /// The HectorPlugin's name (also the key in `plugins`).
    pub name: String,
    /// The plugin's own name, from its manifest.
    pub plugin_name: String,
    /// Manifest type, e.g. `llm_provider`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The plugin's version, from its manifest.
    pub version: String,
    /// Stable address: `NAME.NAMESPACE.svc:PORT`, or the external endpoint.
    pub address: String,
    /// Healthy `ip:port` endpoints behind the address, sorted; never empty.
    pub endpoints: Vec<String>,
    /// Feature flags from the manifest (streaming, function_calling, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, bool>,
    /// One-line description from the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Author from the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Hector version constraint from the manifest, e.g. `>=0.1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hector_version: Option<String>,
    /// Model facts reported by an LLM plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelFacts>,
    /// Facts reported by an embedder plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<EmbedderFacts>,
    /// SHA-256 fingerprints of the endpoints' TLS certificates: key an endpoint exactly as in
    /// `endpoints` (`ip:port`), value `sha256:` and 64 lowercase hex digits of the DER leaf
    /// certificate's digest. A plugin with certificates is reached only over TLS pinned to
    /// them (any of them, so its `address` works too); one without (e.g. an external
    /// `spec.endpoint`) in plaintext.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certificates: BTreeMap<String, String>,
    /// When this entry last changed (RFC 3339, UTC).
    pub last_changed: String,
}

/// What an LLM plugin reports through `GetModelInfo`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelFacts {
    /// Model name.
    pub model_name: String,
    /// Token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i32>,
}

/// What an embedder plugin reports through `GetEmbedderInfo`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbedderFacts {
    /// Model name.
    pub model_name: String,
    /// Vector dimension.
    pub dimension: i32,
}

/// Why an endpoints document cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// Not JSON of the expected shape.
    #[error("endpoints file is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    /// Written by a newer operator.
    #[error("endpoints file has schemaVersion {found}; this program understands {SCHEMA_VERSION}")]
    UnknownVersion {
        /// The version found.
        found: u32,
    },
}

impl EndpointsFile {
    /// Parses and checks the schema version.
    pub fn parse(text: &str) -> Result<Self, EndpointsError> {
        let file: Self = serde_json::from_str(text)?;
        if file.schema_version != SCHEMA_VERSION {
            return Err(EndpointsError::UnknownVersion {
                found: file.schema_version,
            });
        }
        Ok(file)
    }

    /// The document as pretty JSON with a trailing newline (deterministic).
    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let mut file = EndpointsFile {
            schema_version: SCHEMA_VERSION,
            namespace: "agents".into(),
            plugins: BTreeMap::new(),
        };
        file.plugins.insert(
            "echo".into(),
            PublishedPlugin {
                name: "echo".into(),
                plugin_name: "echo-llm".into(),
                plugin_type: "llm_provider".into(),
                version: "0.1.0".into(),
                address: "echo.agents.svc:50051".into(),
                endpoints: vec!["10.0.0.1:50051".into()],
                last_changed: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            },
        );
        let text = file.render();
        assert!(text.contains("\"schemaVersion\": 1"), "{text}");
        assert!(text.contains("\"type\": \"llm_provider\""), "{text}");
        assert_eq!(EndpointsFile::parse(&text).expect("parses"), file);
        assert!(
            !text.contains("certificates"),
            "left out when empty: {text}"
        );
        if let Some(echo) = file.plugins.get_mut("echo") {
            echo.certificates.insert(
                "10.0.0.1:50051".into(),
                format!("sha256:{}", "ab".repeat(32)),
            );
        }
        let pinned = file.render();
        assert!(
            pinned.contains("\"certificates\": {\n        \"10.0.0.1:50051\": \"sha256:abab"),
            "{pinned}"
        );
        assert_eq!(EndpointsFile::parse(&pinned).expect("parses"), file);
        let newer = text.replace("\"schemaVersion\": 1", "\"schemaVersion\": 2");
        let err = EndpointsFile::parse(&newer).expect_err("refused");
        assert!(err.to_string().contains("schemaVersion 2"), "{err}");
    }
}
