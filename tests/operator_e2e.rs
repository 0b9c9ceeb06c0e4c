//! The operator on a live cluster: HectorPlugins applied here are reconciled, probed and
//! published by the operator that `make test` deploys from `deploy/` (any operator watching
//! all namespaces will do). Each test works in its own namespace.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hector_operator::crd::{HectorPlugin, Phase};
use hector_plugin_sdk::endpoints::{EndpointsFile, PLUGINS_YAML_KEY, PublishedPlugin};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const ENDPOINTS_CM: &str = "hector-plugins";

fn echo_spec(config: serde_json::Value) -> serde_json::Value {
    json!({
        "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider",
                     "capabilities": {"streaming": true}},
        "image": format!("hector.dev/echo-llm:{IMAGE_TAG}"),
        "imagePullPolicy": "Never",
        "command": ["/plugin/echo-llm"],
        "config": config,
        "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
    })
}

fn go_spec(name: &str, config: serde_json::Value) -> serde_json::Value {
    json!({
        "manifest": {"name": name, "version": "1.0.0", "type": "llm_provider"},
        "image": format!("hector.dev/go-llm:{IMAGE_TAG}"),
        "imagePullPolicy": "Never",
        "command": ["/plugin/go-llm"],
        "config": config,
        "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
    })
}

fn condition<'a>(p: &'a HectorPlugin, type_: &str) -> Option<&'a Condition> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn phase(p: &HectorPlugin) -> Option<Phase> {
    p.status.as_ref()?.phase
}

async fn wait_for<F>(
    api: &Api<HectorPlugin>,
    name: &str,
    what: &str,
    secs: u64,
    check: F,
) -> HectorPlugin
where
    F: Fn(&HectorPlugin) -> bool,
{
    eventually(
        &format!("{name}: {what}"),
        Duration::from_secs(secs),
        || async { api.get_opt(name).await.ok().flatten().filter(|p| check(p)) },
    )
    .await
}

async fn wait_phase(api: &Api<HectorPlugin>, name: &str, want: Phase) -> HectorPlugin {
    wait_for(api, name, &format!("phase {want:?}"), 120, |p| {
        phase(p) == Some(want)
    })
    .await
}

async fn endpoints_file(client: &Client, ns: &str) -> Option<EndpointsFile> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = cms.get_opt(ENDPOINTS_CM).await.ok()??;
    EndpointsFile::parse(cm.data?.get("endpoints.json")?).ok()
}

async fn published(client: &Client, ns: &str, name: &str) -> Option<PublishedPlugin> {
    endpoints_file(client, ns).await?.plugins.get(name).cloned()
}

async fn events_of(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

#[tokio::test]
async fn applied_plugin_is_ready_published_and_called() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-echo").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &api,
        plugin(
            "echo",
            echo_spec(json!({"prefix": "remote: ", "model": "echo-test-1", "max_tokens": 512})),
        ),
    )
    .await;
    // The phase says it serves as soon as an endpoint is published; the Ready condition also
    // waits for the Deployment's own status to count the Pod available.
    let p = wait_for(&api, "echo", "Ready", 120, |p| {
        phase(p) == Some(Phase::Ready) && condition_is(p, "Ready", "True", "Ready")
    })
    .await;
    let status = p.status.clone().expect("status");
    assert_eq!(
        status.address.as_deref(),
        Some(format!("echo.{}.svc:50051", ns.name).as_str())
    );
    assert_eq!(status.endpoints.len(), 1, "{status:?}");
    assert_eq!(status.observed_generation, p.metadata.generation);
    for c in ["ConfigValid", "Deployed", "Healthy", "Published"] {
        let cond = condition(&p, c).unwrap_or_else(|| panic!("condition {c}"));
        assert_eq!(cond.status, "True", "{c}: {cond:?}");
    }
    let info = status.plugin.clone().expect("plugin facts");
    assert_eq!(info.model_name.as_deref(), Some("echo-test-1"));
    assert_eq!(info.max_tokens, Some(512));
    assert_eq!(info.name.as_deref(), Some("echo-llm"));

    let entry = eventually("published entry", Duration::from_secs(10), || {
        published(&client, &ns.name, "echo")
    })
    .await;
    assert_eq!(entry.endpoints, status.endpoints);
    assert_eq!(entry.address, format!("echo.{}.svc:50051", ns.name));
    assert_eq!(entry.plugin_type, "llm_provider");
    assert_eq!(entry.capabilities.get("streaming"), Some(&true));
    assert_eq!(
        entry.model.as_ref().map(|m| m.model_name.as_str()),
        Some("echo-test-1")
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let yaml = cms.get(ENDPOINTS_CM).await?.data.unwrap_or_default()[PLUGINS_YAML_KEY].clone();
    let parsed: serde_json::Value = serde_norway::from_str(&yaml)?;
    let hector = &parsed["plugins"]["llm_providers"]["echo"];
    // The default --plugin-dir: the copy and manifest examples/agent lays out for it.
    assert_eq!(
        hector,
        &serde_json::json!({"name": "echo", "type": "grpc",
                            "path": "/opt/hector/plugins/echo", "enabled": true})
    );

    // The published address works from here.
    let answer = generate_text(&entry.endpoints[0], "hello operator").await?;
    assert_eq!(answer, "remote: hello operator");
    Ok(())
}

