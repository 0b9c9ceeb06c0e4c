//! Where the remote plugin is, as configured: the `remote_address` list from `Initialize`, or
//! this executable's own name looked up in the published endpoints file. Pure parsing and
//! lookup (addresses are parsed by `hector-plugin-client`); resolving names and reading
//! files happen elsewhere.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use hector_plugin_client::PluginTls;
use hector_plugin_client::target::{HostPort, parse_address_list, published_targets};
use hector_plugin_sdk::PluginType;
use hector_plugin_sdk::endpoints::EndpointsFile;

use crate::error::TargetError;

/// The `Initialize` config key naming the remote plugin's address(es).
pub const REMOTE_ADDRESS_KEY: &str = "remote_address";

/// Where the endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A fixed list from `remote_address`, names re-resolved from time to time.
    Addresses(Vec<HostPort>),
    /// The plugin `name` in the endpoints file at `file`, re-read as it changes.
    Published {
        /// The endpoints file.
        file: PathBuf,
        /// The plugin's key in it.
        name: String,
    },
}

impl Source {
    /// The source `config` asks for: `remote_address` when set, else this program's `name`
    /// in `file`.
    pub fn from_config(
        config: &HashMap<String, String>,
        name: &str,
        file: &Path,
    ) -> Result<Self, TargetError> {
        match config.get(REMOTE_ADDRESS_KEY).map(|v| v.trim()) {
            Some(raw) if !raw.is_empty() => parse_address_list(raw)
                .map(Source::Addresses)
                .map_err(TargetError::from),
            _ => Ok(Source::Published {
                file: file.to_path_buf(),
                name: name.to_string(),
            }),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Addresses(list) => {
                let list: Vec<String> = list.iter().map(HostPort::to_string).collect();
                f.write_str(&list.join(","))
            }
            Source::Published { file, name } => {
                write!(f, "plugin {name:?} in {}", file.display())
            }
        }
    }
}

/// A published plugin's targets, type and TLS.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    /// The published plugin type (`llm_provider`, …).
    pub plugin_type: String,
    /// Its endpoints, or its stable address when it lists none.
    pub targets: Vec<HostPort>,
    /// TLS pinned to its certificates, or none (plaintext) when it published none.
    pub tls: Option<PluginTls>,
}

/// Looks up plugin `name` in a parsed endpoints file.
pub fn published(file: &EndpointsFile, name: &str) -> Result<Published, TargetError> {
    let plugin = file
        .plugins
        .get(name)
        .ok_or_else(|| TargetError::NotPublished {
            name: name.to_string(),
            known: file.plugins.keys().cloned().collect(),
        })?;
    Ok(Published {
        plugin_type: plugin.plugin_type.clone(),
        targets: published_targets(plugin)?,
        tls: PluginTls::for_published(name, plugin),
    })
}

/// The published plugin that `addresses` (a `remote_address` list) point at: the first whose
/// stable address or one of whose endpoints is among them. Its certificates are what a
/// connection to that address will be shown.
pub fn serving(file: &EndpointsFile, addresses: &[HostPort]) -> Option<String> {
    let named = |raw: &str| {
        HostPort::parse(raw)
            .ok()
            .is_some_and(|hp| addresses.contains(&hp))
    };
    file.plugins
        .iter()
        .find(|(_, p)| named(&p.address) || p.endpoints.iter().any(|e| named(e)))
        .map(|(name, _)| name.clone())
}

/// Checks that the published type is the one the host loaded the plugin as (the service of
/// its `Initialize` call).
pub fn check_type(published_type: &str, service: &str, name: &str) -> Result<(), TargetError> {
    match published_type.parse::<PluginType>() {
        Ok(t) if t.service_name() == service => Ok(()),
        _ => Err(TargetError::TypeMismatch {
            name: name.to_string(),
            published: published_type.to_string(),
            service: service.to_string(),
        }),
    }
}

