//! Durable inboxes: one core's index over the append-only log, group-committed fsync, retention that deletes dead segments, and reading old payloads back from disk.
//!
//! Each core appends the messages of the users homed on it to its own
//! segment files (`log::`), with `write(2)` on the core thread (a copy into
//! the page cache, microseconds) and `fdatasync` on a per-core syncer
//! thread, so the event loop never blocks on the disk. Group commit falls
//! out of that: while one fsync is in flight every append queues behind it,
//! and the next fsync covers them all (`fsync_batches` counts the batch
//! sizes). Under `fsync = "always"` an entry becomes visible to devices and
//! its SENDACK is released only once its fsync completed; under `interval`
//! and `never` at once, with what that can lose documented in the README.
//!
//! Memory: the index keeps ~60 bytes per retained message (ids, time,
//! sender, file position); payloads are kept only for the newest
//! `HOT_PAYLOADS` entries of each inbox (what online devices are being
//! sent) and read back with `pread` for replays of older ones.
//!
//! Why a syncer thread rather than monoio's file ops: fsync must not block
//! the legacy (epoll) driver either, and a thread per core gives both drivers
//! the same behaviour; the write itself stays on the core.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::log::{self, LogError, MessageRec};
use super::{InboxStore, NewMessage, Retention, StoreError};
use crate::config::Fsync;
use crate::proto::session::{EmptyInbox, EntryRef, InboxRead};

/// Payloads kept in memory per inbox (at least one inflight window's worth).
pub const HOT_PAYLOADS: usize = 64;
/// How often age retention sweeps every inbox (ms).
const SWEEP_MS: u64 = 5_000;

/// Global segment id: directory core in the top 8 bits, file number below.
pub type SegId = u32;

pub fn seg_id(dir_core: usize, no: u32) -> SegId {
    ((dir_core as u32) << 24) | (no & 0x00ff_ffff)
}

/// A segment file this core writes or reads.
pub struct Segment {
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Retained entries (of this core's inboxes) in this segment.
    pub live: u64,
    /// Referenced by another core's inboxes (after a change of worker
    /// count): never deleted at run time, re-examined at the next start.
    pub pinned: bool,
    /// In this core's own directory (deletable by it).
    pub own: bool,
}

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

/// One user's inbox: `entries[i]` has seq `oldest + i`.
#[derive(Debug)]
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
    files: Arc<HashMap<SegId, Arc<File>>>,
}

impl DInbox {
    pub fn new(head: u64, head_seg: SegId) -> Self {
        DInbox { oldest: head + 1, head, visible: head, entries: VecDeque::new(), head_seg, files: Arc::default() }
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
                let f = self.files.get(&e.seg)?;
                let mut buf = vec![0u8; e.len as usize];
                if let Err(err) = f.read_exact_at(&mut buf, e.off) {
                    tracing::error!(error = %err, seq, "cannot read a retained message back from the log");
                    return None;
                }
                Bytes::from(buf)
            }
        };
        Some(EntryRef { msg_id: e.msg_id, timestamp_ms: e.timestamp_ms, from: &e.from, payload })
    }
}

/// Sends fsync requests to this core's syncer thread.
struct Syncer {
    tx: std::sync::mpsc::Sender<(Arc<File>, u64)>,
}

impl Syncer {
    /// `done(lsn)` is called on the syncer thread after each fsync.
    fn spawn(core: usize, done: Box<dyn Fn(Result<u64, String>) + Send>) -> Syncer {
        let (tx, rx) = std::sync::mpsc::channel::<(Arc<File>, u64)>();
        let _ = std::thread::Builder::new().name(format!("ringgate-sync{core}")).spawn(move || {
            while let Ok(first) = rx.recv() {
                // Group commit: everything queued meanwhile shares this round.
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let mut upto = 0;
                let mut result = Ok(());
                let started = std::time::Instant::now();
                let mut done_files: Vec<*const File> = Vec::new();
                for (f, lsn) in batch.iter().rev() {
                    upto = upto.max(*lsn);
                    let p = Arc::as_ptr(f);
                    if done_files.contains(&p) {
                        continue;
                    }
                    done_files.push(p);
                    if let Err(e) = f.sync_data() {
                        result = Err(e.to_string());
                    }
                }
                crate::metrics::record_fsync(core, started.elapsed());
                done(result.map(|_| upto));
            }
        });
        Syncer { tx }
    }
}

