//! The write side of the core/driver seam, in quinn's shape: the core marks what each connection has to write, the driver asks for the next transmit ([`Core::poll_transmit`]), performs it on its socket and reports the result ([`Core::on_sent`]), and the follow-ups that used to act on a write's result inside the core (backpressure, FIN after the flush, the close after `Connection: close`, waking a blocked task) run in that report.
//!
//! Why: the core used to write through the driver's transport inside its
//! own calls, so about ten places acted on a `send`'s result at once. Now
//! the core owns no socket and performs no write: `Core` is sans-IO on the
//! write side as `proto::Session` is, and a driver is three lines —
//!
//! ```text
//! while let Some(t) = core.poll_transmit() {
//!     let r = match t.what { Tx::Data(b) => send(t.sock, b.slices()), Tx::Fin => shutdown(t.sock) };
//!     core.on_sent(t.key, r);
//! }
//! ```
//!
//! — run after every call into the core (`on_io`, `flush_dirty`,
//! `on_tick`, `adopt`, `on_message`). Nothing else may be called into the
//! core between a `poll_transmit` and its `on_sent`: the slices borrow the
//! connection's buffers, and a WebSocket's or SSE stream's `framed_len`
//! counts on `out` not changing under the write.
//!
//! What stays as it was:
//!
//! - **one write per connection per loop turn.** Frames produced while the
//!   core handles events still only mark the connection dirty
//!   (`flush.rs`); the flusher's `flush_dirty` turns the batch into
//!   transmits, one per connection. A write that the socket takes only in
//!   part is asked for again at once (the rest, then most likely
//!   `WouldBlock`), as the old write loop did.
//! - **no copy of output bytes**: [`Tx::Data`] lends `tls_out` (sealed by
//!   our record layer) or, on plain TCP, `out` itself. (rustls' own records
//!   — the handshake, TLS 1.2 — are copied into `tls_out` once: rustls
//!   hands them only to an `io::Write`; see `Conn::stage`.)
//! - **bounds**: the transmit queue holds each connection at most once (a
//!   flag on the slot), so it is bounded by the number of connections,
//!   like the dirty list; a driver drains it after every call, so between
//!   calls it is empty.
//!
//! Who learns a blocked write: the connection's own task, when the write
//! came from its own readiness step (`on_io`), looks at `wants_write`
//! after the drain and waits for writability; any other write (the
//! flusher, the ticker, an adopted connection) wakes the task, which is
//! waiting for readability and would otherwise never learn it.

use std::io::{self, IoSlice};

use super::{ConnKey, Core, Sock};
use crate::runtime::framing::Framing;

/// What one transmit asks of the driver.
pub enum Tx<'a> {
    /// Write these bytes (in order, as much as the socket takes).
    Data(Slices<'a>),
    /// Half-close the socket: everything owed went out (the last transmit
    /// of a closing connection).
    Fin,
}

/// Up to two slices of one connection's buffers (sealed bytes, then on
/// plain TCP the plaintext itself), gathered into one `sendmsg` when both
/// are there.
pub struct Slices<'a> {
    bufs: [IoSlice<'a>; 2],
    n: usize,
}

