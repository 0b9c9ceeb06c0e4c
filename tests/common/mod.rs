//! Helpers shared by the live-cluster test binaries (each `mod common;`s this file, and not
//! every binary uses every helper).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const IMAGE_TAG: &str = "dev";

pub async fn client() -> Client {
    Client::try_default()
        .await
        .expect("KUBECONFIG must point at a running cluster (make cluster-up)")
}

/// Polls `check` until it yields `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A namespace for one test, deleted when dropped.
pub struct TestNamespace {
    /// The namespace name.
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = format!(
            "{prefix}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 1_000_000)
                .unwrap_or_default()
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "hector.dev/test-namespace".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        // The service account controller must have made `default` before Pods are admitted.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        eventually(
            "default service account",
            Duration::from_secs(30),
            || async { sa.get_opt("default").await.ok().flatten() },
        )
        .await;
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // The test's runtime may be shutting down (or unwinding a panic): delete from a
        // thread with its own runtime and its own client (a client is bound to the runtime
        // it was made on); the namespace controller finishes the job.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Runtime::new() else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = Client::try_default().await else {
                    return;
                };
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await;
            });
        })
        .join();
    }
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One `Generate` with `text` and one `GetModelInfo` at `address`: the answer and the model
/// name, or `None` while the plugin cannot be reached yet.
pub async fn generate_at(address: String, text: &str) -> Option<(String, String)> {
    use hector_plugin_sdk::proto::{Empty, llm_provider_client::LlmProviderClient};
    let ch = plugin_channel(&address).await.ok()?;
    let mut llm = LlmProviderClient::with_interceptor(ch, authorize);
    let answer = llm
        .generate(user_request(text))
        .await
        .ok()?
        .into_inner()
        .text;
    let info = llm.get_model_info(Empty {}).await.ok()?.into_inner();
    Some((answer, info.model_name))
}

fn user_request(text: &str) -> hector_plugin_sdk::proto::GenerateRequest {
    use hector_plugin_sdk::proto::{GenerateRequest, Message};
    GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        tools: vec![],
    }
}

/// A token for `namespace/service_account` and `audience`, from the API server's TokenRequest.
pub fn mint_token(namespace: &str, service_account: &str, audience: &str) -> String {
    let out = std::process::Command::new(kubectl_path())
        .args(["create", "token", service_account, "-n", namespace])
        .args(["--audience", audience, "--duration", "2h"])
        .output()
        .expect("kubectl create token");
    assert!(
        out.status.success(),
        "kubectl create token {namespace}/{service_account}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A file holding a token of the operator's ServiceAccount for plugins, which every launcher
/// admits (it is how the operator's prober calls): tests that exercise something other than
/// caller checks call plugins with it. Minted once per test binary.
pub fn operator_token_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let token = mint_token(OPERATOR_NS, "hector-operator", "hector.dev/plugins");
        let path = std::env::temp_dir().join(format!("hector-e2e-token-{}", std::process::id()));
        std::fs::write(&path, token).expect("write the token file");
        path
    })
    .clone()
}

/// Adds the operator's token to a call (see [`operator_token_file`]).
pub fn authorize(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    static VALUE: std::sync::OnceLock<tonic::metadata::AsciiMetadataValue> =
        std::sync::OnceLock::new();
    let value = VALUE.get_or_init(|| {
        let token = std::fs::read_to_string(operator_token_file()).expect("token file");
        format!("Bearer {}", token.trim())
            .parse()
            .expect("ASCII token")
    });
    request
        .metadata_mut()
        .insert("authorization", value.clone());
    Ok(request)
}

/// A connection to a plugin endpoint: over TLS to a launcher (accepting its certificate — the
/// tests of pinning pin it themselves), in plaintext to anything else (an external endpoint).
pub async fn plugin_channel(address: &str) -> Result<tonic::transport::Channel, String> {
    use hector_plugin_sdk::tls::{Connector, Pin, client_config};
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2));
    let secure = endpoint
        .clone()
        .connect_with_connector(Connector::new(client_config(Pin::Any {
            expect_uri_san: None,
        })))
        .await;
    match secure {
        Ok(ch) => Ok(ch),
        Err(_) => endpoint.connect().await.map_err(|e| e.to_string()),
    }
}

pub async fn apply<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = value["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply("hector-e2e").force(),
        &Patch::Apply(&value),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {name}: {e}"))
}
/// Installs the CRD from `crds/` and waits until it is served.
pub async fn install_crd(client: &Client) {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/hectorplugin.yaml"
    ))
    .expect("read crds/hectorplugin.yaml");
    let crd: CustomResourceDefinition = serde_norway::from_str(&yaml).expect("parse CRD");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "hectorplugins.hector.dev",
        &PatchParams::apply("hector-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API server accepts the CRD");
    eventually("CRD Established", Duration::from_secs(30), || async {
        let c = crds.get("hectorplugins.hector.dev").await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

pub fn plugin(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "hector.dev/v1alpha1",
        "kind": "HectorPlugin",
        "metadata": {"name": name},
        "spec": spec,
    })
}

