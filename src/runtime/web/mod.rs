//! Web transports on the gateway port (WEB.md): each one only moves protocol frames between HTTP-borne bytes and the core's session; no session rule lives here.
//!
//! WebSocket (`ws`) frames a connection's output as binary messages. SSE
//! (`sse`) frames it as events on the stream connection. Long-poll (`lp`)
//! has no socket of its own: its session sits in the core's connection slab
//! as a *virtual connection* whose output buffer is the bounded queue that
//! polls drain. Either way the session, the ACK wheel, dedup, replacement
//! and DISCONNECT reasons are the core's one code path.

pub mod lp;
pub mod sse;
pub mod ws;

use base64::Engine as _;
use bytes::BytesMut;

use crate::proto::frame::{self, T_CONNECT, T_DISCONNECT, T_PING, T_PONG, T_PUSHACK, T_SEND};

/// Random bytes in a sid (WEB.md: at least 16).
const SID_RANDOM: usize = 16;

/// A session id: the core holding the session, then random bytes. The
/// core index lets a request for the session reach it on whichever core
/// SO_REUSEPORT accepted the request's connection.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Sid([u8; 1 + SID_RANDOM]);

impl Sid {
    /// A fresh sid for a session on `core` (cores are < 256: `server.workers` is bounded).
    pub fn new(core: usize) -> Sid {
        let mut b = [0u8; 1 + SID_RANDOM];
        b[0] = core as u8;
        // A sid must never be guessable: the OS RNG, else aws-lc's.
        if getrandom::getrandom(&mut b[1..]).is_err() {
            let _ = aws_lc_rs::rand::fill(&mut b[1..]);
        }
        Sid(b)
    }

    /// Parses the `sid` query value; None for anything malformed.
    pub fn parse(s: &str) -> Option<Sid> {
        let v = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()?;
        let b: [u8; 1 + SID_RANDOM] = v.try_into().ok()?;
        Some(Sid(b))
    }

    pub fn core(&self) -> usize {
        self.0[0] as usize
    }

    /// base64url without padding.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }
}

/// An HTTP connection moving to the core that holds the session its
/// request names (the sid's core, or the user's home core for a connect),
/// with the request to answer there.
pub struct WebMove {
    pub core: usize,
    pub req: Box<crate::runtime::gate_http::SessionReq>,
    /// The connection's address while it counts as pre-auth (an HTTP
    /// connection has not authenticated itself): it counts there again.
    pub preauth_ip: Option<std::net::IpAddr>,
}

/// Why a POST body is refused: DISCONNECT(1) on the session and `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body ends inside a frame")]
    Partial,
    #[error("bad frame length: {0}")]
    Length(String),
    #[error("{0} is not allowed in a POST body")]
    Type(&'static str),
}

/// Checks that `body` is whole client frames of the types a POST may carry
/// (SEND, PUSHACK, PING, PONG, DISCONNECT); the session decodes them after.
pub fn check_client_frames(body: &[u8], max_frame: u32) -> Result<(), BodyError> {
    let mut pos = 0;
    while pos < body.len() {
        let n = match frame::check(&body[pos..], max_frame) {
            Ok(Some(n)) => n,
            Ok(None) => return Err(BodyError::Partial),
            Err(e) => return Err(BodyError::Length(e.to_string())),
        };
        if n < frame::HEADER_LEN + 1 {
            return Err(BodyError::Partial);
        }
        let ty = body[pos + frame::HEADER_LEN];
        if !matches!(ty, T_SEND | T_PUSHACK | T_PING | T_PONG | T_DISCONNECT) {
            return Err(BodyError::Type(if ty == T_CONNECT { "CONNECT" } else { frame::type_name(ty) }));
        }
        pos += n;
    }
    Ok(())
}

/// The `connect=` parameter of `GET /v1/sse`: base64url (padding, raw or
/// as `%3D`, tolerated) of exactly one CONNECT frame.
pub fn decode_connect_param(query: &str) -> Option<BytesMut> {
    let v = query.split('&').find_map(|kv| kv.strip_prefix("connect="))?;
    let v = v.replace("%3D", "=").replace("%3d", "=");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok()?;
    one_connect(&raw)
}

/// `raw` as exactly one CONNECT frame (the `max_frame` before CONNECT is
/// the pre-auth one, so a huge "CONNECT" is refused here too).
pub fn one_connect(raw: &[u8]) -> Option<BytesMut> {
    let n = frame::check(raw, crate::proto::session::MAX_PREAUTH_FRAME).ok()??;
    (n == raw.len() && raw.get(frame::HEADER_LEN) == Some(&T_CONNECT)).then(|| BytesMut::from(raw))
}

/// The value of query parameter `name`.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{Connect, Frame, Utf8Bytes};

    fn connect_bytes() -> Vec<u8> {
        let mut b = BytesMut::new();
        Frame::Connect(Connect {
            version: 1,
            keepalive_s: 0,
            device_id: Utf8Bytes::from("d"),
            token: Utf8Bytes::from("t"),
            last_seq: 3,
        })
        .encode(&mut b);
        b.to_vec()
    }

    #[test]
    fn sid_round_trip_and_garbage() {
        let s = Sid::new(3);
        let e = s.encode();
        assert!(e.len() >= 22 && !e.contains('='), "{e}");
        assert_eq!(Sid::parse(&e), Some(s));
        assert_eq!(Sid::parse(&e).unwrap().core(), 3);
        assert_ne!(Sid::new(3), s, "random");
        assert_eq!(Sid::parse("short"), None);
        assert_eq!(Sid::parse("!!!!"), None);
    }

    #[test]
    fn connect_param_padding_and_refusals() {
        let c = connect_bytes();
        let b64 = base64::engine::general_purpose::URL_SAFE.encode(&c);
        assert!(b64.ends_with('='), "test needs padding: {b64}");
        for q in [b64.trim_end_matches('=').to_string(), b64.clone(), b64.replace('=', "%3D")] {
            assert_eq!(decode_connect_param(&format!("x=1&connect={q}")).as_deref(), Some(&c[..]), "{q}");
        }
        let mut two = c.clone();
        two.extend_from_slice(&c);
        let enc = |b: &[u8]| format!("connect={}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b));
        assert!(decode_connect_param(&enc(&two)).is_none(), "two frames");
        assert!(decode_connect_param(&enc(&c[..c.len() - 1])).is_none(), "partial");
        let mut ping = BytesMut::new();
        Frame::Ping { nonce: 1 }.encode(&mut ping);
        assert!(decode_connect_param(&enc(&ping)).is_none(), "not CONNECT");
        assert!(decode_connect_param("connect=@@").is_none());
        assert!(decode_connect_param("").is_none());
    }

    #[test]
    fn post_bodies() {
        let mut b = BytesMut::new();
        Frame::Ping { nonce: 1 }.encode(&mut b);
        Frame::PushAck { seq: 1 }.encode(&mut b);
        assert_eq!(check_client_frames(&b, 1024), Ok(()));
        assert_eq!(check_client_frames(&[], 1024), Ok(()));
        assert_eq!(check_client_frames(&b[..b.len() - 1], 1024), Err(BodyError::Partial));
        assert_eq!(check_client_frames(&connect_bytes(), 1024), Err(BodyError::Type("CONNECT")));
        assert!(matches!(check_client_frames(&[0, 0, 0, 0], 1024), Err(BodyError::Length(_))));
        assert_eq!(check_client_frames(&[0, 0, 0, 1, 0x42], 1024), Err(BodyError::Type("unknown")));
    }
}
