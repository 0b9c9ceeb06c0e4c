//! `hectorctl manifest validate|convert`, and what they share with `discover`: how a plugin
//! runs, and reports as documents.

use std::path::PathBuf;

use serde::Serialize;

use crate::convert::{self, ConvertOptions};
use crate::crd::{HectorPlugin, LaunchMode};
use crate::manifest::{self, Severity};

use super::cluster::ClusterArgs;
use super::error::{CliError, Exit};
use super::output::{self, Format};

/// `hectorctl manifest` subcommands.
#[derive(clap::Subcommand)]
pub enum ManifestCommand {
    /// Check manifests; prints every error and warning with file and field path, exits 1 on any error.
    Validate {
        /// Manifest files (`*.plugin.yaml`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a HectorPlugin resource for a manifest (YAML, or JSON with -o json).
    Convert(ConvertArgs),
}

/// How the plugin runs, for `manifest convert` and `discover --emit`.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// The plugin executable inside the image (repeat for leading arguments); default /plugin/NAME.
    #[arg(long = "command")]
    pub command: Vec<String>,
    /// How the executable is started.
    #[arg(long, value_enum, default_value_t = Launch::GoPlugin)]
    pub launch: Launch,
    /// Plain configuration value, KEY=VALUE (repeatable).
    #[arg(long = "config", value_parser = convert::parse_key_value)]
    pub config: Vec<(String, String)>,
    /// Configuration from a Secret, KEY=SECRET/SECRETKEY (repeatable).
    #[arg(long = "secret", value_parser = convert::parse_secret)]
    pub secrets: Vec<crate::crd::SecretConfig>,
    /// Number of plugin Pods, 0 to 100 [default: 1].
    #[arg(long, value_name = "N", value_parser = parse_replicas, allow_negative_numbers = true)]
    pub replicas: Option<i32>,
    /// Port the plugin serves on in its Pods and Service, 1 to 65535 [default: 50051].
    #[arg(long, value_name = "PORT", value_parser = parse_port, allow_negative_numbers = true)]
    pub port: Option<i32>,
}

/// Launch mode flag values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Launch {
    /// Built with Hector's Go SDK (go-plugin handshake).
    GoPlugin,
    /// Listens on HECTOR_PLUGIN_ADDR.
    Network,
}

/// The most Pods the CRD allows a plugin.
const MAX_REPLICAS: i64 = 100;

fn parse_whole(s: &str, what: &str) -> Result<i64, String> {
    s.trim()
        .parse::<i64>()
        .map_err(|_| format!("{s:?} is not a whole number; {what}"))
}

/// Parses `--replicas`: 0 to 100, as the CRD allows.
pub fn parse_replicas(s: &str) -> Result<i32, String> {
    let what = format!("the number of Pods is 0 to {MAX_REPLICAS}");
    match parse_whole(s, &what)? {
        n @ 0..=MAX_REPLICAS => i32::try_from(n).map_err(|e| e.to_string()),
        n => Err(format!("{n} is out of range: {what}")),
    }
}

/// Parses `--port`: 1 to 65535.
pub fn parse_port(s: &str) -> Result<i32, String> {
    let what = "a port is 1 to 65535";
    match parse_whole(s, what)? {
        n @ 1..=65535 => i32::try_from(n).map_err(|e| e.to_string()),
        n => Err(format!("{n} is out of range: {what}")),
    }
}

/// Parses `--name`: a DNS-1035 label, because the plugin's Service takes the name.
pub fn parse_name(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-');
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} cannot name a HectorPlugin: it names the plugin's Service too, so it must be \
             at most 63 lowercase letters, digits and '-', starting with a letter and ending \
             with a letter or digit"
        ))
    }
}

