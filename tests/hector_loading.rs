//! What the operator publishes for Hector, loaded the way Hector's component manager loads it,
//! without a cluster: three plugins of three types (llm, embedder, database) run behind
//! `hector-plugin-launcher` on loopback; the endpoints ConfigMap's data is built by the
//! operator's own publisher; the agent recipe's init containers (`examples/agent/agent.yaml`)
//! lay out the plugin directory; and the Go host in Hector mode (`tests/plugins/go-llm`,
//! package hectorhost: `<path>.plugin.yaml` first, dispensed by its type, held to its section)
//! loads and calls all three through `plugins.yaml` and through discovery.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`) and Go.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, TestResult, go_loader, workspace_bin};
use hector_operator::publish;
use hector_plugin_sdk::endpoints::{
    ENDPOINTS_KEY, EndpointsFile, PLUGINS_YAML_KEY, PublishedPlugin, SCHEMA_VERSION,
};
use serde_json::Value;

/// A plugin behind a launcher on a loopback port, as a plugin Pod runs it (without TLS).
struct Backend {
    _process: KillOnDrop,
    addr: String,
    _config: tempfile::TempDir,
}

impl Backend {
    fn start(plugin_type: &str, binary: &str, config: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for (k, v) in config {
            std::fs::write(dir.path().join(k), v).expect("config file");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(workspace_bin("hector-plugin-launcher"))
            .args([
                "--listen",
                &addr,
                "--type",
                plugin_type,
                "--launch",
                "network",
            ])
            .args(["--health-interval", "0.5", "--start-timeout", "30"])
            .arg("--config-dir")
            .arg(dir.path())
            .arg("--")
            .arg(workspace_bin(binary))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the launcher");
        // The launcher listens only once its plugin is initialized.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("launcher of {binary} exited: {status}");
            }
            assert!(Instant::now() < deadline, "{binary} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Backend {
            _process: KillOnDrop(child),
            addr,
            _config: dir,
        }
    }
}

fn published(name: &str, plugin_type: &str, addr: &str) -> (String, PublishedPlugin) {
    (
        name.to_string(),
        PublishedPlugin {
            name: name.into(),
            plugin_name: name.into(),
            plugin_type: plugin_type.into(),
            version: "0.1.0".into(),
            address: addr.into(),
            endpoints: vec![addr.into()],
            description: Some(format!("{name} for tests")),
            last_changed: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        },
    )
}

/// The three plugins of the tests: `echo` (llm), `embed` (embedder, 8 dimensions) and
/// `vectors` (database), each behind its launcher.
struct Plugins {
    backends: Vec<Backend>,
    file: EndpointsFile,
}

impl Plugins {
    fn start() -> Self {
        let echo = Backend::start("llm_provider", "echo-llm", &[("prefix", "remote: ")]);
        let embed = Backend::start("embedder_provider", "hash-embedder", &[("dimension", "8")]);
        let vectors = Backend::start("database_provider", "memory-db", &[]);
        let file = EndpointsFile {
            schema_version: SCHEMA_VERSION,
            namespace: "agents".into(),
            plugins: BTreeMap::from([
                published("echo", "llm_provider", &echo.addr),
                published("embed", "embedder_provider", &embed.addr),
                published("vectors", "database_provider", &vectors.addr),
            ]),
        };
        Plugins {
            backends: vec![echo, embed, vectors],
            file,
        }
    }
}

/// An agent Pod's file system in a temporary directory: the mounted ConfigMap at
/// `etc/hector/plugins` and the shared volume at `opt/hector`.
struct Agent {
    root: tempfile::TempDir,
}

