//! Which calls the network may make to the plugin.
//!
//! The plugin's lifecycle belongs to the launcher: it alone sends `Initialize` (with the
//! configuration from the mounted files) and `Shutdown`. A caller who could send its own
//! `Initialize` would reconfigure the plugin for every other agent (a prefix, or with a real
//! LLM plugin a base URL that receives everyone's prompts); one who could send `Shutdown`
//! would stop it. go-plugin's internal services (`plugin.GRPCController`,
//! `plugin.GRPCBroker`, `plugin.GRPCStdio`) are the host's side of the plugin protocol: they
//! stop the plugin, open connections on its behalf and stream its output.
//!
//! The rule is a short list of exceptions rather than a list of what may pass: refused are
//! `Initialize` and `Shutdown` of every `hector.plugin.*` service and every method of the
//! `plugin` package; everything else the plugin serves passes, including `hector.plugin`
//! methods the launcher has never heard of. Every plugin service starts with the same five
//! lifecycle RPCs, of which only these two change the plugin, while data-plane RPCs keep
//! being added (`ToolProvider` and `ReasoningStrategy` were designed after the others); an
//! allowlist would refuse each new RPC until the launcher learnt it.
//!
//! The decision needs the method a server will route the call to, and servers read `:path`
//! differently (tonic routes `/S/M?x` to `M`, grpc-go routes `S/M` without the leading slash).
//! So a path must be exactly `/package.Service/Method` in protobuf identifiers; anything else
//! is refused as well, since no gRPC client sends it and no reading of it is then ambiguous.
//! Reserved names are compared without regard to ASCII case, for the same reason.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::access::Denial;

/// gRPC's `PERMISSION_DENIED`.
pub const PERMISSION_DENIED: u8 = 7;
/// gRPC's `UNAUTHENTICATED`.
pub const UNAUTHENTICATED: u8 = 16;
/// gRPC's `UNAVAILABLE`.
pub const UNAVAILABLE: u8 = 14;

/// The lifecycle methods of `hector.plugin.*` services that only the launcher may call.
const RESERVED_METHODS: [&str; 2] = ["Initialize", "Shutdown"];
/// The package of go-plugin's internal services.
const GO_PLUGIN_PACKAGE: &str = "plugin";
/// The package of Hector's plugin services.
const HECTOR_PACKAGE: &str = "hector.plugin";
/// Longest method name quoted in a refusal or a log line.
const MAX_QUOTED: usize = 200;

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `Initialize` or `Shutdown` of a `hector.plugin` service: `service/method`.
    Lifecycle(String),
    /// A method of go-plugin's internal services: `service/method`.
    GoPlugin(String),
    /// A request whose `:path` is missing, repeated, or not `/package.Service/Method`.
    NotAMethod,
    /// A caller the launcher does not admit to `service/method` (see [`crate::access`]).
    Denied(String, Denial),
    /// A plugin call over plaintext where the plugin is served over TLS: `service/method`.
    Plaintext(String),
    /// A connection over the cap on spliced connections, refused whole with every call it
    /// carries (see [`crate::limit`]): the cap.
    ConnectionLimit(usize),
}

impl Refusal {
    /// What the caller is told (the gRPC status message).
    pub fn message(&self) -> String {
        match self {
            Refusal::Lifecycle(m) => format!(
                "{m} is reserved to the launcher: the plugin's lifecycle is not callable over the network"
            ),
            Refusal::GoPlugin(m) => format!(
                "{m} is reserved to the launcher: go-plugin's internal services are not callable over the network"
            ),
            Refusal::NotAMethod => {
                "refused by the launcher: the request's :path is not a gRPC method \
                                    (/package.Service/Method)"
                    .into()
            }
            Refusal::Denied(
                _,
                Denial::Unauthenticated(m) | Denial::NotAllowed(m) | Denial::Unavailable(m),
            ) => m.clone(),
            Refusal::Plaintext(m) => format!(
                "{m}: this plugin is served over TLS only (agents pin the certificate the operator \
                 publishes); plaintext connections reach only grpc.health.v1"
            ),
            Refusal::ConnectionLimit(max) => format!(
                "connection limit reached: this launcher splices at most {max} client connections \
                 at once; nothing sent on this connection was processed"
            ),
        }
    }

    /// The gRPC status code the caller gets.
    pub fn code(&self) -> u8 {
        match self {
            Refusal::Denied(_, Denial::Unauthenticated(_)) | Refusal::Plaintext(_) => {
                UNAUTHENTICATED
            }
            Refusal::Denied(_, Denial::Unavailable(_)) | Refusal::ConnectionLimit(_) => UNAVAILABLE,
            _ => PERMISSION_DENIED,
        }
    }

    /// The metrics label of this kind of refusal.
    fn kind(&self) -> usize {
        match self {
            Refusal::Lifecycle(_) => 0,
            Refusal::GoPlugin(_) => 1,
            Refusal::NotAMethod => 2,
            Refusal::Denied(_, Denial::Unauthenticated(_)) => 3,
            Refusal::Denied(_, Denial::NotAllowed(_)) => 4,
            Refusal::Denied(_, Denial::Unavailable(_)) => 5,
            Refusal::Plaintext(_) => 6,
            Refusal::ConnectionLimit(_) => 7,
        }
    }

