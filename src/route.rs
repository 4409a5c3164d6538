//! The route endpoint's logic (`GET /v1/route`, WEB.md): the signing key, the signed payload, endpoint order and the decaying failure feedback that demotes endpoints.
//!
//! Sans-IO: [`RouteService::answer`] takes the request's query and `Host`
//! and the time, and returns the response body; the HTTP glue
//! (`runtime::gate_http`) only moves bytes. Feedback is kept for the whole
//! node behind one mutex: route requests are rare (one per client per
//! 0.75 × TTL) next to frames, so a lock here costs nothing that matters,
//! and one view across cores is what the contract asks for.
//!
//! Why Ed25519 over the payload string: a client that fetched the route
//! through a hijacked resolver or a rogue proxy must be able to tell, and
//! signing the exact string avoids any canonical-JSON agreement.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;

use crate::config::{RouteConfig, RouteEndpoint};

/// Why the route service could not start. Always the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route signing key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The Ed25519 key that signs route payloads.
pub struct RouteKey {
    pair: Ed25519KeyPair,
    pub public: [u8; 32],
    pub path: PathBuf,
    /// True when this start created it.
    pub created: bool,
}

impl std::fmt::Debug for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteKey").field("public", &self.public_hex()).field("path", &self.path).finish()
    }
}

impl RouteKey {
    /// Hex of the raw 32-byte public key (what clients pin).
    pub fn public_hex(&self) -> String {
        hex::encode(self.public)
    }
    /// Hex of the first 8 bytes of SHA-256 of the raw public key.
    pub fn key_id(&self) -> String {
        key_id(&self.public)
    }
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

pub fn key_id(public: &[u8; 32]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
    hex::encode(&d.as_ref()[..8])
}

/// Where the key lives: the configured file, else `<data_dir>/route-key.pem`.
pub fn key_path(cfg: &RouteConfig, data_dir: &Path) -> (PathBuf, bool) {
    match &cfg.signing_key_file {
        Some(p) => (p.clone(), false),
        None => (data_dir.join("route-key.pem"), true),
    }
}

/// Reads a PKCS#8 PEM Ed25519 key (v1, as `openssl genpkey` writes, or v2).
pub fn read_key(path: &Path) -> Result<RouteKey, RouteError> {
    use rustls::pki_types::pem::PemObject;
    let err = |m: String| RouteError::Key { path: path.to_path_buf(), message: m };
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| err(e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der())
        .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()))
        .map_err(|e| err(format!("not an Ed25519 PKCS#8 key: {e}")))?;
    let public: [u8; 32] = pair.public_key().as_ref().try_into().map_err(|_| err("public key is not 32 bytes".into()))?;
    Ok(RouteKey { pair, public, path: path.to_path_buf(), created: false })
}

/// Loads the signing key, creating `<data_dir>/route-key.pem` on first
/// start when none is configured (a configured file must exist).
pub fn load_or_create_key(cfg: &RouteConfig, data_dir: &Path) -> Result<RouteKey, RouteError> {
    let (path, ours) = key_path(cfg, data_dir);
    if path.exists() || !ours {
        return read_key(&path);
    }
    let err = |m: String| RouteError::Key { path: path.clone(), message: m };
    let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).map_err(|e| err(e.to_string()))?;
    let b64 = STANDARD.encode(doc.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    std::fs::create_dir_all(data_dir).map_err(|source| RouteError::Write { path: data_dir.to_path_buf(), source })?;
    crate::auth::write_private(&path, pem.as_bytes()).map_err(|source| RouteError::Write { path: path.clone(), source })?;
    let mut k = read_key(&path)?;
    k.created = true;
    Ok(k)
}

/// Writes `<data_dir>/route-key.pub`: 64 lowercase hex characters and a newline.
pub fn write_public(key: &RouteKey, data_dir: &Path) -> Result<PathBuf, RouteError> {
    let path = data_dir.join("route-key.pub");
    std::fs::write(&path, format!("{}\n", key.public_hex())).map_err(|source| RouteError::Write { path: path.clone(), source })?;
    Ok(path)
}