impl RunArgs {
    /// Conversion options with the given image or endpoint.
    pub fn options(
        &self,
        image: Option<String>,
        endpoint: Option<String>,
        namespace: Option<String>,
    ) -> ConvertOptions {
        ConvertOptions {
            image,
            endpoint,
            command: self.command.clone(),
            launch: match self.launch {
                Launch::GoPlugin => LaunchMode::GoPlugin,
                Launch::Network => LaunchMode::Network,
            },
            config: self.config.iter().cloned().collect(),
            secrets: self.secrets.clone(),
            namespace,
        }
    }

    /// The resource with the Pods' count and port asked for.
    pub fn apply(&self, mut resource: HectorPlugin) -> HectorPlugin {
        if let Some(n) = self.replicas {
            resource.spec.replicas = n;
        }
        if let Some(port) = self.port {
            resource.spec.port = port;
        }
        resource
    }
}

/// Arguments of `manifest convert`.
#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The manifest file.
    pub file: PathBuf,
    /// Container image holding the plugin executable.
    #[arg(
        long,
        required_unless_present = "endpoint",
        conflicts_with = "endpoint"
    )]
    pub image: Option<String>,
    /// HOST:PORT of a plugin already running elsewhere (instead of --image).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Name of the resource (default: the manifest's name as a DNS label).
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// A validation report as documents carry it.
#[derive(Serialize)]
pub struct ReportOut {
    /// The file.
    pub file: String,
    /// Whether it has no errors.
    pub valid: bool,
    /// The plugin's name, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its version, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its type, when valid.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
    /// Every error and warning.
    pub diagnostics: Vec<DiagnosticOut>,
}

/// One finding of a report.
#[derive(Serialize)]
pub struct DiagnosticOut {
    /// `error` or `warning`.
    pub severity: &'static str,
    /// The field path, empty for the whole document.
    pub path: String,
    /// Line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Column, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl From<&manifest::Report> for ReportOut {
    fn from(r: &manifest::Report) -> Self {
        Self {
            file: r.file.clone(),
            valid: !r.has_errors(),
            name: r.manifest.as_ref().map(|m| m.name.clone()),
            version: r.manifest.as_ref().map(|m| m.version.to_string()),
            plugin_type: r.manifest.as_ref().map(|m| m.plugin_type.to_string()),
            diagnostics: r
                .diagnostics
                .iter()
                .map(|d| DiagnosticOut {
                    severity: match d.severity {
                        Severity::Error => "error",
                        Severity::Warning => "warning",
                    },
                    path: d.path.clone(),
                    line: d.location.map(|(l, _)| l),
                    column: d.location.map(|(_, c)| c),
                    message: d.message.clone(),
                })
                .collect(),
        }
    }
}

/// Prints a report's findings to stderr (as text; documents carry them); returns whether it
/// had errors.
pub fn print_report(report: &manifest::Report, format: Format) -> bool {
    if format == Format::Text {
        for line in report.lines() {
            output::note(line);
        }
    }
    report.has_errors()
}

/// Resources as documents: YAML documents separated by `---` (text and YAML), or one JSON
/// document — a single resource, or a `v1` `List` of several as `kubectl apply -f -` takes it.
pub fn resources(format: Format, items: &[HectorPlugin], list: bool) -> anyhow::Result<String> {
    match format {
        Format::Json if !list && items.len() == 1 => output::document(format, &items[0], false),
        Format::Json => output::document(
            format,
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
            false,
        ),
        Format::Text | Format::Yaml => {
            let docs = items
                .iter()
                .map(serde_norway::to_string)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(docs.join("---\n"))
        }
    }
}

