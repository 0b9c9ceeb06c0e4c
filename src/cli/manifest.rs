//! `hectorctl manifest validate|convert`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::convert::{self, ConvertOptions};
use crate::crd::LaunchMode;
use crate::manifest;

use super::output;

/// `hectorctl manifest` subcommands.
#[derive(clap::Subcommand)]
pub enum ManifestCommand {
    /// Check manifests; prints every error and warning with file and field path, exits 1 on any error.
    Validate {
        /// Manifest files (`*.plugin.yaml`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a HectorPlugin resource for a manifest.
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
    /// Namespace of the resource.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// Launch mode flag values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Launch {
    /// Built with Hector's Go SDK (go-plugin handshake).
    GoPlugin,
    /// Listens on HECTOR_PLUGIN_ADDR.
    Network,
}

impl RunArgs {
    /// Conversion options with the given image or endpoint.
    pub fn options(&self, image: Option<String>, endpoint: Option<String>) -> ConvertOptions {
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
            namespace: self.namespace.clone(),
        }
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
    #[command(flatten)]
    pub run: RunArgs,
}

/// Prints a report's findings to stderr; returns whether it had errors.
pub fn print_report(report: &manifest::Report) -> bool {
    for line in report.lines() {
        output::note(line);
    }
    report.has_errors()
}

/// Runs a `manifest` subcommand.
pub fn run(cmd: ManifestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ManifestCommand::Validate { files } => {
            let mut failed = 0;
            let mut out = output::stdout();
            for file in &files {
                let report = manifest::load(file);
                if print_report(&report) {
                    failed += 1;
                } else if let Some(m) = &report.manifest {
                    writeln!(
                        out,
                        "{}: ok ({} {} {})",
                        report.file, m.name, m.version, m.plugin_type
                    )?;
                }
            }
            if failed > 0 {
                output::note(format_args!(
                    "{failed} of {} manifest(s) invalid",
                    files.len()
                ));
                Ok(ExitCode::from(1))
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        ManifestCommand::Convert(args) => {
            let report = manifest::load(&args.file);
            if print_report(&report) {
                return Ok(ExitCode::from(1));
            }
            let m = report
                .manifest
                .context("manifest has no errors but was not parsed")?;
            let resource = convert::to_resource(&m, &args.run.options(args.image, args.endpoint));
            output::stdout().write_str(&serde_norway::to_string(&resource)?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