#[tokio::test]
async fn unhealthy_plugin_is_unpublished_with_its_reason_and_republished() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-health").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    // The Go plugin is an unmodified HashiCorp go-plugin binary behind the launcher.
    apply(
        &api,
        plugin("go", go_spec("go-echo-llm", json!({"prefix": "go: "}))),
    )
    .await;
    let p = wait_phase(&api, "go", Phase::Ready).await;
    let endpoint = p
        .status
        .and_then(|s| s.endpoints.first().cloned())
        .expect("endpoint");
    eventually("published", Duration::from_secs(10), || {
        published(&client, &ns.name, "go")
    })
    .await;
    assert_eq!(generate_text(&endpoint, "hi").await?, "go: hi");

    assert_eq!(
        generate_text(&endpoint, "health:down").await?,
        "health:down"
    );
    let flipped = Instant::now();
    eventually("unpublished", Duration::from_secs(20), || async {
        published(&client, &ns.name, "go")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let took = flipped.elapsed();
    // period 1 s × threshold 2 + 2 s
    assert!(took <= Duration::from_secs(4), "unpublished after {took:?}");
    let degraded = wait_for(
        &api,
        "go",
        "Healthy=False with the plugin's reason",
        20,
        |p| {
            condition(p, "Healthy").is_some_and(|c| {
                c.status == "False"
                    && c.reason == "PluginUnhealthy"
                    && c.message.contains("switched off")
            })
        },
    )
    .await;
    assert_eq!(phase(&degraded), Some(Phase::Degraded));
    assert_eq!(
        condition(&degraded, "Published").map(|c| c.status.as_str()),
        Some("False")
    );
    let events = eventually(
        "a Warning event naming the reason",
        Duration::from_secs(10),
        || async {
            events_of(&client, &ns.name, "go")
                .await
                .into_iter()
                .find(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("PluginUnhealthy")
                        && e.note
                            .as_deref()
                            .is_some_and(|n| n.contains("switched off by a health:down request"))
                })
        },
    )
    .await;
    assert!(events.note.is_some());

    assert_eq!(generate_text(&endpoint, "health:up").await?, "health:up");
    eventually("republished", Duration::from_secs(30), || {
        published(&client, &ns.name, "go")
    })
    .await;
    wait_phase(&api, "go", Phase::Ready).await;
    Ok(())
}

#[tokio::test]
async fn a_plugin_reporting_another_identity_is_not_published() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-ident").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &api,
        plugin("liar", go_spec("not-the-go-plugin", json!({"prefix": "x"}))),
    )
    .await;
    // Hector's Go SDK reports an empty manifest: that must pass, whatever the resource says.
    apply(
        &api,
        plugin(
            "quiet",
            go_spec(
                "any-name",
                json!({"prefix": "q: ", "empty_manifest": "true"}),
            ),
        ),
    )
    .await;
    let liar = wait_for(&api, "liar", "Healthy=False IdentityMismatch", 120, |p| {
        condition(p, "Healthy")
            .is_some_and(|c| c.status == "False" && c.reason == "IdentityMismatch")
    })
    .await;
    let message = &condition(&liar, "Healthy").expect("Healthy").message;
    assert!(
        message.contains("go-echo-llm"),
        "names what it reported: {message}"
    );
    assert_eq!(
        condition(&liar, "Published").map(|c| c.status.as_str()),
        Some("False")
    );
    wait_phase(&api, "quiet", Phase::Ready).await;
    let file = eventually("quiet published", Duration::from_secs(10), || async {
        endpoints_file(&client, &ns.name)
            .await
            .filter(|f| f.plugins.contains_key("quiet"))
    })
    .await;
    assert!(!file.plugins.contains_key("liar"), "{file:?}");
    Ok(())
}

