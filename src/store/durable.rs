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
//! and `never` at once, with what that can lose documented in docs/durability.md.
//!
//! ## Where the rest is
//!
//! `commit`: writing records, group-committed syncs, the ordering
//! recovery relies on, and the failed state. `retention`: trimming
//! inboxes and deleting the segments nobody needs any more. This file
//! holds the store's state and its [`InboxStore`] face, including the
//! cold reads.
//!
//! Memory: the index keeps ~50 bytes per retained message (ids, time,
//! sender, file position); payloads are held only in the core's hot-payload
//! cache (`cache::`), whose bytes are bounded by this core's share of
//! `store.memory_budget_bytes` for all its inboxes together. New appends go
//! in; the oldest unused are evicted. A payload not in the cache is read
//! back from the log on the per-core reader thread (`fetch_cold`, results
//! through `poll_io`), so a replay of cold messages never blocks the event
//! loop; without a reader thread (recovery, tools, tests) with `pread`
//! where it is asked for.
//!
//! Why a syncer thread rather than monoio's file ops: fsync must not block
//! the legacy (epoll) driver either, and a thread per core gives both drivers
//! the same behaviour; the write itself stays on the core.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::disk::{DiskFile, DiskRef};
use super::cache::{CacheStats, PayloadKey};
use super::syncer::{run_batch, IoExec, ReadJob, Reader, SpareSlot, SyncJob, Syncer};
use super::log::{self, LogError, MessageRec};
use super::{InboxStore, NewMessage, Retention, StoreError};
use crate::config::Fsync;
use crate::proto::session::{EmptyInbox, InboxRead};

mod commit;
mod retention;

/// Entries read back from the log per cold miss: a replay's next window.
const READ_AHEAD: usize = 64;
/// Most payload bytes one read-back job asks for (and at most a quarter of
/// the cache budget, so a batch never evicts itself).
const READ_AHEAD_BYTES: u64 = 4 << 20;
/// Group sends whose payload position the store remembers, so that their
/// other members' copies refer to it (a fan-out's copies on one core are
/// appended close together; one that is not is written again, correct
/// either way).
const GROUP_PAYLOADS: usize = 32;
/// Inboxes the age-retention sweep looks at per tick: the sweep walks the
/// inboxes incrementally, never all of them in one tick.
const SWEEP_PER_TICK: usize = 256;

/// File in a core's log directory left by a failed store: recovery writes
/// every segment out again before trusting it (see `fail`).
pub const REWRITE_NOTE: &str = "REWRITE";

/// Global segment id: directory core in the top 8 bits, file number below.
pub type SegId = u32;

pub fn seg_id(dir_core: usize, no: u32) -> SegId {
    ((dir_core as u32) << 24) | (no & 0x00ff_ffff)
}

/// A shared, open segment file.
pub type FileRef = Arc<dyn DiskFile>;

/// A segment file this core writes or reads.
pub struct Segment {
    pub path: PathBuf,
    pub file: FileRef,
    /// Retained entries (of this core's inboxes) in this segment.
    pub live: u64,
    /// Referenced by another core's inboxes (after a change of worker
    /// count): never deleted at run time, re-examined at the next start.
    pub pinned: bool,
    /// In this core's own directory (deletable by it).
    pub own: bool,
}

pub use super::dinbox::{DEntry, DInbox, FileTable};

/// Counters for logs and the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct DurableStats {
    pub fsyncs: u64,
    pub fsynced_records: u64,
    pub max_batch: u64,
    pub segments_deleted: u64,
    /// Payloads read back from the log off the event loop.
    pub cold_reads: u64,
}

/// How a log is written and trimmed (from `[store]`).
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    pub policy: Fsync,
    pub fsync_interval_ms: u64,
    pub segment_max_bytes: u64,
    pub retention: Retention,
}

/// Called once when the store enters its failed state (the runtime drains
/// and exits non-zero).
pub type FailureHook = Box<dyn Fn(&StoreError) + Send>;

/// A submitted sync: its ticket, the lsn it covers, and the segment and
/// byte it makes durable.
struct Submitted {
    file: FileRef,
    ticket: u64,
    lsn: u64,
    seg_no: u32,
    upto: u64,
}

