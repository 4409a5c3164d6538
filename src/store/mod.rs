//! Inbox storage behind a trait: one instance per core holds the inboxes of the users homed on that core.
//!
//! Two implementations: [`memory::MemoryStore`] (lost on exit) and
//! [`durable::DurableStore`] (the append-only log in [`log`], rebuilt at
//! start by [`recovery`]). An append returns its seq at once and a log
//! sequence number (lsn); the entry becomes visible to devices, and its
//! SENDACK may be released, once `synced_lsn()` has reached that lsn (at
//! once in memory, after the group-committed fsync under `fsync = "always"`).

pub mod cache;
pub mod dinbox;
pub mod disk;
pub mod durable;
pub mod log;
pub mod memory;
pub mod recovery;
pub mod ring;
mod syncer;
#[cfg(any(test, feature = "sim"))]
pub mod sim_disk;
#[cfg(test)]
mod vopr;

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::session::InboxRead;

/// A message about to be appended to one inbox.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub from: Arc<str>,
    /// The sending device and its id for this SEND: logged with the message
    /// so dedup survives restarts.
    pub device: Arc<str>,
    pub client_msg_id: u64,
    /// The group it was sent to, if any (recovery completes a fan-out that a
    /// crash interrupted).
    pub group: Option<Arc<str>>,
    pub payload: Bytes,
}

/// Why the store cannot take or confirm a write. Every variant is this
/// server's fault (its disk, one of its threads, its memory budget), never
/// the device's: on the wire each is SENDACK status 5 or an admin 503,
/// "retry later" ([`StoreError::sendack_status`]). `Clone` because one
/// failure answers every SEND that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A write, fsync or segment creation of the log failed.
    #[error("{op}: {source}")]
    Io { op: String, source: Arc<std::io::Error> },
    /// The store's I/O thread (syncer or reader) panicked or ended: handled
    /// like a failed fsync, since what it was doing is unknown.
    #[error("the {thread} thread {what}")]
    Thread { thread: &'static str, what: String },
    /// The log failed earlier; nothing is appended or confirmed until the
    /// process restarts and recovery reads what is really on disk.
    #[error("durable log failed: {0}")]
    Failed(Box<StoreError>),
    /// The memory store's retention budget is spent on this core.
    #[error("memory budget full ({used} of {budget} bytes retained on this core)")]
    MemoryFull { used: u64, budget: u64 },
    /// One recipient of a multi-recipient write (admin publish, group) failed.
    #[error("a recipient's inbox could not be written")]
    RecipientFailed,
    /// Fleet mode: inboxes live in the engine, the local store takes no append.
    #[error("fleet mode appends through the engine, not the local store")]
    NotLocal,
}

impl StoreError {
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { op: op.into(), source: Arc::new(source) }
    }

    /// The SENDACK status every store failure answers (PROTOCOL.md: 5,
    /// server unavailable, retry later with the same client_msg_id).
    pub const fn sendack_status(&self) -> u8 {
        5
    }
}

/// Retention limits (PROTOCOL.md, "Retention").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_messages: u64,
    pub max_age_ms: u64,
}

pub trait InboxStore {
    /// Appends to `user`'s inbox; returns the new entry's seq (dense: head +
    /// 1) and its lsn (durable once `synced_lsn() >= lsn`).
    fn append(&mut self, user: &str, msg: NewMessage, now_ms: u64) -> Result<(u64, u64), StoreError>;
    /// Logs a group send's intent before any copy is appended: its
    /// recipients, the membership at send time. Returns an lsn like
    /// `append` (the SENDACK also waits for it); 0 where nothing is logged.
    fn record_fanout(&mut self, _msg: &NewMessage, _recipients: &[Arc<str>]) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Every copy of that group send was confirmed: recovery leaves it be.
    fn fanout_done(&mut self, _from: &str, _device: &str, _client_msg_id: u64) {}
    /// Every append with an lsn up to this is durable per the policy.
    fn synced_lsn(&self) -> u64 {
        u64::MAX
    }
    /// An fsync finished (called on the owning core); users whose entries
    /// just became visible are appended to `woken`.
    fn on_synced(&mut self, _result: Result<u64, StoreError>, _woken: &mut Vec<Arc<str>>) {}
    /// Periodic work: interval fsync, age retention sweep.
    fn tick(&mut self, _now_ms: u64) {}
    /// Why the store stopped confirming (a failed fsync), if it did: the
    /// process must drain and exit (see `durable`).
    fn failed(&self) -> Option<&StoreError> {
        None
    }
    /// Graceful shutdown: make everything written durable.
    fn shutdown(&mut self) {}
    /// Group-commit figures, for the durable store.
    fn fsync_stats(&self) -> Option<durable::DurableStats> {
        None
    }
    /// A session's fill stopped at a payload that is not in memory (the
    /// durable store on a running server): read it, and the entries after
    /// it, off the event loop. `poll_io` hands `user` back once they are in.
    fn fetch_cold(&mut self, _user: &str) {}
    /// Collects one finished cold read, if any: the users it was for are
    /// appended to `woken` (the caller fills their sessions before calling
    /// again, while the payloads are surely cached). False when none was
    /// ready.
    fn poll_io(&mut self, _woken: &mut Vec<Arc<str>>) -> bool {
        false
    }
    /// Read view of `user`'s inbox after applying age retention at `now_ms`.
    fn inbox(&mut self, user: &str, now_ms: u64) -> &dyn InboxRead;
    /// Read view without retention work (for the hot push path).
    fn peek(&self, user: &str) -> &dyn InboxRead;
    /// Number of inboxes and retained messages (for logs and metrics).
    fn stats(&self) -> (usize, u64);
    /// Fleet mode: the core's mirror of the engine's inboxes (`crate::fleet`);
    /// None for the local stores.
    fn fleet_mirror(&mut self) -> Option<&mut crate::fleet::mirror::FleetStore> {
        None
    }
    /// Simulation: runs the syncs queued in deferred mode (see
    /// `DurableStore::defer_io`) and returns their result *without*
    /// applying it; the caller delivers it to the core as the syncer thread
    /// would (`CoreMsg::Synced`). None when nothing is queued.
    #[cfg(any(test, feature = "sim"))]
    fn take_deferred_sync(&mut self) -> Option<Result<u64, StoreError>> {
        None
    }
}

/// The first store failure of this process, for the runtime's exit status
/// and readiness.
static PROCESS_FAILURE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records a store failure for the whole process (first one wins).
pub fn record_process_failure(why: &str) {
    let _ = PROCESS_FAILURE.set(why.to_string());
}

/// The store failure this process hit, if any: not ready, exit non-zero.
pub fn process_failure() -> Option<&'static str> {
    PROCESS_FAILURE.get().map(|s| s.as_str())
}