/// Counters for logs and the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct DurableStats {
    pub fsyncs: u64,
    pub fsynced_records: u64,
    pub max_batch: u64,
    pub segments_deleted: u64,
}

/// How a log is written and trimmed (from `[store]`).
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    pub policy: Fsync,
    pub fsync_interval_ms: u64,
    pub segment_max_bytes: u64,
    pub retention: Retention,
}

/// All inboxes of the users homed on one core, over the log.
pub struct DurableStore {
    core: usize,
    dir: PathBuf,
    policy: Fsync,
    fsync_interval_ms: u64,
    segment_max_bytes: u64,
    retention: Retention,
    inboxes: HashMap<Arc<str>, DInbox>,
    segs: HashMap<SegId, Segment>,
    /// Read handles shared with every inbox (rebuilt when segments change).
    files: Arc<HashMap<SegId, Arc<File>>>,
    active: SegId,
    active_no: u32,
    active_len: u64,
    wbuf: Vec<u8>,
    lsn_written: u64,
    lsn_synced: u64,
    sync_in_flight: bool,
    dirty_since_sync: bool,
    unsynced: VecDeque<(u64, Arc<str>, u64)>,
    syncer: Option<Syncer>,
    last_sweep_ms: u64,
    last_interval_sync_ms: u64,
    lsn_at_interval_sync: u64,
    pub stats: DurableStats,
}

impl DurableStore {
    /// A store over `inboxes` (from recovery) and the segments they
    /// reference; opens a fresh active segment in `<log_dir>/core-<core>`.
    pub fn new(
        core: usize,
        log_dir: &Path,
        settings: LogSettings,
        inboxes: HashMap<Arc<str>, DInbox>,
        segs: HashMap<SegId, Segment>,
        next_no: u32,
    ) -> Result<Self, LogError> {
        let LogSettings { policy, fsync_interval_ms, segment_max_bytes, retention } = settings;
        let dir = log_dir.join(format!("core-{core}"));
        std::fs::create_dir_all(&dir).map_err(|source| LogError::Io { path: dir.clone(), source })?;
        let mut s = DurableStore {
            core,
            dir,
            policy,
            fsync_interval_ms,
            segment_max_bytes,
            retention,
            inboxes,
            segs,
            files: Arc::default(),
            active: 0,
            active_no: next_no.saturating_sub(1),
            active_len: 0,
            wbuf: Vec::new(),
            lsn_written: 0,
            lsn_synced: 0,
            sync_in_flight: false,
            dirty_since_sync: false,
            unsynced: VecDeque::new(),
            syncer: None,
            last_sweep_ms: 0,
            last_interval_sync_ms: 0,
            lsn_at_interval_sync: 0,
            stats: DurableStats::default(),
        };
        s.open_next_segment()?;
        Ok(s)
    }

    /// Starts the syncer thread; `done` must route the result back to this
    /// core (it calls [`DurableStore::on_synced`] there).
    pub fn start_syncer(&mut self, done: Box<dyn Fn(Result<u64, String>) + Send>) {
        self.syncer = Some(Syncer::spawn(self.core, done));
    }

