//! One write per connection per loop turn: frames produced while the core handles events only mark their connection dirty; the core's flusher task turns each dirty connection into one transmit (sealed and written by the driver right after, `transmit.rs`), after the tasks already ready have run.
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
use std::time::Instant;

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
    /// Stage trace (`RINGGATE_TRACE_STAGES=1`): off in production.
    pub trace: Option<Box<StageTrace>>,
}

/// Where a message's time goes inside the server, per stage, as log2
/// histograms of microseconds; logged when the worker stops. SEND read →
/// appended → PUSH queued happen inside one `on_io` call, so the stages
/// worth timing are the wait in the outbox (first `kick` of a turn → the
/// batch written) and PUSH written → PUSHACK read (the client's share plus
/// the loopback both ways).
#[derive(Default)]
pub struct StageTrace {
    /// When the dirty list became non-empty this turn (wall, thread CPU µs).
    dirty_since: Option<(Instant, u64)>,
    /// First `kick` of a turn → its batch queued for the driver's writes
    /// (which follow at once, in the same borrow of the core).
    pub outbox_wait: Log2Hist,
    /// The same span in this thread's CPU time: much less than the wall
    /// time means the thread was preempted (a busy machine), not working.
    pub outbox_wait_cpu: Log2Hist,
    /// A connection's oldest unacknowledged write → the PUSHACK that covered it.
    pub push_to_ack: Log2Hist,
    /// Connections written per flusher turn.
    pub batch: Log2Hist,
}

/// Counts per power-of-two bucket: bucket i holds values in [2^(i-1), 2^i).
#[derive(Default)]
pub struct Log2Hist {
    counts: [u64; 32],
    n: u64,
    max: u64,
}

impl Log2Hist {
    pub fn add(&mut self, v: u64) {
        let i = (64 - v.leading_zeros() as usize).min(31);
        self.counts[i] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }
    pub fn count(&self) -> u64 {
        self.n
    }
    pub fn max(&self) -> u64 {
        self.max
    }
    /// Upper bound of the bucket holding quantile `q` (0 when empty).
    pub fn quantile(&self, q: f64) -> u64 {
        let want = ((self.n as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return (1u64 << i).min(self.max.max(1));
            }
        }
        self.max
    }
    pub fn summary(&self) -> String {
        format!("n={} p50<={} p99<={} p99.9<={} max={}", self.n, self.quantile(0.5), self.quantile(0.99), self.quantile(0.999), self.max)
    }
}

impl Dirty {
    pub fn new() -> Self {
        let trace = std::env::var_os("RINGGATE_TRACE_STAGES").is_some_and(|v| v == "1");
        Dirty { trace: trace.then(Box::default), ..Dirty::default() }
    }
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
            if let Some(t) = self.dirty.trace.as_mut() {
                t.dirty_since = Some((Instant::now(), thread_cpu_us()));
            }
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
        // A blocked socket is written by its own task, now: the task runs
        // because the socket became writable (or was woken), and deferring
        // would let the flusher find it blocked again and wake the task
        // again — a busy loop for as long as the peer does not read.
        if conn.dead || conn.write_blocked || matches!(conn.session.phase(), Phase::Closing | Phase::Finished) {
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

    /// Queues the write of every connection of `batch` once (emptying it):
    /// the driver performs them as transmits right after (`transmit.rs`).
    pub fn flush_dirty(&mut self, batch: &mut Vec<ConnKey>) {
        self.dirty.turns += 1;
        let tracing = self.dirty.trace.is_some();
        let n = batch.len() as u64;
        for key in batch.drain(..) {
            let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else { continue };
            slot.dirty = false;
            if tracing && slot.written_at.is_none() && slot.conn.session.sent() > slot.conn.session.acked() {
                slot.written_at = Some(Instant::now());
            }
            self.dirty.flushes += 1;
            self.flush_now(key);
        }
        if let Some(t) = self.dirty.trace.as_mut() {
            if let Some((since, cpu)) = t.dirty_since.take() {
                t.outbox_wait.add(since.elapsed().as_micros() as u64);
                t.outbox_wait_cpu.add(thread_cpu_us().saturating_sub(cpu));
            }
            t.batch.add(n);
        }
        // A list that grew large once (a fan-out to many connections) does
        // not keep its allocation.
        if batch.capacity() > 1024 {
            *batch = Vec::new();
        }
    }
}

impl Core {
    /// Stage trace: a PUSHACK was read on `key`.
    pub(super) fn trace_acked(&mut self, key: ConnKey) {
        if self.dirty.trace.is_none() {
            return;
        }
        let Some(slot) = self.conns.get_mut(key.idx as usize).filter(|s| s.gen == key.gen) else { return };
        let Some(at) = slot.written_at.take() else { return };
        if slot.conn.session.sent() > slot.conn.session.acked() {
            // More is in flight: time the rest from now (an approximation
            // that under-counts; the first PUSH of a burst is exact).
            slot.written_at = Some(Instant::now());
        }
        if let Some(t) = self.dirty.trace.as_mut() {
            t.push_to_ack.add(at.elapsed().as_micros() as u64);
        }
    }

    /// The stage trace's line for the log, when tracing.
    pub fn trace_summary(&self) -> Option<String> {
        let t = self.dirty.trace.as_ref()?;
        Some(format!(
            "turns={} writes={} batch[{}] outbox_wait_us[{}] outbox_wait_cpu_us[{}] push_to_ack_us[{}] rx_wait_us[{}]",
            self.dirty.turns,
            self.dirty.flushes,
            t.batch.summary(),
            t.outbox_wait.summary(),
            t.outbox_wait_cpu.summary(),
            t.push_to_ack.summary(),
            crate::runtime::transport::rx_wait::summary()
        ))
    }
}

/// This thread's CPU time in µs (stage trace only: a syscall).
fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