/// Failure reports per endpoint over a decaying window: two buckets of
/// `window` each, the older one weighted by how much of it still overlaps
/// the last `window` (the sliding-window estimate rate limiters use).
/// Memory is bounded by the configured endpoints: ids not in the route
/// are ignored.
#[derive(Debug, Clone)]
pub struct Feedback {
    window_ms: u64,
    bucket_start_ms: u64,
    /// Per endpoint (config order): (observations, failures) in the current
    /// bucket and in the previous one.
    cur: Vec<(u64, u64)>,
    prev: Vec<(u64, u64)>,
}

/// Demotion needs at least this many (decayed) failures...
pub const DEMOTE_MIN_FAILURES: f64 = 3.0;
/// ...and at least this share of the requests.
pub const DEMOTE_MIN_SHARE: f64 = 0.5;

impl Feedback {
    pub fn new(endpoints: usize, window_ms: u64, now_ms: u64) -> Self {
        Feedback { window_ms: window_ms.max(1), bucket_start_ms: now_ms, cur: vec![(0, 0); endpoints], prev: vec![(0, 0); endpoints] }
    }

    fn rotate(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.bucket_start_ms);
        if elapsed < self.window_ms {
            return;
        }
        if elapsed >= 2 * self.window_ms {
            self.prev.iter_mut().for_each(|c| *c = (0, 0));
        } else {
            self.prev.clone_from(&self.cur);
        }
        self.cur.iter_mut().for_each(|c| *c = (0, 0));
        self.bucket_start_ms = now_ms - elapsed % self.window_ms;
    }

    /// One route request: an observation of every endpoint, a failure of those in `failed`.
    pub fn observe(&mut self, now_ms: u64, failed: &[bool]) {
        self.rotate(now_ms);
        for (c, f) in self.cur.iter_mut().zip(failed) {
            c.0 += 1;
            c.1 += u64::from(*f);
        }
    }

    /// Decayed (observations, failures) of endpoint `i`.
    pub fn estimate(&mut self, now_ms: u64, i: usize) -> (f64, f64) {
        self.rotate(now_ms);
        let into = now_ms.saturating_sub(self.bucket_start_ms) as f64 / self.window_ms as f64;
        let w = (1.0 - into).clamp(0.0, 1.0);
        let (co, cf) = self.cur.get(i).copied().unwrap_or((0, 0));
        let (po, pf) = self.prev.get(i).copied().unwrap_or((0, 0));
        (co as f64 + po as f64 * w, cf as f64 + pf as f64 * w)
    }

    pub fn demoted(&mut self, now_ms: u64, i: usize) -> bool {
        let (obs, fail) = self.estimate(now_ms, i);
        // A small epsilon: three failures decayed by float rounding are still three.
        fail + 1e-9 >= DEMOTE_MIN_FAILURES && obs > 0.0 && fail / obs >= DEMOTE_MIN_SHARE
    }
}

/// The request's query, as far as the route cares.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteQuery {
    pub user: Option<String>,
    pub transports: Option<Vec<String>>,
    pub failed: Vec<String>,
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const KNOWN_TRANSPORTS: [&str; 6] = ["tls", "tcp", "wss", "ws", "sse", "lp"];

impl RouteQuery {
    /// Parses `user=..&transports=a,b&failed=x,y`; unknown keys, ids and
    /// transports are ignored.
    pub fn parse(query: &str) -> RouteQuery {
        let mut q = RouteQuery::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            // Split first, then decode: an encoded comma stays inside its item.
            let list = || v.split(',').map(pct_decode).filter(|s| !s.is_empty()).take(64).collect::<Vec<_>>();
            match k {
                "user" if !v.is_empty() => q.user = Some(pct_decode(v)),
                "transports" => q.transports = Some(list().into_iter().filter(|t| KNOWN_TRANSPORTS.contains(&t.as_str())).collect()),
                "failed" => q.failed = list(),
                _ => {}
            }
        }
        q
    }
}

#[derive(Serialize)]
struct EndpointOut<'a> {
    id: &'a str,
    transport: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<&'a str>,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<&'a str>,
    priority: i64,
    weight: u32,
}

#[derive(Serialize)]
struct Ladder {
    stagger_ms: u64,
    attempt_timeout_ms: u64,
}

#[derive(Serialize)]
struct Backoff {
    base_ms: u64,
    cap_ms: u64,
    jitter: f64,
}

