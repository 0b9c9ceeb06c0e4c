//! Network serving for plugins written with this SDK: the plugin's service plus
//! `grpc.health.v1`, configuration through `Initialize`, graceful stop on SIGTERM or `Shutdown`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::error::SdkError;
use crate::goplugin;
use crate::plugin_type::PluginType;
use crate::proto::{self, *};
use crate::traits::{
    ChunkStream, DatabasePlugin, EmbedderPlugin, LlmPlugin, Plugin, ReasoningPlugin, ToolPlugin,
};

/// Where a plugin serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket at this path.
    Unix(PathBuf),
    /// As a go-plugin child of Hector or the launcher: a fresh Unix socket, announced by the
    /// handshake line on stdout.
    GoPlugin,
}

impl FromStr for Listen {
    type Err = SdkError;

    /// `HOST:PORT` or `unix:/path/to/socket`.
    fn from_str(raw: &str) -> Result<Self, SdkError> {
        if let Some(path) = raw.strip_prefix("unix:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err(SdkError::Address {
                    address: raw.into(),
                    reason: "the socket path is empty".into(),
                });
            }
            return Ok(Listen::Unix(
                format!("/{}", path.trim_start_matches('/')).into(),
            ));
        }
        raw.parse().map(Listen::Tcp).map_err(|e| SdkError::Address {
            address: raw.into(),
            reason: format!("not HOST:PORT or unix:PATH: {e}"),
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::GoPlugin => f.write_str("go-plugin"),
        }
    }
}

/// How and where to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: Listen,
    /// How often the plugin's own health is mirrored into `grpc.health.v1`.
    pub health_interval: Duration,
}

impl ServeOptions {
    /// Options for TCP address `addr` with a two-second health interval.
    pub fn new(addr: SocketAddr) -> Self {
        Self::listen(Listen::Tcp(addr))
    }

    /// Options for `listen` with a two-second health interval.
    pub fn listen(listen: Listen) -> Self {
        Self {
            listen,
            health_interval: Duration::from_secs(2),
        }
    }

    /// Options from the environment the host set: `HECTOR_PLUGIN_ADDR` (network-native
    /// contract) or go-plugin's magic cookie (started by Hector or the launcher).
    pub fn from_env() -> Result<Self, SdkError> {
        Self::from_env_with(None)
    }

    /// Like [`ServeOptions::from_env`], but serves on `default` when the host set neither.
    pub fn from_env_or(default: SocketAddr) -> Result<Self, SdkError> {
        Self::from_env_with(Some(default))
    }

    fn from_env_with(default: Option<SocketAddr>) -> Result<Self, SdkError> {
        let var = crate::PLUGIN_ADDR_ENV;
        if let Ok(raw) = std::env::var(var) {
            return raw
                .parse()
                .map(Self::listen)
                .map_err(|e: SdkError| SdkError::Env {
                    var,
                    reason: e.to_string(),
                });
        }
        match goplugin::HostEnv::from_env()? {
            Some(_) => Ok(Self::listen(Listen::GoPlugin)),
            None => default.map(Self::new).ok_or_else(|| SdkError::Env {
                var,
                reason: format!(
                    "not set, and {} does not say a go-plugin host started this plugin; \
                     the host sets one of them",
                    goplugin::MAGIC_COOKIE_KEY
                ),
            }),
        }
    }
}

/// Lifecycle state shared by every service adapter.
struct Lifecycle<P> {
    plugin: Arc<P>,
    status: Mutex<&'static str>,
    initialized: AtomicBool,
    shut_down: AtomicBool,
    stop: Arc<Notify>,
}

impl<P: Plugin> Lifecycle<P> {
    fn require_initialized(&self) -> Result<(), Status> {
        if self.initialized.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Status::failed_precondition("not initialized"))
        }
    }

    async fn initialize(&self, config: crate::Config) -> InitializeResponse {
        *self.status.lock().await = "loading";
        match self.plugin.initialize(config).await {
            Ok(()) => {
                self.initialized.store(true, Ordering::Release);
                *self.status.lock().await = "ready";
                InitializeResponse {
                    success: true,
                    error: String::new(),
                }
            }
            Err(error) => {
                *self.status.lock().await = "error";
                InitializeResponse {
                    success: false,
                    error,
                }
            }
        }
    }

    /// Runs the plugin's shutdown once, whichever of RPC or signal comes first.
    async fn shutdown_once(&self) {
        if !self.shut_down.swap(true, Ordering::AcqRel) {
            self.plugin.shutdown().await;
            *self.status.lock().await = "shutdown";
        }
    }
}

