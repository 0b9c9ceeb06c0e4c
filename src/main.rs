//! `hector-operator`: the operator binary.
use clap::Parser;

/// Runs Hector plugins remotely on Kubernetes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