#[tokio::test]
async fn config_change_rolls_pods_without_a_failed_call() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-roll").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("roll", echo_spec(json!({"prefix": "v1: "})))).await;
    wait_phase(&api, "roll", Phase::Ready).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let ip = services
        .get("roll")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ClusterIP");
    let address = format!("{ip}:50051");
    // kube-proxy programs the Service within a moment of its endpoints appearing.
    eventually("Service answers", Duration::from_secs(30), || async {
        generate_text(&address, "ping").await.ok()
    })
    .await;

    // One client, one connection, calling in a loop through the Service, with no retries. The
    // test runtime is single-threaded: on a multi-threaded one, hyper can hand a call to a
    // connection in the instant between the server's GOAWAY and its own notice of it, and
    // fail that call unsent (`Cancelled`, "connection closed"); see docs/launcher.md.
    let channel = plugin_channel(&address).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (v1, v2, failures) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::<String>::new())),
    );
    let caller = {
        let (stop, v1, v2, failures) = (stop.clone(), v1.clone(), v2.clone(), failures.clone());
        tokio::spawn(async move {
            use hector_plugin_sdk::proto::{
                GenerateRequest, Message, llm_provider_client::LlmProviderClient,
            };
            let mut llm = LlmProviderClient::with_interceptor(channel, authorize);
            let deadline = Instant::now() + Duration::from_secs(240);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let req = GenerateRequest {
                    messages: vec![Message {
                        role: "user".into(),
                        content: "loop".into(),
                        ..Default::default()
                    }],
                    tools: vec![],
                };
                let mut request = tonic::Request::new(req);
                request.set_timeout(Duration::from_secs(5));
                match llm.generate(request).await {
                    Ok(r) if r.get_ref().text == "v1: loop" => {
                        v1.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.get_ref().text == "v2: loop" => {
                        v2.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("unexpected answer {:?}", r.get_ref().text)),
                    Err(s) => failures.lock().expect("lock").push(s.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = v1.load(Ordering::Relaxed);
    assert!(before > 0, "calls succeed before the change");
    let patch = json!({"spec": {"config": {"prefix": "v2: "}}});
    api.patch("roll", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;

    // Rolled: only new Pods left, and the new configuration answers.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let hash_before = pods
        .list(&ListParams::default().labels("hector.dev/plugin=roll"))
        .await?
        .items
        .first()
        .and_then(|p| p.annotations().get("hector.dev/config-hash").cloned());
    eventually(
        "the old Pod gone and v2 answering",
        Duration::from_secs(180),
        || async {
            let list = pods
                .list(&ListParams::default().labels("hector.dev/plugin=roll"))
                .await
                .ok()?;
            let only_new = !list.items.is_empty()
                && list
                    .items
                    .iter()
                    .all(|p| p.annotations().get("hector.dev/config-hash") != hash_before.as_ref());
            (only_new && v2.load(Ordering::Relaxed) > 20).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    caller.await?;
    let failures = failures.lock().expect("lock").clone();
    let (n1, n2) = (v1.load(Ordering::Relaxed), v2.load(Ordering::Relaxed));
    assert!(
        failures.is_empty(),
        "{} failed calls of {}: {:?}",
        failures.len(),
        n1 + n2 + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(n1 > 0 && n2 > 0, "v1 {n1}, v2 {n2}");
    Ok(())
}

#[tokio::test]
async fn replicas_are_reflected_in_the_published_endpoints() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-scale").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("scale", echo_spec(json!({})))).await;
    let count = |n: usize| {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            eventually(
                &format!("{n} published endpoints"),
                Duration::from_secs(120),
                || async {
                    let entry = published(&client, &ns, "scale").await?;
                    (entry.endpoints.len() == n).then_some(entry)
                },
            )
            .await
        }
    };
    count(1).await;
    api.patch(
        "scale",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 3}})),
    )
    .await?;
    let three = count(3).await;
    let p = wait_for(&api, "scale", "3 endpoints in status", 30, |p| {
        p.status.as_ref().is_some_and(|s| s.endpoints.len() == 3)
    })
    .await;
    assert_eq!(p.status.map(|s| s.endpoints), Some(three.endpoints));
    api.patch(
        "scale",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 0}})),
    )
    .await?;
    eventually(
        "entry gone at zero replicas",
        Duration::from_secs(90),
        || async {
            let file = endpoints_file(&client, &ns.name).await?;
            (!file.plugins.contains_key("scale")).then_some(())
        },
    )
    .await;
    let zero = wait_phase(&api, "scale", Phase::Pending).await;
    assert_eq!(
        condition(&zero, "Published").map(|c| c.reason.as_str()),
        Some("ScaledToZero")
    );
    // A deliberate scale to zero is no failure: not Ready (nothing serves), but reconciled
    // and not stalled, which kstatus reads as Current.
    let zero = wait_for(&api, "scale", "reconciled at zero", 90, |p| {
        condition_is(p, "Reconciling", "False", "Reconciled")
    })
    .await;
    assert!(condition_is(&zero, "Ready", "False", "ScaledToZero"));
    assert!(condition_is(&zero, "Stalled", "False", "AsExpected"));
    let status = zero.status.expect("status");
    assert_eq!(status.endpoints_summary.as_deref(), Some("0/0"));
    assert_eq!(status.replicas, Some(0));
    Ok(())
}

