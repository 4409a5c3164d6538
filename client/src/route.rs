//! The route (HttpDNS-style): fetch `GET /v1/route`, verify its Ed25519 signature with the pinned key, and cache it by age.
//!
//! Why a signature and not just HTTPS: the route tells the client where to
//! send its token. A hijacked resolver, a captive portal or a rogue proxy
//! that can answer the route fetch could otherwise steer every client to
//! itself. The payload is signed as the exact string sent, so no canonical
//! JSON is needed on either side.
//!
//! [`RouteCache`] is sans-IO (time is passed in) and decides, from the age
//! of the copy it holds, whether to use it as is, use it and refresh in the
//! background, or refresh first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::server_name;
use crate::Error;

/// Largest route response read (headers and body together).
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// One access endpoint, in the order to try.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Endpoint {
    pub id: String,
    /// `tls`, `tcp`, `wss`, `ws`, `sse` or `lp`; this SDK dials `tls` and `tcp`.
    pub transport: String,
    #[serde(default)]
    pub host: Option<String>,
    /// An IP address to dial instead of resolving `host`.
    #[serde(default)]
    pub addr: Option<String>,
    pub port: u16,
    /// TLS server name; defaults to `host`.
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default = "default_weight")]
    pub weight: i64,
}

fn default_weight() -> i64 {
    100
}

impl Endpoint {
    /// A fallback endpoint from `HOST:PORT` (TLS; the host is also the server name).
    pub fn fallback(index: usize, host_port: &str) -> Result<Endpoint, Error> {
        let (host, port) = split_host_port(host_port)
            .ok_or_else(|| Error::Config(format!("endpoint {host_port:?} is not HOST:PORT")))?;
        Ok(Endpoint {
            id: format!("builtin-{index}"),
            transport: "tls".into(),
            host: Some(host.to_string()),
            addr: None,
            port,
            sni: None,
            priority: 0,
            weight: 100,
        })
    }

    /// What is dialled: `addr` when given, else `host`.
    pub fn dial_host(&self) -> &str {
        self.addr.as_deref().or(self.host.as_deref()).unwrap_or("")
    }

    /// The TLS server name: `sni`, else `host`, else the address.
    pub fn tls_name(&self) -> &str {
        self.sni.as_deref().or(self.host.as_deref()).unwrap_or_else(|| self.dial_host())
    }

    pub fn display(&self) -> String {
        format!("{} ({}://{}:{})", self.id, self.transport, self.dial_host(), self.port)
    }
}

/// `HOST:PORT` or `[V6]:PORT`.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse().ok()?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() {
        return None;
    }
    Some((h, port))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LadderPolicy {
    pub stagger_ms: u64,
    pub attempt_timeout_ms: u64,
}

impl Default for LadderPolicy {
    fn default() -> Self {
        LadderPolicy { stagger_ms: 3000, attempt_timeout_ms: 30_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BackoffPolicy {
    pub base_ms: u64,
    pub cap_ms: u64,
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy { base_ms: 500, cap_ms: 30_000, jitter: 0.5 }
    }
}

impl BackoffPolicy {
    /// Delay before reconnect number `attempt` (0-based): `base × 2^attempt`,
    /// capped, then reduced by up to `jitter` of itself (`r` in 0..1).
    pub fn delay(&self, attempt: u32, r: f64) -> Duration {
        let exp = self.base_ms.saturating_mul(1u64 << attempt.min(30)).min(self.cap_ms);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let ms = exp as f64 * (1.0 - jitter * r.clamp(0.0, 1.0));
        Duration::from_millis(ms as u64)
    }
}

/// The signed payload, parsed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Route {
    pub version: u32,
    pub issued_at_ms: u64,
    pub ttl_s: u64,
    pub refresh_ratio: f64,
    pub endpoints: Vec<Endpoint>,
    pub ladder: LadderPolicy,
    pub backoff: BackoffPolicy,
}

#[derive(Deserialize)]
struct Envelope {
    payload: String,
    sig: String,
    key_id: String,
}

/// `key_id`: hex of the first 8 bytes of SHA-256 of the raw public key.
pub fn key_id(public_key: &[u8; 32]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key);
    hex::encode(&d.as_ref()[..8])
}

/// Checks the envelope against the pinned public key and parses the payload.
/// Any mismatch is [`Error::RouteSignature`]: the answer did not come from
/// the operator's route service.
pub fn verify(body: &[u8], public_key: &[u8; 32]) -> Result<Route, Error> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| Error::RouteFormat(format!("envelope: {e}")))?;
    if env.key_id != key_id(public_key) {
        return Err(Error::RouteSignature(format!("key_id {} is not the pinned key's {}", env.key_id, key_id(public_key))));
    }
    let sig = STANDARD.decode(env.sig.as_bytes()).map_err(|_| Error::RouteSignature("sig is not base64".into()))?;
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, public_key)
        .verify(env.payload.as_bytes(), &sig)
        .map_err(|_| Error::RouteSignature("Ed25519 signature does not verify".into()))?;
    let route: Route = serde_json::from_str(&env.payload).map_err(|e| Error::RouteFormat(format!("payload: {e}")))?;
    if route.version != 1 {
        return Err(Error::RouteFormat(format!("payload version {} is not 1", route.version)));
    }
    Ok(route)
}

