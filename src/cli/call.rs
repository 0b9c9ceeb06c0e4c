//! `hectorctl call`: call a plugin over gRPC — directly at an address, or a plugin the
//! operator published, found through the namespace's ConfigMap and called balanced per call
//! over its healthy endpoints.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hector_plugin_client::{Directory, Served};
use hector_plugin_sdk::PluginType;
use hector_plugin_sdk::proto::{
    EmbedRequest, Empty, GenerateRequest, HealthRequest, HealthResponse, ManifestRequest,
    ManifestResponse, Message, SearchRequest, database_provider_client::DatabaseProviderClient,
    embedder_provider_client::EmbedderProviderClient, llm_provider_client::LlmProviderClient,
    reasoning_strategy_client::ReasoningStrategyClient, stream_chunk::ChunkType,
    tool_provider_client::ToolProviderClient,
};
use tonic::client::GrpcService;
use tonic::codegen::{Body as HttpBody, Bytes, StdError};
use tonic_health::pb::health_client::HealthClient;

use super::endpoints::{SourceArgs, kube_client};
use super::output;

/// The environment variable that can name `--address`.
pub const ADDRESS_ENV: &str = "HECTOR_PLUGIN_ADDRESS";

/// Arguments of `hectorctl call`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(true).args(["address", "plugin"])))]
pub struct CallArgs {
    /// Call one endpoint directly: HOST:PORT, http://HOST:PORT or unix:/path.
    #[arg(long, short = 'a', env = ADDRESS_ENV)]
    pub address: Option<String>,
    /// Call a plugin the operator published: found through the namespace's hector-plugins
    /// ConfigMap (or --endpoints-file) and called balanced over its healthy endpoints; the
    /// endpoint that served each call is printed on stderr.
    #[arg(long, short = 'p', value_name = "NAME")]
    pub plugin: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Plugin type (for health, info and manifest); default llm_provider, or with --plugin
    /// the published type.
    #[arg(long = "type", short = 't', value_parser = parse_type)]
    pub plugin_type: Option<PluginType>,
    /// Seconds to wait for connection and answer (per call).
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Make the call N times in a row and print how many each endpoint served.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub repeat: u32,
    #[command(subcommand)]
    pub method: Method,
}

fn parse_type(s: &str) -> Result<PluginType, String> {
    s.parse()
        .map_err(|e: hector_plugin_sdk::plugin_type::UnknownPluginType| e.to_string())
}

/// What to call.
#[derive(clap::Subcommand)]
pub enum Method {
    /// LLM: answer a user message (Generate).
    Generate {
        /// The user message (words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Optional system prompt.
        #[arg(long)]
        system: Option<String>,
    },
    /// LLM: stream an answer (GenerateStreaming), printing chunks as they arrive.
    Stream {
        /// The user message (words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Embedder: embed text (Embed).
    Embed {
        /// The text (words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Vector database: nearest vectors (Search).
    Search {
        /// Collection to search.
        collection: String,
        /// Query vector, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        vector: Vec<f32>,
        /// Number of results.
        #[arg(long, default_value_t = 5)]
        top_k: i32,
    },
    /// grpc.health.v1 status and the plugin's own Health answer.
    Health,
    /// Model or embedder information.
    Info,
    /// The plugin's manifest (GetManifest).
    Manifest,
}

fn user_request(text: String, system: Option<String>) -> GenerateRequest {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message {
            role: "system".into(),
            content: s,
            ..Default::default()
        });
    }
    messages.push(Message {
        role: "user".into(),
        content: text,
        ..Default::default()
    });
    GenerateRequest {
        messages,
        tools: vec![],
    }
}

/// A gRPC transport the generated clients accept: a tonic `Channel` for direct calls, a
/// balanced [`hector_plugin_client::PluginChannel`] for published plugins.
pub trait Transport:
    GrpcService<
        tonic::body::Body,
        Error: Into<StdError>,
        ResponseBody: HttpBody<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
    > + Clone
{
}

impl<T> Transport for T where
    T: GrpcService<
            tonic::body::Body,
            Error: Into<StdError>,
            ResponseBody: HttpBody<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        > + Clone
{
}

