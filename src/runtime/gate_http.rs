//! HTTP/1.1 on the gateway port — `GET /v1/route`, the WebSocket upgrade at `GET /v1/ws`, and the session requests of SSE and long-poll handed to the core: detection (ALPN or first byte), request heads parsed with httparse, bodies, the Origin policy, keep-alive.
//!
//! Sans-IO like the rest of the connection path: [`serve`] turns buffered
//! plaintext into buffered responses, and the core flushes them through the
//! connection's TLS. Requests are parsed and answered by `crate::http` (the
//! one HTTP/1.1 parser, chunk decoder and response type, shared with the
//! admin listener); this file holds what is particular to the gateway port:
//! detection, routing, the Origin policy, pipelining bounds. Only [`on_io`],
//! [`is_http`] and [`HttpState`] are used from outside (core.rs), plus
//! [`SessionReq`] and [`write_answer`] for the session requests
//! (`core/sessions.rs`), which need the core's state and are answered there.

use bytes::BytesMut;

use crate::config::WebConfig;
use crate::http::{HttpError, Parsed, Response};
use crate::route::{RouteQuery, RouteService};

/// Largest request head accepted (WEB.md): `431` beyond.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Headers parsed per request; more is `431` too.
const MAX_HEADERS: usize = 64;
/// Pipelined requests are answered until this much output waits unsent;
/// the rest waits in the input until the peer reads.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// Input a peer may pile up (pipelined requests) while not reading its
/// answers; beyond it the connection is closed.
const MAX_PIPELINED_BYTES: usize = 1 << 20;

/// Whether a connection carries HTTP: ALPN `http/1.1`, or no ALPN and a
/// first byte that is an ASCII letter (a request line; frames start with a
/// length whose first byte is 0 for any frame under 16 MiB).
pub fn is_http(alpn: Option<&[u8]>, first_byte: u8) -> bool {
    match alpn {
        Some(b"http/1.1") => true,
        Some(_) => false,
        None => first_byte.is_ascii_alphabetic(),
    }
}

/// Everything HTTP on the gateway port needs, shared by every core.
pub struct Gate {
    pub route: RouteService,
    pub origins: OriginPolicy,
    pub keepalive_idle_ms: u64,
    /// Largest request body (`max_frame × 64`): `413` beyond.
    pub max_body_bytes: u64,
    /// `web.poll_timeout_s` in ms.
    pub poll_timeout_ms: u64,
    /// What `/v1/ws` does with messages: the gateway's frames, or the
    /// test-only echo (`ws::Mode`); set by `serve` from the environment.
    pub ws_mode: super::web::ws::Mode,
}

impl Gate {
    /// The gate of a server with this config (`route` built by the caller: it needs the listener's address and key).
    pub fn new(cfg: &crate::config::Config, route: RouteService) -> Self {
        Gate {
            route,
            origins: OriginPolicy::new(&cfg.web),
            keepalive_idle_ms: cfg.web.keepalive_idle_s.saturating_mul(1000),
            max_body_bytes: u64::from(cfg.session.max_frame).saturating_mul(64),
            poll_timeout_ms: cfg.web.poll_timeout_s.saturating_mul(1000),
            ws_mode: super::web::ws::Mode::Gateway,
        }
    }
}

/// One HTTP connection's state.
#[derive(Debug)]
pub struct HttpState {
    /// Close when the monotonic clock passes this: the handshake deadline
    /// until the first complete head, then the keep-alive idle deadline.
    pub deadline_ms: u64,
    /// A response said `Connection: close` (or the request was bad): flush and close.
    pub closing: bool,
    pub requests: u64,
    /// A 101 was written: the rest of the connection is WebSocket.
    pub upgraded: bool,
    /// A long-poll is open on this connection: no further request is
    /// served until it is answered (by the core).
    pub parked: bool,
    /// The open poll's allowed foreign origin (its answer carries CORS).
    pub poll_cross: Option<String>,
    /// `100 Continue` was written for the request being read.
    pub continued: bool,
    /// Requests refused for their `Origin` since the core last looked, and
    /// the last such origin: the core counts them
    /// (`ringgate_rejections_total{reason="origin"}`) and logs one, rate-limited.
    pub refused_origins: u32,
    pub refused_origin: Option<String>,
    /// Requests were left behind the output high-water mark and the
    /// answers before them all went out: the next step serves them before
    /// reading more (set by the core when the write is reported).
    pub resume: bool,
    /// A long-poll session whose frames this connection's unwritten answer
    /// carries, and whose newer poll waits behind it (`Core::lp_behind`):
    /// kicked when this connection's output has gone out.
    pub lp_waiting: Option<crate::runtime::core::ConnKey>,
}

