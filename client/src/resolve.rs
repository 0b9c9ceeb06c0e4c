//! Turning configured `host:port` targets into socket addresses. IP literals need nothing;
//! DNS names are looked up and the answer is reused for a while, so a Service name that
//! starts resolving to other addresses is followed without a lookup per call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::target::HostPort;

/// How long a DNS answer is reused.
pub const DNS_REFRESH: Duration = Duration::from_secs(5);
/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// What resolving a target list gave.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Every address found, sorted, each once.
    pub addrs: Vec<SocketAddr>,
    /// Targets that gave nothing, with the reason.
    pub failed: Vec<(HostPort, String)>,
}

/// A resolver with a small answer cache.
#[derive(Debug, Default)]
pub struct Resolver {
    cache: HashMap<HostPort, (Instant, Vec<SocketAddr>)>,
}

impl Resolver {
    /// Resolves every target; a name whose fresh lookup fails keeps its last answer, so a
    /// DNS hiccup does not empty the endpoint set.
    pub async fn resolve(&mut self, targets: &[HostPort]) -> Resolved {
        let mut out = Resolved::default();
        for target in targets {
            if let Some(addr) = target.literal() {
                out.addrs.push(addr);
                continue;
            }
            let cached = self.cache.get(target);
            if let Some((at, addrs)) = cached
                && at.elapsed() < DNS_REFRESH
            {
                out.addrs.extend(addrs);
                continue;
            }
            match lookup(target).await {
                Ok(addrs) => {
                    out.addrs.extend(&addrs);
                    self.cache.insert(target.clone(), (Instant::now(), addrs));
                }
                Err(reason) => match self.cache.get(target) {
                    Some((_, addrs)) => {
                        tracing::warn!(%target, reason, "lookup failed; keeping the last answer");
                        out.addrs.extend(addrs);
                    }
                    None => out.failed.push((target.clone(), reason)),
                },
            }
        }
        self.cache.retain(|k, _| targets.contains(k));
        out.addrs.sort();
        out.addrs.dedup();
        out
    }
}

async fn lookup(target: &HostPort) -> Result<Vec<SocketAddr>, String> {
    let query = (target.host.as_str(), target.port);
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(query)).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("the name resolves to no address".into())
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(format!("cannot resolve the name: {e}")),
        Err(_) => Err(format!(
            "name lookup timed out after {}s",
            LOOKUP_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_localhost_resolve() {
        let mut r = Resolver::default();
        let targets = [
            HostPort::parse("127.0.0.1:7").expect("literal"),
            HostPort::parse("localhost:7").expect("name"),
        ];
        let got = r.resolve(&targets).await;
        assert!(got.failed.is_empty(), "{:?}", got.failed);
        assert!(got.addrs.contains(&SocketAddr::from(([127, 0, 0, 1], 7))));
        assert!(got.addrs.iter().all(|a| a.port() == 7));
    }
}
