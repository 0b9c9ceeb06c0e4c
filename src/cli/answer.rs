//! What `hectorctl call` prints for each answer: text for people and the same data as a
//! document for programs (`-o json|yaml`). Pure functions of the plugin's reply.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hector_plugin_sdk::proto::{
    EmbedderInfo, GenerateResponse, ListToolsResponse, ManifestResponse, Message, ModelInfo,
    ReasoningStep, SearchResponse, StrategyInfo, StreamChunk, ToolCall, ToolResult,
    reasoning_step::Action, stream_chunk::ChunkType,
};
use serde::Serialize;

/// One answer of a call, printable both ways.
pub trait Answer: Serialize {
    /// The answer for a person; every line ended.
    fn text(&self) -> String;
    /// A line for stderr beside the text (not part of the answer), e.g. the tokens used.
    fn note(&self) -> Option<String> {
        None
    }
}

/// An answer with the endpoint that served it, as documents carry it.
#[derive(Serialize)]
pub struct WithServed<'a, A: Serialize> {
    /// The answer's own fields.
    #[serde(flatten)]
    pub answer: &'a A,
    /// The endpoint that served the call, for published plugins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

/// `text`, with its last line ended: one line at least, never two newlines for a text that
/// ends with one.
fn ended(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

/// A tool call an LLM or a strategy asks for; arguments as JSON where they are JSON.
#[derive(Serialize, Debug, PartialEq)]
pub struct ToolCallOut {
    /// The call's id.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments: parsed when they are JSON, else the text sent.
    pub arguments: serde_json::Value,
}

impl From<&ToolCall> for ToolCallOut {
    fn from(t: &ToolCall) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            arguments: json_or_text(&t.arguments_json),
        }
    }
}

impl ToolCallOut {
    fn line(&self) -> String {
        format!("tool call {} {}({})\n", self.id, self.name, self.arguments)
    }
}

fn json_or_text(text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return serde_json::Value::Object(Default::default());
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// `generate`.
#[derive(Serialize)]
pub struct Generated {
    /// The answer text.
    pub text: String,
    /// Tools the model asks to call.
    pub tool_calls: Vec<ToolCallOut>,
    /// Tokens the plugin reports.
    pub tokens_used: i32,
}

impl From<GenerateResponse> for Generated {
    fn from(r: GenerateResponse) -> Self {
        Self {
            tool_calls: r.tool_calls.iter().map(ToolCallOut::from).collect(),
            text: r.text,
            tokens_used: r.tokens_used,
        }
    }
}

impl Answer for Generated {
    fn text(&self) -> String {
        let mut out = ended(&self.text);
        for t in &self.tool_calls {
            out.push_str(&t.line());
        }
        out
    }
    fn note(&self) -> Option<String> {
        Some(format!("tokens used: {}", self.tokens_used))
    }
}

/// One chunk of `stream`, as documents carry it (one per line in JSON).
#[derive(Serialize, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Chunk {
    /// A piece of the answer text.
    Text {
        /// The piece.
        text: String,
    },
    /// A tool the model asks to call.
    ToolCall {
        /// The call.
        tool_call: ToolCallOut,
    },
    /// The answer is complete.
    Done {
        /// Tokens the plugin reports.
        tokens_used: i32,
    },
}