impl HttpState {
    pub fn new(deadline_ms: u64) -> Self {
        HttpState {
            deadline_ms,
            closing: false,
            requests: 0,
            upgraded: false,
            parked: false,
            poll_cross: None,
            continued: false,
            refused_origins: 0,
            refused_origin: None,
            resume: false,
            lp_waiting: None,
        }
    }
}

impl HttpState {
    fn refuse_origin(&mut self, origin: &str) {
        self.refused_origins = self.refused_origins.saturating_add(1);
        // Peer-chosen text in a log line: bounded and printable only.
        let shown: String = origin.chars().take(128).map(|c| if c.is_control() { '?' } else { c }).collect();
        self.refused_origin = Some(shown);
    }
}

/// What the connection does after an HTTP I/O step.
#[derive(Debug)]
pub enum Step {
    /// Serve on: the answers wait in `out` for the connection's write.
    /// `more`: requests were left behind the output high-water mark, to be
    /// served as soon as everything written so far is out.
    Continue { more: bool },
    /// Done (a response said `Connection: close`, a bad request, or EOF):
    /// once everything is written, close_notify and FIN, then close.
    Closing,
    /// Not an HTTP connection (any more): close.
    Close,
    /// Switched to WebSocket; the 101 is in `out`.
    Upgraded,
    /// A session request (SSE, send, long-poll) for the core to answer;
    /// the requests before it are answered into `out`.
    Session(Box<SessionReq>),
}

/// A request on a session path, parsed and past the Origin policy.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionReq {
    pub method: String,
    /// The path without its query.
    pub path: String,
    pub query: String,
    pub body: BytesMut,
    pub last_event_id: Option<String>,
    /// The allowed foreign origin: its answer carries the CORS headers.
    pub cross: Option<String>,
}

/// Paths whose requests the core answers (`core/sessions.rs`).
pub fn is_session_path(p: &str) -> bool {
    matches!(p, "/v1/sse" | "/v1/send" | "/v1/lp/connect" | "/v1/lp")
}

/// A connection known to carry HTTP had I/O: answer the complete requests
/// into `out` and release idle read buffers. Writes nothing: the core turns
/// the step into the connection's transmit and its follow-up
/// (`core/transmit.rs`).
pub fn on_io(conn: &mut super::conn::Conn, gate: &Gate, tls: bool, mono_ms: u64, wall_ms: u64, eof: bool) -> Step {
    let Some(st) = conn.framing.http_mut() else { return Step::Close };
    let before = conn.rbuf.len();
    let mut session = None;
    let close = serve(&mut conn.rbuf, &mut conn.out, st, gate, tls, mono_ms, wall_ms, &mut session) || eof;
    if st.upgraded {
        return Step::Upgraded;
    }
    if let Some(req) = session {
        // The core answers it, then serves what follows.
        return Step::Session(req);
    }
    if close {
        return Step::Closing;
    }
    // Pipelined requests were left at the output high-water mark: they
    // are answered once the answers before them went out, not at the next
    // (maybe never) readable event.
    let more = !conn.rbuf.is_empty() && conn.rbuf.len() < before;
    conn.release_idle_buffers();
    Step::Continue { more }
}

