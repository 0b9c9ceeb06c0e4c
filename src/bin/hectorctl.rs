//! `hectorctl`: user CLI for Hector plugins on Kubernetes.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hector_operator::cli;

/// Validate, convert, discover and call Hector plugins; list and call the plugins the
/// operator published.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with `.plugin.yaml` manifests.
    #[command(subcommand)]
    Manifest(cli::manifest::ManifestCommand),
    /// Find `*.plugin.yaml` manifests the way Hector's plugin discovery does.
    Discover(cli::discover::DiscoverArgs),
    /// Call a plugin over gRPC: at an address, or a published plugin by name (balanced).
    Call(cli::call::CallArgs),
    /// List the plugins the operator published in a namespace (its hector-plugins ConfigMap).
    Endpoints(cli::endpoints::EndpointsArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Manifest(cmd) => cli::manifest::run(cmd),
        Command::Discover(args) => cli::discover::run(args),
        Command::Call(args) => cli::call::run(args).await,
        Command::Endpoints(args) => cli::endpoints::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