/// All inboxes of the users homed on one core, over the log.
pub struct DurableStore {
    core: usize,
    disk: DiskRef,
    dir: PathBuf,
    policy: Fsync,
    fsync_interval_ms: u64,
    segment_max_bytes: u64,
    retention: Retention,
    inboxes: HashMap<Arc<str>, DInbox>,
    /// Every inbox key, in creation order: the incremental sweep's cursor
    /// runs over it (inboxes are never removed).
    sweep_order: Vec<Arc<str>>,
    sweep_at: usize,
    segs: HashMap<SegId, Segment>,
    files: FileTable,
    active: SegId,
    active_no: u32,
    active_len: u64,
    wbuf: Vec<u8>,
    lsn_written: u64,
    lsn_synced: u64,
    dirty_since_sync: bool,
    unsynced: VecDeque<(u64, Arc<str>, u64)>,
    io: IoExec,
    next_ticket: u64,
    submitted: VecDeque<Submitted>,
    /// The next segment, being created ahead on the I/O thread: (number, slot).
    spare: Option<(u32, SpareSlot)>,
    /// Segments to unlink once the sync with that ticket completed.
    unlink_after: VecDeque<(u64, PathBuf)>,
    /// Durable frontier per segment number of this directory, as the last
    /// SYNCED record written says.
    marked: HashMap<u32, u64>,
    failed: Option<StoreError>,
    on_failure: Option<FailureHook>,
    last_interval_sync_ms: u64,
    lsn_at_interval_sync: u64,
    /// Where the payloads of the latest group sends are in the active
    /// segment: (msg_id, segment, offset, length), newest last.
    group_payloads: VecDeque<(u64, SegId, u64, u32)>,
    /// Reads cold payloads off the event loop (a running server).
    reader: Option<Reader>,
    /// Payloads being read back, and the users to wake when each is in.
    reading: HashMap<PayloadKey, Vec<Arc<str>>>,
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
        Self::with_disk(super::disk::real(), core, log_dir, settings, inboxes, segs, next_no)
    }

    /// [`DurableStore::new`] over any [`super::disk::Disk`].
    pub fn with_disk(
        disk: DiskRef,
        core: usize,
        log_dir: &Path,
        settings: LogSettings,
        inboxes: HashMap<Arc<str>, DInbox>,
        segs: HashMap<SegId, Segment>,
        next_no: u32,
    ) -> Result<Self, LogError> {
        let LogSettings { policy, fsync_interval_ms, segment_max_bytes, retention } = settings;
        let dir = log_dir.join(format!("core-{core}"));
        disk.create_dir_all(&dir).map_err(|source| LogError::Io { path: dir.clone(), source })?;
        let files = FileTable::default();
        let mut inboxes = inboxes;
        for i in inboxes.values_mut() {
            i.files = files.clone();
        }
        let mut sweep_order: Vec<Arc<str>> = inboxes.keys().cloned().collect();
        sweep_order.sort();
        let mut s = DurableStore {
            core,
            disk,
            dir,
            policy,
            fsync_interval_ms,
            segment_max_bytes,
            retention,
            inboxes,
            sweep_order,
            sweep_at: 0,
            segs,
            files,
            active: 0,
            active_no: next_no.saturating_sub(1),
            active_len: 0,
            wbuf: Vec::new(),
            lsn_written: 0,
            lsn_synced: 0,
            dirty_since_sync: false,
            unsynced: VecDeque::new(),
            io: IoExec::Inline,
            next_ticket: 0,
            submitted: VecDeque::new(),
            spare: None,
            unlink_after: VecDeque::new(),
            marked: HashMap::new(),
            failed: None,
            on_failure: None,
            last_interval_sync_ms: 0,
            lsn_at_interval_sync: 0,
            group_payloads: VecDeque::new(),
            reader: None,
            reading: HashMap::new(),
            stats: DurableStats::default(),
        };
        {
            let mut t = s.files.files.lock().map_err(|_| LogError::Io { path: s.dir.clone(), source: std::io::Error::other("file table poisoned") })?;
            for (id, seg) in &s.segs {
                t.insert(*id, seg.file.clone());
            }
        }
        s.open_next_segment()?;
        Ok(s)
    }

    /// Starts the syncer thread; `done` must route the result back to this
    /// core (it calls [`DurableStore::on_synced`] there).
    pub fn start_syncer(&mut self, done: Box<dyn Fn(Result<u64, StoreError>) + Send>) {
        self.io = IoExec::Thread(Syncer::spawn(self.core, self.disk.clone(), done));
    }

    /// Starts the reader thread: from now on a payload not in the cache is
    /// read there (`fetch_cold`), and `nudge` tells this core to collect
    /// the result (it calls [`InboxStore::poll_io`] there).
    pub fn start_reader(&mut self, nudge: Box<dyn Fn() + Send>) {
        self.reader = Some(Reader::spawn(self.core, nudge));
        self.files.cold_async.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets this core's hot-payload budget (its share of
    /// `store.memory_budget_bytes`), evicting at once what no longer fits.
    pub fn set_payload_budget(&mut self, bytes: u64) {
        if let Ok(mut c) = self.files.cache.lock() {
            c.set_budget(bytes);
        }
    }

    /// The hot-payload cache: (bytes charged, payloads, figures).
    pub fn cache_figures(&self) -> (u64, usize, CacheStats) {
        match self.files.cache.lock() {
            Ok(c) => (c.used(), c.len(), c.stats),
            Err(_) => (0, 0, CacheStats::default()),
        }
    }

    /// Queue syncs instead of running them: [`DurableStore::run_io`]
    /// completes them (for the simulation).
    pub fn defer_io(&mut self) {
        self.io = IoExec::Deferred(VecDeque::new());
    }

    /// Sets what to call when the store fails (once).
    pub fn on_failure(&mut self, hook: FailureHook) {
        self.on_failure = Some(hook);
    }

    /// Deferred mode: runs every queued sync as one batch and applies the
    /// result; false if nothing was queued.
    pub fn run_io(&mut self, woken: &mut Vec<Arc<str>>) -> bool {
        let IoExec::Deferred(q) = &mut self.io else { return false };
        if q.is_empty() {
            return false;
        }
        let batch: Vec<SyncJob> = q.drain(..).collect();
        let r = run_batch(&batch);
        self.on_synced(r, woken);
        true
    }

    /// Why the store failed, if it did.
    pub fn failure(&self) -> Option<&StoreError> {
        self.failed.as_ref()
    }

    fn file(&self, id: SegId) -> Option<FileRef> {
        self.segs.get(&id).map(|s| s.file.clone())
    }

    /// The stats line for logs: inboxes, retained, fsync figures.
    pub fn durable_stats(&self) -> DurableStats {
        self.stats
    }

    /// Reads a retained entry's payload, in memory or from the log.
    pub fn read_payload(&self, seg: SegId, off: u64, len: u32) -> std::io::Result<Bytes> {
        let f = self.file(seg).ok_or_else(|| std::io::Error::other("segment not open"))?;
        let mut buf = vec![0u8; len as usize];
        f.read_at(&mut buf, off)?;
        Ok(Bytes::from(buf))
    }
}

