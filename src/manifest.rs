//! Hector plugin manifests (`<name>.plugin.yaml`): parsing and validation.
//!
//! Validation collects every problem of a file at once. Each diagnostic names the field path
//! (`plugin.config_schema.defaults.model`); malformed YAML is reported with line and column.
//! Unknown fields are warnings, so manifests written for newer Hector versions still load.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use hector_plugin_sdk::PluginType;
use serde_norway::Value;

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The manifest cannot be used.
    Error,
    /// The manifest is usable, but something is probably not what the author meant.
    Warning,
}

/// One finding about one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Field path such as `plugin.version`, or `""` for the whole document.
    pub path: String,
    /// Line and column (1-based) when known, e.g. for YAML syntax errors.
    pub location: Option<(usize, usize)>,
    /// What is wrong, in words a plugin author can act on.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if let Some((line, col)) = self.location {
            write!(f, "{line}:{col}: ")?;
        }
        if self.path.is_empty() {
            write!(f, "{kind}: {}", self.message)
        } else {
            write!(f, "{kind}: {}: {}", self.path, self.message)
        }
    }
}

/// The declared configuration keys of a plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSchema {
    /// Keys that must be set.
    pub required: Vec<String>,
    /// Keys that may be set.
    pub optional: Vec<String>,
    /// Default values (scalars, kept as the strings the plugin receives).
    pub defaults: BTreeMap<String, String>,
}

impl ConfigSchema {
    /// Whether `key` is declared (required, optional or defaulted).
    pub fn declares(&self, key: &str) -> bool {
        self.required.iter().any(|k| k == key)
            || self.optional.iter().any(|k| k == key)
            || self.defaults.contains_key(key)
    }

    /// Whether the schema declares any key at all.
    pub fn is_empty(&self) -> bool {
        self.required.is_empty() && self.optional.is_empty() && self.defaults.is_empty()
    }
}

/// A validated manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The plugin's own name, as it reports it through `GetManifest`.
    pub name: String,
    /// Semantic version.
    pub version: semver::Version,
    /// Author, free text.
    pub author: String,
    /// One-line description.
    pub description: String,
    /// Project homepage.
    pub homepage: String,
    /// License identifier.
    pub license: String,
    /// What kind of plugin this is.
    pub plugin_type: PluginType,
    /// Always `grpc`.
    pub protocol: String,
    /// The Hector versions the plugin works with, as written (e.g. `>=0.1.0`).
    pub hector_version: String,
    /// Declared configuration.
    pub config_schema: ConfigSchema,
    /// Feature flags such as `streaming`.
    pub capabilities: BTreeMap<String, bool>,
    /// Source repository.
    pub repository_url: String,
    /// Documentation site.
    pub documentation_url: String,
}

impl Manifest {
    /// The Kubernetes object name for this plugin (see [`kubernetes_name`]).
    pub fn resource_name(&self) -> String {
        kubernetes_name(&self.name).unwrap_or_else(|| self.name.clone())
    }
}

/// The outcome of validating one file.
#[derive(Clone, Debug)]
pub struct Report {
    /// The file as named by the caller.
    pub file: String,
    /// The manifest, when there were no errors.
    pub manifest: Option<Manifest>,
    /// Every finding, errors first.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// The findings as `file:…` lines.
    pub fn lines(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .map(|d| format!("{}:{d}", self.file))
            .collect()
    }
}

/// Reads and validates a manifest file.
pub fn load(path: &Path) -> Report {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => validate(&file, &text),
        Err(e) => Report {
            file,
            manifest: None,
            diagnostics: vec![Diagnostic {
                severity: Severity::Error,
                path: String::new(),
                location: None,
                message: format!("cannot read file: {e}"),
            }],
        },
    }
}

const KNOWN_FIELDS: &[&str] = &[
    "name",
    "version",
    "author",
    "description",
    "homepage",
    "license",
    "type",
    "protocol",
    "hector_version",
    "config_schema",
    "capabilities",
    "repository_url",
    "documentation_url",
];

