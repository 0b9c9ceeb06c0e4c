//! Addresses as people and the operator write them (`host:port`, comma-separated lists) and
//! the targets of a published plugin. Pure parsing and lookup; resolving names happens in
//! [`crate::resolve`].

use std::fmt;
use std::net::SocketAddr;

use hector_plugin_sdk::endpoints::PublishedPlugin;

use crate::error::AddressError;

/// One `host:port` as written by a person or the operator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port` or `[v6]:port`, tolerating an `http://` prefix and a trailing `/`.
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        let bad = |reason: &str| AddressError {
            address: raw.to_string(),
            reason: reason.to_string(),
        };
        let text = raw.trim();
        let text = text.strip_prefix("http://").unwrap_or(text);
        let text = text.strip_suffix('/').unwrap_or(text);
        if text.contains('/') {
            return Err(bad("expected host:port without a path or scheme"));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in an IPv6 address"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("expected [address]:port"))?;
            (host, port)
        } else {
            text.rsplit_once(':')
                .ok_or_else(|| bad("expected host:port"))?
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if !text.starts_with('[') && host.contains(':') {
            return Err(bad("write IPv6 addresses as [address]:port"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    /// The socket address when the host is an IP literal (no lookup needed).
    pub fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses a comma-separated address list; at least one address is required.
pub fn parse_address_list(raw: &str) -> Result<Vec<HostPort>, AddressError> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let hp = HostPort::parse(part)?;
        if !out.contains(&hp) {
            out.push(hp);
        }
    }
    if out.is_empty() {
        return Err(AddressError {
            address: raw.to_string(),
            reason: "no address given".into(),
        });
    }
    Ok(out)
}

/// Where a published plugin's calls go: its healthy endpoints, or its stable address when it
/// lists none (the operator always sets the address; a plugin given by `spec.endpoint` may
/// have nothing else).
pub fn published_targets(plugin: &PublishedPlugin) -> Result<Vec<HostPort>, AddressError> {
    let raw: Vec<&str> = if plugin.endpoints.is_empty() {
        vec![plugin.address.as_str()]
    } else {
        plugin.endpoints.iter().map(String::as_str).collect()
    };
    let mut targets = Vec::new();
    for r in raw {
        let hp = HostPort::parse(r)?;
        if !targets.contains(&hp) {
            targets.push(hp);
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_parse_in_the_usual_spellings() {
        let hp = HostPort::parse("echo.agents.svc:50051").expect("dns name");
        assert_eq!((hp.host.as_str(), hp.port), ("echo.agents.svc", 50051));
        assert_eq!(hp.literal(), None);
        let ip = HostPort::parse(" http://10.1.2.3:7/ ").expect("ip");
        assert_eq!(ip.literal(), Some(SocketAddr::from(([10, 1, 2, 3], 7))));
        let v6 = HostPort::parse("[::1]:9").expect("v6");
        assert_eq!(v6.to_string(), "[::1]:9");
        assert!(v6.literal().is_some());
        for bad in [
            "host",
            ":80",
            "host:0",
            "host:99999",
            "::1:9",
            "[::1]9",
            "dns:///x:1",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad:?}");
        }
        let err = HostPort::parse("host:abc").unwrap_err().to_string();
        assert!(err.contains("host:abc") && err.contains("port"), "{err}");
    }

    #[test]
    fn address_lists_split_on_commas() {
        let list = parse_address_list("a:1, b:2,,a:1").expect("list");
        assert_eq!(
            list.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["a:1", "b:2"]
        );
        assert!(parse_address_list(" , ").is_err());
        assert!(parse_address_list("a:1,b").is_err());
    }

    #[test]
    fn published_targets_are_the_endpoints_or_the_address() {
        let mut p = PublishedPlugin {
            address: "echo.agents.svc:50051".into(),
            endpoints: vec![
                "10.0.0.1:50051".into(),
                "10.0.0.2:50051".into(),
                "10.0.0.1:50051".into(),
            ],
            ..Default::default()
        };
        let t = published_targets(&p).expect("endpoints");
        assert_eq!(
            t.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.1:50051", "10.0.0.2:50051"]
        );
        p.endpoints.clear();
        let t = published_targets(&p).expect("address");
        assert_eq!(t[0].to_string(), "echo.agents.svc:50051");
        p.address = "nope".into();
        assert!(published_targets(&p).is_err());
    }
}
