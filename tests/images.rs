//! The image archives: `tests/images/build-oci` writes single- and multi-architecture OCI
//! layouts that name every tag, rejects what it cannot build, and (live) the cluster holds the
//! operator image under the tag the chart installs by default.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn build_oci() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/build-oci")
}

/// Reads one JSON document out of an OCI layout tar (`index.json` or a blob by digest).
fn read_json(archive: &Path, member: &str) -> Value {
    serde_json::from_slice(&tar_member(archive, member)).expect("member is JSON")
}

fn tar_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(member)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar -xOf {} {member}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn blob(archive: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    read_json(archive, &format!("blobs/sha256/{hex}"))
}

#[test]
fn a_multi_architecture_archive_has_one_manifest_per_architecture_under_every_tag() {
    let dir = tempfile::tempdir().expect("temp dir");
    for arch in ["amd64", "arm64"] {
        std::fs::write(
            dir.path().join(format!("tool-{arch}")),
            format!("{arch} build"),
        )
        .expect("write");
    }
    let out = dir.path().join("tool.oci.tar");
    let status = Command::new(build_oci())
        .args([
            "--name",
            "example.org/tool:dev",
            "--name",
            "example.org/tool:1.2.3",
        ])
        .args([
            "--arch",
            "amd64",
            "--arch",
            "arm64",
            "--user",
            "65532:65532",
        ])
        .arg("--out")
        .arg(&out)
        .arg(format!("{}/tool-{{arch}}:/bin/tool", dir.path().display()))
        .status()
        .expect("run build-oci");
    assert!(status.success());

    let index = read_json(&out, "index.json");
    let entries = index["manifests"].as_array().expect("manifests");
    let names: Vec<&str> = entries
        .iter()
        .map(|e| {
            e["annotations"]["io.containerd.image.name"]
                .as_str()
                .expect("name")
        })
        .collect();
    assert_eq!(names, ["example.org/tool:dev", "example.org/tool:1.2.3"]);
    assert_eq!(
        entries[0]["digest"], entries[1]["digest"],
        "both tags name one image"
    );
    assert_eq!(
        entries[0]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );

    let nested = blob(&out, entries[0]["digest"].as_str().expect("digest"));
    let per_arch = nested["manifests"]
        .as_array()
        .expect("per-architecture manifests");
    let mut seen = Vec::new();
    for desc in per_arch {
        let arch = desc["platform"]["architecture"]
            .as_str()
            .expect("architecture");
        assert_eq!(desc["platform"]["os"], "linux");
        let manifest = blob(&out, desc["digest"].as_str().expect("digest"));
        let config = blob(&out, manifest["config"]["digest"].as_str().expect("config"));
        assert_eq!(config["architecture"], arch, "config and index agree");
        // The layer holds this architecture's file, not the other's.
        let layer_hex = manifest["layers"][0]["digest"].as_str().expect("layer");
        let layer = tar_member(&out, &format!("blobs/sha256/{}", &layer_hex[7..]));
        let text = String::from_utf8_lossy(&layer);
        assert!(
            text.contains(&format!("{arch} build")),
            "{arch} layer holds its own file"
        );
        seen.push(arch.to_string());
    }
    assert_eq!(seen, ["amd64", "arm64"]);
}

#[test]
fn a_single_architecture_archive_keeps_the_plain_layout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tool");
    std::fs::write(&file, "x").expect("write");
    let out = dir.path().join("tool.oci.tar");
    let status = Command::new(build_oci())
        .args(["--name", "example.org/tool:dev", "--arch", "arm64", "--out"])
        .arg(&out)
        .arg(format!("{}:/bin/tool", file.display()))
        .status()
        .expect("run build-oci");
    assert!(status.success());
    let index = read_json(&out, "index.json");
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(entry["platform"]["architecture"], "arm64");
}

#[test]
fn bad_architectures_and_missing_files_are_refused_without_a_partial_archive() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tool-amd64"), "x").expect("write");
    let out = dir.path().join("tool.oci.tar");
    let run = |arches: &[&str]| {
        let mut cmd = Command::new(build_oci());
        cmd.args(["--name", "example.org/tool:dev", "--out"])
            .arg(&out);
        for a in arches {
            cmd.args(["--arch", a]);
        }
        cmd.arg(format!("{}/tool-{{arch}}:/bin/tool", dir.path().display()));
        cmd.output().expect("run build-oci")
    };

    let unknown = run(&["riscv64"]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("invalid choice: 'riscv64'"), "{err}");

    // arm64's file is missing: the error names it, and nothing is left behind.
    let missing = run(&["amd64", "arm64"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("for arm64") && err.contains("tool-arm64 is not a file"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tool.oci.tar"))
        .collect();
    assert!(left.is_empty(), "no archive or partial file: {left:?}");

    let untagged = Command::new(build_oci())
        .args(["--name", "example.org/tool", "--out"])
        .arg(&out)
        .output()
        .expect("run build-oci");
    assert!(!untagged.status.success());
    assert!(String::from_utf8_lossy(&untagged.stderr).contains("needs a tag"));
}

/// What `helm install` with default values pulls is in the cluster after `make images`.
#[cfg(feature = "e2e")]
#[test]
fn the_cluster_holds_the_operator_image_under_the_charts_default_tag() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chart: Value = serde_norway::from_str(
        &std::fs::read_to_string(root.join("charts/hector-operator/Chart.yaml"))
            .expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    let app_version = chart["appVersion"].as_str().expect("appVersion");
    let out = Command::new(root.join("tests/cluster/cluster"))
        .args(["ctr", "images", "ls", "-q"])
        .output()
        .expect("run cluster ctr");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let images = String::from_utf8_lossy(&out.stdout);
    for image in ["hector-operator", "echo-llm", "hash-embedder", "memory-db"] {
        let want = format!("hector.dev/{image}:{app_version}");
        assert!(
            images.lines().any(|l| l == want),
            "{want} (the chart's default tag) is not loaded; images: {images}"
        );
    }
}
