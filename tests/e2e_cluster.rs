//! Live-cluster tests. They need `KUBECONFIG` pointing at a cluster whose nodes have the
//! project's images loaded (`make test` starts the local cluster and loads them; against
//! kind: `kind create cluster`, `LOAD_IMAGE="kind load image-archive" make images`).
//!
//! Each test works in its own namespace, labelled so `cluster down` can find leftovers.

use std::time::Duration;

use hector_operator::crd::HectorPlugin;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

mod common;
use common::*;

#[tokio::test]
async fn node_is_ready() {
    let nodes: Api<Node> = Api::all(client().await);
    let list = nodes.list(&Default::default()).await.expect("list nodes");
    assert!(!list.items.is_empty(), "the cluster has a node");
    for node in list.items {
        let ready = node
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(
            ready,
            "node {} is Ready",
            node.metadata.name.unwrap_or_default()
        );
    }
}

/// A Pod from a locally built image, with a gRPC readiness probe, behind a Service that is
/// reached from the host by ClusterIP and from another Pod by DNS name.
#[tokio::test]
async fn local_image_pod_service_and_dns() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-net").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);

    apply(
        &pods,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "echo", "labels": {"app": "echo"}},
            "spec": {
                // As the operator will run plugins: the launcher, copied in by an init
                // container, hosts the plugin and answers the kubelet's gRPC probe.
                "initContainers": [{
                    "name": "launcher",
                    "image": format!("hector.dev/hector-operator:{IMAGE_TAG}"),
                    "imagePullPolicy": "Never",
                    "command": ["/usr/local/bin/hector-plugin-launcher", "install", "/hector/bin"],
                    "volumeMounts": [{"name": "bin", "mountPath": "/hector/bin"}],
                }],
                "containers": [{
                    "name": "echo",
                    "image": format!("hector.dev/echo-llm:{IMAGE_TAG}"),
                    "imagePullPolicy": "Never",
                    "command": ["/hector/bin/hector-plugin-launcher", "--type", "llm_provider",
                                "--launch", "network", "--", "/plugin/echo-llm"],
                    "ports": [{"containerPort": 50051, "name": "grpc"}],
                    "readinessProbe": {"grpc": {"port": 50051}, "periodSeconds": 1},
                    "volumeMounts": [{"name": "bin", "mountPath": "/hector/bin"}],
                }],
                "volumes": [{"name": "bin", "emptyDir": {}}],
            }
        }),
    )
    .await;
    let svc = apply(
        &services,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo"},
            "spec": {"selector": {"app": "echo"}, "ports": [{"port": 50051, "name": "grpc", "appProtocol": "grpc"}]}
        }),
    )
    .await;

    // The gRPC readiness probe turns the Pod Ready.
    eventually(
        "echo Pod Ready via its gRPC probe",
        Duration::from_secs(90),
        || async { pods.get("echo").await.ok().filter(pod_ready) },
    )
    .await;

    // From the host, through kube-proxy's ClusterIP rules.
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or("service has a ClusterIP")?;
    let (text, _) = eventually(
        "Generate through the ClusterIP",
        Duration::from_secs(30),
        || generate_at(format!("{ip}:50051"), "via cluster ip"),
    )
    .await;
    assert_eq!(text, "echo: via cluster ip");

    // From another Pod, by the Service's DNS name.
    let dns = format!("echo.{}.svc.cluster.local:50051", ns.name);
    apply(
        &pods,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "caller"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "caller",
                    "image": format!("hector.dev/hector-operator:{IMAGE_TAG}"),
                    "imagePullPolicy": "Never",
                    "command": ["/usr/local/bin/hectorctl", "call", "--address", dns, "generate", "from", "a", "pod"],
                }]
            }
        }),
    )
    .await;
    let phase = eventually("caller Pod to finish", Duration::from_secs(90), || async {
        let p = pods.get("caller").await.ok()?;
        let phase = p.status?.phase?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let logs = pods.logs("caller", &Default::default()).await?;
    assert_eq!(phase, "Succeeded", "caller logs: {logs}");
    assert!(logs.contains("echo: from a pod"), "caller logs: {logs}");
    Ok(())
}

/// Deleting an owner garbage-collects what it owns.
#[tokio::test]
async fn owner_reference_garbage_collection() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "e2e-gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let owner = apply(
        &cms,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}, "data": {"a": "b"}}),
    )
    .await;
    let uid = owner.uid().ok_or("owner has a uid")?;
    apply(
        &cms,
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "dependent", "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ]},
            "data": {"c": "d"}
        }),
    )
    .await;
    cms.delete("owner", &DeleteParams::background()).await?;
    eventually(
        "the dependent to be collected",
        Duration::from_secs(60),
        || async {
            match cms.get_opt("dependent").await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn crd_accepts_valid_and_rejects_invalid_resources() -> TestResult {
    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "e2e-crd").await;
    let api: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<HectorPlugin>(&()),
    );

    // A valid resource is accepted and the API server fills in the defaults.
    let created = apply(
        &api,
        plugin(
            "good",
            json!({"manifest": manifest(), "image": "hector.dev/echo-llm:dev", "command": ["/plugin/echo-llm"],
                   "config": {"prefix": "> ", "max_tokens": 100, "verbose": true}}),
        ),
    )
    .await;
    assert_eq!(created.spec.port, 50051);
    assert_eq!(created.spec.replicas, 1);
    assert_eq!(created.spec.health.period_seconds, 10);
    assert_eq!(created.spec.config["max_tokens"], json!(100));
    let remote = apply(
        &api,
        plugin(
            "remote",
            json!({"manifest": manifest(), "endpoint": "127.0.0.1:9"}),
        ),
    )
    .await;
    assert_eq!(remote.spec.endpoint.as_deref(), Some("127.0.0.1:9"));

    // What `hectorctl manifest convert` prints is accepted as is.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hectorctl"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "manifest",
            "convert",
            "examples/manifests/echo-llm.plugin.yaml",
            "--image",
            "hector.dev/echo-llm:dev",
            "--launch",
            "network",
            "--config",
            "prefix=>> ",
            "--secret",
            "api_key=llm/key",
            "-n",
            &ns.name,
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converted: kube::api::DynamicObject = serde_norway::from_slice(&out.stdout)?;
    let stored = raw.create(&PostParams::default(), &converted).await?;
    assert_eq!(stored.metadata.name.as_deref(), Some("echo-llm"));

    let cases = [
        (
            "both image and endpoint",
            json!({"manifest": manifest(), "image": "x", "command": ["/p"], "endpoint": "h:1"}),
            "exactly one of spec.image",
        ),
        (
            "neither image nor endpoint",
            json!({"manifest": manifest()}),
            "exactly one of spec.image",
        ),
        (
            "image without command",
            json!({"manifest": manifest(), "image": "x"}),
            "spec.command (the plugin executable inside the image) is required",
        ),
        (
            "port out of range",
            json!({"manifest": manifest(), "image": "x", "command": ["/p"], "port": 70000}),
            "spec.port",
        ),
        (
            "unknown plugin type",
            json!({"manifest": {"name": "x", "version": "1.0.0", "type": "llm"}, "image": "x", "command": ["/p"]}),
            "spec.manifest.type",
        ),
        (
            "not a semantic version",
            json!({"manifest": {"name": "x", "version": "latest", "type": "llm_provider"}, "image": "x", "command": ["/p"]}),
            "spec.manifest.version",
        ),
        (
            "key both required and optional",
            json!({"manifest": {"name": "x", "version": "1.0.0", "type": "llm_provider",
                    "configSchema": {"required": ["a"], "optional": ["a"]}}, "image": "x", "command": ["/p"]}),
            "a key cannot be both required and optional",
        ),
        (
            "missing manifest",
            json!({"image": "x", "command": ["/p"]}),
            "spec.manifest: Required value",
        ),
        (
            "bad launch mode",
            json!({"manifest": manifest(), "image": "x", "command": ["/p"], "launch": "fork"}),
            "spec.launch",
        ),
        (
            "secret config with endpoint",
            json!({"manifest": manifest(), "endpoint": "h:1",
                   "secretConfig": [{"key": "api_key", "secretKeyRef": {"name": "s", "key": "k"}}]}),
            "spec.secretConfig cannot be delivered",
        ),
    ];
    for (i, (what, spec, expected)) in cases.into_iter().enumerate() {
        let obj: kube::api::DynamicObject =
            serde_json::from_value(plugin(&format!("bad-{i}"), spec))?;
        match raw.create(&PostParams::default(), &obj).await {
            Ok(_) => panic!("{what}: accepted, expected rejection"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {}", status.message);
                assert!(
                    status.message.contains(expected),
                    "{what}: message {:?} lacks {expected:?}",
                    status.message
                );
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_descriptions() {
    let client = client().await;
    install_crd(&client).await;
    let kubectl = kubectl_path();
    // The OpenAPI document picks up a new CRD a moment after it is established.
    let text = eventually(
        "kubectl explain to know HectorPlugin",
        Duration::from_secs(60),
        || {
            let kubectl = kubectl.clone();
            async move {
                let out = tokio::process::Command::new(&kubectl)
                    .args(["explain", "hectorplugin.spec"])
                    .output()
                    .await
                    .ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            }
        },
    )
    .await;
    for expected in [
        "KIND:       HectorPlugin",
        "Desired state of a HectorPlugin",
        "Container image holding the plugin executable",
        "How the plugin executable expects to be started",
        "secretConfig",
    ] {
        assert!(
            text.contains(expected),
            "kubectl explain lacks {expected:?}:\n{text}"
        );
    }
    let hp = tokio::process::Command::new(&kubectl)
        .args(["explain", "hp.spec.health.failureThreshold"])
        .output()
        .await
        .expect("kubectl explain via short name");
    assert!(
        String::from_utf8_lossy(&hp.stdout).contains("Consecutive failed checks"),
        "short name and nested descriptions"
    );
}

/// The operator's builders, applied as-is, run a plugin: the launcher hosts the SDK plugin as
/// a go-plugin child under the restricted security standard, configuration arrives from the
/// ConfigMap and the Secret, and the Service answers.
#[tokio::test]
async fn built_objects_run_the_plugin() -> TestResult {
    use hector_operator::build;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;

    let client = client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "e2e-build").await;
    let secret_value = "s3cret-prefix: ";
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    apply(
        &secrets,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "echo-secrets"},
            "stringData": {"prefix-value": secret_value},
        }),
    )
    .await;
    let plugins: Api<HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    let stored = apply(
        &plugins,
        plugin(
            "echo-built",
            json!({
                "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider",
                             "configSchema": {"required": ["prefix"], "optional": ["model"]}},
                "image": format!("hector.dev/echo-llm:{IMAGE_TAG}"),
                "imagePullPolicy": "Never",
                "command": ["/plugin/echo-llm"],
                "config": {"model": "built-1"},
                "secretConfig": [{"key": "prefix",
                                  "secretKeyRef": {"name": "echo-secrets", "key": "prefix-value"}}],
                "health": {"periodSeconds": 2},
            }),
        ),
    )
    .await;
    let spec = &stored.spec;
    let config = hector_operator::config::resolve(
        &spec.manifest.config_schema,
        &spec.config,
        &spec.secret_config,
    )
    .map_err(|e| format!("{e:?}"))?;
    let settings = build::Settings {
        launcher_image: format!("hector.dev/hector-operator:{IMAGE_TAG}"),
        launcher_pull_policy: hector_operator::crd::ImagePullPolicy::Never,
        operator: hector_operator::access::OperatorIdentity {
            namespace: "hector-system".into(),
            service_account: "hector-operator".into(),
            pod_labels: hector_operator::run::parse_labels(
                hector_operator::run::DEFAULT_POD_LABELS,
            )?,
        },
    };
    let config_map = build::config_map(&stored, &config)?;
    let deployment = build::deployment(&stored, &config, &settings)?.ok_or("a Deployment")?;
    let service = build::service(&stored)?.ok_or("a Service")?;
    for (what, text) in [
        ("ConfigMap", serde_json::to_string(&config_map)?),
        ("Deployment", serde_json::to_string(&deployment)?),
        ("Service", serde_json::to_string(&service)?),
    ] {
        assert!(!text.contains(secret_value), "secret value in the {what}");
    }
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns.name),
        serde_json::to_value(&config_map)?,
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    apply(&deployments, serde_json::to_value(&deployment)?).await;
    let svc = apply(
        &Api::<Service>::namespaced(client.clone(), &ns.name),
        serde_json::to_value(&service)?,
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let selector = format!("{}=echo-built", build::PLUGIN_LABEL);
    eventually(
        "the built Deployment's Pod Ready",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&kube::api::ListParams::default().labels(&selector))
                .await
                .ok()?;
            list.items.into_iter().find(pod_ready)
        },
    )
    .await;

    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or("service has a ClusterIP")?;
    let (text, model) = eventually(
        "Generate through the built Service",
        Duration::from_secs(30),
        || generate_at(format!("{ip}:50051"), "built objects"),
    )
    .await;
    assert_eq!(
        text,
        format!("{secret_value}built objects"),
        "prefix from the Secret"
    );
    assert_eq!(model, "built-1", "model from the ConfigMap");
    Ok(())
}
