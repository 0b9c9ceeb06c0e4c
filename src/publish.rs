//! The endpoints ConfigMap of a namespace (default `hector-plugins`): rendered from the
//! namespace's HectorPlugins and their probe states (pure), kept within the API server's size
//! limit, and written by one writer per namespace only when its content changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
        // An endpoint carried over from before this operator started (or led) keeps the
        // certificate published for it until a probe verifies one.
        let mut certificates = state.certificates();
        if let Some(old) = before(&name) {
            for e in &endpoints {
                if !certificates.contains_key(e)
                    && let Some(c) = old.certificates.get(e)
                {
                    certificates.insert(e.clone(), c.clone());
                }
            }
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
            certificates,
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

/// Where the published `plugins.yaml` expects the per-plugin copies of
/// `hector-plugin-remote` by default: the directory the agent recipe (`examples/agent`) has
/// `hector-plugin-remote install --into` lay out, and Hector's discovery path.
pub const DEFAULT_PLUGIN_DIR: &str = "/opt/hector/plugins";

/// Checks a `--plugin-dir` value: an absolute directory path without `.`/`..` segments or
/// control characters (it is written into every `path:` of `plugins.yaml`, which Hector
/// executes). A trailing `/` is dropped.
pub fn parse_plugin_dir(raw: &str) -> Result<String, String> {
    let dir = raw.trim_end_matches('/');
    if !raw.starts_with('/') {
        return Err(format!(
            "{raw:?} is not an absolute path (agents execute `<dir>/<plugin>`)"
        ));
    }
    if dir.is_empty() {
        return Err("/ is not a plugin directory".into());
    }
    if dir.chars().any(char::is_control) {
        return Err(format!("{raw:?} contains a control character"));
    }
    if dir
        .split('/')
        .skip(1)
        .any(|segment| matches!(segment, "" | "." | ".."))
    {
        return Err(format!(
            "{raw:?} is not a plain path (empty, `.` or `..` segment)"
        ));
    }
    Ok(dir.to_string())
}

/// The executable an agent runs for published plugin `name`: its own copy of
/// `hector-plugin-remote` in `plugin_dir`, next to the `NAME.plugin.yaml` Hector reads first.
pub fn plugin_path(plugin_dir: &str, name: &str) -> String {
    format!("{plugin_dir}/{name}")
}

#[derive(Serialize)]
struct HectorEntry<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
    enabled: bool,
}

/// `plugins.yaml`: the published plugins in Hector's own configuration shape. Hector reads
/// `<path>.plugin.yaml` before it starts a `path:` plugin and dispenses it by that manifest's
/// type, so every plugin gets its own path, `plugin_dir/NAME`: the copy of
/// `hector-plugin-remote` that `hector-plugin-remote install --into plugin_dir` writes with
/// its manifest. The copy finds its plugin by its own name in `endpoints.json` (per-call
/// balancing over the published endpoints, pinned certificates), so entries carry no config.
pub fn hector_config(file: &EndpointsFile, plugin_dir: &str) -> String {
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
                    path: plugin_path(plugin_dir, name),
                    enabled: true,
                },
            );
    }
    let body =
        serde_norway::to_string(&BTreeMap::from([("plugins", sections)])).unwrap_or_default();
    format!(
        "# Healthy remote plugins of namespace {}, published by hector-operator; do not edit.\n\
         # Each path is laid out with its manifest by `hector-plugin-remote install --into {plugin_dir}`.\n{body}",
        file.namespace
    )
}

/// The ConfigMap's data for `file`.
pub fn configmap_data(file: &EndpointsFile, plugin_dir: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ENDPOINTS_KEY.to_string(), file.render()),
        (
            PLUGINS_YAML_KEY.to_string(),
            hector_config(file, plugin_dir),
        ),
    ])
}

/// The keys of the endpoints ConfigMap the operator writes and compares; others (added by
/// hand, by another field manager) are not ours and left alone.
pub const OWN_KEYS: [&str; 2] = [ENDPOINTS_KEY, PLUGINS_YAML_KEY];

/// The API server's limit on one ConfigMap's data: keys plus values of `data` and
/// `binaryData` together at most 1 MiB (`MaxSecretSize` in Kubernetes' validation).
pub const CONFIGMAP_DATA_LIMIT: usize = 1024 * 1024;

