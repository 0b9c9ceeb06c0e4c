//! Who may call a plugin run in Pods (`spec.access`). Checked here, then enforced twice: by
//! the plugin's NetworkPolicy (which Pods may connect at all) and by the launcher in the
//! plugin's Pods (TLS, and a ServiceAccount token checked on every call). Both are built from
//! one [`Callers`] value, so they cannot disagree about who is let in.

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::{ACCESS_ENTRIES_MAX, AccessSpec, HectorPluginSpec, SERVICE_ACCOUNT_ENTRY_MAX};

/// The operator's own identity and Pods: every plugin admits them, so that the prober can
/// call it whatever `spec.access` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorIdentity {
    /// The namespace the operator runs in.
    pub namespace: String,
    /// The ServiceAccount it runs as.
    pub service_account: String,
    /// Labels that select the operator's Pods (its Deployment's selector labels).
    pub pod_labels: BTreeMap<String, String>,
}

impl OperatorIdentity {
    /// `namespace/name`, as the launcher's `--allow-service-account` takes it.
    pub fn service_account_entry(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }
}

/// Why `spec.access` cannot be used; each names the field it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// An entry of `namespaces` is not a namespace name.
    #[error(
        "spec.access.namespaces[{index}]: {value:?} is not a namespace name (a DNS-1123 label: \
         at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
    )]
    Namespace {
        /// Position in the list.
        index: usize,
        /// The entry.
        value: String,
    },
    /// An entry of `serviceAccounts` is not `NAMESPACE/NAME` or `NAMESPACE/*`.
    #[error(
        "spec.access.serviceAccounts[{index}]: {value:?} must be NAMESPACE/NAME or \
         NAMESPACE/*: {reason}"
    )]
    ServiceAccount {
        /// Position in the list.
        index: usize,
        /// The entry.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A list is longer than the CRD allows.
    #[error("spec.access.{field}: {len} entries, at most {ACCESS_ENTRIES_MAX} are allowed")]
    TooMany {
        /// `namespaces` or `serviceAccounts`.
        field: &'static str,
        /// How many were given.
        len: usize,
    },
    /// `open: true` together with a list: it is unclear which was meant, and the lists would
    /// silently restrict nothing.
    #[error(
        "spec.access.open: true admits every caller, so it cannot be combined with \
         spec.access.namespaces or spec.access.serviceAccounts; remove the lists, or set \
         open: false"
    )]
    OpenWithList,
    /// Access rules on a plugin the operator does not run.
    #[error(
        "spec.access cannot be enforced for a plugin given by spec.endpoint (the operator runs \
         no Pods for it); restrict its callers where it runs"
    )]
    WithEndpoint,
}

/// Who may call a plugin's Pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Callers {
    /// Anyone who can reach the Pods, without a token (`open: true`).
    Open,
    /// ServiceAccounts of `namespaces`, plus `service_accounts` (`ns/name` or `ns/*`), plus
    /// the operator.
    Only {
        /// The plugin's own namespace first, then the listed ones, sorted, without repeats.
        namespaces: Vec<String>,
        /// The listed ServiceAccounts, sorted, without repeats.
        service_accounts: Vec<String>,
    },
}

/// Whether `s` is a DNS-1123 label: what a namespace name must be.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_shape(s)
}

/// Lowercase letters, digits and `-`, starting and ending with a letter or digit (any length
/// but zero).
fn is_label_shape(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

/// Whether `s` is a DNS-1123 subdomain: what a ServiceAccount name must be.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_shape)
}

/// What is wrong with a `serviceAccounts` entry, if anything.
fn service_account_problem(entry: &str) -> Option<&'static str> {
    if entry.len() > SERVICE_ACCOUNT_ENTRY_MAX {
        return Some("longer than 317 characters");
    }
    let Some((namespace, name)) = entry.split_once('/') else {
        return Some("no '/' between namespace and name");
    };
    if !is_dns1123_label(namespace) {
        return Some(
            "the part before '/' is not a namespace name (a DNS-1123 label of at most 63 \
             lowercase letters, digits or '-')",
        );
    }
    if name != "*" && !is_dns1123_subdomain(name) {
        return Some(
            "the part after '/' is neither '*' nor a ServiceAccount name (a DNS-1123 subdomain \
             of at most 253 lowercase letters, digits, '-' or '.')",
        );
    }
    None
}

/// Checks `spec.access` against the rest of the spec; every problem is reported.
pub fn check(spec: &HectorPluginSpec) -> Result<(), Vec<AccessError>> {
    if spec.endpoint.is_some() {
        return if spec.access.is_default() {
            Ok(())
        } else {
            Err(vec![AccessError::WithEndpoint])
        };
    }
    // The plugin's namespace is not known here and not needed to find errors.
    callers("", &spec.access).map(|_| ())
}