/// Parses a pinned route key: 64 hex characters (the raw 32 bytes).
pub fn parse_key(hex_key: &str) -> Result<[u8; 32], Error> {
    let v = hex::decode(hex_key.trim()).map_err(|_| Error::Config("route key is not hex".into()))?;
    v.try_into().map_err(|_| Error::Config("route key must be 32 bytes (64 hex characters)".into()))
}

/// What to do with the cached route now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Nothing cached.
    Empty,
    /// Younger than `refresh_ratio × ttl`: use it.
    Fresh,
    /// Between the refresh point and the TTL: use it, refresh in the background.
    Refresh,
    /// Past the TTL: refresh first; on failure use it anyway.
    Stale,
}

/// The cached route, aged from the client's own receive time (never the
/// server's `issued_at_ms`: client clocks are wrong too often).
#[derive(Debug, Default, Clone)]
pub struct RouteCache {
    held: Option<(Route, Instant)>,
}

impl RouteCache {
    pub fn store(&mut self, route: Route, received: Instant) {
        self.held = Some((route, received));
    }

    pub fn route(&self) -> Option<&Route> {
        self.held.as_ref().map(|(r, _)| r)
    }

    /// When a background refresh is due (`refresh_ratio × ttl` after receipt).
    pub fn refresh_at(&self) -> Option<Instant> {
        let (r, at) = self.held.as_ref()?;
        let ratio = if r.refresh_ratio > 0.0 && r.refresh_ratio <= 1.0 { r.refresh_ratio } else { 0.75 };
        Some(*at + Duration::from_secs_f64(r.ttl_s as f64 * ratio))
    }

    pub fn freshness(&self, now: Instant) -> Freshness {
        let Some((r, at)) = &self.held else { return Freshness::Empty };
        let age = now.saturating_duration_since(*at);
        if age >= Duration::from_secs(r.ttl_s) {
            Freshness::Stale
        } else if self.refresh_at().is_some_and(|t| now >= t) {
            Freshness::Refresh
        } else {
            Freshness::Fresh
        }
    }
}

/// A parsed `http(s)://host[:port][/path]` route URL.
#[derive(Debug, Clone)]
pub struct RouteUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl RouteUrl {
    pub fn parse(url: &str) -> Result<RouteUrl, Error> {
        let bad = || Error::Config(format!("route URL {url:?} is not http(s)://HOST[:PORT][/PATH]"));
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/route"),
        };
        let (host, port) = match split_host_port(authority) {
            Some((h, p)) if !authority.ends_with(']') => (h.to_string(), p),
            _ => (authority.trim_start_matches('[').trim_end_matches(']').to_string(), if https { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        let path = if path == "/" { "/v1/route".to_string() } else { path.to_string() };
        Ok(RouteUrl { https, host, port, path })
    }
}

/// Query parameters of one fetch.
#[derive(Debug, Default, Clone)]
pub struct RouteQuery {
    pub user: Option<String>,
    pub transports: Vec<String>,
    pub failed: Vec<String>,
}

fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

impl RouteQuery {
    fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(u) = &self.user {
            parts.push(format!("user={}", pct(u)));
        }
        if !self.transports.is_empty() {
            parts.push(format!("transports={}", self.transports.iter().map(|t| pct(t)).collect::<Vec<_>>().join(",")));
        }
        if !self.failed.is_empty() {
            parts.push(format!("failed={}", self.failed.iter().map(|t| pct(t)).collect::<Vec<_>>().join(",")));
        }
        parts.join("&")
    }
}

/// Fetches and verifies the route. `tls` must offer ALPN `http/1.1`.
pub async fn fetch(
    url: &RouteUrl,
    query: &RouteQuery,
    key: &[u8; 32],
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Route, Error> {
    let body = tokio::time::timeout(timeout, fetch_body(url, query, tls))
        .await
        .map_err(|_| Error::RouteFetch(format!("no answer from {}:{} within {timeout:?}", url.host, url.port)))??;
    verify(&body, key)
}

async fn fetch_body(url: &RouteUrl, query: &RouteQuery, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Vec<u8>, Error> {
    let fail = |m: String| Error::RouteFetch(format!("{}:{}: {m}", url.host, url.port));
    let addr = lookup(&url.host, url.port).await.map_err(|e| fail(e.to_string()))?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let q = query.to_query();
    let target = if q.is_empty() { url.path.clone() } else { format!("{}?{}", url.path, q) };
    let host_hdr = if url.host.contains(':') { format!("[{}]:{}", url.host, url.port) } else { format!("{}:{}", url.host, url.port) };
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {host_hdr}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: ringgate-client/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let raw = if url.https {
        let cfg = tls.ok_or_else(|| Error::Config("https route URL without TLS trust".into()))?;
        let name = server_name(&url.host)?;
        let mut s = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| fail(format!("TLS: {e}")))?;
        s.write_all(req.as_bytes()).await.map_err(|e| fail(e.to_string()))?;
        read_response(&mut s).await.map_err(|e| fail(e.to_string()))?
    } else {
        let mut s = tcp;
        s.write_all(req.as_bytes()).await.map_err(|e| fail(e.to_string()))?;
        read_response(&mut s).await.map_err(|e| fail(e.to_string()))?
    };
    parse_response(&raw).map_err(fail)
}

async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // Servers often skip close_notify; the Content-Length check decides.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other("route response too large"));
        }
        if response_complete(&buf) {
            return Ok(buf);
        }
    }
}

