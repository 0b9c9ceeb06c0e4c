//! One plugin process: starting it (go-plugin handshake, or a loopback port), waiting until it
//! serves, initializing it, and stopping it. The launcher does this once at start and again
//! for every configuration change.

use std::process::ExitStatus;
use std::time::Duration;

use hector_plugin_sdk::{LifecycleClient, client::error_chain};
use tokio::process::Child;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::args::{Args, Launch};
use crate::config_dir::{self, Config};
use crate::handshake::HandshakeError;
use crate::proxy::{ConnectError, Forward};
use crate::{child, goplugin};

/// Exit code when the plugin could not be started or reached.
pub const EXIT_UNAVAILABLE: i32 = 69;
/// Exit code when the plugin refused `Initialize`.
pub const EXIT_INIT_REFUSED: i32 = 3;

/// A plugin that serves and accepted its configuration.
pub struct Started {
    /// The process.
    pub child: Child,
    /// Where it listens (`HOST:PORT` or `unix:/path`).
    pub address: String,
    /// A channel to it, for the launcher's own RPCs.
    pub channel: Channel,
    /// Its lifecycle RPCs.
    pub lifecycle: LifecycleClient,
    /// The connection requests are forwarded on.
    pub forward: Forward,
}

/// Why a plugin did not get to serve. Messages name no configuration value.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No loopback port for a network plugin.
    #[error("cannot find a free loopback port: {0}")]
    Port(std::io::Error),
    /// The command could not be started.
    #[error("cannot start the plugin command: {0}")]
    Spawn(std::io::Error),
    /// A go-plugin child ended before announcing its address.
    #[error("the plugin exited before its handshake ({}); is it a Hector go-plugin binary?", describe(.0))]
    ExitedBeforeHandshake(Option<ExitStatus>),
    /// A go-plugin child announced something the launcher cannot use.
    #[error("the plugin printed an unusable handshake: {0}")]
    Handshake(HandshakeError),
    /// A go-plugin child announced nothing in time.
    #[error("the plugin printed no handshake within {0} s")]
    NoHandshake(f64),
    /// The child ended while the launcher waited for it to serve.
    #[error("the plugin exited while starting ({})", describe(.0))]
    Exited(Option<ExitStatus>),
    /// The plugin did not answer its Health RPC in time.
    #[error("the plugin did not start serving at {address} within {seconds} s: {last_error}")]
    NotServing {
        /// Where it was expected.
        address: String,
        /// How long the launcher waited.
        seconds: f64,
        /// The last reason a Health call failed.
        last_error: String,
    },
    /// The launcher could not open its forwarding connection.
    #[error("cannot open the forwarding connection: {0}")]
    Forward(ConnectError),
    /// `Initialize` failed or was refused; the plugin's words, with values redacted.
    #[error("plugin initialization failed: {0}")]
    Initialize(String),
    /// `Initialize` did not answer in time.
    #[error("plugin initialization did not answer within {0} s")]
    InitializeTimeout(f64),
}

impl StartError {
    /// The launcher's exit code when the first plugin fails this way.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::ExitedBeforeHandshake(status) | StartError::Exited(status) => {
                exit_code_of(*status)
            }
            StartError::Initialize(_) | StartError::InitializeTimeout(_) => EXIT_INIT_REFUSED,
            StartError::Port(_)
            | StartError::Spawn(_)
            | StartError::Handshake(_)
            | StartError::NoHandshake(_)
            | StartError::NotServing { .. }
            | StartError::Forward(_) => EXIT_UNAVAILABLE,
        }
    }
}

fn describe(status: &Option<ExitStatus>) -> String {
    status.map_or_else(|| "status unknown".into(), |s| s.to_string())
}