/// What the operator lets its two keys take: the limit less about 47 KiB, so a key someone
/// adds by hand (see [`OWN_KEYS`]) does not make the write fail at once, and the whole object
/// with its labels and managedFields stays far below what etcd accepts in one request.
pub const DATA_BUDGET: usize = 1_000_000;

const _: () = assert!(DATA_BUDGET < CONFIGMAP_DATA_LIMIT);

/// The `Published` condition reason of a plugin left out of the ConfigMap for its size.
pub const PUBLICATION_TOO_LARGE: &str = "PublicationTooLarge";

/// Bytes of ConfigMap data as the API server counts them against its limit: every key plus
/// every value.
pub fn data_size(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// A plugin left out of the endpoints ConfigMap because it did not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    /// The HectorPlugin's name.
    pub name: String,
    /// The bytes its entry takes in the ConfigMap's data (both keys, measured alone).
    pub bytes: usize,
}

impl LeftOut {
    /// The `Published=False` message for this plugin, naming the ConfigMap.
    pub fn message(&self, configmap: &str) -> String {
        format!(
            "not published: its entry needs {} bytes, more than is left of the {DATA_BUDGET}-byte \
             budget of ConfigMap {configmap} after the plugins before it by name; shorten its \
             manifest or move plugins to another namespace",
            self.bytes
        )
    }
}

/// A rendering of the endpoints ConfigMap that fits within its budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Bounded {
    /// The document published: the plugins that fit.
    pub file: EndpointsFile,
    /// The ConfigMap's data for `file`; [`data_size`] of it is within the budget.
    pub data: BTreeMap<String, String>,
    /// Plugins with healthy endpoints left out because they did not fit, by name.
    pub left_out: Vec<LeftOut>,
}

