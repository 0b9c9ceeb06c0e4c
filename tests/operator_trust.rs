//! What the operator must never do in a shared cluster, on a live cluster with the operator
//! that `make test` deploys from `deploy/`: take over or delete a user's object that has a
//! plugin child's name, publish a Pod for its label alone, hide a failure from the resource,
//! or hold any permission on Secrets.

mod common;

use std::time::Duration;

use common::*;
use hector_operator::crd::{HectorPlugin, Phase};
use hector_plugin_sdk::endpoints::EndpointsFile;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ResourceQuota, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

fn echo_spec() -> serde_json::Value {
    json!({
        "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"},
        "image": format!("hector.dev/echo-llm:{IMAGE_TAG}"),
        "imagePullPolicy": "Never",
        "command": ["/plugin/echo-llm"],
        "config": {"prefix": "t: "},
        "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
    })
}

fn is_ready(p: &HectorPlugin) -> bool {
    p.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
}

fn condition(p: &HectorPlugin, type_: &str) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_plugin<F>(api: &Api<HectorPlugin>, name: &str, what: &str, check: F) -> HectorPlugin
where
    F: Fn(&HectorPlugin) -> bool,
{
    eventually(
        &format!("{name}: {what}"),
        Duration::from_secs(120),
        || async { api.get_opt(name).await.ok().flatten().filter(|p| check(p)) },
    )
    .await
}

async fn warning_events(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .collect()
}

async fn endpoints_file(client: &Client, ns: &str) -> Option<EndpointsFile> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = cms.get_opt("hector-plugins").await.ok()??;
    EndpointsFile::parse(cm.data?.get("endpoints.json")?).ok()
}

/// A user's ConfigMap and Service that happen to carry a plugin's child names stay exactly
/// as they were — while the plugin exists and after it is deleted — and the plugin says why
/// it cannot run; it heals once the names are free.
#[tokio::test]
async fn a_users_objects_with_a_plugins_child_names_are_never_touched() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-names").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "billing-config"},
            "data": {"important": "user data"},
        }))?,
    )
    .await?;
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "billing"},
                "spec": {"selector": {"app": "billing"}, "ports": [{"name": "http", "port": 80}]},
            }))?,
        )
        .await?;
    let cm_before = serde_json::to_value(cms.get("billing-config").await?)?;
    let svc_before = serde_json::to_value(services.get("billing").await?)?;

    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("billing", echo_spec())).await;
    let failed = wait_plugin(&api, "billing", "Deployed=False NameConflict", |p| {
        condition(p, "Deployed").is_some_and(|(s, r, _)| s == "False" && r == "NameConflict")
    })
    .await;
    let (_, _, message) = condition(&failed, "Deployed").expect("Deployed");
    assert!(
        message.contains(&format!("ConfigMap {}/billing-config", ns.name)),
        "{message}"
    );
    assert!(
        message.contains(&format!("Service {}/billing", ns.name)),
        "{message}"
    );
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Failed)
    );
    eventually(
        "a NameConflict Warning Event",
        Duration::from_secs(30),
        || async {
            (!warning_events(&client, &ns.name, "billing", "NameConflict")
                .await
                .is_empty())
            .then_some(())
        },
    )
    .await;
    // What the operator could create is created; what it must not take is left alone.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(deployments.get_opt("billing").await?.is_some());
    assert_eq!(
        serde_json::to_value(cms.get("billing-config").await?)?,
        cm_before
    );
    assert_eq!(
        serde_json::to_value(services.get("billing").await?)?,
        svc_before
    );

    api.delete("billing", &DeleteParams::foreground()).await?;
    eventually("the plugin is gone", Duration::from_secs(60), || async {
        api.get_opt("billing").await.ok()?.is_none().then_some(())
    })
    .await;
    // The garbage collector has run for the plugin's own Deployment by now.
    eventually(
        "its Deployment collected",
        Duration::from_secs(60),
        || async {
            deployments
                .get_opt("billing")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        serde_json::to_value(cms.get("billing-config").await?)?,
        cm_before,
        "the user's ConfigMap is byte for byte unchanged"
    );
    assert_eq!(
        serde_json::to_value(services.get("billing").await?)?,
        svc_before,
        "the user's Service is byte for byte unchanged"
    );

    // Heals when the names are free.
    apply(&api, plugin("billing", echo_spec())).await;
    wait_plugin(&api, "billing", "NameConflict", |p| {
        condition(p, "Deployed").is_some_and(|(_, r, _)| r == "NameConflict")
    })
    .await;
    cms.delete("billing-config", &DeleteParams::default())
        .await?;
    services.delete("billing", &DeleteParams::default()).await?;
    wait_plugin(
        &api,
        "billing",
        "Ready after the names were freed",
        is_ready,
    )
    .await;
    Ok(())
}