/// Handles every complete request in `rbuf`, appending responses to `out`.
/// Returns true when the connection must close once `out` is flushed.
/// Stops at a session request, which it leaves in `session`.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
    st: &mut HttpState,
    gate: &Gate,
    tls: bool,
    mono_ms: u64,
    wall_ms: u64,
    session: &mut Option<Box<SessionReq>>,
) -> bool {
    loop {
        if st.parked && rbuf.len() > MAX_PIPELINED_BYTES {
            // Piles up requests behind an open poll: a slow consumer too.
            st.closing = true;
            rbuf.clear();
            return true;
        }
        if st.upgraded || st.parked || session.is_some() {
            return false;
        }
        if st.closing {
            // Nothing more is read from a closing connection.
            rbuf.clear();
            return true;
        }
        if rbuf.is_empty() {
            return false;
        }
        if out.len() >= OUT_HIGH_WATER {
            if rbuf.len() > MAX_PIPELINED_BYTES {
                // Sends requests, never reads answers: a slow consumer.
                st.closing = true;
                rbuf.clear();
                return true;
            }
            return false;
        }
        // The one HTTP/1.1 parser (`crate::http`): the same head limits,
        // Content-Length and chunked rules (RFC 9112: both → 400, a chunk
        // size that overflows → 400) as the admin listener.
        let lim = crate::http::Limits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            max_body_bytes: usize::try_from(gate.max_body_bytes).unwrap_or(usize::MAX),
        };
        let (req, consumed) = match crate::http::parse_request(rbuf, &lim) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            Ok(Parsed::Incomplete { expect_continue }) => {
                if expect_continue && !st.continued {
                    // The head asked before sending its body (curl does).
                    st.continued = true;
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                return false;
            }
            Err(HttpError::Version) => return fail(out, st, 505, "only HTTP/1.1 is served"),
            Err(e) => return fail(out, st, e.status(), &e.to_string()),
        };
        st.continued = false;
        if req.minor_version != 1 {
            return fail(out, st, 505, "only HTTP/1.1 is served");
        }
        let header = |name: &str| req.header(name).map(|v| String::from_utf8_lossy(v).trim().to_string());
        let chunked = req.header("transfer-encoding").is_some();
        let path_only = req.path();
        let for_session = is_session_path(path_only) && req.method != "OPTIONS";
        let close_asked = header("connection").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        let host = header("host");
        let origin = header("origin");
        let last_event_id = header("last-event-id");
        let upgrade = Upgrade {
            websocket: header("upgrade").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket"))),
            connection_upgrade: header("connection")
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))),
            key: header("sec-websocket-key"),
            version: header("sec-websocket-version"),
            // Every Sec-WebSocket-Protocol header, comma lists joined.
            protocols: req
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
                .flat_map(|(_, v)| String::from_utf8_lossy(v).split(',').map(|t| t.trim().to_string()).collect::<Vec<_>>())
                .filter(|t| !t.is_empty())
                .collect(),
            body_len: if chunked { req.body.len().max(1) as u64 } else { req.body.len() as u64 },
        };
        let crate::http::Request { method, target: path, body: req_body, .. } = req;
        let _ = rbuf.split_to(consumed);
        st.requests += 1;
        st.deadline_ms = mono_ms + gate.keepalive_idle_ms;
        if for_session {
            if close_asked {
                st.closing = true;
            }
            let cross = match origin.as_deref() {
                None => None,
                Some(o) => match gate.origins.check(o, host.as_deref(), tls) {
                    OriginVerdict::SameOrigin => None,
                    OriginVerdict::Allowed => Some(o.to_string()),
                    OriginVerdict::Forbidden => {
                        st.refuse_origin(o);
                        write_response(out, &text(403, "origin not allowed"), st.closing);
                        continue;
                    }
                },
            };
            let (p, query) = path.split_once('?').unwrap_or((path.as_str(), ""));
            // The parser's Vec becomes the body without a copy.
            let body = bytes::Bytes::from(req_body).try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..]));
            *session = Some(Box::new(SessionReq {
                method,
                path: p.to_string(),
                query: query.to_string(),
                body,
                last_event_id,
                cross,
            }));
            return false;
        }
        if close_asked {
            st.closing = true;
        }
        if let Some(o) = origin.as_deref() {
            if gate.origins.check(o, host.as_deref(), tls) == OriginVerdict::Forbidden {
                st.refuse_origin(o);
            }
        }
        let r = respond(gate, tls, &method, &path, host.as_deref(), origin.as_deref(), &upgrade, mono_ms, wall_ms);
        if r.status == 101 {
            if chunked {
                return fail(out, st, 400, "a WebSocket upgrade has no body");
            }
            write_response(out, &r, false);
            st.upgraded = true;
            return false;
        }
        write_response(out, &r, st.closing);
    }
}

/// The headers of a WebSocket upgrade request.
struct Upgrade {
    websocket: bool,
    connection_upgrade: bool,
    key: Option<String>,
    version: Option<String>,
    protocols: Vec<String>,
    body_len: u64,
}

/// `GET /v1/ws`: the RFC 6455 handshake checks, then 101.
fn websocket(u: &Upgrade) -> Response {
    use super::web::ws;
    if !u.websocket || !u.connection_upgrade {
        return text(426, "WebSocket upgrade required").header("Upgrade", "websocket");
    }
    if u.version.as_deref() != Some("13") {
        return text(426, "WebSocket version 13 required").header("Sec-WebSocket-Version", "13");
    }
    let Some(key) = u.key.as_deref().filter(|k| ws::key_valid(k)) else {
        return text(400, "bad Sec-WebSocket-Key");
    };
    if u.body_len != 0 {
        return text(400, "a WebSocket upgrade has no body");
    }
    let offered = !u.protocols.is_empty();
    if offered && !u.protocols.iter().any(|p| p == ws::SUBPROTOCOL) {
        return text(400, "subprotocol ringgate.v1 required");
    }
    let mut r = empty(101).header("Upgrade", "websocket").header("Connection", "Upgrade").header("Sec-WebSocket-Accept", &ws::accept_key(key));
    if offered {
        r = r.header("Sec-WebSocket-Protocol", ws::SUBPROTOCOL);
    }
    r
}

