//! The launcher's life: start the plugin, connect, initialize, serve, and stop.

use std::time::Duration;

use hector_plugin_sdk::{LifecycleClient, client::error_chain};
use tokio::process::Child;
use tonic::transport::Channel;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::args::{Args, Launch};
use crate::drain::Drain;
use crate::{child, config_dir, goplugin, proxy};

/// Exit code for bad configuration (sysexits' EX_CONFIG).
const EXIT_CONFIG: i32 = 78;
/// Exit code when the plugin could not be started or reached.
const EXIT_UNAVAILABLE: i32 = 69;
/// Exit code when the plugin refused `Initialize`.
const EXIT_INIT_REFUSED: i32 = 3;

/// Runs the launcher to completion and returns the process exit code.
pub async fn run(args: Args) -> i32 {
    let config = match config_dir::read(&args.config_dirs) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot read plugin configuration");
            return EXIT_CONFIG;
        }
    };
    let mut keys: Vec<&String> = config.keys().collect();
    keys.sort();
    // Key names only: values may be secrets.
    tracing::info!(?keys, "configuration loaded");

    let prefix = args.output_prefix();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut network_addr = None;
    match args.launch {
        Launch::GoPlugin => env.extend(
            child::GO_PLUGIN_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        ),
        Launch::Network => {
            let addr = match free_loopback_port() {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "cannot find a free loopback port");
                    return EXIT_UNAVAILABLE;
                }
            };
            env.push((hector_plugin_sdk::PLUGIN_ADDR_ENV.to_string(), addr.clone()));
            network_addr = Some(addr);
        }
    }

    let mut plugin = match child::spawn(
        &args.command,
        &env,
        &prefix,
        args.launch == Launch::GoPlugin,
    ) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(command = ?args.command, error = %e, "cannot start plugin");
            return EXIT_UNAVAILABLE;
        }
    };
    tracing::info!(command = ?args.command, pid = plugin.child.id(), launch = ?args.launch, "plugin started");

    let start_deadline = tokio::time::Instant::now() + Args::duration(args.start_timeout);
    let address = match network_addr {
        Some(a) => a,
        None => {
            let outcome = tokio::select! {
                hs = tokio::time::timeout_at(start_deadline, &mut plugin.handshake) => hs,
                status = plugin.child.wait() => {
                    tracing::error!(status = ?status, "plugin exited before its handshake (is it a Hector go-plugin binary?)");
                    return exit_code_of(status.ok());
                }
            };
            match outcome {
                Ok(Ok(Ok(address))) => address.to_connect_string(),
                Ok(Ok(Err(e))) => {
                    tracing::error!(error = %e, "plugin printed an unusable handshake");
                    return stop_and(&mut plugin.child, &args, EXIT_UNAVAILABLE).await;
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::error!(
                        timeout_seconds = args.start_timeout,
                        "plugin printed no handshake in time"
                    );
                    return stop_and(&mut plugin.child, &args, EXIT_UNAVAILABLE).await;
                }
            }
        }
    };

    let channel = match wait_until_serving(&address, &args, &mut plugin.child, start_deadline).await
    {
        Ok(c) => c,
        Err(code) => return stop_and(&mut plugin.child, &args, code).await,
    };
    tracing::info!(%address, "plugin is serving");
    if args.launch == Launch::GoPlugin {
        tokio::spawn(goplugin::relay_stdio(channel.clone(), prefix.clone()));
    }

    let lifecycle = LifecycleClient::new(channel.clone(), args.plugin_type);
    if let Err(e) = lifecycle.initialize(config).await {
        tracing::error!(error = %e, "plugin initialization failed");
        return stop_and(&mut plugin.child, &args, EXIT_INIT_REFUSED).await;
    }
    tracing::info!("plugin initialized");

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let service = args.plugin_type.service_name();
    let mirror = tokio::spawn(mirror_health(
        lifecycle.clone(),
        reporter.clone(),
        service,
        Args::duration(args.health_interval),
    ));

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %args.listen, error = %e, "cannot listen");
            return stop_and(&mut plugin.child, &args, EXIT_UNAVAILABLE).await;
        }
    };
    let forward = match proxy::Forward::connect(&address).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the forwarding connection");
            return stop_and(&mut plugin.child, &args, EXIT_UNAVAILABLE).await;
        }
    };
    let drain = Drain::default();
    let router = tonic::service::Routes::new(health_service)
        .into_axum_router()
        .fallback_service(forward);
    // Not tonic's server: it would enforce `grpc-timeout` itself and answer CANCELLED;
    // forwarded, the plugin enforces it and answers as it does.
    let mut server = tokio::spawn(crate::listener::serve(
        listener,
        router,
        address,
        args.forward,
        drain.clone(),
    ));
    let mut signals = Signals::new();
    tracing::info!(listen = %args.listen, service, "launcher serving");

    let mut server_done = false;
    let code = tokio::select! {
        _ = signals.next() => {
            mirror.abort();
            match drain_connections(&drain, &reporter, service, &args, &mut signals, &mut plugin.child).await {
                Some(code) => code,
                None => {
                    tracing::info!("shutting the plugin down");
                    graceful_shutdown(&lifecycle, &channel, &args, &mut plugin.child).await
                }
            }
        }
        status = plugin.child.wait() => {
            tracing::error!(status = ?status, "plugin exited; exiting so the container restarts");
            exit_code_of(status.ok())
        }
        result = &mut server => {
            server_done = true;
            tracing::error!(result = ?result.map_err(|e| error_chain(&e)), "gRPC server stopped");
            stop_and(&mut plugin.child, &args, 1).await
        }
    };
    mirror.abort();
    drain.close();
    if !server_done {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    code
}

