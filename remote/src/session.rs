//! What this executable answers itself: `Initialize` (find the remote plugin, check that it
//! answers this agent, and keep following its endpoints and certificates), `Health` (healthy
//! while at least one endpoint answers) and `Shutdown` (the remote plugin is shared, so it is
//! not shut down).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hector_plugin_client::follow::{self, Target, probe};
use hector_plugin_client::pool::Pool;
use hector_plugin_client::resolve::Resolver;
use hector_plugin_client::target::HostPort;
use hector_plugin_client::{ClientError, Directory, PluginTls, ProbeError};
use hector_plugin_sdk::proto::{HealthResponse, InitializeResponse, ShutdownResponse};
use hector_plugin_sdk::token::{DEFAULT_TOKEN_PATH, TOKEN_FILE_KEY, TokenError, TokenSource};
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
            .filter(|k| k.as_str() != REMOTE_ADDRESS_KEY && k.as_str() != TOKEN_FILE_KEY)
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
        let token = token_source(config).map_err(|e| e.to_string())?;
        let label = label(&source);
        // The published plugin behind the target (its certificates pin the connections, its
        // name goes into messages), and for a `remote_address` the directory to follow them.
        let (targets, following, plugin, tls, address_pins) = match &source {
            Source::Addresses(list) => {
                let found = address_pins(&self.endpoints_file, list).await;
                let plugin = found.as_ref().map(|(_, name, _)| name.clone());
                let (tls, pins) = match found {
                    Some((directory, name, tls)) => (tls, Some((directory, name))),
                    None => (None, None),
                };
                (
                    list.clone(),
                    Target::Addresses(list.clone()),
                    plugin,
                    tls,
                    pins,
                )
            }
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
                (
                    published.targets,
                    following,
                    Some(name.clone()),
                    published.tls,
                    None,
                )
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
        self.pool.set_token(token.clone());
        self.pool.set_tls(tls);
        self.pool.set_endpoints(resolved.addrs.clone());
        // The plugin's own Health, with this agent's token: a plugin that refuses this agent
        // fails Initialize with its reason instead of failing every later call.
        let results = probe(
            &self.pool,
            &resolved.addrs,
            service,
            INITIALIZE_PROBE_TIMEOUT,
        )
        .await;
        if !results.iter().any(|(_, r)| r.is_ok()) {
            let refusal = results.iter().find_map(|(_, r)| match r {
                Err(ProbeError::Refused { code, message }) => Some((*code, message.as_str())),
                _ => None,
            });
            return Err(match refusal {
                Some((code, message)) => {
                    refused_message(plugin.as_deref(), &label, code, message, token.is_some())
                }
                None => unreachable_message(&label, &results),
            });
        }
        tracing::info!(
            target = %source,
            endpoints = ?resolved.addrs,
            healthy = results.iter().filter(|(_, r)| r.is_ok()).count(),
            "remote plugin reached"
        );
        let mut tasks = self.tasks.lock().await;
        tasks.extend(follow::spawn(
            self.pool.clone(),
            following,
            targets,
            resolver,
            service.to_string(),
        ));
        if let Some((directory, name)) = address_pins {
            tasks.push(tokio::spawn(follow_pins(
                self.pool.clone(),
                directory,
                name,
            )));
        }
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
fn unreachable_message(label: &str, results: &[(SocketAddr, Result<(), ProbeError>)]) -> String {
    let reasons: Vec<String> = results
        .iter()
        .filter_map(|(addr, r)| r.as_ref().err().map(|reason| (addr, reason)))
        .map(|(addr, reason)| {
            if results.len() == 1 && label == format!("at {addr}") {
                reason.to_string()
            } else {
                format!("{addr}: {reason}")
            }
        })
        .collect();
    format!("cannot reach remote plugin {label}: {}", reasons.join("; "))
}

/// `plugin "echo-llm" refused this agent: <the server's reason>`, with a hint when the agent
/// sent no token at all.
fn refused_message(
    plugin: Option<&str>,
    label: &str,
    code: tonic::Code,
    message: &str,
    token_sent: bool,
) -> String {
    let who = match plugin {
        Some(name) => format!("plugin {name:?}"),
        None => format!("remote plugin {label}"),
    };
    let reason = if message.is_empty() {
        format!("{code:?}")
    } else {
        message.to_string()
    };
    let mut text = format!("{who} refused this agent: {reason}");
    if !token_sent && code == tonic::Code::Unauthenticated {
        text.push_str(&format!(
            " (this agent sent no token: mount the projected ServiceAccount token at \
             {DEFAULT_TOKEN_PATH}, or name its file with the {TOKEN_FILE_KEY} config key)"
        ));
    }
    text
}

/// The token the config's `token_file` names, else the usual places.
fn token_source(config: &HashMap<String, String>) -> Result<TokenSource, TokenError> {
    let named = config
        .get(TOKEN_FILE_KEY)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty());
    TokenSource::resolve(named.map(Path::new))
}

