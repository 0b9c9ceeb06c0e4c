//! End-to-end tests: `hector-plugin-remote` loaded exactly as Hector's loader loads a plugin
//! (a Go host built on HashiCorp go-plugin, `tests/plugins/go-llm/cmd/loader`), reaching real
//! plugins behind real `hector-plugin-launcher` processes on loopback.
//!
//! The sibling binaries (launcher, example plugins, hectorctl) must be built first
//! (`cargo build --workspace --bins`); the Go loader is built here with `go`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use hector_plugin_sdk::endpoints::{EndpointsFile, PublishedPlugin, SCHEMA_VERSION};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn remote_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hector-plugin-remote"))
}

/// A binary of another workspace package, built next to this one.
fn sibling_bin(name: &str) -> PathBuf {
    let path = remote_bin().with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Builds a command of the Go test module once per test run.
fn go_build(package: &str, cell: &'static OnceLock<PathBuf>, name: &str) -> PathBuf {
    cell.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let status = Command::new(repo_root().join("tests/plugins/go-llm/build.sh"))
            .arg(&out)
            .arg(package)
            .status()
            .expect("run tests/plugins/go-llm/build.sh (is Go installed?)");
        assert!(status.success(), "building {package} failed: {status}");
        out
    })
    .clone()
}

/// The Go host that loads plugins the way Hector's loader does.
fn loader() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    go_build("./cmd/loader", &BIN, "hector-go-loader")
}

/// The go-plugin test plugin (Hector's Go SDK style).
fn go_llm() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    go_build(".", &BIN, "hector-go-llm-remote")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A remote plugin: a launcher serving one plugin on a loopback port.
struct Backend {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
    args: (String, String, Vec<(String, String)>, PathBuf),
}

impl Backend {
    fn echo(prefix: &str) -> Self {
        Self::start(
            "llm_provider",
            "network",
            &[("prefix", prefix)],
            &sibling_bin("echo-llm"),
            free_port(),
        )
    }

    fn start(
        plugin_type: &str,
        launch: &str,
        config: &[(&str, &str)],
        plugin: &Path,
        port: u16,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for (k, v) in config {
            std::fs::write(dir.path().join(k), v).expect("config file");
        }
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(sibling_bin("hector-plugin-launcher"))
            .args(["--listen", &addr, "--type", plugin_type, "--launch", launch])
            .args(["--health-interval", "0.5", "--start-timeout", "30"])
            .arg("--config-dir")
            .arg(dir.path())
            .arg("--")
            .arg(plugin)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start launcher");
        let config = config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut b = Backend {
            child,
            addr,
            _dir: dir,
            args: (
                plugin_type.to_string(),
                launch.to_string(),
                config,
                plugin.to_path_buf(),
            ),
        };
        b.wait_ready();
        b
    }

    /// The launcher listens only once its plugin is initialized.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("launcher for {} exited: {status}", self.addr);
            }
            assert!(Instant::now() < deadline, "{} never listened", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the launcher (and so its plugin) and waits until it is gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same plugin again on the same port.
    fn restart(&mut self) {
        self.kill();
        let (t, launch, config, plugin) = self.args.clone();
        let config: Vec<(&str, &str)> = config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let port = self
            .addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        *self = Backend::start(&t, &launch, &config, &plugin, port);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the loader once with `args` before the plugin path; returns its JSON lines and stderr.
fn load(plugin: &Path, args: &[&str], env: &[(&str, &str)]) -> (Vec<Value>, String) {
    let out: Output = Command::new(loader())
        .args(args)
        .arg(plugin)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the loader");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The loader's line for `op` (the first one).
fn line<'a>(lines: &'a [Value], op: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["op"] == op)
        .unwrap_or_else(|| panic!("no {op} line in {lines:?}"))
}

fn text(v: &Value) -> &str {
    v["text"].as_str().unwrap_or("")
}

/// The loader kept running, fed ops one by one on stdin.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
}

