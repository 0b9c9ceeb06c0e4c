//! `hectorctl` as a user runs it: its name, flags, completion, exit statuses and output, against
//! plugins of every type served by the test itself on loopback. The tests that need a live
//! cluster (`--kubeconfig`, `--context` against a real API server) are behind the `e2e` feature.

use std::process::Command;

fn hectorctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hectorctl"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run hectorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_reports_every_error_with_file_and_path() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.plugin.yaml");
    std::fs::write(
        &bad,
        "plugin:\n  name: Bad_Name\n  version: \"1\"\n  type: llm\n  protocol: grpc\n  hector_version: \">=0.1.0\"\n  extra: 1\n",
    )?;
    let bad = bad.to_str().ok_or("path")?;
    let (code, stdout, stderr) = hectorctl(&[
        "manifest",
        "validate",
        "examples/manifests/echo-llm.plugin.yaml",
        bad,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stdout
            .contains("examples/manifests/echo-llm.plugin.yaml: ok (echo-llm 0.1.0 llm_provider)"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("{bad}:error: plugin.version:")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{bad}:error: plugin.type:")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{bad}:warning: plugin.extra: unknown field")),
        "{stderr}"
    );
    assert!(stderr.contains("will be named \"bad-name\""), "{stderr}");

    let (code, _, _) = hectorctl(&[
        "manifest",
        "validate",
        "examples/manifests/echo-llm.plugin.yaml",
        "examples/manifests/hash-embedder.plugin.yaml",
        "examples/manifests/memory-db.plugin.yaml",
    ]);
    assert_eq!(code, 0);
    Ok(())
}

