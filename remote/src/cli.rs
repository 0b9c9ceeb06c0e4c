//! Command-line interface. Hector starts the executable without arguments, which runs it as a
//! plugin; `install` prepares a plugin directory, `install-binary` copies the executable
//! into a volume (what an agent Pod's init container does).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hector_plugin_sdk::endpoints::{DEFAULT_ENDPOINTS_PATH, ENDPOINTS_PATH_ENV};

/// Loaded by Hector as a local plugin; forwards every call to a remote plugin.
#[derive(Debug, Parser)]
#[command(name = "hector-plugin-remote", version)]
#[command(long_about = "\
Loaded by Hector as a local plugin; forwards every call to a remote plugin.

Without a subcommand it runs as a plugin, the way Hector starts it (go-plugin handshake, no
arguments). It finds the remote plugin through the `remote_address` key of the plugin's config
(HOST:PORT, or several separated by commas), or else by its own file name in the published
endpoints file (HECTOR_PLUGINS_ENDPOINTS, default /etc/hector/plugins/endpoints.json).
Calls are spread over the plugin's healthy endpoints one by one. Each carries the agent's
token from the `token_file` config key, HECTOR_PLUGIN_TOKEN_FILE, or
/var/run/secrets/hector.dev/token when it exists; a plugin published with certificates is
reached over TLS pinned to them.")]
#[command(after_help = "\
Hector reads PATH.plugin.yaml before it starts a plugin at PATH, so every plugin needs its own
copy with its manifest: `install --into /opt/hector/plugins` lays them out, and the published
plugins.yaml names them:
  plugins:
    llm_providers:
      echo:
        name: echo
        type: grpc
        path: /opt/hector/plugins/echo
        enabled: true")]
pub struct Cli {
    /// What to do; none runs the plugin (as Hector does).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write NAME and NAME.plugin.yaml for every published plugin into DIR, so Hector's
    /// plugin discovery finds them; re-run to bring DIR up to date.
    #[command(long_about = "\
Write NAME and NAME.plugin.yaml for every published plugin into DIR, so Hector's plugin
discovery (plugin_discovery.paths) finds them. NAME is a copy of this executable that finds
its remote plugin by its own name.

Re-running brings DIR up to date: entries written earlier whose plugin is no longer
published are removed. What was written is listed in DIR/.hector-plugin-remote; files this
command did not write are never changed or removed.

With --watch it keeps running (an agent Pod's sidecar): it reads the endpoints file every
--interval seconds and brings DIR up to date whenever its content changed, so plugins
published later get their copy and manifest, which the published plugins.yaml names. It
exits 0 on SIGTERM or SIGINT.")]
    Install(InstallArgs),
    /// Copy this executable to DIR/hector-plugin-remote (for an init container that hands it
    /// to the agent's container through a shared volume).
    #[command(long_about = "\
Copy this executable to DIR/hector-plugin-remote, executable by everyone. An agent Pod's init
container runs this from the operator's image to hand the executable to the agent's container
through a shared volume; the image needs no shell or cp.

Not to be confused with `install --into DIR`, which lays out a plugin discovery directory.")]
    InstallBinary(InstallBinaryArgs),
}

/// Arguments of `install-binary`.
#[derive(Debug, Args)]
pub struct InstallBinaryArgs {
    /// Directory to copy into (created when missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Arguments of `install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Directory to write into (created when missing).
    #[arg(long = "into", value_name = "DIR")]
    pub into: PathBuf,
    /// The published endpoints file.
    #[arg(long, value_name = "FILE", env = ENDPOINTS_PATH_ENV, default_value = DEFAULT_ENDPOINTS_PATH)]
    pub endpoints: PathBuf,
    /// Keep running and install again whenever the endpoints file changes.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch reads the endpoints file, in seconds (0.1 to 3600).
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_interval, requires = "watch")]
    pub interval: Duration,
}

/// The bounds of `--interval`: often enough to matter, rarely enough to cost nothing.
const INTERVAL_RANGE: std::ops::RangeInclusive<f64> = 0.1..=3600.0;

/// Parses `--interval` seconds.
fn parse_interval(raw: &str) -> Result<Duration, String> {
    raw.parse::<f64>()
        .ok()
        .filter(|s| INTERVAL_RANGE.contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{raw:?} is not a number of seconds from 0.1 to 3600"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_means_plugin_mode() {
        let cli = Cli::try_parse_from(["hector-plugin-remote"]).expect("no arguments");
        assert!(cli.command.is_none());
    }

    #[test]
    fn install_takes_a_directory_and_a_file() {
        let cli = Cli::try_parse_from([
            "hector-plugin-remote",
            "install",
            "--into",
            "/plugins",
            "--endpoints",
            "/e.json",
        ])
        .expect("install");
        let Some(Command::Install(args)) = cli.command else {
            panic!("install expected");
        };
        assert_eq!(args.into, PathBuf::from("/plugins"));
        assert_eq!(args.endpoints, PathBuf::from("/e.json"));
        assert!(!args.watch, "one run unless asked");
        assert!(Cli::try_parse_from(["hector-plugin-remote", "install"]).is_err());
    }

    #[test]
    fn install_watch_takes_an_interval_within_bounds() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["hector-plugin-remote", "install", "--into", "/p"];
            argv.extend(extra);
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Some(Command::Install(args)) => (args.watch, args.interval),
                _ => (false, Duration::ZERO),
            })
        };
        assert_eq!(
            parse(&["--watch"]).expect("watch"),
            (true, Duration::from_secs(2))
        );
        assert_eq!(
            parse(&["--watch", "--interval", "0.5"]).expect("interval"),
            (true, Duration::from_millis(500))
        );
        for bad in ["0", "0.05", "3601", "-1", "soon", "NaN", "inf"] {
            let flag = format!("--interval={bad}");
            let err = parse(&["--watch", &flag]).expect_err(bad);
            assert!(
                err.to_string()
                    .contains("not a number of seconds from 0.1 to 3600"),
                "{bad}: {err}"
            );
        }
        let err = parse(&["--interval", "5"]).expect_err("interval without watch");
        assert!(err.to_string().contains("--watch"), "{err}");
    }

    #[test]
    fn install_binary_takes_a_directory() {
        let cli = Cli::try_parse_from(["hector-plugin-remote", "install-binary", "/opt/hector"])
            .expect("install-binary");
        let Some(Command::InstallBinary(args)) = cli.command else {
            panic!("install-binary expected");
        };
        assert_eq!(args.dir, PathBuf::from("/opt/hector"));
        assert!(Cli::try_parse_from(["hector-plugin-remote", "install-binary"]).is_err());
    }
}