/// The endpoints ConfigMap name taken by someone else: the operator does not write it, and
/// every plugin of the namespace says so.
#[tokio::test]
async fn a_foreign_endpoints_configmap_is_not_taken_over() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-cm").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "hector-plugins"},
            "data": {"mine": "do not touch"},
        }))?,
    )
    .await?;
    let before = serde_json::to_value(cms.get("hector-plugins").await?)?;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("echo", echo_spec())).await;
    let p = wait_plugin(&api, "echo", "Published=False NameConflict", |p| {
        condition(p, "Published").is_some_and(|(s, r, _)| s == "False" && r == "NameConflict")
    })
    .await;
    let (_, _, message) = condition(&p, "Published").expect("Published");
    assert!(message.contains("hector-plugins"), "{message}");
    assert_eq!(
        serde_json::to_value(cms.get("hector-plugins").await?)?,
        before
    );
    Ok(())
}

/// What someone adds to the operator's own endpoints ConfigMap (a key, a label, kubectl's
/// last-applied annotation) survives the operator's next publication, which replaces the
/// object conditioned on the version it knows (no server-side apply on that path).
#[tokio::test]
async fn what_others_add_to_the_endpoints_configmap_survives_publication() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-keep").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("echo", echo_spec())).await;
    let endpoints = |n: usize| {
        let (client, ns) = (client.clone(), ns.name.clone());
        move || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                endpoints_file(&client, &ns).await.filter(|f| {
                    f.plugins
                        .get("echo")
                        .is_some_and(|p| p.endpoints.len() == n)
                })
            }
        }
    };
    eventually("echo published", Duration::from_secs(120), endpoints(1)).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let last_applied = r#"{"data":{"notes":"by hand"}}"#;
    cms.patch(
        "hector-plugins",
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {
                "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": last_applied},
            },
            "data": {"notes": "by hand"},
        })),
    )
    .await?;
    // A second endpoint: a publication.
    api.patch(
        "echo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await?;
    eventually(
        "two endpoints published",
        Duration::from_secs(120),
        endpoints(2),
    )
    .await;
    let cm = cms.get("hector-plugins").await?;
    assert_eq!(cm.labels().get("team").map(String::as_str), Some("a"));
    assert_eq!(
        cm.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("hector-operator")
    );
    assert_eq!(
        cm.annotations()
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .map(String::as_str),
        Some(last_applied)
    );
    let data = cm.data.clone().unwrap_or_default();
    assert_eq!(data.get("notes").map(String::as_str), Some("by hand"));
    assert!(data.contains_key("plugins.yaml"));
    let operations: Vec<(String, String)> = cm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        operations
            .iter()
            .any(|(m, o)| m == "hector-operator" && o == "Update"),
        "{operations:?}"
    );
    assert!(
        !operations
            .iter()
            .any(|(m, o)| m == "hector-operator" && o == "Apply"),
        "published by a server-side apply: {operations:?}"
    );
    Ok(())
}

/// A Pod that copies a plugin's label (and even runs the same, healthy plugin) is never
/// probed or published as that plugin.
#[tokio::test]
async fn a_pod_that_copies_the_label_is_never_published() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-pod").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("echo", echo_spec())).await;
    let ready = wait_plugin(&api, "echo", "Ready", is_ready).await;
    let own = ready.status.expect("status").endpoints;
    assert_eq!(own.len(), 1);

    // The very Pod template the operator uses, as a bare Pod of the user's.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let template = deployments.get("echo").await?.spec.expect("spec").template;
    let mut rogue = Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        ..Default::default()
    };
    rogue.metadata.name = Some("rogue".into());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &rogue).await?;
    let rogue_ip = eventually("the rogue Pod Ready", Duration::from_secs(120), || async {
        let p = pods.get("rogue").await.ok()?;
        if !pod_ready(&p) {
            return None;
        }
        p.status?.pod_ip
    })
    .await;
    // Several probe periods (1 s) and publish passes.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let file = endpoints_file(&client, &ns.name).await.expect("published");
        let entry = file.plugins.get("echo").expect("echo published");
        assert!(
            entry
                .endpoints
                .iter()
                .all(|e| !e.starts_with(&format!("{rogue_ip}:"))),
            "the rogue Pod {rogue_ip} is published: {:?}",
            entry.endpoints
        );
        assert_eq!(entry.endpoints, own);
        let status = api.get("echo").await?.status.expect("status");
        assert_eq!(
            status.endpoints, own,
            "status lists only the plugin's own Pod"
        );
    }
    Ok(())
}

