//! Per-connection session state machine of protocol v1 (connect, heartbeat, inflight window, cumulative ACK, retransmission, close).
//!
//! Sans-IO in the quinn-proto sense: the caller feeds decrypted bytes
//! ([`Session::poll_frame`]), the current time and timer expiries
//! ([`Session::on_timeout`]); the session appends encoded frames to an
//! output buffer the caller owns and returns [`Event`]s for what needs the
//! rest of the server (authentication, routing a SEND, filling the window).
//! It asks for exactly one timer, [`Session::next_deadline`], which the
//! per-core wheel keeps.
//!
//! Why the session is small (~80 B): a gateway holds millions of these. The
//! inbox is the delivery queue (rule 5), so the session keeps only cursors:
//! `acked` (cumulative PUSHACK), `sent` (highest seq pushed), `replay_until`
//! (head at connect time: seqs up to it are replays and carry REDELIVERY).
//! The current retransmission timeout is derived (`ack_timeout << retries`)
//! rather than stored, and the idle deadline is derived from `last_rx_ms`, so
//! receiving a frame never moves a timer: an early wheel expiry just finds
//! nothing due and re-arms (lazy deadlines, as in most wheel-based servers).

use bytes::BytesMut;

use super::error::{connack, DisconnectReason, FrameError};
use super::frame::{self, ConnAck, Frame, Send, Utf8Bytes, FLAG_REDELIVERY};

/// How long a closing connection waits for the peer to read our DISCONNECT
/// and close first (so our FIN does not race unread data into an RST).
pub const CLOSE_LINGER_MS: u64 = 2_000;

/// Longest `device_id` accepted in CONNECT (PROTOCOL.md: 1..64 bytes).
pub const MAX_DEVICE_ID: usize = 64;
/// Longest token accepted in CONNECT (PROTOCOL.md: ..4096 bytes).
pub const MAX_TOKEN: usize = 4096;

/// Largest frame accepted before CONNECT. A valid CONNECT is at most ~4.2 KB
/// (64-byte device id, 4096-byte token); an anonymous peer may not make the
/// server buffer a `max_frame`-sized frame before it has authenticated.
pub const MAX_PREAUTH_FRAME: u32 = 8 * 1024;

/// The retransmission timeout doubles at most this many times.
pub const MAX_BACKOFF_DOUBLINGS: u32 = 8;

/// Session limits; one copy per core, passed by reference (not stored per session).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    pub heartbeat_s: u16,
    pub handshake_timeout_ms: u64,
    pub ack_timeout_ms: u64,
    pub max_retries: u32,
    pub inflight_window: u32,
    pub max_frame: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            heartbeat_s: 30,
            handshake_timeout_ms: 10_000,
            ack_timeout_ms: 5_000,
            max_retries: 2,
            inflight_window: 64,
            max_frame: 65_536,
        }
    }
}

/// One retained inbox entry, borrowed from the store.
#[derive(Clone, Debug)]
pub struct EntryRef<'a> {
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub from: &'a str,
    /// Owned (a reference count): a durable store may have read it from disk.
    pub payload: bytes::Bytes,
}

/// Read access to one user's inbox; implemented by the store.
pub trait InboxRead {
    /// `(oldest_seq, head_seq)`; `oldest = head + 1` when nothing is retained.
    fn bounds(&self) -> (u64, u64);
    fn get(&self, seq: u64) -> Option<EntryRef<'_>>;
}

/// The inbox of a user that has never received anything.
pub struct EmptyInbox;

impl InboxRead for EmptyInbox {
    fn bounds(&self) -> (u64, u64) {
        (1, 0)
    }
    fn get(&self, _seq: u64) -> Option<EntryRef<'_>> {
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the first frame, which must be CONNECT.
    AwaitConnect,
    /// CONNECT received and handed to the server; no more frames are
    /// consumed until it answers with `accept` or `refuse`.
    Authenticating,
    Open,
    /// DISCONNECT (or a refusing CONNACK) written; waiting for the peer to
    /// close, at most until the deadline.
    Closing,
    /// Done: drop the connection.
    Finished,
}

