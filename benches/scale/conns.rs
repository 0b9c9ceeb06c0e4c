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

/// ESTABLISHED TCP connections of Pod `leader`'s network namespace.
pub async fn established(client: &Client, leader: &str) -> Result<usize, Error> {
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

fn count_for_container(id: &str) -> Result<usize, Error> {
    let pid = find_pid(id)?.ok_or("its container's process is not on this machine")?;
    let dir = Path::new("/proc").join(pid.to_string()).join("net");
    let mut count = 0;
    for file in ["tcp", "tcp6"] {
        // A kernel without IPv6 has no tcp6.
        let Ok(table) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        count += table
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(3) == Some(ESTABLISHED))
            .count();
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
