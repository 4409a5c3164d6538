//! Inbox storage behind a trait: one instance per core holds the inboxes of the users homed on that core.
//!
//! The trait is what the durable log (a later issue) implements; today the
//! only implementation is [`memory::MemoryStore`]. Appends are synchronous
//! here; a durable store with group commit will answer through the same
//! per-core event loop once its fsync completes.

pub mod memory;

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::session::InboxRead;

/// A message about to be appended to one inbox.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub from: Arc<str>,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// Local fault: the device should retry later (SENDACK status 5).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Retention limits (PROTOCOL.md, "Retention").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_messages: u64,
    pub max_age_ms: u64,
}

pub trait InboxStore {
    /// Appends to `user`'s inbox and returns the new entry's seq (dense: head + 1).
    fn append(&mut self, user: &str, msg: NewMessage, now_ms: u64) -> Result<u64, StoreError>;
    /// Read view of `user`'s inbox after applying age retention at `now_ms`.
    fn inbox(&mut self, user: &str, now_ms: u64) -> &dyn InboxRead;
    /// Read view without retention work (for the hot push path).
    fn peek(&self, user: &str) -> &dyn InboxRead;
    /// Number of inboxes and retained messages (for logs and metrics).
    fn stats(&self) -> (usize, u64);
}
