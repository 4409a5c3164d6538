//! TLS server configuration: certificates from config or a generated development certificate, SNI choice, ALPN, resumption.
//!
//! Built at start, and again by each reload (`runtime::reload`), and shared
//! read-only (`Arc<ServerConfig>`) by every core; a connection keeps the
//! config it was accepted with. TLS 1.3 and 1.2 with aws-lc-rs (the fastest handshake provider
//! measured on this machine kind, see shared/MEASUREMENTS.md). ALPN offers
//! `ringgate/1` and `http/1.1` (the route endpoint); a client that offers no ALPN is served too, one that offers
//! only other protocols is refused by rustls with `no_application_protocol`.
//! Resumption: a bounded stateful session cache (TLS 1.2 and 1.3) and, when
//! enabled, stateless TLS 1.3 tickets, so a reconnect storm pays for far
//! fewer full handshakes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// The application protocol id of protocol v1.
pub const ALPN_V1: &[u8] = b"ringgate/1";
/// HTTP on the gateway port (route endpoint).
pub const ALPN_HTTP: &[u8] = b"http/1.1";
/// Stateful resumption entries kept (about 200 bytes each).
const SESSION_CACHE_ENTRIES: usize = 16 * 1024;

/// Why TLS could not be set up. Always the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("TLS private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("cannot write development certificate to {path}: {message}")]
    DevCert { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the server logs about each certificate it serves.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub path: PathBuf,
    /// SHA-256 of the leaf certificate's DER, colon-separated hex.
    pub sha256_fingerprint: String,
    /// True when ringgate generated it (development certificate).
    pub generated: bool,
    /// The SNI name it answers; None for the default certificate.
    pub server_name: Option<String>,
}

/// Chooses a certificate by SNI, falling back to the default one (clients
/// connecting by IP send no SNI).
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            if let Some(k) = self.by_name.get(&name.to_ascii_lowercase()) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// What outlives one `ServerConfig`: a reload builds a new config (new
/// certificates) around the same session cache and ticketer, so sessions
/// resumed before the reload still resume after it.
#[derive(Clone)]
pub struct Resumption {
    pub sessions: Arc<dyn rustls::server::StoresServerSessions>,
    /// Used when `tls.session_tickets` is on.
    pub ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

impl Resumption {
    /// A fresh session cache, and rustls' own per-process rotating
    /// ticketer unless a `ticketer` (from `tls.ticket_key_file`) is given.
    pub fn new(ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>) -> Result<Self, TlsError> {
        let ticketer = match ticketer {
            Some(t) => t,
            None => rustls::crypto::aws_lc_rs::Ticketer::new()?,
        };
        Ok(Resumption { sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES), ticketer })
    }
}

/// Builds the shared rustls server config and reports the certificates used.
pub fn build_server_config(cfg: &TlsConfig, data_dir: &Path) -> Result<(Arc<rustls::ServerConfig>, Vec<CertInfo>), TlsError> {
    build_server_config_with(cfg, data_dir, &Resumption::new(None)?)
}

/// [`build_server_config`] around an existing session cache and ticketer.
pub fn build_server_config_with(
    cfg: &TlsConfig,
    data_dir: &Path,
    resumption: &Resumption,
) -> Result<(Arc<rustls::ServerConfig>, Vec<CertInfo>), TlsError> {
    // AES-128-GCM-SHA256 first: as strong as needed for this traffic and
    // ~40 µs cheaper per handshake than the SHA-384 suite aws-lc-rs lists
    // first (the handshake flamegraph showed 16 % in SHA-512 code). The key
    // exchange keeps rustls' default preference (post-quantum hybrid first).
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    });
    let provider = Arc::new(provider);
    let mut infos = Vec::new();

    let (cert_path, key_path, generated) = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ => {
            let (c, k, made) = ensure_dev_cert(data_dir)?;
            (c, k, made)
        }
    };
    let (default, fp) = load_certified_key(&provider, &cert_path, &key_path)?;
    infos.push(CertInfo { path: cert_path, sha256_fingerprint: fp, generated, server_name: None });

    let mut by_name = HashMap::new();
    for sni in &cfg.certificates {
        let (k, fp) = load_certified_key(&provider, &sni.cert_file, &sni.key_file)?;
        let name = sni.server_name.to_ascii_lowercase();
        by_name.insert(name.clone(), k);
        infos.push(CertInfo { path: sni.cert_file.clone(), sha256_fingerprint: fp, generated: false, server_name: Some(name) });
    }

    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { default, by_name }));
    // Frames first; `http/1.1` for the route endpoint (and later the web
    // transports) on the same port.
    config.alpn_protocols = vec![ALPN_V1.to_vec(), ALPN_HTTP.to_vec()];
    // Our suite order, not the client's (clients list AES-256 first).
    config.ignore_client_order = true;
    // TLS 1.3 connections hand their traffic keys to our record layer once
    // the handshake is done (runtime::tls_record): ~8 KB less per connection.
    config.enable_secret_extraction = true;
    // ... and their traffic secrets, which only the key log hook gives up:
    // KeyUpdate derives the next keys from them (tls_record::SecretLog).
    config.key_log = Arc::new(crate::runtime::tls_record::SecretLog);
    config.session_storage = resumption.sessions.clone();
    if cfg.session_tickets {
        config.ticketer = resumption.ticketer.clone();
        // One ticket is enough for an IM client that holds one connection.
        config.send_tls13_tickets = 1;
    } else {
        config.send_tls13_tickets = 0;
    }
    Ok((Arc::new(config), infos))
}