/// An API rejection of a child (here a ResourceQuota that allows no Deployment) is on the
/// resource: a condition with the API's message, a Warning Event, a phase — never an empty
/// status.
#[tokio::test]
async fn an_api_rejection_is_shown_on_the_resource() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-quota").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    quotas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": {"name": "no-deployments"},
                "spec": {"hard": {"count/deployments.apps": "0"}},
            }))?,
        )
        .await?;
    // The quota controller must have counted before the quota is enforced.
    eventually("quota status", Duration::from_secs(30), || async {
        quotas
            .get("no-deployments")
            .await
            .ok()?
            .status?
            .hard
            .map(|_| ())
    })
    .await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("quota", echo_spec())).await;
    let p = wait_plugin(&api, "quota", "Deployed=False Forbidden", |p| {
        condition(p, "Deployed").is_some_and(|(s, r, _)| s == "False" && r == "Forbidden")
    })
    .await;
    let (_, _, message) = condition(&p, "Deployed").expect("Deployed");
    assert!(
        message.contains("exceeded quota"),
        "the API's own words: {message}"
    );
    assert!(message.contains("Deployment"), "{message}");
    assert_eq!(p.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    eventually(
        "a Forbidden Warning Event",
        Duration::from_secs(30),
        || async {
            let events = warning_events(&client, &ns.name, "quota", "Forbidden").await;
            events
                .iter()
                .all(|e| e.note.as_deref().is_some_and(|n| n.len() <= 1024))
                .then_some(())
                .filter(|_| !events.is_empty())
        },
    )
    .await;
    // Lifting the quota heals it.
    quotas
        .delete("no-deployments", &DeleteParams::default())
        .await?;
    wait_plugin(&api, "quota", "Ready after the quota is lifted", is_ready).await;
    Ok(())
}

/// A missing Secret, then a Secret without the key: both named on the resource from what the
/// kubelet reports (the operator cannot read Secrets); the plugin heals once the key exists,
/// and the secret value is in none of the operator's outputs.
#[tokio::test]
async fn missing_secret_and_missing_key_are_reported_then_heal_and_never_leak() -> TestResult {
    use k8s_openapi::api::core::v1::Secret;
    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-secret").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let canary = "canary-5e1d7c0a-secret-value";
    let mut spec = echo_spec();
    spec["manifest"]["configSchema"] = json!({"required": ["api_key"], "optional": ["prefix"]});
    spec["secretConfig"] =
        json!([{"key": "api_key", "secretKeyRef": {"name": "llm-secret", "key": "api-key"}}]);
    apply(&api, plugin("sec", spec)).await;

    let failed = wait_plugin(&api, "sec", "ConfigValid=False (no Secret)", |p| {
        condition(p, "ConfigValid").is_some_and(|(s, r, _)| s == "False" && r == "SecretNotFound")
    })
    .await;
    let (_, _, message) = condition(&failed, "ConfigValid").expect("condition");
    assert!(
        message.contains("\"llm-secret\"")
            && message.contains("api_key")
            && message.contains("not found"),
        "{message}"
    );
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Failed)
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "llm-secret"},
                "stringData": {"wrong-key": "x"},
            }))?,
        )
        .await?;
    let lacking = wait_plugin(&api, "sec", "SecretNotFound naming the key", |p| {
        condition(p, "ConfigValid")
            .is_some_and(|(_, r, m)| r == "SecretNotFound" && m.contains("has no key \"api-key\""))
    })
    .await;
    assert_eq!(
        lacking.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Failed)
    );

    secrets
        .replace(
            "llm-secret",
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "llm-secret", "namespace": ns.name},
                "stringData": {"api-key": canary},
            }))?,
        )
        .await?;
    let ready = wait_plugin(&api, "sec", "Ready once the key exists", is_ready).await;
    let endpoint = ready
        .status
        .as_ref()
        .and_then(|s| s.endpoints.first().cloned())
        .expect("endpoint");
    assert_eq!(generate_text(&endpoint, "x").await?, "t: x");

    // The secret value is nowhere the operator writes or logs. Every read must succeed:
    // a failed read must fail the test, not pass it.
    let status = serde_json::to_string(&ready.status)?;
    assert!(!status.contains(canary), "status leaks the secret");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let events = serde_json::to_string(&events.list(&ListParams::default()).await?.items)?;
    assert!(!events.contains(canary), "events leak the secret");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let all = cms.list(&ListParams::default()).await?.items;
    assert!(all.iter().any(|c| c.name_any() == "hector-plugins"));
    for cm in all {
        let text = serde_json::to_string(&cm.data)?;
        assert!(
            !text.contains(canary),
            "ConfigMap {} leaks the secret",
            cm.name_any()
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment = serde_json::to_string(&deployments.get("sec").await?)?;
    assert!(
        !deployment.contains(canary),
        "the Deployment leaks the secret"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for pod in pods.list(&ListParams::default()).await?.items {
        let logs = pods.logs(&pod.name_any(), &Default::default()).await?;
        assert!(!logs.is_empty(), "plugin Pod {} has logs", pod.name_any());
        assert!(!logs.contains(canary), "plugin Pod logs leak the secret");
    }
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), "hector-system");
    let list = operator_pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=hector-operator"))
        .await?;
    assert!(!list.items.is_empty(), "operator Pods found");
    for pod in list.items {
        let logs = operator_pods
            .logs(&pod.name_any(), &Default::default())
            .await?;
        assert!(!logs.is_empty(), "operator Pod {} has logs", pod.name_any());
        assert!(!logs.contains(canary), "operator logs leak the secret");
    }
    Ok(())
}