/// Runs `hectorctl call`.
pub async fn run(args: CallArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout);
    // An address from the environment gives way to --plugin; one on the command line clashes.
    let from_env = std::env::var(ADDRESS_ENV).ok();
    let address = args
        .address
        .clone()
        .filter(|a| args.plugin.is_none() || from_env.as_deref() != Some(a.as_str()));
    match (&args.plugin, address) {
        (Some(_), Some(_)) => {
            anyhow::bail!(
                "--address and --plugin exclude each other: call one endpoint or a published plugin"
            )
        }
        (Some(name), None) => {
            let directory = match &args.source.endpoints_file {
                Some(file) => Directory::follow_file(file).await?,
                None => {
                    let (client, namespace) = kube_client(args.source.namespace.as_deref()).await?;
                    Directory::watch_configmap(client, &namespace, &args.source.configmap).await?
                }
            };
            let channel = directory.plugin(name).await?;
            let published = channel.plugin_type();
            if let Some(asked) = args.plugin_type
                && asked != published
            {
                anyhow::bail!("plugin {name:?} is published as {published}, not {asked}");
            }
            repeat(channel, published, &args, name).await
        }
        (None, Some(address)) => {
            if args.source.endpoints_file.is_some() || args.source.namespace.is_some() {
                anyhow::bail!("--namespace and --endpoints-file go with --plugin, not --address");
            }
            let channel = connect(&address, timeout).await?;
            let plugin_type = args.plugin_type.unwrap_or(PluginType::LlmProvider);
            repeat(channel, plugin_type, &args, &address).await
        }
        (None, None) => anyhow::bail!("give --address or --plugin"),
    }
}

/// Opens a channel to `address` (`HOST:PORT`, `http://HOST:PORT` or `unix:/path`). An address
/// that cannot be understood is called invalid; one that can but does not answer is named
/// with the reason, e.g. "cannot connect to 127.0.0.1:1: connection refused".
async fn connect(address: &str, timeout: Duration) -> anyhow::Result<tonic::transport::Channel> {
    if address.starts_with("unix:") {
        return hector_plugin_sdk::connect(address, timeout)
            .await
            .map_err(|e| match e {
                hector_plugin_sdk::SdkError::Address { reason, .. }
                    if reason.starts_with("cannot connect") =>
                {
                    let reason = reason
                        .trim_start_matches("cannot connect")
                        .trim_start_matches(": ");
                    anyhow::anyhow!("cannot connect to {address}: {reason}")
                }
                e => e.into(),
            });
    }
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| anyhow::anyhow!("invalid address {address:?}: {e}"))?;
    endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to {address}: {}",
                connect_reason(&e, timeout)
            )
        })
}

/// Why a connection failed, in a person's words where the operating system's reason is
/// known ("connection refused"), else the transport error's causes, each once.
fn connect_reason(e: &(dyn std::error::Error + 'static), timeout: Duration) -> String {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{
                ConnectionRefused, HostUnreachable, NetworkUnreachable, TimedOut,
            };
            match io.kind() {
                ConnectionRefused => return "connection refused".into(),
                TimedOut => return format!("no connection within {}s", timeout.as_secs()),
                HostUnreachable => return "host unreachable".into(),
                NetworkUnreachable => return "network unreachable".into(),
                _ => {}
            }
        }
        cause = c.source();
    }
    output::chain_text(std::iter::successors(Some(e), |c| c.source()))
}

/// What one call gave: whether it succeeded (health: healthy) and where it was served.
struct Outcome {
    ok: bool,
    served: Option<Served>,
}