/// Adapts a plugin trait implementation to the generated tonic service trait.
struct Adapter<P>(Arc<Lifecycle<P>>);

/// Implements a generated service trait: the five lifecycle RPCs, identical in every
/// service, plus the service's own methods given as `$extra`.
macro_rules! service_impl {
    ($service:path, $bound:path, { $($extra:tt)* }) => {
        #[tonic::async_trait]
        impl<P: $bound> $service for Adapter<P> {
        async fn initialize(
            &self,
            request: Request<InitializeRequest>,
        ) -> Result<Response<InitializeResponse>, Status> {
            let config = request.into_inner().config;
            tracing::info!(keys = config.len(), "Initialize");
            Ok(Response::new(self.0.initialize(config).await))
        }

        async fn shutdown(
            &self,
            _request: Request<ShutdownRequest>,
        ) -> Result<Response<ShutdownResponse>, Status> {
            self.0.shutdown_once().await;
            // Reply first, then stop serving.
            self.0.stop.notify_one();
            Ok(Response::new(ShutdownResponse {
                success: true,
                error: String::new(),
            }))
        }

        async fn health(
            &self,
            _request: Request<HealthRequest>,
        ) -> Result<Response<HealthResponse>, Status> {
            Ok(Response::new(self.0.plugin.health().await))
        }

        async fn get_manifest(
            &self,
            _request: Request<ManifestRequest>,
        ) -> Result<Response<ManifestResponse>, Status> {
            Ok(Response::new(self.0.plugin.manifest()))
        }

        async fn get_status(
            &self,
            _request: Request<StatusRequest>,
        ) -> Result<Response<StatusResponse>, Status> {
            Ok(Response::new(StatusResponse {
                status: (*self.0.status.lock().await).to_string(),
            }))
        }

        $($extra)*
        }
    };
}

service_impl!(proto::llm_provider_server::LlmProvider, LlmPlugin, {
    type GenerateStreamingStream = ChunkStream;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        self.0.require_initialized()?;
        Ok(Response::new(
            self.0.plugin.generate(request.into_inner()).await?,
        ))
    }

    async fn generate_streaming(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.0.require_initialized()?;
        Ok(Response::new(
            self.0.plugin.generate_stream(request.into_inner()).await?,
        ))
    }

    async fn get_model_info(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<ModelInfo>, Status> {
        Ok(Response::new(self.0.plugin.model_info().await?))
    }
});

service_impl!(
    proto::database_provider_server::DatabaseProvider,
    DatabasePlugin,
    {
        async fn upsert(
            &self,
            request: Request<UpsertRequest>,
        ) -> Result<Response<UpsertResponse>, Status> {
            self.0.require_initialized()?;
            Ok(Response::new(
                self.0.plugin.upsert(request.into_inner()).await?,
            ))
        }

        async fn search(
            &self,
            request: Request<SearchRequest>,
        ) -> Result<Response<SearchResponse>, Status> {
            self.0.require_initialized()?;
            Ok(Response::new(
                self.0.plugin.search(request.into_inner()).await?,
            ))
        }

        async fn delete(
            &self,
            request: Request<DeleteRequest>,
        ) -> Result<Response<DeleteResponse>, Status> {
            self.0.require_initialized()?;
            Ok(Response::new(
                self.0.plugin.delete(request.into_inner()).await?,
            ))
        }

        async fn create_collection(
            &self,
            request: Request<CreateCollectionRequest>,
        ) -> Result<Response<CreateCollectionResponse>, Status> {
            self.0.require_initialized()?;
            Ok(Response::new(
                self.0
                    .plugin
                    .create_collection(request.into_inner())
                    .await?,
            ))
        }

        async fn delete_collection(
            &self,
            request: Request<DeleteCollectionRequest>,
        ) -> Result<Response<DeleteCollectionResponse>, Status> {
            self.0.require_initialized()?;
            Ok(Response::new(
                self.0
                    .plugin
                    .delete_collection(request.into_inner())
                    .await?,
            ))
        }
    }
);