    fn open_next_segment(&mut self) -> Result<(), LogError> {
        let no = self.active_no + 1;
        let path = self.dir.join(log::segment_name(no));
        let io = |source| LogError::Io { path: path.clone(), source };
        let mut f = std::fs::OpenOptions::new().create_new(true).read(true).write(true).open(&path).map_err(io)?;
        f.write_all(log::MAGIC).map_err(io)?;
        f.sync_all().map_err(io)?;
        // The new file's directory entry must survive a crash too.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        let id = seg_id(self.core, no);
        let old = self.active;
        self.segs.insert(id, Segment { path, file: Arc::new(f), live: 0, pinned: false, own: true });
        self.active = id;
        self.active_no = no;
        self.active_len = log::MAGIC.len() as u64;
        self.refresh_files();
        if old != 0 && old != id {
            self.maybe_delete(old);
        }
        Ok(())
    }

    fn refresh_files(&mut self) {
        let files: HashMap<SegId, Arc<File>> = self.segs.iter().map(|(k, s)| (*k, s.file.clone())).collect();
        self.files = Arc::new(files);
        for i in self.inboxes.values_mut() {
            i.files = self.files.clone();
        }
    }

    /// Writes `wbuf` to the active segment; on failure the file is cut back
    /// so a half-written record never sits in front of later ones.
    fn write_out(&mut self) -> Result<(), StoreError> {
        let seg = self.segs.get(&self.active).ok_or_else(|| StoreError::Unavailable("no active segment".into()))?;
        if let Err(e) = seg.file.write_all_at(&self.wbuf, self.active_len) {
            let _ = seg.file.set_len(self.active_len);
            self.wbuf.clear();
            return Err(StoreError::Unavailable(format!("log write to {}: {e}", seg.path.display())));
        }
        self.active_len += self.wbuf.len() as u64;
        self.wbuf.clear();
        Ok(())
    }

    fn request_sync(&mut self) {
        if self.sync_in_flight || self.lsn_synced >= self.lsn_written {
            return;
        }
        let (Some(syncer), Some(seg)) = (&self.syncer, self.segs.get(&self.active)) else {
            // No syncer (tests, or shutdown): sync inline.
            self.sync_now();
            return;
        };
        if syncer.tx.send((seg.file.clone(), self.lsn_written)).is_ok() {
            self.sync_in_flight = true;
        } else {
            self.sync_now();
        }
    }

    /// Synchronous fsync of the active segment (rotation, shutdown, no syncer).
    pub fn sync_now(&mut self) {
        if let Some(seg) = self.segs.get(&self.active) {
            if let Err(e) = seg.file.sync_data() {
                tracing::error!(error = %e, path = %seg.path.display(), "fsync failed");
                return;
            }
        }
        let upto = self.lsn_written;
        let mut woken = Vec::new();
        self.mark_synced(upto, &mut woken);
    }

    fn mark_synced(&mut self, lsn: u64, woken: &mut Vec<Arc<str>>) {
        if lsn > self.lsn_synced {
            let n = lsn - self.lsn_synced;
            self.stats.fsyncs += 1;
            self.stats.fsynced_records += n;
            self.stats.max_batch = self.stats.max_batch.max(n);
            self.lsn_synced = lsn;
        }
        while let Some((l, _, _)) = self.unsynced.front() {
            if *l > self.lsn_synced {
                break;
            }
            let Some((_, user, seq)) = self.unsynced.pop_front() else { break };
            if let Some(i) = self.inboxes.get_mut(&user) {
                i.visible = i.visible.max(seq).min(i.head);
            }
            if woken.last() != Some(&user) {
                woken.push(user);
            }
        }
        self.dirty_since_sync = false;
    }