/// Starts the plugin, waits until it serves and initializes it with `config`; on failure the
/// process is stopped before this returns. `init_timeout` bounds `Initialize` (at the first
/// start the kubelet's startup probe bounds it instead: a plugin may load a model there).
pub async fn start(
    args: &Args,
    generation: u64,
    config: Config,
    init_timeout: Option<Duration>,
) -> Result<Started, StartError> {
    let prefix = args.output_prefix(generation);
    let mut env: Vec<(String, String)> = Vec::new();
    let mut network_addr = None;
    match args.launch {
        Launch::GoPlugin => env.extend(
            child::GO_PLUGIN_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        ),
        Launch::Network => {
            let addr = free_loopback_port().map_err(StartError::Port)?;
            env.push((hector_plugin_sdk::PLUGIN_ADDR_ENV.to_string(), addr.clone()));
            network_addr = Some(addr);
        }
    }
    let mut plugin = child::spawn(
        &args.command,
        &env,
        &prefix,
        args.launch == Launch::GoPlugin,
    )
    .map_err(StartError::Spawn)?;
    tracing::info!(command = ?args.command, pid = plugin.child.id(), launch = ?args.launch, generation, "plugin started");
    let deadline = Instant::now() + Args::duration(args.start_timeout);
    let serving = async {
        let address = match network_addr {
            Some(a) => a,
            None => {
                let outcome = tokio::select! {
                    hs = tokio::time::timeout_at(deadline, &mut plugin.handshake) => hs,
                    status = plugin.child.wait() => {
                        return Err(StartError::ExitedBeforeHandshake(status.ok()));
                    }
                };
                match outcome {
                    Ok(Ok(Ok(address))) => address.to_connect_string(),
                    Ok(Ok(Err(e))) => return Err(StartError::Handshake(e)),
                    Ok(Err(_)) | Err(_) => return Err(StartError::NoHandshake(args.start_timeout)),
                }
            }
        };
        let channel = wait_until_serving(&address, args, &mut plugin.child, deadline).await?;
        tracing::info!(%address, generation, "plugin is serving");
        if args.launch == Launch::GoPlugin {
            tokio::spawn(goplugin::relay_stdio(channel.clone(), prefix.clone()));
        }
        let lifecycle = LifecycleClient::new(channel.clone(), args.plugin_type);
        let initialized = match init_timeout {
            Some(limit) => tokio::time::timeout(limit, lifecycle.initialize(config.clone()))
                .await
                .map_err(|_| StartError::InitializeTimeout(limit.as_secs_f64()))?,
            None => lifecycle.initialize(config.clone()).await,
        };
        if let Err(e) = initialized {
            return Err(StartError::Initialize(config_dir::redact(
                &error_chain(&e),
                config.values(),
            )));
        }
        tracing::info!(generation, "plugin initialized");
        let forward = Forward::connect(&address, args.keepalive())
            .await
            .map_err(StartError::Forward)?;
        Ok((address, channel, lifecycle, forward))
    };
    match serving.await {
        Ok((address, channel, lifecycle, forward)) => Ok(Started {
            child: plugin.child,
            address,
            channel,
            lifecycle,
            forward,
        }),
        Err(e) => {
            let _ = child::stop(&mut plugin.child, Args::duration(args.shutdown_grace)).await;
            Err(e)
        }
    }
}

/// Connects and waits until the plugin answers its Health RPC, the child dies, or time runs out.
async fn wait_until_serving(
    address: &str,
    args: &Args,
    child: &mut Child,
    deadline: Instant,
) -> Result<Channel, StartError> {
    let mut last_error = String::from("no attempt yet");
    loop {
        if Instant::now() >= deadline {
            return Err(StartError::NotServing {
                address: address.to_string(),
                seconds: args.start_timeout,
                last_error,
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::Exited(Some(status)));
        }
        match hector_plugin_sdk::connect(address, Duration::from_secs(2)).await {
            Ok(channel) => {
                let probe = LifecycleClient::new(channel.clone(), args.plugin_type);
                match tokio::time::timeout(Duration::from_secs(2), probe.health()).await {
                    Ok(Ok(_)) => return Ok(channel),
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(_) => last_error = "Health timed out".into(),
                }
            }
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Shutdown RPC, then go-plugin's controller, then SIGTERM and, after the grace period,
/// SIGKILL; returns once the process has ended.
pub async fn stop_gracefully(
    lifecycle: &LifecycleClient,
    channel: &Channel,
    args: &Args,
    child: &mut Child,
) {
    match tokio::time::timeout(Duration::from_secs(5), lifecycle.shutdown()).await {
        Ok(Ok(())) => tracing::info!("plugin acknowledged Shutdown"),
        Ok(Err(e)) => tracing::warn!(error = %e, "plugin Shutdown failed"),
        Err(_) => tracing::warn!("plugin Shutdown timed out"),
    }
    if args.launch == Launch::GoPlugin {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            goplugin::controller_shutdown(channel.clone()),
        )
        .await;
    }
    // Give the plugin a moment to exit on its own before signalling it.
    let exited = tokio::time::timeout(Duration::from_secs(2), child.wait())
        .await
        .is_ok();
    if !exited && let Err(e) = child::stop(child, Args::duration(args.shutdown_grace)).await {
        tracing::warn!(error = %e, "stopping the plugin failed");
    }
}

/// Stops the child and returns `code`.
pub async fn stop_and(child: &mut Child, args: &Args, code: i32) -> i32 {
    let _ = child::stop(child, Args::duration(args.shutdown_grace)).await;
    code
}

/// The exit code to report for a child's end: its own code when non-zero, else 1 (a plugin
/// must not stop on its own, so even a clean exit is a failure of the Pod).
pub fn exit_code_of(status: Option<ExitStatus>) -> i32 {
    match status.and_then(|s| s.code()) {
        Some(code) if code != 0 => code,
        _ => 1,
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_loopback_port() -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}