impl Session {
    fn start(plugin: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(loader())
            .args(["-stdin", "-config", config])
            .arg(plugin)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the loader");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let s = Session {
            child,
            stdin,
            lines,
        };
        let init = s.next();
        assert_eq!(init["ok"], true, "Initialize: {init}");
        s
    }

    fn send(&mut self, op: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{op}").expect("write an op");
    }

    fn next(&self) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(20)) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => panic!("the loader answered nothing in 20s"),
            Err(RecvTimeoutError::Disconnected) => panic!("the loader exited"),
        }
    }

    /// Sends one op and returns its answer.
    fn call(&mut self, op: &str) -> Value {
        self.send(op);
        self.next()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which backend answered: the prefix before the first `:` of the answer.
fn served_by(v: &Value) -> String {
    text(v).split(':').next().unwrap_or("").to_string()
}

fn published(name: &str, plugin_type: &str, endpoints: &[&str]) -> PublishedPlugin {
    PublishedPlugin {
        name: name.into(),
        plugin_name: name.into(),
        plugin_type: plugin_type.into(),
        version: "0.1.0".into(),
        address: endpoints.first().copied().unwrap_or("").into(),
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        capabilities: [("streaming".to_string(), true)].into(),
        description: Some(format!("{name} for tests")),
        last_changed: "2026-01-01T00:00:00Z".into(),
        ..Default::default()
    }
}

fn endpoints_file(plugins: &[PublishedPlugin]) -> String {
    EndpointsFile {
        schema_version: SCHEMA_VERSION,
        namespace: "agents".into(),
        plugins: plugins
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
    .render()
}

#[test]
fn hashicorp_host_calls_an_llm_through_remote_address_and_kills_it_cleanly() -> TestResult {
    let backend = Backend::echo("remote says: ");
    let config = format!(r#"{{"remote_address":"{}"}}"#, backend.addr);
    let (lines, stderr) = load(
        &remote_bin(),
        &[
            "-config",
            &config,
            "-op",
            "generate:hello remote world",
            "-op",
            "stream:hello remote world",
            "-op",
            "health",
            "-op",
            "info",
        ],
        &[],
    );
    assert_eq!(
        line(&lines, "initialize")["ok"],
        true,
        "{lines:?}\n{stderr}"
    );
    let generate = line(&lines, "generate");
    assert_eq!(text(generate), "remote says: hello remote world");
    assert_eq!(generate["tokens"], 3);
    let stream = line(&lines, "stream");
    assert_eq!(text(stream), text(generate), "chunks add up to the answer");
    assert_eq!(stream["chunks"], 6, "five words and DONE: {stream}");
    let health = line(&lines, "health");
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(
        line(&lines, "info")["text"],
        "echo-1",
        "GetModelInfo is forwarded"
    );

    // go-plugin's Kill: the controller asks the process to exit, and it does in time.
    let kill = line(&lines, "kill");
    assert_eq!(kill["exited"], true, "{kill}");
    for bad in ["[WARN]", "[ERROR]", "failed to exit gracefully"] {
        assert!(!stderr.contains(bad), "host reported {bad}:\n{stderr}");
    }
    assert!(
        stderr.contains("go-plugin host asked the plugin to exit"),
        "{stderr}"
    );
    assert!(
        stderr.contains("plugin process exited"),
        "the host saw the process end: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn hashicorp_host_embeds_through_remote_address() -> TestResult {
    let backend = Backend::start(
        "embedder_provider",
        "network",
        &[("dimension", "16")],
        &sibling_bin("hash-embedder"),
        free_port(),
    );
    let config = format!(r#"{{"remote_address":"{}"}}"#, backend.addr);
    let (lines, stderr) = load(
        &remote_bin(),
        &[
            "-type",
            "embedder_provider",
            "-config",
            &config,
            "-op",
            "embed:the quick brown fox",
            "-op",
            "health",
        ],
        &[],
    );
    let embed = line(&lines, "embed");
    assert_eq!(embed["ok"], true, "{lines:?}\n{stderr}");
    let vector: Vec<f64> = embed["vector"]
        .as_array()
        .ok_or("vector")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(vector.len(), 16);
    // The same text embedded directly gives the same vector: the call went to that plugin.
    let channel = hector_plugin_sdk::connect(&backend.addr, Duration::from_secs(5)).await?;
    let direct =
        hector_plugin_sdk::proto::embedder_provider_client::EmbedderProviderClient::new(channel)
            .embed(hector_plugin_sdk::proto::EmbedRequest {
                text: "the quick brown fox".into(),
            })
            .await?
            .into_inner();
    let direct: Vec<f64> = direct.vector.iter().map(|x| f64::from(*x)).collect();
    assert_eq!(vector, direct);
    assert_eq!(line(&lines, "health")["healthy"], true);
    Ok(())
}

#[test]
fn unreachable_address_fails_initialize_naming_address_and_reason() -> TestResult {
    let port = free_port();
    let config = format!(r#"{{"remote_address":"127.0.0.1:{port}"}}"#);
    let (lines, stderr) = load(&remote_bin(), &["-config", &config, "-op", "health"], &[]);
    let init = line(&lines, "initialize");
    assert_eq!(init["ok"], false, "{init}");
    assert_eq!(
        init["error"],
        format!("cannot reach remote plugin at 127.0.0.1:{port}: connection refused")
    );
    assert_eq!(line(&lines, "kill")["exited"], true, "{stderr}");

    let (lines, _) = load(
        &remote_bin(),
        &["-config", r#"{"remote_address":"no-port-here"}"#],
        &[],
    );
    let error = line(&lines, "initialize")["error"].as_str().unwrap_or("");
    assert!(
        error.contains("no-port-here") && error.contains("host:port"),
        "{error}"
    );
    Ok(())
}

#[test]
fn calls_are_balanced_per_call_over_three_backends() -> TestResult {
    let backends = [
        Backend::echo("b0: "),
        Backend::echo("b1: "),
        Backend::echo("b2: "),
    ];
    let list: Vec<&str> = backends.iter().map(|b| b.addr.as_str()).collect();
    let config = format!(r#"{{"remote_address":"{}"}}"#, list.join(","));
    let mut args = vec!["-config".to_string(), config];
    for i in 0..300 {
        args.push("-op".into());
        args.push(format!("generate:call {i}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (lines, stderr) = load(&remote_bin(), &args, &[]);
    let calls: Vec<&Value> = lines.iter().filter(|l| l["op"] == "generate").collect();
    assert_eq!(calls.len(), 300, "{stderr}");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for c in &calls {
        assert_eq!(c["ok"], true, "{c}");
        *counts.entry(served_by(c)).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (backend, n) in &counts {
        // 33 % ± 10 % of 300 calls, although the host uses one connection.
        assert!((70..=130).contains(n), "{backend} served {n}: {counts:?}");
    }
    Ok(())
}

#[test]
fn killing_a_backend_fails_no_call_that_never_reached_it() -> TestResult {
    let mut backends = [
        Backend::echo("b0: "),
        Backend::echo("b1: "),
        Backend::echo("b2: "),
    ];
    let list: Vec<&str> = backends.iter().map(|b| b.addr.as_str()).collect();
    let config = format!(r#"{{"remote_address":"{}"}}"#, list.join(","));
    let mut s = Session::start(&remote_bin(), &config, &[]);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..30 {
        let v = s.call(&format!("generate:before {i}"));
        *counts.entry(served_by(&v)).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "all three serve: {counts:?}");

    // b0 dies between two calls, so no call can have reached it: every call after that finds
    // its connection closed or refused and must be retried elsewhere, none may fail.
    backends[0].kill();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..60 {
        let v = s.call(&format!("generate:after {i}"));
        assert_eq!(
            v["ok"], true,
            "call {i} failed although b0 never got it: {v}"
        );
        *counts.entry(served_by(&v)).or_default() += 1;
    }
    assert_eq!(counts.get("b0"), None, "{counts:?}");
    assert!(
        counts.values().all(|n| *n >= 20),
        "the others share: {counts:?}"
    );

    // b1 dies while calls stream in: only a call in flight on b1 at that moment (at most one,
    // calls are sequential) may fail, and only as UNAVAILABLE.
    for i in 0..200 {
        s.send(&format!("generate:during {i}"));
    }
    let mut failures = Vec::new();
    for i in 0..200 {
        if i == 50 {
            backends[1].kill();
        }
        let v = s.next();
        if v["ok"] != true {
            failures.push(v);
        } else {
            assert_ne!(served_by(&v), "b0", "{v}");
        }
    }
    assert!(failures.len() <= 1, "{failures:?}");
    for f in &failures {
        assert_eq!(f["code"], "Unavailable", "{f}");
    }
    let health = s.call("health");
    assert_eq!(health["healthy"], true, "one endpoint is enough: {health}");

    // Both come back on their ports: the remote puts them back by itself.
    backends[0].restart();
    backends[1].restart();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 3 {
        let v = s.call("generate:back?");
        assert_eq!(v["ok"], true, "{v}");
        *seen.entry(served_by(&v)).or_default() += 1;
        assert!(Instant::now() < deadline, "not all serve again: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn a_call_that_reached_a_dying_backend_fails_unavailable_and_is_not_repeated() -> TestResult {
    let mut backends = [
        Backend::start(
            "llm_provider",
            "go-plugin",
            &[("prefix", "g0: ")],
            &go_llm(),
            free_port(),
        ),
        Backend::start(
            "llm_provider",
            "go-plugin",
            &[("prefix", "g1: ")],
            &go_llm(),
            free_port(),
        ),
    ];
    let list: Vec<&str> = backends.iter().map(|b| b.addr.as_str()).collect();
    let config = format!(r#"{{"remote_address":"{}"}}"#, list.join(","));
    let mut s = Session::start(&remote_bin(), &config, &[]);
    // Round robin: the call after one served by X goes to the other backend, Y.
    let first = served_by(&s.call("generate:who"));
    let victim = usize::from(first == "g0");
    s.send("generate:sleep:2000");
    std::thread::sleep(Duration::from_millis(500));
    backends[victim].kill();
    let v = s.next();
    // Sending it to the other backend could run it twice; the host gets the outage instead.
    assert_eq!(v["ok"], false, "the call was repeated elsewhere: {v}");
    assert_eq!(v["code"], "Unavailable", "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains(&backends[victim].addr)),
        "{v}"
    );
    // The survivor serves the next calls.
    for _ in 0..4 {
        assert_eq!(served_by(&s.call("generate:next")), first);
    }
    Ok(())
}

/// A ConfigMap volume's layout: the file is a link through `..data`, which kubelet swaps.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    version: usize,
}

impl ConfigMapDir {
    fn new(content: &str) -> std::io::Result<Self> {
        let mut d = Self {
            dir: tempfile::tempdir()?,
            version: 0,
        };
        d.update(content)?;
        std::os::unix::fs::symlink("..data/endpoints.json", d.file())?;
        Ok(d)
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("endpoints.json")
    }

    /// Publishes `content` the way kubelet does: a new directory, then `..data` swapped.
    fn update(&mut self, content: &str) -> std::io::Result<()> {
        self.version += 1;
        let name = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.path().join(&name))?;
        std::fs::write(self.dir.path().join(&name).join("endpoints.json"), content)?;
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp)?;
        std::fs::rename(&tmp, self.dir.path().join("..data"))
    }
}

#[test]
fn endpoints_file_changes_are_followed_within_two_seconds() -> TestResult {
    let a = Backend::echo("a: ");
    let b = Backend::echo("b: ");
    let mut cm = ConfigMapDir::new(&endpoints_file(&[published(
        "echo",
        "llm_provider",
        &[&a.addr],
    )]))?;
    // A copy named after the published plugin finds it by name.
    let bin = tempfile::tempdir()?;
    let echo = bin.path().join("echo");
    std::fs::copy(remote_bin(), &echo)?;
    let file = cm.file();
    let file = file.to_str().ok_or("path")?;
    let mut s = Session::start(&echo, "{}", &[("HECTOR_PLUGINS_ENDPOINTS", file)]);
    for _ in 0..5 {
        assert_eq!(served_by(&s.call("generate:x")), "a");
    }

    // Replaced: a out, b in.
    cm.update(&endpoints_file(&[published(
        "echo",
        "llm_provider",
        &[&b.addr],
    )]))?;
    let changed = Instant::now();
    while served_by(&s.call("generate:x")) != "b" {
        assert!(changed.elapsed() < Duration::from_secs(3), "b never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = changed.elapsed();
    assert!(
        took <= Duration::from_millis(2500),
        "followed after {took:?}"
    );
    for _ in 0..10 {
        assert_eq!(served_by(&s.call("generate:x")), "b", "a was removed");
    }

    // Added: both serve.
    cm.update(&endpoints_file(&[published(
        "echo",
        "llm_provider",
        &[&a.addr, &b.addr],
    )]))?;
    let changed = Instant::now();
    while served_by(&s.call("generate:x")) != "a" {
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "a never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Unpublished: calls fail as UNAVAILABLE, and Health says so.
    cm.update(&endpoints_file(&[]))?;
    let changed = Instant::now();
    loop {
        let v = s.call("generate:x");
        if v["ok"] == false {
            assert_eq!(v["code"], "Unavailable", "{v}");
            break;
        }
        assert!(changed.elapsed() < Duration::from_secs(3), "still served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = s.call("health");
    assert_ne!(health["healthy"], true, "{health}");
    assert!(
        health["message"]
            .as_str()
            .is_some_and(|m| m.contains("no endpoint")),
        "{health}"
    );
    Ok(())
}

#[test]
fn install_lays_out_plugins_that_discovery_and_the_host_accept() -> TestResult {
    let echo = Backend::echo("by name: ");
    let vec = Backend::start(
        "embedder_provider",
        "network",
        &[("dimension", "8")],
        &sibling_bin("hash-embedder"),
        free_port(),
    );
    let work = tempfile::tempdir()?;
    let file = work.path().join("endpoints.json");
    std::fs::write(
        &file,
        endpoints_file(&[
            published("echo", "llm_provider", &[&echo.addr]),
            published("vec", "embedder_provider", &[&vec.addr]),
        ]),
    )?;
    let dir = work.path().join("plugins");
    std::fs::create_dir(&dir)?;
    // Someone else's plugin in the same directory.
    std::fs::write(dir.join("mine"), "#!/bin/sh\n")?;
    std::fs::write(dir.join("mine.plugin.yaml"), "plugin: {}\n")?;

    let install = |expect: bool| -> Result<String, Box<dyn std::error::Error>> {
        let out = Command::new(remote_bin())
            .args(["install", "--into"])
            .arg(&dir)
            .arg("--endpoints")
            .arg(&file)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.success(),
            expect,
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    };
    let printed = install(true)?;
    assert!(
        printed.contains("installed") && printed.contains("vec"),
        "{printed}"
    );
    for f in ["echo", "echo.plugin.yaml", "vec", "vec.plugin.yaml"] {
        assert!(dir.join(f).is_file(), "{f} written");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("echo"))?.permissions(),
    );
    assert!(mode & 0o111 != 0, "executable: {mode:o}");

    // The project's own discovery accepts both manifests.
    let out = Command::new(sibling_bin("hectorctl"))
        .arg("discover")
        .arg(&dir)
        .output()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    for (name, kind) in [("echo", "llm_provider"), ("vec", "embedder_provider")] {
        assert!(
            listing
                .lines()
                .any(|l| l.contains(&format!("{name}.plugin.yaml"))
                    && l.contains(kind)
                    && l.trim_end().ends_with(" ok")),
            "{name} not listed as valid:\n{listing}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The host loads the installed copies by path and each finds its own plugin by name.
    let env = [("HECTOR_PLUGINS_ENDPOINTS", file.to_str().ok_or("path")?)];
    let (lines, stderr) = load(&dir.join("echo"), &["-op", "generate:found me"], &env);
    assert_eq!(
        text(line(&lines, "generate")),
        "by name: found me",
        "{stderr}"
    );
    let (lines, _) = load(
        &dir.join("vec"),
        &["-type", "embedder_provider", "-op", "embed:found me"],
        &env,
    );
    let embed = line(&lines, "embed");
    assert_eq!(embed["vector"].as_array().map(Vec::len), Some(8), "{embed}");
    // Loaded as the wrong type, Initialize says what was published.
    let (lines, _) = load(&dir.join("vec"), &[], &env);
    let error = line(&lines, "initialize")["error"].as_str().unwrap_or("");
    assert!(error.contains("embedder_provider"), "{error}");

    // Unpublished plugins disappear on the next run; other files stay.
    std::fs::write(
        &file,
        endpoints_file(&[published("echo", "llm_provider", &[&echo.addr])]),
    )?;
    let printed = install(true)?;
    assert!(printed.contains("removed"), "{printed}");
    assert!(!dir.join("vec").exists() && !dir.join("vec.plugin.yaml").exists());
    for f in ["echo", "echo.plugin.yaml", "mine", "mine.plugin.yaml"] {
        assert!(dir.join(f).exists(), "{f} kept");
    }
    let marker = std::fs::read_to_string(dir.join(".hector-plugin-remote"))?;
    let listed: Vec<&str> = marker
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert_eq!(listed, ["echo"]);

    // A plugin named like someone else's file is not installed over it.
    std::fs::write(
        &file,
        endpoints_file(&[
            published("echo", "llm_provider", &[&echo.addr]),
            published("mine", "llm_provider", &[&echo.addr]),
        ]),
    )?;
    install(true)?;
    assert_eq!(std::fs::read_to_string(dir.join("mine"))?, "#!/bin/sh\n");
    Ok(())
}

#[test]
fn metadata_deadlines_and_statuses_pass_through_to_a_go_plugin() -> TestResult {
    // An unmodified go-plugin plugin behind the launcher, reached through the remote.
    let backend = Backend::start(
        "llm_provider",
        "go-plugin",
        &[("prefix", "go: ")],
        &go_llm(),
        free_port(),
    );
    let config = format!(r#"{{"remote_address":"{}"}}"#, backend.addr);
    let (lines, stderr) = load(
        &remote_bin(),
        &[
            "-config",
            &config,
            "-timeout",
            "5s",
            "-meta",
            "x-echo=ping",
            "-op",
            "generate:hi",
            "-op",
            "generate:deadline?",
        ],
        &[],
    );
    let hi = line(&lines, "generate");
    assert_eq!(text(hi), "go: hi", "{lines:?}\n{stderr}");
    assert_eq!(hi["header"], "ping", "response metadata comes back");
    let left: i64 = lines
        .iter()
        .filter_map(|l| text(l).strip_prefix("deadline:"))
        .next()
        .ok_or("no deadline answer")?
        .parse()?;
    assert!(
        (1000..=5000).contains(&left),
        "the plugin saw {left}ms left"
    );

    // A call that outlives its deadline ends with the plugin's DEADLINE_EXCEEDED.
    let (lines, _) = load(
        &remote_bin(),
        &[
            "-config",
            &config,
            "-timeout",
            "500ms",
            "-op",
            "generate:sleep:3000",
        ],
        &[],
    );
    let late = line(&lines, "generate");
    assert_eq!(late["code"], "DeadlineExceeded", "{late}");

    // Loaded as another plugin type, Initialize fails: the remote serves no such service.
    let (lines, _) = load(
        &remote_bin(),
        &["-type", "embedder_provider", "-config", &config],
        &[],
    );
    let error = line(&lines, "initialize")["error"].as_str().unwrap_or("");
    assert!(
        error.contains(&backend.addr) && error.contains("Unimplemented"),
        "{error}"
    );
    Ok(())
}

#[test]
fn started_by_hand_it_explains_itself() -> TestResult {
    let out = Command::new(remote_bin())
        .env_remove("HECTOR_PLUGIN")
        .output()?;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no handshake line");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Hector") && err.contains("remote_address"),
        "{err}"
    );

    let out = Command::new(remote_bin())
        .env("HECTOR_PLUGIN", "someone_else")
        .output()?;
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hector_plugin_v1"));

    let out = Command::new(remote_bin()).arg("--help").output()?;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("install") && help.contains("remote_address"),
        "{help}"
    );
    Ok(())
}

#[test]
fn install_binary_copies_a_working_executable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("bin");
    let out = Command::new(remote_bin())
        .arg("install-binary")
        .arg(&target)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = target.join("hector-plugin-remote");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("installed {}", copy.display())
    );
    let version = Command::new(&copy).arg("--version").output()?;
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("hector-plugin-remote "),
        "the copy runs"
    );
    // A file where the directory should be: exit code 2 and the path in the message.
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, "x")?;
    let out = Command::new(remote_bin())
        .arg("install-binary")
        .arg(&blocked)
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&blocked.display().to_string()));
    Ok(())
}
