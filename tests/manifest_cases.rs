//! Table-driven manifest validation: valid and invalid manifests, each with the field paths
//! and messages a user must see.

use hector_operator::manifest::{Severity, validate};

/// The manifest from Hector's plugin guide ("Create Plugin Manifest").
const GUIDE_LLM: &str = r#"
plugin:
  name: "my-llm-plugin"
  version: "1.0.0"
  author: "Your Name <you@example.com>"
  description: "My custom LLM provider"
  homepage: "https://github.com/you/my-llm-plugin"
  license: "MIT"

  type: llm_provider
  protocol: grpc
  hector_version: ">=0.1.0"

  config_schema:
    required:
      - api_key
      - model
    optional:
      - temperature
      - max_tokens
    defaults:
      temperature: 0.7
      max_tokens: 2000

  capabilities:
    streaming: true
    function_calling: false
    vision: false
"#;

fn with(field: &str, value: &str) -> String {
    // Replaces one top-level field of a minimal valid manifest.
    let base = [
        ("name", "\"p\""),
        ("version", "\"1.0.0\""),
        ("type", "llm_provider"),
        ("protocol", "grpc"),
        ("hector_version", "\">=0.1.0\""),
    ];
    let mut out = String::from("plugin:\n");
    for (k, v) in base {
        if k == field {
            if !value.is_empty() {
                out.push_str(&format!("  {k}: {value}\n"));
            }
        } else {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    }
    if !field.is_empty() && !base.iter().any(|(k, _)| *k == field) {
        out.push_str(&format!("  {field}: {value}\n"));
    }
    out
}

struct Case {
    name: &'static str,
    yaml: String,
    /// Expected error lines as (field path, message fragment); empty means valid.
    errors: Vec<(&'static str, &'static str)>,
    /// Expected warnings as (field path, message fragment).
    warnings: Vec<(&'static str, &'static str)>,
}

fn case(name: &'static str, yaml: impl Into<String>) -> Case {
    Case {
        name,
        yaml: yaml.into(),
        errors: vec![],
        warnings: vec![],
    }
}

impl Case {
    fn error(mut self, path: &'static str, msg: &'static str) -> Self {
        self.errors.push((path, msg));
        self
    }
    fn warning(mut self, path: &'static str, msg: &'static str) -> Self {
        self.warnings.push((path, msg));
        self
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("guide example", GUIDE_LLM),
        case("minimal", with("", "")),
        case("embedder type", with("type", "embedder_provider")),
        case("database type", with("type", "database_provider")),
        case("tool provider type", with("type", "tool_provider")),
        case(
            "reasoning strategy type",
            with("type", "reasoning_strategy"),
        ),
        case(
            "semver with pre-release",
            with("version", "\"2.1.0-beta.1\""),
        ),
        case(
            "hector_version range",
            with("hector_version", "\">=0.1.0, <2.0.0\""),
        ),
        case("missing name", with("name", "")).error("plugin.name", "is required"),
        case("missing version", with("version", "")).error("plugin.version", "is required"),
        case("version not semver", with("version", "\"1.0\""))
            .error("plugin.version", "not a semantic version"),
        case("unquoted numeric version", with("version", "1.5"))
            .error("plugin.version", "write it in quotes"),
        case("unknown type", with("type", "llm"))
            .error("plugin.type", "unknown plugin type \"llm\""),
        case("protocol netrpc", with("protocol", "netrpc"))
            .error("plugin.protocol", "remote plugins speak \"grpc\""),
        case("bad hector_version", with("hector_version", "\"newest\""))
            .error("plugin.hector_version", "not a version requirement"),
        case(
            "name mapped to DNS label",
            with("name", "\"My_LLM.Plugin\""),
        )
        .warning("plugin.name", "will be named \"my-llm-plugin\""),
        case("name unusable", with("name", "\"___\""))
            .error("plugin.name", "cannot be used as a Kubernetes name"),
        case("unknown field is a warning", with("maintainer", "\"me\""))
            .warning("plugin.maintainer", "unknown field"),
        case(
            "key both required and optional",
            with("config_schema", "{required: [model], optional: [model]}"),
        )
        .error(
            "plugin.config_schema.optional",
            "\"model\" is both required and optional",
        ),
        case(
            "default for undeclared key",
            with("config_schema", "{optional: [a], defaults: {b: 1}}"),
        )
        .error("plugin.config_schema.defaults.b", "undeclared key \"b\""),
        case(
            "non-scalar default",
            with("config_schema", "{optional: [a], defaults: {a: [1, 2]}}"),
        )
        .error("plugin.config_schema.defaults.a", "must be a scalar"),
        case(
            "required key with default",
            with("config_schema", "{required: [a], defaults: {a: x}}"),
        )
        .warning("plugin.config_schema.defaults.a", "never missing"),
        case(
            "required not a list",
            with("config_schema", "{required: model}"),
        )
        .error("plugin.config_schema.required", "must be a list"),
        case(
            "capability not boolean",
            with("capabilities", "{streaming: \"yes\"}"),
        )
        .error("plugin.capabilities.streaming", "must be true or false"),
        case(
            "capabilities not a mapping",
            with("capabilities", "[streaming]"),
        )
        .error("plugin.capabilities", "must be a mapping"),
        case("no plugin key", "name: x\n")
            .error("plugin", "is required")
            .warning("name", "unknown top-level field"),
        case("plugin is a list", "plugin: [1, 2]\n").error("plugin", "must be a mapping"),
        case("not a mapping at all", "- a\n- b\n").error("", "must be a mapping"),
        case(
            "all errors at once",
            "plugin:\n  name: \"\"\n  version: \"x\"\n  type: nope\n  protocol: http\n",
        )
        .error("plugin.name", "must not be empty")
        .error("plugin.version", "not a semantic version")
        .error("plugin.type", "unknown plugin type")
        .error("plugin.protocol", "not supported")
        .error("plugin.hector_version", "is required"),
    ]
}

#[test]
fn table_of_manifests() {
    let cases = cases();
    assert!(cases.len() >= 25, "at least 25 cases, have {}", cases.len());
    for c in cases {
        let report = validate("case.plugin.yaml", &c.yaml);
        let errors: Vec<_> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        let warnings: Vec<_> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .collect();
        assert_eq!(
            errors.len(),
            c.errors.len(),
            "{}: errors {:#?}",
            c.name,
            report.lines()
        );
        for (path, msg) in &c.errors {
            assert!(
                errors
                    .iter()
                    .any(|d| d.path == *path && d.message.contains(msg)),
                "{}: expected error at {path:?} containing {msg:?}, got {:#?}",
                c.name,
                report.lines()
            );
        }
        for (path, msg) in &c.warnings {
            assert!(
                warnings
                    .iter()
                    .any(|d| d.path == *path && d.message.contains(msg)),
                "{}: expected warning at {path:?} containing {msg:?}, got {:#?}",
                c.name,
                report.lines()
            );
        }
        assert_eq!(
            report.manifest.is_some(),
            c.errors.is_empty(),
            "{}: a manifest exactly when valid",
            c.name
        );
        for line in report.lines() {
            assert!(line.starts_with("case.plugin.yaml:"), "file named: {line}");
        }
    }
}

#[test]
fn guide_example_is_fully_understood() {
    let report = validate("my-llm-plugin.plugin.yaml", GUIDE_LLM);
    assert!(report.diagnostics.is_empty(), "{:?}", report.lines());
    let m = report.manifest.expect("valid");
    assert_eq!(m.name, "my-llm-plugin");
    assert_eq!(m.version, semver::Version::new(1, 0, 0));
    assert_eq!(m.config_schema.required, ["api_key", "model"]);
    assert_eq!(m.config_schema.defaults["temperature"], "0.7");
    assert_eq!(m.config_schema.defaults["max_tokens"], "2000");
    assert_eq!(m.capabilities.get("streaming"), Some(&true));
    assert_eq!(m.capabilities.get("vision"), Some(&false));
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let report = validate("bad.plugin.yaml", "plugin:\n  name: x\n  version: [1.0\n");
    let d = &report.diagnostics[0];
    assert_eq!(d.severity, Severity::Error);
    let (line, col) = d.location.expect("location");
    assert!(line >= 3, "line {line}");
    assert!(col >= 1);
    let text = report.lines()[0].clone();
    assert!(
        text.starts_with(&format!(
            "bad.plugin.yaml:{line}:{col}: error: malformed YAML"
        )),
        "{text}"
    );
}
