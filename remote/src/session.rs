//! What this executable answers itself: `Initialize` (find the remote plugin, check that it
//! answers, and keep following its endpoints), `Health` (healthy while at least one endpoint
//! answers) and `Shutdown` (the remote plugin is shared, so it is not shut down).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hector_plugin_client::follow::{self, Target, probe};
use hector_plugin_client::pool::Pool;
use hector_plugin_client::resolve::Resolver;
use hector_plugin_client::{ClientError, Directory};
use hector_plugin_sdk::proto::{HealthResponse, InitializeResponse, ShutdownResponse};
use tokio::task::JoinHandle;

use crate::error::TargetError;
use crate::target::{self, REMOTE_ADDRESS_KEY, Source};

/// How long `Initialize` waits for an endpoint's answer.
const INITIALIZE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the local `Health` waits for the endpoints' answers.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of one loaded plugin: its target and the tasks that follow it.
pub struct Session {
    pool: Arc<Pool>,
    program: String,
    endpoints_file: PathBuf,
    initialized: AtomicBool,
    tasks: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Session {
    /// A session for the executable called `program`, which looks itself up in
    /// `endpoints_file` when no `remote_address` is configured.
    pub fn new(program: String, endpoints_file: PathBuf) -> Self {
        Self {
            pool: Arc::new(Pool::new()),
            program,
            endpoints_file,
            initialized: AtomicBool::new(false),
            tasks: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// The endpoints and their connections.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether `Initialize` succeeded.
    pub fn is_initialized(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }

    /// Finds the remote plugin for the host's `Initialize` on `service` and checks that at
    /// least one endpoint answers; the config is not passed on (the remote plugin has its own).
    pub async fn initialize(
        &self,
        service: &str,
        config: HashMap<String, String>,
    ) -> InitializeResponse {
        let mut ignored: Vec<&String> = config
            .keys()
            .filter(|k| k.as_str() != REMOTE_ADDRESS_KEY)
            .collect();
        ignored.sort();
        if !ignored.is_empty() {
            // Key names only: values may be secrets.
            tracing::info!(
                ?ignored,
                "config keys not used here: the remote plugin is configured by its HectorPlugin resource"
            );
        }
        match self.connect(service, &config).await {
            Ok(()) => {
                self.initialized.store(true, Ordering::Release);
                InitializeResponse {
                    success: true,
                    error: String::new(),
                }
            }
            Err(error) => {
                // A failed re-initialization leaves no half-configured target behind.
                self.initialized.store(false, Ordering::Release);
                tracing::error!(error, "Initialize failed");
                InitializeResponse {
                    success: false,
                    error,
                }
            }
        }
    }

    async fn connect(&self, service: &str, config: &HashMap<String, String>) -> Result<(), String> {
        let source = Source::from_config(config, &self.program, &self.endpoints_file)
            .map_err(|e| e.to_string())?;
        let label = label(&source);
        let (targets, following) = match &source {
            Source::Addresses(list) => (list.clone(), Target::Addresses(list.clone())),
            Source::Published { file, name } => {
                // Read now for Initialize's answer, then followed as the file changes.
                let directory = Directory::follow_file(file)
                    .await
                    .map_err(|e| endpoints_error(e, file).to_string())?;
                let published =
                    target::published(&directory.current(), name).map_err(|e| e.to_string())?;
                target::check_type(&published.plugin_type, service, name)
                    .map_err(|e| e.to_string())?;
                let following = Target::Published {
                    directory,
                    name: name.clone(),
                };
                (published.targets, following)
            }
        };
        let mut resolver = Resolver::default();
        let resolved = resolver.resolve(&targets).await;
        if resolved.addrs.is_empty() {
            let reasons: Vec<String> = resolved
                .failed
                .iter()
                .map(|(t, reason)| format!("{t}: {reason}"))
                .collect();
            return Err(format!(
                "cannot reach remote plugin {label}: {}",
                reasons.join("; ")
            ));
        }
        self.stop_tasks().await;
        self.pool.set_label(label.clone());
        self.pool.set_endpoints(resolved.addrs.clone());
        let results = probe(
            &self.pool,
            &resolved.addrs,
            service,
            INITIALIZE_PROBE_TIMEOUT,
        )
        .await;
        if !results.iter().any(|(_, r)| r.is_ok()) {
            return Err(unreachable_message(&label, &results));
        }
        tracing::info!(
            target = %source,
            endpoints = ?resolved.addrs,
            healthy = results.iter().filter(|(_, r)| r.is_ok()).count(),
            "remote plugin reached"
        );
        self.tasks.lock().await.extend(follow::spawn(
            self.pool.clone(),
            following,
            targets,
            resolver,
            service.to_string(),
        ));
        Ok(())
    }

    /// Healthy while at least one endpoint answers its `Health` as healthy.
    pub async fn health(&self, service: &str) -> HealthResponse {
        if !self.is_initialized() {
            return HealthResponse {
                healthy: false,
                message: "not initialized".into(),
            };
        }
        let addrs = self.pool.endpoints();
        let label = self.pool.label();
        if addrs.is_empty() {
            return HealthResponse {
                healthy: false,
                message: format!("remote plugin {label} has no endpoint"),
            };
        }
        let results = probe(&self.pool, &addrs, service, HEALTH_TIMEOUT).await;
        let healthy = results.iter().filter(|(_, r)| r.is_ok()).count();
        if healthy == 0 {
            HealthResponse {
                healthy: false,
                message: unreachable_message(&label, &results),
            }
        } else {
            HealthResponse {
                healthy: true,
                message: format!(
                    "{healthy} of {} endpoints of remote plugin {label} healthy",
                    addrs.len()
                ),
            }
        }
    }

    /// Acknowledges the host's `Shutdown` without passing it on: other agents use the same
    /// remote plugin, and go-plugin's controller ends this process next.
    pub fn shutdown(&self) -> ShutdownResponse {
        tracing::info!("Shutdown: not passed on to the shared remote plugin");
        ShutdownResponse {
            success: true,
            error: String::new(),
        }
    }

    /// Stops following the endpoints.
    pub async fn stop_tasks(&self) {
        for task in self.tasks.lock().await.drain(..) {
            task.abort();
        }
    }
}

/// How the target is named in messages.
fn label(source: &Source) -> String {
    match source {
        Source::Addresses(_) => format!("at {source}"),
        Source::Published { file, name } => {
            format!("{name:?} (published in {})", file.display())
        }
    }
}

/// "cannot reach remote plugin at 10.1.2.3:50051: connection refused", naming each endpoint
/// when the label does not already.
fn unreachable_message(label: &str, results: &[(SocketAddr, Result<(), String>)]) -> String {
    let reasons: Vec<String> = results
        .iter()
        .filter_map(|(addr, r)| r.as_ref().err().map(|reason| (addr, reason)))
        .map(|(addr, reason)| {
            if results.len() == 1 && label == format!("at {addr}") {
                reason.clone()
            } else {
                format!("{addr}: {reason}")
            }
        })
        .collect();
    format!("cannot reach remote plugin {label}: {}", reasons.join("; "))
}

/// The endpoints file's error in this executable's words (which say what to configure).
fn endpoints_error(e: ClientError, file: &Path) -> TargetError {
    match e {
        ClientError::ReadFile { path, source } => TargetError::ReadEndpoints { path, source },
        ClientError::Parse { source, .. } => TargetError::ParseEndpoints {
            path: file.to_path_buf(),
            source,
        },
        other => TargetError::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_messages_name_the_address_and_the_reason() {
        let a: SocketAddr = ([10, 1, 2, 3], 50051).into();
        let b: SocketAddr = ([10, 1, 2, 4], 50051).into();
        let one = unreachable_message(
            "at 10.1.2.3:50051",
            &[(a, Err("connection refused".into()))],
        );
        assert_eq!(
            one,
            "cannot reach remote plugin at 10.1.2.3:50051: connection refused"
        );
        let two = unreachable_message(
            "at echo.agents.svc:50051",
            &[
                (a, Err("connection refused".into())),
                (b, Err("timed out".into())),
            ],
        );
        assert_eq!(
            two,
            "cannot reach remote plugin at echo.agents.svc:50051: 10.1.2.3:50051: connection refused; 10.1.2.4:50051: timed out"
        );
    }

    #[tokio::test]
    async fn health_before_initialize_is_unhealthy() {
        let s = Session::new("x".into(), PathBuf::from("/nonexistent"));
        let h = s.health("hector.plugin.LLMProvider").await;
        assert!(!h.healthy);
        assert_eq!(h.message, "not initialized");
    }

    #[tokio::test]
    async fn initialize_without_address_or_endpoints_file_says_what_to_do() {
        let s = Session::new("echo".into(), PathBuf::from("/nonexistent/endpoints.json"));
        let r = s
            .initialize("hector.plugin.LLMProvider", HashMap::new())
            .await;
        assert!(!r.success);
        assert!(
            r.error.contains("/nonexistent/endpoints.json") && r.error.contains("remote_address"),
            "{}",
            r.error
        );
        assert!(!s.is_initialized());
    }
}
