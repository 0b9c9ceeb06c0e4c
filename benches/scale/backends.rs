//! The plugins that `spec.endpoint` plugins name: plain echo-llm servers (no launcher, so
//! plain gRPC without TLS or token, which is how the operator probes an endpoint), one
//! Deployment and ClusterIP Service each in their own namespace. Many plugins share one.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::Error;
use crate::namespaces::{self, BACKENDS, MANAGER};

/// The port echo-llm listens on when nothing else is set.
const PORT: u16 = 50051;

fn name(i: usize) -> String {
    format!("echo-{i}")
}

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "echo-llm",
                        "image": "hector.dev/echo-llm:dev",
                        "imagePullPolicy": "Never",
                        "ports": [{"containerPort": PORT, "name": "grpc"}],
                        "readinessProbe": {"grpc": {"port": PORT}, "periodSeconds": 2},
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                      "limits": {"memory": "64Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false,
                                            "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    })
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name},
                 "ports": [{"name": "grpc", "port": PORT, "targetPort": PORT}]},
    })
}

/// Starts `count` servers (or keeps those running) and returns their `ip:port` addresses
/// once every one is Ready.
pub async fn start(client: &Client, count: usize, timeout: Duration) -> Result<Vec<String>, Error> {
    namespaces::apply(client, BACKENDS).await?;
    namespaces::wait_default_account(client, BACKENDS, timeout).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), BACKENDS);
    let services: Api<Service> = Api::namespaced(client.clone(), BACKENDS);
    let ssa = PatchParams::apply(MANAGER).force();
    let mut addresses = Vec::with_capacity(count);
    for i in 0..count {
        let n = name(i);
        deployments
            .patch(&n, &ssa, &Patch::Apply(deployment(&n)))
            .await?;
        let svc = services.patch(&n, &ssa, &Patch::Apply(service(&n))).await?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .ok_or_else(|| format!("Service {BACKENDS}/{n} has no cluster IP"))?;
        addresses.push(format!("{ip}:{PORT}"));
    }
    wait_ready(&deployments, count, timeout).await?;
    Ok(addresses)
}

async fn wait_ready(
    deployments: &Api<Deployment>,
    count: usize,
    timeout: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut waiting = Vec::new();
        for i in 0..count {
            let d = deployments.get(&name(i)).await?;
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready < 1 {
                waiting.push(name(i));
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "echo-llm servers not Ready after {timeout:?}: {}",
                waiting.join(" ")
            )
            .into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
