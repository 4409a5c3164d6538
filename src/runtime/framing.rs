//! What a connection's plaintext carries — protocol frames as they are, HTTP requests, WebSocket messages, an SSE stream, or (no socket at all) a long-poll queue — as one enum with one interface, so that a connection is always exactly one of them.
//!
//! Before this enum a connection had an `Option` per transport (HTTP,
//! WebSocket, SSE/long-poll) plus an ALPN flag, and every place that
//! touched output asked each of them in turn; impossible combinations (an
//! HTTP state on a WebSocket connection) could exist and each new transport
//! touched six places. Here every transport answers the same questions:
//!
//! - **ingest**: where the session reads its client frames
//!   ([`Framing::session_input`]: the plaintext itself, or the frames a
//!   WebSocket took out of its messages). Turning bytes into requests or
//!   messages is the core's per-transport step (`core/io.rs` dispatches on
//!   this enum once);
//! - **wrap output**: [`Framing::wrap_out`] before a flush turns the
//!   session's frames into the transport's units (WebSocket messages, SSE
//!   events) and says whether there is a socket to write at all;
//! - **deadline**: [`Framing::deadline`], the transport's own (HTTP idle,
//!   SSE ping, the open poll's end) combined with the session's;
//! - **close answer**: [`Framing::close_answer`], what the transport sends
//!   before the connection goes (WebSocket close code, the SSE stream's
//!   last chunk).
//!
//! Memory: the common case, `Native`, holds nothing; every other variant is
//! one box, so the enum is two words on every connection (the three
//! `Option<Box<_>>` it replaced were three).

use bytes::BytesMut;

use crate::proto::DisconnectReason;
use crate::runtime::gate_http::HttpState;
use crate::runtime::web::lp::LpState;
use crate::runtime::web::sse::SseState;
use crate::runtime::web::ws::{self, WsState};
use crate::runtime::web::Sid;

/// The framing of one connection's plaintext.
#[derive(Debug, Default)]
pub enum Framing {
    /// Protocol frames straight on the (TLS) stream: the native client,
    /// and every connection until its first bytes say otherwise.
    #[default]
    Native,
    /// HTTP/1.1 requests (`gate_http`): route, the WebSocket upgrade, the
    /// session requests of SSE and long-poll.
    Http(Box<HttpState>),
    /// Upgraded to WebSocket (`web::ws`): binary messages carry frames.
    Ws(Box<WsState>),
    /// The `GET /v1/sse` stream (`web::sse`): output only; the client's
    /// frames arrive in POSTs on other connections.
    Sse(Box<SseState>),
    /// A long-poll session (`web::lp`): no socket; its output queue is
    /// drained by polls on other connections.
    LongPoll(Box<LpState>),
}

