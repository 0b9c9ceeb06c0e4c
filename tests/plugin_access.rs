//! Closed plugins on a live cluster: a plugin answers only the callers it is meant for.
//! The NetworkPolicy keeps other namespaces' Pods from connecting (enforced by the local
//! cluster's kube-network-policies); the launcher admits only ServiceAccount tokens of the
//! audience `hector.dev/plugins` of allowed callers, verified against the real API server's
//! keys; agents reach it over TLS pinned to the fingerprint the operator published; the
//! lifecycle stays the launcher's. Needs `make images` and an operator deployed (`make test`).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use hector_plugin_sdk::endpoints::{ENDPOINTS_KEY, EndpointsFile, PublishedPlugin};
use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
use hector_plugin_sdk::proto::{GenerateRequest, InitializeRequest, Message, ShutdownRequest};
use hector_plugin_sdk::tls::{Connector, Pin, client_config};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, LogParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const AUDIENCE: &str = "hector.dev/plugins";

fn echo_spec(access: Value) -> Value {
    json!({
        "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"},
        "image": format!("hector.dev/echo-llm:{IMAGE_TAG}"),
        "imagePullPolicy": "Never",
        "command": ["/plugin/echo-llm"],
        "config": {"prefix": "closed: "},
        "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
        "access": access,
    })
}

async fn published(client: &Client, ns: &str, name: &str) -> PublishedPlugin {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("{name} published with a certificate"),
        Duration::from_secs(150),
        || async {
            let text = cms
                .get_opt("hector-plugins")
                .await
                .ok()??
                .data?
                .remove(ENDPOINTS_KEY)?;
            let doc = EndpointsFile::parse(&text).ok()?;
            doc.plugins
                .get(name)
                .filter(|p| p.endpoints.len() == 1 && p.certificates.len() == 1)
                .cloned()
        },
    )
    .await
}

/// A channel to `address` that accepts only the certificate `pin`.
async fn pinned(address: &str, pin: &str) -> Result<Channel, tonic::transport::Error> {
    let pin = Pin::fingerprints([pin]).expect("a valid fingerprint");
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(3))
        .connect_with_connector(Connector::new(client_config(pin)))
        .await
}

fn hello(text: &str, token: Option<&str>) -> tonic::Request<GenerateRequest> {
    let mut r = tonic::Request::new(GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        tools: vec![],
    });
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    r.set_timeout(Duration::from_secs(5));
    r
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

fn kubectl_raw(path: &str) -> Value {
    let out = std::process::Command::new(kubectl_path())
        .args(["get", "--raw", path])
        .output()
        .expect("kubectl get --raw");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// A token the real issuer would have issued (signed with the local cluster's own
/// service-account key, with its issuer name and key id) but with an expiry of our choosing.
fn cluster_signed_token(namespace: &str, sa: &str, exp: i64) -> String {
    let issuer = kubectl_raw("/.well-known/openid-configuration")["issuer"]
        .as_str()
        .expect("issuer")
        .to_string();
    let kid = kubectl_raw("/openid/v1/jwks")["keys"][0]["kid"]
        .as_str()
        .expect("kid")
        .to_string();
    let pem = std::fs::read_to_string("/var/lib/hector-cluster/pki/sa.key")
        .expect("the local cluster's service-account key");
    let der = STANDARD
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .expect("PEM");
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der).expect("RSA PKCS#8 key");
    let header = json!({"alg": "RS256", "kid": kid});
    let claims = json!({
        "iss": issuer, "aud": [AUDIENCE], "exp": exp, "iat": exp - 3600, "nbf": exp - 3600,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa, "uid": "x"}},
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut sig,
    )
    .expect("sign");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The launcher's count of admitted calls, from its plaintext `/metrics`.
async fn admitted(endpoint: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(endpoint)
        .await
        .expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: l\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    text.lines()
        .find_map(|l| l.strip_prefix("hector_launcher_admitted_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no admitted counter in {text}"))
}

async fn create_sa(client: &Client, ns: &str, name: &str) {
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("sa");
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
}

