//! Network serving for plugins written with this SDK: the plugin's service plus
//! `grpc.health.v1`, configuration through `Initialize`, graceful stop on SIGTERM or `Shutdown`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::error::SdkError;
use crate::plugin_type::PluginType;
use crate::proto::{self, *};
use crate::traits::{
    ChunkStream, DatabasePlugin, EmbedderPlugin, LlmPlugin, Plugin, ReasoningPlugin, ToolPlugin,
};

/// How and where to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// How often the plugin's own health is mirrored into `grpc.health.v1`.
    pub health_interval: Duration,
}

impl ServeOptions {
    /// Options for `addr` with a two-second health interval.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            health_interval: Duration::from_secs(2),
        }
    }

    /// Options from `HECTOR_PLUGIN_ADDR`, the contract for network-native plugins.
    pub fn from_env() -> Result<Self, SdkError> {
        let var = crate::PLUGIN_ADDR_ENV;
        let raw = std::env::var(var).map_err(|_| SdkError::Env {
            var,
            reason: "not set; the host sets it to the address the plugin must listen on".into(),
        })?;
        let addr = raw.parse().map_err(|e| SdkError::Env {
            var,
            reason: format!("{raw:?} is not HOST:PORT: {e}"),
        })?;
        Ok(Self::new(addr))
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
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| SdkError::Bind {
            addr: options.addr,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| SdkError::Bind {
        addr: options.addr,
        source,
    })?;
    tracing::info!(address = %local, service = plugin_type.service_name(), "plugin serving");

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
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                tokio::select! {
                    _ = termination_signal() => tracing::info!("termination signal received"),
                    _ = stop.notified() => tracing::info!("Shutdown RPC received"),
                }
            },
        )
        .await;
    mirror.abort();
    lifecycle.shutdown_once().await;
    result.map_err(SdkError::from)
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
