//! `hector-plugin-remote`: an executable that an unmodified Hector loads as a local plugin
//! (go-plugin over gRPC) and that forwards every call to a remote plugin, balancing calls over
//! its endpoints. `install` lays out copies of it for Hector's plugin discovery;
//! `install-binary` copies it into a volume for an agent's container.

mod child;
mod cli;
mod error;
mod install;
mod manifest;
mod router;
mod session;
mod target;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cli::Command::Install(args)) => install::main(&args),
        Some(cli::Command::InstallBinary(args)) => install::binary_main(&args),
        None => child::main(),
    }
}