/// Runs a Pod to completion and returns its phase and the logs of `containers`.
async fn run_pod(client: &Client, ns: &str, pod: Value, containers: &[&str]) -> (String, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod).expect("pod");
    let name = pod.name_any();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create Pod");
    let phase = eventually(
        &format!("Pod {name} to finish"),
        Duration::from_secs(150),
        || async {
            let phase = pods.get(&name).await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await;
    let mut logs = String::new();
    for c in containers {
        let lp = LogParams {
            container: Some(c.to_string()),
            ..Default::default()
        };
        logs.push_str(&format!(
            "--- {c}\n{}",
            pods.logs(&name, &lp).await.unwrap_or_default()
        ));
    }
    (phase, logs)
}

/// A busybox Pod that tries one TCP connection to `target` and prints the outcome.
fn connect_pod(name: &str, target: &str) -> Value {
    let (ip, port) = target.rsplit_once(':').expect("ip:port");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "nc", "image": format!("hector.dev/busybox:{IMAGE_TAG}"),
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", format!(
                    "if nc -w 4 {ip} {port} </dev/null; then echo CONNECTED; else echo BLOCKED; fi")],
            }],
        },
    })
}

/// Every acceptance point that a caller on this machine can show, against one plugin that
/// admits its own namespace and one ServiceAccount of another.
#[tokio::test]
async fn a_closed_plugin_answers_only_its_callers() -> TestResult {
    let client = client().await;
    let plugin_ns = TestNamespace::new(&client, "acc-plugin").await;
    let agents = TestNamespace::new(&client, "acc-agents").await;
    let stranger = TestNamespace::new(&client, "acc-stranger").await;
    create_sa(&client, &agents.name, "allowed").await;
    create_sa(&client, &agents.name, "other").await;
    let api: Api<hector_operator::crd::HectorPlugin> =
        Api::namespaced(client.clone(), &plugin_ns.name);
    apply(
        &api,
        plugin(
            "echo",
            echo_spec(json!({"serviceAccounts": [format!("{}/allowed", agents.name)]})),
        ),
    )
    .await;
    let echo = published(&client, &plugin_ns.name, "echo").await;
    let endpoint = echo.endpoints[0].clone();
    let pin = echo.certificates[&endpoint].clone();
    assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");

    // The operator wrote the plugin's NetworkPolicy, owned by the HectorPlugin.
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &plugin_ns.name)
        .get("echo")
        .await?;
    assert_eq!(
        policy.owner_references().first().map(|o| o.kind.as_str()),
        Some("HectorPlugin")
    );

    let allowed = mint_token(&agents.name, "allowed", AUDIENCE);
    let channel = pinned(&endpoint, &pin).await?;
    let mut llm = LlmProviderClient::new(channel.clone());
    let answer = llm
        .generate(hello("hi", Some(&allowed)))
        .await?
        .into_inner()
        .text;
    assert_eq!(answer, "closed: hi");

    // Refused callers, on the same connection, each with the code and reason that fit.
    let cases = [
        (None, Code::Unauthenticated, "carried none".to_string()),
        (
            Some(mint_token(&agents.name, "allowed", "another-audience")),
            Code::Unauthenticated,
            "audience".to_string(),
        ),
        (
            Some(cluster_signed_token(&agents.name, "allowed", now() - 3600)),
            Code::Unauthenticated,
            "expired".to_string(),
        ),
        (
            Some(mint_token(&agents.name, "other", AUDIENCE)),
            Code::PermissionDenied,
            format!("caller {}/other", agents.name),
        ),
        (
            Some(mint_token(&stranger.name, "default", AUDIENCE)),
            Code::PermissionDenied,
            format!("caller {}/default", stranger.name),
        ),
    ];
    for (token, code, reason) in &cases {
        let status = llm
            .generate(hello("let me in", token.as_deref()))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), *code, "{reason}: {status:?}");
        assert!(
            status.message().contains(reason.as_str()),
            "{reason}: {}",
            status.message()
        );
    }
    // The cluster-signed token is accepted while valid: the expiry was the only problem.
    let fresh = cluster_signed_token(&agents.name, "allowed", now() + 600);
    assert_eq!(
        llm.generate(hello("signed", Some(&fresh)))
            .await?
            .into_inner()
            .text,
        "closed: signed"
    );

    // The lifecycle is refused even to an allowed caller, as later streams of a connection
    // whose first call was allowed; the plugin keeps its configuration and never restarts.
    let status = llm
        .initialize(with_token(
            InitializeRequest {
                config: [("prefix".to_string(), "PWNED: ".to_string())].into(),
            },
            &allowed,
        ))
        .await
        .expect_err("Initialize is the launcher's");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = llm
        .shutdown(with_token(ShutdownRequest {}, &allowed))
        .await
        .expect_err("Shutdown is the launcher's");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        llm.generate(hello("still", Some(&allowed)))
            .await?
            .into_inner()
            .text,
        "closed: still"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &plugin_ns.name);
    for p in pods.list(&Default::default()).await? {
        let restarts: i32 = p
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .iter()
            .map(|c| c.restart_count)
            .sum();
        assert_eq!(restarts, 0, "the plugin Pod never restarted");
    }

    // A client pinned to another certificate refuses to send anything.
    let before = admitted(&endpoint).await;
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let sent = match pinned(&endpoint, &wrong).await {
        Err(_) => false,
        Ok(ch) => LlmProviderClient::new(ch)
            .generate(hello("nope", Some(&allowed)))
            .await
            .is_ok(),
    };
    assert!(!sent, "a wrongly pinned client must not get an answer");
    assert_eq!(
        admitted(&endpoint).await,
        before,
        "no call reached the launcher's caller check"
    );

    // Plaintext: health answers (the kubelet's probe), the plugin does not.
    let plain = hector_plugin_sdk::connect(&endpoint, Duration::from_secs(3)).await?;
    let status = LlmProviderClient::new(plain)
        .generate(hello("plain", Some(&allowed)))
        .await
        .expect_err("plaintext refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("TLS only"),
        "{}",
        status.message()
    );

    // From Pods: another namespace cannot even connect; the allowed one can.
    let (_, blocked) = run_pod(
        &client,
        &stranger.name,
        connect_pod("probe", &endpoint),
        &["nc"],
    )
    .await;
    assert!(
        blocked.contains("BLOCKED"),
        "a stranger's Pod connected:\n{blocked}"
    );
    let (_, connected) = run_pod(
        &client,
        &agents.name,
        connect_pod("probe", &endpoint),
        &["nc"],
    )
    .await;
    assert!(
        connected.contains("CONNECTED"),
        "the allowed namespace's Pod could not connect:\n{connected}"
    );

    // hector-plugin-remote, loaded as Hector's loader does, with a caller that is not
    // allowed: Initialize fails naming the plugin, the caller and the rule.
    let dir = tempfile::tempdir()?;
    let endpoints_file = dir.path().join("endpoints.json");
    let doc = Api::<ConfigMap>::namespaced(client.clone(), &plugin_ns.name)
        .get("hector-plugins")
        .await?
        .data
        .and_then(|mut d| d.remove(ENDPOINTS_KEY))
        .ok_or("endpoints.json")?;
    std::fs::write(&endpoints_file, doc)?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, mint_token(&agents.name, "other", AUDIENCE))?;
    let out = std::process::Command::new(go_loader())
        .args([
            "-config",
            &json!({"remote_address": endpoint, "token_file": token_file}).to_string(),
        ])
        .args(["-op", "generate:x"])
        .arg(workspace_bin("hector-plugin-remote"))
        .env("HECTOR_PLUGINS_ENDPOINTS", &endpoints_file)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("refused this agent")
            && text.contains(&format!("caller {}/other", agents.name)),
        "{text}"
    );
    Ok(())
}