/// Collects diagnostics while walking the document.
struct Checker {
    diagnostics: Vec<Diagnostic>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, path, message);
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path, message);
    }

    fn push(&mut self, severity: Severity, path: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            severity,
            path: path.into(),
            location: None,
            message: message.into(),
        });
    }

    /// A string field; `required` decides whether absence is an error.
    fn string(&mut self, map: &serde_norway::Mapping, key: &str, required: bool) -> Option<String> {
        let path = format!("plugin.{key}");
        match map.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.error(path, "is required");
                }
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() && required => {
                self.error(path, "must not be empty");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            // Unquoted versions such as `version: 1.0` arrive as numbers.
            Some(Value::Number(n)) => {
                self.error(
                    path,
                    format!("must be a string (write it in quotes: \"{n}\")"),
                );
                None
            }
            Some(other) => {
                self.error(path, format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A scalar as the string a plugin receives; `None` for lists and mappings.
pub fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Whether `s` is a DNS-1123 label (lowercase alphanumerics and `-`, at most 63 characters,
/// starting and ending with an alphanumeric).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Maps a plugin name to a DNS-1123 label: lowercase, with `_`, `.` and spaces turned into
/// `-`, other characters dropped, runs of `-` collapsed and trimmed, cut to 63 characters.
/// `None` when nothing usable is left.
pub fn kubernetes_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if matches!(c, '-' | '_' | '.' | ' ') && !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out = out.trim_matches('-').to_string();
    out.truncate(63);
    let out = out.trim_end_matches('-').to_string();
    is_dns1123_label(&out).then_some(out)
}

/// Parses and validates manifest text; `file` names it in diagnostics.
pub fn validate(file: &str, text: &str) -> Report {
    let mut c = Checker {
        diagnostics: Vec::new(),
    };
    let manifest = match serde_norway::from_str::<Value>(text) {
        Ok(doc) => check_document(&mut c, &doc),
        Err(e) => {
            c.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                path: String::new(),
                location: e.location().map(|l| (l.line(), l.column())),
                message: format!("malformed YAML: {e}"),
            });
            None
        }
    };
    c.diagnostics.sort_by_key(|d| d.severity);
    let has_errors = c.diagnostics.iter().any(|d| d.severity == Severity::Error);
    Report {
        file: file.to_string(),
        manifest: if has_errors { None } else { manifest },
        diagnostics: c.diagnostics,
    }
}

fn check_document(c: &mut Checker, doc: &Value) -> Option<Manifest> {
    let Value::Mapping(top) = doc else {
        c.error(
            "",
            format!(
                "must be a mapping with a top-level `plugin:` key, not {}",
                kind(doc)
            ),
        );
        return None;
    };
    for key in top.keys() {
        if key.as_str() != Some("plugin") {
            c.warn(
                key.as_str().unwrap_or("?").to_string(),
                "unknown top-level field (ignored)",
            );
        }
    }
    let plugin = match top.get("plugin") {
        Some(Value::Mapping(m)) => m,
        Some(other) => {
            c.error("plugin", format!("must be a mapping, not {}", kind(other)));
            return None;
        }
        None => {
            c.error("plugin", "is required (a manifest starts with `plugin:`)");
            return None;
        }
    };
    for key in plugin.keys() {
        match key.as_str() {
            Some(k) if KNOWN_FIELDS.contains(&k) => {}
            Some(k) => c.warn(format!("plugin.{k}"), "unknown field (ignored)"),
            None => c.warn("plugin", "a non-string key is ignored"),
        }
    }

    let name = c.string(plugin, "name", true);
    if let Some(n) = &name
        && !is_dns1123_label(n)
    {
        match kubernetes_name(n) {
            Some(mapped) => c.warn(
                "plugin.name",
                format!(
                    "{n:?} is not a DNS-1123 label; its Kubernetes resources will be named {mapped:?}"
                ),
            ),
            None => c.error(
                "plugin.name",
                format!(
                    "{n:?} cannot be used as a Kubernetes name: use lowercase letters, digits and '-' (at most 63)"
                ),
            ),
        }
    }

    let version = c.string(plugin, "version", true).and_then(|v| {
        semver::Version::parse(v.trim_start_matches('v'))
            .map_err(|e| {
                c.error(
                    "plugin.version",
                    format!("{v:?} is not a semantic version (MAJOR.MINOR.PATCH): {e}"),
                )
            })
            .ok()
    });

    let plugin_type = c.string(plugin, "type", true).and_then(|t| {
        t.parse::<PluginType>()
            .map_err(|e| c.error("plugin.type", e.to_string()))
            .ok()
    });

    let protocol = c.string(plugin, "protocol", true);
    if let Some(p) = &protocol
        && p != "grpc"
    {
        c.error(
            "plugin.protocol",
            format!("{p:?} is not supported: remote plugins speak \"grpc\""),
        );
    }

    let hector_version = c.string(plugin, "hector_version", true);
    if let Some(h) = &hector_version
        && let Err(e) = semver::VersionReq::parse(h)
    {
        c.error(
            "plugin.hector_version",
            format!("{h:?} is not a version requirement such as \">=0.1.0\": {e}"),
        );
    }

    let config_schema = check_config_schema(c, plugin.get("config_schema"));
    let capabilities = check_capabilities(c, plugin.get("capabilities"));

    let text = |c: &mut Checker, k: &str| c.string(plugin, k, false).unwrap_or_default();
    let author = text(c, "author");
    let description = text(c, "description");
    let homepage = text(c, "homepage");
    let license = text(c, "license");
    let repository_url = text(c, "repository_url");
    let documentation_url = text(c, "documentation_url");

    Some(Manifest {
        name: name?,
        version: version?,
        author,
        description,
        homepage,
        license,
        plugin_type: plugin_type?,
        protocol: protocol?,
        hector_version: hector_version?,
        config_schema,
        capabilities,
        repository_url,
        documentation_url,
    })
}

fn check_key_list(c: &mut Checker, schema: &serde_norway::Mapping, key: &str) -> Vec<String> {
    let path = format!("plugin.config_schema.{key}");
    let mut keys = Vec::new();
    match schema.get(key) {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            let mut seen = BTreeSet::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if !s.is_empty() => {
                        if !seen.insert(s.clone()) {
                            c.warn(format!("{path}[{i}]"), format!("{s:?} is listed twice"));
                        } else {
                            keys.push(s.clone());
                        }
                    }
                    other => c.error(
                        format!("{path}[{i}]"),
                        format!("must be a non-empty key name, not {}", kind(other)),
                    ),
                }
            }
        }
        Some(other) => c.error(
            path,
            format!("must be a list of key names, not {}", kind(other)),
        ),
    }
    keys
}

