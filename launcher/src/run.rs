//! The launcher's life: start the plugin, connect, initialize, serve, replace the plugin
//! when its configuration changes, and stop.
//!
//! A configuration change is applied blue/green: a second plugin process is started and
//! initialized with the new values while the first one keeps serving; only once the new one
//! has accepted them do new connections and requests go to it, and the old one is stopped
//! after its clients have moved over (HTTP/2 GOAWAY) and its calls in flight have finished,
//! bounded by the drain timeout. Holding calls while a single plugin restarts would be
//! simpler, but every caller would wait for the plugin's start and `Initialize` (seconds, for
//! a plugin that loads a model or opens a pool), and a configuration the plugin refuses would
//! leave nothing serving; blue/green costs a second process for the length of the swap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hector_plugin_sdk::{LifecycleClient, client::error_chain};
use tokio::process::Child;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument;

use crate::args::Args;
use crate::backend::{Backend, Backends};
use crate::config_dir::{self, Config};
use crate::drain::Drain;
use crate::limit::{ConnectionLimit, FILES_PER_CONNECTION};
use crate::plugin::{self, EXIT_UNAVAILABLE, StartError, Started};
use crate::reload::{Event, KeyChanges, Watcher};

/// Exit code for bad configuration (sysexits' EX_CONFIG).
const EXIT_CONFIG: i32 = 78;

/// The `grpc.health.v1` service name that reports whether the plugin runs with the
/// configuration in the files: NOT_SERVING after a change could not be applied (the plugin
/// keeps its previous configuration), SERVING otherwise. Probes check `""`, so this never
/// takes the Pod out of service.
pub const CONFIG_HEALTH_SERVICE: &str = "hector.launcher.Config";

/// A plugin process and the launcher's handles on it.
struct Generation {
    child: Child,
    channel: Channel,
    lifecycle: LifecycleClient,
    backend: Arc<Backend>,
}

impl Generation {
    fn new(started: Started, generation: u64) -> Self {
        let backend = Arc::new(Backend {
            generation,
            address: started.address,
            forward: started.forward,
            lifecycle: started.lifecycle.clone(),
            drain: Drain::default(),
        });
        Self {
            child: started.child,
            channel: started.channel,
            lifecycle: started.lifecycle,
            backend,
        }
    }
}

/// A plugin being started with a changed configuration, and what it is started with.
struct Attempt {
    generation: u64,
    config: Config,
    keys: KeyChanges,
    result: Result<Started, StartError>,
}

type Starting = Pin<Box<dyn Future<Output = Attempt>>>;