/// A `spec.config` key that cannot be a ConfigMap key is rejected at apply (the admission
/// policy installed with the operator), naming the field.
#[tokio::test]
async fn a_config_key_that_cannot_be_a_configmap_key_is_rejected_at_apply() -> TestResult {
    use kube::api::{Patch, PatchParams};
    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-keys").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = echo_spec();
    spec["config"] = json!({"bad/key": "x"});
    let err = api
        .patch(
            "keys",
            &PatchParams::apply("hector-e2e").force(),
            &Patch::Apply(&plugin("keys", spec)),
        )
        .await
        .expect_err("the API server refuses the key");
    let text = err.to_string();
    assert!(text.contains("spec.config"), "{text}");
    assert!(text.contains("ConfigMap key"), "{text}");
    assert!(api.get_opt("keys").await?.is_none(), "nothing stored");
    // A valid key still applies.
    let mut spec = echo_spec();
    spec["config"] = json!({"good.key_1-x": "x", "prefix": "t: "});
    apply(&api, plugin("keys", spec)).await;
    Ok(())
}

/// A rotated Secret reaches the plugin without the operator (which cannot read Secrets): the
/// kubelet updates the mounted files and the launcher swaps in a plugin started with the new
/// value, while a client calls both replicas in a loop. No call fails, no Pod is replaced.
#[tokio::test]
async fn a_rotated_secret_reaches_both_replicas_without_a_failed_call() -> TestResult {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use hector_plugin_client::{ChannelOptions, Directory, served};
    use hector_plugin_sdk::proto::{GenerateRequest, Message};
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Patch, PatchParams};

    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-rotate").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "prefix"},
                "stringData": {"prefix": "old: "},
            }))?,
        )
        .await?;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = echo_spec();
    spec["replicas"] = json!(2);
    spec["secretConfig"] =
        json!([{"key": "prefix", "secretKeyRef": {"name": "prefix", "key": "prefix"}}]);
    apply(&api, plugin("rot", spec)).await;
    let ready = wait_plugin(&api, "rot", "Ready with 2 endpoints", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Ready) && s.endpoints.len() == 2)
    })
    .await;
    let endpoints: BTreeSet<String> = ready
        .status
        .expect("status")
        .endpoints
        .into_iter()
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pods_before: BTreeSet<String> = pods
        .list(&ListParams::default().labels("hector.dev/plugin=rot"))
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(pods_before.len(), 2);

    let directory = Directory::watch_namespace(client.clone(), &ns.name).await?;
    let channel = eventually(
        "both endpoints in the directory",
        Duration::from_secs(30),
        || {
            let directory = directory.clone();
            async move {
                let c = directory
                    .plugin_with(
                        "rot",
                        &ChannelOptions::new().token_file(operator_token_file()),
                    )
                    .await
                    .ok()?;
                (c.endpoints().len() == 2).then_some(c)
            }
        },
    )
    .await;
    let mut llm = channel.llm()?;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let caller = {
        let (stop, failures, calls) =
            (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&calls));
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let req = GenerateRequest {
                    messages: vec![Message {
                        role: "user".into(),
                        content: format!("c{i}"),
                        ..Default::default()
                    }],
                    tools: vec![],
                };
                match llm.generate(req).await {
                    Ok(r) => {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let at = served(&r)
                            .map(|s| s.endpoint.to_string())
                            .unwrap_or_default();
                        let _ = tx.send((at, r.into_inner().text));
                    }
                    Err(e) => {
                        eprintln!("call {i} failed: {e}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Calls flow with the old value first.
    let (_, first) = rx.recv().await.ok_or("no answer")?;
    assert!(first.starts_with("old: "), "{first}");

    secrets
        .patch(
            "prefix",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"prefix": "new: "}})),
        )
        .await?;
    // Both replicas answer with the new value, each sooner or later.
    let mut switched: BTreeSet<String> = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while switched != endpoints {
        let next = tokio::time::timeout_at(deadline, rx.recv()).await;
        let (at, text) = next
            .map_err(|_| format!("only {switched:?} of {endpoints:?} switched to the new value"))?
            .ok_or("caller stopped")?;
        if text.starts_with("new: ") {
            switched.insert(at);
        }
    }
    // Keep calling a little after the swap, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    caller.await?;
    let n = calls.load(Ordering::SeqCst);
    eprintln!(
        "rotation under load: {n} calls, {} failed",
        failures.load(Ordering::SeqCst)
    );
    assert!(n > 100, "enough calls to mean something: {n}");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no call failed during the rotation"
    );
    // No answer came back with the old value after both had switched.
    while let Ok((_, text)) = rx.try_recv() {
        assert!(
            text.starts_with("new: "),
            "an old answer after the switch: {text}"
        );
    }
    // The launcher did it, not a rollout: the same Pods, not restarted.
    let after = pods
        .list(&ListParams::default().labels("hector.dev/plugin=rot"))
        .await?
        .items;
    let names: BTreeSet<String> = after.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, pods_before, "no Pod was replaced");
    for p in &after {
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(-1);
        assert_eq!(restarts, 0, "{} restarted", p.name_any());
    }
    Ok(())
}

