//! `hectorctl manifest` and `discover` as a user runs them: exit codes and output.

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
        stdout.contains("echo-llm") && stdout.contains("hash-embedder"),
        "{stdout}"
    );
    assert!(
        stderr.contains("2 manifest(s) found, 0 invalid"),
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
    assert_eq!(docs.len(), 2);
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
        stdout.contains("--namespace") && stdout.contains("table") && stdout.contains("yaml"),
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
    assert!(stderr.contains("go with --plugin"), "{stderr}");
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
        stderr.contains("table") && stderr.contains("json"),
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
    assert_eq!(code, 2);
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
    assert_eq!(
        stdout.lines().filter(|l| *l == "first").count(),
        5,
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| *l == "second").count(),
        5,
        "{stdout}"
    );
    assert!(stderr.contains("10 calls, 0 failed"), "{stderr}");
    for addr in &addrs {
        assert!(stderr.contains(&format!("served by {addr}: 5")), "{stderr}");
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
        assert_eq!(code, 2, "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains(&format!("cannot connect to {address}: connection refused")),
            "{stderr}"
        );
        assert!(!stderr.contains("invalid address"), "{stderr}");
        assert_no_repeats(&stderr);
    }
    let (code, _, stderr) = hectorctl(&["call", "--address", "http://[bad", "health"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid address"), "{stderr}");

    // A published plugin whose one endpoint refuses.
    let dir = tempfile::tempdir()?;
    let file = endpoints_file(dir.path(), std::slice::from_ref(&address))?;
    let file = file.to_str().ok_or("path")?;
    let (code, _, stderr) = hectorctl(&["call", "-p", "echo", "--endpoints-file", file, "health"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("{address}: connection refused")),
        "{stderr}"
    );
    assert_no_repeats(&stderr);
    Ok(())
}

/// An LLM whose answer the user message picks: `plain` answers "no newline" (7 tokens);
/// streamed, `plain` sends "partial " and "answer" then done, `fail` sends "partial" then an
/// error.
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
        _: hector_plugin_sdk::proto::GenerateRequest,
    ) -> Result<hector_plugin_sdk::proto::GenerateResponse, tonic::Status> {
        Ok(hector_plugin_sdk::proto::GenerateResponse {
            text: "no newline".into(),
            tokens_used: 7,
            ..Default::default()
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
            2,
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