pub fn manifest() -> serde_json::Value {
    json!({"name": "echo-llm", "version": "0.1.0", "type": "llm_provider"})
}

/// One `Generate` with `text` at `address`, as an agent would call it: the answer's text, or
/// the error as text.
pub async fn generate_text(address: &str, text: &str) -> Result<String, String> {
    use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
    let ch = plugin_channel(address).await?;
    LlmProviderClient::with_interceptor(ch, authorize)
        .generate(user_request(text))
        .await
        .map(|r| r.into_inner().text)
        .map_err(|s| s.to_string())
}

/// [`generate_text`] as the caller whose `token` it is.
pub async fn generate_text_as(address: &str, text: &str, token: &str) -> Result<String, String> {
    use hector_plugin_sdk::proto::llm_provider_client::LlmProviderClient;
    let ch = plugin_channel(address).await?;
    let mut request = tonic::Request::new(user_request(text));
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "token is not ASCII".to_string())?;
    request.metadata_mut().insert("authorization", value);
    LlmProviderClient::new(ch)
        .generate(request)
        .await
        .map(|r| r.into_inner().text)
        .map_err(|s| s.to_string())
}

/// The kubectl matching the local cluster (`KUBECTL` overrides; else kubectl on PATH).
pub fn kubectl_path() -> std::path::PathBuf {
    if let Ok(k) = std::env::var("KUBECTL") {
        return k.into();
    }
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/cluster/cluster"
    ))
    .arg("kubectl-path")
    .output()
    .expect("tests/cluster/cluster kubectl-path");
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if path.is_file() {
        path
    } else {
        "kubectl".into()
    }
}

/// Namespace of the operator that `make test` deploys.
pub const OPERATOR_NS: &str = "hector-system";

/// Who holds the operator's Lease, if anyone.
pub async fn lease_holder(client: &Client) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), OPERATOR_NS);
    leases
        .get_opt("hector-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// GET `path` on `port` of an operator Pod through the API server's proxy; `None` while it
/// does not answer (or answers with an error status).
pub async fn operator_pod_get(client: &Client, pod: &str, port: u16, path: &str) -> Option<String> {
    let uri = format!("/api/v1/namespaces/{OPERATOR_NS}/pods/{pod}:{port}/proxy{path}");
    let request = http::Request::get(uri).body(Vec::new()).ok()?;
    client.request_text(request).await.ok()
}

/// A binary of the workspace, built next to hectorctl.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_BIN_EXE_hectorctl")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The Go host that loads plugins the way Hector's loader does (built once per test binary).
pub fn go_loader() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("hector-agent-loader-{}", std::process::id()));
        let status = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/plugins/go-llm/build.sh"
        ))
        .arg(&out)
        .arg("./cmd/loader")
        .status()
        .expect("run tests/plugins/go-llm/build.sh (is Go installed?)");
        assert!(status.success(), "building the loader failed: {status}");
        out
    })
    .clone()
}

/// A child process killed when dropped, however the test ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain gRPC plugin outside the cluster, as an external `spec.endpoint` is (no launcher,
/// so no TLS and no caller check): echo-llm on this machine, which is the cluster's node,
/// initialized with `prefix`, at the node's address, which Pods reach. Returns the process
/// and the address.
pub async fn external_echo(client: &Client, prefix: &str) -> (KillOnDrop, String) {
    let node_ip = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&Default::default())
        .await
        .expect("list nodes")
        .items
        .into_iter()
        .find_map(|n| {
            n.status?
                .addresses?
                .into_iter()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address)
        })
        .expect("the node's InternalIP");
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("{node_ip}:{port}");
    let server = KillOnDrop(
        std::process::Command::new(workspace_bin("echo-llm"))
            .env("HECTOR_PLUGIN_ADDR", format!("0.0.0.0:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start echo-llm"),
    );
    let channel = eventually("echo-llm serving", Duration::from_secs(20), || {
        let endpoint = endpoint.clone();
        async move {
            hector_plugin_sdk::connect(&endpoint, Duration::from_secs(1))
                .await
                .ok()
        }
    })
    .await;
    hector_plugin_sdk::LifecycleClient::new(channel, hector_plugin_sdk::PluginType::LlmProvider)
        .initialize([("prefix".to_string(), prefix.to_string())].into())
        .await
        .expect("Initialize echo-llm");
    (server, endpoint)
}
