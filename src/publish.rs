//! The endpoints ConfigMap of a namespace (default `hector-plugins`): rendered from the
//! namespace's HectorPlugins and their probe states (pure), and written by one writer per
//! namespace only when its content changes.

use std::collections::{BTreeMap, HashMap};

use hector_plugin_sdk::endpoints::{
    ENDPOINTS_KEY, EndpointsFile, PLUGINS_YAML_KEY, PublishedPlugin, SCHEMA_VERSION,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::crd::{HectorPlugin, PluginTypeName};
use crate::index::PluginState;

/// A plugin of the namespace with what the prober knows of it (`None`: not reconciled
/// since this operator started, so its last published entry is kept as it was).
pub struct Source<'a> {
    /// The resource.
    pub plugin: &'a HectorPlugin,
    /// Its probe state.
    pub state: Option<&'a PluginState>,
}

/// The address agents use for `plugin`: its Service's name, or its external endpoint.
pub fn address(plugin: &HectorPlugin) -> String {
    match &plugin.spec.endpoint {
        Some(endpoint) => endpoint.clone(),
        None => format!(
            "{}.{}.svc:{}",
            plugin.name_any(),
            plugin.namespace().unwrap_or_default(),
            plugin.spec.port
        ),
    }
}

/// Renders the endpoints document. Entries that did not change keep the `lastChanged` of
/// `previous`, so the same state always renders the same bytes.
pub fn render(
    namespace: &str,
    sources: &[Source<'_>],
    previous: Option<&EndpointsFile>,
    now: Timestamp,
) -> EndpointsFile {
    let mut plugins = BTreeMap::new();
    let before = |name: &str| previous.and_then(|p| p.plugins.get(name));
    for source in sources {
        let name = source.plugin.name_any();
        if source.plugin.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(state) = source.state else {
            if let Some(kept) = before(&name) {
                plugins.insert(name, kept.clone());
            }
            continue;
        };
        let endpoints = state.published();
        if endpoints.is_empty() {
            continue;
        }
        let m = &source.plugin.spec.manifest;
        let facts = state.facts.clone().unwrap_or_default();
        let mut entry = PublishedPlugin {
            name: name.clone(),
            plugin_name: m.name.clone(),
            plugin_type: type_name(m.plugin_type).into(),
            version: m.version.clone(),
            address: address(source.plugin),
            endpoints,
            capabilities: m.capabilities.clone(),
            description: m.description.clone(),
            author: m.author.clone(),
            hector_version: m.hector_version.clone(),
            model: facts.model,
            embedder: facts.embedder,
            last_changed: String::new(),
        };
        entry.last_changed = match before(&name) {
            Some(old)
                if PublishedPlugin {
                    last_changed: String::new(),
                    ..old.clone()
                } == entry =>
            {
                old.last_changed.clone()
            }
            _ => now.to_string(),
        };
        plugins.insert(name, entry);
    }
    EndpointsFile {
        schema_version: SCHEMA_VERSION,
        namespace: namespace.to_string(),
        plugins,
    }
}

fn type_name(t: PluginTypeName) -> &'static str {
    hector_plugin_sdk::PluginType::from(t).as_str()
}

/// The section of Hector's `plugins:` configuration a plugin type belongs in.
pub fn hector_section(plugin_type: &str) -> &'static str {
    match plugin_type {
        "llm_provider" => "llm_providers",
        "database_provider" => "database_providers",
        "embedder_provider" => "embedder_providers",
        "tool_provider" => "tool_providers",
        _ => "reasoning_strategies",
    }
}

#[derive(Serialize)]
struct HectorEntry<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    path: &'a str,
    enabled: bool,
    config: BTreeMap<&'static str, &'a str>,
}

/// `plugins.yaml`: the published plugins in Hector's own configuration shape, each loaded
/// through the remote-plugin executable at `remote_path`.
pub fn hector_config(file: &EndpointsFile, remote_path: &str) -> String {
    let mut sections: BTreeMap<&'static str, BTreeMap<&str, HectorEntry<'_>>> = BTreeMap::new();
    for (name, p) in &file.plugins {
        sections
            .entry(hector_section(&p.plugin_type))
            .or_default()
            .insert(
                name,
                HectorEntry {
                    name,
                    kind: "grpc",
                    path: remote_path,
                    enabled: true,
                    config: BTreeMap::from([("remote_address", p.address.as_str())]),
                },
            );
    }
    let body =
        serde_norway::to_string(&BTreeMap::from([("plugins", sections)])).unwrap_or_default();
    format!(
        "# Healthy remote plugins of namespace {}, published by hector-operator; do not edit.\n{body}",
        file.namespace
    )
}

