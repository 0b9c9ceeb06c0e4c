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