impl Chunk {
    /// The chunk, or the plugin's error when it is an error chunk (or of a type this version
    /// does not know). A tool-call chunk without its call is `None`.
    pub fn from_proto(c: StreamChunk) -> Result<Option<Self>, String> {
        match ChunkType::try_from(c.r#type) {
            Ok(ChunkType::Text) => Ok(Some(Self::Text { text: c.text })),
            Ok(ChunkType::ToolCall) => Ok(c.tool_call.as_ref().map(|t| Self::ToolCall {
                tool_call: t.into(),
            })),
            Ok(ChunkType::Done) => Ok(Some(Self::Done {
                tokens_used: c.tokens_used,
            })),
            Ok(ChunkType::Error) => Err(c.error),
            Err(_) => Err(format!("a stream chunk of unknown type {}", c.r#type)),
        }
    }
}

/// `embed`.
#[derive(Serialize)]
pub struct Embedded {
    /// Number of values.
    pub dimension: usize,
    /// The vector.
    pub vector: Vec<f32>,
}

/// Values per line of a vector printed for people.
const VALUES_PER_LINE: usize = 8;

impl Answer for Embedded {
    fn text(&self) -> String {
        let norm = self
            .vector
            .iter()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt();
        let mut out = format!("dimension: {}\nnorm: {norm:.6}\nvector:\n", self.dimension);
        for line in self.vector.chunks(VALUES_PER_LINE) {
            for v in line {
                let _ = write!(out, "{v:>10.6}");
            }
            out.push('\n');
        }
        out
    }
}

/// One hit of `search`.
#[derive(Serialize)]
pub struct Hit {
    /// Its id.
    pub id: String,
    /// Its similarity score.
    pub score: f32,
    /// Its content.
    pub content: String,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// The embedding model recorded with it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model_name: String,
    /// Its vector, when the plugin returns it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vector: Vec<f32>,
}

/// `search`.
#[derive(Serialize)]
pub struct Found {
    /// The hits, best first as the plugin ordered them.
    pub results: Vec<Hit>,
}

impl From<SearchResponse> for Found {
    fn from(r: SearchResponse) -> Self {
        Self {
            results: r
                .results
                .into_iter()
                .map(|h| Hit {
                    id: h.id,
                    score: h.score,
                    content: h.content,
                    metadata: h.metadata.into_iter().collect(),
                    model_name: h.model_name,
                    vector: h.vector,
                })
                .collect(),
        }
    }
}

impl Answer for Found {
    fn text(&self) -> String {
        let rows = self
            .results
            .iter()
            .map(|h| {
                vec![
                    format!("{:.4}", h.score),
                    h.id.clone(),
                    one_line(&h.content),
                ]
            })
            .collect();
        table(&["SCORE", "ID", "CONTENT"], rows)
    }
    fn note(&self) -> Option<String> {
        self.results.is_empty().then(|| "no results".to_string())
    }
}

/// A database call that changes something (`upsert`, `delete`, `create-collection`,
/// `delete-collection`) and succeeded.
#[derive(Serialize)]
pub struct Written {
    /// What was done.
    pub operation: &'static str,
    /// The collection.
    pub collection: String,
    /// The vector's id, for calls on one vector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Always true: a failure is an error.
    pub success: bool,
}

impl Answer for Written {
    fn text(&self) -> String {
        match &self.id {
            Some(id) => format!("{}: {id} in {}\n", self.operation, self.collection),
            None => format!("{}: {}\n", self.operation, self.collection),
        }
    }
}

/// One tool of `tools`.
#[derive(Serialize)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON schema of its arguments: parsed when it is JSON, else the text sent.
    pub parameters: serde_json::Value,
}

/// `tools`.
#[derive(Serialize)]
pub struct Tools {
    /// The tools offered.
    pub tools: Vec<Tool>,
}

impl From<ListToolsResponse> for Tools {
    fn from(r: ListToolsResponse) -> Self {
        Self {
            tools: r
                .tools
                .into_iter()
                .map(|t| Tool {
                    parameters: json_or_text(&t.parameters_json),
                    name: t.name,
                    description: t.description,
                })
                .collect(),
        }
    }
}

/// The argument names a JSON schema declares, optional ones marked with `?`.
fn argument_names(schema: &serde_json::Value) -> String {
    let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
        return String::new();
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    properties
        .keys()
        .map(|k| {
            if required.contains(&k.as_str()) {
                k.clone()
            } else {
                format!("{k}?")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Answer for Tools {
    fn text(&self) -> String {
        let rows = self
            .tools
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    argument_names(&t.parameters),
                    one_line(&t.description),
                ]
            })
            .collect();
        table(&["NAME", "ARGUMENTS", "DESCRIPTION"], rows)
    }
    fn note(&self) -> Option<String> {
        self.tools
            .is_empty()
            .then(|| "no tools offered".to_string())
    }
}

/// `execute`: a tool's result that is not an error.
#[derive(Serialize)]
pub struct Executed {
    /// The id of the call it answers.
    pub tool_call_id: String,
    /// The result.
    pub content: String,
    /// The tool's metadata.
    pub metadata: BTreeMap<String, String>,
}

impl Executed {
    /// The result, or the tool's error.
    pub fn from_proto(r: ToolResult) -> Result<Self, String> {
        if !r.error.is_empty() {
            return Err(r.error);
        }
        Ok(Self {
            tool_call_id: r.tool_call_id,
            content: r.content,
            metadata: r.metadata.into_iter().collect(),
        })
    }
}

impl Answer for Executed {
    fn text(&self) -> String {
        ended(&self.content)
    }
}

/// A conversation message a strategy returns.
#[derive(Serialize)]
pub struct MessageOut {
    /// user, assistant, system or tool.
    pub role: String,
    /// Its text.
    pub content: String,
    /// Tool calls of an assistant message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
    /// The call a tool message answers.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tool_call_id: String,
}

impl From<&Message> for MessageOut {
    fn from(m: &Message) -> Self {
        Self {
            role: m.role.clone(),
            content: m.content.clone(),
            tool_calls: m.tool_calls.iter().map(ToolCallOut::from).collect(),
            tool_call_id: m.tool_call_id.clone(),
        }
    }
}

/// `next-step`.
#[derive(Serialize)]
pub struct Step {
    /// `call_llm`, `call_tools` or `finish`.
    pub action: String,
    /// The strategy's reasoning.
    pub thought: String,
    /// Messages to send to the LLM.
    pub messages: Vec<MessageOut>,
    /// Tools to run.
    pub tool_calls: Vec<ToolCallOut>,
    /// The answer, when the action is `finish`.
    pub final_answer: String,
}

impl From<ReasoningStep> for Step {
    fn from(s: ReasoningStep) -> Self {
        let action = match Action::try_from(s.action) {
            Ok(Action::CallLlm) => "call_llm".to_string(),
            Ok(Action::CallTools) => "call_tools".to_string(),
            Ok(Action::Finish) => "finish".to_string(),
            Err(_) => format!("unknown ({})", s.action),
        };
        Self {
            action,
            thought: s.thought,
            messages: s.messages.iter().map(MessageOut::from).collect(),
            tool_calls: s.tool_calls.iter().map(ToolCallOut::from).collect(),
            final_answer: s.final_answer,
        }
    }
}

impl Answer for Step {
    fn text(&self) -> String {
        let mut out = format!("action: {}\n", self.action);
        if !self.thought.is_empty() {
            out.push_str(&format!("thought: {}\n", one_line(&self.thought)));
        }
        for m in &self.messages {
            out.push_str(&format!("message {}: {}\n", m.role, one_line(&m.content)));
        }
        for t in &self.tool_calls {
            out.push_str(&t.line());
        }
        if !self.final_answer.is_empty() {
            out.push_str(&format!("final answer: {}", ended(&self.final_answer)));
        }
        out
    }
}

/// `health`: the standard check and the plugin's own.
#[derive(Serialize)]
pub struct Health {
    /// `grpc.health.v1` serving status (`SERVING`, `NOT_SERVING`, …), or `UNAVAILABLE`.
    pub grpc_health: String,
    /// Why the standard check could not be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_health_error: Option<String>,
    /// The plugin's own answer.
    pub healthy: bool,
    /// Its message.
    pub message: String,
}

impl Answer for Health {
    fn text(&self) -> String {
        let standard = match &self.grpc_health_error {
            Some(e) => format!("{} ({e})", self.grpc_health),
            None => self.grpc_health.clone(),
        };
        format!(
            "grpc.health.v1: {standard}\nplugin: healthy={} message={:?}\n",
            self.healthy, self.message
        )
    }
}

/// `info` of an LLM.
#[derive(Serialize)]
pub struct ModelInfoOut {
    /// The model.
    pub model_name: String,
    /// Its token limit.
    pub max_tokens: i32,
    /// Its temperature.
    pub temperature: f64,
}

impl From<ModelInfo> for ModelInfoOut {
    fn from(i: ModelInfo) -> Self {
        Self {
            model_name: i.model_name,
            max_tokens: i.max_tokens,
            temperature: i.temperature,
        }
    }
}

impl Answer for ModelInfoOut {
    fn text(&self) -> String {
        format!(
            "model: {}\nmax tokens: {}\ntemperature: {}\n",
            self.model_name, self.max_tokens, self.temperature
        )
    }
}

/// `info` of an embedder.
#[derive(Serialize)]
pub struct EmbedderInfoOut {
    /// The model.
    pub model_name: String,
    /// The vectors' dimension.
    pub dimension: i32,
}

impl From<EmbedderInfo> for EmbedderInfoOut {
    fn from(i: EmbedderInfo) -> Self {
        Self {
            model_name: i.model_name,
            dimension: i.dimension,
        }
    }
}

impl Answer for EmbedderInfoOut {
    fn text(&self) -> String {
        format!(
            "model: {}\ndimension: {}\n",
            self.model_name, self.dimension
        )
    }
}

/// `info` of a reasoning strategy.
#[derive(Serialize)]
pub struct StrategyInfoOut {
    /// The strategy.
    pub name: String,
    /// Its iteration limit.
    pub max_iterations: i32,
    /// What it does.
    pub description: String,
}

impl From<StrategyInfo> for StrategyInfoOut {
    fn from(i: StrategyInfo) -> Self {
        Self {
            name: i.name,
            max_iterations: i.max_iterations,
            description: i.description,
        }
    }
}

impl Answer for StrategyInfoOut {
    fn text(&self) -> String {
        format!(
            "strategy: {}\nmax iterations: {}\ndescription: {}\n",
            self.name,
            self.max_iterations,
            one_line(&self.description)
        )
    }
}

/// `manifest`: what the plugin reports about itself.
#[derive(Serialize)]
pub struct ManifestOut {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its type.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Its protocol.
    pub protocol: String,
    /// The Hector versions it supports.
    pub hector_version: String,
    /// Its author.
    pub author: String,
    /// What it does.
    pub description: String,
    /// Its feature flags.
    pub capabilities: BTreeMap<String, String>,
}

impl From<ManifestResponse> for ManifestOut {
    fn from(m: ManifestResponse) -> Self {
        Self {
            name: m.name,
            version: m.version,
            plugin_type: m.r#type,
            protocol: m.protocol,
            hector_version: m.hector_version,
            author: m.author,
            description: m.description,
            capabilities: m.capabilities.into_iter().collect(),
        }
    }
}

impl Answer for ManifestOut {
    fn text(&self) -> String {
        let mut out = format!(
            "name: {}\nversion: {}\ntype: {}\nprotocol: {}\nhector_version: {}\nauthor: {}\ndescription: {}\n",
            self.name,
            self.version,
            self.plugin_type,
            self.protocol,
            self.hector_version,
            self.author,
            one_line(&self.description)
        );
        for (k, v) in &self.capabilities {
            out.push_str(&format!("capability {k}: {v}\n"));
        }
        out
    }
}

/// `status`: the plugin's lifecycle state.
#[derive(Serialize)]
pub struct StatusOut {
    /// unloaded, loading, ready, error, crashed, shutdown or restarting.
    pub status: String,
}

impl Answer for StatusOut {
    fn text(&self) -> String {
        ended(&self.status)
    }
}

/// Text on one line: line breaks and tabs as spaces, so a table cell stays in its row.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r', '\t'])
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A table with a header, columns as wide as their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_ends_its_line_before_the_tokens_note() {
        let g = Generated::from(GenerateResponse {
            text: "no newline".into(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "weather".into(),
                arguments_json: r#"{"city":"Oslo"}"#.into(),
            }],
            tokens_used: 7,
        });
        assert_eq!(
            g.text(),
            "no newline\ntool call c1 weather({\"city\":\"Oslo\"})\n"
        );
        assert_eq!(g.note().as_deref(), Some("tokens used: 7"));
        let json = serde_json::to_value(&g).unwrap_or_default();
        assert_eq!(json["tool_calls"][0]["arguments"]["city"], "Oslo");
        assert_eq!(json["tokens_used"], 7);
        let empty = Generated::from(GenerateResponse::default());
        assert_eq!(empty.text(), "\n");
        let ends = Generated::from(GenerateResponse {
            text: "line\n".into(),
            ..Default::default()
        });
        assert_eq!(ends.text(), "line\n");
    }