/// The ConfigMap's data for `file`.
pub fn configmap_data(file: &EndpointsFile, remote_path: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ENDPOINTS_KEY.to_string(), file.render()),
        (
            PLUGINS_YAML_KEY.to_string(),
            hector_config(file, remote_path),
        ),
    ])
}

/// The keys of the endpoints ConfigMap the operator writes and compares; others (added by
/// hand, by another field manager) are not ours and left alone.
pub const OWN_KEYS: [&str; 2] = [ENDPOINTS_KEY, PLUGINS_YAML_KEY];

/// What the writer last wrote to one namespace's ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The resourceVersion the ConfigMap had before the write (`None`: it did not exist).
    pub before: Option<String>,
    /// The resourceVersion the write produced.
    pub after: String,
    /// The data written.
    pub data: BTreeMap<String, String>,
    /// Whether the watch has shown our write yet.
    pub caught_up: bool,
}

/// Whether `a` and `b` hold the same values under the keys the operator writes
/// ([`OWN_KEYS`]); other keys are someone else's and never a reason to write.
fn same_own_keys(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    OWN_KEYS.iter().all(|k| a.get(*k) == b.get(*k))
}

/// Whether to write `rendered`, given the ConfigMap as the watch shows it (resourceVersion
/// and data) and what was last written. The watch lags behind our own writes, so a view
/// still showing the version from before our write is not a reason to write again. Only
/// [`OWN_KEYS`] are compared: a key added by hand (another field manager) is left alone by
/// our server-side apply, so it must not cause a write either.
pub fn needs_write(
    rendered: &BTreeMap<String, String>,
    current: Option<(&str, &BTreeMap<String, String>)>,
    written: Option<&mut Written>,
) -> bool {
    let mut written = written;
    if let (Some(w), Some((rv, _))) = (written.as_deref_mut(), current)
        && rv == w.after
    {
        w.caught_up = true;
    }
    if current.is_some_and(|(_, data)| same_own_keys(data, rendered)) {
        return false;
    }
    match written {
        Some(w) if !w.caught_up && same_own_keys(&w.data, rendered) => {
            // Unchanged since our write, unless a third party wrote in between.
            current.map(|(rv, _)| rv.to_string()) != w.before
        }
        _ => true,
    }
}

/// A parsed endpoints document from a ConfigMap, if it holds a readable one.
pub fn parse_existing(cm: &ConfigMap) -> Option<EndpointsFile> {
    cm.data
        .as_ref()
        .and_then(|d| d.get(ENDPOINTS_KEY))
        .and_then(|t| EndpointsFile::parse(t).ok())
}

