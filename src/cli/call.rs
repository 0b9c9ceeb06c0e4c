//! `hectorctl call`: call a plugin over gRPC — directly at an address, or a plugin the
//! operator published, found through the namespace's ConfigMap and called balanced per call
//! over its healthy endpoints. One method per RPC of every plugin type.

use std::collections::BTreeMap;
use std::time::Duration;

use hector_plugin_client::{Directory, Served};
use hector_plugin_sdk::PluginType;
use hector_plugin_sdk::proto::{
    CreateCollectionRequest, DeleteCollectionRequest, DeleteRequest, EmbedRequest, Empty,
    GenerateRequest, HealthRequest, HealthResponse, ManifestRequest, ManifestResponse, Message,
    ReasoningRequest, SearchRequest, StatusRequest, StatusResponse, ToolCall, UpsertRequest,
    database_provider_client::DatabaseProviderClient,
    embedder_provider_client::EmbedderProviderClient, llm_provider_client::LlmProviderClient,
    reasoning_strategy_client::ReasoningStrategyClient, tool_provider_client::ToolProviderClient,
};
use tonic::client::GrpcService;
use tonic::codegen::{Body as HttpBody, Bytes, StdError};
use tonic_health::pb::health_client::HealthClient;

use super::answer::{self, Answer, Chunk, WithServed};
use super::cluster::ClusterArgs;
use super::error::{CliError, Exit, classify};
use super::output::{self, Format};

/// The environment variable that can name `--address`.
pub const ADDRESS_ENV: &str = "HECTOR_PLUGIN_ADDRESS";

/// Arguments of `hectorctl call`. The target flags may come before or after the method.
#[derive(clap::Args)]
pub struct CallArgs {
    /// Call one endpoint directly: HOST:PORT, http://HOST:PORT or unix:/path.
    #[arg(long, short = 'a', env = ADDRESS_ENV, global = true, help_heading = "Target")]
    pub address: Option<String>,
    /// Call a plugin the operator published: found through the namespace's hector-plugins
    /// ConfigMap (or --endpoints-file) and called balanced over its healthy endpoints; the
    /// endpoint that served each call is printed on stderr.
    #[arg(
        long,
        short = 'p',
        value_name = "NAME",
        global = true,
        help_heading = "Target"
    )]
    pub plugin: Option<String>,
    /// Plugin type, for health, info, manifest and status at an --address (default: the
    /// method's type, else llm_provider); with --plugin the published type.
    #[arg(long = "type", short = 't', value_parser = parse_type, global = true, help_heading = "Target")]
    pub plugin_type: Option<PluginType>,
    /// Seconds to wait for connection and answer (per call), 1 to 3600.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", global = true,
          value_parser = clap::value_parser!(u64).range(1..=3600), help_heading = "Target")]
    pub timeout: u64,
    /// Make the call N times in a row and print how many each endpoint served.
    #[arg(long, default_value_t = 1, value_name = "N", global = true,
          value_parser = clap::value_parser!(u32).range(1..=100_000), help_heading = "Target")]
    pub repeat: u32,
    #[command(subcommand)]
    pub method: Method,
}

fn parse_type(s: &str) -> Result<PluginType, String> {
    s.parse()
        .map_err(|e: hector_plugin_sdk::plugin_type::UnknownPluginType| e.to_string())
}