/// Agents learn of an endpoint before the plugin's status names it: for each new endpoint, the
/// first version of `hector-plugins` that publishes it is older than the first version of the
/// HectorPlugin whose status lists it (resourceVersions are etcd revisions, one counter for
/// both objects).
#[tokio::test]
async fn hector_plugins_names_an_endpoint_before_the_status_does() -> TestResult {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    let client = client().await;
    let ns = TestNamespace::new(&client, "op-order").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("order", echo_spec(json!({})))).await;
    let before: BTreeSet<String> = eventually(
        "one endpoint published",
        Duration::from_secs(120),
        || async {
            let entry = published(&client, &ns.name, "order").await?;
            (entry.endpoints.len() == 1).then(|| entry.endpoints.into_iter().collect())
        },
    )
    .await;

    // endpoint → the resourceVersion of the first version seen naming it.
    type FirstSeen = Arc<Mutex<BTreeMap<String, u64>>>;
    let note = |seen: &FirstSeen, rv: Option<String>, endpoints: Vec<String>| {
        let rv: u64 = rv
            .and_then(|v| v.parse().ok())
            .expect("numeric resourceVersion");
        let mut seen = seen.lock().expect("lock");
        for e in endpoints {
            seen.entry(e).or_insert(rv);
        }
    };
    let (in_configmap, in_status): (FirstSeen, FirstSeen) = Default::default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let cm_watch = tokio::spawn({
        let seen = Arc::clone(&in_configmap);
        let config = watcher::Config::default().fields(&format!("metadata.name={ENDPOINTS_CM}"));
        watcher(cms, config).applied_objects().for_each(move |cm| {
            if let Ok(cm) = cm {
                let endpoints = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("endpoints.json"))
                    .and_then(|j| EndpointsFile::parse(j).ok())
                    .and_then(|f| f.plugins.get("order").cloned())
                    .map(|p| p.endpoints)
                    .unwrap_or_default();
                note(&seen, cm.metadata.resource_version.clone(), endpoints);
            }
            futures::future::ready(())
        })
    });
    let status_watch = tokio::spawn({
        let seen = Arc::clone(&in_status);
        let config = watcher::Config::default().fields("metadata.name=order");
        watcher(api.clone(), config)
            .applied_objects()
            .for_each(move |p| {
                if let Ok(p) = p {
                    let endpoints = p.status.as_ref().map(|s| s.endpoints.clone());
                    note(
                        &seen,
                        p.metadata.resource_version.clone(),
                        endpoints.unwrap_or_default(),
                    );
                }
                futures::future::ready(())
            })
    });
    api.patch(
        "order",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 6}})),
    )
    .await?;
    let new_endpoints = |seen: &FirstSeen| -> BTreeMap<String, u64> {
        let seen = seen.lock().expect("lock");
        seen.iter()
            .filter(|(e, _)| !before.contains(*e))
            .map(|(e, rv)| (e.clone(), *rv))
            .collect()
    };
    eventually(
        "five new endpoints in both",
        Duration::from_secs(180),
        || async {
            (new_endpoints(&in_configmap).len() == 5 && new_endpoints(&in_status).len() == 5)
                .then_some(())
        },
    )
    .await;
    cm_watch.abort();
    status_watch.abort();
    let (published_at, listed_at) = (new_endpoints(&in_configmap), new_endpoints(&in_status));
    assert_eq!(
        published_at.keys().collect::<Vec<_>>(),
        listed_at.keys().collect::<Vec<_>>()
    );
    for (endpoint, published) in &published_at {
        let listed = listed_at[endpoint];
        assert!(
            *published < listed,
            "{endpoint}: in the status at version {listed}, in hector-plugins only at {published}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn deleting_the_plugin_unpublishes_it_and_collects_its_objects() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-delete").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("gone", echo_spec(json!({})))).await;
    apply(&api, plugin("stays", echo_spec(json!({})))).await;
    wait_phase(&api, "gone", Phase::Ready).await;
    wait_phase(&api, "stays", Phase::Ready).await;
    eventually("both published", Duration::from_secs(10), || async {
        let f = endpoints_file(&client, &ns.name).await?;
        (f.plugins.len() == 2).then_some(())
    })
    .await;
    api.delete("gone", &DeleteParams::background()).await?;
    let file = eventually("entry gone", Duration::from_secs(10), || async {
        endpoints_file(&client, &ns.name)
            .await
            .filter(|f| !f.plugins.contains_key("gone"))
    })
    .await;
    assert!(
        file.plugins.contains_key("stays"),
        "the other plugin stays: {file:?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        "owned objects collected",
        Duration::from_secs(90),
        || async {
            let d = deployments.get_opt("gone").await.ok()?;
            let s = services.get_opt("gone").await.ok()?;
            let c = cms.get_opt("gone-config").await.ok()?;
            (d.is_none() && s.is_none() && c.is_none()).then_some(())
        },
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn drift_in_owned_objects_is_repaired() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-drift").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("drift", echo_spec(json!({})))).await;
    wait_phase(&api, "drift", Phase::Ready).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let old_uid = services.get("drift").await?.uid();
    services
        .delete("drift", &DeleteParams::background())
        .await?;
    eventually("the Service back", Duration::from_secs(30), || async {
        let s = services.get_opt("drift").await.ok()??;
        (s.uid() != old_uid).then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .patch(
            "drift",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 2}})),
        )
        .await?;
    eventually("replicas back to 1", Duration::from_secs(30), || async {
        let d = deployments.get("drift").await.ok()?;
        (d.spec?.replicas == Some(1)).then_some(())
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn external_endpoint_is_probed_and_published_without_pods() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-ext").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    // An external plugin is a plain gRPC server somewhere: echo-llm on the node.
    let (mut server, endpoint) = external_echo(&client, "ext: ").await;
    apply(
        &api,
        plugin(
            "ext",
            json!({"manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"},
                   "endpoint": endpoint,
                   "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2}}),
        ),
    )
    .await;
    let ext = wait_phase(&api, "ext", Phase::Ready).await;
    assert_eq!(
        condition(&ext, "Deployed").map(|c| c.reason.as_str()),
        Some("ExternalEndpoint")
    );
    let entry = eventually("ext published", Duration::from_secs(10), || {
        published(&client, &ns.name, "ext")
    })
    .await;
    assert_eq!(entry.address, endpoint);
    assert_eq!(entry.endpoints, vec![endpoint.clone()]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments.get_opt("ext").await?.is_none(),
        "no Pods for an external plugin"
    );
    assert!(
        entry.certificates.is_empty(),
        "an external plugin is reached in plaintext"
    );
    let _ = server.0.kill();
    Ok(())
}

// --- Ready, kstatus conditions, columns and the scale subresource -----------------------------

fn condition_is(p: &HectorPlugin, type_: &str, status: &str, reason: &str) -> bool {
    condition(p, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

fn kubectl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(kubectl_path())
        .args(args)
        .output()
        .expect("run kubectl")
}

fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The plugin's Pods (by its label; these tests make no look-alikes).
async fn plugin_pods(client: &Client, ns: &str, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("hector.dev/plugin={name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn ready_is_the_summary_and_kubectl_shows_it_in_columns() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-ready").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("echo", echo_spec(json!({"prefix": "r: "})))).await;
    // What a person (and the demo) waits on.
    kubectl_ok(&[
        "-n",
        &ns.name,
        "wait",
        "hp/echo",
        "--for=condition=Ready",
        "--timeout=180s",
    ]);
    let p = api.get("echo").await?;
    assert!(condition_is(&p, "Ready", "True", "Ready"), "{:?}", p.status);
    assert!(condition_is(&p, "Reconciling", "False", "Reconciled"));
    assert!(condition_is(&p, "Stalled", "False", "AsExpected"));
    let status = p.status.clone().expect("status");
    assert_eq!(status.observed_generation, p.metadata.generation);
    assert_eq!(status.endpoints_summary.as_deref(), Some("1/1"));
    assert_eq!(status.replicas, Some(1));
    assert_eq!(status.selector.as_deref(), Some("hector.dev/plugin=echo"));
    // kstatus-aware tools see it Current: reconciled and not stalled.
    kubectl_ok(&[
        "-n",
        &ns.name,
        "wait",
        "hp/echo",
        "--for=condition=Reconciling=False",
        "--timeout=10s",
    ]);

    let table = kubectl_ok(&["-n", &ns.name, "get", "hp", "echo"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "READY", "ENDPOINTS", "VERSION", "AGE"]);
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["echo", "True", "1/1", "0.1.0"], "{table}");
    let wide = kubectl_ok(&["-n", &ns.name, "get", "hp", "echo", "-o", "wide"]);
    let mut lines = wide.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "ENDPOINTS",
            "VERSION",
            "AGE",
            "TYPE",
            "ADDRESS",
            "REASON"
        ]
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row[5..],
        [
            "llm_provider",
            format!("echo.{}.svc:50051", ns.name).as_str(),
            "Ready"
        ],
        "{wide}"
    );

    // A change of spec: Reconciling until the new Pod serves, then Ready again.
    api.patch(
        "echo",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"config": {"prefix": "r2: "}}})),
    )
    .await?;
    let generation = api.get("echo").await?.metadata.generation;
    wait_for(
        &api,
        "echo",
        "Ready again at the new generation",
        180,
        |p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == generation)
                && condition_is(p, "Ready", "True", "Ready")
        },
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn kubectl_scale_changes_the_deployment_through_the_scale_subresource() -> TestResult {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-kscale").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("sc", echo_spec(json!({})))).await;
    wait_phase(&api, "sc", Phase::Ready).await;

    let out = kubectl_ok(&["-n", &ns.name, "scale", "hp/sc", "--replicas=2"]);
    assert!(out.contains("scaled"), "{out}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        "the Deployment at 2 replicas",
        Duration::from_secs(30),
        || async {
            let d = deployments.get("sc").await.ok()?;
            (d.spec?.replicas == Some(2)).then_some(())
        },
    )
    .await;
    let p = wait_for(&api, "sc", "2/2 endpoints and 2 replicas", 120, |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.replicas == Some(2) && s.endpoints_summary.as_deref() == Some("2/2"))
            && condition_is(p, "Ready", "True", "Ready")
    })
    .await;
    assert_eq!(p.spec.replicas, 2);
    let scale = api.get_scale("sc").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    let scale_status = scale.status.expect("scale status");
    assert_eq!(scale_status.replicas, 2);
    assert_eq!(
        scale_status.selector.as_deref(),
        Some("hector.dev/plugin=sc")
    );

    // Bad input is refused by the API server, naming the field.
    let refused = kubectl(&["-n", &ns.name, "scale", "hp/sc", "--replicas=101"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("spec.replicas"), "{message}");
    assert_eq!(api.get("sc").await?.spec.replicas, 2);

    // The operator itself can never scale a plugin: it holds no permission on the scale
    // subresource, so it cannot fight whoever does (a person, an HPA).
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    for verb in ["update", "patch"] {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!(
                    "system:serviceaccount:{OPERATOR_NS}:hector-operator"
                )),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("hector.dev".into()),
                    resource: Some("hectorplugins".into()),
                    subresource: Some("scale".into()),
                    verb: Some(verb.into()),
                    namespace: Some(ns.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = reviews.create(&Default::default(), &review).await?;
        assert!(
            !answer.status.is_some_and(|s| s.allowed),
            "the operator may {verb} hectorplugins/scale"
        );
    }
    Ok(())
}