fn check_config_schema(c: &mut Checker, value: Option<&Value>) -> ConfigSchema {
    let schema = match value {
        None | Some(Value::Null) => return ConfigSchema::default(),
        Some(Value::Mapping(m)) => m,
        Some(other) => {
            c.error(
                "plugin.config_schema",
                format!(
                    "must be a mapping with required/optional/defaults, not {}",
                    kind(other)
                ),
            );
            return ConfigSchema::default();
        }
    };
    for key in schema.keys() {
        let k = key.as_str().unwrap_or("?");
        if !["required", "optional", "defaults"].contains(&k) {
            c.warn(
                format!("plugin.config_schema.{k}"),
                "unknown field (ignored)",
            );
        }
    }
    let required = check_key_list(c, schema, "required");
    let optional = check_key_list(c, schema, "optional");
    for k in &required {
        if optional.contains(k) {
            c.error(
                "plugin.config_schema.optional",
                format!("{k:?} is both required and optional"),
            );
        }
    }
    let mut defaults = BTreeMap::new();
    match schema.get("defaults") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let Some(k) = k.as_str() else {
                    c.error("plugin.config_schema.defaults", "keys must be strings");
                    continue;
                };
                let path = format!("plugin.config_schema.defaults.{k}");
                if !required.iter().chain(&optional).any(|d| d == k) {
                    c.error(
                        &path,
                        format!("default for undeclared key {k:?}: list it under optional"),
                    );
                }
                if required.iter().any(|d| d == k) {
                    c.warn(
                        &path,
                        "a required key with a default is never missing; consider making it optional",
                    );
                }
                match scalar_to_string(v) {
                    Some(s) if !matches!(v, Value::Null) => {
                        defaults.insert(k.to_string(), s);
                    }
                    _ => c.error(
                        path,
                        format!(
                            "must be a scalar (string, number or boolean), not {}",
                            kind(v)
                        ),
                    ),
                }
            }
        }
        Some(other) => c.error(
            "plugin.config_schema.defaults",
            format!("must be a mapping of key to value, not {}", kind(other)),
        ),
    }
    ConfigSchema {
        required,
        optional,
        defaults,
    }
}

fn check_capabilities(c: &mut Checker, value: Option<&Value>) -> BTreeMap<String, bool> {
    let mut caps = BTreeMap::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let k = k.as_str().unwrap_or("?").to_string();
                match v {
                    Value::Bool(b) => {
                        caps.insert(k, *b);
                    }
                    other => c.error(
                        format!("plugin.capabilities.{k}"),
                        format!("must be true or false, not {}", kind(other)),
                    ),
                }
            }
        }
        Some(other) => c.error(
            "plugin.capabilities",
            format!(
                "must be a mapping of capability to true/false, not {}",
                kind(other)
            ),
        ),
    }
    caps
}