impl Agent {
    fn new() -> Self {
        Agent {
            root: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The Pod's path `path` (absolute) in here.
    fn at(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    fn mount(&self) -> PathBuf {
        self.at("/etc/hector/plugins")
    }

    fn plugin_dir(&self) -> String {
        self.at("/opt/hector/plugins").display().to_string()
    }

    fn endpoints(&self) -> PathBuf {
        self.mount().join(ENDPOINTS_KEY)
    }

    fn plugins_yaml(&self) -> PathBuf {
        self.mount().join(PLUGINS_YAML_KEY)
    }

    /// Writes the ConfigMap's data as the operator renders it (kubelet's volume update).
    fn publish(&self, file: &EndpointsFile) {
        std::fs::create_dir_all(self.mount()).expect("mount dir");
        for (key, value) in publish::configmap_data(file, &self.plugin_dir()) {
            std::fs::write(self.mount().join(key), value).expect("write ConfigMap key");
        }
    }

    /// A recipe container's command with the Pod's paths mapped into this directory and the
    /// operator image's executable replaced by the workspace's.
    fn command(&self, argv: &[String]) -> Command {
        let map = |arg: &str| {
            if arg == "/usr/local/bin/hector-plugin-remote" {
                return workspace_bin("hector-plugin-remote").display().to_string();
            }
            let mut out = arg.to_string();
            for prefix in ["/opt/hector", "/etc/hector/plugins"] {
                if let Some(i) = out.find(prefix) {
                    out = format!(
                        "{}{}{}",
                        &out[..i],
                        self.at(prefix).display(),
                        &out[i + prefix.len()..]
                    );
                }
            }
            out
        };
        let mut c = Command::new(map(&argv[0]));
        c.args(argv[1..].iter().map(|a| map(a)));
        c
    }

    /// Runs the Go host in Hector mode with `args`: its JSON lines, stderr and exit code.
    fn host(&self, args: &[&str]) -> (Vec<Value>, String, Option<i32>) {
        let out = Command::new(go_loader())
            .args(args)
            .env("HECTOR_PLUGINS_ENDPOINTS", self.endpoints())
            // No agent token here: the loopback launchers check none.
            .env_remove("HECTOR_PLUGIN_TOKEN_FILE")
            .stdin(Stdio::null())
            .output()
            .expect("run the Go host");
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (
            lines,
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code(),
        )
    }
}

/// The agent recipe's containers: (name, command, whether it is a sidecar).
fn recipe_init_containers() -> Vec<(String, Vec<String>, bool)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/agent/agent.yaml"
    ))
    .expect("read examples/agent/agent.yaml");
    let deployment = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .find(|v: &Value| v["kind"] == "Deployment")
        .expect("a Deployment");
    deployment["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .map(|c| {
            let command = c["command"]
                .as_array()
                .expect("a command")
                .iter()
                .map(|a| a.as_str().expect("string").to_string())
                .collect();
            (
                c["name"].as_str().unwrap_or("").to_string(),
                command,
                c["restartPolicy"] == "Always",
            )
        })
        .collect()
}