/// The published plugin a `remote_address` points at, when the endpoints file is there and
/// lists it: the directory to follow, its name and its TLS now. Without the file the address
/// is used as configured (plaintext).
async fn address_pins(
    file: &Path,
    addresses: &[HostPort],
) -> Option<(Directory, String, Option<PluginTls>)> {
    let directory = Directory::follow_file(file).await.ok()?;
    let name = target::serving(&directory.current(), addresses)?;
    let tls = directory
        .get(&name)
        .and_then(|p| PluginTls::for_published(&name, &p));
    tracing::info!(
        plugin = name,
        tls = tls.is_some(),
        "remote_address serves a published plugin; following its certificates"
    );
    Some((directory, name, tls))
}

/// Keeps the pool pinned to the certificates plugin `name` publishes, for a `remote_address`
/// target (a published target's certificates are followed with its endpoints).
async fn follow_pins(pool: Arc<Pool>, directory: Directory, name: String) {
    let mut rx = directory.subscribe();
    while rx.changed().await.is_ok() {
        rx.borrow_and_update();
        if let Some(plugin) = directory.get(&name) {
            pool.set_tls(PluginTls::for_published(&name, &plugin));
        }
    }
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
        let failed = |reason: &str| Err(ProbeError::Failed(reason.to_string()));
        let one = unreachable_message("at 10.1.2.3:50051", &[(a, failed("connection refused"))]);
        assert_eq!(
            one,
            "cannot reach remote plugin at 10.1.2.3:50051: connection refused"
        );
        let two = unreachable_message(
            "at echo.agents.svc:50051",
            &[(a, failed("connection refused")), (b, failed("timed out"))],
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

    #[test]
    fn refusals_name_the_plugin_and_hint_at_a_missing_token() {
        let denied = refused_message(
            Some("echo-llm"),
            "\"echo-llm\" (published in /e.json)",
            tonic::Code::PermissionDenied,
            "caller agents/bot is not allowed",
            true,
        );
        assert_eq!(
            denied,
            "plugin \"echo-llm\" refused this agent: caller agents/bot is not allowed"
        );
        let anonymous = refused_message(
            None,
            "at 10.0.0.1:50051",
            tonic::Code::Unauthenticated,
            "",
            false,
        );
        assert!(
            anonymous.starts_with(
                "remote plugin at 10.0.0.1:50051 refused this agent: Unauthenticated (this agent sent no token"
            ) && anonymous.contains(TOKEN_FILE_KEY),
            "{anonymous}"
        );
    }

    /// A gRPC server on loopback that refuses every call the way a launcher refuses a caller
    /// it does not admit, and records each call's `authorization` header; over TLS with a
    /// fresh self-signed certificate (its fingerprint is returned) when `with_tls`.
    struct Refusing {
        addr: SocketAddr,
        fingerprint: Option<String>,
        seen: Arc<std::sync::Mutex<Vec<Option<String>>>>,
        task: JoinHandle<()>,
    }

    impl Drop for Refusing {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Refusing {
        fn seen(&self) -> Vec<Option<String>> {
            self.seen.lock().map(|v| v.clone()).unwrap_or_default()
        }
    }

    fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["plugin".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("self-signed");
        let fingerprint = hector_plugin_sdk::tls::fingerprint(cert.der());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        (
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            fingerprint,
        )
    }

    async fn refusing_server(code: tonic::Code, message: &'static str, with_tls: bool) -> Refusing {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (acceptor, fingerprint) = if with_tls {
            let (a, fp) = tls_acceptor();
            (Some(a), Some(fp))
        } else {
            (None, None)
        };
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (record, acceptor) = (record.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |r: http::Request<hyper::body::Incoming>| {
                            let auth = r
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            if let Ok(mut s) = record.lock() {
                                s.push(auth);
                            }
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    tonic::Status::new(code, message)
                                        .into_http::<tonic::body::Body>(),
                                )
                            }
                        },
                    );
                    let http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Refusing {
            addr,
            fingerprint,
            seen,
            task,
        }
    }

    /// An endpoints file publishing `echo-llm` at `addr` (with `certificate`, if any) behind
    /// the stable address `echo-llm.agents.svc:50051`.
    fn endpoints_file(dir: &Path, addr: SocketAddr, certificate: Option<&str>) -> PathBuf {
        let path = dir.join("endpoints.json");
        let mut doc = hector_plugin_sdk::endpoints::EndpointsFile {
            schema_version: hector_plugin_sdk::endpoints::SCHEMA_VERSION,
            namespace: "agents".into(),
            plugins: Default::default(),
        };
        doc.plugins.insert(
            "echo-llm".into(),
            hector_plugin_sdk::endpoints::PublishedPlugin {
                name: "echo-llm".into(),
                plugin_type: "llm_provider".into(),
                address: "echo-llm.agents.svc:50051".into(),
                endpoints: vec![addr.to_string()],
                certificates: certificate
                    .map(|c| [(addr.to_string(), c.to_string())].into())
                    .unwrap_or_default(),
                ..Default::default()
            },
        );
        std::fs::write(&path, doc.render()).expect("endpoints file");
        path
    }

    const REASON: &str = "caller system:serviceaccount:agents:bot is not allowed by rule agents/*";

    #[tokio::test]
    async fn a_refused_agent_fails_initialize_naming_the_plugin_and_the_servers_reason() {
        let server = refusing_server(tonic::Code::PermissionDenied, REASON, false).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoints = endpoints_file(dir.path(), server.addr, None);
        let token = dir.path().join("token");
        std::fs::write(&token, "agent-token\n").expect("token file");

        let s = Session::new("echo-llm".into(), endpoints);
        let config = HashMap::from([(TOKEN_FILE_KEY.to_string(), token.display().to_string())]);
        let r = s.initialize("hector.plugin.LLMProvider", config).await;
        assert!(!r.success);
        assert_eq!(
            r.error,
            format!("plugin \"echo-llm\" refused this agent: {REASON}")
        );
        assert!(!s.is_initialized());
        assert_eq!(server.seen(), [Some("Bearer agent-token".to_string())]);

        // A named token file that is missing fails before anything is called.
        let missing = dir.path().join("no-token");
        let config = HashMap::from([(TOKEN_FILE_KEY.to_string(), missing.display().to_string())]);
        let r = s.initialize("hector.plugin.LLMProvider", config).await;
        assert!(
            !r.success && r.error.contains(&missing.display().to_string()),
            "{}",
            r.error
        );
        assert_eq!(server.seen().len(), 1, "nothing more was called");
    }

    #[tokio::test]
    async fn a_remote_address_of_a_published_plugin_is_pinned_to_its_certificates() {
        let server = refusing_server(tonic::Code::PermissionDenied, REASON, true).await;
        let fp = server.fingerprint.clone().expect("TLS");
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoints = endpoints_file(dir.path(), server.addr, Some(&fp));
        let s = Session::new("hector-plugin-remote".into(), endpoints);
        let config = HashMap::from([(REMOTE_ADDRESS_KEY.to_string(), server.addr.to_string())]);
        let r = s.initialize("hector.plugin.LLMProvider", config).await;
        // Reaching the refusal proves the TLS handshake passed the pin.
        assert_eq!(
            r.error,
            format!("plugin \"echo-llm\" refused this agent: {REASON}")
        );

        // Published with another certificate: refused in the handshake, nothing sent.
        let other = hector_plugin_sdk::tls::fingerprint(b"someone else's certificate");
        let endpoints = endpoints_file(dir.path(), server.addr, Some(&other));
        let s = Session::new("echo-llm".into(), endpoints);
        let r = s
            .initialize("hector.plugin.LLMProvider", HashMap::new())
            .await;
        let expected = format!(
            "certificate of {} is {fp} which plugin \"echo-llm\" did not publish",
            server.addr
        );
        assert!(!r.success && r.error.contains(&expected), "{}", r.error);
        assert_eq!(server.seen().len(), 1, "only the first session's call");
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