/// Resource quantities the API server stores in another spelling (`0.5` → `500m`) are no
/// drift: reconciling again and again writes nothing.
#[tokio::test]
async fn quantities_in_another_spelling_cause_no_writes() -> TestResult {
    use kube::api::{Patch, PatchParams};
    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-qty").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = echo_spec();
    spec["resources"] = json!({"requests": {"cpu": "0.5", "memory": "0.0625Gi"},
                               "limits": {"memory": "1073741824"}});
    apply(&api, plugin("qty", spec)).await;
    wait_plugin(&api, "qty", "Ready", is_ready).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let stored = deployments.get("qty").await?;
    let requests = serde_json::to_value(&stored.spec.as_ref().expect("spec").template)?;
    assert_eq!(
        requests["spec"]["containers"][0]["resources"]["requests"]["cpu"], "500m",
        "the server stores its own spelling"
    );
    let leader = lease_holder(&client).await.expect("a leader");
    // Other tests of this binary create plugins meanwhile, so the operator's global write
    // counter moves; its log names the plugin of every Deployment it writes.
    let poked = std::time::Instant::now();
    // Each label change is a watch event and a reconcile of the plugin.
    for i in 0..5 {
        api.patch(
            "qty",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"poke": i.to_string()}}})),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let log = pods
        .logs(
            &leader,
            &kube::api::LogParams {
                since_seconds: Some(i64::try_from(poked.elapsed().as_secs()).unwrap_or(60) + 1),
                ..Default::default()
            },
        )
        .await?;
    let key = format!("\"plugin\":\"{}/qty\"", ns.name);
    let written: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("applied Deployment") && l.contains(&key))
        .collect();
    assert!(
        written.is_empty(),
        "no Deployment write for an unchanged spec: {written:#?}"
    );
    assert_eq!(
        deployments.get("qty").await?.metadata.generation,
        stored.metadata.generation
    );
    Ok(())
}

