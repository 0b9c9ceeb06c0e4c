//! Shared by the access tests and the security benchmark: a local issuer that serves the
//! API server's OIDC discovery and JWKS paths with keys of its own and signs tokens, and a
//! TLS client pinned to one certificate fingerprint.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Channel, Endpoint};

/// The audience plugin tokens are for.
pub const AUDIENCE: &str = "hector.dev/plugins";
/// The issuer name the local issuer announces.
pub const ISSUER: &str = "https://issuer.test";

/// Signing keys and the JWKS the fake issuer serves (which may be changed while it runs).
pub struct Keys {
    keys: Vec<(String, EcdsaKeyPair)>,
    pub served: Mutex<usize>,
    pub fetches: Mutex<u32>,
}

impl Keys {
    pub fn new(kids: &[&str]) -> Arc<Self> {
        let rng = SystemRandom::new();
        let keys = kids
            .iter()
            .map(|kid| {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .expect("key");
                let key = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .expect("key");
                (kid.to_string(), key)
            })
            .collect();
        Arc::new(Self {
            keys,
            served: Mutex::new(1),
            fetches: Mutex::new(0),
        })
    }

    pub fn jwks(&self) -> String {
        let served = *self.served.lock().expect("lock");
        let keys: Vec<_> = self.keys[..served]
            .iter()
            .map(|(kid, key)| {
                let p = key.public_key().as_ref();
                serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                    "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])})
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    pub fn token(&self, key: usize, namespace: &str, name: &str, aud: &str, exp: i64) -> String {
        let (kid, pair) = &self.keys[key];
        let header = serde_json::json!({"alg": "ES256", "kid": kid});
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": [aud], "exp": exp, "iat": exp - 3600, "nbf": exp - 3600,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "u"}},
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = pair
            .sign(&SystemRandom::new(), signed.as_bytes())
            .expect("sign");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// An HTTPS server answering the API server's OIDC discovery and JWKS paths, only to a
/// bearer token. Returns its address and a directory with `token` and `ca.crt`.
pub async fn fake_issuer(keys: Arc<Keys>) -> (SocketAddr, tempfile::TempDir) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    params.is_ca = rcgen::IsCa::NoCa;
    let cert = params.self_signed(&key).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("ca.crt"), cert.pem()).expect("ca");
    std::fs::write(dir.path().join("token"), "api-token\n").expect("token");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let keys = keys.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let keys = keys.clone();
                        async move {
                            let authorized =
                                req.headers().get("authorization").map(|v| v.as_bytes())
                                    == Some(b"Bearer api-token");
                            // As the API server: the keys only to a client accepting their type.
                            let accepts_jwks = req.headers().get("accept").is_some_and(|v| {
                                v.to_str()
                                    .is_ok_and(|a| a.contains("application/jwk-set+json"))
                            });
                            let body = match (authorized, req.uri().path()) {
                            (false, _) => None,
                            (true, "/.well-known/openid-configuration") => Some(
                                serde_json::json!({"issuer": ISSUER, "jwks_uri": "https://elsewhere/jwks"})
                                    .to_string(),
                            ),
                            (true, "/openid/v1/jwks") if accepts_jwks => {
                                *keys.fetches.lock().expect("lock") += 1;
                                Some(keys.jwks())
                            }
                            _ => None,
                        };
                            let response = match body {
                                Some(b) => http::Response::new(axum::body::Body::from(b)),
                                None => http::Response::builder()
                                    .status(401)
                                    .body(axum::body::Body::empty())
                                    .expect("response"),
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, dir)
}

/// Accepts exactly the pinned certificate and remembers what it saw.
#[derive(Debug)]
pub struct Pinned {
    pin: String,
    pub seen: Mutex<Option<(String, Vec<u8>)>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        let seen = format!(
            "sha256:{}",
            digest
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        *self.seen.lock().expect("lock") = Some((seen.clone(), end_entity.to_vec()));
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate {seen} is not the pinned one"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS channel to `addr` pinned to `pin`.
pub async fn tls_channel(
    addr: &str,
    pin: &str,
) -> Result<(Channel, Arc<Pinned>), tonic::transport::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pinned = Arc::new(Pinned {
        pin: pin.to_string(),
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = addr.to_string();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("plugin").map_err(std::io::Error::other)?;
                let tls = connector.connect(name.to_owned(), tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await?;
    Ok((channel, pinned))
}

/// The fingerprint of the certificate `addr` presents, if it completes a TLS handshake.
pub async fn seen_fingerprint(addr: &str) -> Option<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pinned = Arc::new(Pinned {
        pin: String::new(),
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("plugin").ok()?.to_owned();
    let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    pinned.seen.lock().ok()?.clone().map(|s| s.0)
}
