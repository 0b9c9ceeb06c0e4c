//! The go-plugin handshake line a plugin prints on stdout when it is ready:
//! `CORE_VERSION|APP_VERSION|NETWORK|ADDRESS|PROTOCOL[|SERVER_CERT[|MUX]]`.

pub use hector_plugin_sdk::goplugin::{APP_PROTOCOL_VERSION, CORE_PROTOCOL_VERSION};

/// Where the plugin listens, as announced by its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginAddress {
    /// A Unix socket path.
    Unix(String),
    /// A TCP `host:port`.
    Tcp(String),
}

impl PluginAddress {
    /// The address in the form [`hector_plugin_sdk::connect`] takes.
    pub fn to_connect_string(&self) -> String {
        match self {
            PluginAddress::Unix(path) => format!("unix:{path}"),
            PluginAddress::Tcp(addr) => addr.clone(),
        }
    }
}

/// Why a handshake line was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Fewer than five `|`-separated fields.
    #[error(
        "handshake line has {0} fields, expected at least 5 (CORE|APP|NETWORK|ADDRESS|PROTOCOL)"
    )]
    TooFewFields(usize),
    /// A version field is not a number or not the expected one.
    #[error("{field} version {found:?} is not supported (expected {expected})")]
    Version {
        /// Which version field.
        field: &'static str,
        /// What the plugin printed.
        found: String,
        /// What this launcher speaks.
        expected: u32,
    },
    /// The network is neither `unix` nor `tcp`.
    #[error("network {0:?} is not supported (expected unix or tcp)")]
    Network(String),
    /// The protocol is not gRPC (go-plugin's `netrpc` cannot be forwarded).
    #[error("protocol {0:?} is not supported (expected grpc)")]
    Protocol(String),
    /// AutoMTLS was negotiated; the launcher never asks for it, so this is unexpected.
    #[error("the plugin announced a TLS server certificate, which the launcher does not request")]
    Tls,
    /// The address field is empty.
    #[error("handshake line has an empty address")]
    EmptyAddress,
}

/// Parses one handshake line.
pub fn parse(line: &str) -> Result<PluginAddress, HandshakeError> {
    let fields: Vec<&str> = line.trim().split('|').collect();
    if fields.len() < 5 {
        return Err(HandshakeError::TooFewFields(fields.len()));
    }
    check_version("core protocol", fields[0], CORE_PROTOCOL_VERSION)?;
    check_version("app protocol", fields[1], APP_PROTOCOL_VERSION)?;
    let address = fields[3].trim();
    if address.is_empty() {
        return Err(HandshakeError::EmptyAddress);
    }
    if fields[4] != "grpc" {
        return Err(HandshakeError::Protocol(fields[4].to_string()));
    }
    if fields.get(5).is_some_and(|cert| !cert.is_empty()) {
        return Err(HandshakeError::Tls);
    }
    match fields[2] {
        "unix" => Ok(PluginAddress::Unix(address.to_string())),
        "tcp" => Ok(PluginAddress::Tcp(address.to_string())),
        other => Err(HandshakeError::Network(other.to_string())),
    }
}

/// Whether a stdout line looks like a handshake rather than ordinary output.
pub fn looks_like_handshake(line: &str) -> bool {
    let mut fields = line.trim().split('|');
    fields.next().is_some_and(|f| f.parse::<u32>().is_ok()) && line.matches('|').count() >= 4
}

fn check_version(field: &'static str, found: &str, expected: u32) -> Result<(), HandshakeError> {
    match found.trim().parse::<u32>() {
        Ok(v) if v == expected => Ok(()),
        _ => Err(HandshakeError::Version {
            field,
            found: found.to_string(),
            expected,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let cases: &[(&str, Result<PluginAddress, HandshakeError>)] = &[
            (
                "1|1|unix|/tmp/plugin123|grpc",
                Ok(PluginAddress::Unix("/tmp/plugin123".into())),
            ),
            (
                "1|1|tcp|127.0.0.1:1234|grpc\n",
                Ok(PluginAddress::Tcp("127.0.0.1:1234".into())),
            ),
            (
                "1|1|unix|/tmp/p|grpc||true",
                Ok(PluginAddress::Unix("/tmp/p".into())),
            ),
            ("1|1|unix|/tmp/p", Err(HandshakeError::TooFewFields(4))),
            (
                "2|1|unix|/tmp/p|grpc",
                Err(HandshakeError::Version {
                    field: "core protocol",
                    found: "2".into(),
                    expected: 1,
                }),
            ),
            (
                "1|x|unix|/tmp/p|grpc",
                Err(HandshakeError::Version {
                    field: "app protocol",
                    found: "x".into(),
                    expected: 1,
                }),
            ),
            (
                "1|1|udp|/tmp/p|grpc",
                Err(HandshakeError::Network("udp".into())),
            ),
            (
                "1|1|unix|/tmp/p|netrpc",
                Err(HandshakeError::Protocol("netrpc".into())),
            ),
            ("1|1|unix||grpc", Err(HandshakeError::EmptyAddress)),
            ("1|1|unix|/tmp/p|grpc|MIIBcert", Err(HandshakeError::Tls)),
        ];
        for (line, want) in cases {
            assert_eq!(&parse(line), want, "line {line:?}");
        }
    }

    #[test]
    fn distinguishes_output_from_handshake() {
        assert!(looks_like_handshake("1|1|unix|/tmp/x|grpc"));
        assert!(!looks_like_handshake("starting plugin"));
        assert!(!looks_like_handshake("a|b|c|d|e"));
        assert_eq!(
            PluginAddress::Unix("/s".into()).to_connect_string(),
            "unix:/s"
        );
    }
}