/// Whether the cluster serves the resource-metrics API that HPAs read.
async fn metrics_api_available(client: &Client) -> bool {
    let request = match http::Request::get(
        "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io",
    )
    .body(Vec::new())
    {
        Ok(r) => r,
        Err(_) => return false,
    };
    let Ok(service) = client.request::<serde_json::Value>(request).await else {
        return false;
    };
    service["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Available" && c["status"] == "True")
}

#[tokio::test]
async fn an_hpa_scales_the_plugin_and_the_operator_never_resets_it() -> TestResult {
    use futures::StreamExt;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use kube::runtime::{WatchStreamExt, watcher};
    let client = client().await;
    let served = tokio::time::timeout(Duration::from_secs(60), async {
        while !metrics_api_available(&client).await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "metrics.k8s.io is not served: start metrics-server with tests/cluster/cluster metrics-up"
    );
    let ns = TestNamespace::new(&client, "op-hpa").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = echo_spec(json!({"prefix": "hpa: "}));
    // A small request, so that a modest load is far above the target.
    spec["resources"] = json!({"requests": {"cpu": "20m", "memory": "32Mi"}});
    apply(&api, plugin("auto", spec)).await;
    let ready = wait_for(&api, "auto", "Ready", 180, |p| {
        condition_is(p, "Ready", "True", "Ready")
    })
    .await;
    let endpoint = ready
        .status
        .and_then(|s| s.endpoints.first().cloned())
        .expect("an endpoint");

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "auto"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "hector.dev/v1alpha1", "kind": "HectorPlugin", "name": "auto"},
            "minReplicas": 1,
            "maxReplicas": 2,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                         "target": {"type": "Utilization", "averageUtilization": 50}}}],
            // No scale-down within the test, whatever the load does after it stops.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
        },
    }))?;
    hpas.create(&Default::default(), &hpa).await?;

    // Load: a few callers in a loop on the plugin's one Pod, until the HPA has scaled (or at
    // most 240 s): bounded in count and time, to a Pod of this test's namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..3 {
        let (stop, calls, endpoint) = (stop.clone(), calls.clone(), endpoint.clone());
        callers.push(tokio::spawn(async move {
            use hector_plugin_sdk::proto::{
                GenerateRequest, Message, llm_provider_client::LlmProviderClient,
            };
            let Ok(channel) = plugin_channel(&endpoint).await else {
                return;
            };
            let mut llm = LlmProviderClient::with_interceptor(channel, authorize);
            let deadline = Instant::now() + Duration::from_secs(240);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let request = GenerateRequest {
                    messages: vec![Message {
                        role: "user".into(),
                        content: "load ".repeat(200),
                        ..Default::default()
                    }],
                    tools: vec![],
                };
                if llm.generate(request).await.is_ok() {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let scaled = wait_for(
        &api,
        "auto",
        "spec.replicas 2, written by the HPA",
        240,
        |p| p.spec.replicas == 2,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await?;
    }
    assert!(
        calls.load(Ordering::Relaxed) > 0,
        "the load reached the plugin"
    );
    assert_eq!(scaled.spec.replicas, 2);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    eventually(
        "the Deployment at 2 replicas",
        Duration::from_secs(30),
        || async {
            let d = deployments.get("auto").await.ok()?;
            (d.spec?.replicas == Some(2)).then_some(())
        },
    )
    .await;
    // For 30 s, every version of the Deployment keeps 2 replicas: nobody resets them.
    let mut seen = Vec::new();
    let events = watcher(
        deployments.clone(),
        watcher::Config::default().fields("metadata.name=auto"),
    )
    .applied_objects();
    let watch = tokio::time::timeout(Duration::from_secs(30), async {
        futures::pin_mut!(events);
        while let Some(Ok(d)) = events.next().await {
            seen.push(d.spec.and_then(|s| s.replicas));
        }
    })
    .await;
    assert!(watch.is_err(), "the watch ran the whole 30 s");
    assert!(!seen.is_empty(), "the watch saw the Deployment");
    assert!(
        seen.iter().all(|r| *r == Some(2)),
        "replicas while watching: {seen:?}"
    );
    assert_eq!(api.get("auto").await?.spec.replicas, 2);
    let p = wait_for(&api, "auto", "status.replicas 2", 120, |p| {
        p.status.as_ref().is_some_and(|s| s.replicas == Some(2))
    })
    .await;
    assert_eq!(
        p.status.and_then(|s| s.selector),
        Some("hector.dev/plugin=auto".to_string())
    );
    let hpa = hpas.get("auto").await?;
    assert_eq!(hpa.status.map(|s| s.desired_replicas), Some(2));
    Ok(())
}

// --- scheduling and admission failures as reasons ----------------------------------------------

#[tokio::test]
async fn pods_that_cannot_be_created_or_placed_are_named_as_such() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-blocked").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    // No node has this label, so no Pod can be placed.
    let mut nowhere = echo_spec(json!({}));
    nowhere["podTemplate"] = json!({"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "example.org/no-such-zone", "whenUnsatisfiable": "DoNotSchedule"}]});
    apply(&api, plugin("nowhere", nowhere)).await;
    let p = wait_for(&api, "nowhere", "Deployed=False Unschedulable", 90, |p| {
        condition_is(p, "Deployed", "False", "Unschedulable")
    })
    .await;
    let deployed = condition(&p, "Deployed").expect("Deployed");
    assert!(
        deployed.message.contains("topology spread") && deployed.message.contains("0/1 Pods"),
        "the scheduler's words and the counts: {}",
        deployed.message
    );
    assert!(condition_is(&p, "Ready", "False", "Unschedulable"));
    assert!(condition_is(&p, "Stalled", "True", "Unschedulable"));
    assert!(condition_is(&p, "Reconciling", "False", "Stalled"));

    // A quota that admits no Pod: the ReplicaSet cannot create one.
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(client.clone(), &ns.name);
    quotas
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "no-pods"},
                "spec": {"hard": {"pods": "0"}},
            }))?,
        )
        .await?;
    eventually("the quota counted", Duration::from_secs(30), || async {
        let q = quotas.get("no-pods").await.ok()?;
        q.status?.hard?.contains_key("pods").then_some(())
    })
    .await;
    apply(&api, plugin("capped", echo_spec(json!({})))).await;
    let p = wait_for(&api, "capped", "Deployed=False FailedCreate", 90, |p| {
        condition_is(p, "Deployed", "False", "FailedCreate")
    })
    .await;
    let deployed = condition(&p, "Deployed").expect("Deployed");
    assert!(
        deployed.message.contains("exceeded quota"),
        "the API's message: {}",
        deployed.message
    );
    assert!(condition_is(&p, "Stalled", "True", "FailedCreate"));
    assert!(condition_is(&p, "Ready", "False", "FailedCreate"));
    assert_eq!(phase(&p), Some(Phase::Failed));
    let event = eventually(
        "a Warning Event FailedCreate",
        Duration::from_secs(10),
        || async {
            events_of(&client, &ns.name, "capped")
                .await
                .into_iter()
                .find(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("FailedCreate")
                })
        },
    )
    .await;
    assert!(event.note.is_some_and(|n| n.contains("exceeded quota")));
    Ok(())
}