/// [`render`] and [`configmap_data`], kept within [`DATA_BUDGET`].
///
/// Plugins are taken in name order (the order of the document itself, so no plugin gains a
/// place by being created or reconciled first), each kept when it fits beside those kept
/// before it and left out otherwise; a later, smaller one may still fit. So a plugin that
/// fits is never dropped because of one after it, and the same input gives the same bytes.
pub fn render_bounded(
    namespace: &str,
    sources: &[Source<'_>],
    previous: Option<&EndpointsFile>,
    now: Timestamp,
    plugin_dir: &str,
) -> Bounded {
    render_within(namespace, sources, previous, now, plugin_dir, DATA_BUDGET)
}

/// [`render_bounded`] with another budget (for tests and other limits).
pub fn render_within(
    namespace: &str,
    sources: &[Source<'_>],
    previous: Option<&EndpointsFile>,
    now: Timestamp,
    plugin_dir: &str,
    budget: usize,
) -> Bounded {
    let full = render(namespace, sources, previous, now);
    fit_by_layout(&full, plugin_dir, budget).unwrap_or_else(|| {
        tracing::warn!(
            namespace,
            "endpoints sizes do not add up as measured; fitting the slow way"
        );
        fit_exact(full, plugin_dir, budget)
    })
}

/// The document's head (schema version, namespace) with `plugins`.
fn with_plugins(head: &EndpointsFile, plugins: BTreeMap<String, PublishedPlugin>) -> EndpointsFile {
    EndpointsFile {
        schema_version: head.schema_version,
        namespace: head.namespace.clone(),
        plugins,
    }
}

fn measure(file: &EndpointsFile, plugin_dir: &str) -> usize {
    data_size(&configmap_data(file, plugin_dir))
}

/// How rendered sizes add up. An entry added to a non-empty document takes other than it
/// takes alone, by a fixed amount per context: it shares the JSON braces and the YAML
/// `plugins:` line (and its section's header, when that section has entries already), but
/// needs a separator, and `plugins: {}` becomes `plugins:`. These corrections are measured
/// once from small stand-in entries, not assumed from the serializers' formats, and
/// [`fit_by_layout`] checks its sum against the real rendering.
struct Layout {
    /// The data of a document without plugins.
    empty: usize,
    /// The correction for an entry whose section has no entries yet.
    other: Correction,
    /// The correction for an entry whose section has entries, by section.
    same: BTreeMap<&'static str, Correction>,
}

/// What entry `b` takes beside entry `a`, less what it takes alone: `add − sub` bytes
/// (kept as two unsigned numbers, since it may be negative).
#[derive(Clone, Copy, Default)]
struct Correction {
    add: usize,
    sub: usize,
}

impl Layout {
    fn measure(head: &EndpointsFile, plugin_dir: &str) -> Self {
        let stand_in = |name: &str, plugin_type: &str| {
            (
                name.to_string(),
                PublishedPlugin {
                    name: name.into(),
                    plugin_type: plugin_type.into(),
                    address: name.into(),
                    endpoints: vec![name.into()],
                    ..Default::default()
                },
            )
        };
        let size = |entries: &[(String, PublishedPlugin)]| {
            measure(
                &with_plugins(head, entries.iter().cloned().collect()),
                plugin_dir,
            )
        };
        let empty = size(&[]);
        // size({a, b}) − size({a}) is what b adds beside a; size({b}) − size({}) alone.
        let correction = |a: (String, PublishedPlugin), b: (String, PublishedPlugin)| Correction {
            add: size(&[a.clone(), b.clone()]) + empty,
            sub: size(&[a]) + size(&[b]),
        };
        let types = [
            "llm_provider",
            "database_provider",
            "embedder_provider",
            "tool_provider",
            "reasoning_strategy",
        ];
        let same = types
            .iter()
            .map(|t| {
                (
                    hector_section(t),
                    correction(stand_in("a", t), stand_in("b", t)),
                )
            })
            .collect();
        Layout {
            empty,
            other: correction(
                stand_in("a", "llm_provider"),
                stand_in("b", "tool_provider"),
            ),
            same,
        }
    }
}

/// The greedy fit in name order, sizing each entry once alone; `None` if the sizes did not
/// add up to the real rendering (a serializer no longer formats as [`Layout`] measured).
fn fit_by_layout(full: &EndpointsFile, plugin_dir: &str, budget: usize) -> Option<Bounded> {
    let layout = Layout::measure(full, plugin_dir);
    let mut kept = BTreeMap::new();
    let mut sections = BTreeSet::new();
    let mut left_out = Vec::new();
    let mut size = layout.empty;
    for (name, entry) in &full.plugins {
        let one = with_plugins(full, BTreeMap::from([(name.clone(), entry.clone())]));
        let alone = measure(&one, plugin_dir).saturating_sub(layout.empty);
        let section = hector_section(&entry.plugin_type);
        let correction = if kept.is_empty() {
            Correction::default()
        } else if sections.contains(section) {
            layout.same.get(section).copied().unwrap_or_default()
        } else {
            layout.other
        };
        let needed = (size + alone + correction.add).saturating_sub(correction.sub);
        if needed <= budget {
            kept.insert(name.clone(), entry.clone());
            sections.insert(section);
            size = needed;
        } else {
            left_out.push(LeftOut {
                name: name.clone(),
                bytes: alone,
            });
        }
    }
    let file = with_plugins(full, kept);
    let data = configmap_data(&file, plugin_dir);
    (data_size(&data) == size).then_some(Bounded {
        file,
        data,
        left_out,
    })
}

/// The same greedy fit, rendering the whole document for every entry: slow, but exact
/// whatever the format. Only used when [`fit_by_layout`] finds its sums wrong.
fn fit_exact(full: EndpointsFile, plugin_dir: &str, budget: usize) -> Bounded {
    let empty = measure(&with_plugins(&full, BTreeMap::new()), plugin_dir);
    let mut file = with_plugins(&full, BTreeMap::new());
    let mut left_out = Vec::new();
    for (name, entry) in full.plugins {
        let one = with_plugins(&file, BTreeMap::from([(name.clone(), entry.clone())]));
        let alone = measure(&one, plugin_dir).saturating_sub(empty);
        file.plugins.insert(name.clone(), entry);
        if measure(&file, plugin_dir) > budget {
            file.plugins.remove(&name);
            left_out.push(LeftOut { name, bytes: alone });
        }
    }
    let data = configmap_data(&file, plugin_dir);
    Bounded {
        file,
        data,
        left_out,
    }
}

/// What the writer last wrote to one namespace's ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The versions the watch may still show while it has not caught up with this write: the
    /// one the first of our unseen writes replaced (`None`: it did not exist), and each one a
    /// later write of ours replaced. Any other version is someone else's write.
    pub behind: Vec<Option<String>>,
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
            !w.behind.contains(&current.map(|(rv, _)| rv.to_string()))
        }
        _ => true,
    }
}

