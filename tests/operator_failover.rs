//! The operator deployed from `deploy/` (namespace `hector-system`, two replicas, leader
//! election on the Lease `hector-operator`): restarts change nothing, exactly one replica
//! leads, a killed or frozen leader is replaced by one that reconciles at once, a thawed old
//! leader writes nothing, and an API server outage costs no restart. These tests restart the
//! operator and the API server, so they live in their own test binary (cargo runs binaries
//! one after another) and run one at a time. They need the local cluster of
//! `tests/cluster/cluster` (they freeze containers through its containerd and stop its API
//! server).

mod common;

use std::time::{Duration, Instant};

use common::*;
use hector_operator::crd::{HectorPlugin, Phase};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const SELECTOR: &str = "app.kubernetes.io/name=hector-operator";
/// The operator's lease duration (deploy/ uses the default).
const LEASE_DURATION: Duration = Duration::from_secs(15);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn operator_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    pods.list(&ListParams::default().labels(SELECTOR))
        .await
        .expect("list operator Pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The Prometheus text of an operator Pod; fails the test when it cannot be read.
async fn metrics_of(client: &Client, pod: &str) -> String {
    eventually(
        &format!("metrics of {pod}"),
        Duration::from_secs(20),
        || operator_pod_get(client, pod, 8080, "/metrics"),
    )
    .await
}

/// Runs the local cluster's control script (`tests/cluster/cluster ARGS`).
fn cluster(args: &[&str]) -> String {
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/cluster/cluster"
    ))
    .args(args)
    .output()
    .expect("run tests/cluster/cluster");
    assert!(
        out.status.success(),
        "cluster {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The containerd id of a Pod's `operator` container.
fn container_id(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "operator"))
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.strip_prefix("containerd://"))
        .expect("the operator container runs under containerd")
        .to_string()
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or_default()
}

