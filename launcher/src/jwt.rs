//! Verification of Kubernetes ServiceAccount tokens (JWTs) against the issuer's public keys,
//! offline: no call to the API server per request. Only what the API server issues is
//! accepted: `RS256` with an RSA key or `ES256` with a P-256 key (the two key kinds
//! `--service-account-signing-key-file` takes), compact serialization, a `kid` naming a key
//! of the issuer's JWKS.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// Tolerated clock difference between the issuer and this Pod (the API server allows the same).
pub const LEEWAY_SECONDS: i64 = 60;

/// A ServiceAccount's identity, as the token's claims state it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount's name.
    pub service_account: String,
    /// The Pod the token is bound to, when it is bound to one.
    pub pod: Option<String>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)?;
        if let Some(pod) = &self.pod {
            write!(f, " (pod {pod})")?;
        }
        Ok(())
    }
}

/// Why a token is not accepted. The texts go back to the caller: they never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts with JSON header and claims.
    #[error("the bearer token is not a JWT ({0})")]
    Malformed(&'static str),
    /// An algorithm the API server does not sign with.
    #[error("the token's algorithm {0:?} is not accepted (RS256 or ES256)")]
    Algorithm(String),
    /// No key of the issuer has the token's key id.
    #[error(
        "the token was signed with key {0:?}, which the cluster's service-account issuer does not publish"
    )]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the token's signature does not verify against the cluster's service-account issuer")]
    Signature,
    /// Another issuer.
    #[error(
        "the token was issued by {found:?}, not by this cluster's service-account issuer {expected:?}"
    )]
    Issuer {
        /// Issuer in the token.
        found: String,
        /// This cluster's issuer.
        expected: String,
    },
    /// Not meant for plugins.
    #[error(
        "the token's audience is {found:?}; plugins accept only tokens for audience {expected:?}"
    )]
    Audience {
        /// Audiences in the token.
        found: Vec<String>,
        /// The audience plugins accept.
        expected: String,
    },
    /// Past its expiry.
    #[error("the token expired {0} s ago")]
    Expired(i64),
    /// Not valid yet.
    #[error("the token is not valid before a time {0} s from now")]
    NotYetValid(i64),
    /// Valid, but not a ServiceAccount's.
    #[error("the token does not name a ServiceAccount (subject {0:?})")]
    NotAServiceAccount(String),
}

/// One public key of the issuer.
#[derive(Clone, Debug)]
enum Key {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256 { point: Vec<u8> },
}

/// The issuer's identity and keys, by key id.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    issuer: String,
    keys: HashMap<String, Key>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl KeySet {
    /// Reads a JWKS document for `issuer`. Keys of kinds the API server never uses are
    /// skipped; a document with no usable key is an error.
    pub fn from_jwks(issuer: &str, jwks: &[u8]) -> Result<Self, String> {
        let doc: Jwks =
            serde_json::from_slice(jwks).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
        let b64 = |v: &Option<String>| v.as_deref().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
        let mut keys = HashMap::new();
        for jwk in doc.keys {
            let Some(kid) = jwk.kid.clone() else { continue };
            let key = match jwk.kty.as_str() {
                "RSA" => match (b64(&jwk.n), b64(&jwk.e)) {
                    (Some(n), Some(e)) => Key::Rsa { n, e },
                    _ => continue,
                },
                "EC" if jwk.crv.as_deref() == Some("P-256") => match (b64(&jwk.x), b64(&jwk.y)) {
                    (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                        let mut point = vec![4];
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        Key::P256 { point }
                    }
                    _ => continue,
                },
                _ => continue,
            };
            keys.insert(kid, key);
        }
        if keys.is_empty() {
            return Err("JWKS holds no RSA or P-256 key with a key id".into());
        }
        Ok(Self {
            issuer: issuer.to_string(),
            keys,
        })
    }

    /// The issuer these keys belong to.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Number of usable keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Checks `token` (signature, issuer, `audience`, validity at `now`, Unix seconds) and
    /// returns the ServiceAccount it names and its expiry.
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        now: i64,
    ) -> Result<(Caller, i64), TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three parts"));
        };
        let decode = |part: &str, what| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed(what))
        };
        let header: Header = serde_json::from_slice(&decode(h, "header is not base64url")?)
            .map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
        let signature = decode(s, "signature is not base64url")?;
        let kid = header.kid.unwrap_or_default();
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        let signed = &token.as_bytes()[..h.len() + 1 + c.len()];
        let verified = match (header.alg.as_str(), key) {
            ("RS256", Key::Rsa { n, e }) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &signature)
                .is_ok(),
            ("ES256", Key::P256 { point }) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed, &signature)
                    .is_ok()
            }
            (alg, _) if alg == "RS256" || alg == "ES256" => false,
            (alg, _) => return Err(TokenError::Algorithm(alg.chars().take(20).collect())),
        };
        if !verified {
            return Err(TokenError::Signature);
        }
        // Only now is what the claims say worth reading.
        let claims: Claims = serde_json::from_slice(&decode(c, "claims are not base64url")?)
            .map_err(|_| TokenError::Malformed("claims are not a JSON object"))?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer {
                found: claims.iss,
                expected: self.issuer.clone(),
            });
        }
        let audiences = claims.aud.into_vec();
        if !audiences.iter().any(|a| a == audience) {
            return Err(TokenError::Audience {
                found: audiences,
                expected: audience.to_string(),
            });
        }
        let exp = claims.exp.ok_or(TokenError::Malformed("no expiry"))?;
        if now > exp + LEEWAY_SECONDS {
            return Err(TokenError::Expired(now - exp));
        }
        if let Some(nbf) = claims.nbf
            && nbf > now + LEEWAY_SECONDS
        {
            return Err(TokenError::NotYetValid(nbf - now));
        }
        let caller = claims
            .kubernetes
            .and_then(|k| {
                let sa = k.serviceaccount?;
                Some(Caller {
                    namespace: k.namespace?,
                    service_account: sa.name?,
                    pod: k.pod.and_then(|p| p.name),
                })
            })
            .or_else(|| {
                // Legacy tokens carry the identity only in `sub`.
                let rest = claims.sub.strip_prefix("system:serviceaccount:")?;
                let (namespace, name) = rest.split_once(':')?;
                Some(Caller {
                    namespace: namespace.to_string(),
                    service_account: name.to_string(),
                    pod: None,
                })
            })
            .ok_or_else(|| {
                TokenError::NotAServiceAccount(claims.sub.chars().take(100).collect())
            })?;
        Ok((caller, exp))
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