/// Loads every configured certificate and key the way `serve` would, and
/// says what is wrong with each (for `config check`); generates nothing.
pub fn check_files(cfg: &TlsConfig) -> Vec<String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut errs = Vec::new();
    let mut pairs: Vec<(&Path, &Path)> = Vec::new();
    if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
        pairs.push((c, k));
    }
    for sni in &cfg.certificates {
        pairs.push((&sni.cert_file, &sni.key_file));
    }
    for (c, k) in pairs {
        if let Err(e) = load_certified_key(&provider, c, k) {
            errs.push(e.to_string());
        }
    }
    errs
}

fn load_certified_key(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, String), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Cert { path: cert.into(), message: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert { path: cert.into(), message: e.to_string() })?;
    let leaf = certs
        .first()
        .ok_or_else(|| TlsError::Cert { path: cert.into(), message: "no CERTIFICATE block in the file".into() })?;
    let fp = fingerprint(leaf);
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.into(), message: e.to_string() })?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key { path: key.into(), message: e.to_string() })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| TlsError::Key { path: key.into(), message: format!("does not match {}: {e}", cert.display()) })?;
    Ok((Arc::new(ck), fp))
}

/// SHA-256 over DER, as `AB:CD:...` (the form browsers and openssl show).
pub fn fingerprint(der: &[u8]) -> String {
    let d = Sha256::digest(der);
    d.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Returns the dev certificate paths, generating them on first start.
fn ensure_dev_cert(data_dir: &Path) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let cert = data_dir.join("dev-cert.pem");
    let key = data_dir.join("dev-key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key, false));
    }
    let err = |p: &Path, m: String| TlsError::DevCert { path: p.to_path_buf(), message: m };
    std::fs::create_dir_all(data_dir).map_err(|e| err(data_dir, e.to_string()))?;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    // rcgen's default key is ECDSA P-256: the cheapest handshake to sign.
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| err(&cert, e.to_string()))?;
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(&cert);
    crate::auth::write_private(&key, made.key_pair.serialize_pem().as_bytes()).map_err(|e| err(&key, e.to_string()))?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| err(&cert, e.to_string()))?;
    Ok((cert, key, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_generated_once() {
        let d = tempfile::tempdir().unwrap();
        let (_, infos) = build_server_config(&TlsConfig::default(), d.path()).unwrap();
        assert!(infos[0].generated);
        assert_eq!(infos[0].sha256_fingerprint.len(), 32 * 3 - 1);
        let (_, again) = build_server_config(&TlsConfig::default(), d.path()).unwrap();
        assert!(!again[0].generated);
        assert_eq!(infos[0].sha256_fingerprint, again[0].sha256_fingerprint);
    }

    #[test]
    fn missing_cert_is_named() {
        let d = tempfile::tempdir().unwrap();
        let cfg = TlsConfig { cert_file: Some(d.path().join("nope.pem")), key_file: Some(d.path().join("k.pem")), ..Default::default() };
        let e = build_server_config(&cfg, d.path()).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
    }
}
