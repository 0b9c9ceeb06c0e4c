//! TLS to plugins, trusted by pinning: a launcher serves a self-signed certificate whose key
//! it made in memory, the operator publishes the certificate's SHA-256 fingerprint, and a
//! client accepts exactly the published fingerprints. No CA and no server name is involved —
//! the pin is the trust — but the handshake's signatures are still verified, so a server must
//! hold the pinned certificate's key.
//!
//! [`Pin::Any`] is for learning a new Pod's fingerprint (the operator's prober): it accepts
//! any certificate, optionally only one whose URI SAN names the Pod ([`pod_uri`]), and
//! [`PinVerifier::accepted`] reports the fingerprint it accepted.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin as StdPin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, OtherError,
    SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How every fingerprint starts.
pub const FINGERPRINT_PREFIX: &str = "sha256:";
/// How the URI SAN naming a plugin Pod starts; the Pod's uid follows.
pub const POD_URI_PREFIX: &str = "urn:hector:pod:";
/// The only application protocol spoken: gRPC needs HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// `sha256:` and the lowercase hex SHA-256 of a certificate's DER bytes.
pub fn fingerprint(cert_der: &[u8]) -> String {
    format_digest(&sha256(cert_der))
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    out
}

/// A digest as `sha256:<hex>`.
pub fn format_digest(digest: &[u8; 32]) -> String {
    let mut text = String::with_capacity(FINGERPRINT_PREFIX.len() + 64);
    text.push_str(FINGERPRINT_PREFIX);
    for byte in digest {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A fingerprint that is not `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid certificate fingerprint {value:?}: {reason}")]
pub struct FingerprintError {
    /// The text as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses `sha256:<64 lowercase hex>` into the digest.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], FingerprintError> {
    let bad = |reason| FingerprintError {
        value: s.to_string(),
        reason,
    };
    let hex = s
        .strip_prefix(FINGERPRINT_PREFIX)
        .ok_or_else(|| bad("expected sha256: followed by 64 lowercase hex digits"))?;
    if hex.len() != 64 {
        return Err(bad("expected 64 hex digits after sha256:"));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(bad(
            "only lowercase hex digits (0-9, a-f) may follow sha256:",
        )),
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Ok(out)
}

/// The URI SAN a plugin Pod's certificate carries: `urn:hector:pod:<uid>`.
pub fn pod_uri(uid: &str) -> String {
    format!("{POD_URI_PREFIX}{uid}")
}

/// The URI names in a certificate's subject alternative names.
pub fn uri_names(cert_der: &[u8]) -> Result<Vec<String>, String> {
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| e.to_string())?;
    Ok(cert.valid_uri_names().map(str::to_string).collect())
}

/// Which server certificates are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Exactly those whose SHA-256 digest is in the set (an empty set accepts none).
    Fingerprints(BTreeSet<[u8; 32]>),
    /// Any certificate, to learn its fingerprint; with `expect_uri_san`, only one whose URI
    /// SAN equals it (e.g. [`pod_uri`] of the Pod meant to be at that address).
    Any {
        /// The URI SAN the certificate must carry.
        expect_uri_san: Option<String>,
    },
}

impl Pin {
    /// Pins the given `sha256:…` fingerprints; the first invalid one is an error.
    pub fn fingerprints<I, S>(values: I) -> Result<Self, FingerprintError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        values
            .into_iter()
            .map(|v| parse_fingerprint(v.as_ref()))
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Pin::Fingerprints)
    }
}

/// Why the pin check refused a server's certificate. It travels inside rustls's error;
/// [`refusal`] finds it again in a handshake or connection error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The fingerprint is not one of the pinned ones.
    #[error("certificate {seen} is not one of the pinned certificates")]
    NotPinned {
        /// The fingerprint the server presented.
        seen: String,
    },
    /// The certificate does not carry the expected URI SAN.
    #[error(
        "certificate {seen} does not name {expected} (its URI names: {})",
        if found.is_empty() { "none".to_string() } else { found.join(", ") }
    )]
    WrongIdentity {
        /// The fingerprint the server presented.
        seen: String,
        /// The URI SAN that was required.
        expected: String,
        /// The URI SANs it has.
        found: Vec<String>,
    },
    /// The certificate could not be parsed to read its names.
    #[error("certificate {seen} cannot be parsed: {reason}")]
    Malformed {
        /// The fingerprint the server presented.
        seen: String,
        /// The parser's reason.
        reason: String,
    },
}

impl Refusal {
    /// The fingerprint of the refused certificate.
    pub fn seen(&self) -> &str {
        match self {
            Refusal::NotPinned { seen }
            | Refusal::WrongIdentity { seen, .. }
            | Refusal::Malformed { seen, .. } => seen,
        }
    }
}

/// The pin check's refusal inside `error` or its causes: an `std::io::Error` from
/// tokio-rustls, a rustls error, or anything wrapping them (a tonic transport error).
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = refusal_here(e) {
            return Some(found);
        }
        // An io::Error's `source` skips the error it wraps, so that one is looked into above.
        next = e.source();
    }
    None
}

fn refusal_here(e: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    if let Some(r) = e.downcast_ref::<Refusal>() {
        return Some(r.clone());
    }
    let tls = match e.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref()?.downcast_ref::<TlsError>()?,
        None => e.downcast_ref::<TlsError>()?,
    };
    match tls {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<Refusal>().cloned()
        }
        _ => None,
    }
}

/// A rustls server-certificate verifier that trusts by [`Pin`] and verifies the handshake
/// signatures with ring. One verifier per Pod when learning, so that [`Self::accepted`] is
/// that Pod's.
#[derive(Debug)]
pub struct PinVerifier {
    pin: Pin,
    algorithms: WebPkiSupportedAlgorithms,
    accepted: Mutex<Option<String>>,
}

impl PinVerifier {
    /// A verifier accepting what `pin` allows.
    pub fn new(pin: Pin) -> Arc<Self> {
        Arc::new(Self {
            pin,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            accepted: Mutex::new(None),
        })
    }

    /// What it accepts.
    pub fn pin(&self) -> &Pin {
        &self.pin
    }

    /// The fingerprint of the last certificate accepted in a handshake whose signature
    /// verified (a server that merely sent someone else's certificate is not recorded).
    pub fn accepted(&self) -> Option<String> {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The certificate's fingerprint when the pin accepts it.
    fn check(&self, cert: &CertificateDer<'_>) -> Result<String, Refusal> {
        let digest = sha256(cert);
        let seen = format_digest(&digest);
        match &self.pin {
            Pin::Fingerprints(set) if set.contains(&digest) => Ok(seen),
            Pin::Fingerprints(_) => Err(Refusal::NotPinned { seen }),
            Pin::Any {
                expect_uri_san: None,
            } => Ok(seen),
            Pin::Any {
                expect_uri_san: Some(expected),
            } => match uri_names(cert) {
                Ok(found) if found.iter().any(|n| n == expected) => Ok(seen),
                Ok(found) => Err(Refusal::WrongIdentity {
                    seen,
                    expected: expected.clone(),
                    found,
                }),
                Err(reason) => Err(Refusal::Malformed { seen, reason }),
            },
        }
    }

    fn record(&self, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
        let seen = self.check(cert).map_err(refused)?;
        *self.accepted.lock().unwrap_or_else(PoisonError::into_inner) = Some(seen);
        Ok(())
    }
}

fn refused(r: Refusal) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        // The pin, not a name, identifies the server; Pods are reached by IP address.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        // A launcher's certificate lives as long as its process; the pin is withdrawn when
        // the Pod goes, so validity dates would add nothing.
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        self.check(end_entity).map_err(refused)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let valid = verify_tls12_signature(message, cert, dss, &self.algorithms)?;
        self.record(cert)?;
        Ok(valid)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let valid = verify_tls13_signature(message, cert, dss, &self.algorithms)?;
        self.record(cert)?;
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client configuration that accepts what `pin` allows, speaks `h2`, and never resumes a
/// session (a resumed session presents no certificate, so it would skip the pin check).
pub fn client_config(pin: Pin) -> Arc<ClientConfig> {
    client_config_for(PinVerifier::new(pin))
}

/// Like [`client_config`], with a verifier the caller keeps (to read
/// [`PinVerifier::accepted`]).
pub fn client_config_for(verifier: Arc<PinVerifier>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // Not reachable from any input: ring's provider has suites for both default versions.
        .expect("ring's provider supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Opens a TCP connection to `host:port` and runs the TLS handshake with `config`.
pub async fn connect(
    host: &str,
    port: u16,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // The socket options every plugin connection gets (no Nagle delay, TCP keepalive).
    let tcp = crate::net::TcpKeepalive::default()
        .connect(host, port, None)
        .await?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// A connector for tonic's `Endpoint::connect_with_connector(_lazy)`: TCP to the URI's host
/// and port, then pinned TLS. Give the endpoint an `http://` URI — the TLS is this
/// connector's, and tonic would otherwise want its own for `https://`.
#[derive(Clone, Debug)]
pub struct Connector {
    config: Arc<ClientConfig>,
}

impl Connector {
    /// A connector handshaking with `config` (see [`client_config`]).
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self { config }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = StdPin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{what} in URI {uri}"),
                )
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            connect(host, port, config).await.map(TokioIo::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_sha256_in_lowercase_hex_and_parse_back() {
        // SHA-256 of the empty input, a well-known value.
        let fp = fingerprint(b"");
        assert_eq!(
            fp,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let digest = parse_fingerprint(&fp).expect("parses");
        assert_eq!(digest[0], 0xe3);
        assert_eq!(digest[31], 0x55);
    }

    #[test]
    fn malformed_fingerprints_say_what_is_wrong() {
        let good = fingerprint(b"x");
        let cases = [
            (good.replace("sha256:", "sha1:"), "sha256:"),
            (good[..good.len() - 2].to_string(), "64 hex digits"),
            (
                good.to_uppercase().replace("SHA256:", "sha256:"),
                "lowercase",
            ),
            (good.replace(&good[7..9], "zz"), "lowercase hex"),
        ];
        for (bad, says) in cases {
            let err = parse_fingerprint(&bad).expect_err("refused");
            let text = err.to_string();
            assert!(text.contains(&bad) && text.contains(says), "{text}");
        }
        assert!(Pin::fingerprints([good.as_str(), "nope"]).is_err());
        let pin = Pin::fingerprints([good.as_str(), good.as_str()]).expect("valid");
        assert!(matches!(pin, Pin::Fingerprints(set) if set.len() == 1));
    }

    #[test]
    fn refusals_are_found_through_io_and_rustls_errors() {
        let r = Refusal::NotPinned {
            seen: fingerprint(b"x"),
        };
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, refused(r.clone()));
        assert_eq!(refusal(&io), Some(r.clone()));
        assert_eq!(refusal(&refused(r.clone())), Some(r));
        let other = std::io::Error::other("connection reset");
        assert_eq!(refusal(&other), None);
    }

    #[test]
    fn pod_uris_carry_the_uid() {
        assert_eq!(pod_uri("1234-ab"), "urn:hector:pod:1234-ab");
    }
}
