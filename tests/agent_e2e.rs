//! Agents using the plugins the operator publishes, on a live cluster: a go-plugin host on
//! this machine (what Hector's loader does) loading `hector-plugin-remote`, an agent Pod of
//! the `examples/agent` shape, `hectorctl`, and the `hector-plugin-client` library with its
//! per-call balancing. Each test works in its own namespace.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`), Go (to build the loader
//! in tests/plugins/go-llm/cmd/loader), the images loaded (`make images`) and an operator
//! watching all namespaces. This machine must reach Pod IPs (the local cluster's node is this
//! machine); the ClusterIP comparison reads this machine's conntrack table.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hector_plugin_client::{ChannelOptions, Directory, PluginChannel, PluginTls, Served, served};
use hector_plugin_sdk::PluginType;
use hector_plugin_sdk::endpoints::{ENDPOINTS_KEY, EndpointsFile, PublishedPlugin};
use hector_plugin_sdk::proto::{EmbedRequest, GenerateRequest, Message};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tonic::Code;

const ENDPOINTS_CM: &str = "hector-plugins";

fn echo_spec(replicas: i32, prefix: &str) -> Value {
    json!({
        "manifest": {"name": "echo-llm", "version": "0.1.0", "type": "llm_provider",
                     "capabilities": {"streaming": true}},
        "image": format!("hector.dev/echo-llm:{IMAGE_TAG}"),
        "imagePullPolicy": "Never",
        "command": ["/plugin/echo-llm"],
        "replicas": replicas,
        "config": {"prefix": prefix},
        "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
    })
}

fn embedder_spec(dimension: i32) -> Value {
    json!({
        "manifest": {"name": "hash-embedder", "version": "0.1.0", "type": "embedder_provider"},
        "image": format!("hector.dev/hash-embedder:{IMAGE_TAG}"),
        "imagePullPolicy": "Never",
        "command": ["/plugin/hash-embedder"],
        "config": {"dimension": dimension},
        "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
    })
}

/// The published document of `ns`, raw and parsed.
async fn published_doc(client: &Client, ns: &str) -> Option<(String, EndpointsFile)> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let text = cms
        .get_opt(ENDPOINTS_CM)
        .await
        .ok()??
        .data?
        .remove(ENDPOINTS_KEY)?;
    let doc = EndpointsFile::parse(&text).ok()?;
    Some((text, doc))
}

/// Waits until plugin `name` is published with `endpoints` endpoints.
async fn wait_published(
    client: &Client,
    ns: &str,
    name: &str,
    endpoints: usize,
) -> PublishedPlugin {
    eventually(
        &format!("{name} published with {endpoints} endpoint(s)"),
        Duration::from_secs(150),
        || async {
            let (_, doc) = published_doc(client, ns).await?;
            doc.plugins
                .get(name)
                .filter(|p| p.endpoints.len() == endpoints)
                .cloned()
        },
    )
    .await
}

async fn apply_plugin(client: &Client, ns: &str, name: &str, spec: Value) {
    let api: Api<hector_operator::crd::HectorPlugin> = Api::namespaced(client.clone(), ns);
    apply(&api, plugin(name, spec)).await;
}

/// Runs the loader on `plugin` with `args` and `env`: its JSON lines and its stderr.
fn load(plugin: &Path, args: &[&str], env: &[(&str, &str)]) -> (Vec<Value>, String) {
    let out: Output = Command::new(go_loader())
        .args(args)
        .arg(plugin)
        // The agent's identity here: a token every launcher admits (see `common`).
        .env("HECTOR_PLUGIN_TOKEN_FILE", operator_token_file())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the loader");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The loader's line for `op`.
fn line<'a>(lines: &'a [Value], op: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["op"] == op)
        .unwrap_or_else(|| panic!("no {op} line in {lines:?}"))
}

/// Checks an LLM session of the loader: Initialize, Generate, GenerateStreaming, Health, Kill.
fn assert_llm_session(lines: &[Value], stderr: &str, expect: &str) {
    assert_eq!(line(lines, "initialize")["ok"], true, "{lines:?}\n{stderr}");
    let generate = line(lines, "generate");
    assert_eq!(generate["text"], expect, "{generate}");
    let stream = line(lines, "stream");
    assert_eq!(stream["ok"], true, "{stream}");
    assert_eq!(stream["text"], expect, "the chunks add up to the answer");
    let words = expect.split(' ').count();
    assert_eq!(
        stream["chunks"],
        words + 1,
        "a chunk per word and DONE: {stream}"
    );
    let health = line(lines, "health");
    assert_eq!(health["healthy"], true, "{health}");
    let kill = line(lines, "kill");
    assert_eq!(
        kill["exited"], true,
        "go-plugin's Kill ends the process: {kill}"
    );
    assert!(!stderr.contains("[ERROR]"), "{stderr}");
}

