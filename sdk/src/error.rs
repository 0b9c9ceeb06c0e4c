//! Errors of the SDK.

/// Everything that can go wrong while serving or reaching a plugin.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The gRPC server failed while running.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// An address could not be understood.
    #[error("invalid address {address:?}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The host's environment (`HECTOR_PLUGIN_ADDR`, go-plugin's variables) was missing or
    /// malformed.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The go-plugin handshake could not be prepared or announced.
    #[error("go-plugin handshake: {0}")]
    Handshake(String),
    /// A plugin RPC answered with a gRPC error.
    #[error("{method} failed: {status}")]
    Rpc {
        /// The RPC that failed.
        method: &'static str,
        /// The gRPC status it returned.
        status: tonic::Status,
    },
    /// A plugin RPC answered but reported failure in its body.
    #[error("{method} was refused by the plugin: {message}")]
    Refused {
        /// The RPC that was refused.
        method: &'static str,
        /// The plugin's error text.
        message: String,
    },
}