/// `aud` is a string or a list of strings.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl Audience {
    fn into_vec(self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a],
            Audience::Many(v) => v,
            Audience::None => Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<Named>,
    pod: Option<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    /// A test issuer with a P-256 key that signs tokens.
    pub struct TestIssuer {
        pub issuer: String,
        pub kid: String,
        key: EcdsaKeyPair,
    }

    impl TestIssuer {
        pub fn new(kid: &str) -> Self {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("key generation");
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .expect("key");
            Self {
                issuer: "https://kubernetes.default.svc.cluster.local".into(),
                kid: kid.into(),
                key,
            }
        }

        pub fn jwks(&self) -> String {
            let point = self.key.public_key().as_ref();
            serde_json::json!({"keys": [{
                "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }]})
            .to_string()
        }

        pub fn sign(&self, claims: &serde_json::Value) -> String {
            let header = serde_json::json!({"alg": "ES256", "kid": self.kid});
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let sig = self
                .key
                .sign(&SystemRandom::new(), signed.as_bytes())
                .expect("sign");
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }

        /// A token for `namespace/name`, audience `aud`, expiring at `exp`.
        pub fn token(&self, namespace: &str, name: &str, aud: &str, exp: i64) -> String {
            self.sign(&serde_json::json!({
                "iss": self.issuer, "aud": [aud], "exp": exp, "iat": exp - 3600, "nbf": exp - 3600,
                "sub": format!("system:serviceaccount:{namespace}:{name}"),
                "kubernetes.io": {
                    "namespace": namespace,
                    "serviceaccount": {"name": name, "uid": "u"},
                    "pod": {"name": "agent-0", "uid": "p"},
                },
            }))
        }

        pub fn keys(&self) -> KeySet {
            KeySet::from_jwks(&self.issuer, self.jwks().as_bytes()).expect("jwks")
        }
    }

    const AUD: &str = "hector.dev/plugins";
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_valid_token_names_its_service_account_and_pod() {
        let issuer = TestIssuer::new("k1");
        let token = issuer.token("agents", "planner", AUD, NOW + 600);
        let (caller, exp) = issuer.keys().verify(&token, AUD, NOW).expect("valid");
        assert_eq!(exp, NOW + 600);
        assert_eq!(caller.to_string(), "agents/planner (pod agent-0)");
    }

    #[test]
    fn every_wrong_token_is_refused_for_its_own_reason() {
        let issuer = TestIssuer::new("k1");
        let keys = issuer.keys();
        let other = TestIssuer::new("k1");
        let cases = [
            (issuer.token("a", "b", "other", NOW + 600), "audience"),
            (
                issuer.token("a", "b", AUD, NOW - 3600),
                "expired 3600 s ago",
            ),
            (
                other.token("a", "b", AUD, NOW + 600),
                "signature does not verify",
            ),
            (
                TestIssuer::new("k2").token("a", "b", AUD, NOW + 600),
                "key \"k2\"",
            ),
            ("abc".to_string(), "not a JWT"),
            ("a.b.c".to_string(), "not a JWT"),
        ];
        for (token, expected) in cases {
            let err = keys
                .verify(&token, AUD, NOW)
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected), "{err} should contain {expected}");
            assert!(!err.contains(&token), "the token is never quoted");
        }
        let foreign = issuer.sign(&serde_json::json!({
            "iss": "https://elsewhere", "aud": AUD, "exp": NOW + 600,
            "sub": "system:serviceaccount:a:b"}));
        assert!(matches!(
            keys.verify(&foreign, AUD, NOW),
            Err(TokenError::Issuer { .. })
        ));
        let user = issuer.sign(&serde_json::json!({
            "iss": issuer.issuer, "aud": AUD, "exp": NOW + 600, "sub": "alice"}));
        assert!(matches!(
            keys.verify(&user, AUD, NOW),
            Err(TokenError::NotAServiceAccount(_))
        ));
        // Within the leeway an expired token still passes; a signature from "none" never does.
        assert!(
            keys.verify(&issuer.token("a", "b", AUD, NOW - 30), AUD, NOW)
                .is_ok()
        );
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"iss":"x"}"#)
        );
        assert!(matches!(
            keys.verify(&none, AUD, NOW),
            Err(TokenError::Algorithm(_))
        ));
    }

    #[test]
    fn jwks_without_usable_keys_is_an_error() {
        assert!(KeySet::from_jwks("i", br#"{"keys":[{"kty":"oct","kid":"x"}]}"#).is_err());
        assert!(KeySet::from_jwks("i", b"nope").is_err());
    }
}