    /// A segment whose entries are all gone is deleted, after the heads it
    /// alone still proves are rewritten into the active segment.
    fn maybe_delete(&mut self, id: SegId) {
        let Some(seg) = self.segs.get(&id) else { return };
        if id == self.active || seg.live > 0 || seg.pinned || !seg.own {
            return;
        }
        let heads: Vec<(Arc<str>, u64)> =
            self.inboxes.iter().filter(|(_, i)| i.head_seg == id).map(|(u, i)| (u.clone(), i.head)).collect();
        if !heads.is_empty() {
            for (u, h) in &heads {
                log::encode_head(&mut self.wbuf, u, *h);
            }
            if self.write_out().is_err() {
                return;
            }
            // The heads must be on disk before the file that proved them goes.
            if let Some(a) = self.segs.get(&self.active) {
                if a.file.sync_data().is_err() {
                    return;
                }
            }
            for (u, _) in heads {
                if let Some(i) = self.inboxes.get_mut(&u) {
                    i.head_seg = self.active;
                }
            }
        }
        if let Some(seg) = self.segs.remove(&id) {
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {
                    self.stats.segments_deleted += 1;
                    tracing::info!(path = %seg.path.display(), "retention: deleted a log segment with no retained messages");
                }
                Err(e) => tracing::warn!(path = %seg.path.display(), error = %e, "cannot delete an expired log segment"),
            }
            self.refresh_files();
        }
    }

    fn trim(&mut self, user: &Arc<str>, now_ms: u64) {
        let Some(inbox) = self.inboxes.get_mut(user) else { return };
        let mut freed: Vec<SegId> = Vec::new();
        let cutoff = now_ms.saturating_sub(self.retention.max_age_ms);
        while let Some(front) = inbox.entries.front() {
            let over = inbox.entries.len() as u64 > self.retention.max_messages;
            if !over && front.timestamp_ms >= cutoff {
                break;
            }
            let Some(e) = inbox.entries.pop_front() else { break };
            inbox.oldest += 1;
            if let Some(s) = self.segs.get_mut(&e.seg) {
                s.live = s.live.saturating_sub(1);
                if s.live == 0 && !freed.contains(&e.seg) {
                    freed.push(e.seg);
                }
            }
        }
        for id in freed {
            self.maybe_delete(id);
        }
    }

    /// Recovery: writes HEAD records for inboxes whose head is proven only by
    /// segments about to be deleted, and forgets those segments.
    pub fn rewrite_heads(&mut self, doomed: &std::collections::HashSet<SegId>) -> Result<(), StoreError> {
        let heads: Vec<(Arc<str>, u64)> =
            self.inboxes.iter().filter(|(_, i)| doomed.contains(&i.head_seg)).map(|(u, i)| (u.clone(), i.head)).collect();
        for (u, h) in &heads {
            log::encode_head(&mut self.wbuf, u, *h);
        }
        self.write_out()?;
        let active = self.active;
        for (u, _) in heads {
            if let Some(i) = self.inboxes.get_mut(&u) {
                i.head_seg = active;
            }
        }
        self.segs.retain(|id, _| !doomed.contains(id));
        self.refresh_files();
        Ok(())
    }

    /// The stats line for logs: inboxes, retained, fsync figures.
    pub fn durable_stats(&self) -> DurableStats {
        self.stats
    }
}