/// This program's name as Hector started it: the file name of `argv[0]`.
pub fn program_name(argv0: Option<&std::ffi::OsStr>) -> String {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| env!("CARGO_PKG_NAME").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hector_plugin_sdk::endpoints::{PublishedPlugin, SCHEMA_VERSION};

    #[test]
    fn the_source_is_the_address_or_the_program_name() {
        let file = Path::new("/etc/hector/plugins/endpoints.json");
        let mut config = HashMap::new();
        config.insert("model".to_string(), "x".to_string());
        assert_eq!(
            Source::from_config(&config, "echo-llm", file).expect("by name"),
            Source::Published {
                file: file.to_path_buf(),
                name: "echo-llm".into()
            }
        );
        config.insert(REMOTE_ADDRESS_KEY.into(), "10.0.0.1:5, 10.0.0.2:5".into());
        let source = Source::from_config(&config, "echo-llm", file).expect("addresses");
        assert_eq!(source.to_string(), "10.0.0.1:5,10.0.0.2:5");
        config.insert(REMOTE_ADDRESS_KEY.into(), "nope".into());
        assert!(Source::from_config(&config, "echo-llm", file).is_err());
        config.insert(REMOTE_ADDRESS_KEY.into(), "  ".into());
        assert!(matches!(
            Source::from_config(&config, "x", file),
            Ok(Source::Published { .. })
        ));
    }

    fn file() -> EndpointsFile {
        let mut f = EndpointsFile {
            schema_version: SCHEMA_VERSION,
            namespace: "agents".into(),
            plugins: Default::default(),
        };
        f.plugins.insert(
            "echo".into(),
            PublishedPlugin {
                name: "echo".into(),
                plugin_type: "llm_provider".into(),
                address: "echo.agents.svc:50051".into(),
                endpoints: vec!["10.0.0.1:50051".into(), "10.0.0.2:50051".into()],
                ..Default::default()
            },
        );
        f.plugins.insert(
            "vec".into(),
            PublishedPlugin {
                name: "vec".into(),
                plugin_type: "embedder_provider".into(),
                address: "vec.agents.svc:50051".into(),
                certificates: [(
                    "10.0.0.3:50051".to_string(),
                    hector_plugin_sdk::tls::fingerprint(b"vec"),
                )]
                .into(),
                ..Default::default()
            },
        );
        f
    }

    #[test]
    fn published_plugins_are_found_by_name() {
        let f = file();
        let echo = published(&f, "echo").expect("echo");
        assert_eq!(echo.plugin_type, "llm_provider");
        assert_eq!(echo.targets.len(), 2);
        assert!(echo.tls.is_none(), "no certificates: plaintext");
        let vec = published(&f, "vec").expect("vec");
        assert_eq!(vec.targets[0].to_string(), "vec.agents.svc:50051");
        let tls = vec.tls.expect("published certificates ask for TLS");
        assert!(tls.accepts(&hector_plugin_sdk::tls::fingerprint(b"vec")));
        let err = published(&f, "nope").unwrap_err().to_string();
        assert!(
            err.contains("\"nope\"") && err.contains("echo") && err.contains("vec"),
            "{err}"
        );
    }

    #[test]
    fn a_remote_address_is_matched_to_the_plugin_it_serves() {
        let f = file();
        let at = |raw: &str| parse_address_list(raw).expect("addresses");
        assert_eq!(
            serving(&f, &at("vec.agents.svc:50051")).as_deref(),
            Some("vec")
        );
        assert_eq!(
            serving(&f, &at("10.0.0.9:1, 10.0.0.2:50051")).as_deref(),
            Some("echo")
        );
        assert_eq!(serving(&f, &at("vec.agents.svc:50052")), None);
    }

    #[test]
    fn types_must_match_the_loaded_service() {
        assert!(check_type("llm_provider", "hector.plugin.LLMProvider", "echo").is_ok());
        let err = check_type("embedder_provider", "hector.plugin.LLMProvider", "vec")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("embedder_provider") && err.contains("LLMProvider"),
            "{err}"
        );
    }

    #[test]
    fn the_program_name_is_the_file_name() {
        assert_eq!(
            program_name(Some(std::ffi::OsStr::new("/opt/plugins/echo-llm"))),
            "echo-llm"
        );
        assert_eq!(program_name(None), "hector-plugin-remote");
    }
}