    #[test]
    fn a_vector_reads_as_rows_of_numbers_and_stays_exact_in_json() -> Result<(), serde_json::Error>
    {
        let vector: Vec<f32> = (0..10).map(|i| i as f32 / 10.0 - 0.5).collect();
        let e = Embedded {
            dimension: vector.len(),
            vector: vector.clone(),
        };
        let text = e.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "dimension: 10");
        assert!(lines[1].starts_with("norm: 0.9"), "{text}");
        assert_eq!(lines[2], "vector:");
        assert_eq!(lines.len(), 5, "8 values, then 2: {text}");
        assert_eq!(lines[3].split_whitespace().count(), 8, "{text}");
        assert_eq!(lines[3].split_whitespace().next(), Some("-0.500000"));
        assert!(!text.contains('['), "no debug dump: {text}");
        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&e)?)?;
        assert_eq!(json["dimension"], 10);
        let back: Vec<f32> = serde_json::from_value(json["vector"].clone())?;
        assert_eq!(back, vector);
        let short = Embedded {
            dimension: 2,
            vector: vec![0.1, -0.3],
        };
        assert_eq!(
            serde_json::to_string(&short)?,
            r#"{"dimension":2,"vector":[0.1,-0.3]}"#,
            "f32 printed as written, not widened to f64"
        );
        Ok(())
    }

    #[test]
    fn stream_chunks_map_to_documents_and_errors() {
        let chunk = |t: ChunkType| StreamChunk {
            r#type: t as i32,
            text: "hi".into(),
            error: "boom".into(),
            tokens_used: 3,
            ..Default::default()
        };
        assert_eq!(
            Chunk::from_proto(chunk(ChunkType::Text)),
            Ok(Some(Chunk::Text { text: "hi".into() }))
        );
        assert_eq!(
            Chunk::from_proto(chunk(ChunkType::Done)),
            Ok(Some(Chunk::Done { tokens_used: 3 }))
        );
        assert_eq!(
            Chunk::from_proto(chunk(ChunkType::Error)),
            Err("boom".into())
        );
        assert_eq!(Chunk::from_proto(chunk(ChunkType::ToolCall)), Ok(None));
        assert_eq!(
            serde_json::to_string(&Chunk::Done { tokens_used: 3 }).ok(),
            Some(r#"{"type":"done","tokens_used":3}"#.into())
        );
    }

    #[test]
    fn tools_list_their_arguments_and_a_failed_tool_is_an_error() {
        let tools = Tools::from(ListToolsResponse {
            tools: vec![hector_plugin_sdk::proto::ToolDefinition {
                name: "weather".into(),
                description: "Current weather\nfor a city".into(),
                parameters_json:
                    r#"{"type":"object","properties":{"city":{},"units":{}},"required":["city"]}"#
                        .into(),
            }],
        });
        let text = tools.text();
        assert_eq!(
            text.lines().nth(1),
            Some("weather  city, units?  Current weather for a city"),
            "{text}"
        );
        assert!(tools.note().is_none());
        assert_eq!(
            Executed::from_proto(ToolResult {
                error: "no such city".into(),
                ..Default::default()
            })
            .err()
            .as_deref(),
            Some("no such city")
        );
    }

    #[test]
    fn a_step_says_its_action_and_what_to_do() {
        let s = Step::from(ReasoningStep {
            action: Action::Finish as i32,
            thought: "done".into(),
            final_answer: "42".into(),
            ..Default::default()
        });
        assert_eq!(
            s.text(),
            "action: finish\nthought: done\nfinal answer: 42\n"
        );
        let s = Step::from(ReasoningStep {
            action: 9,
            ..Default::default()
        });
        assert_eq!(s.action, "unknown (9)");
    }

    #[test]
    fn a_table_lines_up_its_columns() {
        let t = table(
            &["SCORE", "ID", "CONTENT"],
            vec![
                vec!["0.9000".into(), "a".into(), "first".into()],
                vec!["0.1000".into(), "longer-id".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "SCORE   ID         CONTENT\n0.9000  a          first\n0.1000  longer-id\n"
        );
    }
}