impl InboxStore for DurableStore {
    fn append(&mut self, user: &str, msg: NewMessage, now_ms: u64) -> Result<(u64, u64), StoreError> {
        if self.active_len >= self.segment_max_bytes {
            // Rotation: the old segment is made durable now (rare, ~once per
            // segment_max_bytes), the new one starts clean.
            self.sync_now();
            self.open_next_segment().map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        let key: Arc<str> = match self.inboxes.get_key_value(user) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(user);
                let mut inbox = DInbox::new(0, self.active);
                inbox.files = self.files.clone();
                self.inboxes.insert(k.clone(), inbox);
                k
            }
        };
        let seq = self.inboxes[&key].head + 1;
        let rec = MessageRec {
            seq,
            msg_id: msg.msg_id,
            timestamp_ms: msg.timestamp_ms,
            client_msg_id: msg.client_msg_id,
            user,
            from: &msg.from,
            device: &msg.device,
            group: msg.group.as_deref().unwrap_or(""),
            payload: &msg.payload,
        };
        let payload_at = log::encode_message(&mut self.wbuf, &rec) as u64;
        let off = self.active_len + payload_at;
        self.write_out()?;
        self.lsn_written += 1;
        let lsn = self.lsn_written;
        let active = self.active;
        let visible_now = self.policy != Fsync::Always;
        let Some(inbox) = self.inboxes.get_mut(&key) else { unreachable!("inserted above") };
        inbox.head = seq;
        inbox.head_seg = active;
        // A payload decoded from a connection's read buffer is a slice of a
        // larger allocation; copying keeps retained messages from pinning it.
        inbox.entries.push_back(DEntry {
            msg_id: msg.msg_id,
            timestamp_ms: msg.timestamp_ms,
            from: msg.from.clone(),
            seg: active,
            off,
            len: msg.payload.len() as u32,
            payload: Some(msg.payload.clone()),
        });
        let n = inbox.entries.len();
        if n > HOT_PAYLOADS {
            inbox.entries[n - 1 - HOT_PAYLOADS].payload = None;
        }
        if visible_now {
            // Interval and never: visible at once, durability per policy
            // (see the README).
            inbox.visible = seq;
        }
        if let Some(s) = self.segs.get_mut(&active) {
            s.live += 1;
        }
        if visible_now {
            self.lsn_synced = lsn;
            self.dirty_since_sync = true;
        } else {
            self.unsynced.push_back((lsn, key.clone(), seq));
            self.request_sync();
        }
        self.trim(&key, now_ms);
        Ok((seq, lsn))
    }

    fn synced_lsn(&self) -> u64 {
        self.lsn_synced
    }

    fn on_synced(&mut self, result: Result<u64, String>, woken: &mut Vec<Arc<str>>) {
        self.sync_in_flight = false;
        match result {
            Ok(lsn) => self.mark_synced(lsn, woken),
            Err(e) => {
                // Nothing after the failed fsync can be confirmed; try again
                // (an fsync error on Linux may have dropped dirty pages, so
                // the operator must look: this is logged loudly).
                tracing::error!(core = self.core, error = %e, "log fsync failed; SENDACKs are held until an fsync succeeds");
            }
        }
        if self.lsn_written > self.lsn_synced && self.policy == Fsync::Always {
            self.request_sync();
        }
    }

    fn tick(&mut self, now_ms: u64) {
        if self.policy == Fsync::Interval
            && self.dirty_since_sync
            && now_ms.saturating_sub(self.last_interval_sync_ms) >= self.fsync_interval_ms
        {
            self.last_interval_sync_ms = now_ms;
            if let (Some(syncer), Some(seg)) = (&self.syncer, self.segs.get(&self.active)) {
                let _ = syncer.tx.send((seg.file.clone(), self.lsn_written));
                let n = self.lsn_written - self.lsn_at_interval_sync;
                self.lsn_at_interval_sync = self.lsn_written;
                self.stats.fsyncs += 1;
                self.stats.fsynced_records += n;
                self.stats.max_batch = self.stats.max_batch.max(n);
            }
            self.dirty_since_sync = false;
        }
        if now_ms.saturating_sub(self.last_sweep_ms) >= SWEEP_MS {
            self.last_sweep_ms = now_ms;
            let users: Vec<Arc<str>> = self.inboxes.keys().cloned().collect();
            for u in users {
                self.trim(&u, now_ms);
            }
        }
    }

    fn shutdown(&mut self) {
        self.sync_now();
    }

    fn inbox(&mut self, user: &str, now_ms: u64) -> &dyn InboxRead {
        let Some((key, _)) = self.inboxes.get_key_value(user) else { return &EmptyInbox };
        let key = key.clone();
        self.trim(&key, now_ms);
        match self.inboxes.get(user) {
            Some(i) => i,
            None => &EmptyInbox,
        }
    }

    fn peek(&self, user: &str) -> &dyn InboxRead {
        match self.inboxes.get(user) {
            Some(i) => i,
            None => &EmptyInbox,
        }
    }

    fn stats(&self) -> (usize, u64) {
        (self.inboxes.len(), self.inboxes.values().map(|i| i.entries.len() as u64).sum())
    }

    fn fsync_stats(&self) -> Option<DurableStats> {
        Some(self.stats)
    }
}
