//! [`ChannelOptions`]: what a [`crate::PluginChannel`] is opened with beyond its target —
//! the caller's token, and for fixed addresses the certificates to pin.

use std::path::PathBuf;

use hector_plugin_sdk::token::TokenSource;

use crate::error::ClientError;
use crate::secure::PluginTls;

/// Where the token comes from.
#[derive(Clone, Debug, Default)]
enum Token {
    /// `HECTOR_PLUGIN_TOKEN_FILE`, else the default path when it exists.
    #[default]
    Resolve,
    /// This file, which must exist.
    File(PathBuf),
    /// A source the caller already has (shared by several channels).
    Source(TokenSource),
}

/// Options for opening a [`crate::PluginChannel`]. The default sends the token from
/// `HECTOR_PLUGIN_TOKEN_FILE` or, when it exists, `/var/run/secrets/hector.dev/token`.
#[derive(Clone, Debug, Default)]
pub struct ChannelOptions {
    token: Token,
    tls: Option<PluginTls>,
}

impl ChannelOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends the token from `path` (which must exist), whatever the environment says.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token = Token::File(path.into());
        self
    }

    /// Sends the token of `source` ([`TokenSource::none`] for no token).
    pub fn token(mut self, source: TokenSource) -> Self {
        self.token = Token::Source(source);
        self
    }

    /// For fixed addresses ([`crate::PluginChannel::connect_with`]): TLS pinned to these
    /// certificates (e.g. [`PluginTls::for_published`] of the plugin's published entry), where
    /// the default for bare addresses is plaintext. A published plugin's channel follows its
    /// published certificates instead.
    pub fn pinned(mut self, tls: PluginTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The TLS these options ask for at fixed addresses.
    pub fn tls(&self) -> Option<PluginTls> {
        self.tls.clone()
    }

    /// The token source these options ask for.
    pub fn token_source(&self) -> Result<TokenSource, ClientError> {
        Ok(match &self.token {
            Token::Resolve => TokenSource::resolve(None)?,
            Token::File(path) => TokenSource::from_file(path)?,
            Token::Source(source) => source.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_token_file_must_exist_and_a_given_source_is_used() {
        let err = ChannelOptions::new()
            .token_file("/nonexistent/hector/token")
            .token_source()
            .expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/hector/token"),
            "{err}"
        );
        let none = ChannelOptions::new()
            .token(TokenSource::none())
            .token_source()
            .expect("given");
        assert!(!none.is_some());
    }
}