fn parse_json_object(s: &str) -> Result<String, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Object(_)) => Ok(s.to_string()),
        Ok(_) => Err("the arguments must be a JSON object, e.g. '{\"city\":\"Oslo\"}'".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// What to call.
#[derive(clap::Subcommand)]
pub enum Method {
    /// LLM: answer a user message (Generate). Tokens used go to stderr.
    Generate {
        /// The user message (words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Optional system prompt.
        #[arg(long)]
        system: Option<String>,
    },
    /// LLM: stream an answer (GenerateStreaming), printing chunks as they arrive (with -o
    /// json one line per chunk).
    Stream {
        /// The user message (words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Optional system prompt.
        #[arg(long)]
        system: Option<String>,
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
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            allow_hyphen_values = true
        )]
        vector: Vec<f32>,
        /// Number of results, 1 to 10000.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=10_000))]
        top_k: i32,
    },
    /// Vector database: insert or replace one vector (Upsert).
    Upsert {
        /// The collection.
        collection: String,
        /// The vector's id.
        id: String,
        /// The vector, comma separated.
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            allow_hyphen_values = true
        )]
        vector: Vec<f32>,
        /// Metadata, KEY=VALUE (repeatable).
        #[arg(long, value_parser = crate::convert::parse_key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Vector database: remove one vector (Delete).
    Delete {
        /// The collection.
        collection: String,
        /// The vector's id.
        id: String,
    },
    /// Vector database: create a collection (CreateCollection).
    CreateCollection {
        /// The collection.
        collection: String,
        /// Dimension of its vectors, at least 1.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        vector_size: u64,
    },
    /// Vector database: drop a collection (DeleteCollection).
    DeleteCollection {
        /// The collection.
        collection: String,
    },
    /// Tool provider: the tools it offers (ListTools).
    Tools,
    /// Tool provider: run one tool (ExecuteTool).
    Execute {
        /// The tool's name.
        tool: String,
        /// Its arguments, a JSON object.
        #[arg(long, default_value = "{}", value_name = "JSON", value_parser = parse_json_object)]
        args: String,
        /// The call's id, echoed in the result.
        #[arg(long, default_value = "call-1")]
        id: String,
    },
    /// Reasoning strategy: the agent's next step for a user message (NextStep).
    NextStep {
        /// The user message (words are joined with spaces).
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
        /// Optional system prompt.
        #[arg(long)]
        system: Option<String>,
        /// The iteration of the task (0 for its first step).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true,
              value_parser = clap::value_parser!(i32).range(0..))]
        iteration: i32,
        /// An entry of the request's context for the strategy, KEY=VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE", value_parser = crate::convert::parse_key_value)]
        set: Vec<(String, String)>,
    },
    /// grpc.health.v1 status and the plugin's own Health answer; exits 1 when unhealthy.
    Health,
    /// Model, embedder or strategy information (GetModelInfo, GetEmbedderInfo,
    /// GetStrategyInfo).
    Info,
    /// The plugin's manifest (GetManifest).
    Manifest,
    /// The plugin's lifecycle state (GetStatus).
    Status,
}

impl Method {
    /// The method's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Generate { .. } => "generate",
            Self::Stream { .. } => "stream",
            Self::Embed { .. } => "embed",
            Self::Search { .. } => "search",
            Self::Upsert { .. } => "upsert",
            Self::Delete { .. } => "delete",
            Self::CreateCollection { .. } => "create-collection",
            Self::DeleteCollection { .. } => "delete-collection",
            Self::Tools => "tools",
            Self::Execute { .. } => "execute",
            Self::NextStep { .. } => "next-step",
            Self::Health => "health",
            Self::Info => "info",
            Self::Manifest => "manifest",
            Self::Status => "status",
        }
    }

    /// The plugin type whose service has this method; `None` for those every type has.
    pub fn service_type(&self) -> Option<PluginType> {
        match self {
            Self::Generate { .. } | Self::Stream { .. } => Some(PluginType::LlmProvider),
            Self::Embed { .. } => Some(PluginType::EmbedderProvider),
            Self::Search { .. }
            | Self::Upsert { .. }
            | Self::Delete { .. }
            | Self::CreateCollection { .. }
            | Self::DeleteCollection { .. } => Some(PluginType::DatabaseProvider),
            Self::Tools | Self::Execute { .. } => Some(PluginType::ToolProvider),
            Self::NextStep { .. } => Some(PluginType::ReasoningStrategy),
            Self::Health | Self::Info | Self::Manifest | Self::Status => None,
        }
    }
}

