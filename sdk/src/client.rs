//! Reaching a plugin: channels over TCP or Unix sockets, and the lifecycle RPCs every plugin
//! type shares, called by service name so one client serves all five types.

use std::collections::HashMap;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

use crate::error::SdkError;
use crate::plugin_type::PluginType;
use crate::proto::{
    HealthRequest, HealthResponse, InitializeRequest, InitializeResponse, ManifestRequest,
    ManifestResponse, ShutdownRequest, ShutdownResponse, StatusRequest, StatusResponse,
};
use crate::token::TokenSource;

/// Opens a channel to `address`: `HOST:PORT`, `http://HOST:PORT` or `unix:/path/to/socket`.
pub async fn connect(address: &str, timeout: Duration) -> Result<Channel, SdkError> {
    let bad = |reason: String| SdkError::Address {
        address: address.to_string(),
        reason,
    };
    if let Some(path) = address.strip_prefix("unix:") {
        let path = path.trim_start_matches("//").to_string();
        // The URI is required by the API but unused: the connector below ignores it.
        let endpoint = Endpoint::from_static("http://localhost").connect_timeout(timeout);
        return endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| bad(format!("cannot connect: {e}")));
    }
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Endpoint::from_shared(uri)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| bad(format!("cannot connect: {}", error_chain(&e))))
}

/// The full cause chain of an error, for messages a person can act on.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Calls the five lifecycle RPCs of any plugin service.
#[derive(Clone, Debug)]
pub struct LifecycleClient {
    channel: Channel,
    plugin_type: PluginType,
    token: TokenSource,
}

impl LifecycleClient {
    /// A client for the service of `plugin_type` over `channel`, sending no token.
    pub fn new(channel: Channel, plugin_type: PluginType) -> Self {
        Self {
            channel,
            plugin_type,
            token: TokenSource::none(),
        }
    }

    /// The same client, sending `token`'s `authorization` header with every call.
    pub fn with_token(mut self, token: TokenSource) -> Self {
        self.token = token;
        self
    }

    /// The plugin type this client speaks to.
    pub fn plugin_type(&self) -> PluginType {
        self.plugin_type
    }

    async fn unary<Req, Resp>(&self, method: &'static str, message: Req) -> Result<Resp, SdkError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let rpc_err = |status: Status| SdkError::Rpc { method, status };
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| rpc_err(Status::unavailable(e.to_string())))?;
        let path =
            PathAndQuery::try_from(format!("/{}/{}", self.plugin_type.service_name(), method))
                .map_err(|e| rpc_err(Status::internal(e.to_string())))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let mut request = Request::new(message);
        if let Some(value) = self.token.metadata() {
            request
                .metadata_mut()
                .insert(crate::token::AUTHORIZATION, value);
        }
        grpc.unary(request, path, codec)
            .await
            .map(|r| r.into_inner())
            .map_err(rpc_err)
    }

    /// Sends the configuration; a refusal carries the plugin's own error text.
    pub async fn initialize(&self, config: HashMap<String, String>) -> Result<(), SdkError> {
        let resp: InitializeResponse = self
            .unary("Initialize", InitializeRequest { config })
            .await?;
        if resp.success {
            Ok(())
        } else {
            Err(SdkError::Refused {
                method: "Initialize",
                message: resp.error,
            })
        }
    }

    /// The plugin's own health answer.
    pub async fn health(&self) -> Result<HealthResponse, SdkError> {
        self.unary("Health", HealthRequest {}).await
    }

    /// The plugin's identity.
    pub async fn manifest(&self) -> Result<ManifestResponse, SdkError> {
        self.unary("GetManifest", ManifestRequest {}).await
    }

    /// The plugin's lifecycle status string.
    pub async fn status(&self) -> Result<StatusResponse, SdkError> {
        self.unary("GetStatus", StatusRequest {}).await
    }

    /// Asks the plugin to release its resources.
    pub async fn shutdown(&self) -> Result<(), SdkError> {
        let resp: ShutdownResponse = self.unary("Shutdown", ShutdownRequest {}).await?;
        if resp.success {
            Ok(())
        } else {
            Err(SdkError::Refused {
                method: "Shutdown",
                message: resp.error,
            })
        }
    }
}
