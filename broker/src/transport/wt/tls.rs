//! The QUIC listener's certificate: PEM files from `[quic]`, or with `--dev` a
//! self-signed ECDSA P-256 certificate valid for 13 days (browsers accept such a one
//! through `serverCertificateHashes` only when it lives less than 14 days), and the
//! rustls and quinn configuration built on it.
//!
//! The development certificate is kept in `data_dir` (`dev-cert.pem`, `dev-key.pem`,
//! 0600) and reused for 12 days, so a page keeps its certificate hash across restarts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use super::config::QuicConfig;

/// How long a development certificate lives (under the browsers' 14 days).
const DEV_CERT_DAYS: i64 = 13;
/// A kept development certificate older than this is replaced (a day before it ends).
const DEV_CERT_REUSE: Duration = Duration::from_secs(12 * 86_400);
const DEV_CERT_FILE: &str = "dev-cert.pem";
const DEV_KEY_FILE: &str = "dev-key.pem";

/// Why the QUIC listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read quic.cert_file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read quic.key_file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("cannot make a development certificate: {0}")]
    Generate(String),
    #[error("cannot keep the development certificate in {path}: {reason}")]
    Keep { path: String, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    Files,
    /// Self-signed at start-up (`--dev`).
    DevSelfSigned,
}

/// A certificate chain and its key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub source: CertSource,
}

impl std::fmt::Debug for Identity {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The configured files; with none, a development certificate when `dev` (kept in
    /// `data_dir` when there is one), else `None`.
    pub fn load(
        config: &QuicConfig,
        dev: bool,
        data_dir: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        if !config.cert_file.is_empty() {
            return Self::from_files(&config.cert_file, &config.key_file).map(Some);
        }
        match (dev, data_dir) {
            (false, _) => Ok(None),
            (true, None) => Self::self_signed().map(|(identity, _)| Some(identity)),
            (true, Some(dir)) => Self::kept_dev(dir).map(Some),
        }
    }

    /// The development certificate kept in `dir`, or a new one written there.
    fn kept_dev(dir: &Path) -> Result<Self, TlsError> {
        let (cert, key) = (dir.join(DEV_CERT_FILE), dir.join(DEV_KEY_FILE));
        let fresh = std::fs::metadata(&cert)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < DEV_CERT_REUSE);
        if fresh && key.exists() {
            let kept = Self::from_files(&cert.to_string_lossy(), &key.to_string_lossy());
            if let Ok(mut identity) = kept {
                identity.source = CertSource::DevSelfSigned;
                return Ok(identity);
            }
        }
        let (identity, (cert_pem, key_pem)) = Self::self_signed()?;
        let keep = |e: std::io::Error| TlsError::Keep {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(keep)?;
        write_private(&key, key_pem.as_bytes()).map_err(keep)?;
        write_private(&cert, cert_pem.as_bytes()).map_err(keep)?;
        Ok(identity)
    }

    fn from_files(cert: &str, key: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Cert {
                path: cert.into(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Cert {
                path: cert.into(),
                reason: "no CERTIFICATE block in it".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            chain,
            key,
            source: CertSource::Files,
        })
    }

    /// ECDSA P-256, for `localhost` and 127.0.0.1, from an hour ago for 13 days; with
    /// its PEM (certificate, key).
    pub fn self_signed() -> Result<(Self, (String, String)), TlsError> {
        let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(generate)?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(DEV_CERT_DAYS);
        let cert = params.self_signed(&key).map_err(generate)?;
        let pem = (cert.pem(), key.serialize_pem());
        let identity = Self {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            source: CertSource::DevSelfSigned,
        };
        Ok((identity, pem))
    }

    /// SHA-256 of the leaf certificate, what `serverCertificateHashes` takes.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.chain[0]).into()
    }

    /// The QUIC server configuration: TLS 1.3 with ALPN `h3`, 0-RTT only when asked,
    /// and the `[quic]` limits.
    pub fn server_config(&self, config: &QuicConfig) -> Result<quinn::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![web_transport_quinn::ALPN.as_bytes().to_vec()];
        tls.max_early_data_size = if config.zero_rtt { u32::MAX } else { 0 };
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(config)));
        server.max_incoming(config.max_pending_handshakes as usize);
        Ok(server)
    }
}

/// The `[quic]` limits as quinn's transport parameters.
fn transport_config(config: &QuicConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(config.max_bidi_streams.into())
        .max_concurrent_uni_streams(config.max_uni_streams.into())
        .stream_receive_window(config.stream_window_bytes.into())
        .receive_window(config.connection_window_bytes.into())
        .max_idle_timeout(
            quinn::IdleTimeout::try_from(Duration::from_millis(config.idle_timeout_ms)).ok(),
        )
        .keep_alive_interval(
            (config.keep_alive_ms > 0).then(|| Duration::from_millis(config.keep_alive_ms)),
        )
        // Ask clients that can (the ACK frequency extension) to acknowledge every 8th
        // packet or after 25 ms, not every second one: fan-out sends far more than it
        // receives, and each acknowledgement is a datagram to read and decrypt.
        .ack_frequency_config(Some(ack_frequency()))
        .mtu_discovery_config(Some(mtu_discovery(config.max_udp_payload_bytes)))
        // Client datagrams are not part of protocol v1: a small buffer, never read.
        .datagram_receive_buffer_size(Some(4 << 10))
        .datagram_send_buffer_size(config.datagram_send_buffer_bytes);
    t
}

/// Path MTU discovery up to `upper` bytes of UDP payload (paths that take less are found
/// by probing; loopback and jumbo-frame networks take more, so fewer packets carry a
/// burst).
pub fn mtu_discovery(upper: u16) -> quinn::MtuDiscoveryConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(upper);
    mtu
}

fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(7u32.into())
        .max_ack_delay(Some(Duration::from_millis(25)));
    ack
}

/// Writes a file only its owner can read, replacing what was there.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// Lower-case hex, as `/dev/cert-hash` serves it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