/// SIGTERM and SIGINT, listened for from when the launcher serves, so that a second signal
/// during the drain is told apart from the first.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        // Where a handler cannot be installed, the default action (exit) still applies.
        Self {
            term: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
            if let Some(s) = signal
                && s.recv().await.is_some()
            {
                return;
            }
            std::future::pending().await
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.interrupt) => {}
        }
    }
}

/// Takes the Pod out of service and lets its clients leave before the plugin stops: health
/// NOT_SERVING, new connections still served for the drain delay (endpoints take a moment to
/// forget the Pod), then GOAWAY on every connection and a wait, bounded by the drain
/// timeout, until all have closed. A second signal cuts the waits short. Returns an exit
/// code if the plugin exited meanwhile.
async fn drain_connections(
    drain: &Drain,
    reporter: &HealthReporter,
    service: &str,
    args: &Args,
    signals: &mut Signals,
    child: &mut Child,
) -> Option<i32> {
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(service, ServingStatus::NotServing)
        .await;
    tracing::info!(
        open_connections = drain.open_connections(),
        "termination signal: health is NOT_SERVING; still accepting connections for the drain delay"
    );
    tokio::select! {
        _ = tokio::time::sleep(Args::duration(args.drain_delay)) => {}
        _ = signals.next() => {
            // Clients may still leave cleanly while the plugin shuts down.
            drain.close();
            tracing::info!(
                open_connections = drain.open_connections(),
                "second termination signal: skipping the rest of the drain"
            );
            return None;
        }
        status = child.wait() => return Some(exited_while_draining(status.ok())),
    }
    drain.close();
    tracing::info!(
        open_connections = drain.open_connections(),
        "no longer accepting connections; asked every open one to go away (HTTP/2 GOAWAY)"
    );
    tokio::select! {
        _ = drain.all_closed() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(Args::duration(args.drain_timeout)) => tracing::warn!(
            open_connections = drain.open_connections(),
            "drain timeout: stopping with connections still open"
        ),
        _ = signals.next() => tracing::info!(
            open_connections = drain.open_connections(),
            "second termination signal: stopping with connections still open"
        ),
        status = child.wait() => return Some(exited_while_draining(status.ok())),
    }
    None
}

/// The exit code when the plugin ends during the drain: it was going to be stopped anyway
/// (a Ctrl-C in a terminal reaches it too), so a clean exit is a clean stop.
fn exited_while_draining(status: Option<std::process::ExitStatus>) -> i32 {
    tracing::info!(status = ?status, "plugin exited during the drain");
    match status.and_then(|s| s.code()) {
        Some(0) => 0,
        _ => exit_code_of(status),
    }
}

/// Shutdown RPC, then go-plugin's controller, then SIGTERM and, after the grace period, SIGKILL.
async fn graceful_shutdown(
    lifecycle: &LifecycleClient,
    channel: &Channel,
    args: &Args,
    child: &mut Child,
) -> i32 {
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
    0
}

/// Stops the child and returns `code`.
async fn stop_and(child: &mut Child, args: &Args, code: i32) -> i32 {
    let _ = child::stop(child, Args::duration(args.shutdown_grace)).await;
    code
}

/// Connects and waits until the plugin answers its Health RPC, the child dies, or time runs out.
async fn wait_until_serving(
    address: &str,
    args: &Args,
    child: &mut Child,
    deadline: tokio::time::Instant,
) -> Result<Channel, i32> {
    let mut last_error = String::from("no attempt yet");
    loop {
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(%address, last_error, "plugin did not start serving in time");
            return Err(EXIT_UNAVAILABLE);
        }
        if let Ok(Some(status)) = child.try_wait() {
            tracing::error!(?status, "plugin exited while starting");
            return Err(exit_code_of(Some(status)));
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

/// Mirrors the plugin's own Health RPC into `grpc.health.v1` for `""` and the service name.
async fn mirror_health(
    lifecycle: LifecycleClient,
    reporter: HealthReporter,
    service: &'static str,
    interval: Duration,
) {
    let mut last: Option<(bool, String)> = None;
    loop {
        let (healthy, message) =
            match tokio::time::timeout(interval.max(Duration::from_secs(1)), lifecycle.health())
                .await
            {
                Ok(Ok(h)) => (h.healthy, h.message),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (false, "Health timed out".into()),
            };
        if last.as_ref() != Some(&(healthy, message.clone())) {
            if healthy {
                tracing::info!(message, "plugin healthy");
            } else {
                tracing::warn!(message, "plugin unhealthy");
            }
            let status = if healthy {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(service, status).await;
            last = Some((healthy, message));
        }
        tokio::time::sleep(interval).await;
    }
}

/// The exit code to report for a child's end: its own code when non-zero, else 1 (a plugin
/// must not stop on its own, so even a clean exit is a failure of the Pod).
fn exit_code_of(status: Option<std::process::ExitStatus>) -> i32 {
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
