//! Plugin types and the gRPC service each one serves.

use std::fmt;
use std::str::FromStr;

/// A kind of Hector plugin, as named in manifests (`type: llm_provider`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PluginType {
    /// `llm_provider`: text generation.
    LlmProvider,
    /// `database_provider`: vector storage and search.
    DatabaseProvider,
    /// `embedder_provider`: text to vector.
    EmbedderProvider,
    /// `tool_provider`: tools an agent can call.
    ToolProvider,
    /// `reasoning_strategy`: decides an agent's next step.
    ReasoningStrategy,
}

impl PluginType {
    /// Every plugin type, in manifest order.
    pub const ALL: [PluginType; 5] = [
        PluginType::LlmProvider,
        PluginType::DatabaseProvider,
        PluginType::EmbedderProvider,
        PluginType::ToolProvider,
        PluginType::ReasoningStrategy,
    ];

    /// The manifest spelling, e.g. `llm_provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginType::LlmProvider => "llm_provider",
            PluginType::DatabaseProvider => "database_provider",
            PluginType::EmbedderProvider => "embedder_provider",
            PluginType::ToolProvider => "tool_provider",
            PluginType::ReasoningStrategy => "reasoning_strategy",
        }
    }

    /// The fully qualified gRPC service, e.g. `hector.plugin.LLMProvider`.
    pub fn service_name(self) -> &'static str {
        match self {
            PluginType::LlmProvider => "hector.plugin.LLMProvider",
            PluginType::DatabaseProvider => "hector.plugin.DatabaseProvider",
            PluginType::EmbedderProvider => "hector.plugin.EmbedderProvider",
            PluginType::ToolProvider => "hector.plugin.ToolProvider",
            PluginType::ReasoningStrategy => "hector.plugin.ReasoningStrategy",
        }
    }

    /// The key under which Hector's config lists plugins of this type (`llm_providers`).
    pub fn config_section(self) -> &'static str {
        match self {
            PluginType::LlmProvider => "llm_providers",
            PluginType::DatabaseProvider => "database_providers",
            PluginType::EmbedderProvider => "embedder_providers",
            PluginType::ToolProvider => "tool_providers",
            PluginType::ReasoningStrategy => "reasoning_strategies",
        }
    }
}

impl fmt::Display for PluginType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a type name that Hector does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown plugin type {0:?} (expected one of llm_provider, database_provider, embedder_provider, tool_provider, reasoning_strategy)"
)]
pub struct UnknownPluginType(pub String);

impl FromStr for PluginType {
    type Err = UnknownPluginType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PluginType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownPluginType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in PluginType::ALL {
            assert_eq!(t.as_str().parse::<PluginType>(), Ok(t));
            assert!(t.service_name().starts_with("hector.plugin."));
        }
        assert!("llm".parse::<PluginType>().is_err());
    }
}
