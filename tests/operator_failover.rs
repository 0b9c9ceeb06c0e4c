//! The operator deployed from `deploy/` (namespace `hector-system`, two replicas, leader
//! election on the Lease `hector-operator`): restarts change nothing, exactly one replica
//! leads, and a killed leader is replaced. These tests restart the operator, so they live
//! in their own test binary (cargo runs binaries one after another) and run one at a time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hector_operator::crd::{HectorPlugin, Phase};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const OPERATOR_NS: &str = "hector-system";
const LEASE: &str = "hector-operator";
const SELECTOR: &str = "app.kubernetes.io/name=hector-operator";
/// The operator's lease duration (deploy/ uses the default).
const LEASE_DURATION: Duration = Duration::from_secs(15);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    leases
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn operator_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    pods.list(&ListParams::default().labels(SELECTOR))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// GET `path` on `port` of an operator Pod through the API server's proxy.
async fn pod_get(client: &Client, pod: &str, port: u16, path: &str) -> Option<String> {
    let uri = format!("/api/v1/namespaces/{OPERATOR_NS}/pods/{pod}:{port}/proxy{path}");
    let request = http::Request::get(uri).body(Vec::new()).ok()?;
    client.request_text(request).await.ok()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until both replicas run and one holds the lease; returns (leader, follower).
async fn settled(client: &Client) -> (String, String) {
    eventually(
        "two operator replicas, one leading",
        Duration::from_secs(120),
        || async {
            let pods = operator_pods(client).await;
            let ready: Vec<String> = pods
                .iter()
                .filter(|p| pod_ready(p))
                .map(|p| p.name_any())
                .collect();
            let leader = holder(client).await?;
            if ready.len() != 2 || !ready.contains(&leader) {
                return None;
            }
            let follower = ready.into_iter().find(|p| *p != leader)?;
            Some((leader, follower))
        },
    )
    .await
}

#[tokio::test]
async fn exactly_one_replica_leads_and_a_killed_leader_is_replaced() -> TestResult {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let (leader, follower) = settled(&client).await;
    let leader_metrics = pod_get(&client, &leader, 8080, "/metrics")
        .await
        .expect("leader metrics");
    let follower_metrics = pod_get(&client, &follower, 8080, "/metrics")
        .await
        .expect("follower metrics");
    assert_eq!(metric(&leader_metrics, "hector_operator_leader"), 1.0);
    assert_eq!(metric(&follower_metrics, "hector_operator_leader"), 0.0);
    assert_eq!(
        metric(&follower_metrics, "hector_operator_reconciles_total"),
        0.0,
        "the follower reconciles nothing"
    );
    assert_eq!(
        pod_get(&client, &follower, 8081, "/readyz")
            .await
            .as_deref(),
        Some("standby")
    );

    // Kill the leader without a chance to release the lease.
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let killed = Instant::now();
    pods.delete(&leader, &DeleteParams::default().grace_period(0))
        .await?;
    let new_leader = eventually("a new leader", Duration::from_secs(60), || async {
        holder(&client).await.filter(|h| *h != leader)
    })
    .await;
    let took = killed.elapsed();
    // The standing-by replica, or the replacement the ReplicaSet starts meanwhile: either
    // way one of the running replicas.
    let running: Vec<String> = operator_pods(&client)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert!(
        running.contains(&new_leader),
        "the new leader {new_leader} is a running replica: {running:?}"
    );
    // The follower may have seen the last renewal up to one retry period late.
    let bound = LEASE_DURATION + LEASE_DURATION / 7 + Duration::from_secs(1);
    assert!(took <= bound, "handover took {took:?} (bound {bound:?})");
    eprintln!("leader handover after a kill: {took:?}");
    settled(&client).await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_operator_with_nothing_changed_writes_nothing() -> TestResult {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    settled(&client).await;
    let ns = TestNamespace::new(&client, "op-restart").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    for name in ["one", "two"] {
        apply(
            &api,
            plugin(
                name,
                json!({
                    "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"},
                    "image": format!("hector.dev/echo-llm:{IMAGE_TAG}"),
                    "imagePullPolicy": "Never",
                    "command": ["/plugin/echo-llm"],
                    "config": {"model": name},
                    "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
                }),
            ),
        )
        .await;
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        "both Ready and published",
        Duration::from_secs(120),
        || async {
            for name in ["one", "two"] {
                let p = api.get(name).await.ok()?;
                if p.status?.phase != Some(Phase::Ready) {
                    return None;
                }
            }
            let cm = cms.get_opt("hector-plugins").await.ok()??;
            let text = cm.data?.get("endpoints.json")?.clone();
            (text.contains("\"one\"") && text.contains("\"two\"")).then_some(())
        },
    )
    .await;
    // Let probes and facts settle, then take the versions.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let versions = |api: Api<HectorPlugin>, cms: Api<ConfigMap>| async move {
        let mut v = Vec::new();
        for name in ["one", "two"] {
            v.push(api.get(name).await.ok().and_then(|p| p.resource_version()));
        }
        v.push(
            cms.get("hector-plugins")
                .await
                .ok()
                .and_then(|c| c.resource_version()),
        );
        v
    };
    let before = versions(api.clone(), cms.clone()).await;

    let old: Vec<String> = operator_pods(&client)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    for pod in &old {
        pods.delete(pod, &DeleteParams::default()).await?;
    }
    let new_leader = eventually(
        "a new replica leading",
        Duration::from_secs(120),
        || async { holder(&client).await.filter(|h| !old.contains(h)) },
    )
    .await;
    // The new leader reconciles every plugin and re-renders the ConfigMap at once; give it
    // time for that and for several probe periods.
    let reconciled = eventually(
        "the new leader reconciled the plugins",
        Duration::from_secs(60),
        || async {
            let text = pod_get(&client, &new_leader, 8080, "/metrics").await?;
            // Reconciled both plugins and probed them (the probes' first results are in).
            (metric(&text, "hector_operator_reconciles_total{result=\"ok\"}") >= 2.0
                && metric(&text, "hector_operator_probe_duration_seconds_count") >= 2.0)
                .then_some(text)
        },
    )
    .await;
    assert!(reconciled.contains("hector_operator_probe_duration_seconds_count"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = versions(api.clone(), cms.clone()).await;
    assert_eq!(
        before, after,
        "no status or ConfigMap write after a restart"
    );
    let metrics = pod_get(&client, &new_leader, 8080, "/metrics")
        .await
        .unwrap_or_default();
    let writes = format!(
        "hector_operator_configmap_writes_total{{namespace=\"{}\"}}",
        ns.name
    );
    assert_eq!(
        metric(&metrics, &writes),
        0.0,
        "the new leader wrote no endpoints ConfigMap here"
    );
    Ok(())
}