/// Makes the call `args.repeat` times, each within the timeout; with more than one, failures
/// are counted rather than fatal, and where the calls landed is summed up at the end.
async fn repeat<T: Transport>(
    channel: T,
    plugin_type: PluginType,
    args: &CallArgs,
    target: &str,
) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout);
    let once = || async {
        tokio::time::timeout(timeout, call(channel.clone(), plugin_type, &args.method))
            .await
            .with_context(|| format!("no answer from {target} within {}s", args.timeout))?
    };
    if args.repeat == 1 {
        let outcome = once().await?;
        if let Some(s) = outcome.served {
            output::note(format_args!("served by {}", s.endpoint));
        }
        return Ok(exit(outcome.ok));
    }
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0usize;
    for i in 1..=args.repeat {
        match once().await {
            Ok(outcome) => {
                let at = outcome
                    .served
                    .map_or_else(|| target.to_string(), |s| s.endpoint.to_string());
                *landed.entry(at).or_default() += 1;
                failed += usize::from(!outcome.ok);
            }
            // Nobody reads the answers any more: stop.
            Err(e) if output::is_stdout_closed(&e) => return Err(e),
            Err(e) => {
                output::note(format_args!("call {i} failed: {}", output::error_text(&e)));
                failed += 1;
            }
        }
    }
    output::note(format_args!("{} calls, {failed} failed", args.repeat));
    for (endpoint, n) in &landed {
        output::note(format_args!("served by {endpoint}: {n}"));
    }
    Ok(exit(failed == 0))
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs `$body` with `$client` bound to the generated client of `$plugin_type`.
macro_rules! per_type {
    ($plugin_type:expr, $channel:expr, |$client:ident| $body:expr) => {
        match $plugin_type {
            PluginType::LlmProvider => {
                let mut $client = LlmProviderClient::new($channel);
                $body
            }
            PluginType::DatabaseProvider => {
                let mut $client = DatabaseProviderClient::new($channel);
                $body
            }
            PluginType::EmbedderProvider => {
                let mut $client = EmbedderProviderClient::new($channel);
                $body
            }
            PluginType::ToolProvider => {
                let mut $client = ToolProviderClient::new($channel);
                $body
            }
            PluginType::ReasoningStrategy => {
                let mut $client = ReasoningStrategyClient::new($channel);
                $body
            }
        }
    };
}

/// The plugin's own `Health`, on the service of its type.
async fn own_health<T: Transport>(
    channel: T,
    plugin_type: PluginType,
) -> Result<HealthResponse, tonic::Status> {
    per_type!(plugin_type, channel, |c| c
        .health(HealthRequest {})
        .await
        .map(tonic::Response::into_inner))
}

/// The plugin's `GetManifest`, on the service of its type.
async fn manifest<T: Transport>(
    channel: T,
    plugin_type: PluginType,
) -> Result<ManifestResponse, tonic::Status> {
    per_type!(plugin_type, channel, |c| c
        .get_manifest(ManifestRequest {})
        .await
        .map(tonic::Response::into_inner))
}

fn served_by<M>(r: &tonic::Response<M>) -> Option<Served> {
    r.extensions().get::<Served>().copied()
}

