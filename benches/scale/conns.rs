//! The leader's open TCP connections, counted from outside the operator: its container's
//! process is found on this node by the container ID in its cgroup path, and the
//! ESTABLISHED sockets of its network namespace are counted in `/proc/PID/net/tcp{,6}`.
//! Works when this program runs as root on the node (the local cluster); otherwise the
//! figure is reported as missing, with the reason.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;

use crate::Error;
use crate::metrics::OPERATOR_NAMESPACE;

/// `st` of an ESTABLISHED socket in /proc/net/tcp.
const ESTABLISHED: &str = "01";

/// The leader's ESTABLISHED connections, by the other end.
#[derive(Clone, Copy, Debug, Default)]
pub struct Connections {
    /// To the API server (remote port 443 or 6443: watches, writes, the lease).
    pub api: usize,
    /// Inbound, to its metrics and health ports (8080, 8081).
    pub inbound: usize,
    /// Everything else: the prober's connections to plugins.
    pub plugins: usize,
}

/// The port of an `ADDR:PORT` field of /proc/net/tcp (hex).
fn port(field: &str) -> Option<u16> {
    u16::from_str_radix(field.rsplit_once(':')?.1, 16).ok()
}

/// ESTABLISHED TCP connections of Pod `leader`'s network namespace.
pub async fn established(client: &Client, leader: &str) -> Result<Connections, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let pod = pods.get(leader).await?;
    let id = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().find_map(|c| c.container_id))
        .and_then(|id| id.split_once("://").map(|(_, id)| id.to_string()))
        .ok_or_else(|| format!("Pod {leader} reports no container ID"))?;
    tokio::task::spawn_blocking(move || count_for_container(&id)).await?
}

fn count_for_container(id: &str) -> Result<Connections, Error> {
    let pid = find_pid(id)?.ok_or("its container's process is not on this machine")?;
    let dir = Path::new("/proc").join(pid.to_string()).join("net");
    let mut count = Connections::default();
    for file in ["tcp", "tcp6"] {
        // A kernel without IPv6 has no tcp6.
        let Ok(table) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&ESTABLISHED) {
                continue;
            }
            let local = fields.get(1).and_then(|f| port(f));
            let remote = fields.get(2).and_then(|f| port(f));
            match (local, remote) {
                (_, Some(443 | 6443)) => count.api += 1,
                (Some(8080 | 8081), _) => count.inbound += 1,
                _ => count.plugins += 1,
            }
        }
    }
    Ok(count)
}

fn find_pid(container_id: &str) -> Result<Option<u32>, Error> {
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we look, and others' cgroups may be unreadable.
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if cgroup.contains(container_id) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}
