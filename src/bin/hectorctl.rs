//! `hectorctl`: user CLI for Hector plugins on Kubernetes.
use clap::Parser;

/// Validate, convert, discover and call Hector plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