/// The plugin type to call `method` as: the one the plugin has (`known`, published or given
/// with --type), which the method must fit; else the method's own; else llm_provider.
pub fn call_type(
    method: &Method,
    known: Option<PluginType>,
    whose: &str,
) -> Result<PluginType, CliError> {
    match (method.service_type(), known) {
        (Some(wanted), Some(actual)) if wanted != actual => Err(CliError::usage(format!(
            "`{}` is a call of {wanted} plugins; {whose} {actual}",
            method.name()
        ))),
        (_, Some(actual)) => {
            if matches!(method, Method::Info)
                && matches!(
                    actual,
                    PluginType::DatabaseProvider | PluginType::ToolProvider
                )
            {
                return Err(CliError::usage(format!(
                    "`info` is for llm_provider, embedder_provider and reasoning_strategy \
                     plugins, not {actual}{}",
                    if actual == PluginType::ToolProvider {
                        " (its tools: `tools`)"
                    } else {
                        ""
                    }
                )));
            }
            Ok(actual)
        }
        (Some(wanted), None) => Ok(wanted),
        (None, None) => Ok(PluginType::LlmProvider),
    }
}

fn user_messages(text: String, system: Option<String>) -> Vec<Message> {
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
    messages
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
pub async fn run(args: CallArgs, cluster: &ClusterArgs, format: Format) -> anyhow::Result<Exit> {
    let timeout = Duration::from_secs(args.timeout);
    // An address from the environment gives way to --plugin; one on the command line clashes.
    let from_env = std::env::var(ADDRESS_ENV).ok();
    let address = args
        .address
        .clone()
        .filter(|a| args.plugin.is_none() || from_env.as_deref() != Some(a.as_str()));
    match (&args.plugin, address) {
        (Some(_), Some(_)) => Err(CliError::usage(
            "--address and --plugin exclude each other: call one endpoint or a published plugin",
        )
        .into()),
        (Some(name), None) => {
            cluster.refuse_api_flags_with_file()?;
            let directory = match &cluster.endpoints_file {
                Some(file) => Directory::follow_file(file).await?,
                None => {
                    let (client, namespace) = cluster.client().await?;
                    Directory::watch_configmap(client, &namespace, cluster.configmap()).await?
                }
            };
            let channel = directory.plugin(name).await?;
            let published = channel.plugin_type();
            if let Some(asked) = args.plugin_type
                && asked != published
            {
                return Err(CliError::usage(format!(
                    "plugin {name:?} is published as {published}, not {asked}"
                ))
                .into());
            }
            let plugin_type = call_type(
                &args.method,
                Some(published),
                &format!("plugin {name:?} is published as"),
            )?;
            repeat(channel, plugin_type, &args, name, format).await
        }
        (None, Some(address)) => {
            let flags = [
                (cluster.namespace.is_some(), "--namespace"),
                (cluster.endpoints_file.is_some(), "--endpoints-file"),
                (cluster.configmap.is_some(), "--configmap"),
                (cluster.kubeconfig.is_some(), "--kubeconfig"),
                (cluster.context.is_some(), "--context"),
            ];
            if let Some((_, flag)) = flags.iter().find(|(given, _)| *given) {
                return Err(CliError::usage(format!(
                    "{flag} goes with --plugin, not --address: an address is called directly"
                ))
                .into());
            }
            let plugin_type = call_type(&args.method, args.plugin_type, "--type says")?;
            let channel = connect(&address, timeout).await?;
            repeat(channel, plugin_type, &args, &address, format).await
        }
        (None, None) => Err(CliError::usage(
            "give --address or --plugin: the endpoint or the published plugin to call",
        )
        .into()),
    }
}

/// Opens a channel to `address` (`HOST:PORT`, `http://HOST:PORT` or `unix:/path`). An address
/// that cannot be understood is a usage error; one that can but does not answer is named
/// with the reason, e.g. "cannot connect to 127.0.0.1:1: connection refused".
async fn connect(address: &str, timeout: Duration) -> anyhow::Result<tonic::transport::Channel> {
    let unreachable = |reason: String| CliError::Unreachable {
        target: address.to_string(),
        reason,
    };
    if let Some(path) = address.strip_prefix("unix:") {
        // The transport only says "transport error" for a socket that is not there.
        if !std::path::Path::new(path).exists() {
            return Err(unreachable("no such socket".into()).into());
        }
        return hector_plugin_sdk::connect(address, timeout)
            .await
            .map_err(|e| match e {
                hector_plugin_sdk::SdkError::Address { reason, .. }
                    if reason.starts_with("cannot connect") =>
                {
                    unreachable(
                        reason
                            .trim_start_matches("cannot connect")
                            .trim_start_matches(": ")
                            .to_string(),
                    )
                    .into()
                }
                e => anyhow::Error::new(CliError::usage(e.to_string())),
            });
    }
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| CliError::usage(format!("invalid address {address:?}: {e}")))?;
    endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| unreachable(connect_reason(&e, timeout)).into())
}

