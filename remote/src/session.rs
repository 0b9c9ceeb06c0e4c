//! What this executable answers itself: `Initialize` (find the remote plugin, check that it
//! answers, and keep following its endpoints), `Health` (healthy while at least one endpoint
//! answers) and `Shutdown` (the remote plugin is shared, so it is not shut down).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hector_plugin_sdk::endpoints::EndpointsFile;
use hector_plugin_sdk::proto::{HealthResponse, InitializeResponse, ShutdownResponse};
use tokio::task::{JoinHandle, JoinSet};

use crate::error::TargetError;
use crate::pool::Pool;
use crate::resolve::Resolver;
use crate::target::{self, HostPort, REMOTE_ADDRESS_KEY, Source};

/// How long `Initialize` waits for an endpoint's answer.
const INITIALIZE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the local `Health` waits for the endpoints' answers.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the endpoints file and DNS names are looked at again.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often endpoints that are out of the rotation are probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

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
        let targets = match &source {
            Source::Addresses(list) => list.clone(),
            Source::Published { file, name } => {
                let published = read_published(file, name)
                    .await
                    .map_err(|e| e.to_string())?;
                target::check_type(&published.plugin_type, service, name)
                    .map_err(|e| e.to_string())?;
                published.targets
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
        let mut tasks = self.tasks.lock().await;
        tasks.push(tokio::spawn(follow(
            self.pool.clone(),
            source,
            targets,
            resolver,
        )));
        tasks.push(tokio::spawn(probe_down(
            self.pool.clone(),
            service.to_string(),
        )));
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

/// Calls `Health` on every endpoint at once and updates the rotation with the answers.
async fn probe(
    pool: &Arc<Pool>,
    addrs: &[SocketAddr],
    service: &str,
    timeout: Duration,
) -> Vec<(SocketAddr, Result<(), String>)> {
    let mut set = JoinSet::new();
    for &addr in addrs {
        let pool = pool.clone();
        let service = service.to_string();
        set.spawn(async move {
            let result = match pool.health(addr, &service, timeout).await {
                Ok(h) if h.healthy => Ok(()),
                Ok(h) if h.message.is_empty() => Err("reports unhealthy".to_string()),
                Ok(h) => Err(format!("reports unhealthy: {}", h.message)),
                Err(reason) => Err(reason),
            };
            match &result {
                Ok(()) => pool.mark_up(addr),
                Err(reason) => pool.mark_down(addr, reason),
            }
            (addr, result)
        });
    }
    let mut results = Vec::with_capacity(addrs.len());
    while let Some(joined) = set.join_next().await {
        if let Ok(r) = joined {
            results.push(r);
        }
    }
    results.sort_by_key(|(addr, _)| *addr);
    results
}

/// Reads the endpoints file and finds `name` in it.
async fn read_published(
    file: &std::path::Path,
    name: &str,
) -> Result<target::Published, TargetError> {
    let text =
        tokio::fs::read_to_string(file)
            .await
            .map_err(|source| TargetError::ReadEndpoints {
                path: file.to_path_buf(),
                source,
            })?;
    let parsed = EndpointsFile::parse(&text).map_err(|source| TargetError::ParseEndpoints {
        path: file.to_path_buf(),
        source,
    })?;
    target::published(&parsed, name)
}

/// Follows the source: re-reads the endpoints file (by path, so a ConfigMap volume's swapped
/// `..data` link is followed) and re-resolves DNS names, updating the endpoint set.
async fn follow(
    pool: Arc<Pool>,
    source: Source,
    mut targets: Vec<HostPort>,
    mut resolver: Resolver,
) {
    if matches!(&source, Source::Addresses(list) if list.iter().all(|t| t.literal().is_some())) {
        // Fixed IP addresses: nothing can change.
        return;
    }
    let mut last_text: Option<String> = None;
    let mut last_problem: Option<String> = None;
    loop {
        tokio::time::sleep(REFRESH_INTERVAL).await;
        if let Source::Published { file, name } = &source {
            match read_changed(file, name, &mut last_text).await {
                Ok(Some(t)) => {
                    targets = t;
                    last_problem = None;
                }
                Ok(None) => {}
                Err(problem) => {
                    if last_problem.as_deref() != Some(problem.as_str()) {
                        tracing::warn!(%problem, "endpoints file");
                        last_problem = Some(problem);
                    }
                }
            }
        }
        let resolved = resolver.resolve(&targets).await;
        for (target, reason) in &resolved.failed {
            tracing::debug!(%target, reason, "cannot resolve");
        }
        pool.set_endpoints(resolved.addrs);
    }
}

/// The plugin's targets when the file's content changed since `last`; `Ok(None)` when it did
/// not. A plugin that is no longer published has no targets.
async fn read_changed(
    file: &std::path::Path,
    name: &str,
    last: &mut Option<String>,
) -> Result<Option<Vec<HostPort>>, String> {
    let text = tokio::fs::read_to_string(file).await.map_err(|e| {
        format!(
            "cannot read {}: {e}; keeping the last endpoints",
            file.display()
        )
    })?;
    if last.as_deref() == Some(text.as_str()) {
        return Ok(None);
    }
    let parsed = EndpointsFile::parse(&text)
        .map_err(|e| format!("{}: {e}; keeping the last endpoints", file.display()))?;
    *last = Some(text);
    match target::published(&parsed, name) {
        Ok(p) => Ok(Some(p.targets)),
        Err(e @ TargetError::NotPublished { .. }) => {
            tracing::warn!(error = %e, "plugin unpublished; calls fail until it is back");
            Ok(Some(Vec::new()))
        }
        Err(e) => Err(format!("{e}; keeping the last endpoints")),
    }
}

/// Probes the endpoints that are out of the rotation and puts back those that answer.
async fn probe_down(pool: Arc<Pool>, service: String) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let down = pool.down();
        if !down.is_empty() {
            probe(&pool, &down, &service, PROBE_INTERVAL).await;
        }
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
