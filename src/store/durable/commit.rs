//! Group commit for the durable store: writing records to the active
//! segment, rotating segments, submitting syncs and applying their
//! results, and the failed state a failed sync leads to. Separate from
//! `durable.rs` because this is where the ordering rules live that
//! recovery depends on; the rest of the store only calls in here.
//!
//! ## When the disk fails
//!
//! A failed fsync is final for this process. On Linux the kernel may have
//! dropped the dirty pages it could not write and mark them clean, so a
//! retry that "succeeds" proves nothing ("fsyncgate"; PostgreSQL panics
//! for the same reason). The store enters a failed state: it confirms
//! nothing past what a sync had already proven durable before the failure
//! (no SENDACK 0, no PUSH under `always`), refuses every append (SENDACK
//! 5), and calls its failure hook, which drains and stops the process with
//! a non-zero exit so that recovery reads what is really on disk.
//!
//! ## Ordering that recovery relies on
//!
//! Syncs complete in the order they were submitted (one syncer per core,
//! FIFO). Rotation submits the old segment's sync before anything of the
//! new one, so no record of segment N+1 is confirmed before all of N is
//! durable. After each successful sync a SYNCED record names the segment
//! and the byte it is durable up to; each new segment starts with a
//! SEGSTART record giving the length its predecessor ended at. Recovery
//! uses both to tell a power cut (damage past what was proven durable: cut
//! there, drop what follows) from corruption (damage inside it: refuse).

use std::sync::Arc;

use super::super::log::{self, LogError};
use super::super::syncer::{create_segment, run_batch, IoExec, Job, SpareSlot, SyncJob};
use super::super::{InboxStore, StoreError};
use super::{seg_id, DurableStore, FileRef, Segment, Submitted, REWRITE_NOTE};

impl DurableStore {
    /// Enters the failed state (idempotent): from now on nothing is
    /// confirmed, nothing appended. See the module doc.
    pub(super) fn fail(&mut self, why: StoreError) {
        if self.failed.is_some() {
            return;
        }
        tracing::error!(
            core = self.core,
            error = %why,
            "durable log failed: no SENDACK or PUSH for anything not already known durable; SENDs are refused with status 5; the process drains and exits so that recovery reads what is really on disk"
        );
        // The page cache may still show writes the disk never got (a failed
        // fsync marks them clean). A restart that trusts the cache would
        // read them as durable; this note makes recovery write every
        // segment out again first. It needs no fsync: it matters only while
        // the cache survives, and a power cut takes both.
        let _ = self.disk.create(&self.dir.join(REWRITE_NOTE));
        if let Some(h) = &self.on_failure {
            h(&why);
        }
        self.failed = Some(why);
    }

