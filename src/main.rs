//! `hector-operator`: the operator binary.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Runs Hector plugins remotely on Kubernetes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the HectorPlugin CustomResourceDefinition as YAML (`kubectl apply -f -` ready).
    Crd,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => match hector_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