#[derive(Serialize)]
struct Payload<'a> {
    version: u32,
    issued_at_ms: u64,
    ttl_s: u64,
    refresh_ratio: f64,
    endpoints: Vec<EndpointOut<'a>>,
    ladder: Ladder,
    backoff: Backoff,
}

#[derive(Serialize)]
struct Envelope<'a> {
    payload: &'a str,
    sig: String,
    key_id: String,
}

/// The client refresh point, as a share of the TTL.
pub const REFRESH_RATIO: f64 = 0.75;

/// The route service of this node: config, key, feedback.
pub struct RouteService {
    cfg: RouteConfig,
    key: RouteKey,
    /// The listener's real address (port 0 resolved) and transport.
    listen: SocketAddr,
    tls: bool,
    feedback: Mutex<Feedback>,
    /// Fleet mode: the live nodes are the endpoints (FLEET.md rule 8).
    fleet: Option<std::sync::Arc<crate::fleet::Fleet>>,
}

impl RouteService {
    pub fn new(cfg: RouteConfig, key: RouteKey, listen: SocketAddr, tls: bool, now_ms: u64) -> Self {
        let n = cfg.endpoints.len().max(1);
        let window = cfg.feedback_window_s.saturating_mul(1000);
        RouteService { feedback: Mutex::new(Feedback::new(n, window, now_ms)), cfg, key, listen, tls, fleet: None }
    }

    /// Fleet mode: unless endpoints are configured, list the live nodes.
    pub fn with_fleet(mut self, fleet: std::sync::Arc<crate::fleet::Fleet>) -> Self {
        if self.cfg.endpoints.is_empty() {
            // One feedback slot per possible node; ids beyond are not demoted.
            let window = self.cfg.feedback_window_s.saturating_mul(1000);
            self.feedback = Mutex::new(Feedback::new(256, window, 0));
            self.fleet = Some(fleet);
        }
        self
    }

    /// The live nodes as endpoints: by node id, or with `user` in the
    /// user's rendezvous order (one user's devices meet on one node).
    fn fleet_endpoints(&self, f: &crate::fleet::Fleet, user: Option<&str>) -> Vec<RouteEndpoint> {
        let live = f.live_nodes();
        let order: Vec<&crate::fleet::Node> = match user {
            Some(u) => crate::fleet::rendezvous(u, &live),
            None => live.iter().collect(),
        };
        order
            .into_iter()
            .map(|n| RouteEndpoint {
                id: n.id.clone(),
                transport: n.transport.clone(),
                host: Some(n.host.clone()),
                addr: Some(n.host.clone()),
                port: n.port,
                sni: Some(n.host.clone()),
                priority: 0,
                weight: 100,
            })
            .collect()
    }

    pub fn key(&self) -> &RouteKey {
        &self.key
    }

    /// The endpoints this node announces, in config order: the configured
    /// ones, or this node itself (id `self`).
    fn endpoints(&self, host_header: Option<&str>) -> Vec<RouteEndpoint> {
        if !self.cfg.endpoints.is_empty() {
            return self.cfg.endpoints.clone();
        }
        let ip = self.listen.ip();
        let host = match &self.cfg.public_host {
            Some(h) => Some(h.clone()),
            None if ip.is_unspecified() => host_header.map(strip_port).filter(|h| !h.is_empty()),
            None => None,
        };
        let addr = (!ip.is_unspecified()).then(|| ip.to_string());
        RouteEndpoint {
            id: "self".into(),
            transport: if self.tls { "tls" } else { "tcp" }.into(),
            host,
            addr,
            port: self.listen.port(),
            sni: None,
            priority: 0,
            weight: 100,
        }
        .into_vec()
    }