#[test]
fn convert_prints_a_hector_plugin() -> Result<(), Box<dyn std::error::Error>> {
    let (code, stdout, stderr) = hectorctl(&[
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
        "agents",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let r: hector_operator::crd::HectorPlugin = serde_norway::from_str(&stdout)?;
    assert_eq!(r.metadata.name.as_deref(), Some("echo-llm"));
    assert_eq!(r.metadata.namespace.as_deref(), Some("agents"));
    assert_eq!(r.spec.command, ["/plugin/echo-llm"]);
    assert_eq!(r.spec.config["prefix"], serde_json::json!(">> "));
    assert_eq!(r.spec.secret_config[0].secret_key_ref.name, "llm");
    assert_eq!(r.spec.manifest.config_schema.defaults["max_tokens"], "2048");

    let (code, _, stderr) = hectorctl(&[
        "manifest",
        "convert",
        "examples/manifests/echo-llm.plugin.yaml",
    ]);
    assert_eq!(code, 2, "needs --image or --endpoint: {stderr}");
    let (code, _, stderr) = hectorctl(&[
        "manifest",
        "convert",
        "examples/manifests/echo-llm.plugin.yaml",
        "--image",
        "x",
        "--secret",
        "nokey",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("KEY=SECRET/KEY"), "{stderr}");
    Ok(())
}

#[test]
fn discover_lists_and_emits() -> Result<(), Box<dyn std::error::Error>> {
    let (code, stdout, stderr) = hectorctl(&["discover", "examples", "--recursive"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("echo-llm")
            && stdout.contains("hash-embedder")
            && stdout.contains("memory-db"),
        "{stdout}"
    );
    assert!(
        stderr.contains("3 manifest(s) found, 0 invalid"),
        "{stderr}"
    );
    let (code, stdout, _) = hectorctl(&["discover", "examples"]);
    assert_eq!(code, 0);
    assert!(!stdout.contains("echo-llm"), "not recursive: {stdout}");

    let (code, stdout, stderr) = hectorctl(&[
        "discover",
        "examples/manifests",
        "--emit",
        "--image-template",
        "registry.example/{name}:{version}",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let docs: Vec<&str> = stdout.split("---\n").collect();
    assert_eq!(docs.len(), 3);
    let r: hector_operator::crd::HectorPlugin = serde_norway::from_str(docs[0])?;
    assert_eq!(
        r.spec.image.as_deref(),
        Some("registry.example/echo-llm:0.1.0")
    );
    Ok(())
}

/// An endpoints file publishing `echo` (an llm_provider) at `endpoints`.
fn endpoints_file(
    dir: &std::path::Path,
    endpoints: &[String],
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    use hector_plugin_sdk::endpoints::{EndpointsFile, PublishedPlugin, SCHEMA_VERSION};
    let mut doc = EndpointsFile {
        schema_version: SCHEMA_VERSION,
        namespace: "agents".into(),
        plugins: Default::default(),
    };
    doc.plugins.insert(
        "echo".into(),
        PublishedPlugin {
            name: "echo".into(),
            plugin_name: "echo-llm".into(),
            plugin_type: "llm_provider".into(),
            version: "0.1.0".into(),
            address: "echo.agents.svc:50051".into(),
            endpoints: endpoints.to_vec(),
            last_changed: "2026-01-01T00:00:00Z".into(),
            ..Default::default()
        },
    );
    let path = dir.join("endpoints.json");
    std::fs::write(&path, doc.render())?;
    Ok(path)
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn call_and_endpoints_explain_their_arguments() {
    let (code, stdout, _) = hectorctl(&["call", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--plugin",
        "--address",
        "--namespace",
        "--endpoints-file",
        "--repeat",
    ] {
        assert!(stdout.contains(flag), "{flag} missing:\n{stdout}");
    }
    let (code, stdout, _) = hectorctl(&["endpoints", "--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("--namespace") && stdout.contains("text") && stdout.contains("yaml"),
        "{stdout}"
    );
    let (_, stdout, _) = hectorctl(&["--help"]);
    assert!(stdout.contains("endpoints"), "{stdout}");

    // Neither target, both targets, and flags that belong to the other one.
    let (code, _, stderr) = hectorctl(&["call", "health"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--address") && stderr.contains("--plugin"),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl(&["call", "-a", "127.0.0.1:1", "-p", "echo", "health"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("exclude each other"), "{stderr}");
    let (code, _, stderr) = hectorctl(&["call", "-a", "127.0.0.1:1", "-n", "agents", "health"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--namespace goes with --plugin"),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl(&[
        "call",
        "-p",
        "echo",
        "-n",
        "agents",
        "--endpoints-file",
        "/x",
        "health",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    let (code, _, stderr) = hectorctl(&["call", "-p", "echo", "--repeat", "0", "health"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--repeat"), "{stderr}");
    let (code, _, stderr) = hectorctl(&["endpoints", "-o", "xml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("text") && stderr.contains("json") && stderr.contains("yaml"),
        "{stderr}"
    );
}

#[test]
fn published_plugins_are_listed_and_their_failures_named() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = tempfile::tempdir()?;
    let port = closed_port();
    let file = endpoints_file(dir.path(), &[format!("127.0.0.1:{port}")])?;
    let file = file.to_str().ok_or("path")?;

    let (code, stdout, stderr) = hectorctl(&["endpoints", "--endpoints-file", file]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{stdout}");
    assert!(
        lines[1].starts_with("echo ")
            && lines[1].contains("llm_provider")
            && lines[1].contains(&format!("127.0.0.1:{port}")),
        "{stdout}"
    );
    let (code, stdout, _) = hectorctl(&["endpoints", "--endpoints-file", file, "-o", "json"]);
    assert_eq!(code, 0);
    let doc = hector_plugin_sdk::endpoints::EndpointsFile::parse(&stdout)?;
    assert_eq!(doc.plugins["echo"].plugin_name, "echo-llm");
    let (code, stdout, _) = hectorctl(&["endpoints", "--endpoints-file", file, "-o", "yaml"]);
    assert_eq!(code, 0);
    let yaml: serde_json::Value = serde_norway::from_str(&stdout)?;
    assert_eq!(yaml["plugins"]["echo"]["type"], "llm_provider");

    let (code, _, stderr) = hectorctl(&["call", "-p", "nope", "--endpoints-file", file, "health"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no plugin named \"nope\"") && stderr.contains("published: echo"),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl(&[
        "call",
        "-p",
        "echo",
        "--endpoints-file",
        file,
        "generate",
        "hi",
    ]);
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}: connection refused")),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl(&[
        "call",
        "-p",
        "echo",
        "--endpoints-file",
        file,
        "--type",
        "embedder_provider",
        "info",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("published as llm_provider, not embedder_provider"),
        "{stderr}"
    );
    Ok(())
}

/// An LLM that answers with its own tag, so a test sees which one served.
struct Tagged(&'static str);

impl hector_plugin_sdk::Plugin for Tagged {
    fn manifest(&self) -> hector_plugin_sdk::proto::ManifestResponse {
        Default::default()
    }
    async fn initialize(&self, _: hector_plugin_sdk::Config) -> Result<(), String> {
        Ok(())
    }
}

impl hector_plugin_sdk::LlmPlugin for Tagged {
    async fn generate(
        &self,
        _: hector_plugin_sdk::proto::GenerateRequest,
    ) -> Result<hector_plugin_sdk::proto::GenerateResponse, tonic::Status> {
        Ok(hector_plugin_sdk::proto::GenerateResponse {
            text: self.0.to_string(),
            ..Default::default()
        })
    }
    async fn model_info(&self) -> Result<hector_plugin_sdk::proto::ModelInfo, tonic::Status> {
        Ok(Default::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_plugin_balances_repeated_calls_and_says_where_they_landed()
-> Result<(), Box<dyn std::error::Error>> {
    use std::time::Duration;
    let mut addrs = Vec::new();
    for tag in ["first", "second"] {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", closed_port()).parse()?;
        tokio::spawn(hector_plugin_sdk::serve_llm(
            Tagged(tag),
            hector_plugin_sdk::ServeOptions::new(addr),
        ));
        let mut tries = 0;
        let channel = loop {
            match hector_plugin_sdk::connect(&addr.to_string(), Duration::from_secs(1)).await {
                Ok(c) => break c,
                Err(e) if tries > 100 => return Err(e.into()),
                Err(_) => tries += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        hector_plugin_sdk::LifecycleClient::new(
            channel,
            hector_plugin_sdk::PluginType::LlmProvider,
        )
        .initialize(Default::default())
        .await?;
        addrs.push(addr.to_string());
    }
    let dir = tempfile::tempdir()?;
    let file = endpoints_file(dir.path(), &addrs)?;
    let file = file.to_str().ok_or("path")?.to_string();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        hectorctl(&[
            "call",
            "--plugin",
            "echo",
            "--endpoints-file",
            &file,
            "--repeat",
            "10",
            "generate",
            "hi",
        ])
    })
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let served: Vec<&str> = stdout.lines().collect();
    assert_eq!(served.len(), 10, "{stdout}");
    assert!(
        served.iter().all(|l| *l == "first" || *l == "second"),
        "{stdout}"
    );
    // Both connects start with the first call, and a call does not wait for one still under
    // way while the other endpoint's is open: which endpoint serves the first calls depends on
    // which loopback connect ends first. From the call where both have answered, the
    // rotation alternates.
    let both = served
        .iter()
        .enumerate()
        .position(|(i, l)| served[..i].iter().any(|p| p != l))
        .ok_or_else(|| format!("one endpoint served every call:\n{stdout}"))?;
    assert!(
        served[both..].windows(2).all(|w| w[0] != w[1]),
        "the calls after both endpoints answered do not alternate:\n{stdout}"
    );
    assert!(stderr.contains("10 calls, 0 failed"), "{stderr}");
    for (addr, tag) in addrs.iter().zip(["first", "second"]) {
        let n = served.iter().filter(|l| **l == tag).count();
        assert!(
            stderr.contains(&format!("served by {addr}: {n}")),
            "{tag} served {n}:\n{stderr}"
        );
    }
    Ok(())
}

/// Runs hectorctl with stdout and stderr into one file, as a terminal shows them: exit code
/// and everything it printed, in order.
fn hectorctl_combined(args: &[&str]) -> Result<(i32, String), Box<dyn std::error::Error>> {
    use std::io::{Read, Seek};
    let mut file = tempfile::tempfile()?;
    let status = Command::new(env!("CARGO_BIN_EXE_hectorctl"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(file.try_clone()?)
        .stderr(file.try_clone()?)
        .status()?;
    file.rewind()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((status.code().unwrap_or(-1), text))
}

/// Asserts hectorctl neither panicked nor failed when its stdout was closed early.
fn assert_ended_quietly(what: &str, status: std::process::ExitStatus, stderr: &str) {
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert_eq!(status.code(), Some(0), "{what}: {status}: {stderr}");
}

#[test]
fn output_into_a_reader_that_stops_early_ends_quietly() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{BufRead, Read};
    use std::process::Stdio;
    // Far more than a pipe holds, so hectorctl is still writing when the reader goes.
    let dir = tempfile::tempdir()?;
    let mut doc = hector_plugin_sdk::endpoints::EndpointsFile {
        schema_version: hector_plugin_sdk::endpoints::SCHEMA_VERSION,
        namespace: "agents".into(),
        plugins: Default::default(),
    };
    for i in 0..3000 {
        let name = format!("plugin-{i:04}");
        doc.plugins.insert(
            name.clone(),
            hector_plugin_sdk::endpoints::PublishedPlugin {
                name: name.clone(),
                plugin_name: name.clone(),
                plugin_type: "llm_provider".into(),
                version: "0.1.0".into(),
                address: format!("{name}.agents.svc:50051"),
                endpoints: vec![format!("10.0.{}.{}:50051", i / 250, i % 250)],
                last_changed: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            },
        );
    }
    let file = dir.path().join("endpoints.json");
    std::fs::write(&file, doc.render())?;
    let file = file.to_str().ok_or("path")?;

    for output in ["table", "json", "yaml"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hectorctl"))
            .args(["endpoints", "--endpoints-file", file, "-o", output])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut reader = std::io::BufReader::new(child.stdout.take().ok_or("stdout")?);
        let mut first = String::new();
        reader.read_line(&mut first)?;
        assert!(!first.is_empty(), "{output}: no output");
        drop(reader);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .ok_or("stderr")?
            .read_to_string(&mut stderr)?;
        let status = child.wait()?;
        assert_ended_quietly(&format!("endpoints -o {output}"), status, &stderr);
    }

    // Commands that print little: the reader is gone before they write at all.
    for args in [
        &["discover", "examples", "--recursive"][..],
        &[
            "manifest",
            "validate",
            "examples/manifests/echo-llm.plugin.yaml",
        ],
        &[
            "manifest",
            "convert",
            "examples/manifests/echo-llm.plugin.yaml",
            "--image",
            "x",
        ],
        &["completion", "zsh"],
        &["discover", "examples", "-r", "-o", "json"],
    ] {
        let (reader, writer) = std::io::pipe()?;
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_hectorctl"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()?;
        assert_ended_quietly(
            &args.join(" "),
            out.status,
            &String::from_utf8_lossy(&out.stderr),
        );
    }
    Ok(())
}

/// Asserts no part of an error message (between `: `) appears twice.
fn assert_no_repeats(message: &str) {
    let parts: Vec<&str> = message.trim().split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part),
            "{part:?} twice in {message:?}"
        );
    }
}

#[test]
fn a_refused_connection_is_named_once_with_its_address() -> Result<(), Box<dyn std::error::Error>> {
    let port = closed_port();
    let address = format!("127.0.0.1:{port}");
    for method in ["health", "generate"] {
        let mut args = vec!["call", "--address", &address, method];
        if method == "generate" {
            args.push("hi");
        }
        let (code, stdout, stderr) = hectorctl(&args);
        assert_eq!(code, 69, "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains(&format!("cannot connect to {address}: connection refused")),
            "{stderr}"
        );
        assert!(!stderr.contains("invalid address"), "{stderr}");
        assert_no_repeats(&stderr);
    }
    let (code, _, stderr) = hectorctl(&["call", "--address", "unix:/nonexistent/p.sock", "health"]);
    assert_eq!(code, 69, "{stderr}");
    assert_eq!(
        stderr,
        "error: cannot connect to unix:/nonexistent/p.sock: no such socket\n"
    );
    let (code, _, stderr) = hectorctl(&["call", "--address", "http://[bad", "health"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid address"), "{stderr}");

    // A published plugin whose one endpoint refuses.
    let dir = tempfile::tempdir()?;
    let file = endpoints_file(dir.path(), std::slice::from_ref(&address))?;
    let file = file.to_str().ok_or("path")?;
    let (code, _, stderr) = hectorctl(&["call", "-p", "echo", "--endpoints-file", file, "health"]);
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains(&format!("{address}: connection refused")),
        "{stderr}"
    );
    assert_no_repeats(&stderr);
    Ok(())
}

/// An LLM whose answer the user message picks: `plain` answers "no newline" (7 tokens), `tool`
/// the same with a tool call, `fail` fails (INTERNAL), `deny` refuses (PERMISSION_DENIED) and
/// `hang` never answers; streamed, `plain` sends "partial " and "answer" then done, `fail`
/// sends "partial" then an error.
struct Scripted;

impl hector_plugin_sdk::Plugin for Scripted {
    fn manifest(&self) -> hector_plugin_sdk::proto::ManifestResponse {
        Default::default()
    }
    async fn initialize(&self, _: hector_plugin_sdk::Config) -> Result<(), String> {
        Ok(())
    }
}

impl hector_plugin_sdk::LlmPlugin for Scripted {
    async fn generate(
        &self,
        request: hector_plugin_sdk::proto::GenerateRequest,
    ) -> Result<hector_plugin_sdk::proto::GenerateResponse, tonic::Status> {
        let said = |word: &str| request.messages.iter().any(|m| m.content == word);
        if said("fail") {
            return Err(tonic::Status::internal("boom"));
        }
        if said("deny") {
            return Err(tonic::Status::permission_denied("caller not allowed"));
        }
        if said("hang") {
            return std::future::pending().await;
        }
        let tool_calls = if said("tool") {
            vec![hector_plugin_sdk::proto::ToolCall {
                id: "c1".into(),
                name: "weather".into(),
                arguments_json: r#"{"city":"Oslo"}"#.into(),
            }]
        } else {
            vec![]
        };
        Ok(hector_plugin_sdk::proto::GenerateResponse {
            text: "no newline".into(),
            tool_calls,
            tokens_used: 7,
        })
    }
    async fn generate_stream(
        &self,
        request: hector_plugin_sdk::proto::GenerateRequest,
    ) -> Result<hector_plugin_sdk::ChunkStream, tonic::Status> {
        use hector_plugin_sdk::proto::{StreamChunk, stream_chunk::ChunkType};
        let text = |t: &str| StreamChunk {
            r#type: ChunkType::Text as i32,
            text: t.into(),
            ..Default::default()
        };
        let fail = request.messages.iter().any(|m| m.content == "fail");
        let chunks = if fail {
            vec![
                text("partial"),
                StreamChunk {
                    r#type: ChunkType::Error as i32,
                    error: "boom".into(),
                    ..Default::default()
                },
            ]
        } else {
            vec![
                text("partial "),
                text("answer"),
                StreamChunk {
                    r#type: ChunkType::Done as i32,
                    tokens_used: 7,
                    ..Default::default()
                },
            ]
        };
        Ok(Box::pin(futures::stream::iter(chunks.into_iter().map(Ok))))
    }
    async fn model_info(&self) -> Result<hector_plugin_sdk::proto::ModelInfo, tonic::Status> {
        Ok(Default::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_end_their_line_before_the_tokens_line_or_an_error()
-> Result<(), Box<dyn std::error::Error>> {
    use std::time::Duration;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", closed_port()).parse()?;
    tokio::spawn(hector_plugin_sdk::serve_llm(
        Scripted,
        hector_plugin_sdk::ServeOptions::new(addr),
    ));
    let mut tries = 0;
    let channel = loop {
        match hector_plugin_sdk::connect(&addr.to_string(), Duration::from_secs(1)).await {
            Ok(c) => break c,
            Err(e) if tries > 100 => return Err(e.into()),
            Err(_) => tries += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    hector_plugin_sdk::LifecycleClient::new(channel, hector_plugin_sdk::PluginType::LlmProvider)
        .initialize(Default::default())
        .await?;
    let addr = addr.to_string();
    let cases: [(&[&str], i32, &[&str]); 3] = [
        (&["generate", "plain"], 0, &["no newline", "tokens used: 7"]),
        (
            &["stream", "plain"],
            0,
            &["partial answer", "tokens used: 7"],
        ),
        (
            &["stream", "fail"],
            1,
            &["partial", "error: plugin error: boom"],
        ),
    ];
    for (method, want_code, want_lines) in cases {
        let mut args = vec!["call".to_string(), "--address".into(), addr.clone()];
        args.extend(method.iter().map(|s| s.to_string()));
        let (code, text) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            hectorctl_combined(&args).map_err(|e| e.to_string())
        })
        .await??;
        assert_eq!(code, want_code, "{method:?}: {text}");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            want_lines,
            "{method:?}: {text:?}"
        );
        assert!(text.ends_with('\n'), "{method:?}: {text:?}");
    }
    Ok(())
}

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs hectorctl off the runtime that serves the test's plugins.
async fn hectorctl_async(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        hectorctl(&args)
    })
    .await
    .expect("hectorctl ran")
}

/// Serves a plugin on a free loopback port and returns its address once it answers; with
/// `plugin_type` it is also initialized (a plugin refuses calls before that).
async fn serve<F, Fut>(
    plugin_type: Option<hector_plugin_sdk::PluginType>,
    start: F,
) -> Result<String, Box<dyn std::error::Error>>
where
    F: FnOnce(hector_plugin_sdk::ServeOptions) -> Fut,
    Fut: std::future::Future<Output = Result<(), hector_plugin_sdk::SdkError>> + Send + 'static,
{
    use std::time::Duration;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", closed_port()).parse()?;
    tokio::spawn(start(hector_plugin_sdk::ServeOptions::new(addr)));
    let mut tries = 0;
    let channel = loop {
        match hector_plugin_sdk::connect(&addr.to_string(), Duration::from_secs(1)).await {
            Ok(c) => break c,
            Err(e) if tries > 100 => return Err(e.into()),
            Err(_) => tries += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(t) = plugin_type {
        hector_plugin_sdk::LifecycleClient::new(channel, t)
            .initialize(Default::default())
            .await?;
    }
    Ok(addr.to_string())
}

async fn serve_scripted_llm() -> Result<String, Box<dyn std::error::Error>> {
    serve(Some(hector_plugin_sdk::PluginType::LlmProvider), |o| {
        hector_plugin_sdk::serve_llm(Scripted, o)
    })
    .await
}

#[test]
fn it_is_called_hectorctl_and_says_what_it_is_for_and_how_it_exits() {
    let (code, stdout, _) = hectorctl(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(stdout, format!("hectorctl {}\n", env!("CARGO_PKG_VERSION")));
    let (code, help, _) = hectorctl(&["--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("Usage: hectorctl"), "{help}");
    assert!(help.contains("Hector plugins"), "{help}");
    assert!(!help.contains("Kubernetes operator"), "{help}");
    assert!(!help.contains("hector-operator"), "{help}");
    for line in [
        "Exit status:",
        "  1   the command ran",
        "  2   usage",
        "  69  unavailable",
        "  77  permission denied",
        "  78  configuration",
    ] {
        assert!(help.contains(line), "{line:?} missing:\n{help}");
    }
    for command in ["manifest", "discover", "call", "endpoints", "completion"] {
        assert!(help.contains(command), "{command} missing:\n{help}");
    }
    for flag in ["--kubeconfig", "--context", "--output"] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
    let (code, help, _) = hectorctl(&["call", "--help"]);
    assert_eq!(code, 0);
    for method in [
        "generate",
        "stream",
        "embed",
        "search",
        "upsert",
        "delete",
        "create-collection",
        "delete-collection",
        "tools",
        "execute",
        "next-step",
        "health",
        "info",
        "manifest",
        "status",
        "Exit status:",
    ] {
        assert!(help.contains(method), "{method} missing:\n{help}");
    }
}

#[test]
fn completion_scripts_name_the_commands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, script, stderr) = hectorctl(&["completion", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        assert!(script.len() > 1000, "{shell}: {script}");
        for word in [
            "hectorctl",
            "manifest",
            "convert",
            "endpoints",
            "next-step",
            "kubeconfig",
        ] {
            assert!(script.contains(word), "{shell}: {word} missing");
        }
    }
    let (code, _, stderr) = hectorctl(&["completion", "tcsh"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("bash") && stderr.contains("zsh") && stderr.contains("fish"),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl(&["completion", "bash", "-o", "json"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("prints a shell script"), "{stderr}");
    let (code, _, stderr) = hectorctl(&["completion", "bash", "--kubeconfig", "k.yaml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--kubeconfig is for"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_go_before_or_after_the_subcommand() -> TestResult {
    let addr = serve_scripted_llm().await?;
    let a = addr.as_str();
    for args in [
        &["call", "generate", "plain", "--address", a][..],
        &["call", "--address", a, "generate", "plain"],
        &["call", "generate", "--timeout", "5", "plain", "-a", a],
    ] {
        let (code, stdout, stderr) = hectorctl_async(args).await;
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert_eq!(stdout, "no newline\n", "{args:?}");
    }
    for args in [
        &["-o", "json", "call", "generate", "plain", "-a", a][..],
        &["call", "-a", a, "generate", "plain", "--output", "json"],
        &["call", "-o", "json", "generate", "plain", "-a", a],
    ] {
        let (code, stdout, stderr) = hectorctl_async(args).await;
        assert_eq!(code, 0, "{args:?}: {stderr}");
        let answer: serde_json::Value = serde_json::from_str(&stdout)?;
        assert_eq!(answer["text"], "no newline", "{args:?}");
        assert!(!stderr.contains("tokens used"), "in the document: {stderr}");
    }

    let dir = tempfile::tempdir()?;
    let file = endpoints_file(dir.path(), std::slice::from_ref(&addr))?;
    let file = file.to_str().ok_or("path")?;
    for args in [
        &["--endpoints-file", file, "endpoints"][..],
        &["endpoints", "--endpoints-file", file],
        &["-o", "json", "endpoints", "--endpoints-file", file],
    ] {
        let (code, stdout, stderr) = hectorctl_async(args).await;
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(stdout.contains(&addr), "{args:?}: {stdout}");
    }
    let (code, stdout, stderr) = hectorctl_async(&[
        "--endpoints-file",
        file,
        "call",
        "generate",
        "hi",
        "-p",
        "echo",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "no newline\n");
    assert!(stderr.contains(&format!("served by {addr}")), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_failure_has_its_exit_status() -> TestResult {
    let addr = serve_scripted_llm().await?;
    let a = addr.as_str();

    // 2: usage.
    let (code, _, stderr) = hectorctl_async(&["call", "generate", "hi"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("give --address or --plugin"), "{stderr}");
    let (code, _, stderr) =
        hectorctl_async(&["call", "-a", a, "--type", "llm_provider", "embed", "x"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`embed` is a call of embedder_provider plugins; --type says llm_provider"),
        "{stderr}"
    );
    let dir = tempfile::tempdir()?;
    let file = endpoints_file(dir.path(), std::slice::from_ref(&addr))?;
    let file = file.to_str().ok_or("path")?;
    let (code, _, stderr) =
        hectorctl_async(&["call", "-p", "echo", "--endpoints-file", file, "tools"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`tools` is a call of tool_provider plugins; plugin \"echo\" is published as llm_provider"),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl_async(&["call", "-a", a, "--context", "x", "health"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--context goes with --plugin"), "{stderr}");

    // 1: the plugin answered with a failure, or is not ready for calls.
    let (code, stdout, stderr) = hectorctl_async(&["call", "-a", a, "generate", "fail"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr,
        format!("error: generate call to {addr}: boom (INTERNAL)\n")
    );
    let raw = serve(None, |o| hector_plugin_sdk::serve_llm(Scripted, o)).await?;
    let (code, _, stderr) = hectorctl_async(&["call", "-a", &raw, "generate", "plain"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not initialized (FAILED_PRECONDITION)"),
        "{stderr}"
    );

    // 77: refused.
    let (code, _, stderr) = hectorctl_async(&["call", "-a", a, "generate", "deny"]).await;
    assert_eq!(code, 77, "{stderr}");
    assert!(
        stderr.contains("caller not allowed (PERMISSION_DENIED)"),
        "{stderr}"
    );

    // 69: nothing listens, or no answer in time.
    let closed = format!("127.0.0.1:{}", closed_port());
    let (code, _, stderr) = hectorctl_async(&["call", "-a", &closed, "generate", "hi"]).await;
    assert_eq!(code, 69, "{stderr}");
    assert_eq!(
        stderr,
        format!("error: cannot connect to {closed}: connection refused\n")
    );
    let (code, _, stderr) =
        hectorctl_async(&["call", "-a", a, "--timeout", "1", "generate", "hang"]).await;
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains(&format!("no answer from {addr} within 1s")),
        "{stderr}"
    );
    let (code, _, stderr) =
        hectorctl_async(&["call", "-a", &closed, "--repeat", "2", "health"]).await;
    assert_eq!(code, 69, "{stderr}");
    Ok(())
}

/// A kubeconfig whose one context `local` points at `server`, without credentials.
fn kubeconfig(dir: &std::path::Path, server: &str) -> Result<String, Box<dyn std::error::Error>> {
    let path = dir.join("kubeconfig.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: local\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: nobody\n    namespace: agents\nusers:\n- name: nobody\n  user: {{}}\n"
        ),
    )?;
    Ok(path.to_str().ok_or("path")?.to_string())
}

#[test]
fn kubernetes_configuration_problems_exit_78_and_an_unreachable_api_69() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("none.yaml");
    let missing = missing.to_str().ok_or("path")?;
    let (code, _, stderr) = hectorctl(&["--kubeconfig", missing, "endpoints"]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot use kubeconfig {missing}: no such file or directory"
        )),
        "{stderr}"
    );
    let port = closed_port();
    let config = kubeconfig(dir.path(), &format!("https://127.0.0.1:{port}"))?;
    let (code, _, stderr) = hectorctl(&["endpoints", "--kubeconfig", &config, "--context", "prod"]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "context \"prod\" is not in {config} (it has local)"
        )),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl(&["call", "-p", "echo", "--kubeconfig", &config, "health"]);
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains("cannot reach the Kubernetes API") && stderr.contains("connection refused"),
        "{stderr}"
    );
    let (code, _, stderr) =
        hectorctl(&["endpoints", "--kubeconfig", &config, "--context", "local"]);
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains("agents/hector-plugins"),
        "the context's namespace: {stderr}"
    );
    assert_no_repeats(&stderr);

    let (code, _, stderr) = hectorctl(&["endpoints", "--endpoints-file", missing]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read the endpoints file {missing}")),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl(&[
        "endpoints",
        "--endpoints-file",
        missing,
        "--kubeconfig",
        &config,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--kubeconfig cannot be used with --endpoints-file"),
        "{stderr}"
    );
    let (code, _, stderr) = hectorctl(&[
        "manifest",
        "validate",
        "examples/manifests/echo-llm.plugin.yaml",
        "--kubeconfig",
        &config,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--kubeconfig is for commands that read published plugins"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_answers_as_documents_carry_every_field() -> TestResult {
    let addr = serve_scripted_llm().await?;
    let a = addr.as_str();
    let (code, stdout, stderr) =
        hectorctl_async(&["call", "-a", a, "-o", "json", "generate", "tool"]).await;
    assert_eq!(code, 0, "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(answer["text"], "no newline");
    assert_eq!(answer["tokens_used"], 7);
    assert_eq!(answer["tool_calls"][0]["name"], "weather");
    assert_eq!(answer["tool_calls"][0]["arguments"]["city"], "Oslo");
    assert_eq!(stdout.lines().count(), 1, "one line per answer: {stdout}");

    let (code, stdout, _) = hectorctl_async(&[
        "call", "-a", a, "-o", "json", "--repeat", "3", "generate", "x",
    ])
    .await;
    assert_eq!(code, 0);
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(answers.len(), 3, "{stdout}");

    let (code, stdout, stderr) =
        hectorctl_async(&["call", "-a", a, "-o", "json", "stream", "plain"]).await;
    assert_eq!(code, 0, "{stderr}");
    let chunks: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(chunks.len(), 3, "{stdout}");
    assert_eq!(chunks[0]["type"], "text");
    assert_eq!(chunks[0]["text"], "partial ");
    assert_eq!(
        chunks[2],
        serde_json::json!({"type": "done", "tokens_used": 7})
    );

    let (code, stdout, stderr) = hectorctl_async(&["call", "-a", a, "-o", "yaml", "health"]).await;
    assert_eq!(code, 0, "{stderr}");
    let health: serde_json::Value = serde_norway::from_str(&stdout)?;
    assert_eq!(health["healthy"], true);
    assert_eq!(health["grpc_health"], "SERVING");

    let (code, stdout, _) = hectorctl_async(&["call", "-a", a, "-o", "json", "info"]).await;
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&stdout)?;
    assert!(
        info.get("model_name").is_some() && info.get("max_tokens").is_some(),
        "{info}"
    );

    let (code, stdout, _) = hectorctl_async(&["call", "-a", a, "-o", "json", "status"]).await;
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(status["status"], "ready");
    let (code, stdout, _) = hectorctl_async(&["call", "-a", a, "-o", "json", "manifest"]).await;
    assert_eq!(code, 0);
    let manifest: serde_json::Value = serde_json::from_str(&stdout)?;
    assert!(manifest.get("capabilities").is_some(), "{manifest}");
    Ok(())
}

/// An embedder that answers every text with the same small vector, and `fail` with an error.
struct Vectors;

impl hector_plugin_sdk::Plugin for Vectors {
    fn manifest(&self) -> hector_plugin_sdk::proto::ManifestResponse {
        Default::default()
    }
    async fn initialize(&self, _: hector_plugin_sdk::Config) -> Result<(), String> {
        Ok(())
    }
}

impl hector_plugin_sdk::EmbedderPlugin for Vectors {
    async fn embed(
        &self,
        request: hector_plugin_sdk::proto::EmbedRequest,
    ) -> Result<hector_plugin_sdk::proto::EmbedResponse, tonic::Status> {
        if request.text == "fail" {
            return Ok(hector_plugin_sdk::proto::EmbedResponse {
                error: "cannot embed".into(),
                ..Default::default()
            });
        }
        Ok(hector_plugin_sdk::proto::EmbedResponse {
            vector: vec![0.1, -0.2, 0.3],
            error: String::new(),
        })
    }
    async fn embedder_info(&self) -> Result<hector_plugin_sdk::proto::EmbedderInfo, tonic::Status> {
        Ok(hector_plugin_sdk::proto::EmbedderInfo {
            model_name: "fixed".into(),
            dimension: 3,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_reads_as_numbers_or_as_json() -> TestResult {
    let addr = serve(Some(hector_plugin_sdk::PluginType::EmbedderProvider), |o| {
        hector_plugin_sdk::serve_embedder(Vectors, o)
    })
    .await?;
    let a = addr.as_str();
    let (code, stdout, stderr) = hectorctl_async(&["call", "-a", a, "embed", "hello"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains('[') && !stdout.contains("vec!"),
        "{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "dimension: 3", "{stdout}");
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["0.100000", "-0.200000", "0.300000"],
        "{stdout}"
    );
    let (code, stdout, _) =
        hectorctl_async(&["call", "-a", a, "embed", "hello", "-o", "json"]).await;
    assert_eq!(code, 0);
    let answer: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(answer["dimension"], 3);
    let vector: Vec<f32> = serde_json::from_value(answer["vector"].clone())?;
    assert_eq!(vector, [0.1, -0.2, 0.3]);
    let (code, _, stderr) = hectorctl_async(&["call", "-a", a, "info"]).await;
    assert_eq!(
        code, 1,
        "llm_provider unless --type says otherwise: {stderr}"
    );
    assert!(
        stderr.contains(&format!("info call to {addr} as llm_provider"))
            && stderr.contains("UNIMPLEMENTED"),
        "{stderr}"
    );
    let (code, stdout, _) = hectorctl_async(&[
        "call",
        "-a",
        a,
        "-t",
        "embedder_provider",
        "-o",
        "json",
        "info",
    ])
    .await;
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(
        info,
        serde_json::json!({"model_name": "fixed", "dimension": 3})
    );
    let (code, stdout, stderr) = hectorctl_async(&["call", "-a", a, "embed", "fail"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr, "error: plugin error: cannot embed\n");
    Ok(())
}

/// A vector store with one hit for every search; collection `missing` does not exist.
struct Store;

impl hector_plugin_sdk::Plugin for Store {
    fn manifest(&self) -> hector_plugin_sdk::proto::ManifestResponse {
        Default::default()
    }
    async fn initialize(&self, _: hector_plugin_sdk::Config) -> Result<(), String> {
        Ok(())
    }
}

fn store_answer(collection: &str) -> (bool, String) {
    if collection == "missing" {
        (false, "no collection \"missing\"".into())
    } else {
        (true, String::new())
    }
}

impl hector_plugin_sdk::DatabasePlugin for Store {
    async fn upsert(
        &self,
        r: hector_plugin_sdk::proto::UpsertRequest,
    ) -> Result<hector_plugin_sdk::proto::UpsertResponse, tonic::Status> {
        if r.vector.len() != 2 || r.metadata.get("source").map(String::as_str) != Some("test") {
            return Err(tonic::Status::invalid_argument(
                "want 2 values and source=test",
            ));
        }
        let (success, error) = store_answer(&r.collection);
        Ok(hector_plugin_sdk::proto::UpsertResponse { success, error })
    }
    async fn search(
        &self,
        r: hector_plugin_sdk::proto::SearchRequest,
    ) -> Result<hector_plugin_sdk::proto::SearchResponse, tonic::Status> {
        let (_, error) = store_answer(&r.collection);
        Ok(hector_plugin_sdk::proto::SearchResponse {
            results: vec![hector_plugin_sdk::proto::SearchResult {
                id: "doc-1".into(),
                score: 0.5 + r.vector.first().copied().unwrap_or_default(),
                content: format!("top {}", r.top_k),
                ..Default::default()
            }],
            error,
        })
    }
    async fn delete(
        &self,
        r: hector_plugin_sdk::proto::DeleteRequest,
    ) -> Result<hector_plugin_sdk::proto::DeleteResponse, tonic::Status> {
        let (success, error) = store_answer(&r.collection);
        Ok(hector_plugin_sdk::proto::DeleteResponse { success, error })
    }
    async fn create_collection(
        &self,
        r: hector_plugin_sdk::proto::CreateCollectionRequest,
    ) -> Result<hector_plugin_sdk::proto::CreateCollectionResponse, tonic::Status> {
        let (success, error) = store_answer(&r.collection);
        Ok(hector_plugin_sdk::proto::CreateCollectionResponse { success, error })
    }
    async fn delete_collection(
        &self,
        _: hector_plugin_sdk::proto::DeleteCollectionRequest,
    ) -> Result<hector_plugin_sdk::proto::DeleteCollectionResponse, tonic::Status> {
        // Not done, and no reason given.
        Ok(hector_plugin_sdk::proto::DeleteCollectionResponse::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_database_is_searched_and_written() -> TestResult {
    let addr = serve(Some(hector_plugin_sdk::PluginType::DatabaseProvider), |o| {
        hector_plugin_sdk::serve_database(Store, o)
    })
    .await?;
    let a = addr.as_str();
    let (code, stdout, stderr) = hectorctl_async(&[
        "call", "-a", a, "search", "docs", "--vector", "-0.25,1", "--top-k", "3",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "SCORE   ID     CONTENT\n0.2500  doc-1  top 3\n");
    let (code, stdout, _) = hectorctl_async(&[
        "call", "-a", a, "-o", "json", "search", "docs", "--vector", "0.25",
    ])
    .await;
    assert_eq!(code, 0);
    let found: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(found["results"][0]["id"], "doc-1");
    assert_eq!(found["results"][0]["score"], 0.75);
    let (code, _, stderr) = hectorctl_async(&[
        "call", "-a", a, "search", "docs", "--vector", "1", "--top-k", "0",
    ])
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--top-k"), "{stderr}");
    let (code, _, stderr) =
        hectorctl_async(&["call", "-a", a, "search", "docs", "--vector", "1,x"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--vector"), "{stderr}");

    let (code, stdout, stderr) = hectorctl_async(&[
        "call",
        "-a",
        a,
        "upsert",
        "docs",
        "doc-2",
        "--vector",
        "1,2",
        "--metadata",
        "source=test",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "upserted: doc-2 in docs\n");
    let (code, _, stderr) = hectorctl_async(&[
        "call",
        "-a",
        a,
        "upsert",
        "missing",
        "doc-2",
        "--vector",
        "1,2",
        "--metadata",
        "source=test",
    ])
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr, "error: plugin error: no collection \"missing\"\n");
    let (code, stdout, _) = hectorctl_async(&[
        "call",
        "-a",
        a,
        "-o",
        "json",
        "create-collection",
        "docs",
        "--vector-size",
        "2",
    ])
    .await;
    assert_eq!(code, 0);
    let created: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(created["operation"], "created collection");
    assert_eq!(created["success"], true);
    let (code, _, stderr) = hectorctl_async(&[
        "call",
        "-a",
        a,
        "create-collection",
        "docs",
        "--vector-size",
        "0",
    ])
    .await;
    assert_eq!(code, 2, "{stderr}");
    let (code, stdout, _) = hectorctl_async(&["call", "-a", a, "delete", "docs", "doc-2"]).await;
    assert_eq!((code, stdout.as_str()), (0, "deleted: doc-2 in docs\n"));
    let (code, _, stderr) = hectorctl_async(&["call", "-a", a, "delete-collection", "docs"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        "error: plugin error: the plugin reported neither success nor an error\n"
    );
    let (code, _, stderr) =
        hectorctl_async(&["call", "-a", a, "-t", "database_provider", "info"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`info` is for"), "{stderr}");
    Ok(())
}

/// A tool provider with one tool, `weather`.
struct Weather;

impl hector_plugin_sdk::Plugin for Weather {
    fn manifest(&self) -> hector_plugin_sdk::proto::ManifestResponse {
        Default::default()
    }
    async fn initialize(&self, _: hector_plugin_sdk::Config) -> Result<(), String> {
        Ok(())
    }
}

impl hector_plugin_sdk::ToolPlugin for Weather {
    async fn list_tools(
        &self,
    ) -> Result<hector_plugin_sdk::proto::ListToolsResponse, tonic::Status> {
        Ok(hector_plugin_sdk::proto::ListToolsResponse {
            tools: vec![hector_plugin_sdk::proto::ToolDefinition {
                name: "weather".into(),
                description: "Current weather for a city".into(),
                parameters_json: r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#.into(),
            }],
        })
    }
    async fn execute(
        &self,
        call: hector_plugin_sdk::proto::ToolCall,
    ) -> Result<hector_plugin_sdk::proto::ToolResult, tonic::Status> {
        let args: serde_json::Value = serde_json::from_str(&call.arguments_json)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let mut result = hector_plugin_sdk::proto::ToolResult {
            tool_call_id: call.id,
            ..Default::default()
        };
        match (call.name.as_str(), args["city"].as_str()) {
            ("weather", Some(city)) => result.content = format!("sunny in {city}"),
            ("weather", None) => result.error = "no city given".into(),
            (other, _) => result.error = format!("no tool {other:?}"),
        }
        Ok(result)
    }
}

/// A strategy that always finishes.
struct Finisher;

impl hector_plugin_sdk::Plugin for Finisher {
    fn manifest(&self) -> hector_plugin_sdk::proto::ManifestResponse {
        Default::default()
    }
    async fn initialize(&self, _: hector_plugin_sdk::Config) -> Result<(), String> {
        Ok(())
    }
}

impl hector_plugin_sdk::ReasoningPlugin for Finisher {
    async fn next_step(
        &self,
        r: hector_plugin_sdk::proto::ReasoningRequest,
    ) -> Result<hector_plugin_sdk::proto::ReasoningStep, tonic::Status> {
        let asked = r
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        Ok(hector_plugin_sdk::proto::ReasoningStep {
            action: hector_plugin_sdk::proto::reasoning_step::Action::Finish as i32,
            thought: format!("iteration {} of {asked:?}", r.iteration),
            final_answer: r.context.get("answer").cloned().unwrap_or_default(),
            ..Default::default()
        })
    }
    async fn strategy_info(&self) -> Result<hector_plugin_sdk::proto::StrategyInfo, tonic::Status> {
        Ok(hector_plugin_sdk::proto::StrategyInfo {
            name: "finish".into(),
            max_iterations: 1,
            description: "answers at once".into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_providers_and_reasoning_strategies_are_callable() -> TestResult {
    let tools = serve(Some(hector_plugin_sdk::PluginType::ToolProvider), |o| {
        hector_plugin_sdk::serve_tool(Weather, o)
    })
    .await?;
    let t = tools.as_str();
    let (code, stdout, stderr) = hectorctl_async(&["call", "-a", t, "tools"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "NAME     ARGUMENTS  DESCRIPTION\nweather  city       Current weather for a city\n"
    );
    let (code, stdout, _) = hectorctl_async(&["call", "-a", t, "tools", "-o", "json"]).await;
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(listed["tools"][0]["parameters"]["required"][0], "city");
    let (code, stdout, stderr) = hectorctl_async(&[
        "call",
        "-a",
        t,
        "execute",
        "weather",
        "--args",
        r#"{"city":"Oslo"}"#,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "sunny in Oslo\n");
    let (code, stdout, _) = hectorctl_async(&[
        "call",
        "-a",
        t,
        "-o",
        "json",
        "execute",
        "weather",
        "--id",
        "c7",
        "--args",
        r#"{"city":"Oslo"}"#,
    ])
    .await;
    assert_eq!(code, 0);
    let result: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(result["tool_call_id"], "c7");
    assert_eq!(result["content"], "sunny in Oslo");
    let (code, _, stderr) = hectorctl_async(&["call", "-a", t, "execute", "weather"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        "error: plugin error: tool \"weather\" failed: no city given\n"
    );
    for bad in ["{city}", "[1]"] {
        let (code, _, stderr) =
            hectorctl_async(&["call", "-a", t, "execute", "weather", "--args", bad]).await;
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert!(stderr.contains("--args"), "{stderr}");
    }
    let (code, _, stderr) =
        hectorctl_async(&["call", "-a", t, "-t", "tool_provider", "info"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("its tools: `tools`"), "{stderr}");

    let strategy = serve(
        Some(hector_plugin_sdk::PluginType::ReasoningStrategy),
        |o| hector_plugin_sdk::serve_reasoning(Finisher, o),
    )
    .await?;
    let s = strategy.as_str();
    let (code, stdout, stderr) = hectorctl_async(&[
        "call",
        "-a",
        s,
        "next-step",
        "what",
        "now",
        "--iteration",
        "2",
        "--set",
        "answer=42",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "action: finish\nthought: iteration 2 of \"what now\"\nfinal answer: 42\n"
    );
    let (code, stdout, _) =
        hectorctl_async(&["call", "-a", s, "-o", "json", "next-step", "go"]).await;
    assert_eq!(code, 0);
    let step: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(step["action"], "finish");
    assert_eq!(step["messages"], serde_json::json!([]));
    let (code, stdout, stderr) =
        hectorctl_async(&["call", "-a", s, "-t", "reasoning_strategy", "info"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "strategy: finish\nmax iterations: 1\ndescription: answers at once\n"
    );
    let (code, _, stderr) =
        hectorctl_async(&["call", "-a", s, "next-step", "x", "--iteration", "-1"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--iteration"), "{stderr}");
    Ok(())
}

#[test]
fn convert_sets_name_replicas_and_port_and_refuses_what_the_crd_would() -> TestResult {
    let base = [
        "manifest",
        "convert",
        "examples/manifests/echo-llm.plugin.yaml",
        "--image",
        "hector.dev/echo-llm:dev",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        hectorctl(&args)
    };
    let (code, stdout, stderr) = with(&["--name", "echo-2", "--replicas", "3", "--port", "9000"]);
    assert_eq!(code, 0, "{stderr}");
    let r: hector_operator::crd::HectorPlugin = serde_norway::from_str(&stdout)?;
    assert_eq!(r.metadata.name.as_deref(), Some("echo-2"));
    assert_eq!((r.spec.replicas, r.spec.port), (3, 9000));
    assert_eq!(
        r.spec.manifest.name, "echo-llm",
        "the manifest keeps its name"
    );

    let (code, stdout, _) = with(&["-o", "json", "--replicas", "0", "-n", "agents"]);
    assert_eq!(code, 0);
    let r: hector_operator::crd::HectorPlugin = serde_json::from_str(&stdout)?;
    assert_eq!((r.spec.replicas, r.spec.port), (0, 50051));
    assert_eq!(r.metadata.namespace.as_deref(), Some("agents"));

    let cases: [(&[&str], &str); 7] = [
        (
            &["--replicas", "-1"],
            "-1 is out of range: the number of Pods is 0 to 100",
        ),
        (
            &["--replicas", "101"],
            "101 is out of range: the number of Pods is 0 to 100",
        ),
        (&["--replicas", "many"], "\"many\" is not a whole number"),
        (
            &["--port", "70000"],
            "70000 is out of range: a port is 1 to 65535",
        ),
        (&["--port", "0"], "0 is out of range: a port is 1 to 65535"),
        (
            &["--name", "Echo_LLM"],
            "\"Echo_LLM\" cannot name a HectorPlugin",
        ),
        (&["--name", "9echo"], "starting with a letter"),
    ];
    for (extra, message) in cases {
        let (code, stdout, stderr) = with(extra);
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(stdout.is_empty(), "{extra:?}: {stdout}");
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
        assert!(stderr.contains(extra[0]), "names the flag: {stderr}");
    }
    let (code, _, stderr) = hectorctl(&[
        "manifest",
        "convert",
        "examples/manifests/echo-llm.plugin.yaml",
        "--endpoint",
        "10.0.0.9:50051",
        "--replicas",
        "2",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("the operator runs no Pods"), "{stderr}");
    Ok(())
}

#[test]
fn validate_and_discover_print_documents() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.plugin.yaml");
    std::fs::write(&bad, "plugin:\n  name: x\n  version: 1\n")?;
    let bad = bad.to_str().ok_or("path")?;
    let (code, stdout, stderr) = hectorctl(&[
        "manifest",
        "validate",
        "-o",
        "json",
        "examples/manifests/echo-llm.plugin.yaml",
        bad,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.is_empty(),
        "the findings are in the document: {stderr}"
    );
    let reports: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(reports[0]["valid"], true);
    assert_eq!(reports[0]["type"], "llm_provider");
    assert_eq!(reports[1]["valid"], false);
    let paths: Vec<&str> = reports[1]["diagnostics"]
        .as_array()
        .ok_or("diagnostics")?
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    assert!(paths.contains(&"plugin.version"), "{stdout}");

    let (code, stdout, _) = hectorctl(&["discover", "examples", "-r", "-o", "yaml"]);
    assert_eq!(code, 0);
    let found: serde_json::Value = serde_norway::from_str(&stdout)?;
    assert_eq!(
        found["manifests"].as_array().map(Vec::len),
        Some(3),
        "{stdout}"
    );
    let (code, stdout, stderr) = hectorctl(&[
        "discover",
        "examples/manifests",
        "--emit",
        "--image-template",
        "registry.example/{name}:{version}",
        "--replicas",
        "2",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["spec"]["replicas"], 2);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
    Ok(())
}

/// Against the live cluster of `KUBECONFIG`: `--kubeconfig` and `--context` choose the cluster
/// and its credentials; a context without credentials is refused by the API server (77).
#[cfg(feature = "e2e")]
mod live {
    use super::*;

    fn kubeconfig_path() -> String {
        std::env::var("KUBECONFIG").expect("KUBECONFIG names the test cluster's kubeconfig")
    }

    #[test]
    fn kubeconfig_and_context_choose_the_cluster_and_credentials() -> TestResult {
        let path = kubeconfig_path();
        let config = kube::config::Kubeconfig::read_from(&path)?;
        let context = config.current_context.clone().ok_or("a current context")?;
        let (code, stdout, stderr) = hectorctl(&[
            "endpoints",
            "--kubeconfig",
            &path,
            "--context",
            &context,
            "-n",
            "hector-system",
            "-o",
            "json",
        ]);
        assert_eq!(code, 0, "{stderr}");
        let doc = hector_plugin_sdk::endpoints::EndpointsFile::parse(&stdout)?;
        assert_eq!(doc.namespace, "hector-system");

        // The same cluster as a user without credentials, in a kubeconfig of its own (none
        // of the admin's credentials are copied).
        let current = config
            .contexts
            .iter()
            .find(|c| c.name == context)
            .and_then(|c| c.context.clone())
            .ok_or("the current context")?;
        let cluster = config
            .clusters
            .iter()
            .find(|c| c.name == current.cluster)
            .cloned()
            .ok_or("the current context's cluster")?;
        let config = kube::config::Kubeconfig {
            clusters: vec![cluster],
            auth_infos: vec![kube::config::NamedAuthInfo {
                name: "nobody".into(),
                auth_info: Some(Default::default()),
                ..Default::default()
            }],
            contexts: vec![kube::config::NamedContext {
                name: "hectorctl-anonymous".into(),
                context: Some(kube::config::Context {
                    user: Some("nobody".into()),
                    ..current
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let dir = tempfile::tempdir()?;
        let anonymous = dir.path().join("kubeconfig.yaml");
        std::fs::write(&anonymous, serde_norway::to_string(&config)?)?;
        let anonymous = anonymous.to_str().ok_or("path")?;
        let (code, _, stderr) = hectorctl(&[
            "endpoints",
            "--kubeconfig",
            anonymous,
            "--context",
            "hectorctl-anonymous",
            "-n",
            "hector-system",
        ]);
        assert_eq!(code, 77, "{stderr}");
        assert!(
            stderr.contains("HTTP 401") || stderr.contains("HTTP 403"),
            "{stderr}"
        );
        assert_no_repeats(&stderr);
        Ok(())
    }
}
