//! What a plugin author implements: one trait per plugin type on top of the shared lifecycle.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use futures::Stream;
use tonic::Status;

use crate::proto::{
    CreateCollectionRequest, CreateCollectionResponse, DeleteCollectionRequest,
    DeleteCollectionResponse, DeleteRequest, DeleteResponse, EmbedRequest, EmbedResponse,
    EmbedderInfo, GenerateRequest, GenerateResponse, HealthResponse, ListToolsResponse,
    ManifestResponse, ModelInfo, ReasoningRequest, ReasoningStep, SearchRequest, SearchResponse,
    StrategyInfo, StreamChunk, ToolCall, ToolResult, UpsertRequest, UpsertResponse,
    stream_chunk::ChunkType,
};

/// Plugin configuration as delivered by `Initialize`: every value is a string.
pub type Config = HashMap<String, String>;

/// The stream a streaming generation returns.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<StreamChunk, Status>> + Send + 'static>>;

/// The lifecycle every plugin type shares.
pub trait Plugin: Send + Sync + 'static {
    /// Identity reported by `GetManifest`.
    fn manifest(&self) -> ManifestResponse;

    /// Receives the configuration; an `Err` is reported to the host as a failed `Initialize`.
    fn initialize(&self, config: Config) -> impl Future<Output = Result<(), String>> + Send;

    /// Whether the plugin can serve right now.
    fn health(&self) -> impl Future<Output = HealthResponse> + Send {
        async {
            HealthResponse {
                healthy: true,
                message: "ok".into(),
            }
        }
    }

    /// Releases resources; called once, on the `Shutdown` RPC or on SIGTERM.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// An `llm_provider` plugin.
pub trait LlmPlugin: Plugin {
    /// Answers a conversation in one piece.
    fn generate(
        &self,
        request: GenerateRequest,
    ) -> impl Future<Output = Result<GenerateResponse, Status>> + Send;

    /// Answers a conversation as a stream of chunks; by default one text chunk from
    /// [`LlmPlugin::generate`] followed by `DONE`.
    fn generate_stream(
        &self,
        request: GenerateRequest,
    ) -> impl Future<Output = Result<ChunkStream, Status>> + Send {
        async move {
            let answer = self.generate(request).await?;
            let chunks = vec![
                Ok(StreamChunk {
                    r#type: ChunkType::Text as i32,
                    text: answer.text,
                    ..Default::default()
                }),
                Ok(StreamChunk {
                    r#type: ChunkType::Done as i32,
                    tokens_used: answer.tokens_used,
                    ..Default::default()
                }),
            ];
            Ok(Box::pin(futures::stream::iter(chunks)) as ChunkStream)
        }
    }

    /// The model behind the plugin.
    fn model_info(&self) -> impl Future<Output = Result<ModelInfo, Status>> + Send;
}

/// A `database_provider` plugin (vector storage).
pub trait DatabasePlugin: Plugin {
    /// Inserts or replaces one vector.
    fn upsert(
        &self,
        request: UpsertRequest,
    ) -> impl Future<Output = Result<UpsertResponse, Status>> + Send;
    /// Finds the nearest vectors.
    fn search(
        &self,
        request: SearchRequest,
    ) -> impl Future<Output = Result<SearchResponse, Status>> + Send;
    /// Removes one vector.
    fn delete(
        &self,
        request: DeleteRequest,
    ) -> impl Future<Output = Result<DeleteResponse, Status>> + Send;
    /// Creates a collection.
    fn create_collection(
        &self,
        request: CreateCollectionRequest,
    ) -> impl Future<Output = Result<CreateCollectionResponse, Status>> + Send;
    /// Drops a collection.
    fn delete_collection(
        &self,
        request: DeleteCollectionRequest,
    ) -> impl Future<Output = Result<DeleteCollectionResponse, Status>> + Send;
}

/// An `embedder_provider` plugin.
pub trait EmbedderPlugin: Plugin {
    /// Turns text into a vector.
    fn embed(
        &self,
        request: EmbedRequest,
    ) -> impl Future<Output = Result<EmbedResponse, Status>> + Send;
    /// The model and its dimension.
    fn embedder_info(&self) -> impl Future<Output = Result<EmbedderInfo, Status>> + Send;
}

/// A `tool_provider` plugin.
pub trait ToolPlugin: Plugin {
    /// The tools offered.
    fn list_tools(&self) -> impl Future<Output = Result<ListToolsResponse, Status>> + Send;
    /// Runs one tool call.
    fn execute(&self, call: ToolCall) -> impl Future<Output = Result<ToolResult, Status>> + Send;
}

/// A `reasoning_strategy` plugin.
pub trait ReasoningPlugin: Plugin {
    /// Decides the agent's next step.
    fn next_step(
        &self,
        request: ReasoningRequest,
    ) -> impl Future<Output = Result<ReasoningStep, Status>> + Send;
    /// Describes the strategy.
    fn strategy_info(&self) -> impl Future<Output = Result<StrategyInfo, Status>> + Send;
}