#[tokio::test]
async fn a_pod_security_refusal_is_failed_create() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-psa").await;
    kubectl_ok(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let mut root = echo_spec(json!({}));
    root["podTemplate"] = json!({"securityContext": {"runAsNonRoot": false, "runAsUser": 0}});
    apply(&api, plugin("root", root)).await;
    let p = wait_for(&api, "root", "Deployed=False FailedCreate", 90, |p| {
        condition_is(p, "Deployed", "False", "FailedCreate")
    })
    .await;
    let message = &condition(&p, "Deployed").expect("Deployed").message;
    assert!(message.contains("PodSecurity"), "{message}");
    assert!(condition_is(&p, "Stalled", "True", "FailedCreate"));
    Ok(())
}

// --- spec.podTemplate ------------------------------------------------------------------------

#[tokio::test]
async fn the_pod_template_overlay_lands_on_the_pods() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-overlay").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = echo_spec(json!({"prefix": "o: "}));
    spec["podTemplate"] = json!({
        "metadata": {
            "labels": {"team": "search"},
            "annotations": {"sidecar.example.org/inject": "false"},
        },
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "container": {"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
    });
    apply(&api, plugin("dressed", spec)).await;
    wait_for(&api, "dressed", "Ready", 180, |p| {
        condition_is(p, "Ready", "True", "Ready")
    })
    .await;
    let pods = plugin_pods(&client, &ns.name, "dressed").await;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(
        pod.annotations()
            .get("sidecar.example.org/inject")
            .map(String::as_str),
        Some("false"),
        "a webhook-style annotation reaches the Pod"
    );
    assert_eq!(pod.labels().get("team").map(String::as_str), Some("search"));
    let spec = pod.spec.as_ref().expect("pod spec");
    let spread = spec
        .topology_spread_constraints
        .as_ref()
        .expect("topology spread applied");
    assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(
        spread[0]
            .label_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .and_then(|l| l.get("hector.dev/plugin"))
            .map(String::as_str),
        Some("dressed")
    );
    let plugin_container = spec
        .containers
        .iter()
        .find(|c| c.name == "plugin")
        .expect("plugin container");
    assert!(
        plugin_container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "scratch" && m.mount_path == "/scratch")
    );

    // A refused overlay: nothing applied, the field named, stalled.
    let mut bad = echo_spec(json!({}));
    bad["podTemplate"] = json!({"metadata": {"labels": {"hector.dev/plugin": "dressed"}}});
    apply(&api, plugin("impostor", bad)).await;
    let p = wait_for(
        &api,
        "impostor",
        "ConfigValid=False InvalidPodTemplate",
        60,
        |p| condition_is(p, "ConfigValid", "False", "InvalidPodTemplate"),
    )
    .await;
    let message = &condition(&p, "Stalled").expect("Stalled").message;
    assert!(
        message.starts_with("spec.podTemplate.metadata.labels[\"hector.dev/plugin\"]: reserved"),
        "{message}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(deployments.get_opt("impostor").await?.is_none());
    assert_eq!(plugin_pods(&client, &ns.name, "dressed").await.len(), 1);
    Ok(())
}