/// Runs the recipe's init containers that run to completion, in order, as kubelet does.
fn run_recipe_init_containers(agent: &Agent) {
    for (name, command, sidecar) in recipe_init_containers() {
        if sidecar {
            continue;
        }
        let out = agent.command(&command).output().expect("run");
        assert!(
            out.status.success(),
            "init container {name} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The host's line for `op` of `plugin`.
fn line<'a>(lines: &'a [Value], plugin: &str, op: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["op"] == op && l["plugin"] == plugin)
        .unwrap_or_else(|| panic!("no {op} line of {plugin} in {lines:#?}"))
}

/// The calls made through every way of loading: each type's own.
const OPS: [&str; 10] = [
    "-op=echo/generate:hello hector",
    "-op=echo/stream:hello hector",
    "-op=echo/health",
    "-op=embed/embed:remote plugins",
    "-op=embed/info",
    "-op=vectors/health",
    "-op=vectors/search:docs:0.9,0.1,0:1",
    "-op=vectors/delete:docs:nope",
    "-op=vectors/search:missing:1,0,0:1",
    "-op=vectors/upsert:docs:bad:1",
];

/// Checks one Hector-mode session over the three plugins; `docs` must hold `east` =
/// (1,0,0) and `north` = (0,1,0) already.
fn assert_three_types(lines: &[Value], stderr: &str, code: Option<i32>, plugin_dir: &str) {
    assert_eq!(code, Some(0), "{lines:#?}\n{stderr}");
    for (name, kind) in [
        ("echo", "llm_provider"),
        ("embed", "embedder_provider"),
        ("vectors", "database_provider"),
    ] {
        let load = line(lines, name, "load");
        assert_eq!(load["ok"], true, "{load}");
        assert_eq!(load["type"], kind, "dispensed by its manifest's type");
        assert_eq!(load["path"], format!("{plugin_dir}/{name}"));
        assert_eq!(line(lines, name, "kill")["exited"], true);
    }
    assert_eq!(
        line(lines, "echo", "generate")["text"],
        "remote: hello hector"
    );
    let stream = line(lines, "echo", "stream");
    assert_eq!(stream["text"], "remote: hello hector");
    assert_eq!(stream["chunks"], 4, "three words and DONE: {stream}");
    assert_eq!(line(lines, "echo", "health")["healthy"], true);
    let embedded = line(lines, "embed", "embed");
    assert_eq!(
        embedded["vector"].as_array().map(Vec::len),
        Some(8),
        "{embedded}"
    );
    assert_eq!(line(lines, "embed", "info")["dimension"], 8);
    assert_eq!(line(lines, "vectors", "health")["healthy"], true);
    let found = lines
        .iter()
        .find(|l| l["plugin"] == "vectors" && l["op"] == "search" && l["ok"] == true)
        .unwrap_or_else(|| panic!("no search in {lines:#?}"));
    assert_eq!(found["results"][0]["id"], "east", "{found}");
    assert_eq!(found["results"][0]["metadata"]["content"], "alpha");
    assert_eq!(found["results"].as_array().map(Vec::len), Some(1), "top 1");
    // The database's own refusals come back in its responses.
    assert_eq!(line(lines, "vectors", "delete")["ok"], true, "idempotent");
    let missing = lines
        .iter()
        .find(|l| l["op"] == "search" && l["ok"] == false)
        .unwrap_or_else(|| panic!("no failed search in {lines:#?}"));
    assert_eq!(missing["error"], "collection \"missing\" does not exist");
    let bad = lines
        .iter()
        .find(|l| l["op"] == "upsert" && l["ok"] == false)
        .unwrap_or_else(|| panic!("no failed upsert in {lines:#?}"));
    assert_eq!(
        bad["error"], "collection \"docs\": vector has 1 dimensions, the collection 3",
        "{bad}"
    );
}

#[test]
fn the_published_fragment_and_discovery_load_three_plugin_types_as_hector_does() -> TestResult {
    let plugins = Plugins::start();
    let agent = Agent::new();
    agent.publish(&plugins.file);
    run_recipe_init_containers(&agent);
    let dir = agent.plugin_dir();

    // The fragment is Hector's configuration as published: one path per plugin, each with
    // its manifest of the right name and type next to it.
    let fragment = std::fs::read_to_string(agent.plugins_yaml())?;
    let parsed: Value = serde_norway::from_str(&fragment)?;
    for (section, name, kind) in [
        ("llm_providers", "echo", "llm_provider"),
        ("embedder_providers", "embed", "embedder_provider"),
        ("database_providers", "vectors", "database_provider"),
    ] {
        let entry = &parsed["plugins"][section][name];
        assert_eq!(entry["name"], name, "{fragment}");
        let path = entry["path"].as_str().ok_or("path")?;
        assert_eq!(path, format!("{dir}/{name}"));
        let manifest: Value =
            serde_norway::from_str(&std::fs::read_to_string(format!("{path}.plugin.yaml"))?)?;
        assert_eq!(manifest["plugin"]["name"], name);
        assert_eq!(manifest["plugin"]["type"], kind);
        assert_eq!(manifest["plugin"]["protocol"], "grpc");
    }

    // Through the fragment: the collection is filled here...
    let config = agent.plugins_yaml().display().to_string();
    let mut args = vec![
        "-hector-config",
        config.as_str(),
        "-op=vectors/create:docs:3",
        "-op=vectors/upsert:docs:east:1,0,0:content=alpha",
        "-op=vectors/upsert:docs:north:0,1,0:content=beta",
    ];
    args.extend(OPS);
    let (lines, stderr, code) = agent.host(&args);
    assert_three_types(&lines, &stderr, code, &dir);
    assert_eq!(line(&lines, "vectors", "create")["ok"], true);

    // ...and found through discovery: both ways reach the same remote plugins.
    let mut args = vec!["-discover", dir.as_str()];
    args.extend(OPS);
    let (lines, stderr, code) = agent.host(&args);
    assert_three_types(&lines, &stderr, code, &dir);
    drop(plugins.backends);
    Ok(())
}

#[test]
fn one_shared_executable_does_not_load_in_hector() -> TestResult {
    let plugins = Plugins::start();
    let agent = Agent::new();
    agent.publish(&plugins.file);
    run_recipe_init_containers(&agent);
    // What the operator used to publish: every plugin at the one shared executable.
    let shared = agent.at("/opt/hector/bin/hector-plugin-remote");
    let shared = shared.display();
    let mut old = String::from("plugins:\n");
    for (section, name) in [
        ("llm_providers", "echo"),
        ("embedder_providers", "embed"),
        ("database_providers", "vectors"),
    ] {
        let addr = &plugins.file.plugins[name].address;
        old.push_str(&format!(
            "  {section}:\n    {name}:\n      name: {name}\n      type: grpc\n      path: {shared}\n      enabled: true\n      config:\n        remote_address: \"{addr}\"\n"
        ));
    }
    let old_fragment = agent.at("old-plugins.yaml");
    std::fs::write(&old_fragment, &old)?;
    let config = old_fragment.display().to_string();
    let (lines, stderr, code) = agent.host(&["-hector-config", &config, "-op=echo/health"]);
    assert_eq!(
        code,
        Some(4),
        "a plugin failed to load: {lines:#?}\n{stderr}"
    );
    for name in ["echo", "embed", "vectors"] {
        assert_eq!(
            line(&lines, name, "load")["error"],
            format!(
                "failed to load manifest from {shared}.plugin.yaml: failed to read manifest file: \
                 open {shared}.plugin.yaml: no such file or directory"
            )
        );
    }
    assert_eq!(
        line(&lines, "echo", "health")["error"],
        "plugin not loaded: echo"
    );
    assert!(
        !lines.iter().any(|l| l["op"] == "kill"),
        "nothing was started: {lines:#?}"
    );

    // A manifest beside the shared executable gives it one type: the other entries are
    // dispensed as that type, and their plugins do not serve it.
    std::fs::write(
        format!("{shared}.plugin.yaml"),
        "plugin: {name: remote, version: 0.1.0, type: llm_provider, protocol: grpc}\n",
    )?;
    let (lines, stderr, code) = agent.host(&["-hector-config", &config]);
    assert_eq!(code, Some(4), "{lines:#?}\n{stderr}");
    assert_eq!(line(&lines, "echo", "load")["ok"], true, "{lines:#?}");
    for name in ["embed", "vectors"] {
        let error = line(&lines, name, "load")["error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            error.starts_with(&format!(
                "[Plugin:{name}] LoadPlugin failed: initialization failed: cannot reach remote plugin at {}",
                plugins.file.plugins[name].address
            )) && error.contains("does not serve this plugin type"),
            "{error}"
        );
    }

    // A path whose manifest has another type than the entry's section: dispensed by the
    // manifest (go-plugin does not check), then refused by the section.
    let wrong = agent.at("wrong-type.yaml");
    std::fs::write(
        &wrong,
        format!(
            "plugins:\n  embedder_providers:\n    echo:\n      name: echo\n      path: {}/echo\n",
            agent.plugin_dir()
        ),
    )?;
    let (lines, stderr, code) = agent.host(&["-hector-config", &wrong.display().to_string()]);
    assert_eq!(code, Some(4), "{lines:#?}\n{stderr}");
    assert_eq!(
        line(&lines, "echo", "load")["error"],
        "plugin is not an Embedder provider"
    );

    // An entry without `name:` keeps Hector from starting at all.
    let nameless = agent.at("nameless.yaml");
    std::fs::write(
        &nameless,
        format!(
            "plugins:\n  llm_providers:\n    echo:\n      type: grpc\n      path: {}/echo\n",
            agent.plugin_dir()
        ),
    )?;
    let (lines, _, code) = agent.host(&["-hector-config", &nameless.display().to_string()]);
    assert_eq!(code, Some(5));
    assert_eq!(
        lines[0]["error"],
        "plugins validation failed: LLM provider plugin 'echo' validation failed: plugin name is required"
    );
    assert_eq!(lines.len(), 1, "nothing loaded: {lines:#?}");
    Ok(())
}

