//! `hectorctl call …`.
use std::process::ExitCode;

/// Arguments of `hectorctl call`.
#[derive(clap::Args)]
pub struct CallArgs {}

/// Runs `hectorctl call`.
pub async fn run(_args: CallArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
