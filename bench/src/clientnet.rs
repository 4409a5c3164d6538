//! Client-side transport: rustls client configuration for benchmarks, and bind-before-connect over many loopback source addresses.
//!
//! Why several source addresses: one (source IP, destination) pair has only
//! the ephemeral port range (~28,000 ports here) to give, and a handshake
//! benchmark leaves every closed connection in TIME_WAIT on the client side
//! for 60 s. Connection `i` binds to `127.0.0.{2 + i mod K}` with
//! `IP_BIND_ADDRESS_NO_PORT`, so the kernel picks the port at `connect`
//! time knowing the full 4-tuple and K addresses give K times the ports.
//!
//! Why certificate verification is off: the benchmark measures the server,
//! and the same client talks to ringgate, nginx and Mosquitto with
//! throwaway certificates. Signatures are not checked either (that would
//! only spend client CPU, the scarce side on two cores). The key exchange
//! is pinned to X25519 by default so every server does the same work
//! (nginx here links OpenSSL 3.0, which has no ML-KEM hybrid).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// Which key-exchange groups the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum Kx {
    /// X25519 only: the same work for every server under test.
    X25519,
    /// rustls' default list (X25519MLKEM768 first).
    Default,
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client config. `resumption`: keep tickets (in memory, per
/// config) so later connections resume; off means every handshake is full.
pub fn tls_config(alpn: &[&[u8]], resumption: bool, kx: Kx) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if kx == Kx::X25519 {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let provider = Arc::new(provider);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("aws-lc-rs provides TLS 1.3"));
    let mut cfg = builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg.resumption = if resumption {
        // Enough tickets for every connection of one thread to resume.
        rustls::client::Resumption::in_memory_sessions(4096)
    } else {
        rustls::client::Resumption::disabled()
    };
    Arc::new(cfg)
}

/// Loopback source address for connection `i` out of `count` addresses (127.0.0.2 upwards).
pub fn source_addr(i: u64, count: u32) -> Ipv4Addr {
    let n = (i % count.clamp(1, 250) as u64) as u8;
    Ipv4Addr::new(127, 0, 0, 2 + n)
}

/// Linux `IP_BIND_ADDRESS_NO_PORT` (not in every libc version we build against).
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// TCP connect from `src` (port chosen at connect time), Nagle off.
pub async fn connect_from(dst: SocketAddr, src: Ipv4Addr) -> io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    let one: libc::c_int = 1;
    // SAFETY: a valid fd we own and a c_int option value of the right size.
    let rc = unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    sock.bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))?;
    let s = sock.connect(dst).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A client connection, plain or TLS, as one type so connection sets can hold either.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// ringgate frames as WebSocket messages (`/v1/ws`) over a plain or TLS connection.
    Ws(Box<crate::wsclient::WsStream<Conn>>),
}

impl Conn {
    /// Whether a TLS handshake resumed a session (`None` for plain TCP).
    pub fn resumed(&self) -> Option<bool> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(t) => Some(matches!(t.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed))),
            Conn::Ws(w) => w.get_ref().resumed(),
        }
    }
}

/// Connects and, when `tls` is given, completes the TLS handshake.
pub async fn open(dst: SocketAddr, src: Ipv4Addr, tls: Option<&TlsConnector>) -> io::Result<Conn> {
    let tcp = connect_from(dst, src).await?;
    match tls {
        None => Ok(Conn::Plain(tcp)),
        Some(c) => {
            let name = ServerName::try_from("localhost").unwrap_or_else(|_| unreachable!("valid DNS name"));
            Ok(Conn::Tls(Box::new(c.connect(name, tcp).await?)))
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_cycle_from_127_0_0_2() {
        assert_eq!(source_addr(0, 16), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(15, 16), Ipv4Addr::new(127, 0, 0, 17));
        assert_eq!(source_addr(16, 16), Ipv4Addr::new(127, 0, 0, 2));
        // Clamped so the last octet never overflows past .251.
        assert_eq!(source_addr(249, 10_000), Ipv4Addr::new(127, 0, 0, 251));
        assert_eq!(source_addr(7, 0), Ipv4Addr::new(127, 0, 0, 2));
    }

    #[test]
    fn tls_config_offers_what_was_asked() {
        let c = tls_config(&[b"ringgate/1"], false, Kx::X25519);
        assert_eq!(c.alpn_protocols, vec![b"ringgate/1".to_vec()]);
        assert_eq!(c.crypto_provider().kx_groups.len(), 1);
        let d = tls_config(&[], true, Kx::Default);
        assert!(d.crypto_provider().kx_groups.len() > 1);
    }

    #[test]
    fn bind_before_connect_uses_the_source_address() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let dst = l.local_addr().unwrap();
            let c = connect_from(dst, Ipv4Addr::new(127, 0, 0, 5)).await.unwrap();
            let (_s, peer) = l.accept().await.unwrap();
            assert_eq!(peer.ip(), std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)));
            assert_eq!(c.local_addr().unwrap().ip(), peer.ip());
        });
    }
}