/// Runs the launcher to completion and returns the process exit code.
pub async fn run(args: Args) -> i32 {
    let args = Arc::new(args);
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
    // Before the plugin starts: a launcher that cannot close its plugin must not open it.
    let gate = match gate(&args) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up who may call the plugin");
            return EXIT_CONFIG;
        }
    };

    match crate::limit::raise_open_files_limit() {
        Ok(files) => {
            let room = files / FILES_PER_CONNECTION;
            if room < u64::from(args.max_connections) {
                tracing::warn!(
                    open_files_limit = files,
                    max_connections = args.max_connections,
                    "the open-files limit leaves room for about {room} spliced connections, fewer than --max-connections"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let started = match plugin::start(&args, 1, config.clone(), None).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the plugin");
            return e.exit_code();
        }
    };
    let mut current = Generation::new(started, 1);
    let backends = Backends::new(current.backend.clone());

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(CONFIG_HEALTH_SERVICE, ServingStatus::Serving)
        .await;
    let service = args.plugin_type.service_name();
    let mirror = tokio::spawn(mirror_health(
        backends.clone(),
        reporter.clone(),
        service,
        Args::duration(args.health_interval),
    ));

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %args.listen, error = %e, "cannot listen");
            return plugin::stop_and(&mut current.child, &args, EXIT_UNAVAILABLE).await;
        }
    };
    let drain = Drain::default();
    let limits = crate::listener::Limits {
        connections: ConnectionLimit::new(
            usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        ),
        idle_timeout: args.idle_timeout(),
        keepalive: args.keepalive(),
    };
    let metrics = limits.connections.clone();
    let router = tonic::service::Routes::new(health_service)
        .into_axum_router()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let gauges = metrics.render_metrics();
                async move { crate::policy::render_metrics() + &gauges }
            }),
        )
        .fallback_service(crate::proxy::Switch::new(
            backends.clone(),
            gate.tls.is_some(),
            gate.auth.clone(),
        ));
    // Not tonic's server: it would enforce `grpc-timeout` itself and answer CANCELLED;
    // forwarded, the plugin enforces it and answers as it does.
    let mut server = tokio::spawn(crate::listener::serve(
        listener,
        router,
        backends.clone(),
        args.forward,
        drain.clone(),
        gate,
        limits,
    ));
    let mut signals = Signals::new();
    tracing::info!(listen = %args.listen, service, "launcher serving");

    let mut watcher = Watcher::new(
        args.config_dirs.clone(),
        Args::duration(args.config_poll_interval),
        config,
    );
    let mut starting: Option<Starting> = None;
    let mut retiring: JoinSet<()> = JoinSet::new();
    let mut next_generation = 2;
    let mut server_done = false;
    let mut graceful = false;
    let code = loop {
        tokio::select! {
            _ = signals.next() => {
                graceful = true;
                // A plugin still starting never served anyone: killing it loses nothing.
                starting = None;
                mirror.abort();
                break match drain_connections(&drain, &reporter, service, &args, &mut signals, &mut current.child).await {
                    Some(code) => code,
                    None => {
                        tracing::info!("shutting the plugin down");
                        plugin::stop_gracefully(&current.lifecycle, &current.channel, &args, &mut current.child).await;
                        0
                    }
                };
            }
            status = current.child.wait() => {
                tracing::error!(status = ?status, generation = current.backend.generation, "plugin exited; exiting so the container restarts");
                break plugin::exit_code_of(status.ok());
            }
            result = &mut server => {
                server_done = true;
                tracing::error!(result = ?result.map_err(|e| error_chain(&e)), "gRPC server stopped");
                break plugin::stop_and(&mut current.child, &args, 1).await;
            }
            // While a plugin is starting, the files are not compared: once it is done, the
            // next poll compares them with what then runs, so a change made meanwhile is
            // applied next rather than lost.
            event = watcher.next_event(), if starting.is_none() => match event {
                Event::Changed { config, keys } => {
                    let generation = next_generation;
                    next_generation += 1;
                    tracing::info!(
                        generation,
                        added = ?keys.added,
                        removed = ?keys.removed,
                        changed = ?keys.changed,
                        "configuration changed: starting a new plugin with it while the running one keeps serving"
                    );
                    starting = Some(Box::pin(start_with(args.clone(), generation, config, keys)));
                }
                Event::BackToRunning => {
                    tracing::info!("the configuration files are back to the configuration the plugin runs with");
                    reporter.set_service_status(CONFIG_HEALTH_SERVICE, ServingStatus::Serving).await;
                }
            },
            attempt = finished(&mut starting) => match attempt.result {
                Ok(started) => {
                    let next = Generation::new(started, attempt.generation);
                    backends.switch(next.backend.clone());
                    let old = std::mem::replace(&mut current, next);
                    watcher.applied(attempt.config);
                    reporter.set_service_status(CONFIG_HEALTH_SERVICE, ServingStatus::Serving).await;
                    tracing::info!(
                        generation = attempt.generation,
                        old_generation = old.backend.generation,
                        changed = ?attempt.keys.changed,
                        added = ?attempt.keys.added,
                        removed = ?attempt.keys.removed,
                        "configuration applied: new connections and calls go to the new plugin; the old one drains"
                    );
                    let span = tracing::info_span!("retire", generation = old.backend.generation);
                    retiring.spawn(retire(old, args.clone()).instrument(span));
                }
                Err(e) => {
                    // `Initialize` refusals are redacted where they are read; this also covers
                    // whatever else a plugin may have said about its values.
                    let error = config_dir::redact(&e.to_string(), attempt.config.values());
                    tracing::error!(
                        generation = attempt.generation,
                        error = %error,
                        changed = ?attempt.keys.changed,
                        added = ?attempt.keys.added,
                        removed = ?attempt.keys.removed,
                        running_generation = current.backend.generation,
                        "configuration change not applied: the running plugin keeps serving with its previous configuration; trying again when the files change"
                    );
                    watcher.refused(attempt.config);
                    reporter.set_service_status(CONFIG_HEALTH_SERVICE, ServingStatus::NotServing).await;
                }
            },
            Some(_) = retiring.join_next(), if !retiring.is_empty() => {}
        }
    };
    mirror.abort();
    drain.close();
    drop(starting);
    if graceful {
        // Every connection was asked to go away: the old plugins' drains end soon, and each
        // is bounded by the drain timeout.
        while retiring.join_next().await.is_some() {}
    } else {
        // Exiting with an error: their processes are killed with the launcher.
        retiring.shutdown().await;
    }
    if !server_done {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    code
}