async fn pod_named(client: &Client, name: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    pods.get(name).await.expect("operator Pod")
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
            let leader = lease_holder(client).await?;
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
    let leader_metrics = metrics_of(&client, &leader).await;
    let follower_metrics = metrics_of(&client, &follower).await;
    assert_eq!(metric(&leader_metrics, "hector_operator_leader"), 1.0);
    assert_eq!(metric(&follower_metrics, "hector_operator_leader"), 0.0);
    // A follower may have led earlier (metrics count across terms): what matters is that it
    // reconciles nothing while a plugin is created and reconciled by the leader.
    let ns = TestNamespace::new(&client, "op-lead").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &api,
        plugin(
            "watched",
            json!({
                "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"},
                "endpoint": "127.0.0.1:1",
            }),
        ),
    )
    .await;
    eventually(
        "the leader reconciled it",
        Duration::from_secs(30),
        || async { api.get("watched").await.ok()?.status.map(|_| ()) },
    )
    .await;
    assert_eq!(
        metric(
            &metrics_of(&client, &follower).await,
            "hector_operator_reconciles_total"
        ),
        metric(&follower_metrics, "hector_operator_reconciles_total"),
        "the follower reconciles nothing"
    );
    assert_eq!(
        operator_pod_get(&client, &follower, 8081, "/readyz")
            .await
            .as_deref(),
        Some("standby")
    );

    // Kill the leader without a chance to release the lease: a deleted Pod's process gets
    // SIGTERM first (and would hand the lease over), so it is frozen before the delete and
    // dies frozen. The handover is measured on the lease itself, from the dead leader's last
    // renewal to the new holder's acquisition (both stamped on this one machine's clock).
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let id = container_id(&pod_named(&client, &leader).await);
    cluster(&["ctr", "task", "kill", "--signal", "SIGSTOP", &id]);
    let killed = Instant::now();
    pods.delete(&leader, &DeleteParams::default().grace_period(0))
        .await?;
    let mut last_renewal = None;
    let (new_leader, acquired) = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no new leader 60 s after the kill"
        );
        let spec = leases
            .get_opt("hector-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec);
        if let Some(spec) = spec {
            let holder = spec.holder_identity.unwrap_or_default();
            if holder == leader {
                last_renewal = spec.renew_time.map(|t| t.0);
            } else if !holder.is_empty() {
                let acquired = spec.acquire_time.expect("a taken lease records when").0;
                break (holder, acquired);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = killed.elapsed();
    let last_renewal = last_renewal.expect("the lease named the killed leader after the kill");
    let gap = Duration::try_from(acquired.duration_since(last_renewal))
        .expect("the lease was acquired after the last renewal");
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
    // Never before a whole lease duration without renewal (what fencing relies on). At most:
    // the follower sees the renewal up to one retry period late, waits the duration, and acts
    // on its next tick, plus its lease requests on a loaded API server.
    let retry = LEASE_DURATION / 7;
    let bound = LEASE_DURATION + 2 * retry + Duration::from_secs(2);
    assert!(
        gap > LEASE_DURATION && gap <= bound,
        "lease taken {gap:?} after the last renewal (expected over {LEASE_DURATION:?}, at most {bound:?})"
    );
    eprintln!(
        "leader handover after a kill: {took:?} from the delete, {gap:?} from the last renewal"
    );
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
        || async { lease_holder(&client).await.filter(|h| !old.contains(h)) },
    )
    .await;
    // The new leader reconciles every plugin and re-renders the ConfigMap at once; give it
    // time for that and for several probe periods.
    let reconciled = eventually(
        "the new leader reconciled the plugins",
        Duration::from_secs(60),
        || async {
            let text = operator_pod_get(&client, &new_leader, 8080, "/metrics").await?;
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
    let metrics = metrics_of(&client, &new_leader).await;
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

fn echo_plugin(name: &str, replicas: i32) -> serde_json::Value {
    plugin(
        name,
        json!({
            "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"},
            "image": format!("hector.dev/echo-llm:{IMAGE_TAG}"),
            "imagePullPolicy": "Never",
            "command": ["/plugin/echo-llm"],
            "replicas": replicas,
            "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
        }),
    )
}

async fn wait_ready(api: &Api<HectorPlugin>, name: &str) -> HectorPlugin {
    eventually(
        &format!("{name} Ready"),
        Duration::from_secs(120),
        || async {
            let p = api.get(name).await.ok()?;
            (p.status.as_ref()?.phase == Some(Phase::Ready)).then_some(p)
        },
    )
    .await
}

/// A follower that has stood by for minutes takes over from a leader whose process is frozen
/// (SIGSTOP through the node's container runtime: no connection is closed, nothing is
/// released), reconciles a spec change made after the takeover at once, and the old leader,
/// thawed, writes nothing and stands by.
#[tokio::test]
async fn a_frozen_leader_is_replaced_by_one_that_reconciles_and_writes_nothing_after() -> TestResult
{
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let (leader, follower) = settled(&client).await;
    // The bug this guards against showed only in a follower that had stood by for minutes.
    // Since its container (re)started: a restarted container is a new process.
    let started = pod_named(&client, &follower)
        .await
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().find(|c| c.name == "operator"))
        .and_then(|c| c.state?.running?.started_at)
        .expect("follower container start time");
    let standing = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)?
        .as_secs()
        .saturating_sub(u64::try_from(started.0.as_second()).unwrap_or(0));
    if standing < 90 {
        tokio::time::sleep(Duration::from_secs(90 - standing)).await;
    }
    assert_eq!(
        operator_pod_get(&client, &follower, 8081, "/readyz")
            .await
            .as_deref(),
        Some("standby")
    );

    let ns = TestNamespace::new(&client, "op-freeze").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, echo_plugin("frozen", 1)).await;
    wait_ready(&api, "frozen").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = pod_named(&client, &leader).await;
    let old_restarts = restarts(&old);
    let writes_before = metric(
        &metrics_of(&client, &leader).await,
        "hector_operator_api_writes_total",
    );

    let id = container_id(&old);
    cluster(&["ctr", "task", "kill", "--signal", "SIGSTOP", &id]);
    let frozen = Instant::now();
    let thaw = Thaw(id.clone());
    let new_leader = eventually("a new leader", Duration::from_secs(40), || async {
        lease_holder(&client).await.filter(|h| *h != leader)
    })
    .await;
    let took = frozen.elapsed();
    assert_eq!(new_leader, follower, "the standing follower took over");
    eprintln!("leader handover after a freeze: {took:?}");

    // A change made after the takeover is applied within seconds.
    let changed = Instant::now();
    apply(&api, echo_plugin("frozen", 2)).await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    eventually(
        "the new leader applied the change",
        Duration::from_secs(20),
        || async {
            let p = api.get("frozen").await.ok()?;
            let d = deployments.get("frozen").await.ok()?;
            let observed = p.status.as_ref()?.observed_generation;
            (observed == p.metadata.generation && d.spec.as_ref()?.replicas == Some(2))
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "change applied by the new leader after {:?}",
        changed.elapsed()
    );
    assert_eq!(
        operator_pod_get(&client, &new_leader, 8081, "/readyz")
            .await
            .as_deref(),
        Some("leading")
    );

    drop(thaw);
    let old = pod_named(&client, &leader).await;
    assert_eq!(
        restarts(&old),
        old_restarts,
        "the old leader was thawed, not restarted (the test must resume the same process)"
    );
    eventually(
        "the thawed leader stands by",
        Duration::from_secs(30),
        || async {
            (operator_pod_get(&client, &leader, 8081, "/readyz")
                .await
                .as_deref()
                == Some("standby"))
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = metrics_of(&client, &leader).await;
    assert_eq!(metric(&after, "hector_operator_leader"), 0.0);
    assert_eq!(
        metric(&after, "hector_operator_api_writes_total"),
        writes_before,
        "the thawed leader wrote nothing"
    );
    assert_eq!(
        lease_holder(&client).await.as_deref(),
        Some(new_leader.as_str())
    );
    settled(&client).await;
    Ok(())
}

/// Resumes a frozen container when dropped, so a failing test never leaves it frozen.
struct Thaw(String);

impl Drop for Thaw {
    fn drop(&mut self) {
        cluster_quietly(&["ctr", "task", "kill", "--signal", "SIGCONT", &self.0]);
    }
}

/// Runs the cluster script from a `Drop`, where a failure can only be ignored.
fn cluster_quietly(args: &[&str]) {
    let _ = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/cluster/cluster"
    ))
    .args(args)
    .status();
}

/// The API server stopped for 30 s: agents keep calling (the published ConfigMap stays as it
/// was), no operator replica restarts, and a change made afterwards is published within
/// seconds.
#[tokio::test]
async fn an_api_server_outage_costs_no_restart_and_changes_nothing() -> TestResult {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let _serial = SERIAL.lock().await;
    let client = client().await;
    settled(&client).await;
    // The calls made while the API server is down present a token minted before.
    let _ = operator_token_file();
    let ns = TestNamespace::new(&client, "op-outage").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, echo_plugin("steady", 1)).await;
    let ready = wait_ready(&api, "steady").await;
    let endpoint = ready
        .status
        .as_ref()
        .and_then(|s| s.endpoints.first().cloned())
        .expect("endpoint");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    eventually("published", Duration::from_secs(30), || async {
        let cm = cms.get_opt("hector-plugins").await.ok()??;
        cm.data?
            .get("endpoints.json")?
            .contains(&endpoint)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rv_before = cms.get("hector-plugins").await?.resource_version();
    let restarts_before: Vec<(String, i32)> = operator_pods(&client)
        .await
        .iter()
        .map(|p| (p.name_any(), restarts(p)))
        .collect();

    // An agent keeps calling the published endpoint throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let caller = {
        let (stop, calls, failures, endpoint) = (
            Arc::clone(&stop),
            Arc::clone(&calls),
            Arc::clone(&failures),
            endpoint.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match generate_text(&endpoint, "still there?").await {
                    Ok(_) => calls.fetch_add(1, Ordering::SeqCst),
                    Err(_) => failures.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    cluster(&["apiserver-stop"]);
    let restart = ApiServerBack;
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(restart);
    stop.store(true, Ordering::SeqCst);
    caller.await?;
    let made = calls.load(Ordering::SeqCst);
    eprintln!(
        "during the outage: {made} calls, {} failed",
        failures.load(Ordering::SeqCst)
    );
    assert!(made > 50, "the agent kept calling");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no call failed during the outage"
    );

    // Read at once, before the cluster reacts to the outage: nothing was written meanwhile.
    let client = common::client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert_eq!(
        cms.get("hector-plugins").await?.resource_version(),
        rv_before,
        "the published ConfigMap was not rewritten during the outage"
    );
    // Afterwards Kubernetes itself may mark the node and its Pods NotReady for a moment (its
    // node controller saw no heartbeat for the outage's length), which unpublishes and
    // republishes like any readiness change; what matters is that the plugin is published.
    settled(&client).await;
    eventually(
        "the plugin published after the outage",
        Duration::from_secs(120),
        || async {
            let cm = cms.get_opt("hector-plugins").await.ok()??;
            cm.data?
                .get("endpoints.json")?
                .contains(&endpoint)
                .then_some(())
        },
    )
    .await;
    for (pod, before) in restarts_before {
        assert_eq!(
            restarts(&pod_named(&client, &pod).await),
            before,
            "operator Pod {pod} did not restart"
        );
    }
    // The operator is back when a replica leads with synced caches (`/readyz` says so).
    let back = Instant::now();
    let leader = eventually(
        "a replica leading with synced caches",
        Duration::from_secs(120),
        || async {
            let holder = lease_holder(&client).await?;
            (operator_pod_get(&client, &holder, 8081, "/readyz")
                .await
                .as_deref()
                == Some("leading"))
            .then_some(holder)
        },
    )
    .await;
    eprintln!(
        "{leader} leads with synced caches {:?} after the plugin was republished",
        back.elapsed()
    );
    // A change after the outage is published within seconds.
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    // An external plugin (no Pods: Kubernetes' own controllers, which create Pods, come back
    // from the outage at their own pace).
    let (_external, external) = external_echo(&client, "alias: ").await;
    apply(
        &api,
        plugin(
            "alias",
            json!({
                "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"},
                "endpoint": external,
                "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
            }),
        ),
    )
    .await;
    let applied = Instant::now();
    eventually(
        "the new plugin published",
        Duration::from_secs(30),
        || async {
            let cm = cms.get_opt("hector-plugins").await.ok()??;
            cm.data?
                .get("endpoints.json")?
                .contains("\"alias\"")
                .then_some(())
        },
    )
    .await;
    eprintln!("published {:?} after the change", applied.elapsed());
    // Kubernetes' own controllers back off while the API server is away and come back at
    // their own pace; the next test needs them (a namespace's default ServiceAccount).
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let probe_ns = format!("{}-settle", ns.name);
    namespaces
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": probe_ns}}))?,
        )
        .await?;
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &probe_ns);
    let settled_at = Instant::now();
    eventually(
        "the cluster's controllers to recover from the outage",
        Duration::from_secs(180),
        || async { accounts.get_opt("default").await.ok().flatten() },
    )
    .await;
    eprintln!(
        "kube-controller-manager made a ServiceAccount again {:?} after the API server returned",
        settled_at.elapsed()
    );
    cluster_steady_again(&client, &probe_ns).await?;
    namespaces
        .delete(&probe_ns, &DeleteParams::background())
        .await?;
    Ok(())
}