/// A CONNECT that passed the session's own checks; the server verifies the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    pub keepalive_s: u16,
    pub device_id: Utf8Bytes,
    pub token: Utf8Bytes,
    pub last_seq: u64,
}

/// What the caller must do after a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// No complete frame buffered (or the phase consumes none now).
    NeedMore,
    /// A frame was handled inside the session (maybe output was written).
    Handled,
    /// Verify the token and call `accept` or `refuse`.
    Connect(ConnectRequest),
    /// Route the message, then write a SENDACK.
    Send(Send),
    /// The window moved: call `fill`.
    Acked,
    /// The session is closing or finished; see `phase()`.
    Closed,
}

#[derive(Debug)]
pub struct Session {
    phase: Phase,
    /// Negotiated heartbeat (CONNACK `heartbeat_s`).
    heartbeat_s: u16,
    /// Retransmissions of the current oldest unacked PUSH so far.
    retries: u32,
    close_reason: Option<DisconnectReason>,
    /// Accept time + handshake timeout, until Open; linger deadline while Closing.
    phase_deadline_ms: u64,
    last_rx_ms: u64,
    /// When the token expires (ms); 0 = never checked.
    token_exp_ms: u64,
    acked: u64,
    sent: u64,
    replay_until: u64,
    /// 0 = nothing unacked.
    ack_deadline_ms: u64,
    /// Retransmission rounds so far (for metrics and the delivery ledger).
    retransmissions: u64,
}