/// A text answer (`crate::http::Response`, the one response type).
fn text(status: u16, body: &str) -> Response {
    Response::new(status, "text/plain; charset=utf-8", format!("{body}\n").into_bytes())
}

/// An answer with no body and no Content-Type (101, 204).
fn empty(status: u16) -> Response {
    Response { status, headers: Vec::new(), body: Vec::new() }
}

#[allow(clippy::too_many_arguments)]
fn respond(
    gate: &Gate,
    tls: bool,
    method: &str,
    path: &str,
    host: Option<&str>,
    origin: Option<&str>,
    upgrade: &Upgrade,
    mono_ms: u64,
    wall_ms: u64,
) -> Response {
    // Origin first: a forbidden origin learns nothing, not even 404 vs 405.
    let cross = match origin {
        None => None,
        Some(o) => match gate.origins.check(o, host, tls) {
            OriginVerdict::SameOrigin => None,
            OriginVerdict::Allowed => Some(o.to_string()),
            OriginVerdict::Forbidden => return text(403, "origin not allowed"),
        },
    };
    let (p, query) = path.split_once('?').unwrap_or((path, ""));
    let mut r = if method == "OPTIONS" && cross.is_some() {
        empty(204)
            .header("Access-Control-Allow-Methods", "GET, POST")
            .header("Access-Control-Allow-Headers", "Content-Type, Last-Event-ID")
            .header("Access-Control-Max-Age", "600")
    } else if p == "/v1/ws" {
        if method == "GET" {
            websocket(upgrade)
        } else {
            text(405, "method not allowed").header("Allow", "GET")
        }
    } else if p != "/v1/route" {
        text(404, "not found")
    } else if method != "GET" {
        text(405, "method not allowed").header("Allow", "GET")
    } else {
        let q = RouteQuery::parse(query);
        let body = gate.route.answer(&q, host, mono_ms, wall_ms);
        Response::new(200, "application/json", body.into_bytes()).header("Cache-Control", "no-store")
    };
    for (k, v) in cors(cross.as_deref()) {
        r.headers.push((k.into(), v));
    }
    r
}

fn write_response(out: &mut BytesMut, r: &Response, close: bool) {
    r.encode_into(!close, false, out);
}

/// Writes the answer to a session request (`core/sessions.rs`): `status`,
/// an optional body with its type, extra headers, and the CORS headers for
/// an allowed foreign origin (WEB.md: on every answer, 4xx included).
pub fn write_answer(
    out: &mut BytesMut,
    status: u16,
    body: Option<(&'static str, &[u8])>,
    extra: Vec<(&'static str, String)>,
    cross: Option<&str>,
    close: bool,
) {
    let mut r = match body {
        Some((ty, b)) => Response::new(status, ty, b.to_vec()),
        None => empty(status),
    };
    for (k, v) in extra.into_iter().chain(cors(cross)) {
        r.headers.push((k.into(), v));
    }
    match body {
        Some(_) => r.encode_into(!close, false, out),
        // 204, or the head of a stream (SSE) whose body follows in chunks.
        None => r.encode_stream_head(!close, out),
    }
}

/// The CORS headers of an answer to an allowed cross-origin request.
fn cors(cross: Option<&str>) -> Vec<(&'static str, String)> {
    match cross {
        None => Vec::new(),
        Some(o) => vec![
            ("Access-Control-Allow-Origin", o.to_string()),
            ("Vary", "Origin".into()),
            ("Access-Control-Expose-Headers", "X-Ringgate-Session".into()),
        ],
    }
}

/// Answers a bad request and marks the connection closing.
fn fail(out: &mut BytesMut, st: &mut HttpState, status: u16, why: &str) -> bool {
    st.closing = true;
    write_response(out, &text(status, why), true);
    true
}

/// An origin as compared: scheme, lowercase host, port (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` / `[v6][:port]`, filling the scheme's default port.
fn parse_authority(scheme: &str, a: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => default_port(scheme)?,
            None => return None,
        };
        (format!("[{h}]"), port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (a.to_string(), default_port(scheme)?),
        }
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

fn parse_origin(o: &str) -> Option<Origin> {
    let (scheme, rest) = o.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return None;
    }
    let (host, port) = parse_authority(&scheme, rest)?;
    Some(Origin { scheme, host, port })
}

/// One `web.allowed_origins` entry.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(Origin),
    /// `scheme://*.suffix[:port]`: hosts ending in `.suffix`, not `suffix` itself.
    Wildcard { scheme: String, suffix: String, port: u16 },
    Null,
}

