//! `hectorctl`: user CLI for Hector plugins on Kubernetes.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hector_operator::cli;

/// Validate, convert, discover and call Hector plugins; list and call the plugins the
/// operator published.
#[derive(Parser)]
#[command(
    version,
    about,
    propagate_version = true,
    after_help = "Exit status: 0 on success, and also when the reader of the output stops early \
                  (`hectorctl … | head`), which ends hectorctl quietly; 1 when a manifest is \
                  invalid or a call or health check fails; 2 on a usage or connection error."
)]
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
        // `hectorctl … | head`: the reader has what it wanted.
        Err(err) if cli::output::is_stdout_closed(&err) => ExitCode::SUCCESS,
        Err(err) => {
            cli::output::note(format_args!("error: {}", cli::output::error_text(&err)));
            ExitCode::from(2)
        }
    }
}
