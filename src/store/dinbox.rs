//! One user's inbox in the durable store: the index of retained entries (payloads of the newest in memory, older ones read back from the log) and its read view for sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::durable::{FileRef, SegId};
use crate::proto::session::{EntryRef, InboxRead};

#[derive(Debug)]
pub struct DEntry {
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub from: Arc<str>,
    pub seg: SegId,
    /// Payload position in the segment file.
    pub off: u64,
    pub len: u32,
    pub payload: Option<Bytes>,
}

/// Read handles of a store's segments, shared by every inbox of the store
/// and updated in place when a segment opens or goes (no per-inbox walk).
pub type FileTable = Arc<Mutex<HashMap<SegId, FileRef>>>;

/// One user's inbox: `entries[i]` has seq `oldest + i`.
pub struct DInbox {
    pub oldest: u64,
    /// Highest seq written.
    pub head: u64,
    /// Highest seq durable per the fsync policy: what devices may see.
    pub visible: u64,
    pub entries: VecDeque<DEntry>,
    /// Segment holding the record that establishes `head`.
    pub head_seg: SegId,
    /// Read-back needs the segment files: shared with the store.
    pub(super) files: FileTable,
}

impl std::fmt::Debug for DInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DInbox").field("oldest", &self.oldest).field("head", &self.head).field("visible", &self.visible).finish()
    }
}

impl DInbox {
    pub fn new(head: u64, head_seg: SegId) -> Self {
        DInbox { oldest: head + 1, head, visible: head, entries: VecDeque::new(), head_seg, files: FileTable::default() }
    }
}

impl InboxRead for DInbox {
    fn bounds(&self) -> (u64, u64) {
        (self.oldest.min(self.visible + 1), self.visible)
    }

    fn get(&self, seq: u64) -> Option<EntryRef<'_>> {
        if seq > self.visible {
            return None;
        }
        let e = self.entries.get(usize::try_from(seq.checked_sub(self.oldest)?).ok()?)?;
        let payload = match &e.payload {
            Some(p) => p.clone(),
            None => {
                let f = self.files.lock().ok()?.get(&e.seg)?.clone();
                let mut buf = vec![0u8; e.len as usize];
                if let Err(err) = f.read_at(&mut buf, e.off) {
                    tracing::error!(error = %err, seq, "cannot read a retained message back from the log");
                    return None;
                }
                Bytes::from(buf)
            }
        };
        Some(EntryRef { msg_id: e.msg_id, timestamp_ms: e.timestamp_ms, from: &e.from, payload })
    }
}