/// The client library's options for this machine acting as an agent: a token every
/// launcher admits (see `common`).
fn agent_options() -> ChannelOptions {
    ChannelOptions::new().token_file(operator_token_file())
}

fn hectorctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hectorctl"))
        .args(args)
        .env("HECTOR_PLUGIN_TOKEN_FILE", operator_token_file())
        .output()
        .expect("run hectorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ask(text: &str) -> GenerateRequest {
    GenerateRequest {
        messages: vec![Message {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        tools: vec![],
    }
}

/// (a) the go-plugin host here loads `hector-plugin-remote`, which reaches plugins published
/// in the cluster — by a published Pod endpoint as `remote_address`, and by name through an
/// endpoints.json written from the ConfigMap; (c) the discovery directory `install` lays out
/// from it is accepted by `hectorctl discover`; (f) an address where nothing listens fails
/// Initialize clearly.
#[tokio::test]
async fn a_go_plugin_host_here_reaches_published_plugins_through_hector_plugin_remote() -> TestResult
{
    let client = client().await;
    let ns = TestNamespace::new(&client, "agent-host").await;
    apply_plugin(&client, &ns.name, "echo", echo_spec(1, "cluster: ")).await;
    apply_plugin(&client, &ns.name, "vectors", embedder_spec(16)).await;
    let echo = wait_published(&client, &ns.name, "echo", 1).await;
    let vectors = wait_published(&client, &ns.name, "vectors", 1).await;
    let remote = workspace_bin("hector-plugin-remote");
    let llm_ops = [
        "-op",
        "generate:hello cluster",
        "-op",
        "stream:hello cluster",
        "-op",
        "health",
    ];

    // By address: the host cannot resolve *.svc names, but reaches Pod IPs. The published
    // endpoints file, as an agent mounts it, gives the certificates to pin.
    let (text, _) = published_doc(&client, &ns.name).await.ok_or("published")?;
    let work = tempfile::tempdir()?;
    let file = work.path().join("endpoints.json");
    std::fs::write(&file, &text)?;
    let env = [("HECTOR_PLUGINS_ENDPOINTS", file.to_str().ok_or("path")?)];
    let config = json!({"remote_address": echo.endpoints[0]}).to_string();
    let mut args = vec!["-config", config.as_str()];
    args.extend(llm_ops);
    let (lines, stderr) = load(&remote, &args, &env);
    assert_llm_session(&lines, &stderr, "cluster: hello cluster");

    let config = json!({"remote_address": vectors.endpoints[0]}).to_string();
    let (lines, stderr) = load(
        &remote,
        &[
            "-type",
            "embedder_provider",
            "-config",
            &config,
            "-op",
            "embed:remote plugins",
            "-op",
            "health",
        ],
        &env,
    );
    let by_address = line(&lines, "embed");
    assert_eq!(by_address["ok"], true, "{lines:?}\n{stderr}");
    assert_eq!(by_address["vector"].as_array().map(Vec::len), Some(16));
    assert_eq!(line(&lines, "health")["healthy"], true);
    assert_eq!(line(&lines, "kill")["exited"], true);

    // By name: the ConfigMap's endpoints.json as an agent would mount it, and the discovery
    // directory `install` lays out from it.
    let dir = work.path().join("plugins");
    let out = Command::new(&remote)
        .args(["install", "--into"])
        .arg(&dir)
        .arg("--endpoints")
        .arg(&file)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir_arg = dir.to_str().ok_or("path")?;
    let (code, listing, stderr) = hectorctl(&["discover", dir_arg]);
    assert_eq!(code, 0, "{listing}{stderr}");
    for (name, kind) in [("echo", "llm_provider"), ("vectors", "embedder_provider")] {
        assert!(
            listing
                .lines()
                .any(|l| l.contains(&format!("{name}.plugin.yaml"))
                    && l.contains(kind)
                    && l.trim_end().ends_with(" ok")),
            "{name} not discovered:\n{listing}"
        );
    }
    let mut args = vec![];
    args.extend(llm_ops);
    let (lines, stderr) = load(&dir.join("echo"), &args, &env);
    assert_llm_session(&lines, &stderr, "cluster: hello cluster");
    let (lines, stderr) = load(
        &dir.join("vectors"),
        &[
            "-type",
            "embedder_provider",
            "-op",
            "embed:remote plugins",
            "-op",
            "health",
        ],
        &env,
    );
    let by_name = line(&lines, "embed");
    assert_eq!(
        by_name["vector"], by_address["vector"],
        "{lines:?}\n{stderr}"
    );
    assert_eq!(line(&lines, "kill")["exited"], true);

    // The same vector from the client library, through the ConfigMap watch.
    let directory = Directory::watch_namespace(client.clone(), &ns.name).await?;
    let answer = directory
        .plugin_with("vectors", &agent_options())
        .await?
        .embedder()?
        .embed(EmbedRequest {
            text: "remote plugins".into(),
        })
        .await?
        .into_inner();
    // The loader prints float32 values as JSON numbers; back to f32 they are exact.
    let printed: Vec<f32> = by_address["vector"]
        .as_array()
        .ok_or("vector")?
        .iter()
        .filter_map(Value::as_f64)
        .map(|x| x as f32)
        .collect();
    assert_eq!(answer.vector, printed);

    // (f) A Pod IP where nothing listens on the port: Initialize names address and reason.
    let ip = echo.endpoints[0].rsplit_once(':').ok_or("ip:port")?.0;
    let config = json!({"remote_address": format!("{ip}:1")}).to_string();
    let (lines, _) = load(&remote, &["-config", &config, "-op", "health"], &[]);
    let init = line(&lines, "initialize");
    assert_eq!(init["ok"], false, "{init}");
    assert_eq!(
        init["error"],
        format!("cannot reach remote plugin at {ip}:1: connection refused")
    );
    assert_eq!(line(&lines, "kill")["exited"], true);
    Ok(())
}

/// The manifests of examples/agent/agent.yaml, by kind.
fn agent_example() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/agent/agent.yaml"
    ))
    .expect("read examples/agent/agent.yaml");
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).expect("valid YAML");
            (v["kind"].as_str().unwrap_or("").to_string(), v)
        })
        .collect()
}