impl Session {
    /// A connection accepted at `now_ms` (the handshake timeout counts from here, TLS included).
    pub fn new(now_ms: u64, lim: &SessionLimits) -> Self {
        Session {
            phase: Phase::AwaitConnect,
            heartbeat_s: lim.heartbeat_s,
            retries: 0,
            close_reason: None,
            phase_deadline_ms: now_ms.saturating_add(lim.handshake_timeout_ms),
            last_rx_ms: now_ms,
            token_exp_ms: 0,
            acked: 0,
            sent: 0,
            replay_until: 0,
            ack_deadline_ms: 0,
            retransmissions: 0,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn close_reason(&self) -> Option<DisconnectReason> {
        self.close_reason
    }

    pub fn heartbeat_s(&self) -> u16 {
        self.heartbeat_s
    }

    /// Cumulative PUSHACK so far (the device's cursor).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Highest seq pushed on this connection.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Seqs up to this are replays of what was in the inbox at CONNECT.
    pub fn replay_until(&self) -> u64 {
        self.replay_until
    }

    /// Retransmission rounds so far; each resends `acked() + 1 ..= sent()`.
    pub fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    pub fn inflight(&self) -> u64 {
        self.sent - self.acked
    }

    fn idle_ms(&self) -> u64 {
        self.heartbeat_s as u64 * 2_500
    }

    /// Decodes and handles at most one frame from `rbuf`.
    pub fn poll_frame(
        &mut self,
        now_ms: u64,
        lim: &SessionLimits,
        rbuf: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Event {
        match self.phase {
            Phase::AwaitConnect | Phase::Open => {}
            Phase::Authenticating => return Event::NeedMore,
            Phase::Closing | Phase::Finished => {
                // Whatever arrives after our DISCONNECT is discarded.
                rbuf.clear();
                return Event::NeedMore;
            }
        }
        let max_frame = if self.phase == Phase::AwaitConnect { lim.max_frame.min(MAX_PREAUTH_FRAME) } else { lim.max_frame };
        let frame = match frame::decode(rbuf, max_frame) {
            Ok(Some(f)) => f,
            Ok(None) => return Event::NeedMore,
            Err(e) => return self.protocol_error(now_ms, &e, out),
        };
        self.last_rx_ms = now_ms;
        if self.phase == Phase::AwaitConnect {
            return self.on_first_frame(now_ms, lim, frame, out);
        }
        match frame {
            Frame::Ping { nonce } => {
                Frame::Pong { nonce }.encode(out);
                Event::Handled
            }
            Frame::Pong { .. } => Event::Handled,
            Frame::PushAck { seq } => self.on_ack(now_ms, lim, seq),
            Frame::Send(s) => Event::Send(s),
            Frame::Disconnect { .. } => {
                // The device says goodbye: nothing left to tell it.
                self.close_reason = Some(DisconnectReason::Normal);
                self.phase = Phase::Finished;
                Event::Closed
            }
            other => {
                let msg = format!("unexpected {} frame from a device", other.name());
                self.close(now_ms, DisconnectReason::ProtocolError, &msg, out);
                Event::Closed
            }
        }
    }

    fn on_first_frame(
        &mut self,
        now_ms: u64,
        lim: &SessionLimits,
        frame: Frame,
        out: &mut BytesMut,
    ) -> Event {
        let c = match frame {
            Frame::Connect(c) => c,
            other => {
                let msg = format!("first frame must be CONNECT, got {}", other.name());
                self.close(now_ms, DisconnectReason::ProtocolError, &msg, out);
                return Event::Closed;
            }
        };
        if c.version != 1 {
            self.refuse(now_ms, lim, connack::UNSUPPORTED_VERSION, out);
            return Event::Closed;
        }
        if c.device_id.is_empty() || c.device_id.len() > MAX_DEVICE_ID || c.token.len() > MAX_TOKEN {
            self.refuse(now_ms, lim, connack::MALFORMED, out);
            return Event::Closed;
        }
        self.phase = Phase::Authenticating;
        Event::Connect(ConnectRequest {
            keepalive_s: c.keepalive_s,
            device_id: c.device_id,
            token: c.token,
            last_seq: c.last_seq,
        })
    }

    fn on_ack(&mut self, now_ms: u64, lim: &SessionLimits, seq: u64) -> Event {
        // An ack beyond what was pushed on this connection can only be
        // clamped: the device cannot have more than it was sent.
        let seq = seq.min(self.sent);
        if seq <= self.acked {
            return Event::Handled;
        }
        self.acked = seq;
        self.retries = 0;
        self.ack_deadline_ms = if self.acked < self.sent {
            now_ms.saturating_add(lim.ack_timeout_ms)
        } else {
            0
        };
        Event::Acked
    }

    fn protocol_error(&mut self, now_ms: u64, e: &FrameError, out: &mut BytesMut) -> Event {
        self.close(now_ms, e.reason(), &e.to_string(), out);
        Event::Closed
    }

    /// Accepts the pending CONNECT: writes CONNACK(0) and opens the session.
    /// `bounds` are the user's inbox `(oldest_seq, head_seq)`; `token_exp_ms`
    /// is when the token stops being valid (0 = never), on the same clock as
    /// `now_ms`. `server_time_ms` is the wall clock for CONNACK (`now_ms` is
    /// a monotonic clock in the server, so the two differ).
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        &mut self,
        now_ms: u64,
        server_time_ms: u64,
        lim: &SessionLimits,
        user_id: &str,
        req: &ConnectRequest,
        bounds: (u64, u64),
        token_exp_ms: u64,
        out: &mut BytesMut,
    ) {
        let (oldest, head) = bounds;
        self.heartbeat_s = if req.keepalive_s != 0 && req.keepalive_s < lim.heartbeat_s {
            req.keepalive_s
        } else {
            lim.heartbeat_s
        };
        // A device may claim more than this inbox holds (the server lost its
        // memory-mode state); its cursor cannot be beyond head, or new
        // messages would be skipped. Below oldest, what is gone is gone.
        let cursor = req.last_seq.min(head).max(oldest.saturating_sub(1));
        self.acked = cursor;
        self.sent = cursor;
        self.replay_until = head;
        self.retries = 0;
        self.ack_deadline_ms = 0;
        self.token_exp_ms = token_exp_ms;
        self.last_rx_ms = now_ms;
        self.phase = Phase::Open;
        self.phase_deadline_ms = 0;
        Frame::ConnAck(ConnAck {
            status: connack::OK,
            user_id: Utf8Bytes::from(user_id),
            heartbeat_s: self.heartbeat_s,
            max_frame: lim.max_frame,
            oldest_seq: oldest,
            head_seq: head,
            server_time_ms,
        })
        .encode(out);
    }

    /// Refuses the CONNECT with a non-zero CONNACK status, then closes.
    /// `server_time_ms` is 0 in a refusal: the session has no wall clock.
    pub fn refuse(&mut self, now_ms: u64, lim: &SessionLimits, status: u8, out: &mut BytesMut) {
        Frame::ConnAck(ConnAck {
            status,
            user_id: Utf8Bytes::default(),
            heartbeat_s: lim.heartbeat_s,
            max_frame: lim.max_frame,
            oldest_seq: 0,
            head_seq: 0,
            server_time_ms: 0,
        })
        .encode(out);
        self.enter_closing(now_ms);
    }

    /// Writes DISCONNECT(reason) and starts closing. Idempotent.
    pub fn close(&mut self, now_ms: u64, reason: DisconnectReason, message: &str, out: &mut BytesMut) {
        if matches!(self.phase, Phase::Closing | Phase::Finished) {
            return;
        }
        frame::encode_disconnect(out, reason.code(), message);
        self.close_reason = Some(reason);
        self.enter_closing(now_ms);
    }

    /// Transport activity that is not a frame but counts as traffic for the
    /// idle rule: an empty POST on SSE, an open long-poll (WEB.md).
    pub fn touch(&mut self, now_ms: u64) {
        if self.phase == Phase::Open {
            self.last_rx_ms = self.last_rx_ms.max(now_ms);
        }
    }

    /// Ends the session without writing anything (transport already gone).
    pub fn abort(&mut self) {
        self.phase = Phase::Finished;
    }

    fn enter_closing(&mut self, now_ms: u64) {
        self.phase = Phase::Closing;
        self.phase_deadline_ms = now_ms.saturating_add(CLOSE_LINGER_MS);
        self.ack_deadline_ms = 0;
    }

    /// Pushes inbox entries while the inflight window has room. Returns how many were written.
    pub fn fill(&mut self, now_ms: u64, lim: &SessionLimits, inbox: &dyn InboxRead, out: &mut BytesMut) -> usize {
        if self.phase != Phase::Open {
            return 0;
        }
        let (oldest, head) = inbox.bounds();
        let window = lim.inflight_window.max(1) as u64;
        let was_empty = self.sent == self.acked;
        let mut n = 0;
        let mut skipped = false;
        while self.sent - self.acked < window && self.sent < head {
            let seq = self.sent + 1;
            if seq < oldest {
                // Retention dropped entries this device never got; the seq
                // gap it sees tells it so, as `oldest_seq` does on connect.
                self.sent = oldest - 1;
                self.acked = self.acked.max(self.sent);
                skipped = true;
                continue;
            }
            let Some(e) = inbox.get(seq) else { break };
            let flags = if seq <= self.replay_until { FLAG_REDELIVERY } else { 0 };
            frame::encode_push(out, seq, e.msg_id, e.timestamp_ms, e.from, flags, &e.payload);
            self.sent = seq;
            n += 1;
        }
        if skipped {
            // Whatever was in flight is gone with the skip: its timer and
            // spent retries must not carry over to what was sent just now.
            self.ack_deadline_ms = if n > 0 { now_ms.saturating_add(lim.ack_timeout_ms) } else { 0 };
            self.retries = 0;
        } else if n > 0 && was_empty {
            self.ack_deadline_ms = now_ms.saturating_add(lim.ack_timeout_ms);
            self.retries = 0;
        }
        n
    }

    /// The one deadline this session needs, if any. Never earlier than the
    /// true next event; receiving frames only moves it later, so a caller
    /// re-arms its timer only when this is earlier than what it armed.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::AwaitConnect | Phase::Authenticating | Phase::Closing => Some(self.phase_deadline_ms),
            Phase::Finished => None,
            Phase::Open => {
                let mut d = self.last_rx_ms.saturating_add(self.idle_ms());
                if self.ack_deadline_ms != 0 {
                    d = d.min(self.ack_deadline_ms);
                }
                if self.token_exp_ms != 0 {
                    d = d.min(self.token_exp_ms);
                }
                Some(d)
            }
        }
    }

