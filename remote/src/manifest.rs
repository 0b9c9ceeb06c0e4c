//! The `NAME.plugin.yaml` written next to each installed copy: Hector's manifest format,
//! filled from what the operator published about the remote plugin.

use std::collections::BTreeMap;

use hector_plugin_sdk::PluginType;
use hector_plugin_sdk::endpoints::PublishedPlugin;
use serde::Serialize;

/// The Hector version constraint used when the plugin published none (or an invalid one).
const DEFAULT_HECTOR_VERSION: &str = ">=0.1.0";
/// The version used when the published one is not a semantic version.
const DEFAULT_VERSION: &str = "0.0.0";

#[derive(Serialize)]
struct Document<'a> {
    plugin: Plugin<'a>,
}

#[derive(Serialize)]
struct Plugin<'a> {
    name: &'a str,
    version: String,
    author: &'a str,
    description: String,
    #[serde(rename = "type")]
    plugin_type: &'static str,
    protocol: &'static str,
    hector_version: String,
    capabilities: &'a BTreeMap<String, bool>,
    config_schema: ConfigSchema,
}

/// Empty: the remote plugin's configuration lives in its HectorPlugin resource, and
/// `remote_address` is not needed by an installed copy.
#[derive(Serialize, Default)]
struct ConfigSchema {
    required: Vec<String>,
    optional: Vec<String>,
    defaults: BTreeMap<String, String>,
}

/// Renders the manifest for published plugin `name`; an error names what is unusable.
pub fn render(name: &str, plugin: &PublishedPlugin) -> Result<String, String> {
    let plugin_type = plugin
        .plugin_type
        .parse::<PluginType>()
        .map_err(|e| e.to_string())?;
    let version = semver::Version::parse(plugin.version.trim_start_matches('v'))
        .map(|v| v.to_string())
        .unwrap_or_else(|_| DEFAULT_VERSION.to_string());
    let hector_version = plugin
        .hector_version
        .as_deref()
        .filter(|h| semver::VersionReq::parse(h).is_ok())
        .unwrap_or(DEFAULT_HECTOR_VERSION)
        .to_string();
    let description = match plugin.description.as_deref() {
        Some(d) if !d.trim().is_empty() => format!("{} (remote)", d.trim()),
        _ => format!("Remote plugin {name}"),
    };
    let doc = Document {
        plugin: Plugin {
            name,
            version,
            author: plugin.author.as_deref().unwrap_or(""),
            description,
            plugin_type: plugin_type.as_str(),
            protocol: "grpc",
            hector_version,
            capabilities: &plugin.capabilities,
            config_schema: ConfigSchema::default(),
        },
    };
    let yaml = serde_norway::to_string(&doc).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Written by hector-plugin-remote install: the executable {name} next to this file\n\
         # forwards to the remote plugin {name:?}. Re-running install rewrites or removes it.\n\
         {yaml}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> PublishedPlugin {
        PublishedPlugin {
            name: "echo".into(),
            plugin_name: "echo-llm".into(),
            plugin_type: "llm_provider".into(),
            version: "v1.2.3".into(),
            address: "echo.agents.svc:50051".into(),
            endpoints: vec!["10.0.0.1:50051".into()],
            capabilities: [("streaming".to_string(), true)].into(),
            description: Some("Echoes: \"quoted\"\nsecond line".into()),
            author: Some("someone".into()),
            hector_version: Some(">=0.2.0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn renders_hectors_manifest_format() {
        let text = render("echo", &published()).expect("renders");
        let doc: serde_norway::Value = serde_norway::from_str(&text).expect("valid YAML");
        let p = &doc["plugin"];
        assert_eq!(p["name"].as_str(), Some("echo"));
        assert_eq!(p["version"].as_str(), Some("1.2.3"));
        assert_eq!(p["type"].as_str(), Some("llm_provider"));
        assert_eq!(p["protocol"].as_str(), Some("grpc"));
        assert_eq!(p["hector_version"].as_str(), Some(">=0.2.0"));
        assert_eq!(p["author"].as_str(), Some("someone"));
        assert_eq!(
            p["description"].as_str(),
            Some("Echoes: \"quoted\"\nsecond line (remote)")
        );
        assert_eq!(p["capabilities"]["streaming"].as_bool(), Some(true));
        assert!(
            p["config_schema"]["required"]
                .as_sequence()
                .is_some_and(Vec::is_empty)
        );
        assert!(
            text.starts_with("# Written by hector-plugin-remote"),
            "{text}"
        );
    }

    #[test]
    fn fills_in_what_was_not_published_and_refuses_unknown_types() {
        let mut p = published();
        p.version = "latest".into();
        p.hector_version = Some("not a range".into());
        p.description = None;
        let text = render("echo", &p).expect("renders");
        let doc: serde_norway::Value = serde_norway::from_str(&text).expect("valid YAML");
        assert_eq!(doc["plugin"]["version"].as_str(), Some("0.0.0"));
        assert_eq!(doc["plugin"]["hector_version"].as_str(), Some(">=0.1.0"));
        assert_eq!(
            doc["plugin"]["description"].as_str(),
            Some("Remote plugin echo")
        );
        p.plugin_type = "llm".into();
        assert!(render("echo", &p).unwrap_err().contains("llm"));
    }
}