/// A container of the agent Pod running `command` with the agent container's mounts.
fn agent_container(agent: &Value, name: &str, command: &[&str]) -> Value {
    let mut c = agent.clone();
    c["name"] = json!(name);
    c["image"] = json!(format!("hector.dev/hector-operator:{IMAGE_TAG}"));
    c["imagePullPolicy"] = json!("IfNotPresent");
    c["command"] = json!(command);
    c
}

/// (b) an agent Pod of the examples/agent shape — ConfigMap mounted, hector-plugin-remote
/// copied in and a copy per plugin with its manifest laid out by init containers, kept
/// current by the sidecar — finds and calls the published plugin from inside the cluster;
/// (g) `hectorctl endpoints` and `call --plugin` from here.
///
/// The agent's containers run, in place of one Hector: the Go host that loads plugins as
/// Hector's component manager does (from the go-llm test image), from the published
/// plugins.yaml and by discovery; and `hectorctl` (from the operator's image): `call
/// --plugin` through the Kubernetes API (the example's ServiceAccount and Role), `call
/// --plugin` through the mounted endpoints.json, `endpoints`, `discover` on the laid-out
/// directory.
#[tokio::test]
async fn an_agent_pod_finds_and_calls_published_plugins() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "agent-pod").await;
    apply_plugin(&client, &ns.name, "echo", echo_spec(1, "agent: ")).await;
    let echo = wait_published(&client, &ns.name, "echo", 1).await;
    let endpoint = echo.endpoints[0].clone();

    // (g) From here.
    let (code, table, stderr) = hectorctl(&["endpoints", "-n", &ns.name]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        table.lines().any(|l| l.starts_with("echo ")
            && l.contains("llm_provider")
            && l.contains(&endpoint)
            && l.contains(&format!("echo.{}.svc:50051", ns.name))),
        "{table}"
    );
    let (code, json_out, _) = hectorctl(&["endpoints", "-n", &ns.name, "-o", "json"]);
    assert_eq!(code, 0);
    let (_, doc) = published_doc(&client, &ns.name).await.ok_or("published")?;
    assert_eq!(EndpointsFile::parse(&json_out)?, doc);
    let (code, answer, stderr) = hectorctl(&[
        "call", "--plugin", "echo", "-n", &ns.name, "generate", "hi", "there",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(answer.trim(), "agent: hi there");
    assert!(
        stderr.contains(&format!("served by {endpoint}")),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl(&["call", "--plugin", "nope", "-n", &ns.name, "health"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("published: echo"), "{stderr}");

    // (b) The example's objects, with the agent container swapped for hectorctl runs.
    let example = agent_example();
    let pp = PostParams::default();
    let sa: ServiceAccount = serde_json::from_value(example["ServiceAccount"].clone())?;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&pp, &sa)
        .await?;
    let role: Role = serde_json::from_value(example["Role"].clone())?;
    Api::<Role>::namespaced(client.clone(), &ns.name)
        .create(&pp, &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(example["RoleBinding"].clone())?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns.name)
        .create(&pp, &binding)
        .await?;
    let deployment: Deployment = serde_json::from_value(example["Deployment"].clone())?;
    let template = serde_json::to_value(deployment.spec.ok_or("spec")?.template)?;
    let mut spec = template["spec"].clone();
    let agent = spec["containers"][0].clone();
    assert_eq!(agent["name"], "agent");
    let hectorctl_bin = "/usr/local/bin/hectorctl";
    let file = "/etc/hector/plugins/endpoints.json";
    spec["containers"] = json!([
        agent_container(
            &agent,
            "agent",
            &[
                hectorctl_bin,
                "call",
                "--plugin",
                "echo",
                "--repeat",
                "20",
                "generate",
                "from",
                "the",
                "pod"
            ]
        ),
        agent_container(
            &agent,
            "mounted",
            &[
                hectorctl_bin,
                "call",
                "--plugin",
                "echo",
                "--endpoints-file",
                file,
                "generate",
                "via",
                "the",
                "file"
            ]
        ),
        agent_container(&agent, "endpoints", &[hectorctl_bin, "endpoints"]),
        agent_container(
            &agent,
            "discover",
            &[hectorctl_bin, "discover", "/opt/hector/plugins"]
        ),
        agent_container(
            &agent,
            "remote",
            &["/opt/hector/bin/hector-plugin-remote", "--version"]
        ),
        // A host doing what Hector's component manager does, inside the agent Pod: it loads
        // the published plugins.yaml (the copy at the path it names, after that copy's
        // manifest)...
        hector_container(
            &agent,
            "hector",
            &["-hector-config", "/etc/hector/plugins/plugins.yaml"],
            &LLM_OPS,
        ),
        // ...and what plugin discovery finds in the laid-out directory; each copy finds its
        // plugin by its own name in the mounted endpoints.json.
        hector_container(
            &agent,
            "hector-discovered",
            &["-discover", "/opt/hector/plugins"],
            &LLM_OPS,
        ),
    ]);
    spec["restartPolicy"] = json!("Never");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent", "labels": template["metadata"]["labels"]},
        "spec": spec,
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&pp, &pod).await?;
    let phase = eventually(
        "the agent Pod to finish",
        Duration::from_secs(120),
        || async {
            let p = pods.get("agent").await.ok()?;
            let phase = p.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await;
    let mut logs = BTreeMap::new();
    for c in [
        "install-remote",
        "install-plugins",
        "plugin-installer",
        "agent",
        "mounted",
        "endpoints",
        "discover",
        "remote",
        "hector",
        "hector-discovered",
    ] {
        let lp = LogParams {
            container: Some(c.to_string()),
            ..Default::default()
        };
        logs.insert(c, pods.logs("agent", &lp).await.unwrap_or_default());
    }
    assert_eq!(phase, "Succeeded", "{logs:#?}");
    assert!(
        logs["install-remote"].contains("installed /opt/hector/bin/hector-plugin-remote"),
        "{logs:#?}"
    );
    assert!(
        logs["install-plugins"].contains("installed /opt/hector/plugins/echo"),
        "{logs:#?}"
    );
    assert!(
        logs["plugin-installer"].contains("up to date /opt/hector/plugins/echo"),
        "the sidecar found the directory current: {logs:#?}"
    );
    let agent_log = &logs["agent"];
    assert_eq!(
        agent_log
            .lines()
            .filter(|l| *l == "agent: from the pod")
            .count(),
        20,
        "{agent_log}"
    );
    assert!(
        agent_log.contains("20 calls, 0 failed")
            && agent_log.contains(&format!("served by {endpoint}: 20")),
        "{agent_log}"
    );
    assert!(
        logs["mounted"].contains("agent: via the file")
            && logs["mounted"].contains(&format!("served by {endpoint}")),
        "{logs:#?}"
    );
    assert!(
        logs["endpoints"].contains("echo") && logs["endpoints"].contains(&endpoint),
        "{logs:#?}"
    );
    assert!(
        logs["discover"]
            .lines()
            .any(|l| l.contains("/opt/hector/plugins/echo.plugin.yaml")
                && l.contains("llm_provider")
                && l.trim_end().ends_with(" ok")),
        "{logs:#?}"
    );
    assert!(
        logs["remote"].starts_with("hector-plugin-remote "),
        "{logs:#?}"
    );
    for host in ["hector", "hector-discovered"] {
        let lines = json_lines(&logs[host]);
        assert_hector_llm_session(
            &lines,
            &logs[host],
            "echo",
            "agent: hello from the agent pod",
        );
    }
    Ok(())
}

/// The calls of an LLM session in the agent Pod (Hector mode: `PLUGIN/OP`).
const LLM_OPS: [&str; 3] = [
    "echo/generate:hello from the agent pod",
    "echo/stream:hello from the agent pod",
    "echo/health",
];

/// The JSON lines of a host's log.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The Hector-mode host's line for `op` of `plugin`.
fn plugin_line<'a>(lines: &'a [Value], plugin: &str, op: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["op"] == op && l["plugin"] == plugin)
        .unwrap_or_else(|| panic!("no {op} line of {plugin} in {lines:#?}"))
}

/// Checks a Hector-mode LLM session of `plugin`: loaded as an llm_provider from
/// `/opt/hector/plugins/PLUGIN`, Generate, GenerateStreaming, Health, Kill.
fn assert_hector_llm_session(lines: &[Value], log: &str, plugin: &str, expect: &str) {
    let load = plugin_line(lines, plugin, "load");
    assert_eq!(load["ok"], true, "{lines:#?}\n{log}");
    assert_eq!(load["type"], "llm_provider");
    assert_eq!(load["path"], format!("/opt/hector/plugins/{plugin}"));
    assert_eq!(plugin_line(lines, plugin, "generate")["text"], expect);
    let stream = plugin_line(lines, plugin, "stream");
    assert_eq!(stream["text"], expect, "the chunks add up to the answer");
    assert_eq!(
        stream["chunks"],
        expect.split(' ').count() + 1,
        "a chunk per word and DONE: {stream}"
    );
    assert_eq!(plugin_line(lines, plugin, "health")["healthy"], true);
    assert_eq!(
        plugin_line(lines, plugin, "kill")["exited"],
        true,
        "go-plugin's Kill ends the process"
    );
    assert!(!log.contains("[ERROR]"), "{log}");
}

fn database_spec() -> Value {
    json!({
        "manifest": {"name": "memory-db", "version": "0.1.0", "type": "database_provider"},
        "image": format!("hector.dev/memory-db:{IMAGE_TAG}"),
        "imagePullPolicy": "Never",
        "command": ["/plugin/memory-db"],
        "health": {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2},
    })
}

/// The calls each host of the three-plugin Pod makes; `C` is its own collection (the hosts
/// run side by side against the same database).
fn three_type_ops(collection: &str) -> Vec<String> {
    [
        "echo/generate:three of a kind",
        "echo/health",
        "embed/embed:remote vectors",
        "embed/info",
        "vectors/create:C:3",
        "vectors/upsert:C:east:1,0,0:content=alpha",
        "vectors/upsert:C:north:0,1,0:content=beta",
        "vectors/search:C:0.9,0.1,0:1",
        "vectors/upsert:C:bad:1",
        "vectors/health",
    ]
    .iter()
    .map(|op| op.replace(":C:", &format!(":{collection}:")))
    .collect()
}

/// Checks a Hector-mode session of the three-plugin Pod over `collection`.
fn assert_three_types(lines: &[Value], log: &str, collection: &str) {
    for (name, kind) in [
        ("echo", "llm_provider"),
        ("embed", "embedder_provider"),
        ("vectors", "database_provider"),
    ] {
        let load = plugin_line(lines, name, "load");
        assert_eq!(load["ok"], true, "{lines:#?}\n{log}");
        assert_eq!(load["type"], kind, "dispensed by its manifest's type");
        assert_eq!(load["path"], format!("/opt/hector/plugins/{name}"));
        assert_eq!(plugin_line(lines, name, "kill")["exited"], true);
    }
    assert_eq!(
        plugin_line(lines, "echo", "generate")["text"],
        "pod: three of a kind"
    );
    assert_eq!(plugin_line(lines, "echo", "health")["healthy"], true);
    let embedded = plugin_line(lines, "embed", "embed");
    assert_eq!(embedded["vector"].as_array().map(Vec::len), Some(8));
    assert_eq!(plugin_line(lines, "embed", "info")["dimension"], 8);
    assert_eq!(plugin_line(lines, "vectors", "create")["ok"], true);
    let found = plugin_line(lines, "vectors", "search");
    assert_eq!(found["ok"], true, "{found}");
    assert_eq!(found["results"][0]["id"], "east");
    assert_eq!(found["results"][0]["metadata"]["content"], "alpha");
    let refused = lines
        .iter()
        .find(|l| l["op"] == "upsert" && l["ok"] == false)
        .unwrap_or_else(|| panic!("no refused upsert in {lines:#?}"));
    assert_eq!(
        refused["error"],
        format!("collection \"{collection}\": vector has 1 dimensions, the collection 3")
    );
    assert_eq!(plugin_line(lines, "vectors", "health")["healthy"], true);
}

/// (h) Three plugins of three types in one namespace, published by the operator, loaded in an
/// agent Pod built from examples/agent/agent.yaml exactly as Hector's component manager loads
/// them: from the published plugins.yaml (each entry's `<path>.plugin.yaml` first, dispensed
/// by its type, held to its section) and by discovery of /opt/hector/plugins. Then a fourth
/// plugin is published while the Pod runs: the recipe's sidecar lays out its copy and
/// manifest, and the mounted plugins.yaml names it.
#[tokio::test]
async fn an_agent_pod_loads_llm_embedder_and_database_plugins_as_hector_does() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "agent-types").await;
    apply_plugin(&client, &ns.name, "echo", echo_spec(1, "pod: ")).await;
    apply_plugin(&client, &ns.name, "embed", embedder_spec(8)).await;
    apply_plugin(&client, &ns.name, "vectors", database_spec()).await;
    for name in ["echo", "embed", "vectors"] {
        wait_published(&client, &ns.name, name, 1).await;
    }

    // The published fragment: one path per plugin, in its type's section.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let fragment = cms
        .get(ENDPOINTS_CM)
        .await?
        .data
        .and_then(|mut d| d.remove(hector_plugin_sdk::endpoints::PLUGINS_YAML_KEY))
        .ok_or("no plugins.yaml")?;
    let parsed: Value = serde_norway::from_str(&fragment)?;
    for (section, name) in [
        ("llm_providers", "echo"),
        ("embedder_providers", "embed"),
        ("database_providers", "vectors"),
    ] {
        assert_eq!(
            parsed["plugins"][section][name],
            json!({"name": name, "type": "grpc", "path": format!("/opt/hector/plugins/{name}"),
                   "enabled": true}),
            "{fragment}"
        );
    }

    // The recipe's objects; its agent container becomes the Go host, twice, and a shell that
    // waits for the plugin published later.
    let example = agent_example();
    let pp = PostParams::default();
    let sa: ServiceAccount = serde_json::from_value(example["ServiceAccount"].clone())?;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .create(&pp, &sa)
        .await?;
    let deployment: Deployment = serde_json::from_value(example["Deployment"].clone())?;
    let template = serde_json::to_value(deployment.spec.ok_or("spec")?.template)?;
    let mut spec = template["spec"].clone();
    let agent = spec["containers"][0].clone();
    assert_eq!(
        spec["initContainers"][2]["restartPolicy"], "Always",
        "the recipe's installer is a sidecar"
    );
    let fragment_ops = three_type_ops("from-fragment");
    let discovery_ops = three_type_ops("from-discovery");
    let fragment_ops: Vec<&str> = fragment_ops.iter().map(String::as_str).collect();
    let discovery_ops: Vec<&str> = discovery_ops.iter().map(String::as_str).collect();
    let mut waiter = agent_container(
        &agent,
        "late",
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 300 ]; do \
           if [ -f /opt/hector/plugins/late.plugin.yaml ] && \
              busybox grep -q 'path: /opt/hector/plugins/late' /etc/hector/plugins/plugins.yaml; then \
             cat /opt/hector/plugins/late.plugin.yaml; exit 0; fi; \
           sleep 1; i=$((i+1)); done; echo 'late was never laid out'; exit 1",
        ],
    );
    waiter["image"] = json!(format!("hector.dev/busybox:{IMAGE_TAG}"));
    waiter["imagePullPolicy"] = json!("Never");
    spec["containers"] = json!([
        hector_container(
            &agent,
            "fragment",
            &["-hector-config", "/etc/hector/plugins/plugins.yaml"],
            &fragment_ops,
        ),
        hector_container(
            &agent,
            "discovery",
            &["-discover", "/opt/hector/plugins"],
            &discovery_ops,
        ),
        waiter,
    ]);
    spec["restartPolicy"] = json!("Never");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent", "labels": template["metadata"]["labels"]},
        "spec": spec,
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&pp, &pod).await?;

    // Once both hosts are done, a fourth plugin is published.
    eventually("both hosts to finish", Duration::from_secs(120), || async {
        let statuses = pods.get("agent").await.ok()?.status?.container_statuses?;
        let done = |name: &str| {
            statuses.iter().any(|s| {
                s.name == name && s.state.as_ref().is_some_and(|st| st.terminated.is_some())
            })
        };
        (done("fragment") && done("discovery")).then_some(())
    })
    .await;
    apply_plugin(&client, &ns.name, "late", echo_spec(1, "late: ")).await;
    wait_published(&client, &ns.name, "late", 1).await;
    // kubelet brings the ConfigMap volume up to date at its next sync (up to about a minute
    // and a half), then the sidecar lays the copy out within its interval.
    let phase = eventually(
        "the agent Pod to finish",
        Duration::from_secs(330),
        || async {
            let phase = pods.get("agent").await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await;
    let mut logs = BTreeMap::new();
    for c in [
        "install-plugins",
        "plugin-installer",
        "fragment",
        "discovery",
        "late",
    ] {
        let lp = LogParams {
            container: Some(c.to_string()),
            ..Default::default()
        };
        logs.insert(c, pods.logs("agent", &lp).await.unwrap_or_default());
    }
    assert_eq!(phase, "Succeeded", "{logs:#?}");
    for name in ["echo", "embed", "vectors"] {
        assert!(
            logs["install-plugins"].contains(&format!("installed /opt/hector/plugins/{name}")),
            "{logs:#?}"
        );
    }
    assert_three_types(
        &json_lines(&logs["fragment"]),
        &logs["fragment"],
        "from-fragment",
    );
    assert_three_types(
        &json_lines(&logs["discovery"]),
        &logs["discovery"],
        "from-discovery",
    );
    assert!(
        logs["plugin-installer"].contains("installed /opt/hector/plugins/late"),
        "{logs:#?}"
    );
    assert!(
        logs["late"].contains("name: late") && logs["late"].contains("type: llm_provider"),
        "{logs:#?}"
    );
    Ok(())
}

/// A container of the agent Pod running the Go host from the go-llm test image in Hector
/// mode (it loads plugins as Hector's component manager does) with `args` and `ops`.
fn hector_container(agent: &Value, name: &str, args: &[&str], ops: &[&str]) -> Value {
    let mut command = vec!["/usr/local/bin/go-loader".to_string()];
    command.extend(args.iter().map(|a| a.to_string()));
    command.extend(ops.iter().map(|op| format!("-op={op}")));
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut c = agent_container(agent, name, &command);
    c["image"] = json!(format!("hector.dev/go-llm:{IMAGE_TAG}"));
    c["imagePullPolicy"] = json!("Never");
    c
}

/// The Pod IP behind each connection from this machine to `service_ip:port`, read from the
/// conntrack table (kube-proxy's DNAT of a ClusterIP is recorded there): local address →
/// Pod address.
fn conntrack_backends(service_ip: &str, port: u16) -> BTreeMap<String, String> {
    let table = std::fs::read_to_string("/proc/net/nf_conntrack").expect(
        "read /proc/net/nf_conntrack (needs root on the node running kube-proxy) to see which Pod a ClusterIP connection reached",
    );
    let mut out = BTreeMap::new();
    for l in table.lines() {
        let field = |key: &str, nth: usize| {
            l.split_whitespace()
                .filter_map(|w| w.strip_prefix(key))
                .nth(nth)
        };
        // The first tuple is the connection as sent, the second the reply (from the Pod).
        let (Some(src), Some(dst), Some(sport), Some(dport), Some(pod)) = (
            field("src=", 0),
            field("dst=", 0),
            field("sport=", 0),
            field("dport=", 0),
            field("src=", 1),
        ) else {
            continue;
        };
        if dst == service_ip && dport == port.to_string() {
            out.insert(format!("{src}:{sport}"), pod.to_string());
        }
    }
    out
}

fn shares(counts: &BTreeMap<String, usize>) -> String {
    let total: usize = counts.values().sum();
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n} ({:.1} %)", 100.0 * *n as f64 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// (d) 300 calls from one client through the library spread over three replicas about
/// evenly, where one connection through the ClusterIP lands every call on one replica; (e) a
/// replica killed while three callers call in a loop fails no call that had not reached it.
#[tokio::test]
async fn calls_are_balanced_per_call_over_replicas_and_survive_a_killed_one() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "agent-balance").await;
    apply_plugin(&client, &ns.name, "echo", echo_spec(3, "r: ")).await;
    let echo = wait_published(&client, &ns.name, "echo", 3).await;
    let directory = Directory::watch_namespace(client.clone(), &ns.name).await?;
    let channel = directory.plugin_with("echo", &agent_options()).await?;
    assert_eq!(channel.endpoints().len(), 3, "{channel:?}");
    let mut llm = channel.llm()?;

    // (d) Where each call landed is the endpoint its response came from (the library reports
    // it per response), so the counts are measured, not inferred.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..300 {
        let r = llm.generate(ask(&format!("call {i}"))).await?;
        assert_eq!(r.get_ref().text, format!("r: call {i}"));
        let at = served(&r).ok_or("no Served")?;
        *counts.entry(at.endpoint.to_string()).or_default() += 1;
    }
    eprintln!(
        "balanced over the published endpoints, 300 calls: {}",
        shares(&counts)
    );
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (endpoint, n) in &counts {
        assert!(
            echo.endpoints.contains(endpoint),
            "{endpoint} not published"
        );
        assert!(
            (70..=130).contains(n),
            "{endpoint} served {n} of 300 (33 % ± 10 %)"
        );
    }

    // The contrast: the Service's ClusterIP with one connection. Each call's connection (its
    // local address, reported per response) is mapped to the Pod kube-proxy sent it to.
    let svc = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("echo")
        .await?;
    let cluster_ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or("the Service has no ClusterIP")?;
    // kube-proxy programs a new Service's rules a moment after its endpoints appear; until
    // then the ClusterIP refuses connections.
    let pinned =
        agent_options().pinned(PluginTls::for_published("echo", &echo).ok_or("no certificates")?);
    let pinned = &pinned;
    let via_service = eventually("the ClusterIP to answer", Duration::from_secs(30), || {
        let address = format!("{cluster_ip}:50051");
        async move {
            PluginChannel::connect_with(&address, PluginType::LlmProvider, pinned)
                .await
                .ok()
        }
    })
    .await;
    let mut via = via_service.llm()?;
    let mut connections: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused = 0;
    for i in 0..300 {
        // While kube-proxy still rewrites the Service's rules, a new connection can be
        // refused; such a call reached no Pod, so trying it again does not bias the count.
        let mut attempt = 0;
        let r = loop {
            match via.generate(ask(&format!("service {i}"))).await {
                Ok(r) => break r,
                Err(s) if s.code() == tonic::Code::Unavailable && attempt < 40 => {
                    attempt += 1;
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(s) => return Err(s.into()),
            }
        };
        let Served { local, .. } = served(&r).ok_or("no Served")?;
        let local = local.ok_or("no local address")?;
        *connections.entry(local.to_string()).or_default() += 1;
    }
    let backends = conntrack_backends(&cluster_ip, 50051);
    let mut by_pod: BTreeMap<String, usize> = BTreeMap::new();
    for (local, n) in &connections {
        let pod = backends
            .get(local)
            .ok_or_else(|| format!("no conntrack entry for {local} → {cluster_ip}:50051"))?;
        *by_pod.entry(format!("{pod}:50051")).or_default() += n;
    }
    eprintln!(
        "through ClusterIP {cluster_ip} ({} connection(s), {refused} refused and tried again), 300 calls: {}",
        connections.len(),
        shares(&by_pod)
    );
    let most = by_pod.values().max().copied().unwrap_or(0);
    assert!(most >= 270, "one replica serves ≥ 90 %: {by_pod:?}");
    drop(via);
    drop(via_service);

    // (e) Three callers call in a loop; one replica is deleted with grace period 0.
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..3 {
        let mut llm = llm.clone();
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            // Each result with the time its call ended.
            let mut results: Vec<(Instant, Result<SocketAddr, tonic::Status>)> = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut request = tonic::Request::new(ask(&format!("caller {c} call {i}")));
                request.set_timeout(Duration::from_secs(5));
                let result = llm.generate(request).await.and_then(|r| {
                    served(&r)
                        .map(|s| s.endpoint)
                        .ok_or_else(|| tonic::Status::internal("no Served"))
                });
                results.push((Instant::now(), result));
                i += 1;
            }
            results
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let victim_ip = echo.endpoints[0]
        .rsplit_once(':')
        .ok_or("ip:port")?
        .0
        .to_string();
    let victim = pods
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(victim_ip.as_str()))
        .ok_or("the victim's Pod")?;
    let killed_at = Instant::now();
    pods.delete(
        &victim.name_any(),
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    let victim_endpoint = echo.endpoints[0].clone();
    // The operator unpublishes it; the watch carries that to the channel.
    eventually(
        "the killed endpoint to leave the channel",
        Duration::from_secs(30),
        || async {
            (!channel
                .endpoints()
                .iter()
                .any(|e| e.to_string() == victim_endpoint))
            .then_some(())
        },
    )
    .await;
    let left_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    let mut failures = Vec::new();
    let mut after: BTreeMap<String, usize> = BTreeMap::new();
    let mut victim_after_delete = 0;
    for caller in callers {
        for (ended, r) in caller.await? {
            total += 1;
            match r {
                Ok(at) => {
                    *after.entry(at.to_string()).or_default() += 1;
                    if at.to_string() == victim_endpoint && ended > killed_at {
                        victim_after_delete += 1;
                    }
                }
                Err(status) => failures.push(status),
            }
        }
    }
    eprintln!(
        "killed {victim_endpoint} (grace 0) under 3 looping callers: {total} calls, {} failed; \
         it left the channel {left_after:?} after the delete; {victim_after_delete} calls sent \
         to it ended (answered) after the delete; served: {}",
        failures.len(),
        shares(&after)
    );
    // A failure is allowed only for a call that was already sent to the killed Pod when its
    // connection died: such a call may have run there, so it is not sent again (the caller
    // sees UNAVAILABLE naming that endpoint). Every other call — one sent after the
    // connection died finds it closed, or its connect refused or timing out, which proves it
    // never reached the Pod — must have been retried on another replica and succeeded. Each
    // caller has at most one call in flight, so at most three calls can fail.
    assert!(failures.len() <= 3, "{failures:?}");
    for f in &failures {
        assert_eq!(f.code(), Code::Unavailable, "{f:?}");
        assert!(
            f.message().contains(&victim_endpoint)
                && (f.message().contains("during the call") || f.message().contains(" lost")),
            "not a call in flight on the killed Pod: {f:?}"
        );
    }
    assert!(
        total > failures.len() + 30,
        "the callers kept calling: {total}"
    );
    Ok(())
}