    /// Handles whatever is due at `now_ms`. `write_blocked`: the transport
    /// has had unsent bytes since before this call (the device is not
    /// reading), which turns a retransmission into a slow-consumer close.
    pub fn on_timeout(
        &mut self,
        now_ms: u64,
        lim: &SessionLimits,
        inbox: &dyn InboxRead,
        write_blocked: bool,
        out: &mut BytesMut,
    ) {
        match self.phase {
            Phase::AwaitConnect | Phase::Authenticating => {
                if now_ms >= self.phase_deadline_ms {
                    self.close(now_ms, DisconnectReason::HandshakeTimeout, "no CONNECT in time", out);
                }
            }
            Phase::Closing => {
                if now_ms >= self.phase_deadline_ms {
                    self.phase = Phase::Finished;
                }
            }
            Phase::Finished => {}
            Phase::Open => {
                if now_ms >= self.last_rx_ms.saturating_add(self.idle_ms()) {
                    let msg = format!("nothing received for 2.5 x heartbeat ({} s)", self.heartbeat_s);
                    self.close(now_ms, DisconnectReason::IdleTimeout, &msg, out);
                } else if self.token_exp_ms != 0 && now_ms >= self.token_exp_ms {
                    self.close(now_ms, DisconnectReason::TokenExpired, "token expired", out);
                } else if self.ack_deadline_ms != 0 && now_ms >= self.ack_deadline_ms {
                    self.retransmit(now_ms, lim, inbox, write_blocked, out);
                }
            }
        }
    }

