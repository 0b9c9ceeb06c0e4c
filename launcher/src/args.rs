//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hector_plugin_sdk::PluginType;

/// How the plugin executable expects to be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Launch {
    /// A plugin built with Hector's Go SDK (HashiCorp go-plugin handshake, Unix socket or TCP).
    GoPlugin,
    /// A network-native plugin that listens on `HECTOR_PLUGIN_ADDR`.
    Network,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Runs a Hector plugin and serves it on the network with standard gRPC health.
///
/// Also: `hector-plugin-launcher install DIR` copies this binary into DIR (for init containers).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
#[command(
    after_help = "Example:\n  hector-plugin-launcher --type llm_provider --config-dir /etc/hector/config -- /plugin/my-llm"
)]
pub struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "0.0.0.0:50051", env = "HECTOR_LAUNCHER_LISTEN")]
    pub listen: SocketAddr,

    /// Plugin type: llm_provider, database_provider, embedder_provider, tool_provider, reasoning_strategy.
    #[arg(long = "type", value_parser = parse_type)]
    pub plugin_type: PluginType,

    /// How to start the plugin.
    #[arg(long, value_enum, default_value_t = Launch::GoPlugin)]
    pub launch: Launch,

    /// Directory whose files are config keys (file name) and values (content); repeatable,
    /// later directories win.
    #[arg(long = "config-dir")]
    pub config_dirs: Vec<PathBuf>,

    /// How often the plugin's Health RPC is mirrored into grpc.health.v1 (seconds).
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub health_interval: f64,

    /// How long to wait for the plugin to start serving (seconds).
    #[arg(long, default_value_t = 60.0, value_parser = parse_seconds)]
    pub start_timeout: f64,

    /// How long the plugin gets to exit after Shutdown before it is killed (seconds).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub shutdown_grace: f64,

    /// On SIGTERM: how long to keep accepting connections after health turns NOT_SERVING,
    /// while endpoints forget this Pod (seconds, may be 0).
    #[arg(long, default_value_t = 5.0, value_parser = parse_non_negative_seconds, env = "HECTOR_LAUNCHER_DRAIN_DELAY")]
    pub drain_delay: f64,

    /// On SIGTERM: how long open connections get to finish after being asked to go away,
    /// before the plugin is shut down anyway (seconds, may be 0).
    #[arg(long, default_value_t = 20.0, value_parser = parse_non_negative_seconds, env = "HECTOR_LAUNCHER_DRAIN_TIMEOUT")]
    pub drain_timeout: f64,

    /// How often the config directories are compared with the configuration the plugin runs
    /// with; on a difference a new plugin is started with the new values and replaces the
    /// running one (seconds; 0 turns watching off).
    #[arg(long, default_value_t = 2.0, value_parser = parse_non_negative_seconds, env = "HECTOR_LAUNCHER_CONFIG_POLL_INTERVAL")]
    pub config_poll_interval: f64,

    /// How calls reach the plugin: `connection` routes each connection by its first
    /// request and splices plugin connections byte for byte (fastest); `request` re-frames
    /// every request.
    #[arg(long, value_enum, default_value_t = crate::listener::ForwardMode::Connection)]
    pub forward: crate::listener::ForwardMode,

    /// The most client connections spliced to the plugin at once (each costs two threads).
    /// A connection over it is refused with an HTTP/2 GOAWAY (last stream 0, REFUSED_STREAM)
    /// and closed; health probes and other connections the launcher serves itself are not
    /// counted.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536), env = "HECTOR_LAUNCHER_MAX_CONNECTIONS")]
    pub max_connections: u32,

    /// Seconds without a byte either way after which a spliced connection gets an HTTP/2
    /// GOAWAY; it is closed if it stays unused as long again (at most 5 s more). 0 turns it
    /// off.
    #[arg(long, default_value_t = 300.0, value_parser = parse_non_negative_seconds, env = "HECTOR_LAUNCHER_IDLE_TIMEOUT")]
    pub idle_timeout: f64,

    /// TCP keepalive on client and plugin connections: seconds without traffic before the
    /// first probe, then a probe every 10 s (every SECONDS, if shorter); 6 unanswered probes
    /// close the connection. 0 turns keepalive off.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=32_767), env = "HECTOR_LAUNCHER_TCP_KEEPALIVE")]
    pub tcp_keepalive: u32,

    /// Serve TLS with a key made in memory at start; plaintext connections get only
    /// `grpc.health.v1` (the kubelet's probe). The certificate names the Pod whose UID is in
    /// `HECTOR_POD_UID`; its fingerprint is logged and pinned by agents.
    #[arg(long)]
    pub tls: bool,

    /// Require the caller's ServiceAccount token (audience `hector.dev/plugins`) on every call
    /// but `grpc.health.v1`, and admit only the callers of `--allow-namespace` and
    /// `--allow-service-account`.
    #[arg(long, conflicts_with = "open")]
    pub auth: bool,

    /// Admit any caller without a token (development only).
    #[arg(long)]
    pub open: bool,

    /// With `--auth`: a namespace whose ServiceAccounts may call (repeatable).
    #[arg(long = "allow-namespace", requires = "auth")]
    pub allow_namespaces: Vec<String>,

    /// With `--auth`: a ServiceAccount that may call, `NAMESPACE/NAME` or `NAMESPACE/*`
    /// (repeatable).
    #[arg(long = "allow-service-account", requires = "auth")]
    pub allow_service_accounts: Vec<String>,

    /// With `--auth`: the API server that publishes the service-account issuer's keys
    /// (default: the one the kubelet names in `KUBERNETES_SERVICE_HOST`).
    #[arg(long)]
    pub apiserver: Option<http::Uri>,

    /// With `--auth`: directory holding `token` and `ca.crt` for the API server.
    #[arg(long, default_value = "/var/run/secrets/hector.dev/apiserver")]
    pub apiserver_credentials: PathBuf,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "HECTOR_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// The plugin executable and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