/// Per-namespace memory of the writer.
pub type WrittenByNamespace = HashMap<String, Written>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::index::{Index, PluginKey, ProbeOutcome};

    fn state(published: &[&str]) -> PluginState {
        let mut index = Index::default();
        let key = PluginKey {
            namespace: "agents".into(),
            name: "x".into(),
        };
        let wanted: BTreeMap<String, bool> =
            published.iter().map(|s| (s.to_string(), true)).collect();
        index.set_endpoints(&key, &wanted, 3, &[], None);
        for a in wanted.keys() {
            index.record(&key, a, &ProbeOutcome::Healthy(None));
        }
        index.get(&key).expect("known")
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid")
    }

    #[test]
    fn only_plugins_with_healthy_endpoints_appear_and_rendering_is_stable() {
        let llm = fixtures::plugin(fixtures::LLM);
        let mut other = fixtures::plugin(fixtures::LLM);
        other.metadata.name = Some("down".into());
        let up = state(&["10.0.0.2:50051", "10.0.0.1:50051"]);
        let down = state(&[]);
        let sources = [
            Source {
                plugin: &llm,
                state: Some(&up),
            },
            Source {
                plugin: &other,
                state: Some(&down),
            },
        ];
        let first = render("agents", &sources, None, t(1000));
        assert_eq!(first.plugins.len(), 1);
        let entry = &first.plugins["my-llm"];
        assert_eq!(entry.address, "my-llm.agents.svc:50051");
        assert_eq!(entry.endpoints, ["10.0.0.1:50051", "10.0.0.2:50051"]);
        assert_eq!(entry.plugin_type, "llm_provider");
        let again = render("agents", &sources, Some(&first), t(2000));
        assert_eq!(again, first, "unchanged entries keep lastChanged");
        assert_eq!(
            configmap_data(&again, "/r"),
            configmap_data(&first, "/r"),
            "same bytes"
        );
        let fewer = state(&["10.0.0.1:50051"]);
        let changed = render(
            "agents",
            &[Source {
                plugin: &llm,
                state: Some(&fewer),
            }],
            Some(&first),
            t(3000),
        );
        assert_eq!(changed.plugins["my-llm"].last_changed, t(3000).to_string());
    }

    #[test]
    fn unreconciled_plugins_keep_their_entry_and_deleted_ones_lose_it() {
        let llm = fixtures::plugin(fixtures::LLM);
        let up = state(&["10.0.0.1:50051"]);
        let first = render(
            "agents",
            &[Source {
                plugin: &llm,
                state: Some(&up),
            }],
            None,
            t(1),
        );
        let kept = render(
            "agents",
            &[Source {
                plugin: &llm,
                state: None,
            }],
            Some(&first),
            t(2),
        );
        assert_eq!(kept, first);
        let gone = render("agents", &[], Some(&first), t(3));
        assert!(gone.plugins.is_empty());
    }

    #[test]
    fn hector_config_uses_the_remote_executable_and_string_addresses() {
        let llm = fixtures::plugin(fixtures::LLM);
        let up = state(&["10.0.0.1:50051"]);
        let file = render(
            "agents",
            &[Source {
                plugin: &llm,
                state: Some(&up),
            }],
            None,
            t(1),
        );
        let yaml = hector_config(&file, "/usr/local/bin/hector-plugin-remote");
        let parsed: serde_json::Value = serde_norway::from_str(&yaml).expect("yaml");
        let entry = &parsed["plugins"]["llm_providers"]["my-llm"];
        assert_eq!(entry["name"], "my-llm");
        assert_eq!(entry["type"], "grpc");
        assert_eq!(entry["enabled"], true);
        assert_eq!(entry["path"], "/usr/local/bin/hector-plugin-remote");
        assert_eq!(entry["config"]["remote_address"], "my-llm.agents.svc:50051");
        assert!(!yaml.contains("api_key"), "no config values: {yaml}");
    }

    #[test]
    fn writes_only_on_change_and_not_again_while_the_watch_lags() {
        let data = |s: &str| BTreeMap::from([(ENDPOINTS_KEY.to_string(), s.to_string())]);
        let v1 = data("one");
        // Same content: nothing to write.
        assert!(!needs_write(&v1, Some(("5", &v1)), None));
        // Different: write.
        assert!(needs_write(&data("two"), Some(("5", &v1)), None));
        // After writing "two" (5 -> 6) the watch still shows 5: no second write.
        let mut w = Written {
            before: Some("5".into()),
            after: "6".into(),
            data: data("two"),
            caught_up: false,
        };
        assert!(!needs_write(&data("two"), Some(("5", &v1)), Some(&mut w)));
        // The watch shows our write: caught up.
        assert!(!needs_write(
            &data("two"),
            Some(("6", &data("two"))),
            Some(&mut w)
        ));
        assert!(w.caught_up);
        // Someone deleted it after that: write again.
        assert!(needs_write(&data("two"), None, Some(&mut w)));
        // A created ConfigMap the watch has not shown yet is not created twice...
        let mut created = Written {
            before: None,
            after: "9".into(),
            data: data("x"),
            caught_up: false,
        };
        assert!(!needs_write(&data("x"), None, Some(&mut created)));
        // ...but a third party's edit in the meantime is repaired.
        assert!(needs_write(
            &data("x"),
            Some(("10", &data("edited"))),
            Some(&mut created)
        ));
    }

    #[test]
    fn keys_added_by_others_cause_no_write_and_a_changed_key_of_ours_does() {
        let ours = BTreeMap::from([
            (ENDPOINTS_KEY.to_string(), "{}".to_string()),
            (PLUGINS_YAML_KEY.to_string(), "plugins: {}".to_string()),
        ]);
        let mut live = ours.clone();
        live.insert("notes.txt".into(), "added by hand".into());
        assert!(!needs_write(&ours, Some(("7", &live)), None));
        // Not while our own write is still in flight either.
        let mut w = Written {
            before: Some("5".into()),
            after: "6".into(),
            data: ours.clone(),
            caught_up: false,
        };
        assert!(!needs_write(&ours, Some(("7", &live)), Some(&mut w)));
        let mut edited = live.clone();
        edited.insert(PLUGINS_YAML_KEY.into(), "plugins: {edited: true}".into());
        assert!(needs_write(&ours, Some(("8", &edited)), None));
        let mut removed = live;
        removed.remove(ENDPOINTS_KEY);
        assert!(needs_write(&ours, Some(("8", &removed)), None));
    }
}
