//! Who may call the plugin: the caller's ServiceAccount, proven by a projected token
//! (audience [`AUDIENCE`]) in the `authorization` header, checked against the plugin's
//! allowlist. Tokens are verified offline against the issuer's keys ([`crate::issuer`]); a
//! verified token is remembered until it expires, so a caller pays for the signature check
//! once per token, not once per call.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::issuer::{Issuer, MIN_REFRESH_GAP};
use crate::jwt::{Caller, TokenError};

/// Whether a call needs no caller check: `grpc.health.v1` stays open, as the kubelet's probe
/// sends no token (on a spliced connection such a call reaches the plugin's own health
/// service, which tells nothing but whether it serves).
pub fn is_open_path(path: &[u8]) -> bool {
    path.starts_with(b"/grpc.health.v1.Health/")
}

/// The audience plugin tokens are issued for.
pub const AUDIENCE: &str = "hector.dev/plugins";
/// Verified tokens remembered at most; beyond it the memory is cleared and refilled.
const MAX_REMEMBERED: usize = 4096;

/// The allowlist: namespaces whose every ServiceAccount may call, and single accounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    namespaces: BTreeSet<String>,
    accounts: BTreeSet<(String, String)>,
}

impl Allowlist {
    /// Builds the list from `--allow-namespace` values and `--allow-service-account`
    /// values (`namespace/name` or `namespace/*`).
    pub fn new(namespaces: &[String], accounts: &[String]) -> Result<Self, String> {
        let mut list = Self::default();
        for ns in namespaces {
            if ns.is_empty() || ns.contains('/') {
                return Err(format!("--allow-namespace {ns:?}: not a namespace name"));
            }
            list.namespaces.insert(ns.clone());
        }
        for account in accounts {
            match account.split_once('/') {
                Some((ns, "*")) if !ns.is_empty() => {
                    list.namespaces.insert(ns.to_string());
                }
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    list.accounts.insert((ns.to_string(), name.to_string()));
                }
                _ => {
                    return Err(format!(
                        "--allow-service-account {account:?}: expected NAMESPACE/NAME or NAMESPACE/*"
                    ));
                }
            }
        }
        Ok(list)
    }

    /// Whether `caller` is on the list.
    pub fn allows(&self, caller: &Caller) -> bool {
        self.namespaces.contains(&caller.namespace)
            || self
                .accounts
                .contains(&(caller.namespace.clone(), caller.service_account.clone()))
    }

    /// The rule, as a refused caller is told it.
    pub fn describe(&self) -> String {
        let namespaces: Vec<&str> = self.namespaces.iter().map(String::as_str).collect();
        let accounts: Vec<String> = self
            .accounts
            .iter()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect();
        format!(
            "this plugin admits ServiceAccounts of namespaces [{}] and the ServiceAccounts [{}] (HectorPlugin spec.access)",
            namespaces.join(", "),
            accounts.join(", ")
        )
    }
}

/// Why a call is not admitted, with the gRPC code it is answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No token, or one that does not verify: `UNAUTHENTICATED`.
    Unauthenticated(String),
    /// A valid caller who is not on the list: `PERMISSION_DENIED`.
    NotAllowed(String),
    /// Tokens cannot be checked yet (the issuer's keys are not loaded): `UNAVAILABLE`.
    Unavailable(String),
}

