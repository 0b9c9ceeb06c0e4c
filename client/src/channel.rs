//! [`PluginChannel`]: a tower `Service` under tonic's generated clients that sends every call
//! to one of the plugin's endpoints, round-robin per call, and retries a call on another
//! endpoint only when it provably never reached the one that failed. Every call carries the
//! caller's token, and a plugin that published certificates is reached over pinned TLS.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hector_plugin_sdk::PluginType;
use hector_plugin_sdk::proto::{
    database_provider_client::DatabaseProviderClient,
    embedder_provider_client::EmbedderProviderClient, llm_provider_client::LlmProviderClient,
    reasoning_strategy_client::ReasoningStrategyClient, tool_provider_client::ToolProviderClient,
};

use crate::directory::{Directory, TaskGuard};
use crate::error::ClientError;
use crate::follow::{self, Target};
use crate::options::ChannelOptions;
use crate::pool::{Call, Pool, PoolSettings, Served};
use crate::resolve::Resolver;
use crate::secure::PluginTls;
use crate::target::{HostPort, parse_address_list};

type Body = tonic::body::Body;

struct Inner {
    pool: Arc<Pool>,
    name: String,
    plugin_type: PluginType,
    _tasks: TaskGuard,
}

/// A balanced channel to one plugin: use it under the generated clients
/// ([`PluginChannel::llm`], [`PluginChannel::embedder`], …). Cheap to clone; clones share the
/// endpoints and their connections, and the background work (following the published
/// endpoints, probing those out of the rotation) stops when the last clone is dropped.
#[derive(Clone)]
pub struct PluginChannel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginChannel")
            .field("name", &self.inner.name)
            .field("type", &self.inner.plugin_type)
            .field("endpoints", &self.inner.pool.endpoints())
            .finish()
    }
}

impl PluginChannel {
    /// A channel to plugin `name` of `directory`, following its published endpoints and
    /// certificates. It must be published now (see [`Directory::wait_for`]); its published
    /// type decides which typed client fits. Calls carry the token of the default
    /// [`ChannelOptions`].
    pub async fn published(directory: &Directory, name: &str) -> Result<Self, ClientError> {
        Self::published_with(directory, name, &ChannelOptions::default()).await
    }

    /// [`Self::published`] with `options`.
    pub async fn published_with(
        directory: &Directory,
        name: &str,
        options: &ChannelOptions,
    ) -> Result<Self, ClientError> {
        let token = options.token_source()?;
        let plugin = directory.require(name)?;
        let plugin_type: PluginType =
            plugin
                .plugin_type
                .parse()
                .map_err(|_| ClientError::UnknownType {
                    name: name.to_string(),
                    published: plugin.plugin_type.clone(),
                })?;
        let targets = crate::target::published_targets(&plugin)?;
        let label = format!("{name:?} (published in {})", directory.place());
        let target = Target::Published {
            directory: directory.clone(),
            name: name.to_string(),
        };
        let security = Security {
            tls: PluginTls::for_published(name, &plugin),
            token,
            settings: options.pool_settings(),
        };
        Self::start(name, plugin_type, label, target, targets, security).await
    }

    /// A channel to fixed addresses: `HOST:PORT`, or several separated by commas, of a plugin
    /// of `plugin_type`. Names are resolved again every few seconds (a headless Service's
    /// name gives every Pod; a ClusterIP Service's name gives one virtual address, behind
    /// which kube-proxy balances connections, not calls). Plaintext: no certificates are
    /// known for bare addresses (see [`ChannelOptions::pinned`]). Calls carry the token of the
    /// default [`ChannelOptions`].
    pub async fn connect(addresses: &str, plugin_type: PluginType) -> Result<Self, ClientError> {
        Self::connect_with(addresses, plugin_type, &ChannelOptions::default()).await
    }

    /// [`Self::connect`] with `options`.
    pub async fn connect_with(
        addresses: &str,
        plugin_type: PluginType,
        options: &ChannelOptions,
    ) -> Result<Self, ClientError> {
        let token = options.token_source()?;
        let targets = parse_address_list(addresses)?;
        let list: Vec<String> = targets.iter().map(HostPort::to_string).collect();
        let label = format!("at {}", list.join(","));
        Self::start(
            &list.join(","),
            plugin_type,
            label,
            Target::Addresses(targets.clone()),
            targets,
            Security {
                tls: options.tls(),
                token,
                settings: options.pool_settings(),
            },
        )
        .await
    }