/// A watch that cannot list (here: no permission on ReplicaSets) keeps `/readyz` from saying
/// `leading`, and is logged at error level naming the resource and the refusal. Runs the
/// operator binary on this machine as a ServiceAccount with that one permission missing.
#[tokio::test]
async fn a_watch_that_cannot_list_fails_readiness_and_is_logged() -> TestResult {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-403").await;
    let kubectl = |args: &[&str]| -> String {
        let out = Command::new(kubectl_path())
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    kubectl(&["-n", &ns.name, "create", "serviceaccount", "limited"]);
    // Everything the operator needs in a namespace except ReplicaSets.
    for (name, verbs, resources) in [
        ("plugins", "get,list,watch", "hectorplugins.hector.dev"),
        ("status", "patch", "hectorplugins.hector.dev/status"),
        (
            "children",
            "get,list,watch,create,patch,delete",
            "deployments.apps,services,configmaps,networkpolicies.networking.k8s.io",
        ),
        ("pods", "get,list,watch", "pods,events"),
        ("events", "create,patch", "events.events.k8s.io"),
    ] {
        kubectl(&[
            "-n",
            &ns.name,
            "create",
            "role",
            name,
            "--verb",
            verbs,
            "--resource",
            resources,
        ]);
        kubectl(&[
            "-n",
            &ns.name,
            "create",
            "rolebinding",
            name,
            "--role",
            name,
            "--serviceaccount",
            &format!("{}:limited", ns.name),
        ]);
    }
    let token = kubectl(&["-n", &ns.name, "create", "token", "limited"]);
    let server = kubectl(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    // --flatten embeds a CA given as a file.
    let ca = kubectl(&[
        "config",
        "view",
        "--minify",
        "--raw",
        "--flatten",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    assert!(!ca.trim().is_empty(), "the cluster's CA");
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("kubeconfig");
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: {server}, \
             certificate-authority-data: {ca}}}}}]\nusers: [{{name: u, user: {{token: {}}}}}]\n\
             contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
            token.trim()
        ),
    )?;
    let free = || -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    };
    let (metrics, health) = (free(), free());
    let log = dir.path().join("operator.log");
    let mut operator = Command::new(env!("CARGO_BIN_EXE_hector-operator"))
        .args([
            "run",
            "--leader-elect=false",
            "--namespaces",
            &ns.name,
            "--launcher-image",
            "hector.dev/hector-operator:dev",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
            "--health-addr",
            &format!("127.0.0.1:{health}"),
        ])
        .arg("--plugin-token-file")
        .arg(operator_token_file())
        .env("KUBECONFIG", &config)
        .env_remove("POD_NAME")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let readyz = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", health)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text)
    };
    let mut seen = String::new();
    for _ in 0..60 {
        if let Some(text) = readyz() {
            seen = text;
            if seen.contains("replicasets") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = operator.kill();
    let _ = operator.wait();
    assert!(
        seen.starts_with("HTTP/1.0 503") || seen.starts_with("HTTP/1.1 503"),
        "{seen}"
    );
    assert!(seen.contains("leading, but not synced"), "{seen}");
    assert!(seen.contains("replicasets"), "{seen}");
    assert!(
        seen.contains("forbidden"),
        "the API's refusal is named: {seen}"
    );
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("replicasets") && l.contains("forbidden")),
        "an error line names the resource and the refusal:\n{logged}"
    );
    Ok(())
}

/// The model facts in `status.plugin` and in `hector-plugins` follow a plugin whose model
/// changed (they used to be read once per plugin and kept).
#[tokio::test]
async fn model_facts_follow_a_changed_plugin() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "trust-facts").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let mut spec = echo_spec();
    spec["config"] = json!({"prefix": "t: ", "model": "model-one"});
    apply(&api, plugin("facts", spec.clone())).await;
    let model_of = |p: &HectorPlugin| {
        p.status
            .as_ref()
            .and_then(|s| s.plugin.as_ref())
            .and_then(|i| i.model_name.clone())
    };
    wait_plugin(&api, "facts", "model-one in status", |p| {
        model_of(p).as_deref() == Some("model-one")
    })
    .await;
    spec["config"]["model"] = json!("model-two");
    apply(&api, plugin("facts", spec)).await;
    wait_plugin(&api, "facts", "model-two in status", |p| {
        model_of(p).as_deref() == Some("model-two")
            && p.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
    })
    .await;
    let published = eventually("model-two published", Duration::from_secs(60), || async {
        let file = endpoints_file(&client, &ns.name).await?;
        let entry = file.plugins.get("facts")?.clone();
        (entry.model.as_ref()?.model_name == "model-two").then_some(entry)
    })
    .await;
    assert_eq!(published.endpoints.len(), 1);
    Ok(())
}
