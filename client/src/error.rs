//! Errors, each carrying what a person needs to act on it.

use std::path::PathBuf;

use hector_plugin_sdk::endpoints::EndpointsError;

/// An address that is not `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {address:?}: {reason}")]
pub struct AddressError {
    /// The address as written.
    pub address: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why published plugins cannot be found or called.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An address is not `host:port`.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The endpoints file cannot be read.
    #[error("cannot read the published endpoints file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoints document is not valid.
    #[error("{place}: {source}")]
    Parse {
        /// Where the document came from (a file, or a ConfigMap `namespace/name`).
        place: String,
        /// Why it is not valid.
        source: EndpointsError,
    },
    /// The ConfigMap cannot be watched (RBAC, API server unreachable, …).
    #[cfg(feature = "kube")]
    #[error("cannot watch ConfigMap {namespace}/{name}: {source}")]
    Watch {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The watch error.
        source: Box<kube::runtime::watcher::Error>,
    },
    /// The API server did not answer the first list of the ConfigMap in time.
    #[cfg(feature = "kube")]
    #[error("no answer from the Kubernetes API for ConfigMap {namespace}/{name} within {secs}s")]
    WatchTimeout {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The time waited.
        secs: u64,
    },
    /// The plugin is not published.
    #[error(
        "no plugin named {name:?} is published in {place} (published: {}); it is unhealthy or absent",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    NotPublished {
        /// The name looked for.
        name: String,
        /// Where it was looked for.
        place: String,
        /// The names that are published.
        known: Vec<String>,
    },
    /// The plugin did not become published in time.
    #[error("plugin {name:?} was not published in {place} within {secs}s")]
    NotPublishedInTime {
        /// The name waited for.
        name: String,
        /// Where.
        place: String,
        /// The time waited.
        secs: u64,
    },
    /// The published type is not one this library knows.
    #[error("plugin {name:?} is published with unknown type {published:?}")]
    UnknownType {
        /// The plugin.
        name: String,
        /// Its published type.
        published: String,
    },
    /// A typed client was asked for a plugin of another type.
    #[error("plugin {name:?} is of type {actual}, not {wanted}")]
    TypeMismatch {
        /// The plugin.
        name: String,
        /// Its type.
        actual: hector_plugin_sdk::PluginType,
        /// The type of the client asked for.
        wanted: hector_plugin_sdk::PluginType,
    },
    /// The caller's token file cannot be used.
    #[error(transparent)]
    Token(#[from] hector_plugin_sdk::token::TokenError),
    /// None of the addresses could be resolved.
    #[error("cannot resolve remote plugin {label}: {}", reasons.join("; "))]
    Unresolvable {
        /// The plugin, as named in messages.
        label: String,
        /// Each address with its reason.
        reasons: Vec<String>,
    },
}