impl<'a> Slices<'a> {
    fn new(parts: [&'a [u8]; 2]) -> Self {
        let mut bufs = [IoSlice::new(&[]), IoSlice::new(&[])];
        let mut n = 0;
        for p in parts {
            if !p.is_empty() {
                bufs[n] = IoSlice::new(p);
                n += 1;
            }
        }
        Slices { bufs, n }
    }

    /// The non-empty slices, for a gather write.
    pub fn slices(&self) -> &[IoSlice<'a>] {
        &self.bufs[..self.n]
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.slices().iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// One write the driver is to perform for the core.
pub struct Transmit<'a> {
    /// Whose write: report its result with this key.
    pub key: ConnKey,
    /// The connection's socket, as the driver named it.
    pub sock: Sock,
    pub what: Tx<'a>,
}

/// Follow-ups of a connection's queued write, as bits on its slot (`Slot::tx`).
pub(super) mod then {
    /// In the transmit queue.
    pub const QUEUED: u8 = 1;
    /// `after_io`'s over-high-water bookkeeping (the slow-consumer clock),
    /// on what is left unsent after the write.
    pub const HW: u8 = 2;
    /// A closing session: after the write, its close answer, close_notify
    /// and FIN (FIN once everything drained), whatever the write's result.
    pub const SHUTDOWN: u8 = 4;
    /// HTTP `Connection: close` (or a bad request, or EOF): once everything
    /// drained, close_notify and FIN, then the connection closes.
    pub const CLOSE_IF_DRAINED: u8 = 8;
    /// HTTP requests were left behind the output high-water mark: once
    /// everything drained, the task serves them (without reading first).
    pub const MORE_IF_DRAINED: u8 = 16;
    /// A blocked write wakes the task (the write was not its own step's).
    pub const WAKE_ON_BLOCK: u8 = 32;
    /// The connection closes when this write round ends.
    pub const CLOSE_AT_END: u8 = 64;
}

use then::*;

/// The transmit queue and the one transmit handed out and not yet reported.
#[derive(Default)]
pub struct Transmits {
    queue: std::collections::VecDeque<ConnKey>,
    /// (key, FIN) of the transmit `poll_transmit` handed out last.
    inflight: Option<(ConnKey, bool)>,
    /// The connection whose own readiness step (`on_io`, `before_io`) is
    /// running: its blocked writes need no wake-up.
    pub(super) task: Option<ConnKey>,
    /// Transmits handed out (writes and FINs), for tests and the trace.
    pub handed_out: u64,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::EAGAIN)
}

/// What follows a write round.
enum After {
    /// Another round (the half-close), with these follow-ups.
    Again(u8),
    Wake,
    Nothing,
}

/// What `poll_transmit` decided for the connection at the queue's front.
enum Next {
    Write(Sock),
    Fin(Sock),
    /// Nothing (more) to write: the round ends; `socket` false for a
    /// connection without one (long-poll).
    End { socket: bool },
    /// Sealing failed (a key at its limit): the connection is dead.
    Failed,
    Stale,
}

impl Core {
    /// Queues connection `key`'s write with follow-ups `then` (bits of
    /// [`then`]); a connection already queued gets the follow-ups added
    /// (one write carries everything its buffers hold by then).
    pub(super) fn transmit(&mut self, key: ConnKey, then: u8) {
        let wake = if self.tx.task == Some(key) { 0 } else { WAKE_ON_BLOCK };
        self.enqueue(key, then | wake);
    }

    fn enqueue(&mut self, key: ConnKey, bits: u8) {
        let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else { return };
        if slot.tx & QUEUED == 0 {
            self.tx.queue.push_back(key);
        }
        slot.tx |= bits | QUEUED;
    }

    /// The first half of a connection's readiness step, before `on_io`:
    /// a connection that owes its peer more than the output high-water
    /// mark gets its write first, so that `on_io` reads only if that write
    /// brought it under the mark (backpressure: while the peer does not
    /// read what we owe it, we do not read what it sends; TCP then pushes
    /// back on the peer). The driver performs the transmit before `on_io`.
    pub fn before_io(&mut self, key: ConnKey) {
        let hw = self.live.limits_cfg.output_high_water_bytes as usize;
        let Some(conn) = self.conn(key) else { return };
        if conn.dead || conn.unsent_bytes() <= hw {
            return;
        }
        // The task's own write: its result is looked at by `on_io`.
        self.enqueue(key, 0);
    }