/// Who may call a plugin in `namespace` with `access`; every problem is reported.
pub fn callers(namespace: &str, access: &AccessSpec) -> Result<Callers, Vec<AccessError>> {
    let mut errors = Vec::new();
    for (field, len) in [
        ("namespaces", access.namespaces.len()),
        ("serviceAccounts", access.service_accounts.len()),
    ] {
        if len > ACCESS_ENTRIES_MAX {
            errors.push(AccessError::TooMany { field, len });
        }
    }
    for (index, value) in access.namespaces.iter().enumerate() {
        if !is_dns1123_label(value) {
            errors.push(AccessError::Namespace {
                index,
                value: value.clone(),
            });
        }
    }
    for (index, value) in access.service_accounts.iter().enumerate() {
        if let Some(reason) = service_account_problem(value) {
            errors.push(AccessError::ServiceAccount {
                index,
                value: value.clone(),
                reason,
            });
        }
    }
    if access.open && (!access.namespaces.is_empty() || !access.service_accounts.is_empty()) {
        errors.push(AccessError::OpenWithList);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if access.open {
        return Ok(Callers::Open);
    }
    let listed: BTreeSet<&String> = access
        .namespaces
        .iter()
        .filter(|n| n.as_str() != namespace)
        .collect();
    let namespaces = std::iter::once(namespace.to_string())
        .chain(listed.into_iter().cloned())
        .collect();
    let service_accounts: BTreeSet<&String> = access.service_accounts.iter().collect();
    Ok(Callers::Only {
        namespaces,
        service_accounts: service_accounts.into_iter().cloned().collect(),
    })
}

impl Callers {
    /// The launcher's flags: TLS always; then either `--open`, or `--auth` with the
    /// allowlist, which always ends with the operator's own ServiceAccount (its prober must
    /// be able to call). An open plugin needs no entry for the operator: it admits anyone.
    pub fn launcher_args(&self, operator: &OperatorIdentity) -> Vec<String> {
        let mut args = vec!["--tls".to_string()];
        match self {
            Callers::Open => args.push("--open".into()),
            Callers::Only {
                namespaces,
                service_accounts,
            } => {
                args.push("--auth".into());
                args.extend(namespaces.iter().map(|n| format!("--allow-namespace={n}")));
                let own = operator.service_account_entry();
                args.extend(
                    service_accounts
                        .iter()
                        .filter(|s| **s != own)
                        .map(|s| format!("--allow-service-account={s}")),
                );
                args.push(format!("--allow-service-account={own}"));
            }
        }
        args
    }

    /// Namespaces whose Pods the NetworkPolicy lets connect (the operator's Pods aside):
    /// the allowed namespaces and those of the listed ServiceAccounts, own namespace first,
    /// then sorted, without repeats. `None` when anyone may connect.
    pub fn network_namespaces(&self) -> Option<Vec<String>> {
        let Callers::Only {
            namespaces,
            service_accounts,
        } = self
        else {
            return None;
        };
        let mut out: Vec<String> = namespaces.iter().take(1).cloned().collect();
        let rest: BTreeSet<&str> = namespaces
            .iter()
            .skip(1)
            .map(String::as_str)
            .chain(
                service_accounts
                    .iter()
                    .filter_map(|s| s.split_once('/').map(|(ns, _)| ns)),
            )
            .filter(|ns| out.first().map(String::as_str) != Some(*ns))
            .collect();
        out.extend(rest.into_iter().map(str::to_string));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator() -> OperatorIdentity {
        OperatorIdentity {
            namespace: "hector-system".into(),
            service_account: "hector-operator".into(),
            pod_labels: BTreeMap::from([("app".to_string(), "op".to_string())]),
        }
    }

    fn access(namespaces: &[&str], service_accounts: &[&str], open: bool) -> AccessSpec {
        AccessSpec {
            open,
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            service_accounts: service_accounts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn by_default_only_the_own_namespace_and_the_operator_may_call() {
        let c = callers("agents", &AccessSpec::default()).expect("valid");
        assert_eq!(
            c.launcher_args(&operator()),
            [
                "--tls",
                "--auth",
                "--allow-namespace=agents",
                "--allow-service-account=hector-system/hector-operator",
            ]
        );
        assert_eq!(c.network_namespaces(), Some(vec!["agents".to_string()]));
    }

    #[test]
    fn listed_callers_come_sorted_without_repeats_after_the_own_namespace() {
        let a = access(
            &["zeta", "agents", "alpha", "zeta"],
            &[
                "team-b/*",
                "team-a/bot",
                "team-b/*",
                "hector-system/hector-operator",
            ],
            false,
        );
        let c = callers("agents", &a).expect("valid");
        assert_eq!(
            c.launcher_args(&operator()),
            [
                "--tls",
                "--auth",
                "--allow-namespace=agents",
                "--allow-namespace=alpha",
                "--allow-namespace=zeta",
                "--allow-service-account=team-a/bot",
                "--allow-service-account=team-b/*",
                "--allow-service-account=hector-system/hector-operator",
            ]
        );
        assert_eq!(
            c.network_namespaces(),
            Some(
                [
                    "agents",
                    "alpha",
                    "hector-system",
                    "team-a",
                    "team-b",
                    "zeta"
                ]
                .map(String::from)
                .to_vec()
            )
        );
    }

    #[test]
    fn a_namespace_nobody_listed_is_never_let_in() {
        let a = access(&["alpha"], &["team-a/bot"], false);
        let c = callers("agents", &a).expect("valid");
        let args = c.launcher_args(&operator()).join(" ");
        for unlisted in ["beta", "default", "kube-system", "team-b"] {
            assert!(!args.contains(unlisted), "{unlisted} in {args}");
        }
        // A single ServiceAccount admits its namespace to the network only; the launcher
        // still admits only that account, never the whole namespace.
        assert!(!args.contains("--allow-namespace=team-a"), "{args}");
        let network = c.network_namespaces().expect("restricted");
        assert!(!network.iter().any(|n| n == "beta" || n == "default"));
    }

    #[test]
    fn open_admits_everyone_without_a_token_and_without_an_allowlist() {
        let c = callers("agents", &access(&[], &[], true)).expect("valid");
        assert_eq!(c, Callers::Open);
        assert_eq!(c.launcher_args(&operator()), ["--tls", "--open"]);
        assert_eq!(c.network_namespaces(), None);
    }

    #[test]
    fn invalid_entries_are_rejected_with_their_field_path() {
        let long = "a".repeat(64);
        let a = access(
            &["ok", "Team_A", "", &long, "-x"],
            &[
                "team-a/bot",
                "team-a",
                "Team/bot",
                "team-a/Bot",
                "team-a/",
                "/bot",
                "team-a/a/b",
                "team-a/*x",
            ],
            false,
        );
        let errors = callers("agents", &a).expect_err("invalid");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let at = |path: &str| text.iter().filter(|t| t.starts_with(path)).count();
        assert_eq!(at("spec.access.namespaces[0]"), 0, "{text:#?}");
        for i in 1..=4 {
            assert_eq!(
                at(&format!("spec.access.namespaces[{i}]: ")),
                1,
                "{text:#?}"
            );
        }
        assert_eq!(at("spec.access.serviceAccounts[0]"), 0, "{text:#?}");
        for i in 1..=7 {
            assert_eq!(
                at(&format!("spec.access.serviceAccounts[{i}]: ")),
                1,
                "{text:#?}"
            );
        }
        assert_eq!(errors.len(), 11);
        assert!(text[0].contains("\"Team_A\""), "{}", text[0]);
        assert!(text[0].contains("DNS-1123 label"), "{}", text[0]);
        assert!(
            text.iter()
                .any(|t| t.contains("\"team-a\"") && t.contains("no '/'")),
            "{text:#?}"
        );
    }

    #[test]
    fn open_with_lists_is_an_error_not_a_guess() {
        for a in [
            access(&["alpha"], &[], true),
            access(&[], &["team-a/bot"], true),
        ] {
            assert_eq!(callers("agents", &a), Err(vec![AccessError::OpenWithList]));
        }
        assert!(
            AccessError::OpenWithList
                .to_string()
                .starts_with("spec.access.open: ")
        );
    }

    #[test]
    fn too_long_lists_are_rejected() {
        let many: Vec<String> = (0..=ACCESS_ENTRIES_MAX)
            .map(|i| format!("ns-{i}"))
            .collect();
        let a = AccessSpec {
            namespaces: many,
            ..Default::default()
        };
        assert_eq!(
            callers("agents", &a),
            Err(vec![AccessError::TooMany {
                field: "namespaces",
                len: ACCESS_ENTRIES_MAX + 1
            }])
        );
    }

    #[test]
    fn the_rust_checks_agree_with_the_crd_patterns() {
        for good in ["a", "agents", "a-b", "0", &"a".repeat(63)] {
            assert!(is_dns1123_label(good), "{good:?}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad:?}");
        }
        for good in ["a", "a.b", "bot-1.team", &"a".repeat(253)] {
            assert!(is_dns1123_subdomain(good), "{good:?}");
        }
        for bad in ["", "a..b", ".a", "a.", "A", "a/b", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
    }

    #[test]
    fn endpoint_plugins_take_no_access_rules() {
        let mut spec: HectorPluginSpec = serde_norway::from_str(
            "manifest: {name: x, version: 1.0.0, type: llm_provider}\nendpoint: x.example.org:1",
        )
        .expect("spec");
        assert_eq!(check(&spec), Ok(()));
        spec.access.open = true;
        assert_eq!(check(&spec), Err(vec![AccessError::WithEndpoint]));
        spec.access.open = false;
        spec.access.namespaces = vec!["alpha".into()];
        assert_eq!(check(&spec), Err(vec![AccessError::WithEndpoint]));
    }
}