/// How long the node and the system Pods must stay Ready after an outage: longer than the
/// node controller's grace period (50 s), after which a stale view of the node's lease can
/// no longer mark it NotReady.
const STEADY: Duration = Duration::from_secs(60);

/// Waits until the rest of the cluster is over an API server outage, so that the tests after
/// this one do not meet its aftermath. Two were seen: CoreDNS answers NXDOMAIN for a Service
/// made after the outage for a minute or more (its watches come back at their own pace; an
/// agent Pod of the next test binary then failed with "Temporary failure in name
/// resolution"), and the node controller, whose view of the node's lease was stale, marked
/// the node and every Pod NotReady twice within the minute after the API server returned.
async fn cluster_steady_again(client: &Client, ns: &str) -> TestResult {
    use k8s_openapi::api::core::v1::{Node, Service};
    let started = Instant::now();
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "dns-check"},
                "spec": {"ports": [{"port": 80}]},
            }))?,
        )
        .await?;
    let dns: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    let dns_ip = dns
        .get("kube-dns")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or("kube-dns has no cluster IP")?;
    let name = format!("dns-check.{ns}.svc.cluster.local");
    eventually(
        "CoreDNS to resolve a Service made after the outage",
        Duration::from_secs(300),
        || async { resolves(&dns_ip, &name).await.then_some(()) },
    )
    .await;
    eprintln!(
        "CoreDNS resolved a new Service {:?} after the outage test's end",
        started.elapsed()
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut ready_since: Option<Instant> = None;
    loop {
        let nodes_ready = nodes.list(&ListParams::default()).await.is_ok_and(|l| {
            !l.items.is_empty()
                && l.items.iter().all(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
        });
        let pods_ready = system
            .list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.iter().all(pod_ready));
        if nodes_ready && pods_ready {
            let since = *ready_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= STEADY {
                break;
            }
        } else {
            ready_since = None;
        }
        assert!(
            Instant::now() < deadline,
            "the node and kube-system were not Ready for {STEADY:?} within 5 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "the node and kube-system Ready for {STEADY:?}, {:?} after the outage test's end",
        started.elapsed()
    );
    Ok(())
}

/// Whether the DNS server at `server` answers an A query for `name` with a record.
async fn resolves(server: &str, name: &str) -> bool {
    let Ok(socket) = tokio::net::UdpSocket::bind("0.0.0.0:0").await else {
        return false;
    };
    // Header: ID, recursion desired, one question; then the name, type A, class IN.
    let mut query = vec![0x4e, 0x53, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    if socket.send_to(&query, (server, 53)).await.is_err() {
        return false;
    }
    let mut answer = [0u8; 512];
    match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut answer)).await {
        // Same ID, no error (RCODE 0), at least one answer record.
        Ok(Ok(n)) if n >= 12 => {
            answer[..2] == query[..2] && answer[3] & 0x0f == 0 && (answer[6], answer[7]) != (0, 0)
        }
        _ => false,
    }
}

/// Starts the API server again when dropped, so a failing test never leaves it stopped.
struct ApiServerBack;

impl Drop for ApiServerBack {
    fn drop(&mut self) {
        cluster_quietly(&["apiserver-start"]);
    }
}