    /// The next write the driver is to perform, if any: the connection's
    /// socket and its staged bytes (borrowed from its buffers), or a FIN.
    /// Report the result with [`Core::on_sent`] before any other call into
    /// the core. Asking again without reporting gives the same transmit.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        loop {
            let key = *self.tx.queue.front()?;
            let next = match self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen && s.tx & QUEUED != 0) {
                None => Next::Stale,
                Some(slot) => {
                    let conn = &mut slot.conn;
                    match conn.stage() {
                        Err(e) => {
                            tracing::debug!(error = %e, "sealing failed");
                            Next::Failed
                        }
                        Ok(false) => Next::End { socket: false },
                        Ok(true) => match conn.sock {
                            Some(sock) if conn.has_sendable() => Next::Write(sock),
                            Some(sock) if conn.fin_wanted && conn.drained() && !conn.shut_wr => Next::Fin(sock),
                            _ => Next::End { socket: true },
                        },
                    }
                }
            };
            match next {
                Next::Stale => {
                    self.tx.queue.pop_front();
                }
                Next::Failed => {
                    self.tx.queue.pop_front();
                    self.write_failed(key);
                }
                Next::End { socket } => {
                    self.tx.queue.pop_front();
                    self.round_ended(key, socket);
                }
                Next::Write(sock) | Next::Fin(sock) => {
                    let fin = matches!(next, Next::Fin(_));
                    self.tx.inflight = Some((key, fin));
                    self.tx.handed_out += 1;
                    let conn = &self.conns[key.idx as usize].conn;
                    let what = if fin { Tx::Fin } else { Tx::Data(Slices::new(conn.sendable())) };
                    return Some(Transmit { key, sock, what });
                }
            }
        }
    }

    /// The driver performed the transmit `poll_transmit` handed out for
    /// `key`: `Ok(n)` bytes written (a FIN reports `Ok(0)`; its result is
    /// not looked at: the connection is closing anyway), or the error. A
    /// partial write leaves the connection queued (the driver's next
    /// `poll_transmit` asks for the rest); `WouldBlock` ends the round with
    /// the task waiting for writability; any other error ends the
    /// connection. The round's follow-ups run when it ends.
    pub fn on_sent(&mut self, key: ConnKey, result: io::Result<usize>) {
        let Some((k, fin)) = self.tx.inflight.take() else { return };
        debug_assert_eq!(k, key, "on_sent for another transmit than the one handed out");
        if k != key || self.tx.queue.front() != Some(&key) {
            return;
        }
        let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else {
            self.tx.queue.pop_front();
            return;
        };
        let conn = &mut slot.conn;
        if fin {
            conn.fin_wanted = false;
            conn.shut_wr = true;
            // Still queued: the next `poll_transmit` ends the round.
            return;
        }
        match result {
            Ok(n) if n > 0 => conn.on_sent(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A zero-byte write of a non-empty buffer is push-back too.
            Ok(_) => {
                self.tx.queue.pop_front();
                self.round_ended(key, true);
            }
            Err(e) if would_block(&e) => {
                self.tx.queue.pop_front();
                self.round_ended(key, true);
            }
            Err(e) => {
                tracing::debug!(error = %e, "socket write failed");
                self.tx.queue.pop_front();
                self.write_failed(key);
            }
        }
    }

    /// The write failed (peer gone, or sealing failed): the connection is
    /// dead, its task told (it closes at its next step).
    fn write_failed(&mut self, key: ConnKey) {
        if let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) {
            slot.tx = 0;
            slot.conn.dead = true;
        }
        self.wake(key);
    }

    /// A connection's write round ended: everything went out, or the socket
    /// pushed back. Runs the follow-ups its queued write carried.
    fn round_ended(&mut self, key: ConnKey, socket: bool) {
        let hw = self.live.limits_cfg.output_high_water_bytes as usize;
        let now = self.shared.clock.mono_ms();
        let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else { return };
        let bits = std::mem::take(&mut slot.tx);
        let conn = &mut slot.conn;
        if socket {
            conn.write_ended();
        }
        let drained = !conn.write_blocked;
        if bits & HW != 0 {
            if conn.unsent_bytes() > hw {
                if conn.over_hw_since_ms == 0 {
                    conn.over_hw_since_ms = now.max(1);
                }
            } else {
                conn.over_hw_since_ms = 0;
            }
        }
        let keep = bits & WAKE_ON_BLOCK;
        let after = if bits & SHUTDOWN != 0 {
            // As before: the half-close follows the write, blocked or not
            // (its close_notify then waits behind the backlog).
            conn.prepare_shutdown();
            After::Again(keep | (bits & CLOSE_AT_END))
        } else if bits & CLOSE_IF_DRAINED != 0 && drained {
            conn.prepare_shutdown();
            After::Again(keep | CLOSE_AT_END)
        } else if bits & CLOSE_AT_END != 0 {
            conn.dead = true;
            After::Wake
        } else if bits & MORE_IF_DRAINED != 0 && drained {
            if let Framing::Http(h) = &mut conn.framing {
                h.resume = true;
            }
            After::Wake
        } else if !drained && bits & WAKE_ON_BLOCK != 0 {
            After::Wake
        } else {
            After::Nothing
        };
        // A long-poll session's newer poll waited behind this answer.
        let lp = if drained { conn.framing.http_mut().and_then(|h| h.lp_waiting.take()) } else { None };
        if bits & HW != 0 {
            // The slow-consumer deadline may have moved.
            self.rearm(key);
        }
        if let Some(v) = lp {
            self.kick(v);
        }
        match after {
            After::Again(b) => self.enqueue(key, b),
            After::Wake => self.wake(key),
            After::Nothing => {}
        }
    }

    /// Transmits handed out so far (writes and FINs).
    pub fn transmits_handed_out(&self) -> u64 {
        self.tx.handed_out
    }
}