/// Why a connection failed, in a person's words.
fn connect_reason(e: &(dyn std::error::Error + 'static), timeout: Duration) -> String {
    match super::error::reason_text(e) {
        timed_out if timed_out == "timed out" => {
            format!("no connection within {}s", timeout.as_secs())
        }
        reason => reason,
    }
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
    format: Format,
) -> anyhow::Result<Exit> {
    let timeout = Duration::from_secs(args.timeout);
    let once = || async {
        match tokio::time::timeout(
            timeout,
            call(channel.clone(), plugin_type, &args.method, format),
        )
        .await
        {
            Ok(outcome) => outcome.map_err(|e| match e.downcast_ref::<tonic::Status>() {
                // The service called may not be the plugin's: say which it was.
                Some(s) if s.code() == tonic::Code::Unimplemented => e.context(format!(
                    "{} call to {target} as {plugin_type}",
                    args.method.name()
                )),
                Some(_) => e.context(format!("{} call to {target}", args.method.name())),
                None => e,
            }),
            Err(_) => Err(CliError::NoAnswer {
                target: target.to_string(),
                secs: args.timeout,
            }
            .into()),
        }
    };
    if args.repeat == 1 {
        let outcome = once().await?;
        if let Some(s) = outcome.served {
            output::note(format_args!("served by {}", s.endpoint));
        }
        return Ok(if outcome.ok { Exit::Ok } else { Exit::Failed });
    }
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures: Vec<Exit> = Vec::new();
    for i in 1..=args.repeat {
        match once().await {
            Ok(outcome) => {
                let at = outcome
                    .served
                    .map_or_else(|| target.to_string(), |s| s.endpoint.to_string());
                *landed.entry(at).or_default() += 1;
                if !outcome.ok {
                    failures.push(Exit::Failed);
                }
            }
            // Nobody reads the answers any more: stop.
            Err(e) if output::is_stdout_closed(&e) => return Err(e),
            Err(e) => {
                output::note(format_args!(
                    "call {i} failed: {}",
                    super::error::error_text(&e)
                ));
                failures.push(classify(&e));
            }
        }
    }
    output::note(format_args!(
        "{} calls, {} failed",
        args.repeat,
        failures.len()
    ));
    for (endpoint, n) in &landed {
        output::note(format_args!("served by {endpoint}: {n}"));
    }
    Ok(repeated_exit(args.repeat as usize, &failures))
}

/// The exit status of repeated calls: 0 when none failed; when all failed for one reason, that
/// reason's; else 1.
fn repeated_exit(calls: usize, failures: &[Exit]) -> Exit {
    match failures.first() {
        None => Exit::Ok,
        Some(first) if failures.len() == calls && failures.iter().all(|f| f == first) => *first,
        Some(_) => Exit::Failed,
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
) -> Result<tonic::Response<ManifestResponse>, tonic::Status> {
    per_type!(plugin_type, channel, |c| c
        .get_manifest(ManifestRequest {})
        .await)
}

/// The plugin's `GetStatus`, on the service of its type.
async fn status<T: Transport>(
    channel: T,
    plugin_type: PluginType,
) -> Result<tonic::Response<StatusResponse>, tonic::Status> {
    per_type!(plugin_type, channel, |c| c
        .get_status(StatusRequest {})
        .await)
}

fn served_by<M>(r: &tonic::Response<M>) -> Option<Served> {
    r.extensions().get::<Served>().copied()
}

/// Prints one answer in `format`.
fn print<A: Answer>(format: Format, answer: &A, served: Option<Served>) -> anyhow::Result<()> {
    let mut out = output::stdout();
    if format == Format::Text {
        out.write_str(&answer.text())?;
        if let Some(note) = answer.note() {
            output::note(note);
        }
        return Ok(());
    }
    let doc = WithServed {
        answer,
        served_by: served.map(|s| s.endpoint.to_string()),
    };
    out.write_str(&output::document(format, &doc, true)?)
}

/// An answer of a call that changes a database, or the plugin's error.
fn written(
    operation: &'static str,
    collection: &str,
    id: Option<&str>,
    success: bool,
    error: String,
) -> anyhow::Result<answer::Written> {
    if !error.is_empty() {
        return Err(CliError::Plugin(error).into());
    }
    if !success {
        return Err(CliError::Plugin(
            "the plugin reported neither success nor an error".to_string(),
        )
        .into());
    }
    Ok(answer::Written {
        operation,
        collection: collection.to_string(),
        id: id.map(str::to_string),
        success,
    })
}

/// Makes one call and prints its answer.
async fn call<T: Transport>(
    channel: T,
    plugin_type: PluginType,
    method: &Method,
    format: Format,
) -> anyhow::Result<Outcome> {
    macro_rules! answer {
        ($response:expr, |$r:ident| $to_answer:expr) => {{
            let response = $response;
            let served = served_by(&response);
            let $r = response.into_inner();
            let a = $to_answer;
            print(format, &a, served)?;
            served
        }};
    }
    let served = match method {
        Method::Generate { text, system } => answer!(
            LlmProviderClient::new(channel)
                .generate(GenerateRequest {
                    messages: user_messages(text.join(" "), system.clone()),
                    tools: vec![],
                })
                .await?,
            |r| answer::Generated::from(r)
        ),
        Method::Stream { text, system } => {
            let r = LlmProviderClient::new(channel)
                .generate_streaming(GenerateRequest {
                    messages: user_messages(text.join(" "), system.clone()),
                    tools: vec![],
                })
                .await?;
            let served = served_by(&r);
            stream(r.into_inner(), format, served).await?;
            served
        }
        Method::Embed { text } => answer!(
            EmbedderProviderClient::new(channel)
                .embed(EmbedRequest {
                    text: text.join(" "),
                })
                .await?,
            |r| {
                if !r.error.is_empty() {
                    return Err(CliError::Plugin(r.error).into());
                }
                answer::Embedded {
                    dimension: r.vector.len(),
                    vector: r.vector,
                }
            }
        ),
        Method::Search {
            collection,
            vector,
            top_k,
        } => answer!(
            DatabaseProviderClient::new(channel)
                .search(SearchRequest {
                    collection: collection.clone(),
                    vector: vector.clone(),
                    top_k: *top_k,
                })
                .await?,
            |r| {
                if !r.error.is_empty() {
                    return Err(CliError::Plugin(r.error).into());
                }
                answer::Found::from(r)
            }
        ),
        Method::Upsert {
            collection,
            id,
            vector,
            metadata,
        } => answer!(
            DatabaseProviderClient::new(channel)
                .upsert(UpsertRequest {
                    collection: collection.clone(),
                    id: id.clone(),
                    vector: vector.clone(),
                    metadata: metadata.iter().cloned().collect(),
                })
                .await?,
            |r| written("upserted", collection, Some(id), r.success, r.error)?
        ),
        Method::Delete { collection, id } => answer!(
            DatabaseProviderClient::new(channel)
                .delete(DeleteRequest {
                    collection: collection.clone(),
                    id: id.clone(),
                })
                .await?,
            |r| written("deleted", collection, Some(id), r.success, r.error)?
        ),
        Method::CreateCollection {
            collection,
            vector_size,
        } => answer!(
            DatabaseProviderClient::new(channel)
                .create_collection(CreateCollectionRequest {
                    collection: collection.clone(),
                    vector_size: *vector_size,
                })
                .await?,
            |r| written("created collection", collection, None, r.success, r.error)?
        ),
        Method::DeleteCollection { collection } => answer!(
            DatabaseProviderClient::new(channel)
                .delete_collection(DeleteCollectionRequest {
                    collection: collection.clone(),
                })
                .await?,
            |r| written("deleted collection", collection, None, r.success, r.error)?
        ),
        Method::Tools => answer!(
            ToolProviderClient::new(channel)
                .list_tools(Empty {})
                .await?,
            |r| answer::Tools::from(r)
        ),
        Method::Execute { tool, args, id } => answer!(
            ToolProviderClient::new(channel)
                .execute_tool(ToolCall {
                    id: id.clone(),
                    name: tool.clone(),
                    arguments_json: args.clone(),
                })
                .await?,
            |r| answer::Executed::from_proto(r)
                .map_err(|e| CliError::Plugin(format!("tool {tool:?} failed: {e}")))?
        ),
        Method::NextStep {
            text,
            system,
            iteration,
            set,
        } => answer!(
            ReasoningStrategyClient::new(channel)
                .next_step(ReasoningRequest {
                    messages: user_messages(text.join(" "), system.clone()),
                    tools: vec![],
                    iteration: *iteration,
                    context: set.iter().cloned().collect(),
                })
                .await?,
            |r| answer::Step::from(r)
        ),
        Method::Health => {
            // Two calls: through a balanced channel each may be served by another endpoint.
            let standard = HealthClient::new(channel.clone())
                .check(tonic_health::pb::HealthCheckRequest {
                    service: plugin_type.service_name().into(),
                })
                .await;
            let own = own_health(channel, plugin_type).await?;
            let (grpc_health, grpc_health_error) = match standard {
                Ok(r) => (
                    tonic_health::pb::health_check_response::ServingStatus::try_from(
                        r.into_inner().status,
                    )
                    .unwrap_or(tonic_health::pb::health_check_response::ServingStatus::Unknown)
                    .as_str_name()
                    .to_string(),
                    None,
                ),
                Err(s) => (
                    "UNAVAILABLE".to_string(),
                    Some(super::error::status_text(&s)),
                ),
            };
            let health = answer::Health {
                grpc_health,
                grpc_health_error,
                healthy: own.healthy,
                message: own.message,
            };
            print(format, &health, None)?;
            return Ok(Outcome {
                ok: health.healthy,
                served: None,
            });
        }
        Method::Info => match plugin_type {
            PluginType::LlmProvider => answer!(
                LlmProviderClient::new(channel)
                    .get_model_info(Empty {})
                    .await?,
                |r| answer::ModelInfoOut::from(r)
            ),
            PluginType::EmbedderProvider => answer!(
                EmbedderProviderClient::new(channel)
                    .get_embedder_info(Empty {})
                    .await?,
                |r| answer::EmbedderInfoOut::from(r)
            ),
            PluginType::ReasoningStrategy => answer!(
                ReasoningStrategyClient::new(channel)
                    .get_strategy_info(Empty {})
                    .await?,
                |r| answer::StrategyInfoOut::from(r)
            ),
            // `call_type` refuses these before anything is sent.
            other => {
                return Err(CliError::usage(format!("`info` is not a call of {other}")).into());
            }
        },
        Method::Manifest => answer!(manifest(channel, plugin_type).await?, |r| {
            answer::ManifestOut::from(r)
        }),
        Method::Status => answer!(status(channel, plugin_type).await?, |r| answer::StatusOut {
            status: r.status
        }),
    };
    Ok(Outcome { ok: true, served })
}

/// Prints a streamed answer as it arrives. In text, every line ends before anything else is
/// printed, on stdout or on stderr: the text streamed so far, a tool call, the tokens line
/// and an error stand apart. As documents, one per chunk.
async fn stream(
    mut chunks: tonic::Streaming<hector_plugin_sdk::proto::StreamChunk>,
    format: Format,
    served: Option<Served>,
) -> anyhow::Result<()> {
    let mut out = output::stdout();
    while let Some(chunk) = chunks.message().await? {
        let chunk = match Chunk::from_proto(chunk) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => continue,
            Err(e) => {
                out.end_line()?;
                return Err(CliError::Plugin(e).into());
            }
        };
        if format != Format::Text {
            let doc = WithServed {
                answer: &chunk,
                served_by: served.map(|s| s.endpoint.to_string()),
            };
            out.write_str(&output::document(format, &doc, true)?)?;
            continue;
        }
        match chunk {
            Chunk::Text { text } => out.write_str(&text)?,
            Chunk::ToolCall { tool_call } => {
                out.end_line()?;
                writeln!(
                    out,
                    "tool call {} {}({})",
                    tool_call.id, tool_call.name, tool_call.arguments
                )?;
            }
            Chunk::Done { tokens_used } => {
                out.end_line()?;
                output::note(format_args!("tokens used: {tokens_used}"));
            }
        }
    }
    out.end_line()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_must_fit_the_plugins_type() {
        let embed = Method::Embed {
            text: vec!["x".into()],
        };
        assert_eq!(
            call_type(&embed, None, "--type says").ok(),
            Some(PluginType::EmbedderProvider)
        );
        let e = call_type(
            &embed,
            Some(PluginType::LlmProvider),
            "plugin \"echo\" is published as",
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err(
                "`embed` is a call of embedder_provider plugins; plugin \"echo\" is published \
                 as llm_provider"
                    .into()
            )
        );
        assert_eq!(
            call_type(&Method::Health, None, "").ok(),
            Some(PluginType::LlmProvider)
        );
        assert_eq!(
            call_type(&Method::Health, Some(PluginType::ToolProvider), "").ok(),
            Some(PluginType::ToolProvider)
        );
        assert!(
            call_type(&Method::Info, Some(PluginType::ToolProvider), "")
                .is_err_and(|e| e.to_string().contains("`tools`"))
        );
        assert_eq!(
            call_type(&Method::Info, Some(PluginType::ReasoningStrategy), "").ok(),
            Some(PluginType::ReasoningStrategy)
        );
    }

    #[test]
    fn repeated_calls_exit_by_their_failures() {
        assert_eq!(repeated_exit(3, &[]), Exit::Ok);
        assert_eq!(
            repeated_exit(2, &[Exit::Unavailable, Exit::Unavailable]),
            Exit::Unavailable
        );
        assert_eq!(repeated_exit(3, &[Exit::Unavailable]), Exit::Failed);
        assert_eq!(
            repeated_exit(2, &[Exit::Unavailable, Exit::Denied]),
            Exit::Failed
        );
    }

    #[test]
    fn tool_arguments_must_be_a_json_object() {
        assert!(parse_json_object(r#"{"city":"Oslo"}"#).is_ok());
        assert!(parse_json_object("[1]").is_err_and(|e| e.contains("JSON object")));
        assert!(parse_json_object("{city}").is_err_and(|e| e.starts_with("not JSON")));
    }
}
