//! `hector-operator`: the operator binary.
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hector_operator::run::{RunArgs, init_logging, run};

/// Runs Hector plugins remotely on Kubernetes: each HectorPlugin becomes Pods plus a Service,
/// is probed over gRPC, and its healthy endpoints are published to a ConfigMap per namespace.
///
/// With no subcommand, `run` is assumed (so `hector-operator --namespaces agents` works).
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (the default).
    Run(Box<RunArgs>),
    /// Print the HectorPlugin CustomResourceDefinition as YAML (`kubectl apply -f -` ready).
    Crd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Crd) => {
            return match hector_operator::crd::crd_yaml() {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot render the CRD: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Run(args)) => *args,
        None => cli.run,
    };
    hector_operator::memory::configure();
    if let Err(e) = init_logging(args.log_format, &args.log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.spawn(hector_operator::memory::trim_periodically());
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    }
}