service_impl!(
    proto::embedder_provider_server::EmbedderProvider,
    EmbedderPlugin,
    {
        async fn embed(
            &self,
            request: Request<EmbedRequest>,
        ) -> Result<Response<EmbedResponse>, Status> {
            self.0.require_initialized()?;
            Ok(Response::new(
                self.0.plugin.embed(request.into_inner()).await?,
            ))
        }

        async fn get_embedder_info(
            &self,
            _request: Request<Empty>,
        ) -> Result<Response<EmbedderInfo>, Status> {
            Ok(Response::new(self.0.plugin.embedder_info().await?))
        }
    }
);

service_impl!(proto::tool_provider_server::ToolProvider, ToolPlugin, {
    async fn list_tools(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        self.0.require_initialized()?;
        Ok(Response::new(self.0.plugin.list_tools().await?))
    }

    async fn execute_tool(
        &self,
        request: Request<ToolCall>,
    ) -> Result<Response<ToolResult>, Status> {
        self.0.require_initialized()?;
        Ok(Response::new(
            self.0.plugin.execute(request.into_inner()).await?,
        ))
    }
});

service_impl!(
    proto::reasoning_strategy_server::ReasoningStrategy,
    ReasoningPlugin,
    {
        async fn next_step(
            &self,
            request: Request<ReasoningRequest>,
        ) -> Result<Response<ReasoningStep>, Status> {
            self.0.require_initialized()?;
            Ok(Response::new(
                self.0.plugin.next_step(request.into_inner()).await?,
            ))
        }

        async fn get_strategy_info(
            &self,
            _request: Request<Empty>,
        ) -> Result<Response<StrategyInfo>, Status> {
            Ok(Response::new(self.0.plugin.strategy_info().await?))
        }
    }
);

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves one adapted service until SIGTERM or `Shutdown`.
async fn serve_service<P, S>(
    plugin_type: PluginType,
    lifecycle: Arc<Lifecycle<P>>,
    service: S,
    options: ServeOptions,
) -> Result<(), SdkError>
where
    P: Plugin,
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let go_plugin = options.listen == Listen::GoPlugin;
    if go_plugin {
        // go-plugin hosts check this service to see that the plugin process is alive.
        reporter
            .set_service_status(goplugin::HEALTH_SERVICE, ServingStatus::Serving)
            .await;
    }

    let mirror = {
        let lifecycle = lifecycle.clone();
        let reporter = reporter.clone();
        tokio::spawn(async move {
            loop {
                let healthy = lifecycle.plugin.health().await.healthy;
                let status = if healthy {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status("", status).await;
                reporter
                    .set_service_status(plugin_type.service_name(), status)
                    .await;
                tokio::time::sleep(options.health_interval).await;
            }
        })
    };

    let stop = lifecycle.stop.clone();
    let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
    let signal = async move {
        tokio::select! {
            _ = termination_signal() => tracing::info!("termination signal received"),
            _ = stop.notified() => tracing::info!("asked to stop"),
        }
        // Ends go-plugin's stdio stream, which would otherwise hold the server open.
        stopped_tx.send_replace(true);
    };
    let (controller, stdio) = if go_plugin {
        let (c, s) = goplugin::services(lifecycle.stop.clone(), stopped);
        (Some(c), Some(s))
    } else {
        (None, None)
    };
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service)
        .add_optional_service(controller)
        .add_optional_service(stdio);

    let result = match &options.listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| SdkError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            let local = listener.local_addr().map_err(|source| SdkError::Bind {
                addr: addr.to_string(),
                source,
            })?;
            tracing::info!(address = %local, service = plugin_type.service_name(), "plugin serving");
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    signal,
                )
                .await
        }
        Listen::Unix(path) => {
            let listener = bind_unix(path)?;
            tracing::info!(address = %options.listen, service = plugin_type.service_name(), "plugin serving");
            let served = router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    signal,
                )
                .await;
            let _ = std::fs::remove_file(path);
            served
        }
        Listen::GoPlugin => {
            let socket = goplugin::SocketDir::create()?;
            let listener = bind_unix(socket.path())?;
            goplugin::announce(socket.path())?;
            tracing::info!(address = %socket.path().display(), service = plugin_type.service_name(), "plugin serving (go-plugin)");
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    signal,
                )
                .await
        }
    };
    mirror.abort();
    lifecycle.shutdown_once().await;
    result.map_err(SdkError::from)
}

