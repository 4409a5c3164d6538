//! Cross-core message passing: one lock-free mailbox per core (crossbeam queue plus a wake-up) and the user → home core map.
//!
//! This is the only way cores talk. A message is posted with `push` and the
//! receiving core's mailbox task is woken through an `AtomicWaker` (monoio's
//! `sync` feature turns that into an eventfd write when the core sleeps in
//! io_uring). Nothing on the message path takes a lock.

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use bytes::BytesMut;
use crossbeam_queue::SegQueue;

use crate::proto::session::{ConnectRequest, Session};
use crate::store::{NewMessage, StoreError};

/// A connection moving to its user's home core after CONNECT.
pub struct Adopt {
    /// The driver's socket, handed over with the connection (its new
    /// core's driver takes it over); None for a connection with no socket.
    pub sock: Option<crate::runtime::transport::Sock>,
    pub tls: crate::runtime::conn::Tls,
    pub tls_in: bytes::BytesMut,
    pub tls_out: bytes::BytesMut,
    pub session: Session,
    /// Decrypted bytes that arrived behind the CONNECT.
    pub rbuf: BytesMut,
    pub out: BytesMut,
    /// The framing: WebSocket for a connection upgraded before its
    /// CONNECT, HTTP for one moving for a session request, else native.
    pub framing: crate::runtime::framing::Framing,
    /// An HTTP connection moving for a session request (SSE, long-poll):
    /// the core to go to and the request; `user` and `req` are unused then.
    pub web: Option<Box<crate::runtime::web::WebMove>>,
    pub user: Arc<str>,
    pub req: ConnectRequest,
    /// JWT `exp` in wall-clock milliseconds.
    pub token_exp_wall_ms: u64,
}

impl Adopt {
    /// The core this connection moves to: the session's core for an HTTP
    /// session request, else the user's home core.
    pub fn target_core(&self, cores: usize) -> usize {
        match &self.web {
            Some(w) => w.core,
            None => home_core(&self.user, cores),
        }
    }
}

pub enum CoreMsg {
    Adopt(Box<Adopt>),
    /// Append `msg` to `user`'s inbox (the receiver is its home core), then
    /// answer `Appended { req }` to core `origin`.
    Append { origin: usize, req: u64, user: Arc<str>, msg: NewMessage },
    /// `result`: `user`'s new seq.
    Appended { req: u64, user: Arc<str>, result: Result<u64, StoreError> },
    /// This core's syncer finished an fsync (up to an lsn) or failed.
    Synced(Result<u64, StoreError>),
    /// This core's log reader has cold payloads ready (`InboxStore::poll_io`).
    StoreIo,
    /// Graceful shutdown: stop accepting, DISCONNECT(7) everyone, finish.
    Shutdown,
    /// Fleet mode: an engine answer or notification (`crate::fleet`).
    Fleet(Box<crate::fleet::Event>),
    /// A request of the admin API; the answer goes back on its own channel.
    Admin(Box<crate::runtime::core::admin::AdminCmd>),
    /// A reload's new snapshot (`runtime/reload.rs`): take it between two messages.
    Reload(Arc<crate::runtime::reload::Live>),
}

/// One core's inbound queue.
///
/// The queue itself is unbounded because answers (`Appended`, `Synced`) and
/// moving connections must never be dropped; they are bounded by the work
/// that caused them. New work — `Append` for a SEND handled elsewhere — is
/// admitted against `capacity` with `try_reserve` before it is posted, and
/// released when the receiving core takes it, so a core that falls behind
/// makes senders' SENDs fail fast (SENDACK 5) instead of queueing without
/// limit.
pub struct Mailbox {
    queue: SegQueue<CoreMsg>,
    waker: AtomicWaker,
    work: AtomicUsize,
    capacity: usize,
}

impl Default for Mailbox {
    fn default() -> Self {
        Self::with_capacity(usize::MAX)
    }
}

impl Mailbox {
    pub fn with_capacity(capacity: usize) -> Self {
        Mailbox { queue: SegQueue::new(), waker: AtomicWaker::new(), work: AtomicUsize::new(0), capacity }
    }

    /// Reserves room for `n` new-work messages; false (nothing reserved) when full.
    pub fn try_reserve(&self, n: usize) -> bool {
        let mut cur = self.work.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(n) > self.capacity {
                return false;
            }
            match self.work.compare_exchange_weak(cur, cur + n, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back `n` reserved slots (the receiver took the work, or the
    /// sender gave up before posting).
    pub fn release(&self, n: usize) {
        let _ = self.work.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(w.saturating_sub(n)));
    }

    /// New-work messages reserved and not yet taken.
    pub fn queued_work(&self) -> usize {
        self.work.load(Ordering::Relaxed)
    }

    pub fn post(&self, msg: CoreMsg) {
        self.queue.push(msg);
        self.waker.wake();
    }

    /// Waits until at least one message is queued, then moves all of them into `batch`.
    pub async fn recv_batch(&self, batch: &mut Vec<CoreMsg>) {
        poll_fn(|cx| {
            if self.try_drain(batch) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A post between the drain and the register would be missed
            // without this second look.
            if self.try_drain(batch) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Moves whatever is queued into `batch`; true if anything was.
    pub fn try_drain(&self, batch: &mut Vec<CoreMsg>) -> bool {
        let before = batch.len();
        while let Some(m) = self.queue.pop() {
            batch.push(m);
        }
        batch.len() > before
    }
}

pub type Mesh = Arc<[Mailbox]>;

// User → core placement lives in `crate::placement`, which the store's
// recovery uses too (the store does not import the runtime).
pub use crate::placement::home_core;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_released() {
        let m = Mailbox::with_capacity(3);
        assert!(m.try_reserve(2));
        assert!(!m.try_reserve(2), "2 + 2 > 3: nothing may be reserved");
        assert_eq!(m.queued_work(), 2);
        assert!(m.try_reserve(1));
        assert!(!m.try_reserve(1));
        m.release(2);
        assert!(m.try_reserve(2));
        m.release(10);
        assert_eq!(m.queued_work(), 0, "release never underflows");
        assert!(Mailbox::default().try_reserve(usize::MAX / 2));
    }

}
