//! The launcher's TLS: a key made in memory at start (it never touches a disk or a Secret),
//! a self-signed certificate naming the Pod (`urn:hector:pod:<uid>`), and the certificate's
//! SHA-256 fingerprint, which the operator learns and publishes so that agents pin it.
//!
//! A spliced connection is encrypted and decrypted on its two blocking threads
//! ([`TlsSocket`]), sharing one rustls connection under a lock, so TLS adds no hop to the
//! splice: the reading thread holds the lock only to decrypt what it has read, the writing
//! side only to encrypt what it writes.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustls::ServerConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The URI SAN prefix naming the Pod a launcher certificate belongs to.
pub const POD_URI_PREFIX: &str = "urn:hector:pod:";

/// This launcher's TLS identity.
pub struct Identity {
    /// Server configuration (ALPN `h2`).
    pub config: Arc<rustls::ServerConfig>,
    /// `sha256:<hex>` of the certificate.
    pub fingerprint: String,
}

/// Why no TLS identity could be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Key or certificate generation failed.
    #[error("cannot make the TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
}

impl Identity {
    /// A new key and a certificate naming `pod_uid` (when known).
    pub fn generate(pod_uid: Option<&str>) -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hector-plugin-launcher");
        if let Some(uid) = pod_uid {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
                    format!("{POD_URI_PREFIX}{uid}"),
                )?));
        }
        let cert = params.self_signed(&key)?;
        let der: CertificateDer<'static> = cert.der().clone();
        let fingerprint = fingerprint(&der);
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![der], private)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            fingerprint,
        })
    }
}

/// `sha256:` and the lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::from("sha256:");
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The first byte of a TLS handshake record: how a TLS client is told from a plaintext
/// HTTP/2 one (whose preface starts with `P`).
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// One end of a spliced TLS connection: the socket and the shared rustls state. Cloned for
/// the reading and the writing thread.
pub struct TlsSocket {
    socket: std::net::TcpStream,
    conn: Arc<Mutex<ServerConnection>>,
    /// Ciphertext read from the socket and not yet taken by rustls.
    pending: Vec<u8>,
}

impl TlsSocket {
    /// Wraps a connection whose handshake is done; plaintext rustls already decrypted is
    /// read first.
    pub fn new(socket: std::net::TcpStream, mut conn: ServerConnection) -> Self {
        // Writes go out whole, in the order the splice makes them.
        conn.set_buffer_limit(None);
        Self {
            socket,
            conn: Arc::new(Mutex::new(conn)),
            pending: Vec::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A second handle on the same connection.
    pub fn duplicate(&self) -> std::io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
            conn: self.conn.clone(),
            pending: Vec::new(),
        })
    }

    /// The socket, for its blocking mode and shutdown.
    pub fn socket(&self) -> &std::net::TcpStream {
        &self.socket
    }

    /// Sends TLS close_notify (what a TLS peer expects before the end of a stream).
    pub fn close_notify(&mut self) {
        let out = {
            let mut conn = self.lock();
            conn.send_close_notify();
            drain(&mut conn)
        };
        if let Ok(out) = out {
            let _ = self.socket.write_all(&out);
        }
    }
}

fn drain(conn: &mut ServerConnection) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

impl Read for TlsSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            {
                // The field, not `self.lock()`: `pending` is borrowed alongside.
                let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // The peer closed without close_notify: the end of the stream all the same.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if !self.pending.is_empty() {
                    let mut rest = &self.pending[..];
                    let taken = conn.read_tls(&mut rest);
                    let consumed = self.pending.len() - rest.len();
                    self.pending.drain(..consumed);
                    if let Err(e) = taken {
                        // rustls holds as much decrypted plaintext as it will: read that first.
                        if consumed == 0 {
                            return Err(e);
                        }
                    }
                    conn.process_new_packets()
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            // Blocked on the socket without the lock, so the other direction carries on.
            let mut raw = [0u8; 16 * 1024];
            let n = self.socket.read(&mut raw)?;
            if n == 0 {
                return Ok(0);
            }
            self.pending.extend_from_slice(&raw[..n]);
        }
    }
}

impl Write for TlsSocket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let out = {
            let mut conn = self.lock();
            conn.writer().write_all(buf)?;
            drain(&mut conn)?
        };
        self.socket.write_all(&out)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_names_the_pod_and_its_fingerprint_is_stable_hex() {
        let id = Identity::generate(Some("0c1e5d7a-uid")).expect("identity");
        assert!(id.fingerprint.starts_with("sha256:"));
        assert_eq!(id.fingerprint.len(), 7 + 64);
        assert!(
            id.fingerprint[7..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let other = Identity::generate(Some("0c1e5d7a-uid")).expect("identity");
        assert_ne!(
            id.fingerprint, other.fingerprint,
            "every launcher has its own key"
        );
        assert_eq!(id.config.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn fingerprint_is_sha256_of_the_der() {
        assert_eq!(
            fingerprint(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
