//! [`ChannelOptions`]: what a [`crate::PluginChannel`] is opened with beyond its target —
//! the caller's token, for fixed addresses the certificates to pin, and how dead and slow
//! endpoints are found (connect timeout, keepalive, outlier ejection).

use std::path::PathBuf;

use hector_plugin_sdk::token::TokenSource;

use std::time::Duration;

use hector_plugin_sdk::net::TcpKeepalive;

use crate::balance::Ejection;
use crate::error::ClientError;
use crate::keepalive::Keepalive;
use crate::pool::PoolSettings;
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
    pool: PoolSettings,
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

    /// The longest opening a connection may take (default 2 s); one connect serves every
    /// call waiting for it, each within its own deadline.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.pool.connect_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive PINGs (default: every 10 s, idle too, answered within 5 s).
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.pool.keepalive = keepalive;
        self
    }

    /// TCP keepalive and `TCP_USER_TIMEOUT` (default [`TcpKeepalive::default`]).
    pub fn tcp_keepalive(mut self, tcp: TcpKeepalive) -> Self {
        self.pool.tcp = tcp;
        self
    }

    /// Outlier ejection (default: 5 failed calls in a row, 30 s growing to 300 s).
    pub fn ejection(mut self, ejection: Ejection) -> Self {
        self.pool.ejection = ejection;
        self
    }

    /// The connection settings these options ask for.
    pub fn pool_settings(&self) -> PoolSettings {
        self.pool
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
