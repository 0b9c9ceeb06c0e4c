//! `echo-llm`: an LLM provider that answers with the last user message behind a configurable
//! prefix, streaming it word by word. It needs no model, so it proves the plumbing end to end.
//!
//! Listens on `HECTOR_PLUGIN_ADDR` (default `0.0.0.0:50051`). Config keys: `prefix`
//! (default `"echo: "`), `model` (default `echo-1`), `max_tokens` (default 2048), and
//! `load_seconds` (default 0, at most 3600): how long Initialize takes, as if it loaded a
//! model, which is how a slow-starting plugin is tried out.

use std::sync::RwLock;

use hector_plugin_sdk::proto::{
    GenerateRequest, GenerateResponse, ManifestResponse, ModelInfo, StreamChunk,
    stream_chunk::ChunkType,
};
use hector_plugin_sdk::{ChunkStream, Config, LlmPlugin, Plugin, ServeOptions, serve_llm};
use tonic::Status;

/// The longest `load_seconds` accepted.
const MAX_LOAD_SECONDS: u64 = 3600;

#[derive(Clone, Debug)]
struct Settings {
    prefix: String,
    model: String,
    max_tokens: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prefix: "echo: ".into(),
            model: "echo-1".into(),
            max_tokens: 2048,
        }
    }
}

#[derive(Default)]
struct EchoLlm {
    settings: RwLock<Settings>,
}

impl EchoLlm {
    fn settings(&self) -> Settings {
        self.settings.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The text the model "says": the prefix and the last user message.
    fn answer(&self, request: &GenerateRequest) -> (String, i32) {
        let last = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        let words = last.split_whitespace().count();
        (
            format!("{}{}", self.settings().prefix, last),
            i32::try_from(words).unwrap_or(i32::MAX),
        )
    }
}

impl Plugin for EchoLlm {
    fn manifest(&self) -> ManifestResponse {
        ManifestResponse {
            name: "echo-llm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            author: "hector-operator".into(),
            description: "Echoes the last user message; for testing remote plugins".into(),
            r#type: "llm_provider".into(),
            protocol: "grpc".into(),
            hector_version: ">=0.1.0".into(),
            capabilities: [("streaming".to_string(), "true".to_string())].into(),
        }
    }

    async fn initialize(&self, config: Config) -> Result<(), String> {
        let mut s = Settings::default();
        if let Some(p) = config.get("prefix") {
            s.prefix = p.clone();
        }
        if let Some(m) = config.get("model") {
            s.model = m.clone();
        }
        if let Some(t) = config.get("max_tokens") {
            s.max_tokens = t
                .parse()
                .map_err(|_| format!("config key max_tokens: {t:?} is not an integer"))?;
        }
        if let Some(l) = config.get("load_seconds") {
            let seconds: u64 = l
                .parse()
                .ok()
                .filter(|s| *s <= MAX_LOAD_SECONDS)
                .ok_or_else(|| {
                    format!(
                        "config key load_seconds: {l:?} is not a whole number of seconds from 0 to {MAX_LOAD_SECONDS}"
                    )
                })?;
            tracing::info!(seconds, "loading the model");
            tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
        }
        let mut guard = self
            .settings
            .write()
            .map_err(|_| "settings lock poisoned".to_string())?;
        *guard = s;
        Ok(())
    }
}

impl LlmPlugin for EchoLlm {
    async fn generate(&self, request: GenerateRequest) -> Result<GenerateResponse, Status> {
        let (text, tokens_used) = self.answer(&request);
        Ok(GenerateResponse {
            text,
            tool_calls: vec![],
            tokens_used,
        })
    }

    async fn generate_stream(&self, request: GenerateRequest) -> Result<ChunkStream, Status> {
        let (text, tokens_used) = self.answer(&request);
        // Split so that the chunks concatenate back to exactly the unary answer.
        let mut chunks: Vec<Result<StreamChunk, Status>> = text
            .split_inclusive(' ')
            .map(|word| {
                Ok(StreamChunk {
                    r#type: ChunkType::Text as i32,
                    text: word.to_string(),
                    ..Default::default()
                })
            })
            .collect();
        chunks.push(Ok(StreamChunk {
            r#type: ChunkType::Done as i32,
            tokens_used,
            ..Default::default()
        }));
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn model_info(&self) -> Result<ModelInfo, Status> {
        let s = self.settings();
        Ok(ModelInfo {
            model_name: s.model,
            max_tokens: s.max_tokens,
            temperature: 0.0,
        })
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: under a launcher or in a Pod they would be noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // HECTOR_PLUGIN_ADDR, a go-plugin host (Hector, the launcher), or the container port.
    let options = ServeOptions::from_env_or(([0, 0, 0, 0], 50051).into());
    let result = match options {
        Ok(options) => serve_llm(EchoLlm::default(), options).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("echo-llm: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn load_seconds_is_bounded_and_refused_when_malformed() {
        let plugin = EchoLlm::default();
        for bad in ["-1", "1.5", "soon", "3601"] {
            let err = plugin
                .initialize(config(&[("load_seconds", bad)]))
                .await
                .expect_err(bad);
            assert!(err.starts_with("config key load_seconds: "), "{err}");
        }
        // Paused time: the clock only moves by the plugin's own sleep.
        let started = tokio::time::Instant::now();
        plugin
            .initialize(config(&[("load_seconds", "90"), ("model", "m")]))
            .await
            .expect("valid");
        assert_eq!(started.elapsed().as_secs(), 90);
        assert_eq!(plugin.settings().model, "m", "initialized after loading");
    }
}
