//! SSE framing of a session's output (WEB.md "SSE + POST"): each protocol frame becomes one `event: frame` with base64 data, in HTTP/1.1 chunks, with `id:` on PUSH only, `event: session` after a CONNACK 0, and `: ping` comments.
//!
//! Like `ws::WsState::wrap_out`: the session writes whole frames into the
//! connection's `out`; before each flush the frames past `framed_len` are
//! replaced by their events. Nothing else is held: an idle stream owns this
//! struct and no buffer.

use base64::Engine as _;
use bytes::BytesMut;

use super::Sid;
use crate::proto::frame::{HEADER_LEN, T_CONNACK, T_PUSH};

/// Longest gap between two `: ping` comments (WEB.md: at least every 15 s;
/// a margin for timer lateness).
pub const PING_MAX_MS: u64 = 14_000;

#[derive(Debug)]
pub struct SseState {
    pub sid: Sid,
    /// Bytes at the front of `out` already framed (the response head, events).
    pub framed_len: usize,
    /// No frame framed yet: the first one is the CONNACK.
    first: bool,
    /// A `: ping` goes out with the next wrap.
    pub ping_due: bool,
    pub next_ping_ms: u64,
    pub ping_every_ms: u64,
    /// The stream is to end: the last chunk follows the next wrap.
    pub ending: bool,
    /// The last chunk is written; nothing may follow it.
    terminated: bool,
}

impl SseState {
    /// After the 200 head: `out_len` bytes of HTTP already wait in `out`.
    pub fn new(sid: Sid, out_len: usize, now_ms: u64) -> Self {
        SseState {
            sid,
            framed_len: out_len,
            first: true,
            ping_due: false,
            next_ping_ms: now_ms + PING_MAX_MS,
            ping_every_ms: PING_MAX_MS,
            ending: false,
            terminated: false,
        }
    }

    /// Pings at least every 14 s, and at half the session's heartbeat when
    /// that is shorter (a proxy that times out idle streams faster than the
    /// heartbeat would otherwise cut them; it also keeps the rule testable).
    pub fn set_heartbeat(&mut self, heartbeat_s: u16, now_ms: u64) {
        self.ping_every_ms = (u64::from(heartbeat_s) * 500).clamp(100, PING_MAX_MS);
        self.next_ping_ms = now_ms + self.ping_every_ms;
    }

    /// Marks a ping due when its time has come.
    pub fn on_time(&mut self, now_ms: u64) {
        if now_ms >= self.next_ping_ms {
            self.ping_due = true;
            self.next_ping_ms = now_ms + self.ping_every_ms;
        }
    }

    pub fn deadline(&self) -> Option<u64> {
        (!self.terminated).then_some(self.next_ping_ms)
    }

    /// Replaces every frame of `out` past `framed_len` by its event, in one
    /// chunk; adds a due ping and, when ending, the last chunk.
    pub fn wrap_out(&mut self, out: &mut BytesMut) {
        if self.terminated {
            // Nothing follows the last chunk.
            out.truncate(self.framed_len.min(out.len()));
            return;
        }
        let tail = out.split_off(self.framed_len.min(out.len()));
        let mut ev = String::new();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut pos = 0;
        while pos + HEADER_LEN < tail.len() {
            let len = u32::from_be_bytes([tail[pos], tail[pos + 1], tail[pos + 2], tail[pos + 3]]) as usize;
            let end = (pos + HEADER_LEN + len).min(tail.len());
            let f = &tail[pos..end];
            let ty = f[HEADER_LEN];
            if ty == T_PUSH && f.len() >= HEADER_LEN + 9 {
                let seq = u64::from_be_bytes(f[HEADER_LEN + 1..HEADER_LEN + 9].try_into().unwrap_or([0; 8]));
                ev.push_str(&format!("id: {seq}\n"));
            }
            ev.push_str("event: frame\ndata: ");
            b64.encode_string(f, &mut ev);
            ev.push_str("\n\n");
            if self.first {
                self.first = false;
                if ty == T_CONNACK && f.get(HEADER_LEN + 1) == Some(&0) {
                    ev.push_str(&format!("event: session\ndata: {}\n\n", self.sid.encode()));
                }
            }
            pos = end;
        }
        if self.ping_due {
            self.ping_due = false;
            ev.push_str(": ping\n\n");
        }
        if !ev.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
            out.extend_from_slice(ev.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.ending {
            out.extend_from_slice(b"0\r\n\r\n");
            self.terminated = true;
        }
        self.framed_len = out.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{encode_push, ConnAck, Frame, Utf8Bytes};

    fn connack(status: u8) -> Frame {
        Frame::ConnAck(ConnAck {
            status,
            user_id: Utf8Bytes::from("u"),
            heartbeat_s: 30,
            max_frame: 1024,
            oldest_seq: 1,
            head_seq: 0,
            server_time_ms: 0,
        })
    }

    /// Un-chunks `raw` (after `skip` head bytes) into the event text.
    fn unchunk(raw: &[u8]) -> (String, bool) {
        let mut s = std::str::from_utf8(raw).unwrap();
        let mut text = String::new();
        loop {
            let Some((n, rest)) = s.split_once("\r\n") else { return (text, false) };
            let n = usize::from_str_radix(n, 16).unwrap();
            if n == 0 {
                assert_eq!(rest, "\r\n");
                return (text, true);
            }
            text.push_str(&rest[..n]);
            assert_eq!(&rest[n..n + 2], "\r\n");
            s = &rest[n + 2..];
        }
    }

    #[test]
    fn events_ids_session_ping_and_end() {
        let sid = Sid::new(1);
        let mut out = BytesMut::from(&b"HEAD"[..]);
        let mut st = SseState::new(sid, 4, 0);
        connack(0).encode(&mut out);
        encode_push(&mut out, 7, 1, 2, "bob", 0, b"hi");
        st.wrap_out(&mut out);
        st.wrap_out(&mut out); // nothing new: no empty chunk
        Frame::Pong { nonce: 1 }.encode(&mut out);
        st.on_time(PING_MAX_MS);
        st.wrap_out(&mut out);
        st.ending = true;
        st.wrap_out(&mut out);
        Frame::Pong { nonce: 2 }.encode(&mut out);
        st.wrap_out(&mut out);
        assert_eq!(&out[..4], b"HEAD");
        let (text, ended) = unchunk(&out[4..]);
        assert!(ended);
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 5, "{text}");
        assert!(events[0].starts_with("event: frame\ndata: ") && !events[0].contains("id:"), "{}", events[0]);
        assert_eq!(events[1], format!("event: session\ndata: {}", sid.encode()));
        assert!(events[2].starts_with("id: 7\nevent: frame\ndata: "), "{}", events[2]);
        let data = events[2].rsplit("data: ").next().unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
        let mut b = BytesMut::new();
        encode_push(&mut b, 7, 1, 2, "bob", 0, b"hi");
        assert_eq!(raw, &b[..]);
        assert!(!events[3].contains("id:"));
        assert_eq!(events[4], ": ping");
    }

    #[test]
    fn refused_connack_has_no_session_event() {
        let mut out = BytesMut::new();
        let mut st = SseState::new(Sid::new(0), 0, 0);
        connack(2).encode(&mut out);
        st.ending = true;
        st.wrap_out(&mut out);
        let (text, ended) = unchunk(&out);
        assert!(ended && !text.contains("session"), "{text}");
    }
}
