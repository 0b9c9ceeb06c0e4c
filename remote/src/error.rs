//! Errors, each carrying what a person needs to act on it.

use std::path::PathBuf;

/// Why the remote plugin's target cannot be determined.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// An address is not `host:port`.
    #[error("invalid remote address {address:?}: {reason}")]
    Address {
        /// The address as written.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The endpoints file cannot be read.
    #[error(
        "cannot read the published endpoints file {}: {source} (set remote_address in the plugin's config, or {} to the file's path)",
        path.display(),
        hector_plugin_sdk::endpoints::ENDPOINTS_PATH_ENV
    )]
    ReadEndpoints {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoints file is not valid.
    #[error("{}: {source}", path.display())]
    ParseEndpoints {
        /// The file.
        path: PathBuf,
        /// Why.
        source: hector_plugin_sdk::endpoints::EndpointsError,
    },
    /// The plugin is not in the endpoints file.
    #[error(
        "no plugin named {name:?} is published (published: {}); it is unhealthy or absent, or set remote_address in the plugin's config",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    NotPublished {
        /// The name looked for.
        name: String,
        /// The names that are published.
        known: Vec<String>,
    },
    /// Anything else about the endpoints, in the client library's words.
    #[error("{0}")]
    Other(String),
    /// The published plugin is of another type than the host loaded.
    #[error("plugin {name:?} is published as {published}, but the host loaded it as {service}")]
    TypeMismatch {
        /// The plugin's name.
        name: String,
        /// Its published type.
        published: String,
        /// The service the host called.
        service: String,
    },
}

impl From<hector_plugin_client::AddressError> for TargetError {
    fn from(e: hector_plugin_client::AddressError) -> Self {
        TargetError::Address {
            address: e.address,
            reason: e.reason,
        }
    }
}

/// Why `install` failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The endpoints file could not be used.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Why the go-plugin child could not run.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The host's environment does not fit (no or a foreign magic cookie, other versions).
    #[error(transparent)]
    Host(hector_plugin_sdk::SdkError),
    /// The socket could not be prepared, bound or announced.
    #[error("cannot serve: {0}")]
    Serve(hector_plugin_sdk::SdkError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}