/// A plugin whose Initialize takes 200 s (echo-llm's `load_seconds`) starts without a restart
/// when its startup window is raised to 300 s, and is restarted with a 30 s one. Slow by
/// nature (about 4 minutes); both plugins start at once.
#[tokio::test]
async fn a_slow_plugin_within_a_raised_startup_window_is_not_restarted() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-slow").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let mut slow = echo_spec(json!({"load_seconds": "200"}));
    slow["health"]["startupTimeoutSeconds"] = json!(300);
    let mut hasty = echo_spec(json!({"load_seconds": "200"}));
    hasty["health"]["startupTimeoutSeconds"] = json!(30);
    apply(&api, plugin("slow", slow)).await;
    apply(&api, plugin("hasty", hasty)).await;
    let started = Instant::now();

    // The control: a 30 s window is too short, so the kubelet restarts that plugin.
    eventually("hasty restarted", Duration::from_secs(150), || async {
        let pods = plugin_pods(&client, &ns.name, "hasty").await;
        pods.iter().any(|p| restarts(p) > 0).then_some(())
    })
    .await;
    // The slow plugin, meanwhile and until it serves, never restarts.
    let p = eventually(
        "slow Ready without a restart",
        Duration::from_secs(300),
        || async {
            let pods = plugin_pods(&client, &ns.name, "slow").await;
            assert!(
                pods.iter().all(|p| restarts(p) == 0),
                "restarted within its window after {:?}",
                started.elapsed()
            );
            let p = api.get("slow").await.ok()?;
            condition_is(&p, "Ready", "True", "Ready").then_some(p)
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(200),
        "Ready only once it had loaded"
    );
    let pods = plugin_pods(&client, &ns.name, "slow").await;
    assert_eq!(pods.len(), 1);
    assert_eq!(restarts(&pods[0]), 0);
    assert!(!condition_is(&p, "Stalled", "True", "PodsFailing"));
    // It was probed from the moment its container ran, about 20 periods before it served:
    // none of those failures counted, so nothing said it was unhealthy.
    let failures: Vec<String> = events_of(&client, &ns.name, "slow")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .filter(|r| r == "Unreachable" || r == "PluginUnhealthy")
        .collect();
    assert!(
        failures.is_empty(),
        "failures counted while loading: {failures:?}"
    );
    Ok(())
}

