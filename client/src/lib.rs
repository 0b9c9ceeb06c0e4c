//! Calling the remote Hector plugins that hector-operator publishes.
//!
//! A [`Directory`] holds the published plugins of a namespace and follows them as they
//! change: through the Kubernetes API (a watch on the `hector-plugins` ConfigMap; changes
//! arrive within about a second) or from a mounted `endpoints.json` (re-read every second).
//! A [`PluginChannel`] to one plugin sits under tonic's generated clients and spreads calls
//! over the plugin's healthy endpoints **per call**, round-robin, retrying a call on another
//! endpoint only when it provably never reached the one that failed.
//!
//! Every call carries the agent's projected ServiceAccount token (`authorization: Bearer …`)
//! when there is one — see [`ChannelOptions`] for which file — and a plugin that published
//! certificates is reached only over TLS pinned to them ([`PluginTls`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use hector_plugin_client::{Directory, served};
//! use hector_plugin_sdk::proto::{GenerateRequest, Message};
//!
//! let kube = kube::Client::try_default().await?;
//! let plugins = Directory::watch_namespace(kube, "agents").await?;
//! let mut llm = plugins.plugin("echo-llm").await?.llm()?;
//! let answer = llm
//!     .generate(GenerateRequest {
//!         messages: vec![Message { role: "user".into(), content: "hello".into(), ..Default::default() }],
//!         tools: vec![],
//!     })
//!     .await?;
//! println!("{} (from {:?})", answer.get_ref().text, served(&answer).map(|s| s.endpoint));
//! # Ok(())
//! # }
//! ```
//!
//! The same machinery, minus Kubernetes, runs inside the `hector-plugin-remote` executable
//! (build without the default `kube` feature to leave the Kubernetes client out).

pub mod balance;
pub mod body;
mod channel;
#[cfg(feature = "kube")]
mod configmap;
mod connect;
pub mod deadline;
mod directory;
pub mod error;
pub mod follow;
pub mod keepalive;
mod options;
pub mod pool;
pub mod resolve;
pub mod secure;
mod socket;
pub mod target;

pub use balance::Ejection;
pub use channel::{PluginChannel, served};
pub use directory::{Directory, FILE_POLL};
pub use error::{AddressError, ClientError};
pub use hector_plugin_sdk::net::TcpKeepalive;
pub use keepalive::Keepalive;
pub use options::ChannelOptions;
pub use pool::{PoolSettings, ProbeError, Served};
pub use secure::PluginTls;
pub use target::HostPort;
