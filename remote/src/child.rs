//! Running as Hector's go-plugin child: check the host's magic cookie, listen on a private
//! Unix socket, announce it with the handshake line, serve until go-plugin's controller asks
//! this process to exit (or the host goes away), then exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hector_plugin_sdk::endpoints::{DEFAULT_ENDPOINTS_PATH, ENDPOINTS_PATH_ENV};
use hector_plugin_sdk::goplugin::{self, HostEnv, SocketDir};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tonic_health::ServingStatus;

use crate::error::ChildError;
use crate::router::Router;
use crate::session::Session;
use crate::target;

/// How long connections get to finish after the host asked this process to exit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the parent process is checked for (a plugin must not outlive its host).
const PARENT_CHECK: Duration = Duration::from_secs(2);

/// What to tell a person who started the executable by hand.
const BY_HAND: &str = "\
hector-plugin-remote is a Hector plugin: Hector starts it (go-plugin handshake), it is not run by hand.
Point a plugin entry's `path:` at it and set `config: {remote_address: \"HOST:PORT\"}`, or name a copy
after a published plugin (see `hector-plugin-remote install --help`). `hector-plugin-remote --help` says more.";

/// Runs the child mode and returns the process's exit code.
pub fn main() -> ExitCode {
    match HostEnv::from_env() {
        Ok(Some(_)) => {}
        Ok(None) => {
            eprintln!("{BY_HAND}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("hector-plugin-remote: {}", ChildError::Host(e));
            return ExitCode::from(1);
        }
    }
    init_logging();
    // One thread: a relay's latency is dominated by wake-ups, and this keeps them on one CPU.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hector-plugin-remote: {}", ChildError::Runtime(e));
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(serve());
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "hector-plugin-remote failed");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr, which go-plugin relays into the host's log; `RUST_LOG` filters.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

/// The endpoints file named by the environment, or the default mount path.
fn endpoints_file() -> PathBuf {
    std::env::var_os(ENDPOINTS_PATH_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ENDPOINTS_PATH))
}

async fn serve() -> Result<(), ChildError> {
    let program = target::program_name(std::env::args_os().next().as_deref());
    let session = Arc::new(Session::new(program.clone(), endpoints_file()));

    let (reporter, health) = tonic_health::server::health_reporter();
    // go-plugin hosts check this service to see that the plugin process is alive.
    reporter
        .set_service_status(goplugin::HEALTH_SERVICE, ServingStatus::Serving)
        .await;
    let stop = Arc::new(Notify::new());
    let (stopped_tx, stopped) = watch::channel(false);
    let (controller, stdio) = goplugin::services(stop.clone(), stopped);
    let local = tonic::service::Routes::new(health)
        .add_service(controller)
        .add_service(stdio);
    let router = Router::new(session.clone(), local);

    let socket = SocketDir::create().map_err(ChildError::Serve)?;
    let listener = tokio::net::UnixListener::bind(socket.path()).map_err(|source| {
        ChildError::Serve(hector_plugin_sdk::SdkError::Bind {
            addr: format!("unix:{}", socket.path().display()),
            source,
        })
    })?;
    goplugin::announce(socket.path()).map_err(ChildError::Serve)?;
    tracing::info!(%program, socket = %socket.path().display(), "serving as a go-plugin child");

    let parent = std::os::unix::process::parent_id();
    let mut parent_check = tokio::time::interval(PARENT_CHECK);
    let term = hector_plugin_sdk::serve::termination_signal();
    tokio::pin!(term);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.notified() => break,
            _ = &mut term => {
                tracing::info!("termination signal received");
                break;
            }
            _ = parent_check.tick() => {
                if std::os::unix::process::parent_id() != parent {
                    tracing::warn!("the host process is gone; exiting");
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, router.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Ends go-plugin's stdio stream, which would otherwise hold the host's connection open.
    stopped_tx.send_replace(true);
    session.stop_tasks().await;
    // Let the controller's answer reach the host; it closes its connection next.
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("connections still open at exit");
    }
    drop(socket);
    Ok(())
}

/// Serves one host connection (HTTP/2 with prior knowledge, as grpc-go speaks it).
async fn serve_connection(stream: UnixStream, router: Router) {
    let service = hyper::service::service_fn(move |request| router.clone().handle(request));
    if let Err(e) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "host connection ended with an error");
    }
}