/// The operator's Event recorder against the API server: repeats within the window are one
/// Event whose `series.count` grows; another reason is another Event; a repeat of an Event
/// that is gone makes a new one.
#[tokio::test]
async fn repeated_events_fold_into_one_series() -> TestResult {
    use hector_operator::recorder::{Event as Record, EventType, Recorder, Reporter};
    use k8s_openapi::api::core::v1::ObjectReference;

    let client = client().await;
    let ns = TestNamespace::new(&client, "op-events").await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "hector-operator".into(),
            instance: Some("test".into()),
        },
    );
    let regarding = ObjectReference {
        api_version: Some("hector.dev/v1alpha1".into()),
        kind: Some("HectorPlugin".into()),
        namespace: Some(ns.name.clone()),
        name: Some("flappy".into()),
        uid: Some("00000000-0000-0000-0000-00000000f1a9".into()),
        ..Default::default()
    };
    let unhealthy = Record {
        type_: EventType::Warning,
        reason: "PluginUnhealthy".into(),
        action: "Healthy".into(),
        note: Some("probe failed".into()),
    };
    for _ in 0..3 {
        recorder.publish(&unhealthy, &regarding).await?;
    }
    let healthy = Record {
        type_: EventType::Normal,
        reason: "PluginHealthy".into(),
        action: "Healthy".into(),
        note: Some("probe answered".into()),
    };
    recorder.publish(&healthy, &regarding).await?;
    let events = events_of(&client, &ns.name, "flappy").await;
    let by_reason = |reason: &str| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    };
    let warnings = by_reason("PluginUnhealthy");
    assert_eq!(
        warnings.len(),
        1,
        "three repeats are one Event: {events:#?}"
    );
    assert_eq!(warnings[0].series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        warnings[0].reporting_controller.as_deref(),
        Some("hector-operator")
    );
    assert_eq!(warnings[0].reporting_instance.as_deref(), Some("test"));
    let normal = by_reason("PluginHealthy");
    assert_eq!(normal.len(), 1);
    assert!(normal[0].series.is_none(), "seen once: no series");
    assert_eq!(recorder.series_kept(), 2);

    // Someone deletes the Event: the next repeat makes a new one instead of failing.
    let api: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let gone = warnings[0].metadata.name.clone().unwrap_or_default();
    api.delete(&gone, &DeleteParams::default()).await?;
    recorder.publish(&unhealthy, &regarding).await?;
    let again: Vec<Event> = events_of(&client, &ns.name, "flappy")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("PluginUnhealthy"))
        .collect();
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_ne!(again[0].metadata.name.as_deref(), Some(gone.as_str()));
    assert!(again[0].series.is_none());
    Ok(())
}
