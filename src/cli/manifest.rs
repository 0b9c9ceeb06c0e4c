//! `hectorctl manifest …`.
use std::process::ExitCode;

/// `hectorctl manifest` subcommands.
#[derive(clap::Subcommand)]
pub enum ManifestCommand {
    /// Validate manifests.
    Validate,
}

/// Runs a `manifest` subcommand.
pub fn run(_cmd: ManifestCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
