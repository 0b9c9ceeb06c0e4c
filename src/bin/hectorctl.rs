//! `hectorctl`: the command line for Hector plugins on Kubernetes.
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use hector_operator::cli::{self, cluster::ClusterArgs, error::Exit, output::Format};

/// The command line for Hector plugins on Kubernetes.
///
/// Checks and converts `.plugin.yaml` manifests into HectorPlugin resources, finds manifests the
/// way Hector does, lists the plugins the operator published, and calls any plugin over gRPC.
#[derive(Parser)]
#[command(
    name = "hectorctl",
    version,
    after_help = cli::error::EXIT_STATUS_HELP,
)]
struct Cli {
    /// Output: text for people, or json / yaml for programs.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value_t = Format::Text,
        global = true,
        help_heading = "Output"
    )]
    output: Format,
    #[command(flatten)]
    cluster: ClusterArgs,
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
    #[command(after_help = cli::error::EXIT_STATUS_HELP)]
    Call(cli::call::CallArgs),
    /// List the plugins the operator published in a namespace (its hector-plugins ConfigMap).
    Endpoints(cli::endpoints::EndpointsArgs),
    /// Print a shell completion script, e.g. `hectorctl completion bash > /etc/bash_completion.d/hectorctl`.
    Completion(cli::completion::CompletionArgs),
}

async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let Cli {
        output,
        cluster,
        command,
    } = cli;
    match command {
        Command::Manifest(cmd) => cli::manifest::run(cmd, &cluster, output),
        Command::Discover(args) => cli::discover::run(args, &cluster, output),
        Command::Call(args) => cli::call::run(args, &cluster, output).await,
        Command::Endpoints(args) => cli::endpoints::run(args, &cluster, output).await,
        Command::Completion(args) => {
            cluster.refuse_all("completion")?;
            if output != Format::Text {
                return Err(cli::error::CliError::usage(
                    "-o is for commands that print data; `completion` prints a shell script",
                )
                .into());
            }
            let script = cli::completion::script(args.shell, &mut Cli::command(), "hectorctl");
            cli::output::stdout().write_str(&script)?;
            Ok(Exit::Ok)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit 2, as clap does on its own.
    let cli = Cli::parse();
    match run(cli).await {
        Ok(exit) => exit.code(),
        // `hectorctl … | head`: the reader has what it wanted.
        Err(err) if cli::output::is_stdout_closed(&err) => ExitCode::SUCCESS,
        Err(err) => {
            cli::output::note(format_args!("error: {}", cli::error::error_text(&err)));
            cli::error::classify(&err).code()
        }
    }
}