    /// The whole `200` body for one request (and the request counted as feedback).
    pub fn answer(&self, query: &RouteQuery, host_header: Option<&str>, mono_ms: u64, wall_ms: u64) -> String {
        let eps = match &self.fleet {
            Some(f) => self.fleet_endpoints(f, query.user.as_deref()),
            None => self.endpoints(host_header),
        };
        let mut demoted = vec![false; eps.len()];
        // Feedback slots are by position; in fleet mode positions change
        // with the live set and the user's order, so no demotion there.
        if let (Ok(mut fb), None) = (self.feedback.lock(), &self.fleet) {
            let failed: Vec<bool> = eps.iter().map(|e| query.failed.contains(&e.id)).collect();
            fb.observe(mono_ms, &failed);
            for (i, d) in demoted.iter_mut().enumerate() {
                *d = fb.demoted(mono_ms, i);
            }
        }
        let mut order: Vec<usize> = (0..eps.len()).collect();
        // Stable: ties keep config order.
        order.sort_by_key(|&i| (demoted[i], eps[i].priority, std::cmp::Reverse(eps[i].weight)));
        let endpoints = order
            .into_iter()
            .map(|i| &eps[i])
            .filter(|e| query.transports.as_ref().is_none_or(|t| t.contains(&e.transport)))
            .map(|e| EndpointOut {
                id: &e.id,
                transport: &e.transport,
                host: e.host.as_deref(),
                addr: e.addr.as_deref(),
                port: e.port,
                sni: e.sni.as_deref().or(e.host.as_deref()),
                priority: e.priority,
                weight: e.weight,
            })
            .collect();
        let c = &self.cfg;
        let payload = Payload {
            version: 1,
            issued_at_ms: wall_ms,
            ttl_s: c.ttl_s,
            refresh_ratio: REFRESH_RATIO,
            endpoints,
            ladder: Ladder { stagger_ms: c.stagger_ms, attempt_timeout_ms: c.attempt_timeout_ms },
            backoff: Backoff { base_ms: c.backoff_base_ms, cap_ms: c.backoff_cap_ms, jitter: c.backoff_jitter },
        };
        let payload = serde_json::to_string(&payload).unwrap_or_default();
        let sig = STANDARD.encode(self.key.sign(payload.as_bytes()));
        serde_json::to_string(&Envelope { payload: &payload, sig, key_id: self.key.key_id() }).unwrap_or_default()
    }
}

trait IntoVec: Sized {
    fn into_vec(self) -> Vec<Self> {
        vec![self]
    }
}
impl IntoVec for RouteEndpoint {}