    fn retransmit(
        &mut self,
        now_ms: u64,
        lim: &SessionLimits,
        inbox: &dyn InboxRead,
        write_blocked: bool,
        out: &mut BytesMut,
    ) {
        // Retention may have dropped unacked entries since they were sent;
        // nobody can acknowledge those any more, so they leave the window.
        let (oldest, _) = inbox.bounds();
        if self.acked + 1 < oldest {
            self.acked = (oldest - 1).min(self.sent);
            self.retries = 0;
            if self.acked == self.sent {
                self.ack_deadline_ms = 0;
                return;
            }
        }
        if write_blocked {
            // Resending into a socket that has not drained the first copy
            // would only grow our buffers.
            let msg = "pushes not read within ack timeout";
            self.close(now_ms, DisconnectReason::SlowConsumer, msg, out);
            return;
        }
        if self.retries >= lim.max_retries {
            let msg = format!("no PUSHACK after {} retransmissions", self.retries);
            self.close(now_ms, DisconnectReason::AckTimeout, &msg, out);
            return;
        }
        self.retries += 1;
        self.retransmissions += 1;
        for seq in self.acked + 1..=self.sent {
            if let Some(e) = inbox.get(seq) {
                frame::encode_push(out, seq, e.msg_id, e.timestamp_ms, e.from, FLAG_REDELIVERY, &e.payload);
            }
        }
        // Exact doubling for every value config allows (max_retries ≤
        // MAX_BACKOFF_DOUBLINGS); beyond that the interval stops growing so a
        // library caller's large max_retries cannot push the next resend
        // out past any useful horizon (as TCP caps its RTO).
        let timeout = lim.ack_timeout_ms.saturating_mul(1u64 << self.retries.min(MAX_BACKOFF_DOUBLINGS));
        self.ack_deadline_ms = now_ms.saturating_add(timeout);
    }
}
