//! `hector-plugin-remote`: an executable that an unmodified Hector loads as a local plugin
//! (go-plugin over gRPC) and that forwards every call to a remote plugin, balancing calls over
//! its endpoints. `install` lays out copies of it for Hector's plugin discovery.

mod balance;
mod body;
mod child;
mod cli;
mod deadline;
mod error;
mod install;
mod manifest;
mod pool;
mod resolve;
mod router;
mod session;
mod target;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cli::Command::Install(args)) => install::main(&args),
        None => child::main(),
    }
}
