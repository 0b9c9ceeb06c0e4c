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
    let p = wait_phase(&api, "echo", Phase::Ready).await;
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