fn parse_type(s: &str) -> Result<PluginType, String> {
    s.parse()
        .map_err(|e: hector_plugin_sdk::plugin_type::UnknownPluginType| e.to_string())
}

/// Longer than any sensible wait, and short enough that deadlines computed from it never
/// overflow.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= MAX_SECONDS => Ok(v),
        _ => Err(format!(
            "{s:?} is not a positive number of seconds (at most {MAX_SECONDS})"
        )),
    }
}

fn parse_non_negative_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=MAX_SECONDS).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds from 0 to {MAX_SECONDS}"
        )),
    }
}

impl Args {
    /// Seconds as a duration.
    pub fn duration(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    /// The idle timeout of spliced connections, if on.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout > 0.0).then(|| Self::duration(self.idle_timeout))
    }

    /// TCP keepalive timings, if on.
    pub fn keepalive(&self) -> Option<crate::keepalive::Keepalive> {
        crate::keepalive::Keepalive::after_seconds(self.tcp_keepalive)
    }

    /// Prefix for the plugin's relayed output: `[name]`, from the executable's file name, and
    /// `[name#N]` for the Nth plugin started after configuration changes, so that the old and
    /// the new plugin can be told apart while both run.
    pub fn output_prefix(&self, generation: u64) -> String {
        let name = self
            .command
            .first()
            .and_then(|c| std::path::Path::new(c).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        if generation > 1 {
            format!("[{name}#{generation}]")
        } else {
            format!("[{name}]")
        }
    }

    /// Starts logging to stderr in the chosen format; `RUST_LOG` filters.
    pub fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.init(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_command_line() {
        let a = Args::try_parse_from([
            "l",
            "--listen",
            "127.0.0.1:9000",
            "--type",
            "embedder_provider",
            "--launch",
            "network",
            "--config-dir",
            "/a",
            "--config-dir",
            "/b",
            "--",
            "/bin/p",
            "--flag",
        ])
        .expect("valid command line");
        assert_eq!(a.listen.port(), 9000);
        assert_eq!(a.plugin_type, PluginType::EmbedderProvider);
        assert_eq!(a.launch, Launch::Network);
        assert_eq!(a.config_dirs.len(), 2);
        assert_eq!(a.command, vec!["/bin/p", "--flag"]);
        assert_eq!(a.output_prefix(1), "[p]");
        assert_eq!(a.output_prefix(3), "[p#3]");
        assert_eq!((a.drain_delay, a.drain_timeout), (5.0, 20.0));
        assert_eq!(a.config_poll_interval, 2.0);
        assert_eq!(a.max_connections, 1024);
        assert_eq!(a.idle_timeout(), Some(Duration::from_secs(300)));
        assert_eq!(a.keepalive().map(|k| k.idle), Some(Duration::from_secs(60)));
    }

    #[test]
    fn connection_limits_and_timeouts() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["l", "--type", "llm_provider"];
            argv.extend_from_slice(flags);
            argv.extend(["--", "/p"]);
            Args::try_parse_from(argv)
        };
        let a = parse(&[
            "--max-connections",
            "2",
            "--idle-timeout",
            "1.5",
            "--tcp-keepalive",
            "30",
        ])
        .expect("valid");
        assert_eq!(a.max_connections, 2);
        assert_eq!(a.idle_timeout(), Some(Duration::from_millis(1500)));
        assert_eq!(a.keepalive().map(|k| k.idle), Some(Duration::from_secs(30)));
        let off = parse(&["--idle-timeout", "0", "--tcp-keepalive", "0"]).expect("off");
        assert_eq!((off.idle_timeout(), off.keepalive()), (None, None));
        for (flag, bad) in [
            ("--max-connections", "0"),
            ("--max-connections", "-1"),
            ("--max-connections", "65537"),
            ("--max-connections", "many"),
            ("--max-connections", "1.5"),
            ("--idle-timeout", "-1"),
            ("--idle-timeout", "nan"),
            ("--idle-timeout", "300s"),
            ("--idle-timeout", "1e300"),
            ("--tcp-keepalive", "-1"),
            ("--tcp-keepalive", "32768"),
            ("--tcp-keepalive", "2.5"),
        ] {
            let arg = format!("{flag}={bad}");
            let err = parse(&[&arg]).expect_err(&arg).to_string();
            assert!(
                err.contains(flag) && err.contains(bad),
                "{flag} {bad}: {err}"
            );
        }
    }