/// Checks callers for one launcher.
pub struct Authenticator {
    allow: Allowlist,
    issuer: Arc<Issuer>,
    verified: Mutex<HashMap<Arc<str>, (Caller, i64)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the remembered tokens.
        f.debug_struct("Authenticator")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

/// The result of a check that may need the issuer's keys refreshed first.
enum Checked {
    Done(Result<Caller, Denial>),
    UnknownKey,
}

impl Authenticator {
    /// Checks callers against `allow` with keys from `issuer`.
    pub fn new(allow: Allowlist, issuer: Arc<Issuer>) -> Arc<Self> {
        Arc::new(Self {
            allow,
            issuer,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Admits or refuses the request whose `authorization` header is `header`, from a
    /// thread outside the runtime; may wait for a key refresh.
    pub fn admit_blocking(&self, header: Option<&[u8]>) -> Result<Caller, Denial> {
        match self.check(header) {
            Checked::Done(r) => r,
            Checked::UnknownKey => {
                self.issuer.refresh_blocking();
                self.after_refresh(header)
            }
        }
    }

    /// [`Authenticator::admit_blocking`] on the runtime.
    pub async fn admit(&self, header: Option<&[u8]>) -> Result<Caller, Denial> {
        match self.check(header) {
            Checked::Done(r) => r,
            Checked::UnknownKey => {
                self.issuer.refresh(MIN_REFRESH_GAP).await;
                self.after_refresh(header)
            }
        }
    }

    fn after_refresh(&self, header: Option<&[u8]>) -> Result<Caller, Denial> {
        match self.check(header) {
            Checked::Done(r) => r,
            Checked::UnknownKey => Err(self.unknown_key(header)),
        }
    }

    fn unknown_key(&self, header: Option<&[u8]>) -> Denial {
        let kid = header
            .and_then(bearer)
            .and_then(|t| self.issuer.keys()?.verify(t, AUDIENCE, now()).err())
            .map_or_else(String::new, |e| e.to_string());
        Denial::Unauthenticated(format!("invalid token: {kid}"))
    }

    fn check(&self, header: Option<&[u8]>) -> Checked {
        let Some(header) = header else {
            return Checked::Done(Err(Denial::Unauthenticated(format!(
                "this plugin needs the caller's ServiceAccount token (audience {AUDIENCE}) as \
                 `authorization: Bearer …`; the call carried none"
            ))));
        };
        let Some(token) = bearer(header) else {
            return Checked::Done(Err(Denial::Unauthenticated(
                "the authorization header is not `Bearer <token>`".into(),
            )));
        };
        let now = now();
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        let caller = match remembered {
            Some((caller, exp)) if now <= exp + crate::jwt::LEEWAY_SECONDS => caller,
            _ => {
                let Some(keys) = self.issuer.keys() else {
                    let why = self
                        .issuer
                        .last_error()
                        .unwrap_or_else(|| "not fetched yet".into());
                    return Checked::Done(Err(Denial::Unavailable(format!(
                        "the launcher cannot check tokens yet: the cluster's service-account \
                         issuer keys are not loaded ({why})"
                    ))));
                };
                match keys.verify(token, AUDIENCE, now) {
                    Ok((caller, exp)) => {
                        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                        if verified.len() >= MAX_REMEMBERED {
                            verified.clear();
                        }
                        verified.insert(Arc::from(token), (caller.clone(), exp));
                        caller
                    }
                    Err(TokenError::UnknownKey(_)) => return Checked::UnknownKey,
                    Err(e) => {
                        return Checked::Done(Err(Denial::Unauthenticated(format!(
                            "invalid token: {e}"
                        ))));
                    }
                }
            }
        };
        Checked::Done(if self.allow.allows(&caller) {
            Ok(caller)
        } else {
            Err(Denial::NotAllowed(format!(
                "caller {caller} is not allowed: {}",
                self.allow.describe()
            )))
        })
    }
}

/// The token of a `Bearer` header value.
fn bearer(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::Source;
    use crate::jwt::tests::TestIssuer;

    fn source() -> Source {
        Source {
            server: "https://127.0.0.1:1".parse().expect("uri"),
            credentials: "/nonexistent".into(),
        }
    }

    fn later() -> i64 {
        now() + 3600
    }

    #[tokio::test]
    async fn the_list_admits_its_namespaces_and_accounts_and_no_one_else() {
        let test = TestIssuer::new("k");
        let allow = Allowlist::new(
            &["team-a".into()],
            &["agents/planner".into(), "batch/*".into()],
        )
        .expect("valid list");
        let auth = Authenticator::new(allow, Issuer::with_keys(source(), test.keys()));
        let bearer =
            |ns: &str, sa: &str| format!("Bearer {}", test.token(ns, sa, AUDIENCE, later()));
        for (ns, sa) in [("team-a", "x"), ("agents", "planner"), ("batch", "any")] {
            let caller = auth.admit(Some(bearer(ns, sa).as_bytes())).await;
            assert_eq!(caller.map(|c| c.namespace), Ok(ns.to_string()));
        }
        for (ns, sa) in [("agents", "writer"), ("team-b", "x"), ("team-a-2", "x")] {
            let denied = auth.admit(Some(bearer(ns, sa).as_bytes())).await;
            let Err(Denial::NotAllowed(message)) = denied else {
                panic!("{ns}/{sa} must be refused: {denied:?}")
            };
            assert!(message.contains(&format!("caller {ns}/{sa}")), "{message}");
            assert!(message.contains("namespaces [batch, team-a]"), "{message}");
        }
    }

    #[tokio::test]
    async fn missing_and_invalid_tokens_are_unauthenticated() {
        let test = TestIssuer::new("k");
        let allow = Allowlist::new(&["a".into()], &[]).expect("list");
        let auth = Authenticator::new(allow, Issuer::with_keys(source(), test.keys()));
        for header in [
            None,
            Some("Basic abc".to_string()),
            Some("Bearer ".to_string()),
            Some(format!("Bearer {}", test.token("a", "b", "other", later()))),
            Some(format!(
                "Bearer {}",
                test.token("a", "b", AUDIENCE, now() - 7200)
            )),
        ] {
            let denied = auth.admit(header.as_deref().map(str::as_bytes)).await;
            assert!(
                matches!(denied, Err(Denial::Unauthenticated(_))),
                "{header:?}: {denied:?}"
            );
        }
    }

    #[tokio::test]
    async fn no_keys_means_unavailable_not_admitted() {
        let allow = Allowlist::new(&["a".into()], &[]).expect("list");
        let auth = Authenticator::new(allow, Issuer::new(source()));
        let token = TestIssuer::new("k").token("a", "b", AUDIENCE, later());
        let denied = auth.admit(Some(format!("Bearer {token}").as_bytes())).await;
        assert!(matches!(denied, Err(Denial::Unavailable(_))), "{denied:?}");
    }

    #[test]
    fn bad_list_entries_are_rejected() {
        assert!(Allowlist::new(&["a/b".into()], &[]).is_err());
        assert!(Allowlist::new(&[], &["justname".into()]).is_err());
        assert!(Allowlist::new(&[], &["/x".into()]).is_err());
        assert!(Allowlist::new(&[], &["a/b/c".into()]).is_err());
    }
}