/// Binds a Unix socket, replacing a stale socket file left by an earlier run.
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, SdkError> {
    let bind_error = |source| SdkError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path).map_err(bind_error)?;
        }
        _ => {}
    }
    tokio::net::UnixListener::bind(path).map_err(bind_error)
}

fn lifecycle<P: Plugin>(plugin: P) -> Arc<Lifecycle<P>> {
    Arc::new(Lifecycle {
        plugin: Arc::new(plugin),
        status: Mutex::new("unloaded"),
        initialized: AtomicBool::new(false),
        shut_down: AtomicBool::new(false),
        stop: Arc::new(Notify::new()),
    })
}

/// Serves an LLM provider until SIGTERM or `Shutdown`.
pub async fn serve_llm<P: LlmPlugin>(plugin: P, options: ServeOptions) -> Result<(), SdkError> {
    let lc = lifecycle(plugin);
    let svc = proto::llm_provider_server::LlmProviderServer::new(Adapter(lc.clone()));
    serve_service(PluginType::LlmProvider, lc, svc, options).await
}

/// Serves a database provider until SIGTERM or `Shutdown`.
pub async fn serve_database<P: DatabasePlugin>(
    plugin: P,
    options: ServeOptions,
) -> Result<(), SdkError> {
    let lc = lifecycle(plugin);
    let svc = proto::database_provider_server::DatabaseProviderServer::new(Adapter(lc.clone()));
    serve_service(PluginType::DatabaseProvider, lc, svc, options).await
}

/// Serves an embedder provider until SIGTERM or `Shutdown`.
pub async fn serve_embedder<P: EmbedderPlugin>(
    plugin: P,
    options: ServeOptions,
) -> Result<(), SdkError> {
    let lc = lifecycle(plugin);
    let svc = proto::embedder_provider_server::EmbedderProviderServer::new(Adapter(lc.clone()));
    serve_service(PluginType::EmbedderProvider, lc, svc, options).await
}

/// Serves a tool provider until SIGTERM or `Shutdown`.
pub async fn serve_tool<P: ToolPlugin>(plugin: P, options: ServeOptions) -> Result<(), SdkError> {
    let lc = lifecycle(plugin);
    let svc = proto::tool_provider_server::ToolProviderServer::new(Adapter(lc.clone()));
    serve_service(PluginType::ToolProvider, lc, svc, options).await
}

/// Serves a reasoning strategy until SIGTERM or `Shutdown`.
pub async fn serve_reasoning<P: ReasoningPlugin>(
    plugin: P,
    options: ServeOptions,
) -> Result<(), SdkError> {
    let lc = lifecycle(plugin);
    let svc = proto::reasoning_strategy_server::ReasoningStrategyServer::new(Adapter(lc.clone()));
    serve_service(PluginType::ReasoningStrategy, lc, svc, options).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "127.0.0.1:5".parse::<Listen>().ok(),
            Some(Listen::Tcp(([127, 0, 0, 1], 5).into()))
        );
        assert_eq!(
            "unix:/run/p.sock".parse::<Listen>().ok(),
            Some(Listen::Unix("/run/p.sock".into()))
        );
        assert_eq!(
            "unix:///run/p.sock".parse::<Listen>().ok(),
            Some(Listen::Unix("/run/p.sock".into()))
        );
        let empty = "unix:".parse::<Listen>().unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
        let bad = "localhost".parse::<Listen>().unwrap_err().to_string();
        assert!(bad.contains("HOST:PORT"), "{bad}");
    }

    #[test]
    fn listen_displays_as_it_parses() {
        for raw in ["10.0.0.1:50051", "unix:/tmp/a.sock"] {
            let listen: Listen = raw.parse().expect("parses");
            assert_eq!(listen.to_string(), raw);
        }
    }
}
