//! The cluster's service-account issuer, as the API server describes it: OIDC discovery
//! (`/.well-known/openid-configuration`, for the issuer name) and its signing keys
//! (`/openid/v1/jwks`). Kubernetes lets every ServiceAccount read both (the default
//! `system:service-account-issuer-discovery` binding), so the Pod's own token is enough.
//!
//! The keys are fetched at start, again every [`REFRESH_EVERY`], and at once when a token
//! names a key id the launcher does not know (keys rotate), at most once per
//! [`MIN_REFRESH_GAP`] so that made-up key ids cannot make it hammer the API server.
//! Requests themselves never wait on the API server, except the first one to carry a new
//! key id.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;

use crate::jwt::KeySet;

/// Time between two scheduled refreshes.
pub const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// Least time between two refreshes asked for by unknown key ids: a key rotated in is
/// picked up within a second, and made-up key ids cost the API server one small read a
/// second at most.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);
/// Longest wait for one fetch (discovery and keys).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery or JWKS document read.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// Where the issuer is read from and with which credentials.
#[derive(Clone, Debug)]
pub struct Source {
    /// `https://host:port` of the API server.
    pub server: Uri,
    /// Directory holding `token` (a token for the API server) and `ca.crt` (its CA).
    pub credentials: PathBuf,
}

impl Source {
    /// The API server this Pod reaches through the `kubernetes` Service, as the kubelet
    /// tells every container; `None` outside a cluster.
    pub fn in_cluster(credentials: PathBuf) -> Option<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let server = format!("https://{host}:{port}").parse().ok()?;
        Some(Self {
            server,
            credentials,
        })
    }

    /// Discovery then keys.
    async fn fetch(&self) -> Result<KeySet, String> {
        let discovery: Discovery =
            serde_json::from_slice(&self.get("/.well-known/openid-configuration").await?)
                .map_err(|e| format!("OIDC discovery document is not valid: {e}"))?;
        // The API server serves the keys itself; `jwks_uri` may name an address only
        // reachable from outside the cluster.
        let jwks = self.get("/openid/v1/jwks").await?;
        KeySet::from_jwks(&discovery.issuer, &jwks)
    }

    async fn get(&self, path: &str) -> Result<Vec<u8>, String> {
        let what = format!(
            "GET {}{path}",
            self.server.to_string().trim_end_matches('/')
        );
        tokio::time::timeout(FETCH_TIMEOUT, self.get_inner(path))
            .await
            .map_err(|_| format!("{what}: no answer in {FETCH_TIMEOUT:?}"))?
            .map_err(|e| format!("{what}: {e}"))
    }

    async fn get_inner(&self, path: &str) -> Result<Vec<u8>, String> {
        let read = |name: &str| {
            let p = self.credentials.join(name);
            std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let token = String::from_utf8(read("token")?)
            .map_err(|_| "the API server token is not text".to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&read("ca.crt")?) {
            let cert = cert.map_err(|e| format!("ca.crt: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca.crt: {e}"))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let host = self.server.host().unwrap_or_default();
        let port = self.server.port_u16().unwrap_or(443);
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = ServerName::try_from(bare.clone()).map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = Request::get(path)
            .header(http::header::HOST, host)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            // The API server serves the keys only as `application/jwk-set+json`.
            .header(
                http::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .body(axum::body::Body::empty())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), MAX_DOCUMENT)
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(format!("{status}: {text}"));
        }
        Ok(body.to_vec())
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
}

/// The issuer's keys as last fetched, and the means to fetch them again.
pub struct Issuer {
    source: Source,
    keys: RwLock<Option<Arc<KeySet>>>,
    last_error: Mutex<Option<String>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    runtime: tokio::runtime::Handle,
}

impl Issuer {
    /// An issuer with no keys yet; call [`Issuer::keep_fresh`] to load them. Must be made on
    /// the runtime that will fetch.
    pub fn new(source: Source) -> Arc<Self> {
        Arc::new(Self {
            source,
            keys: RwLock::new(None),
            last_error: Mutex::new(None),
            last_fetch: tokio::sync::Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Keys already known, for tests and for fixed key sets.
    #[cfg(test)]
    pub fn with_keys(source: Source, keys: KeySet) -> Arc<Self> {
        let issuer = Self::new(source);
        *issuer.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
        issuer
    }

    /// The keys, if they were ever fetched.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why the keys are missing, if a fetch failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Fetches the keys unless a fetch happened less than `gap` ago.
    pub async fn refresh(&self, gap: Duration) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < gap) {
            return;
        }
        let result = self.source.fetch().await;
        *last = Some(Instant::now());
        match result {
            Ok(keys) => {
                let had = self.keys().map(|k| k.key_count());
                if had != Some(keys.key_count()) {
                    tracing::info!(
                        issuer = keys.issuer(),
                        keys = keys.key_count(),
                        "service-account issuer keys loaded"
                    );
                }
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the service-account issuer's keys");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
    }

    /// [`Issuer::refresh`] for a thread outside the runtime (a spliced connection's): runs
    /// the fetch on the runtime and waits for it.
    pub fn refresh_blocking(self: &Arc<Self>) {
        let (done, wait) = std::sync::mpsc::channel();
        let issuer = self.clone();
        self.runtime.spawn(async move {
            issuer.refresh(MIN_REFRESH_GAP).await;
            let _ = done.send(());
        });
        let _ = wait.recv_timeout(FETCH_TIMEOUT * 2);
    }

    /// Loads the keys, retrying quickly until the first success, then refreshes them on
    /// schedule. Runs until the launcher exits.
    pub async fn keep_fresh(self: Arc<Self>) {
        let mut retry = Duration::from_millis(500);
        while self.keys().is_none() {
            self.refresh(Duration::ZERO).await;
            if self.keys().is_none() {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(15));
            }
        }
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            self.refresh(Duration::ZERO).await;
        }
    }
}
