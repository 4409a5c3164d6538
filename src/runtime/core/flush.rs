//! One write per connection per loop turn: frames produced while the core handles events only mark their connection dirty; the core's flusher task seals and writes each dirty connection once, after the tasks already ready have run.
//!
//! Why: a fan-out, a burst of SENDs from several senders to one receiver,
//! or a PUSHACK that refills the window each used to end in its own
//! `send(2)` (a TLS record and a syscall per PUSH). Deferring the write to
//! the end of the turn lets everything the turn produced for a connection
//! leave as as few TLS records as fit (≤ 16 KiB each, `tls_record`) in one
//! `send`.
//!
//! The turn: monoio runs its ready tasks FIFO, then submits and waits for
//! I/O. The first `kick` of a turn wakes the flusher, which is queued behind
//! the tasks already ready (the connection tasks whose sockets fired, the
//! ticker, the mailbox loop), so it runs after them and sees all of their
//! output. The dirty list holds each connection at most once (a flag on the
//! slot), so it is bounded by the number of connections (plus keys of
//! connections removed during the turn, which are skipped).

use std::task::{Poll, Waker};

use super::{ConnKey, Core, Outcome, Tls};
use crate::proto::session::Phase;

/// The dirty list and the flusher's waker.
#[derive(Default)]
pub struct Dirty {
    keys: Vec<ConnKey>,
    flusher: Option<Waker>,
    /// Writes (flushes) made by the flusher, and turns it ran: for tests
    /// and the bench trace (writes ÷ turns = connections per batch).
    pub flushes: u64,
    pub turns: u64,
}

impl Core {
    /// Output was appended to the connection from outside its own I/O step
    /// (push, SENDACK, close, timer): write it at the end of this turn.
    pub(super) fn kick(&mut self, key: ConnKey) {
        let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else { return };
        if slot.dirty {
            return;
        }
        slot.dirty = true;
        self.dirty.keys.push(key);
        if self.dirty.keys.len() == 1 {
            if let Some(w) = self.dirty.flusher.take() {
                w.wake();
            }
        }
    }

    /// The end of a connection's own I/O step when nothing needs to happen
    /// at once: its write joins the turn's batch; the read buffers are
    /// released and the timer re-armed now. A closing or finished session
    /// takes the immediate path (`after_io`), which half-closes.
    pub(super) fn after_io_deferred(&mut self, key: ConnKey) -> Outcome {
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        if conn.dead || matches!(conn.session.phase(), Phase::Closing | Phase::Finished) {
            return self.after_io(key);
        }
        // rustls (the handshake, TLS 1.2) may hold records of its own.
        if conn.unsent_bytes() > 0 || matches!(conn.tls, Tls::Rustls(_) | Tls::Accepting(_)) {
            self.kick(key);
        }
        let Some(conn) = self.conn(key) else { return Outcome::Close };
        conn.release_idle_buffers();
        self.rearm(key);
        Outcome::Continue
    }

    /// The flusher's wait: takes the dirty list into `batch` when it is not
    /// empty, else stores the waker for the next `kick`.
    pub fn poll_dirty(&mut self, waker: &Waker, batch: &mut Vec<ConnKey>) -> Poll<()> {
        if self.dirty.keys.is_empty() {
            if !self.dirty.flusher.as_ref().is_some_and(|w| w.will_wake(waker)) {
                self.dirty.flusher = Some(waker.clone());
            }
            return Poll::Pending;
        }
        std::mem::swap(&mut self.dirty.keys, batch);
        Poll::Ready(())
    }

    /// Writes every connection of `batch` once (emptying it).
    pub fn flush_dirty(&mut self, batch: &mut Vec<ConnKey>) {
        self.dirty.turns += 1;
        for key in batch.drain(..) {
            let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else { continue };
            slot.dirty = false;
            self.dirty.flushes += 1;
            self.flush_now(key);
        }
        // A list that grew large once (a fan-out to many connections) does
        // not keep its allocation.
        if batch.capacity() > 1024 {
            *batch = Vec::new();
        }
    }
}