    /// The refused method, for logs.
    pub fn method(&self) -> &str {
        match self {
            Refusal::Lifecycle(m)
            | Refusal::GoPlugin(m)
            | Refusal::Denied(m, _)
            | Refusal::Plaintext(m) => m,
            Refusal::NotAMethod => "(not a gRPC method path)",
            Refusal::ConnectionLimit(_) => "(a whole connection)",
        }
    }
}

/// Whether a request with this `:path` may reach the plugin.
pub fn check(path: &[u8]) -> Result<(), Refusal> {
    let Some((service, method)) = split_method(path) else {
        return Err(Refusal::NotAMethod);
    };
    let quoted = || {
        let mut m = format!("{service}/{method}");
        // Only identifier characters: cutting at any byte is cutting at a char boundary.
        m.truncate(MAX_QUOTED);
        m
    };
    if service.eq_ignore_ascii_case(GO_PLUGIN_PACKAGE) || in_package(service, GO_PLUGIN_PACKAGE) {
        return Err(Refusal::GoPlugin(quoted()));
    }
    if in_package(service, HECTOR_PACKAGE)
        && RESERVED_METHODS
            .iter()
            .any(|r| r.eq_ignore_ascii_case(method))
    {
        return Err(Refusal::Lifecycle(quoted()));
    }
    Ok(())
}

/// Whether `service` is in `package` or one of its sub-packages.
fn in_package(service: &str, package: &str) -> bool {
    service.len() > package.len() + 1
        && service.as_bytes()[package.len()] == b'.'
        && service[..package.len()].eq_ignore_ascii_case(package)
}

/// `(service, method)` of a canonical gRPC path `/a.b.Service/Method`, `None` otherwise.
fn split_method(path: &[u8]) -> Option<(&str, &str)> {
    let path = std::str::from_utf8(path.strip_prefix(b"/")?).ok()?;
    let (service, method) = path.split_once('/')?;
    (service.split('.').all(is_identifier) && is_identifier(method)).then_some((service, method))
}

/// A protobuf identifier: a letter or `_`, then letters, digits and `_`.
fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Metrics labels of the kinds of refusal, in [`Refusal::kind`] order.
const KINDS: [&str; 8] = [
    "lifecycle",
    "go_plugin",
    "not_a_method",
    "unauthenticated",
    "not_allowed",
    "keys_unavailable",
    "plaintext",
    "connection_limit",
];

/// Refusals since the launcher started, in every connection and mode, by kind.
static REFUSED: [AtomicU64; KINDS.len()] = [const { AtomicU64::new(0) }; KINDS.len()];
/// Refusals of every kind, for the log line.
static REFUSED_ALL: AtomicU64 = AtomicU64::new(0);
/// Calls admitted by the caller check since the launcher started.
static ADMITTED: AtomicU64 = AtomicU64::new(0);

/// Counts and logs a refusal. Only the method, the caller's address and the reason are
/// logged, never what the request carried.
pub fn record(refusal: &Refusal, peer: Option<SocketAddr>) {
    REFUSED[refusal.kind()].fetch_add(1, Ordering::Relaxed);
    let refused_total = REFUSED_ALL.fetch_add(1, Ordering::Relaxed) + 1;
    let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
    match refusal {
        Refusal::Denied(..) | Refusal::Plaintext(_) => tracing::warn!(
            method = refusal.method(),
            %peer,
            reason = KINDS[refusal.kind()],
            refused_total,
            message = %refusal.message(),
            "refused a call from the network"
        ),
        Refusal::ConnectionLimit(_) => tracing::warn!(
            %peer,
            reason = KINDS[refusal.kind()],
            refused_total,
            message = %refusal.message(),
            "refused a connection to the plugin (HTTP/2 GOAWAY, REFUSED_STREAM)"
        ),
        _ => tracing::warn!(
            method = refusal.method(),
            %peer,
            refused_total,
            "refused a call from the network: reserved to the launcher"
        ),
    }
}

/// Counts a call whose caller was admitted.
pub fn record_admitted() {
    ADMITTED.fetch_add(1, Ordering::Relaxed);
}

/// The counters in the Prometheus text format.
pub fn render_metrics() -> String {
    let mut out = String::from(
        "# HELP hector_launcher_refused_total Calls refused by the launcher, by reason (connection_limit: whole connections).\n\
         # TYPE hector_launcher_refused_total counter\n",
    );
    for (kind, counter) in KINDS.iter().zip(REFUSED.iter()) {
        out.push_str(&format!(
            "hector_launcher_refused_total{{reason=\"{kind}\"}} {}\n",
            counter.load(Ordering::Relaxed)
        ));
    }
    out.push_str(&format!(
        "# HELP hector_launcher_admitted_total Calls whose caller token was verified and allowed.\n\
         # TYPE hector_launcher_admitted_total counter\n\
         hector_launcher_admitted_total {}\n",
        ADMITTED.load(Ordering::Relaxed)
    ));
    out
}