/// The versions of [`Written::behind`] kept at most (a watch lagging further makes at worst
/// one refused replace and an apply).
const MAX_BEHIND: usize = 32;

/// What the next write of a ConfigMap is conditioned on, and its [`Written::behind`].
#[derive(Debug, PartialEq)]
pub struct Chain {
    /// The resourceVersion to replace (`None`: there is none to replace).
    pub base: Option<String>,
    /// See [`Written::behind`].
    pub behind: Vec<Option<String>>,
}

/// The version the watch shows, unless it is one our unseen writes went through (the watch
/// lags behind our writes): then the version our last write produced, which extends the chain.
pub fn chain(cached: Option<&str>, written: Option<&Written>) -> Chain {
    let cached = cached.map(str::to_string);
    match written {
        Some(w) if !w.caught_up && w.behind.contains(&cached) => {
            let mut behind = w.behind.clone();
            behind.push(Some(w.after.clone()));
            if behind.len() > MAX_BEHIND {
                behind.remove(0);
            }
            Chain {
                base: Some(w.after.clone()),
                behind,
            }
        }
        _ => Chain {
            base: cached.clone(),
            behind: vec![cached],
        },
    }
}

/// The ConfigMap to replace `live` with: `live` as it is (others' keys, labels and
/// annotations stay), with `rendered` under [`OWN_KEYS`], `labels` added, conditioned on
/// `resource_version`. No managedFields are sent, so the API server keeps its own record.
pub fn replacement(
    live: &ConfigMap,
    rendered: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    resource_version: String,
) -> ConfigMap {
    let mut cm = live.clone();
    cm.metadata.managed_fields = None;
    cm.metadata.resource_version = Some(resource_version);
    cm.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let data = cm.data.get_or_insert_with(BTreeMap::new);
    for key in OWN_KEYS {
        match rendered.get(key) {
            Some(v) => data.insert(key.to_string(), v.clone()),
            None => data.remove(key),
        };
    }
    cm
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
    use crate::index::{Index, PluginKey, ProbeOutcome, Stage};

    fn state(published: &[&str]) -> PluginState {
        let mut index = Index::default();
        let key = PluginKey {
            namespace: "agents".into(),
            name: "x".into(),
        };
        let wanted: BTreeMap<String, Stage> = published
            .iter()
            .map(|s| (s.to_string(), Stage::Ready))
            .collect();
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
    fn verified_certificates_are_published_and_carried_endpoints_keep_theirs() {
        let llm = fixtures::plugin(fixtures::LLM);
        let key = PluginKey {
            namespace: "agents".into(),
            name: "x".into(),
        };
        let mut index = Index::default();
        let both: BTreeMap<String, Stage> = [
            ("10.0.0.1:1".to_string(), Stage::Ready),
            ("10.0.0.2:1".to_string(), Stage::Ready),
        ]
        .into();
        index.set_endpoints(&key, &both, 3, &[], None);
        for a in both.keys() {
            index.record(&key, a, &ProbeOutcome::Healthy(None));
        }
        assert!(index.set_fingerprint(&key, "10.0.0.1:1", "sha256:aa".into()));
        assert!(
            !index.set_fingerprint(&key, "10.0.0.1:1", "sha256:aa".into()),
            "unchanged"
        );
        let state = index.get(&key).expect("known");
        let source = [Source {
            plugin: &llm,
            state: Some(&state),
        }];
        let first = render("agents", &source, None, t(1));
        let entry = &first.plugins["my-llm"];
        assert_eq!(
            entry.certificates,
            BTreeMap::from([("10.0.0.1:1".to_string(), "sha256:aa".to_string())]),
            "only verified ones"
        );
        // A new operator carries 10.0.0.2 before probing it: its published certificate stays.
        let mut before = first.clone();
        if let Some(p) = before.plugins.get_mut("my-llm") {
            p.certificates
                .insert("10.0.0.2:1".into(), "sha256:bb".into());
        }
        let mut fresh = Index::default();
        fresh.set_endpoints(
            &key,
            &both,
            3,
            &["10.0.0.1:1".into(), "10.0.0.2:1".into()],
            None,
        );
        let carried = fresh.get(&key).expect("known");
        let again = render(
            "agents",
            &[Source {
                plugin: &llm,
                state: Some(&carried),
            }],
            Some(&before),
            t(2),
        );
        assert_eq!(again.plugins["my-llm"].certificates.len(), 2, "{again:?}");
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
    fn hector_config_gives_every_plugin_its_own_path_in_its_types_section() {
        let up = state(&["10.0.0.1:50051"]);
        let typed = |name: &str, t: PluginTypeName| {
            let mut p = fixtures::plugin(fixtures::LLM);
            p.metadata.name = Some(name.into());
            p.spec.manifest.plugin_type = t;
            p
        };
        let plugins = [
            typed("my-llm", PluginTypeName::LlmProvider),
            typed("vectors", PluginTypeName::DatabaseProvider),
            typed("embed", PluginTypeName::EmbedderProvider),
        ];
        let file = render("agents", &sources(&plugins, &up), None, t(1));
        let yaml = hector_config(&file, DEFAULT_PLUGIN_DIR);
        let parsed: serde_json::Value = serde_norway::from_str(&yaml).expect("yaml");
        for (section, name) in [
            ("llm_providers", "my-llm"),
            ("database_providers", "vectors"),
            ("embedder_providers", "embed"),
        ] {
            let entry = &parsed["plugins"][section][name];
            assert_eq!(
                entry,
                &serde_json::json!({
                    "name": name,
                    "type": "grpc",
                    "path": format!("/opt/hector/plugins/{name}"),
                    "enabled": true,
                }),
                "{yaml}"
            );
        }
        // Nothing else: no config values (secrets live in the plugin's resource), and no
        // shared executable path that would need one manifest for several types.
        assert_eq!(parsed["plugins"].as_object().map(|o| o.len()), Some(3));
        assert!(
            !yaml.contains("api_key") && !yaml.contains("config"),
            "{yaml}"
        );
        assert!(
            yaml.contains("hector-plugin-remote install --into /opt/hector/plugins"),
            "{yaml}"
        );
    }

    #[test]
    fn the_plugin_dir_must_be_a_plain_absolute_path() {
        assert_eq!(
            parse_plugin_dir("/opt/hector/plugins/").as_deref(),
            Ok("/opt/hector/plugins")
        );
        assert_eq!(parse_plugin_dir("/p").as_deref(), Ok("/p"));
        for (bad, reason) in [
            ("opt/hector", "not an absolute path"),
            ("", "not an absolute path"),
            ("/", "is not a plugin directory"),
            ("//", "is not a plugin directory"),
            ("/opt/../etc", "`..` segment"),
            ("/opt/./x", "`..` segment"),
            ("/opt//x", "`..` segment"),
            ("/opt/x\ny", "control character"),
        ] {
            let err = parse_plugin_dir(bad).expect_err(bad);
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
        assert_eq!(plugin_path("/p", "echo"), "/p/echo");
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
            behind: vec![Some("5".into())],
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
            behind: vec![None],
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
    fn a_replace_is_conditioned_on_our_own_writes_while_the_watch_lags() {
        let some = |v: &str| Some(v.to_string());
        let after = |c: &Chain, rv: &str| Written {
            behind: c.behind.clone(),
            after: rv.into(),
            data: BTreeMap::new(),
            caught_up: false,
        };
        // Nothing written: the watch's version.
        let first = chain(Some("10"), None);
        assert_eq!(first.base, some("10"));
        let w1 = after(&first, "12");
        // The watch still shows 10: conditioned on our 12.
        let second = chain(Some("10"), Some(&w1));
        assert_eq!(second.base, some("12"));
        let w2 = after(&second, "14");
        // Three writes in a row while the watch shows 10, then 12 (our first): always on our
        // last one, never refused.
        assert_eq!(chain(Some("10"), Some(&w2)).base, some("14"));
        let third = chain(Some("12"), Some(&w2));
        assert_eq!(third.base, some("14"));
        assert_eq!(third.behind, vec![some("10"), some("12"), some("14")]);
        // Someone else's version, or the watch caught up: the watch's version.
        assert_eq!(chain(Some("13"), Some(&w2)).base, some("13"));
        let mut seen = after(&third, "16");
        seen.caught_up = true;
        assert_eq!(chain(Some("16"), Some(&seen)).base, some("16"));
        // A watch that lags one write behind, write after write: every write is conditioned on
        // the last one, and what is remembered stays bounded.
        let mut long = w2;
        let mut shown = "12".to_string();
        for i in 0..100 {
            let next = chain(Some(&shown), Some(&long));
            assert_eq!(next.base, some(&long.after));
            shown = long.after.clone();
            long = after(&next, &format!("{}", 100 + i));
        }
        assert_eq!(long.behind.len(), MAX_BEHIND);
        // One so far behind that its version was forgotten counts as someone else's.
        assert_eq!(chain(Some("10"), Some(&long)).base, some("10"));
        // Written while the ConfigMap did not exist yet.
        assert_eq!(chain(None, None).behind, vec![None]);
    }

    #[test]
    fn a_replacement_keeps_what_others_added_and_sends_no_managed_fields() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let live = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some("hector-plugins".into()),
                namespace: Some("agents".into()),
                uid: Some("u-1".into()),
                resource_version: Some("7".into()),
                labels: Some(BTreeMap::from([("team".to_string(), "a".to_string())])),
                annotations: Some(BTreeMap::from([(
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{}".to_string(),
                )])),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                (ENDPOINTS_KEY.to_string(), "old".to_string()),
                (PLUGINS_YAML_KEY.to_string(), "old".to_string()),
                ("notes".to_string(), "by hand".to_string()),
            ])),
            ..Default::default()
        };
        let rendered = BTreeMap::from([
            (ENDPOINTS_KEY.to_string(), "new".to_string()),
            (PLUGINS_YAML_KEY.to_string(), "new".to_string()),
        ]);
        let ours = BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "x".to_string())]);
        let cm = replacement(&live, &rendered, &ours, "9".into());
        let data = cm.data.as_ref().expect("data");
        assert_eq!(data[ENDPOINTS_KEY], "new");
        assert_eq!(data[PLUGINS_YAML_KEY], "new");
        assert_eq!(data["notes"], "by hand");
        let labels = cm.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels["team"], "a");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "x");
        assert_eq!(cm.metadata.annotations, live.metadata.annotations);
        assert_eq!(cm.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(cm.metadata.resource_version.as_deref(), Some("9"));
        assert!(cm.metadata.managed_fields.is_none());
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
            behind: vec![Some("5".into())],
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

    /// `count` LLM plugins named `p000`, `p001`, … each with `endpoints` healthy endpoints.
    fn many(count: usize, endpoints: usize) -> (Vec<HectorPlugin>, PluginState) {
        let addresses: Vec<String> = (0..endpoints)
            .map(|i| format!("10.0.{}.{}:50051", i / 250, i % 250))
            .collect();
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let plugins = (0..count)
            .map(|i| {
                let mut p = fixtures::plugin(fixtures::LLM);
                p.metadata.name = Some(format!("p{i:03}"));
                p
            })
            .collect();
        (plugins, state(&refs))
    }

    fn sources<'a>(plugins: &'a [HectorPlugin], state: &'a PluginState) -> Vec<Source<'a>> {
        plugins
            .iter()
            .map(|plugin| Source {
                plugin,
                state: Some(state),
            })
            .collect()
    }

    #[test]
    fn everything_is_published_when_it_fits() {
        let (plugins, up) = many(5, 3);
        let sources = sources(&plugins, &up);
        let bounded = render_bounded("agents", &sources, None, t(1), "/r");
        let full = render("agents", &sources, None, t(1));
        assert!(bounded.left_out.is_empty());
        assert_eq!(bounded.file, full);
        assert_eq!(bounded.data, configmap_data(&full, "/r"));
        assert!(data_size(&bounded.data) <= DATA_BUDGET);
    }

    #[test]
    fn an_oversized_description_is_left_out_and_the_plugins_after_it_still_fit() {
        let up = state(&["10.0.0.1:50051"]);
        let mut big = fixtures::plugin(fixtures::LLM);
        big.metadata.name = Some("a-big".into());
        big.spec.manifest.description = Some("x".repeat(DATA_BUDGET));
        let mut small = fixtures::plugin(fixtures::LLM);
        small.metadata.name = Some("b-small".into());
        let mut other = fixtures::plugin(fixtures::LLM);
        other.metadata.name = Some("c-other".into());
        other.spec.manifest.plugin_type = PluginTypeName::EmbedderProvider;
        let plugins = [big, small, other];
        let sources = sources(&plugins, &up);
        let bounded = render_bounded("agents", &sources, None, t(1), "/r");
        let names: Vec<&String> = bounded.file.plugins.keys().collect();
        assert_eq!(names, ["b-small", "c-other"]);
        assert_eq!(bounded.left_out.len(), 1);
        assert_eq!(bounded.left_out[0].name, "a-big");
        assert!(bounded.left_out[0].bytes > DATA_BUDGET);
        assert!(data_size(&bounded.data) <= DATA_BUDGET);
        assert!(
            bounded.left_out[0]
                .message("hector-plugins")
                .contains("hector-plugins")
        );
        assert_eq!(
            bounded,
            render_bounded("agents", &sources, None, t(1), "/r"),
            "same input, same bytes"
        );
    }

    #[test]
    fn many_endpoints_fill_the_budget_in_name_order_and_the_rest_is_listed() {
        // About 5 KB per plugin: 300 of them are more than the budget.
        let (plugins, up) = many(300, 200);
        let sources = sources(&plugins, &up);
        let bounded = render_bounded("agents", &sources, None, t(1), "/r");
        let size = data_size(&bounded.data);
        assert!(size <= DATA_BUDGET, "{size}");
        assert_eq!(bounded.data, configmap_data(&bounded.file, "/r"));
        let kept = bounded.file.plugins.len();
        assert!(kept > 100 && kept < 300, "{kept} kept");
        assert_eq!(kept + bounded.left_out.len(), 300);
        // Equal entries: the first ones by name are kept, and the next would not fit.
        let expected: Vec<String> = (0..kept).map(|i| format!("p{i:03}")).collect();
        assert!(bounded.file.plugins.keys().eq(expected.iter()));
        assert_eq!(bounded.left_out[0].name, format!("p{kept:03}"));
        assert!(size + bounded.left_out[0].bytes > DATA_BUDGET);
        let full = render("agents", &sources, None, t(1));
        let mut one_more = bounded.file.clone();
        let next = &bounded.left_out[0].name;
        one_more
            .plugins
            .insert(next.clone(), full.plugins[next].clone());
        assert!(measure(&one_more, "/r") > DATA_BUDGET);
    }

    #[test]
    fn the_summed_sizes_match_the_rendering_for_every_mix_of_sections() {
        let types = [
            PluginTypeName::LlmProvider,
            PluginTypeName::DatabaseProvider,
            PluginTypeName::EmbedderProvider,
            PluginTypeName::ToolProvider,
            PluginTypeName::ReasoningStrategy,
        ];
        let up = state(&["10.0.0.1:50051", "[fd00::1]:50051"]);
        // Names YAML must quote too ("true", "0123").
        let name = |i: usize| match i {
            0 => "true".to_string(),
            1 => "0123".to_string(),
            _ => format!("q{:02}", (i * 7) % 23),
        };
        let plugins: Vec<HectorPlugin> = (0..23)
            .map(|i| {
                let mut p = fixtures::plugin(fixtures::LLM);
                p.metadata.name = Some(name(i));
                p.spec.manifest.plugin_type = types[i % types.len()];
                p.spec.manifest.description = Some("d: 'quoted' #".repeat(i * 13));
                p
            })
            .collect();
        let sources = sources(&plugins, &up);
        let full = render("agents", &sources, None, t(1));
        let total = measure(&full, "/r");
        for budget in [0, 500, 3000, total / 3, total / 2, total - 1, total] {
            let fast = fit_by_layout(&full, "/r", budget).expect("sizes add up");
            assert_eq!(
                fast,
                fit_exact(full.clone(), "/r", budget),
                "budget {budget}"
            );
            assert!(
                data_size(&fast.data)
                    <= budget.max(measure(&with_plugins(&full, BTreeMap::new()), "/r"))
            );
        }
    }
}