/// Makes one call and prints its answer.
async fn call<T: Transport>(
    channel: T,
    plugin_type: PluginType,
    method: &Method,
) -> anyhow::Result<Outcome> {
    let mut served = None;
    let mut out = output::stdout();
    match method {
        Method::Generate { text, system } => {
            let r = LlmProviderClient::new(channel)
                .generate(user_request(text.join(" "), system.clone()))
                .await?;
            served = served_by(&r);
            let r = r.into_inner();
            // One line at least, and never two newlines for a text that ends with one.
            out.write_str(&r.text)?;
            if r.text.is_empty() {
                writeln!(out)?;
            }
            out.end_line()?;
            for t in r.tool_calls {
                writeln!(out, "tool call {} {}({})", t.id, t.name, t.arguments_json)?;
            }
            output::note(format_args!("tokens used: {}", r.tokens_used));
        }
        Method::Stream { text } => {
            let r = LlmProviderClient::new(channel)
                .generate_streaming(user_request(text.join(" "), None))
                .await?;
            served = served_by(&r);
            let mut stream = r.into_inner();
            // Every line ends before anything else is printed, on stdout or on stderr: the
            // text streamed so far, a tool call, the tokens line and an error stand apart.
            while let Some(chunk) = stream.message().await? {
                match ChunkType::try_from(chunk.r#type) {
                    Ok(ChunkType::Text) => out.write_str(&chunk.text)?,
                    Ok(ChunkType::ToolCall) => {
                        if let Some(t) = chunk.tool_call {
                            out.end_line()?;
                            writeln!(out, "tool call {} {}({})", t.id, t.name, t.arguments_json)?;
                        }
                    }
                    Ok(ChunkType::Done) => {
                        out.end_line()?;
                        output::note(format_args!("tokens used: {}", chunk.tokens_used));
                    }
                    Ok(ChunkType::Error) | Err(_) => {
                        anyhow::bail!("plugin error: {}", chunk.error)
                    }
                }
            }
            out.end_line()?;
        }
        Method::Embed { text } => {
            let r = EmbedderProviderClient::new(channel)
                .embed(EmbedRequest {
                    text: text.join(" "),
                })
                .await?;
            served = served_by(&r);
            let r = r.into_inner();
            if !r.error.is_empty() {
                anyhow::bail!("plugin error: {}", r.error);
            }
            writeln!(out, "dimension: {}", r.vector.len())?;
            writeln!(out, "vector: {:?}", r.vector)?;
        }
        Method::Search {
            collection,
            vector,
            top_k,
        } => {
            let r = DatabaseProviderClient::new(channel)
                .search(SearchRequest {
                    collection: collection.clone(),
                    vector: vector.clone(),
                    top_k: *top_k,
                })
                .await?;
            served = served_by(&r);
            let r = r.into_inner();
            if !r.error.is_empty() {
                anyhow::bail!("plugin error: {}", r.error);
            }
            for hit in r.results {
                writeln!(out, "{:.4}  {}  {}", hit.score, hit.id, hit.content)?;
            }
        }
        Method::Health => {
            // Two calls: through a balanced channel each may be served by another endpoint.
            let standard = HealthClient::new(channel.clone())
                .check(tonic_health::pb::HealthCheckRequest {
                    service: plugin_type.service_name().into(),
                })
                .await;
            let own = own_health(channel, plugin_type).await?;
            match standard {
                Ok(r) => writeln!(
                    out,
                    "grpc.health.v1: {:?}",
                    tonic_health::pb::health_check_response::ServingStatus::try_from(
                        r.into_inner().status
                    )
                    .unwrap_or(tonic_health::pb::health_check_response::ServingStatus::Unknown)
                )?,
                Err(s) => writeln!(out, "grpc.health.v1: unavailable ({})", s.message())?,
            }
            writeln!(
                out,
                "plugin: healthy={} message={:?}",
                own.healthy, own.message
            )?;
            return Ok(Outcome {
                ok: own.healthy,
                served: None,
            });
        }
        Method::Info => match plugin_type {
            PluginType::LlmProvider => {
                let r = LlmProviderClient::new(channel)
                    .get_model_info(Empty {})
                    .await?;
                served = served_by(&r);
                let i = r.into_inner();
                writeln!(
                    out,
                    "model: {}\nmax tokens: {}\ntemperature: {}",
                    i.model_name, i.max_tokens, i.temperature
                )?;
            }
            PluginType::EmbedderProvider => {
                let r = EmbedderProviderClient::new(channel)
                    .get_embedder_info(Empty {})
                    .await?;
                served = served_by(&r);
                let i = r.into_inner();
                writeln!(out, "model: {}\ndimension: {}", i.model_name, i.dimension)?;
            }
            other => {
                anyhow::bail!("`info` is for llm_provider and embedder_provider, not {other}")
            }
        },
        Method::Manifest => {
            let m = manifest(channel, plugin_type).await?;
            writeln!(
                out,
                "name: {}\nversion: {}\ntype: {}\nprotocol: {}\nhector_version: {}\nauthor: {}\ndescription: {}",
                m.name, m.version, m.r#type, m.protocol, m.hector_version, m.author, m.description
            )?;
            let mut caps: Vec<_> = m.capabilities.into_iter().collect();
            caps.sort();
            for (k, v) in caps {
                writeln!(out, "capability {k}: {v}")?;
            }
        }
    }
    Ok(Outcome { ok: true, served })
}
