//! TLS for one plugin's connections: the fingerprints it published and the rustls
//! configuration that accepts exactly those (any of them, so its Service address works too).
//! A plugin that published no certificates is reached in plaintext, as before.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use hector_plugin_sdk::endpoints::PublishedPlugin;
use hector_plugin_sdk::tls::{self, Pin, Refusal};
use rustls::ClientConfig;

/// The pins of one plugin and the configuration enforcing them.
#[derive(Clone)]
pub struct PluginTls {
    plugin: String,
    fingerprints: BTreeSet<String>,
    config: Arc<ClientConfig>,
}

impl fmt::Debug for PluginTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginTls")
            .field("plugin", &self.plugin)
            .field("fingerprints", &self.fingerprints)
            .finish_non_exhaustive()
    }
}

impl PartialEq for PluginTls {
    fn eq(&self, other: &Self) -> bool {
        self.plugin == other.plugin && self.fingerprints == other.fingerprints
    }
}

impl PluginTls {
    /// TLS pinned to `fingerprints` (`sha256:…`) for the plugin named `plugin` in messages.
    /// Malformed fingerprints are left out with a warning: they match no certificate, and
    /// leaving them out never widens what is accepted.
    pub fn new<I, S>(plugin: &str, fingerprints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut digests = BTreeSet::new();
        let mut kept = BTreeSet::new();
        for value in fingerprints {
            match tls::parse_fingerprint(value.as_ref()) {
                Ok(digest) => {
                    digests.insert(digest);
                    kept.insert(value.as_ref().to_string());
                }
                Err(e) => tracing::warn!(plugin, error = %e, "ignoring a published certificate"),
            }
        }
        Self {
            plugin: plugin.to_string(),
            fingerprints: kept,
            config: tls::client_config(Pin::Fingerprints(digests)),
        }
    }

    /// The TLS a published plugin asks for: pinned to its certificates, or none (plaintext)
    /// when it published none.
    pub fn for_published(name: &str, plugin: &PublishedPlugin) -> Option<Self> {
        if plugin.certificates.is_empty() {
            None
        } else {
            Some(Self::new(name, plugin.certificates.values()))
        }
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The pinned fingerprints.
    pub fn fingerprints(&self) -> &BTreeSet<String> {
        &self.fingerprints
    }

    /// Whether a certificate with fingerprint `fingerprint` is accepted.
    pub fn accepts(&self, fingerprint: &str) -> bool {
        self.fingerprints.contains(fingerprint)
    }

    /// The rustls configuration for a handshake.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Why a handshake with `addr` was refused, in words that say what to check.
    pub fn refusal_text(&self, addr: SocketAddr, refusal: &Refusal) -> String {
        match refusal {
            Refusal::NotPinned { seen } => format!(
                "certificate of {addr} is {seen} which plugin {:?} did not publish",
                self.plugin
            ),
            other => format!("certificate of {addr} refused: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_certificates_become_pins_and_bad_ones_are_left_out() {
        let good = tls::fingerprint(b"a");
        let mut p = PublishedPlugin::default();
        assert!(PluginTls::for_published("echo", &p).is_none(), "plaintext");
        p.certificates.insert("10.0.0.1:50051".into(), good.clone());
        p.certificates
            .insert("10.0.0.2:50051".into(), "sha256:nope".into());
        let t = PluginTls::for_published("echo", &p).expect("TLS");
        assert!(t.accepts(&good));
        assert_eq!(t.fingerprints().len(), 1);
        assert_eq!(t, PluginTls::new("echo", [good.as_str()]));
        assert_ne!(t, PluginTls::new("echo", [tls::fingerprint(b"b")]));

        // Only malformed ones: still TLS, accepting nothing, never plaintext.
        p.certificates.retain(|_, v| v.as_str() == "sha256:nope");
        let t = PluginTls::for_published("echo", &p).expect("still TLS");
        assert!(t.fingerprints().is_empty());

        let addr: SocketAddr = ([10, 0, 0, 5], 50051).into();
        let text = t.refusal_text(addr, &Refusal::NotPinned { seen: good.clone() });
        assert_eq!(
            text,
            format!(
                "certificate of 10.0.0.5:50051 is {good} which plugin \"echo\" did not publish"
            )
        );
    }
}
