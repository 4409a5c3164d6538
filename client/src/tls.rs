//! How the client trusts a server: a CA file, a pinned certificate, or (for development) anything; and the server name sent as SNI.
//!
//! One rustls `ClientConfig` per ALPN (frames offer `ringgate/1`, the route
//! fetch `http/1.1`), built once and shared. IP endpoints are dialled at
//! their address while the name from the route (`sni`) is sent and verified,
//! which is what keeps DNS out of the path without giving up certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::Error;

/// ALPN of protocol v1 frames.
pub const ALPN_FRAMES: &[u8] = b"ringgate/1";
/// ALPN of the route endpoint.
pub const ALPN_HTTP: &[u8] = b"http/1.1";

/// Which server certificates are accepted.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// The certificates in a PEM file are the trust anchors (the server's
    /// own self-signed certificate works here, e.g. `ringgate-data/dev-cert.pem`).
    CaFile(PathBuf),
    /// Only a leaf certificate whose DER has this SHA-256 (32 bytes); the
    /// chain and name are not checked. Certificate pinning.
    PinSha256([u8; 32]),
    /// Accept any certificate (development only: no protection against a
    /// man in the middle).
    Insecure,
    /// No trust configured: every TLS connection fails with [`Error::Config`].
    #[default]
    Unset,
}

/// Builds the rustls client configuration for one ALPN protocol.
pub fn client_config(trust: &Trust, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let mut cfg = match trust {
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| Error::Config(format!("CA file {}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::PinSha256(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptIf { pin: Some(*fp), provider }))
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptIf { pin: None, provider }))
            .with_no_client_auth(),
        Trust::Unset => {
            return Err(Error::Config("no TLS trust configured: give a CA file (--ca), a pin, or --insecure".into()))
        }
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("CA file {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Config(format!("CA file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("CA file {}: no CERTIFICATE block", path.display())));
    }
    Ok(certs)
}

/// The server name to verify and send: a DNS name as SNI, or an IP address
/// (rustls sends no SNI for those and checks the IP in the certificate).
pub fn server_name(name: &str) -> Result<ServerName<'static>, Error> {
    let trimmed = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(trimmed.to_string()).map_err(|_| Error::Config(format!("{name:?} is not a valid TLS server name")))
}

/// Accepts a certificate whose leaf matches the pin, or any when unpinned
/// (`--insecure`). Handshake signatures are still verified, so the peer
/// must hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptIf {
    pin: Option<[u8; 32]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptIf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) => {
                let got = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity);
                if got.as_ref() == pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Parses a pin written as 64 hex digits, with or without colons.
pub fn parse_pin(s: &str) -> Result<[u8; 32], Error> {
    let clean: String = s.chars().filter(|c| *c != ':').collect();
    let v = hex::decode(&clean).map_err(|_| Error::Config(format!("pin {s:?} is not hex")))?;
    v.try_into().map_err(|_| Error::Config(format!("pin {s:?} is not 32 bytes")))
}