/// Marks a request that came over plaintext on a launcher that serves plugins over TLS.
#[derive(Clone, Copy, Debug)]
pub struct Plaintext;

/// The client's address, carried in request extensions to the request forwarder.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_lifecycle_and_go_plugin_internals() {
        for (path, expected) in [
            (
                "/hector.plugin.LLMProvider/Initialize",
                Refusal::Lifecycle("hector.plugin.LLMProvider/Initialize".into()),
            ),
            (
                "/hector.plugin.DatabaseProvider/Shutdown",
                Refusal::Lifecycle("hector.plugin.DatabaseProvider/Shutdown".into()),
            ),
            (
                "/hector.plugin.ToolProvider/initialize",
                Refusal::Lifecycle("hector.plugin.ToolProvider/initialize".into()),
            ),
            (
                "/Hector.Plugin.v2.NewProvider/SHUTDOWN",
                Refusal::Lifecycle("Hector.Plugin.v2.NewProvider/SHUTDOWN".into()),
            ),
            (
                "/plugin.GRPCController/Shutdown",
                Refusal::GoPlugin("plugin.GRPCController/Shutdown".into()),
            ),
            (
                "/plugin.GRPCBroker/StartStream",
                Refusal::GoPlugin("plugin.GRPCBroker/StartStream".into()),
            ),
            (
                "/plugin.GRPCStdio/StreamStdio",
                Refusal::GoPlugin("plugin.GRPCStdio/StreamStdio".into()),
            ),
            (
                "/plugin/Anything",
                Refusal::GoPlugin("plugin/Anything".into()),
            ),
        ] {
            assert_eq!(check(path.as_bytes()), Err(expected), "{path}");
        }
        let message = check(b"/hector.plugin.LLMProvider/Initialize")
            .err()
            .map(|r| r.message());
        assert_eq!(
            message.as_deref(),
            Some(
                "hector.plugin.LLMProvider/Initialize is reserved to the launcher: the plugin's \
                 lifecycle is not callable over the network"
            )
        );
    }

    #[test]
    fn passes_the_data_plane_and_unknown_methods() {
        for path in [
            "/hector.plugin.LLMProvider/Generate",
            "/hector.plugin.LLMProvider/GenerateStreaming",
            "/hector.plugin.LLMProvider/GetModelInfo",
            "/hector.plugin.LLMProvider/Health",
            "/hector.plugin.LLMProvider/GetManifest",
            "/hector.plugin.LLMProvider/GetStatus",
            "/hector.plugin.EmbedderProvider/Embed",
            "/hector.plugin.EmbedderProvider/GetEmbedderInfo",
            "/hector.plugin.DatabaseProvider/DeleteCollection",
            "/hector.plugin.ToolProvider/ExecuteTool",
            "/hector.plugin.ReasoningStrategy/NextStep",
            "/hector.plugin.LLMProvider/SomeFutureRpc",
            "/hector.plugin.LLMProvider/InitializeCache",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/plugins.Other/Shutdown",
            "/myplugin.Service/Initialize",
            "/hector.pluginx.LLMProvider/Initialize",
            "/Simple/Initialize",
        ] {
            assert_eq!(check(path.as_bytes()), Ok(()), "{path}");
        }
    }

    #[test]
    fn refuses_paths_that_servers_read_differently() {
        for path in [
            &b""[..],
            b"/",
            b"hector.plugin.LLMProvider/Initialize",
            b"hector.plugin.LLMProvider/Generate",
            b"/hector.plugin.LLMProvider/Initialize?x=1",
            b"/hector.plugin.LLMProvider/Generate?x=1",
            b"//hector.plugin.LLMProvider/Initialize",
            b"/hector.plugin.LLMProvider/Initialize/",
            b"/a/hector.plugin.LLMProvider/Initialize",
            b"/hector.plugin.LLMProvider/%49nitialize",
            b"/hector.plugin..LLMProvider/Generate",
            b"/.hector.plugin.LLMProvider/Generate",
            b"/hector.plugin.LLMProvider/",
            b"/hector.plugin.LLMProvider/Gen erate",
            b"/hector.plugin.LLMProvider/1Generate",
            b"/hector.plugin.LLMProvider/Initialize\0",
            b"/hector.plugin.LLMProvider/Gen\xc3\xa9rate",
            b"/hector.plugin.LLMProvider/\xff",
            b"*",
        ] {
            assert_eq!(check(path), Err(Refusal::NotAMethod), "{path:?}");
        }
    }

    #[test]
    fn quotes_at_most_a_bounded_name() {
        let long = format!("/plugin.{}/Shutdown", "A".repeat(10_000));
        let Err(refusal) = check(long.as_bytes()) else {
            panic!("refused")
        };
        assert_eq!(refusal.method().len(), MAX_QUOTED);
    }
}
