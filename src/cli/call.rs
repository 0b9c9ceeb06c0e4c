//! `hectorctl call`: call a plugin directly over gRPC.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hector_plugin_sdk::proto::{
    EmbedRequest, Empty, GenerateRequest, Message, SearchRequest,
    database_provider_client::DatabaseProviderClient,
    embedder_provider_client::EmbedderProviderClient, llm_provider_client::LlmProviderClient,
    stream_chunk::ChunkType,
};
use hector_plugin_sdk::{LifecycleClient, PluginType};
use tonic_health::pb::health_client::HealthClient;

/// Arguments of `hectorctl call`.
#[derive(clap::Args)]
pub struct CallArgs {
    /// The plugin's address: HOST:PORT, http://HOST:PORT or unix:/path.
    #[arg(long, short = 'a', env = "HECTOR_PLUGIN_ADDRESS")]
    pub address: String,
    /// Plugin type (for health, info and manifest).
    #[arg(long = "type", short = 't', default_value = "llm_provider", value_parser = parse_type)]
    pub plugin_type: PluginType,
    /// Seconds to wait for connection and answer.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
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

/// Runs `hectorctl call`.
pub async fn run(args: CallArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout);
    let channel = hector_plugin_sdk::connect(&args.address, timeout).await?;
    let call = async {
        match args.method {
            Method::Generate { text, system } => {
                let r = LlmProviderClient::new(channel)
                    .generate(user_request(text.join(" "), system))
                    .await?
                    .into_inner();
                println!("{}", r.text);
                for t in r.tool_calls {
                    println!("tool call {} {}({})", t.id, t.name, t.arguments_json);
                }
                eprintln!("tokens used: {}", r.tokens_used);
            }
            Method::Stream { text } => {
                let mut stream = LlmProviderClient::new(channel)
                    .generate_streaming(user_request(text.join(" "), None))
                    .await?
                    .into_inner();
                let mut out = std::io::stdout();
                while let Some(chunk) = stream.message().await? {
                    match ChunkType::try_from(chunk.r#type) {
                        Ok(ChunkType::Text) => {
                            write!(out, "{}", chunk.text)?;
                            out.flush()?;
                        }
                        Ok(ChunkType::ToolCall) => {
                            if let Some(t) = chunk.tool_call {
                                writeln!(
                                    out,
                                    "\ntool call {} {}({})",
                                    t.id, t.name, t.arguments_json
                                )?;
                            }
                        }
                        Ok(ChunkType::Done) => {
                            writeln!(out)?;
                            eprintln!("tokens used: {}", chunk.tokens_used);
                        }
                        Ok(ChunkType::Error) | Err(_) => {
                            anyhow::bail!("plugin error: {}", chunk.error)
                        }
                    }
                }
            }
            Method::Embed { text } => {
                let r = EmbedderProviderClient::new(channel)
                    .embed(EmbedRequest {
                        text: text.join(" "),
                    })
                    .await?
                    .into_inner();
                if !r.error.is_empty() {
                    anyhow::bail!("plugin error: {}", r.error);
                }
                println!("dimension: {}", r.vector.len());
                println!("vector: {:?}", r.vector);
            }
            Method::Search {
                collection,
                vector,
                top_k,
            } => {
                let r = DatabaseProviderClient::new(channel)
                    .search(SearchRequest {
                        collection,
                        vector,
                        top_k,
                    })
                    .await?
                    .into_inner();
                if !r.error.is_empty() {
                    anyhow::bail!("plugin error: {}", r.error);
                }
                for hit in r.results {
                    println!("{:.4}  {}  {}", hit.score, hit.id, hit.content);
                }
            }
            Method::Health => {
                let standard = HealthClient::new(channel.clone())
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: args.plugin_type.service_name().into(),
                    })
                    .await;
                let own = LifecycleClient::new(channel, args.plugin_type)
                    .health()
                    .await?;
                match standard {
                    Ok(r) => println!(
                        "grpc.health.v1: {:?}",
                        tonic_health::pb::health_check_response::ServingStatus::try_from(
                            r.into_inner().status
                        )
                        .unwrap_or(tonic_health::pb::health_check_response::ServingStatus::Unknown)
                    ),
                    Err(s) => println!("grpc.health.v1: unavailable ({})", s.message()),
                }
                println!("plugin: healthy={} message={:?}", own.healthy, own.message);
                if !own.healthy {
                    return Ok(ExitCode::from(1));
                }
            }
            Method::Info => match args.plugin_type {
                PluginType::LlmProvider => {
                    let i = LlmProviderClient::new(channel)
                        .get_model_info(Empty {})
                        .await?
                        .into_inner();
                    println!(
                        "model: {}\nmax tokens: {}\ntemperature: {}",
                        i.model_name, i.max_tokens, i.temperature
                    );
                }
                PluginType::EmbedderProvider => {
                    let i = EmbedderProviderClient::new(channel)
                        .get_embedder_info(Empty {})
                        .await?
                        .into_inner();
                    println!("model: {}\ndimension: {}", i.model_name, i.dimension);
                }
                other => {
                    anyhow::bail!("`info` is for llm_provider and embedder_provider, not {other}")
                }
            },
            Method::Manifest => {
                let m = LifecycleClient::new(channel, args.plugin_type)
                    .manifest()
                    .await?;
                println!(
                    "name: {}\nversion: {}\ntype: {}\nprotocol: {}\nhector_version: {}\nauthor: {}\ndescription: {}",
                    m.name,
                    m.version,
                    m.r#type,
                    m.protocol,
                    m.hector_version,
                    m.author,
                    m.description
                );
                let mut caps: Vec<_> = m.capabilities.into_iter().collect();
                caps.sort();
                for (k, v) in caps {
                    println!("capability {k}: {v}");
                }
            }
        }
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    };
    tokio::time::timeout(timeout, call)
        .await
        .with_context(|| format!("no answer from {} within {}s", args.address, args.timeout))?
}
