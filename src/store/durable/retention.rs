//! Retention for the durable store: trimming an inbox by count and age,
//! and deleting a segment once no retained entry is in it, after the
//! inbox heads only it still proved are written again and synced.
//! Separate from `durable.rs` because deletion is the one place the store
//! gives data up, and its ordering against syncs (unlink only after the
//! covering sync) is a rule of its own.

use std::sync::Arc;

use super::super::log;
use super::super::syncer::{IoExec, Job};
use super::super::StoreError;
use super::{DurableStore, SegId};

impl DurableStore {
    /// A segment whose entries are all gone is deleted, after the heads it
    /// alone still proves are rewritten into the active segment and synced.
    pub(super) fn maybe_delete(&mut self, id: SegId) {
        let Some(seg) = self.segs.get(&id) else { return };
        if id == self.active || seg.live > 0 || seg.pinned || !seg.own || self.failed.is_some() {
            return;
        }
        let mut heads: Vec<(Arc<str>, u64)> =
            self.inboxes.iter().filter(|(_, i)| i.head_seg == id).map(|(u, i)| (u.clone(), i.head)).collect();
        // In a fixed order, so a seeded simulation replays byte for byte.
        heads.sort();
        for (u, h) in &heads {
            log::encode_head(&mut self.wbuf, u, *h);
        }
        if !self.wbuf.is_empty() && self.write_out().is_err() {
            return;
        }
        for (u, _) in heads {
            if let Some(i) = self.inboxes.get_mut(&u) {
                i.head_seg = self.active;
            }
        }
        let Some(seg) = self.segs.remove(&id) else { return };
        if let Ok(mut t) = self.files.files.lock() {
            t.remove(&id);
        }
        // The file goes only once everything written before now is durable:
        // the HEAD records just written, and the newer records that carry a
        // user's head past this segment. Unlinking earlier, a power cut
        // could take both the file and the unsynced records that made it
        // unnecessary, and confirmed seqs with them.
        let ticket = self.next_ticket + 1;
        self.unlink_after.push_back((ticket, seg.path));
        if let Some(f) = self.file(self.active) {
            self.submit_sync(f, self.active_no, self.active_len);
        }
    }

    /// Unlinks the segments whose deletion waited for sync `ticket`.
    pub(super) fn unlink_due(&mut self, ticket: u64) {
        while self.unlink_after.front().is_some_and(|(t, _)| *t <= ticket) {
            let Some((_, path)) = self.unlink_after.pop_front() else { break };
            // On the I/O thread when there is one: an unlink of a large
            // file can take milliseconds.
            if let IoExec::Thread(s) = &self.io {
                if s.tx.send(Job::Delete(path.clone())).is_ok() {
                    self.stats.segments_deleted += 1;
                    continue;
                }
            }
            match self.disk.delete(&path) {
                Ok(()) => {
                    self.stats.segments_deleted += 1;
                    tracing::info!(path = %path.display(), "retention: deleted a log segment with no retained messages");
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot delete an expired log segment"),
            }
        }
    }

    pub(super) fn trim(&mut self, user: &Arc<str>, now_ms: u64) {
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
            if let Ok(mut c) = self.files.cache.lock() {
                c.remove(e.key());
            }
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
        let mut heads: Vec<(Arc<str>, u64)> =
            self.inboxes.iter().filter(|(_, i)| doomed.contains(&i.head_seg)).map(|(u, i)| (u.clone(), i.head)).collect();
        heads.sort();
        for (u, h) in &heads {
            log::encode_head(&mut self.wbuf, u, *h);
        }
        if !self.wbuf.is_empty() {
            self.write_out()?;
        }
        let active = self.active;
        for (u, _) in heads {
            if let Some(i) = self.inboxes.get_mut(&u) {
                i.head_seg = active;
            }
        }
        self.segs.retain(|id, _| !doomed.contains(id));
        if let Ok(mut t) = self.files.files.lock() {
            t.retain(|id, _| !doomed.contains(id));
        }
        Ok(())
    }
}
