//! `hectorctl discover …`.
use std::process::ExitCode;

/// Arguments of `hectorctl discover`.
#[derive(clap::Args)]
pub struct DiscoverArgs {}

/// Runs `hectorctl discover`.
pub fn run(_args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