/// `host[:port]` or `[v6]:port` → host.
fn strip_port(h: &str) -> String {
    let h = h.trim();
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_string(),
        _ => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, priority: i64, weight: u32) -> RouteEndpoint {
        RouteEndpoint {
            id: id.into(),
            transport: "tls".into(),
            host: Some(format!("{id}.example")),
            addr: None,
            port: 7443,
            sni: None,
            priority,
            weight,
        }
    }

    fn service(endpoints: Vec<RouteEndpoint>, dir: &Path) -> RouteService {
        let cfg = RouteConfig { endpoints, feedback_window_s: 300, ..RouteConfig::default() };
        let key = load_or_create_key(&cfg, dir).unwrap();
        RouteService::new(cfg, key, "0.0.0.0:7443".parse().unwrap(), true, 0)
    }

    fn ids(body: &str, key: &[u8; 32]) -> Vec<String> {
        let env: serde_json::Value = serde_json::from_str(body).unwrap();
        let payload = env["payload"].as_str().unwrap();
        let sig = STANDARD.decode(env["sig"].as_str().unwrap()).unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, key).verify(payload.as_bytes(), &sig).unwrap();
        assert_eq!(env["key_id"].as_str().unwrap(), key_id(key));
        let p: serde_json::Value = serde_json::from_str(payload).unwrap();
        p["endpoints"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn key_created_once_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let cfg = RouteConfig::default();
        let k1 = load_or_create_key(&cfg, d.path()).unwrap();
        assert!(k1.created);
        let k2 = load_or_create_key(&cfg, d.path()).unwrap();
        assert!(!k2.created);
        assert_eq!(k1.public, k2.public);
        let p = write_public(&k2, d.path()).unwrap();
        let text = std::fs::read_to_string(p).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n') && text[..64].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // A configured key that does not exist is an error, never created.
        let cfg = RouteConfig { signing_key_file: Some(d.path().join("nope.pem")), ..RouteConfig::default() };
        assert!(load_or_create_key(&cfg, d.path()).unwrap_err().to_string().contains("nope.pem"));
    }

    #[test]
    fn order_by_priority_then_weight_then_config() {
        let d = tempfile::tempdir().unwrap();
        let s = service(vec![ep("a", 1, 100), ep("b", 0, 50), ep("c", 0, 100), ep("d", 0, 100)], d.path());
        let body = s.answer(&RouteQuery::default(), None, 0, 0);
        assert_eq!(ids(&body, &s.key().public), ["c", "d", "b", "a"]);
        // Transport filter.
        let body = s.answer(&RouteQuery::parse("transports=wss"), None, 0, 0);
        assert!(ids(&body, &s.key().public).is_empty());
    }

    #[test]
    fn self_endpoint_uses_host_header_on_unspecified_listen() {
        let d = tempfile::tempdir().unwrap();
        let s = service(vec![], d.path());
        let body = s.answer(&RouteQuery::default(), Some("im.example.com:7443"), 0, 42);
        let env: serde_json::Value = serde_json::from_str(&body).unwrap();
        let p: serde_json::Value = serde_json::from_str(env["payload"].as_str().unwrap()).unwrap();
        assert_eq!(p["issued_at_ms"], 42);
        assert_eq!(p["refresh_ratio"], 0.75);
        let e = &p["endpoints"][0];
        assert_eq!((e["id"].as_str(), e["host"].as_str(), e["sni"].as_str(), e["port"].as_u64()), (Some("self"), Some("im.example.com"), Some("im.example.com"), Some(7443)));
        assert!(e.get("addr").is_none());
    }

    /// Three failure reports out of four requests demote `a` below `b`
    /// despite its priority; after the window passes it comes back.
    #[test]
    fn feedback_demotes_and_decays() {
        let d = tempfile::tempdir().unwrap();
        let s = service(vec![ep("a", 0, 100), ep("b", 1, 100)], d.path());
        let pk = s.key().public;
        let t = 1_000;
        assert_eq!(ids(&s.answer(&RouteQuery::parse("failed=a"), None, t, 0), &pk), ["a", "b"]);
        assert_eq!(ids(&s.answer(&RouteQuery::parse("failed=a,zzz"), None, t + 1, 0), &pk), ["a", "b"]);
        assert_eq!(ids(&s.answer(&RouteQuery::default(), None, t + 2, 0), &pk), ["a", "b"]);
        // Third failure: 3 of 4 requests.
        assert_eq!(ids(&s.answer(&RouteQuery::parse("failed=a"), None, t + 3, 0), &pk), ["b", "a"]);
        // Many good requests bring the share under one half.
        for i in 0..3 {
            s.answer(&RouteQuery::default(), None, t + 10 + i, 0);
        }
        assert_eq!(ids(&s.answer(&RouteQuery::default(), None, t + 20, 0), &pk), ["a", "b"]);
        // Demote again, then let the window pass: forgotten.
        for i in 0..4 {
            s.answer(&RouteQuery::parse("failed=a"), None, t + 30 + i, 0);
        }
        assert_eq!(ids(&s.answer(&RouteQuery::default(), None, t + 40, 0), &pk), ["b", "a"]);
        assert_eq!(ids(&s.answer(&RouteQuery::default(), None, t + 700_000, 0), &pk), ["a", "b"]);
    }

    #[test]
    fn feedback_decays_smoothly() {
        let mut f = Feedback::new(1, 1000, 0);
        for _ in 0..4 {
            f.observe(10, &[true]);
        }
        assert!(f.demoted(10, 0));
        // Next bucket, half-way: the old bucket counts half, 2 failures < 3.
        assert_eq!(f.estimate(1500, 0), (2.0, 2.0));
        assert!(!f.demoted(1500, 0));
        assert_eq!(f.estimate(2500, 0), (0.0, 0.0));
    }

    #[test]
    fn query_parsing() {
        let q = RouteQuery::parse("user=al%20ice&transports=tls,quic,ws&failed=a1,b%2C2&x=1");
        assert_eq!(q.user.as_deref(), Some("al ice"));
        assert_eq!(q.transports, Some(vec!["tls".to_string(), "ws".to_string()]));
        assert_eq!(q.failed, vec!["a1".to_string(), "b,2".to_string()]);
        assert_eq!(strip_port("[::1]:7443"), "::1");
        assert_eq!(strip_port("host"), "host");
    }
}