/// What the Origin policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginVerdict {
    /// The request's own origin: no CORS headers needed.
    SameOrigin,
    /// A listed cross origin: allowed, with CORS headers.
    Allowed,
    /// `403`, no CORS headers.
    Forbidden,
}

/// `web.allowed_origins` compiled, plus `web.assume_https`.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    patterns: Vec<Pattern>,
    assume_https: bool,
}

impl OriginPolicy {
    /// Entries that do not parse are skipped (config validation reports them).
    pub fn new(web: &WebConfig) -> Self {
        let mut patterns = Vec::new();
        for p in &web.allowed_origins {
            if p == "null" {
                patterns.push(Pattern::Null);
            } else if let Some((scheme, rest)) = p.split_once("://*.") {
                let scheme = scheme.to_ascii_lowercase();
                if let Some((suffix, port)) = parse_authority(&scheme, rest) {
                    patterns.push(Pattern::Wildcard { scheme, suffix: format!(".{suffix}"), port });
                }
            } else if let Some(o) = parse_origin(p) {
                patterns.push(Pattern::Exact(o));
            }
        }
        OriginPolicy { patterns, assume_https: web.assume_https }
    }

    /// Judges the `Origin` header of a request that arrived with `Host`.
    pub fn check(&self, origin: &str, host: Option<&str>, tls: bool) -> OriginVerdict {
        if origin == "null" {
            return if self.patterns.iter().any(|p| matches!(p, Pattern::Null)) {
                OriginVerdict::Allowed
            } else {
                OriginVerdict::Forbidden
            };
        }
        let Some(o) = parse_origin(origin) else { return OriginVerdict::Forbidden };
        let own_scheme = if tls || self.assume_https { "https" } else { "http" };
        if let Some(own) = host.and_then(|h| parse_authority(own_scheme, h)) {
            if o.scheme == own_scheme && (o.host.as_str(), o.port) == (own.0.as_str(), own.1) {
                return OriginVerdict::SameOrigin;
            }
        }
        let ok = self.patterns.iter().any(|p| match p {
            Pattern::Exact(e) => *e == o,
            Pattern::Wildcard { scheme, suffix, port } => *scheme == o.scheme && *port == o.port && o.host.ends_with(suffix.as_str()),
            Pattern::Null => false,
        });
        if ok {
            OriginVerdict::Allowed
        } else {
            OriginVerdict::Forbidden
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OriginPolicy {
        OriginPolicy::new(&WebConfig { allowed_origins: list.iter().map(|s| s.to_string()).collect(), ..WebConfig::default() })
    }

    #[test]
    fn detection() {
        assert!(is_http(None, b'G'));
        assert!(!is_http(None, 0));
        assert!(is_http(Some(b"http/1.1"), 0));
        assert!(!is_http(Some(b"ringgate/1"), b'G'));
    }

    #[test]
    fn origins() {
        let p = policy(&["https://app.example.com", "https://*.example.org:8443", "null"]);
        use OriginVerdict::*;
        assert_eq!(p.check("https://APP.example.com:443", None, true), Allowed);
        assert_eq!(p.check("http://app.example.com", None, true), Forbidden);
        assert_eq!(p.check("https://a.example.org:8443", None, true), Allowed);
        assert_eq!(p.check("https://example.org:8443", None, true), Forbidden);
        assert_eq!(p.check("https://a.example.org", None, true), Forbidden);
        assert_eq!(p.check("null", None, true), Allowed);
        assert_eq!(policy(&[]).check("null", None, true), Forbidden);
        assert_eq!(p.check("garbage", None, true), Forbidden);
        // Own origin: https on TLS, with the Host's port.
        assert_eq!(policy(&[]).check("https://im.example.com:7443", Some("im.example.com:7443"), true), SameOrigin);
        assert_eq!(policy(&[]).check("http://im.example.com:7443", Some("im.example.com:7443"), true), Forbidden);
        assert_eq!(policy(&[]).check("http://localhost", Some("localhost:80"), false), SameOrigin);
    }
}