impl InboxStore for DurableStore {
    fn append(&mut self, user: &str, msg: NewMessage, now_ms: u64) -> Result<(u64, u64), StoreError> {
        if let Some(why) = &self.failed {
            return Err(StoreError::Failed(Box::new(why.clone())));
        }
        if self.active_len >= self.segment_max_bytes {
            self.rotate()?;
        }
        if self.spare.is_none() && self.active_len >= self.segment_max_bytes / 2 {
            self.prepare_spare();
        }
        let key: Arc<str> = match self.inboxes.get_key_value(user) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(user);
                let inbox = DInbox::new(0, self.active, self.files.clone());
                self.inboxes.insert(k.clone(), inbox);
                self.sweep_order.push(k.clone());
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
        // Another member's copy of this group send is in this segment: point
        // at its payload instead of writing it again.
        let active = self.active;
        let shared = match msg.group {
            Some(_) => self.group_payloads.iter().find(|g| g.0 == msg.msg_id && g.1 == active && g.3 == msg.payload.len() as u32),
            None => None,
        };
        let off = match shared {
            Some(&(_, _, off, len)) => {
                log::encode_message_ref(&mut self.wbuf, &rec, off, len);
                off
            }
            None => {
                // Records may already wait in `wbuf` (a rotation's
                // SEGSTART): the payload's file offset counts them.
                let pending = self.wbuf.len() as u64;
                let payload_at = log::encode_message(&mut self.wbuf, &rec) as u64;
                self.active_len + pending + payload_at
            }
        };
        let fresh_group = msg.group.is_some() && shared.is_none();
        self.write_out()?;
        if fresh_group {
            if self.group_payloads.len() >= GROUP_PAYLOADS {
                self.group_payloads.pop_front();
            }
            self.group_payloads.push_back((msg.msg_id, active, off, msg.payload.len() as u32));
        }
        self.lsn_written += 1;
        let lsn = self.lsn_written;
        let visible_now = self.policy != Fsync::Always;
        let Some(inbox) = self.inboxes.get_mut(&key) else { unreachable!("inserted above") };
        inbox.head = seq;
        inbox.head_seg = active;
        inbox.entries.push_back(DEntry {
            msg_id: msg.msg_id,
            timestamp_ms: msg.timestamp_ms,
            from: msg.from.clone(),
            seg: active,
            off,
            len: msg.payload.len() as u32,
        });
        // Hot: online devices are sent it next.
        if let Ok(mut c) = self.files.cache.lock() {
            c.insert((active, off), msg.payload.clone());
        }
        if visible_now {
            // Interval and never: visible at once, durability per policy
            // (see docs/durability.md).
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

    fn record_fanout(&mut self, msg: &NewMessage, recipients: &[Arc<str>]) -> Result<u64, StoreError> {
        if let Some(why) = &self.failed {
            return Err(StoreError::Failed(Box::new(why.clone())));
        }
        if self.active_len >= self.segment_max_bytes {
            self.rotate()?;
        }
        let rec = log::FanoutRec {
            msg_id: msg.msg_id,
            client_msg_id: msg.client_msg_id,
            from: &msg.from,
            device: &msg.device,
            group: msg.group.as_deref().unwrap_or(""),
            recipients: recipients.iter().map(|r| &**r).collect(),
        };
        log::encode_fanout(&mut self.wbuf, &rec);
        self.write_out()?;
        self.lsn_written += 1;
        let lsn = self.lsn_written;
        if self.policy == Fsync::Always {
            self.request_sync();
        } else {
            self.lsn_synced = lsn;
            self.dirty_since_sync = true;
        }
        Ok(lsn)
    }

    fn fanout_done(&mut self, from: &str, device: &str, client_msg_id: u64) {
        if self.failed.is_some() {
            return;
        }
        // Not synced on its own: if a crash takes it, recovery finds every
        // copy present and writes it again.
        log::encode_fandone(&mut self.wbuf, client_msg_id, from, device);
        let _ = self.write_out();
    }

    fn synced_lsn(&self) -> u64 {
        self.lsn_synced
    }

    fn on_synced(&mut self, result: Result<u64, StoreError>, woken: &mut Vec<Arc<str>>) {
        if self.failed.is_some() {
            // A sync that succeeds after one failed proves nothing: the
            // kernel may have dropped the pages the failed one could not
            // write. Nothing more is confirmed.
            return;
        }
        match result {
            Ok(ticket) => self.apply_sync(ticket, woken),
            Err(e) => self.fail(e),
        }
        if self.lsn_written > self.lsn_synced && self.policy == Fsync::Always {
            self.request_sync();
        }
    }

    fn tick(&mut self, now_ms: u64) {
        if self.policy == Fsync::Interval
            && self.dirty_since_sync
            && self.failed.is_none()
            && now_ms.saturating_sub(self.last_interval_sync_ms) >= self.fsync_interval_ms
        {
            self.last_interval_sync_ms = now_ms;
            let n = self.lsn_written - self.lsn_at_interval_sync;
            self.lsn_at_interval_sync = self.lsn_written;
            self.stats.fsyncs += 1;
            self.stats.fsynced_records += n;
            self.stats.max_batch = self.stats.max_batch.max(n);
            self.dirty_since_sync = false;
            if let Some(f) = self.file(self.active) {
                self.submit_sync(f, self.active_no, self.active_len);
            }
        }
        // Age retention, a slice of the inboxes per tick.
        let n = self.sweep_order.len();
        for _ in 0..SWEEP_PER_TICK.min(n) {
            if self.sweep_at >= n {
                self.sweep_at = 0;
            }
            let u = self.sweep_order[self.sweep_at].clone();
            self.sweep_at += 1;
            self.trim(&u, now_ms);
        }
    }

    fn shutdown(&mut self) {
        self.sync_now();
    }

    fn failed(&self) -> Option<&StoreError> {
        self.failed.as_ref()
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

    #[cfg(any(test, feature = "sim"))]
    fn take_deferred_sync(&mut self) -> Option<Result<u64, StoreError>> {
        let IoExec::Deferred(q) = &mut self.io else { return None };
        if q.is_empty() {
            return None;
        }
        let batch: Vec<SyncJob> = q.drain(..).collect();
        Some(run_batch(&batch))
    }

    fn fetch_cold(&mut self, user: &str) {
        let Some(reader) = &self.reader else { return };
        let Some((key, inbox)) = self.inboxes.get_key_value(user) else { return };
        let Some(seq) = inbox.take_miss() else { return };
        let Some(first) = seq.checked_sub(inbox.oldest).and_then(|i| usize::try_from(i).ok()) else { return };
        let Ok(cache) = self.files.cache.lock() else { return };
        let Ok(files) = self.files.files.lock() else { return };
        let max_bytes = READ_AHEAD_BYTES.min(cache.budget() / 4);
        let mut items = Vec::new();
        let mut bytes = 0u64;
        let end = usize::try_from(inbox.visible.saturating_sub(inbox.oldest) + 1).unwrap_or(usize::MAX);
        for e in inbox.entries.iter_from(first).take(end.saturating_sub(first)).take(READ_AHEAD) {
            let k = e.key();
            if cache.contains(k) {
                continue;
            }
            if let Some(waiters) = self.reading.get_mut(&k) {
                // Already being read: wake this user too.
                if !waiters.iter().any(|w| w == key) {
                    waiters.push(key.clone());
                }
                continue;
            }
            if !items.is_empty() && bytes + e.len as u64 > max_bytes {
                break;
            }
            let Some(f) = files.get(&e.seg) else { continue };
            bytes += e.len as u64;
            items.push((k, f.clone(), e.len));
        }
        drop(files);
        drop(cache);
        if items.is_empty() {
            return;
        }
        for (k, _, _) in &items {
            self.reading.insert(*k, vec![key.clone()]);
        }
        self.stats.cold_reads += items.len() as u64;
        if reader.tx.send(ReadJob { items }).is_err() {
            // The reader thread is gone (it only ends with the store).
            tracing::error!(core = self.core, "the log reader thread is gone: cold payloads cannot be read");
        }
    }

    fn poll_io(&mut self, woken: &mut Vec<Arc<str>>) -> bool {
        let Some(reader) = &self.reader else { return false };
        let done = match reader.rx.try_recv() {
            Ok(d) => d,
            Err(std::sync::mpsc::TryRecvError::Empty) => return false,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                // The reader thread is gone (it panicked, or never started):
                // a store failure, handled like a failed fsync.
                self.reader = None;
                self.fail(StoreError::Thread { thread: "reader", what: "ended (it panicked or never started)".into() });
                return false;
            }
        };
        let bytes: u64 = done.items.iter().map(|(_, r)| r.as_ref().map_or(0, |b| b.len() as u64 + super::cache::ENTRY_OVERHEAD)).sum();
        let Ok(mut cache) = self.files.cache.lock() else { return true };
        // Room first: the batch's own payloads must still be there when the
        // caller refills the sessions that wait for them.
        cache.make_room(bytes);
        for (k, r) in done.items {
            let waiters = self.reading.remove(&k).unwrap_or_default();
            match r {
                Ok(b) => {
                    // Still retained? (retention may have trimmed it meanwhile:
                    // then nobody asks for it again and it is not cached.)
                    if self.files.files.lock().is_ok_and(|f| f.contains_key(&k.0)) {
                        cache.insert(k, b);
                    }
                    for w in waiters {
                        if !woken.contains(&w) {
                            woken.push(w);
                        }
                    }
                }
                Err(e) => {
                    // The session waits; its next fill (a new message, a
                    // reconnect) asks again.
                    tracing::error!(core = self.core, segment = k.0, offset = k.1, error = %e, "cannot read a retained message back from the log");
                }
            }
        }
        true
    }
}