    /// Creates the next segment with its magic and makes it and its
    /// directory entry durable; any failure there fails the store.
    pub(super) fn open_next_segment(&mut self) -> Result<(), LogError> {
        let no = self.active_no + 1;
        let path = self.dir.join(log::segment_name(no));
        let io = |source| LogError::Io { path: path.clone(), source };
        // The I/O thread made it ahead of need (usually); else made here.
        let spare = self.spare.take().and_then(|(n, slot)| {
            let ready = slot.lock().ok().and_then(|mut s| s.take());
            match ready {
                Some(r) if n == no => Some(r),
                // Not ready yet (the I/O thread is behind a long fsync):
                // wait for it rather than race it for the name; a thread
                // that never answers fails the store.
                None if n == no => {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                    loop {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        if let Some(r) = slot.lock().ok().and_then(|mut s| s.take()) {
                            break Some(r);
                        }
                        if std::time::Instant::now() > deadline {
                            break Some(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the I/O thread did not create it within 30 s")));
                        }
                    }
                }
                _ => None,
            }
        });
        let made = match spare {
            Some(r) => r.map(|(_, f)| f),
            None => create_segment(&*self.disk, &path, &self.dir),
        };
        let f = match made {
            Ok(f) => f,
            Err(e) => {
                let e = Arc::new(e);
                self.fail(StoreError::Io { op: format!("creating segment {}", path.display()), source: e.clone() });
                return Err(io(std::io::Error::new(e.kind(), e.to_string())));
            }
        };
        let id = seg_id(self.core, no);
        let old = self.active;
        if let Ok(mut t) = self.files.files.lock() {
            t.insert(id, f.clone());
        }
        self.segs.insert(id, Segment { path, file: f, live: 0, pinned: false, own: true });
        self.active = id;
        self.active_no = no;
        self.active_len = log::MAGIC.len() as u64;
        if old != 0 && old != id {
            self.maybe_delete(old);
        }
        Ok(())
    }

    /// Asks the I/O thread to create the next segment now, so rotation
    /// finds it ready and the core never waits for a create and its fsyncs.
    pub(super) fn prepare_spare(&mut self) {
        let IoExec::Thread(syncer) = &self.io else { return };
        let no = self.active_no + 1;
        let slot = SpareSlot::default();
        let job = Job::Create { path: self.dir.join(log::segment_name(no)), dir: self.dir.clone(), slot: slot.clone() };
        if syncer.tx.send(job).is_ok() {
            self.spare = Some((no, slot));
        }
    }

    /// Ends the active segment: its sync is submitted ahead of anything of
    /// the next one (syncs complete in order), so nothing written after this
    /// is confirmed before all of it is durable. The next segment opens
    /// with a SEGSTART naming where this one ended.
    pub(super) fn rotate(&mut self) -> Result<(), StoreError> {
        let (old_no, old_len, old_file) = (self.active_no, self.active_len, self.file(self.active));
        self.open_next_segment().map_err(|e| self.failed.clone().unwrap_or_else(|| StoreError::io("opening the next segment", std::io::Error::other(e.to_string()))))?;
        log::encode_segstart(&mut self.wbuf, old_no as u64, old_len);
        // Submitted only now, so that whatever its completion writes (the
        // SYNCED record) lands in the new segment: nothing may follow
        // `old_len` in the old one.
        if let Some(f) = old_file {
            self.submit_sync(f, old_no, old_len);
        }
        if let Some(why) = &self.failed {
            return Err(StoreError::Failed(Box::new(why.clone())));
        }
        Ok(())
    }

    /// Writes `wbuf` to the active segment; on failure the file is cut back
    /// so a half-written record never sits in front of later ones.
    pub(super) fn write_out(&mut self) -> Result<(), StoreError> {
        let Some(seg) = self.segs.get(&self.active) else {
            self.wbuf.clear();
            return Err(StoreError::io("log write", std::io::Error::other("no active segment")));
        };
        if let Err(e) = seg.file.write_at(&self.wbuf, self.active_len) {
            let why = StoreError::io(format!("log write to {}", seg.path.display()), e);
            let cut = seg.file.set_len(self.active_len);
            self.wbuf.clear();
            if let Err(c) = cut {
                // The half-written record stays in front of whatever comes
                // next: nothing more may be written to this log.
                self.fail(StoreError::io(format!("{why}; cutting it back failed too"), c));
            }
            return Err(why);
        }
        self.active_len += self.wbuf.len() as u64;
        self.wbuf.clear();
        Ok(())
    }

    /// Submits a sync of `file` (segment `seg_no`, durable up to `upto`
    /// once it completes), covering every lsn written so far.
    pub(super) fn submit_sync(&mut self, file: FileRef, seg_no: u32, upto: u64) {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.submitted.push_back(Submitted { file: file.clone(), ticket, lsn: self.lsn_written, seg_no, upto });
        match &mut self.io {
            IoExec::Deferred(q) => q.push_back((file, ticket)),
            IoExec::Thread(s) if s.tx.send(Job::Sync((file.clone(), ticket))).is_ok() => {}
            _ => {
                let r = run_batch(&[(file, ticket)]);
                let mut woken = Vec::new();
                self.on_synced(r, &mut woken);
            }
        }
    }

    pub(super) fn request_sync(&mut self) {
        // One sync in flight at a time (group commit): what is written
        // meanwhile waits for the next. In flight = submitted, not yet
        // covered by a result (one result may cover several submissions).
        if !self.submitted.is_empty() || self.lsn_synced >= self.lsn_written || self.failed.is_some() {
            return;
        }
        if let Some(f) = self.file(self.active) {
            self.submit_sync(f, self.active_no, self.active_len);
        }
    }

    /// Makes everything written durable now, on this thread (shutdown,
    /// recovery). A failure fails the store.
    pub fn sync_now(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let Some(f) = self.file(self.active) else { return };
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        // Syncs still queued for the syncer are older and this result will
        // cover their tickets: sync their files here too, in order.
        let mut batch: Vec<SyncJob> = self.submitted.iter().map(|s| (s.file.clone(), s.ticket)).collect();
        batch.push((f.clone(), ticket));
        self.submitted.push_back(Submitted { file: f, ticket, lsn: self.lsn_written, seg_no: self.active_no, upto: self.active_len });
        let r = run_batch(&batch);
        let mut woken = Vec::new();
        self.on_synced(r, &mut woken);
    }

    /// A sync result came back (in submission order).
    pub(super) fn apply_sync(&mut self, ticket: u64, woken: &mut Vec<Arc<str>>) {
        let mut lsn = self.lsn_synced;
        let mut marks: Vec<(u32, u64)> = Vec::new();
        while let Some(s) = self.submitted.front() {
            if s.ticket > ticket {
                break;
            }
            let Some(s) = self.submitted.pop_front() else { break };
            lsn = lsn.max(s.lsn);
            match marks.iter_mut().find(|m| m.0 == s.seg_no) {
                Some(m) => m.1 = m.1.max(s.upto),
                None => marks.push((s.seg_no, s.upto)),
            }
        }
        self.mark_synced(lsn, woken);
        self.unlink_due(ticket);
        // Say what is proven durable, for recovery (see the module doc).
        for (seg, upto) in marks {
            let known = self.marked.get(&seg).copied().unwrap_or(0);
            if upto > known && upto > log::MAGIC.len() as u64 {
                self.marked.insert(seg, upto);
                log::encode_synced(&mut self.wbuf, seg as u64, upto);
            }
        }
        if !self.wbuf.is_empty() {
            let _ = self.write_out();
        }
    }

    pub(super) fn mark_synced(&mut self, lsn: u64, woken: &mut Vec<Arc<str>>) {
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
    }

    /// Recovery: segment `seg_no` of this core's directory is durable up to
    /// `upto` (recovery synced it); says so in the log, as a completed sync
    /// would, so a later recovery counts it as proven.
    pub fn mark_durable(&mut self, seg_no: u32, upto: u64) -> Result<(), StoreError> {
        if upto <= log::MAGIC.len() as u64 {
            return Ok(());
        }
        self.marked.insert(seg_no, upto);
        log::encode_synced(&mut self.wbuf, seg_no as u64, upto);
        self.write_out()
    }

    /// Recovery is done: records after this belong to the new run (only
    /// fan-outs of the last run are ever completed by a recovery).
    pub fn mark_run_start(&mut self) -> Result<(), StoreError> {
        log::encode_run(&mut self.wbuf);
        self.write_out()
    }
}