impl Framing {
    /// Short name, for logs and the simulation's reports.
    pub fn name(&self) -> &'static str {
        match self {
            Framing::Native => "native",
            Framing::Http(_) => "http",
            Framing::Ws(_) => "ws",
            Framing::Sse(_) => "sse",
            Framing::LongPoll(_) => "long-poll",
        }
    }

    /// Ingest: the buffer the session decodes client frames from. For a
    /// WebSocket the frames taken out of its messages; otherwise the
    /// plaintext (an SSE or long-poll session's POSTed frames are put
    /// there by the core).
    pub fn session_input<'a>(&'a mut self, rbuf: &'a mut BytesMut) -> &'a mut BytesMut {
        match self {
            Framing::Ws(ws) => &mut ws.frames,
            _ => rbuf,
        }
    }

    /// Client frames decoded but not yet taken by the session (bounded by
    /// the same read budget as the plaintext).
    pub fn buffered_input(&self) -> usize {
        match self {
            Framing::Ws(ws) => ws.frames.len(),
            _ => 0,
        }
    }

    /// Wrap output, before a flush: frames written to `out` since the last
    /// wrap become WebSocket messages or SSE events. `Some(queue empty)`
    /// when the connection has no socket (long-poll: the output waits for a
    /// poll); None when the socket write goes on.
    pub fn wrap_out(&mut self, out: &mut BytesMut) -> Option<bool> {
        match self {
            Framing::Native | Framing::Http(_) => None,
            Framing::Ws(ws) => {
                ws.wrap_out(out);
                None
            }
            Framing::Sse(s) => {
                s.wrap_out(out);
                None
            }
            Framing::LongPoll(_) => Some(out.is_empty()),
        }
    }

    /// After a flush: the `out_len` bytes left unsent were all wrapped.
    pub fn after_flush(&mut self, out_len: usize) {
        match self {
            Framing::Ws(ws) => ws.framed_len = out_len,
            Framing::Sse(s) => s.framed_len = out_len,
            _ => {}
        }
    }

    /// The connection's next deadline: HTTP's own replaces the session's
    /// (an HTTP connection has no session yet); SSE's ping and the open
    /// poll's end come on top of it.
    pub fn deadline(&self, session: Option<u64>) -> Option<u64> {
        let own = match self {
            Framing::Native | Framing::Ws(_) => return session,
            Framing::Http(h) => return Some(h.deadline_ms),
            Framing::Sse(s) => s.deadline(),
            Framing::LongPoll(l) => l.deadline(),
        };
        match (session, own) {
            (Some(s), Some(o)) => Some(s.min(o)),
            (s, o) => s.or(o),
        }
    }

    /// Close answer: what the transport says before the connection goes.
    /// WebSocket: a close frame, 4000 + the DISCONNECT reason after the
    /// server's DISCONNECT, 1000 otherwise (the device's own DISCONNECT, a
    /// refused CONNECT); once. SSE: the stream's last chunk follows the
    /// next wrap. Native and HTTP say nothing more (the DISCONNECT or the
    /// `Connection: close` answer is already in `out`); long-poll's final
    /// frames wait for a poll.
    pub fn close_answer(&mut self, out: &mut BytesMut, reason: Option<DisconnectReason>) {
        match self {
            Framing::Ws(ws) => {
                let code = reason.map_or(ws::CLOSE_NORMAL, |r| 4000 + u16::from(r.code()));
                ws.push_close(out, code);
            }
            Framing::Sse(s) => s.ending = true,
            Framing::Native | Framing::Http(_) | Framing::LongPoll(_) => {}
        }
    }

    /// Drops the transport's empty buffers (an idle connection holds none).
    pub fn release_idle_buffers(&mut self) {
        if let Framing::Ws(ws) = self {
            ws.release_idle_buffers();
        }
    }

    /// The session id of an SSE or long-poll session.
    pub fn sid(&self) -> Option<Sid> {
        match self {
            Framing::Sse(s) => Some(s.sid),
            Framing::LongPoll(l) => Some(l.sid),
            _ => None,
        }
    }

    pub fn http(&self) -> Option<&HttpState> {
        match self {
            Framing::Http(h) => Some(h),
            _ => None,
        }
    }

    pub fn http_mut(&mut self) -> Option<&mut HttpState> {
        match self {
            Framing::Http(h) => Some(h),
            _ => None,
        }
    }

    pub fn lp_mut(&mut self) -> Option<&mut LpState> {
        match self {
            Framing::LongPoll(l) => Some(l),
            _ => None,
        }
    }

    pub fn is_http(&self) -> bool {
        matches!(self, Framing::Http(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_is_two_words_and_holds_nothing() {
        // Every connection carries one: it must not grow the idle
        // connection (tests/conn_memory.rs measures the whole).
        assert_eq!(std::mem::size_of::<Framing>(), 2 * std::mem::size_of::<usize>());
        let mut f = Framing::default();
        let mut rbuf = BytesMut::from(&b"abc"[..]);
        assert_eq!(f.session_input(&mut rbuf).len(), 3);
        assert_eq!(f.wrap_out(&mut BytesMut::new()), None);
        assert_eq!(f.deadline(Some(5)), Some(5));
        assert_eq!(f.sid(), None);
    }

    #[test]
    fn deadlines_combine_per_transport() {
        let http = Framing::Http(Box::new(HttpState::new(70)));
        assert_eq!(http.deadline(Some(10)), Some(70), "HTTP's own replaces the session's");
        let mut lp = LpState::new(Sid::new(0));
        lp.closed_expiry_ms = 40;
        let lp = Framing::LongPoll(Box::new(lp));
        assert_eq!(lp.deadline(Some(100)), Some(40));
        assert_eq!(lp.deadline(Some(20)), Some(20));
        assert_eq!(lp.deadline(None), Some(40));
        assert_eq!(Framing::LongPoll(Box::new(LpState::new(Sid::new(0)))).deadline(None), None);
    }

    #[test]
    fn long_poll_has_no_socket_and_ws_closes_with_the_reason() {
        let mut lp = Framing::LongPoll(Box::new(LpState::new(Sid::new(0))));
        assert_eq!(lp.wrap_out(&mut BytesMut::from(&b"x"[..])), Some(false));
        assert_eq!(lp.wrap_out(&mut BytesMut::new()), Some(true));
        let mut ws = Framing::Ws(Box::new(WsState::new(0, ws::Mode::Gateway)));
        let mut out = BytesMut::new();
        ws.close_answer(&mut out, Some(DisconnectReason::SlowConsumer));
        // FIN+close, length 2, code 4000 + 8.
        assert_eq!(&out[..], &[0x88, 2, 0x0f, 0xa8]);
        ws.close_answer(&mut out, None);
        assert_eq!(out.len(), 4, "once");
    }
}