/// Waits, at most `timeout`, for a line of `reader` containing `text`; returns the lines read.
fn read_until(reader: &mut impl BufRead, text: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} in:\n{seen}");
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => panic!("output ended without {text:?}:\n{seen}"),
            Ok(_) => seen.push_str(&line),
            Err(e) => panic!("reading output: {e}"),
        }
    }
    seen
}

#[test]
fn the_recipes_sidecar_installs_a_plugin_published_later_and_stops_on_sigterm() -> TestResult {
    let plugins = Plugins::start();
    let agent = Agent::new();
    // First only the LLM is published.
    let mut first = plugins.file.clone();
    first.plugins.retain(|name, _| name == "echo");
    agent.publish(&first);
    run_recipe_init_containers(&agent);
    let (_, sidecar, _) = recipe_init_containers()
        .into_iter()
        .find(|(_, _, sidecar)| *sidecar)
        .ok_or("the recipe has no sidecar")?;
    let mut command = agent.command(&sidecar);
    // The recipe's interval is for a Pod; a test need not wait for it.
    command.arg("--interval=0.1");
    let mut watcher: Child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = watcher.stdout.take().ok_or("stdout")?;
    let mut out = BufReader::new(stdout);
    let dir = agent.plugin_dir();
    // The init container wrote echo already: nothing to do but say so.
    read_until(
        &mut out,
        &format!("up to date {dir}/echo"),
        Duration::from_secs(10),
    );

    // The other two are published (the ConfigMap volume is updated).
    agent.publish(&plugins.file);
    let seen = read_until(
        &mut out,
        &format!("installed {dir}/vectors"),
        Duration::from_secs(10),
    );
    assert!(seen.contains(&format!("installed {dir}/embed")), "{seen}");
    let config = agent.plugins_yaml().display().to_string();
    let (lines, stderr, code) = agent.host(&[
        "-hector-config",
        &config,
        "-op=vectors/create:late:2",
        "-op=embed/info",
    ]);
    assert_eq!(code, Some(0), "{lines:#?}\n{stderr}");
    assert_eq!(line(&lines, "vectors", "create")["ok"], true);
    assert_eq!(line(&lines, "embed", "info")["dimension"], 8);

    // Unpublished again: its copy goes.
    agent.publish(&first);
    read_until(
        &mut out,
        &format!("removed {dir}/vectors"),
        Duration::from_secs(10),
    );
    assert!(!Path::new(&format!("{dir}/vectors.plugin.yaml")).exists());

    // kubelet stops a sidecar with SIGTERM: it exits 0.
    let sent = Command::new("kill")
        .args(["-TERM", &watcher.id().to_string()])
        .status()?;
    assert!(sent.success());
    let status = watcher.wait()?;
    assert_eq!(status.code(), Some(0), "{status}");
    Ok(())
}

#[test]
fn the_go_hosts_own_unit_tests_pass() {
    // Building the host generates the Go code of the protos the package uses.
    go_loader();
    let out = Command::new("go")
        .args(["test", "-count=1", "./hectorhost/"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/plugins/go-llm"))
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .output()
        .expect("run go test (is Go installed?)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