    #[test]
    fn waits_may_be_zero_but_not_negative() {
        let parse = |flag: &str, value: &str| {
            Args::try_parse_from(["l", "--type", "llm_provider", flag, value, "--", "/p"])
        };
        let a = parse("--drain-delay", "0").expect("zero delay");
        assert_eq!(a.drain_delay, 0.0);
        assert_eq!(
            parse("--drain-timeout", "1.5")
                .expect("timeout")
                .drain_timeout,
            1.5
        );
        for bad in ["-1", "nan", "inf", "1e300", "soon"] {
            assert!(parse("--drain-delay", bad).is_err(), "{bad}");
            assert!(parse("--drain-timeout", bad).is_err(), "{bad}");
        }
        assert!(parse("--shutdown-grace", "1e300").is_err());
        let off = parse("--config-poll-interval", "0").expect("watching off");
        assert_eq!(off.config_poll_interval, 0.0);
        assert!(parse("--config-poll-interval", "-2").is_err());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Args::try_parse_from(["l", "--type", "llm", "--", "/p"]).is_err());
        assert!(Args::try_parse_from(["l", "--type", "llm_provider"]).is_err());
        assert!(
            Args::try_parse_from([
                "l",
                "--type",
                "llm_provider",
                "--health-interval",
                "0",
                "--",
                "/p"
            ])
            .is_err()
        );
    }
}
