//! Hector plugin SDK: the `hector.plugin` protocol types, traits for plugin authors, network
//! serving with standard gRPC health, and a lifecycle client shared by the launcher, the
//! operator's prober and `hectorctl`.

pub mod client;
pub mod endpoints;
pub mod error;
pub mod goplugin;
pub mod net;
pub mod plugin_type;
pub mod serve;
pub mod tls;
pub mod token;
pub mod traits;

/// Generated protocol types, clients and servers (package `hector.plugin`).
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("hector.plugin");

    /// HashiCorp go-plugin's own services (package `plugin`), for serving as its child.
    pub mod goplugin {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("plugin");
    }
}

pub use client::{LifecycleClient, connect};
pub use error::SdkError;
pub use plugin_type::PluginType;
pub use serve::{
    Listen, ServeOptions, serve_database, serve_embedder, serve_llm, serve_reasoning, serve_tool,
};
pub use traits::{
    ChunkStream, Config, DatabasePlugin, EmbedderPlugin, LlmPlugin, Plugin, ReasoningPlugin,
    ToolPlugin,
};

/// The environment variable through which a network-native plugin learns where to listen.
pub const PLUGIN_ADDR_ENV: &str = "HECTOR_PLUGIN_ADDR";