fn response_complete(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => content_length(r.headers).is_some_and(|len| buf.len() >= n + len),
        _ => false,
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
}

fn parse_response(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("connection closed before a complete response".into()),
        Err(e) => return Err(format!("bad HTTP response: {e}")),
    };
    let code = r.code.unwrap_or(0);
    let body = &raw[n..];
    let body = match content_length(r.headers) {
        Some(len) if body.len() >= len => &body[..len],
        Some(_) => return Err("response body shorter than Content-Length".into()),
        None => body,
    };
    if code != 200 {
        return Err(format!("HTTP {code}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
    }
    Ok(body.to_vec())
}

/// Resolves `host` (an IP literal needs no resolver).
pub async fn lookup(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ttl_s: u64) -> Route {
        Route {
            version: 1,
            issued_at_ms: 0,
            ttl_s,
            refresh_ratio: 0.75,
            endpoints: vec![],
            ladder: LadderPolicy::default(),
            backoff: BackoffPolicy::default(),
        }
    }

    #[test]
    fn cache_ages_from_receipt() {
        let t0 = Instant::now();
        let mut c = RouteCache::default();
        assert_eq!(c.freshness(t0), Freshness::Empty);
        c.store(route(100), t0);
        assert_eq!(c.freshness(t0 + Duration::from_secs(74)), Freshness::Fresh);
        assert_eq!(c.freshness(t0 + Duration::from_secs(75)), Freshness::Refresh);
        assert_eq!(c.freshness(t0 + Duration::from_secs(99)), Freshness::Refresh);
        assert_eq!(c.freshness(t0 + Duration::from_secs(100)), Freshness::Stale);
        assert_eq!(c.refresh_at(), Some(t0 + Duration::from_secs(75)));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = BackoffPolicy { base_ms: 500, cap_ms: 30_000, jitter: 0.5 };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(4000));
        assert_eq!(b.delay(20, 0.0), Duration::from_millis(30_000));
        assert_eq!(b.delay(20, 1.0), Duration::from_millis(15_000));
    }

    #[test]
    fn signature_is_checked() {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
        let payload = r#"{"version":1,"issued_at_ms":5,"ttl_s":60,"refresh_ratio":0.75,"endpoints":[{"id":"a","transport":"tls","host":"h","port":1}],"ladder":{"stagger_ms":10,"attempt_timeout_ms":20},"backoff":{"base_ms":1,"cap_ms":2,"jitter":0.5}}"#;
        let sig = STANDARD.encode(kp.sign(payload.as_bytes()).as_ref());
        let env = serde_json::json!({"payload": payload, "sig": sig, "key_id": key_id(&pk)}).to_string();
        let r = verify(env.as_bytes(), &pk).unwrap();
        assert_eq!(r.endpoints[0].id, "a");
        assert_eq!(r.endpoints[0].weight, 100);
        let tampered = env.replace("\\\"port\\\":1", "\\\"port\\\":2");
        assert_ne!(tampered, env);
        assert!(matches!(verify(tampered.as_bytes(), &pk), Err(Error::RouteSignature(_))));
        let mut other = pk;
        other[0] ^= 1;
        assert!(matches!(verify(env.as_bytes(), &other), Err(Error::RouteSignature(_))));
    }

    #[test]
    fn url_and_query() {
        let u = RouteUrl::parse("https://127.0.0.1:7443").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port, u.path.as_str()), (true, "127.0.0.1", 7443, "/v1/route"));
        let u = RouteUrl::parse("http://route.example/v1/route").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port), (false, "route.example", 80));
        assert!(RouteUrl::parse("ftp://x").is_err());
        let q = RouteQuery { user: Some("a b".into()), transports: vec!["tls".into()], failed: vec!["x".into(), "y".into()] };
        assert_eq!(q.to_query(), "user=a%20b&transports=tls&failed=x,y");
    }
}
