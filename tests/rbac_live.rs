//! What the operator's ServiceAccount can do on a live install (`make test` deploys from
//! `deploy/`), compared with the table in `docs/operator.md` through `kubectl auth can-i
//! --list`: the documentation states exactly the permissions, and there is none on Secrets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SA: &str = "system:serviceaccount:hector-system:hector-operator";

fn kubectl_out(args: &[&str]) -> (bool, String) {
    let out = Command::new(kubectl_path())
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Permissions as `kubectl auth can-i --list` names them: `resource[.group]` → verbs.
type Rules = BTreeMap<String, BTreeSet<String>>;

/// The documented table: (rules everywhere watched, rules in the operator's own namespace).
fn documented() -> (Rules, Rules) {
    let doc = std::fs::read_to_string(PathBuf::from(ROOT).join("docs/operator.md"))
        .expect("read docs/operator.md");
    let section = doc
        .split("## What the ServiceAccount can do")
        .nth(1)
        .expect("docs/operator.md has the permissions section");
    let (mut watched, mut home) = (Rules::new(), Rules::new());
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | group | resource | verbs | where | why |
        if cells.len() < 6 || !cells[2].starts_with('`') {
            continue;
        }
        let unquote = |s: &str| s.trim_matches('`').to_string();
        let group = unquote(cells[1]);
        let resource = unquote(cells[2]);
        // kubectl writes `resource.group/subresource`.
        let name = match (group.as_str(), resource.split_once('/')) {
            ("core", _) => resource,
            (_, Some((r, sub))) => format!("{r}.{group}/{sub}"),
            (_, None) => format!("{resource}.{group}"),
        };
        let verbs: BTreeSet<String> = unquote(cells[3])
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let target = if cells[4].contains("own namespace") {
            &mut home
        } else {
            &mut watched
        };
        target.insert(name, verbs);
    }
    assert!(watched.len() >= 8, "parsed the table: {watched:?}");
    (watched, home)
}

/// `kubectl auth can-i --list` for the operator in `ns`, without the rules every
/// authenticated identity has (self reviews, discovery URLs).
fn granted(ns: &str) -> Rules {
    let (ok, text) = kubectl_out(&["auth", "can-i", "--list", "--as", SA, "-n", ns]);
    assert!(ok, "kubectl auth can-i --list: {text}");
    let mut rules = Rules::new();
    for line in text.lines().skip(1) {
        let Some(resource) = line.split_whitespace().next() else {
            continue;
        };
        // Non-resource URL rows start with `[]` in the Resources column.
        if resource.starts_with('[') || resource.starts_with("selfsubject") {
            continue;
        }
        let verbs = line
            .rsplit('[')
            .next()
            .unwrap_or_default()
            .trim_end_matches(']')
            .split_whitespace()
            .map(str::to_string);
        rules.entry(resource.to_string()).or_default().extend(verbs);
    }
    rules
}

#[tokio::test]
async fn the_documented_permissions_are_exactly_what_the_operator_has() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "rbac-list").await;
    let (watched, home) = documented();
    assert_eq!(
        granted(&ns.name),
        watched,
        "in a watched namespace, kubectl auth can-i --list differs from docs/operator.md"
    );
    let mut at_home = watched.clone();
    at_home.extend(home);
    assert_eq!(
        granted("hector-system"),
        at_home,
        "in the operator's namespace, kubectl auth can-i --list differs from docs/operator.md"
    );
    Ok(())
}

#[tokio::test]
async fn the_operator_cannot_read_any_secret_anywhere() -> TestResult {
    let client = client().await;
    let ns = TestNamespace::new(&client, "rbac-secret").await;
    for verb in ["get", "list", "watch"] {
        for scope in [
            vec!["-A"],
            vec!["-n", "hector-system"],
            vec!["-n", ns.name.as_str()],
        ] {
            let mut args = vec!["auth", "can-i", verb, "secrets", "--as", SA];
            args.extend(scope.iter().copied());
            let (_, text) = kubectl_out(&args);
            assert_eq!(
                text.trim(),
                "no",
                "can the operator {verb} secrets {scope:?}?"
            );
        }
    }
    // And really: a canary Secret cannot be read with the operator's identity.
    let (ok, text) = kubectl_out(&[
        "create",
        "secret",
        "generic",
        "canary",
        "-n",
        &ns.name,
        "--from-literal=value=canary-7f3e-not-for-the-operator",
    ]);
    assert!(ok, "{text}");
    let (ok, text) = kubectl_out(&["get", "secrets", "-A", "--as", SA, "-o", "yaml"]);
    assert!(!ok, "listing Secrets as the operator must fail: {text}");
    assert!(text.contains("forbidden"), "{text}");
    assert!(
        !text.contains("Y2FuYXJ5"),
        "no Secret data reaches the operator"
    );
    Ok(())
}