/// Starts generation `generation` with `config`. Its `Initialize` is bounded by the start
/// timeout: the running plugin serves meanwhile, but a later change waits for this one.
async fn start_with(args: Arc<Args>, generation: u64, config: Config, keys: KeyChanges) -> Attempt {
    let limit = Some(Args::duration(args.start_timeout));
    let result = plugin::start(&args, generation, config.clone(), limit).await;
    Attempt {
        generation,
        config,
        keys,
        result,
    }
}

/// The outcome of the plugin being started, if one is; never resolves otherwise.
async fn finished(starting: &mut Option<Starting>) -> Attempt {
    let attempt = match starting.as_mut() {
        Some(s) => s.await,
        None => std::future::pending().await,
    };
    *starting = None;
    attempt
}

/// Stops a replaced plugin once it has nothing left to do: its spliced connections are asked
/// to go away (HTTP/2 GOAWAY, between two frames as in the drain on SIGTERM) and their
/// clients connect again, to the new plugin; requests forwarded to it one by one finish.
/// Then, or after the drain timeout, it is stopped as at shutdown.
async fn retire(mut old: Generation, args: Arc<Args>) {
    let drain = &old.backend.drain;
    drain.close();
    tracing::info!(
        open = drain.open_connections(),
        "asked the old plugin's connections to go away (HTTP/2 GOAWAY); waiting for its calls in flight"
    );
    tokio::select! {
        _ = drain.all_closed() => tracing::info!("the old plugin's connections and calls are done"),
        _ = tokio::time::sleep(Args::duration(args.drain_timeout)) => tracing::warn!(
            open = drain.open_connections(),
            "drain timeout: stopping the old plugin with connections or calls still open"
        ),
        status = old.child.wait() => {
            tracing::warn!(status = ?status, "the old plugin exited on its own while draining");
            return;
        }
    }
    plugin::stop_gracefully(&old.lifecycle, &old.channel, &args, &mut old.child).await;
    tracing::info!("old plugin stopped");
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
        _ => plugin::exit_code_of(status),
    }
}

/// Mirrors the current plugin's own Health RPC into `grpc.health.v1` for `""` and the service
/// name. Which plugin is current may change between two calls: a replacement is made current
/// only once it has accepted its configuration, so the status does not flicker during a swap.
async fn mirror_health(
    backends: Backends,
    reporter: HealthReporter,
    service: &'static str,
    interval: Duration,
) {
    let mut last: Option<(bool, String)> = None;
    loop {
        let lifecycle = backends.current().lifecycle.clone();
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

/// TLS and the caller check, as the command line asks.
fn gate(args: &Args) -> Result<crate::listener::Gate, String> {
    let mut gate = crate::listener::Gate::default();
    if args.tls {
        let uid = std::env::var("HECTOR_POD_UID")
            .ok()
            .filter(|u| !u.is_empty());
        if uid.is_none() {
            tracing::warn!("HECTOR_POD_UID is not set: the certificate names no Pod");
        }
        let identity = crate::tls::Identity::generate(uid.as_deref()).map_err(|e| e.to_string())?;
        tracing::info!(fingerprint = %identity.fingerprint, pod_uid = uid.as_deref().unwrap_or(""), "serving TLS");
        gate.tls = Some(tokio_rustls::TlsAcceptor::from(identity.config));
    }
    if args.auth {
        let allow =
            crate::access::Allowlist::new(&args.allow_namespaces, &args.allow_service_accounts)?;
        if allow == crate::access::Allowlist::default() {
            return Err(
                "--auth needs at least one --allow-namespace or --allow-service-account".into(),
            );
        }
        let source = match &args.apiserver {
            Some(server) => crate::issuer::Source {
                server: server.clone(),
                credentials: args.apiserver_credentials.clone(),
            },
            None => crate::issuer::Source::in_cluster(args.apiserver_credentials.clone()).ok_or(
                "--auth needs the API server: KUBERNETES_SERVICE_HOST is not set and --apiserver is not given",
            )?,
        };
        let issuer = crate::issuer::Issuer::new(source);
        tokio::spawn(issuer.clone().keep_fresh());
        tracing::info!(rule = %allow.describe(), "callers are checked");
        gate.auth = Some(crate::access::Authenticator::new(allow, issuer));
    } else if args.open {
        tracing::warn!("--open: any caller that can reach this port may call the plugin");
    }
    Ok(gate)
}