/// Runs a `manifest` subcommand.
pub fn run(cmd: ManifestCommand, cluster: &ClusterArgs, format: Format) -> anyhow::Result<Exit> {
    match cmd {
        ManifestCommand::Validate { files } => {
            cluster.refuse_all("manifest validate")?;
            let mut failed = 0;
            let mut out = output::stdout();
            let mut reports = Vec::new();
            for file in &files {
                let report = manifest::load(file);
                if print_report(&report, format) {
                    failed += 1;
                } else if let (Format::Text, Some(m)) = (format, &report.manifest) {
                    writeln!(
                        out,
                        "{}: ok ({} {} {})",
                        report.file, m.name, m.version, m.plugin_type
                    )?;
                }
                reports.push(ReportOut::from(&report));
            }
            if format != Format::Text {
                out.write_str(&output::document(format, &reports, false)?)?;
            }
            if failed > 0 {
                if format == Format::Text {
                    output::note(format_args!(
                        "{failed} of {} manifest(s) invalid",
                        files.len()
                    ));
                }
                Ok(Exit::Failed)
            } else {
                Ok(Exit::Ok)
            }
        }
        ManifestCommand::Convert(args) => {
            cluster.refuse_all_but_namespace("manifest convert")?;
            if args.endpoint.is_some() && (args.run.replicas.is_some() || args.run.port.is_some()) {
                return Err(CliError::usage(
                    "--replicas and --port are for plugins run from --image; for an --endpoint \
                     the operator runs no Pods",
                )
                .into());
            }
            let report = manifest::load(&args.file);
            if print_report(&report, format) {
                if format != Format::Text {
                    output::stdout().write_str(&output::document(
                        format,
                        &ReportOut::from(&report),
                        false,
                    )?)?;
                }
                return Ok(Exit::Failed);
            }
            let Some(m) = report.manifest else {
                anyhow::bail!("{}: no errors, yet no manifest was read", report.file);
            };
            let options = args
                .run
                .options(args.image, args.endpoint, cluster.namespace.clone());
            let mut resource = args.run.apply(convert::to_resource(&m, &options));
            if let Some(name) = args.name {
                resource.metadata.name = Some(name);
            }
            output::stdout().write_str(&resources(format, &[resource], false)?)?;
            Ok(Exit::Ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_and_ports_outside_what_the_crd_allows_are_refused_with_the_range() {
        assert_eq!(parse_replicas("0"), Ok(0));
        assert_eq!(parse_replicas("100"), Ok(100));
        assert_eq!(
            parse_replicas("-1"),
            Err("-1 is out of range: the number of Pods is 0 to 100".into())
        );
        assert!(parse_replicas("101").is_err());
        assert!(parse_replicas("two").is_err_and(|e| e.contains("not a whole number")));
        assert_eq!(parse_port("50051"), Ok(50051));
        assert_eq!(
            parse_port("70000"),
            Err("70000 is out of range: a port is 1 to 65535".into())
        );
        assert!(parse_port("0").is_err());
        assert!(parse_port("99999999999999999999").is_err());
    }

    #[test]
    fn a_name_must_fit_a_service() {
        assert_eq!(parse_name("my-llm2"), Ok("my-llm2".into()));
        for bad in ["", "My-LLM", "2llm", "llm-", "a_b", &"a".repeat(64)] {
            assert!(
                parse_name(bad).is_err_and(|e| e.contains("starting with a letter")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn run_flags_set_pods_and_port() -> Result<(), String> {
        let report = manifest::validate(
            "x.plugin.yaml",
            "plugin:\n  name: llm\n  version: \"1.0.0\"\n  type: llm_provider\n  protocol: grpc\n  hector_version: \">=0.1.0\"\n",
        );
        let m = report.manifest.ok_or("valid")?;
        let run = RunArgs {
            command: vec![],
            launch: Launch::Network,
            config: vec![],
            secrets: vec![],
            replicas: Some(3),
            port: Some(9000),
        };
        let r = run.apply(convert::to_resource(
            &m,
            &run.options(Some("img".into()), None, None),
        ));
        assert_eq!((r.spec.replicas, r.spec.port), (3, 9000));
        assert_eq!(r.spec.launch, LaunchMode::Network);
        let json = resources(Format::Json, &[r.clone(), r], true).map_err(|e| e.to_string())?;
        let list: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"][1]["spec"]["replicas"], 3);
        Ok(())
    }
}