    async fn start(
        name: &str,
        plugin_type: PluginType,
        label: String,
        target: Target,
        targets: Vec<HostPort>,
        security: Security,
    ) -> Result<Self, ClientError> {
        let mut resolver = Resolver::default();
        let resolved = resolver.resolve(&targets).await;
        if resolved.addrs.is_empty() && !resolved.failed.is_empty() {
            return Err(ClientError::Unresolvable {
                label,
                reasons: resolved
                    .failed
                    .iter()
                    .map(|(t, reason)| format!("{t}: {reason}"))
                    .collect(),
            });
        }
        let pool = Arc::new(Pool::with_settings(security.settings));
        pool.set_tls(security.tls);
        pool.set_token(security.token);
        pool.set_label(label);
        pool.set_endpoints(resolved.addrs);
        let tasks = follow::spawn(
            pool.clone(),
            target,
            targets,
            resolver,
            plugin_type.service_name().to_string(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                name: name.to_string(),
                plugin_type,
                _tasks: TaskGuard(tasks),
            }),
        })
    }

    /// The plugin's name (for a channel to addresses, the address list).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The plugin's type.
    pub fn plugin_type(&self) -> PluginType {
        self.inner.plugin_type
    }

    /// The endpoints calls are spread over now.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.inner.pool.endpoints()
    }

    /// The endpoints out of the rotation now: down (probed every second) or ejected for
    /// failing calls (probed once their ejection runs out).
    pub fn down(&self) -> Vec<SocketAddr> {
        self.inner.pool.down()
    }

    /// The endpoints ejected now for failing calls (see [`crate::Ejection`]).
    pub fn ejected(&self) -> Vec<SocketAddr> {
        self.inner.pool.ejected()
    }

    /// Calls the plugin's own `Health` on every endpoint now, each within `timeout`, and
    /// updates the rotation: the result per endpoint, `Err` with the reason.
    pub async fn probe(&self, timeout: Duration) -> Vec<(SocketAddr, Result<(), String>)> {
        let addrs = self.inner.pool.endpoints();
        follow::probe(
            &self.inner.pool,
            &addrs,
            self.inner.plugin_type.service_name(),
            timeout,
        )
        .await
        .into_iter()
        .map(|(addr, r)| (addr, r.map_err(|e| e.to_string())))
        .collect()
    }

    fn typed(&self, wanted: PluginType) -> Result<Self, ClientError> {
        if self.inner.plugin_type == wanted {
            Ok(self.clone())
        } else {
            Err(ClientError::TypeMismatch {
                name: self.inner.name.clone(),
                actual: self.inner.plugin_type,
                wanted,
            })
        }
    }

    /// A client for an `llm_provider`.
    pub fn llm(&self) -> Result<LlmProviderClient<Self>, ClientError> {
        self.typed(PluginType::LlmProvider)
            .map(LlmProviderClient::new)
    }

    /// A client for an `embedder_provider`.
    pub fn embedder(&self) -> Result<EmbedderProviderClient<Self>, ClientError> {
        self.typed(PluginType::EmbedderProvider)
            .map(EmbedderProviderClient::new)
    }

    /// A client for a `database_provider`.
    pub fn database(&self) -> Result<DatabaseProviderClient<Self>, ClientError> {
        self.typed(PluginType::DatabaseProvider)
            .map(DatabaseProviderClient::new)
    }

    /// A client for a `tool_provider`.
    pub fn tool(&self) -> Result<ToolProviderClient<Self>, ClientError> {
        self.typed(PluginType::ToolProvider)
            .map(ToolProviderClient::new)
    }

    /// A client for a `reasoning_strategy`.
    pub fn reasoning(&self) -> Result<ReasoningStrategyClient<Self>, ClientError> {
        self.typed(PluginType::ReasoningStrategy)
            .map(ReasoningStrategyClient::new)
    }

    /// Sends one call (what the tower `Service` does for every request); the pool keeps the
    /// call's deadline, to the last message of a streamed answer.
    async fn send(pool: Arc<Pool>, request: http::Request<Body>) -> http::Response<Body> {
        match Call::read(request, Instant::now()).await {
            Ok(call) => pool.forward(call).await,
            Err(response) => response,
        }
    }
}

/// How a channel's connections are secured and its calls authenticated.
struct Security {
    tls: Option<PluginTls>,
    token: hector_plugin_sdk::token::TokenSource,
    settings: PoolSettings,
}

impl Directory {
    /// A balanced channel to published plugin `name`; see [`PluginChannel::published`].
    pub async fn plugin(&self, name: &str) -> Result<PluginChannel, ClientError> {
        PluginChannel::published(self, name).await
    }

    /// [`Directory::plugin`] with `options`.
    pub async fn plugin_with(
        &self,
        name: &str,
        options: &ChannelOptions,
    ) -> Result<PluginChannel, ClientError> {
        PluginChannel::published_with(self, name, options).await
    }
}

impl tower::Service<http::Request<Body>> for PluginChannel {
    type Response = http::Response<Body>;
    // Failures become gRPC statuses in the response, which tonic turns into `Status`.
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Connections are opened per endpoint when a call needs one; nothing to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let pool = self.inner.pool.clone();
        Box::pin(async move { Ok(Self::send(pool, request).await) })
    }
}

/// Which endpoint answered a call, read from its response (unary or streaming).
pub fn served<T>(response: &tonic::Response<T>) -> Option<Served> {
    response.extensions().get::<Served>().copied()
}
