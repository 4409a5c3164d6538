//! One user's inbox in the durable store: the index of retained entries (payloads in the core's hot-payload cache or read back from the log) and its read view for sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::cache::{PayloadCache, PayloadKey};
use super::durable::{FileRef, SegId};
use super::ring::ChunkRing;
use crate::proto::session::{EntryRef, InboxRead};

/// One retained message: everything but its payload, which is in the
/// cache or at `off` in segment `seg`.
#[derive(Debug)]
pub struct DEntry {
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub from: Arc<str>,
    pub seg: SegId,
    /// Payload position in the segment file.
    pub off: u64,
    pub len: u32,
}

impl DEntry {
    pub fn key(&self) -> PayloadKey {
        (self.seg, self.off)
    }
}

/// What every inbox of one store shares: read handles of its segments
/// (updated in place when a segment opens or goes, no per-inbox walk) and
/// the hot-payload cache. Only the owning core thread uses it; the locks
/// are uncontended and make it `Send`.
pub struct Shelf {
    pub files: Mutex<HashMap<SegId, FileRef>>,
    pub cache: Mutex<PayloadCache>,
    /// Set on a running server (a reader thread exists): a payload that is
    /// not cached is reported as a miss (see [`DInbox::take_miss`]) and read
    /// on the I/O thread, instead of with `pread` on the calling thread.
    pub cold_async: AtomicBool,
}

/// Budget of the cache until the runtime sets one (recovery, tools, tests).
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

impl Default for Shelf {
    fn default() -> Self {
        Shelf { files: Mutex::default(), cache: Mutex::new(PayloadCache::new(DEFAULT_CACHE_BYTES)), cold_async: AtomicBool::new(false) }
    }
}

pub type FileTable = Arc<Shelf>;

/// One user's inbox: `entries[i]` has seq `oldest + i`.
pub struct DInbox {
    pub oldest: u64,
    /// Highest seq written.
    pub head: u64,
    /// Highest seq durable per the fsync policy: what devices may see.
    pub visible: u64,
    pub entries: ChunkRing<DEntry>,
    /// Segment holding the record that establishes `head`.
    pub head_seg: SegId,
    /// Read-back needs the segment files and the cache: shared with the store.
    pub(super) files: FileTable,
    /// Lowest seq a read found not in memory since the store last looked
    /// (0: none): the store reads it, and what follows, on the I/O thread.
    miss: AtomicU64,
}

impl std::fmt::Debug for DInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DInbox").field("oldest", &self.oldest).field("head", &self.head).field("visible", &self.visible).finish()
    }
}

impl DInbox {
    /// `files` is the store's shared shelf (not one of its own per inbox:
    /// a whole `Shelf` with its cache, allocated per new inbox and dropped
    /// again at once, was churn on every first message to a user).
    pub fn new(head: u64, head_seg: SegId, files: FileTable) -> Self {
        DInbox {
            oldest: head + 1,
            head,
            visible: head,
            entries: ChunkRing::new(),
            head_seg,
            files,
            miss: AtomicU64::new(0),
        }
    }

    /// The lowest seq a read missed since the last call, if any.
    pub fn take_miss(&self) -> Option<u64> {
        match self.miss.swap(0, Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }

    fn note_miss(&self, seq: u64) {
        let _ = self.miss.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| (m == 0 || seq < m).then_some(seq));
    }

    /// Reads a payload from the log on this thread and caches it.
    fn read_back(&self, e: &DEntry, seq: u64) -> Option<Bytes> {
        let f = self.files.files.lock().ok()?.get(&e.seg)?.clone();
        let mut buf = vec![0u8; e.len as usize];
        if let Err(err) = f.read_at(&mut buf, e.off) {
            tracing::error!(error = %err, seq, "cannot read a retained message back from the log");
            return None;
        }
        let b = Bytes::from(buf);
        if let Ok(mut c) = self.files.cache.lock() {
            c.insert(e.key(), b.clone());
        }
        Some(b)
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
        let cached = self.files.cache.lock().ok()?.get(e.key());
        let payload = match cached {
            Some(p) => p,
            // A running server: not now; the store reads it off the event
            // loop and the session is filled again when it is in.
            None if self.files.cold_async.load(Ordering::Relaxed) => {
                self.note_miss(seq);
                return None;
            }
            None => self.read_back(e, seq)?,
        };
        Some(EntryRef { msg_id: e.msg_id, timestamp_ms: e.timestamp_ms, from: &e.from, payload })
    }
}