/// An agent Pod of the plugin's namespace — the documented shape, with a token file the
/// kubelet swaps — loads hector-plugin-remote as Hector's loader does and gets replies,
/// before and after the token file rotates to a new token while the first one expires.
#[tokio::test]
async fn an_agent_pod_keeps_calling_across_a_token_rotation() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "acc-rotate").await;
    let api: Api<hector_operator::crd::HectorPlugin> = Api::namespaced(client.clone(), &ns.name);
    apply(&api, plugin("echo", echo_spec(json!({})))).await;
    let echo = published(&client, &ns.name, "echo").await;
    create_sa(&client, &ns.name, "agent").await;

    // The first token is valid for 20 more seconds (past expiry, inside the 60 s leeway); the
    // second one for an hour. The loader calls, sleeps 45 s, calls again: the second call
    // succeeds only if the new file was read.
    let first = cluster_signed_token(&ns.name, "agent", now() - 40);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let token_cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "agent-token"}, "data": {"token": first}}))?;
    cms.create(&PostParams::default(), &token_cm).await?;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent"},
        "spec": {
            "serviceAccountName": "agent",
            "restartPolicy": "Never",
            "initContainers": [{
                "name": "install-remote",
                "image": format!("hector.dev/hector-operator:{IMAGE_TAG}"),
                "imagePullPolicy": "IfNotPresent",
                "command": ["/usr/local/bin/hector-plugin-remote", "install-binary", "/opt/hector/bin"],
                "volumeMounts": [{"name": "bin", "mountPath": "/opt/hector/bin"}],
            }],
            "containers": [{
                "name": "hector",
                "image": format!("hector.dev/go-llm:{IMAGE_TAG}"),
                "imagePullPolicy": "Never",
                "command": ["/usr/local/bin/go-loader",
                    "-config", json!({"remote_address": echo.address, "token_file": "/etc/agent/token"}).to_string(),
                    "-op", "generate:before", "-op", "sleep:45000", "-op", "generate:after",
                    "/opt/hector/bin/hector-plugin-remote"],
                "env": [{"name": "HECTOR_PLUGINS_ENDPOINTS", "value": "/etc/hector/plugins/endpoints.json"}],
                "volumeMounts": [
                    {"name": "bin", "mountPath": "/opt/hector/bin"},
                    {"name": "plugins", "mountPath": "/etc/hector/plugins", "readOnly": true},
                    {"name": "token", "mountPath": "/etc/agent", "readOnly": true},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }],
            "volumes": [
                {"name": "bin", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
                {"name": "plugins", "configMap": {"name": "hector-plugins"}},
                {"name": "token", "configMap": {"name": "agent-token"}},
            ],
        },
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(pod)?;
    pods.create(&PostParams::default(), &pod).await?;
    let lp = LogParams {
        container: Some("hector".into()),
        ..Default::default()
    };
    // A loader that exits before its first call ends the wait at once, with what it said
    // (the Pod and its logs are gone with the namespace afterwards).
    let first = eventually("the first call", Duration::from_secs(120), || async {
        let logs = pods.logs("agent", &lp).await.ok()?;
        if logs.contains("\"op\":\"generate\"") {
            return Some(Ok(()));
        }
        let status = pods.get("agent").await.ok()?.status?;
        let done = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        done.then(|| {
            Err(format!(
                "the agent Pod ended before its first call: {status:?}\n{logs}"
            ))
        })
    })
    .await;
    if let Err(e) = first {
        let endpoints = cms.get("hector-plugins").await.ok().and_then(|c| c.data);
        panic!("{e}\nhector-plugins: {endpoints:?}");
    }
    let second = mint_token(&ns.name, "agent", AUDIENCE);
    let mut rotated = cms.get("agent-token").await?;
    rotated.data = Some([("token".to_string(), second)].into());
    cms.replace("agent-token", &PostParams::default(), &rotated)
        .await?;
    let phase = eventually(
        "the agent Pod to finish",
        Duration::from_secs(150),
        || async {
            let phase = pods.get("agent").await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await;
    let logs = pods.logs("agent", &lp).await?;
    let generated: Vec<Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["op"] == "generate")
        .collect();
    assert_eq!(generated.len(), 2, "{phase}:\n{logs}");
    assert_eq!(generated[0]["text"], "closed: before", "{logs}");
    assert_eq!(
        generated[1]["text"], "closed: after",
        "the rotated token was used:\n{logs}"
    );
    Ok(())
}
