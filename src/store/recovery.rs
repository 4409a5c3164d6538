//! Start-up recovery: reads every log segment, cuts torn tails, refuses corruption, and rebuilds inboxes, dedup tables and interrupted group fan-outs per core.
//!
//! Runs once on the main thread before the workers start, so it may look at
//! every core's directory: after a change of `workers` a user's records can
//! sit in the directory of the core that was their home before. Every
//! restart opens a fresh active segment per core; old segments are only
//! read, and deleted once nothing in them is retained.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::disk::DiskRef;
use super::durable::{seg_id, DEntry, DInbox, DurableStore, FileRef, LogSettings, SegId, Segment};
use super::log::{self, LogError, Record};
use super::{InboxStore, NewMessage};
use crate::placement::home_core;

/// Remembered SENDACKs, oldest first: (client_msg_id, msg_id, timestamp_ms).
pub type Acks = Vec<(u64, u64, u64)>;

/// One device's remembered SENDACKs.
#[derive(Debug, Clone)]
pub struct DedupSeed {
    pub user: Arc<str>,
    pub device: Arc<str>,
    pub acks: Acks,
}

/// What recovery did, for the start-up log and the benchmark.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub users: usize,
    pub retained: u64,
    /// (segment, bytes cut) for each torn tail.
    pub torn: Vec<(PathBuf, u64)>,
    pub segments_deleted: usize,
    /// Group fan-outs a crash had interrupted, completed now: (group, members appended).
    pub fanouts_completed: Vec<(String, usize)>,
    pub elapsed_ms: u64,
}

pub struct Recovered {
    pub stores: Vec<DurableStore>,
    pub dedup: Vec<Vec<DedupSeed>>,
    pub report: RecoveryReport,
}

/// Settings recovery needs.
pub struct RecoverOpts<'a> {
    pub data_dir: &'a Path,
    pub workers: usize,
    pub settings: LogSettings,
    pub dedup_per_device: usize,
    pub groups: &'a HashMap<String, Vec<Arc<str>>>,
    pub now_ms: u64,
}

/// One segment as recovery found it: its open file and what it holds,
/// decoded into an index (no payload bytes are kept).
struct SegData {
    id: SegId,
    no: u32,
    dir_core: usize,
    path: PathBuf,
    file: FileRef,
    end: log::ScanEnd,
    recs: Vec<Rec>,
    /// Its SEGSTART: (previous segment number, its length then).
    start: Option<(u64, u64)>,
}

enum Rec {
    Msg(MsgRec),
    Head { head: u64, user: Arc<str> },
    Fanout { key: SendKey, msg_id: u64, group: Arc<str>, recipients: Vec<Arc<str>> },
    Run,
    FanDone(SendKey),
}

/// A SEND: (sender, device, client_msg_id).
type SendKey = (Arc<str>, Arc<str>, u64);

/// A group send's logged intent.
struct Intent {
    group: Arc<str>,
    msg_id: u64,
    recipients: Vec<Arc<str>>,
    /// May still be in flight: logged by the last run, in the newest
    /// segment of its directory or the one before (a fan-out completes in
    /// moments; older ones completed, or failed and were retried).
    eligible: bool,
}

struct MsgRec {
    seq: u64,
    msg_id: u64,
    ts: u64,
    cmid: u64,
    user: Arc<str>,
    from: Arc<str>,
    device: Arc<str>,
    group: Option<Arc<str>>,
    /// Payload position in the file.
    off: u64,
    len: u32,
}

impl MsgRec {
    /// The index of a MESSAGE (or MSGREF) record whose payload is at `off`, `len` bytes.
    fn of(m: &log::MessageRec<'_>, arc: &mut impl FnMut(&str) -> Arc<str>, off: u64, len: u32) -> Self {
        MsgRec {
            seq: m.seq,
            msg_id: m.msg_id,
            ts: m.timestamp_ms,
            cmid: m.client_msg_id,
            user: arc(m.user),
            from: arc(m.from),
            device: arc(m.device),
            group: (!m.group.is_empty()).then(|| arc(m.group)),
            off,
            len,
        }
    }
}

struct Ent {
    seq: u64,
    msg_id: u64,
    ts: u64,
    from: Arc<str>,
    seg: usize,
    off: u64,
    len: u32,
}

#[derive(Default)]
struct UserAcc {
    entries: Vec<Ent>,
    head: u64,
    head_seg: Option<usize>,
}

struct GroupSend {
    msg_id: u64,
    ts: u64,
    seg: usize,
    payload: (u64, u32),
    recipients: HashSet<Arc<str>>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_path_buf(), source }
}

/// Reads `<data_dir>/log` and builds one store per worker.
pub fn recover(o: &RecoverOpts<'_>) -> Result<Recovered, LogError> {
    recover_on(super::disk::real(), o)
}

/// [`recover`] over any disk (the simulation uses its own).
pub fn recover_on(disk: DiskRef, o: &RecoverOpts<'_>) -> Result<Recovered, LogError> {
    let t0 = Instant::now();
    let log_dir = o.data_dir.join("log");
    let mut report = RecoveryReport::default();
    let mut segs: Vec<SegData> = Vec::new();
    let mut next_no: HashMap<usize, u32> = HashMap::new();
    let mut intern: HashMap<Box<str>, Arc<str>> = HashMap::new();
    let mut arc = |s: &str| -> Arc<str> {
        if let Some(a) = intern.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        intern.insert(s.into(), a.clone());
        a
    };

    // 1. Scan every segment of every core directory, streaming: only the
    //    index of each record is kept.
    let mut dirs: Vec<(usize, PathBuf)> = Vec::new();
    for name in disk.list(&log_dir).map_err(io_err(&log_dir))? {
        if let Some(c) = name.strip_prefix("core-").and_then(|n| n.parse::<usize>().ok()) {
            if c < 256 {
                dirs.push((c, log_dir.join(&name)));
            }
        }
    }
    dirs.sort();
    for (core, dir) in &dirs {
        let first = segs.len();
        let names = disk.list(dir).map_err(io_err(dir))?;
        if names.iter().any(|n| n == super::durable::REWRITE_NOTE) {
            rewrite_dir(&*disk, dir)?;
        }
        // Durable frontier per segment number, from SYNCED records.
        let mut marks: HashMap<u64, u64> = HashMap::new();
        for (no, path) in log::list_segments(&*disk, dir)? {
            next_no.insert(*core, no);
            let file = disk.open(&path).map_err(io_err(&path))?;
            let len = file.len().map_err(io_err(&path))?;
            let mut recs = Vec::new();
            let mut start = None;
            let end = log::scan_with(&path, &*file, len, |offset, body| {
                match log::decode_body(body) {
                    Some(Record::Message(m)) => {
                        let off = offset + log::RECORD_HEADER as u64 + log::payload_offset_in_body(&m) as u64;
                        recs.push(Rec::Msg(MsgRec::of(&m, &mut arc, off, m.payload.len() as u32)));
                    }
                    Some(Record::MessageRef { m, payload_off, payload_len }) => {
                        // Its payload is earlier in this segment: anything
                        // else is not what the store writes.
                        if payload_off.saturating_add(payload_len as u64) > offset {
                            return Err(LogError::Corrupt {
                                path: path.clone(),
                                offset,
                                why: format!("message refers to a payload at {payload_off} that is not before it"),
                            });
                        }
                        recs.push(Rec::Msg(MsgRec::of(&m, &mut arc, payload_off, payload_len)));
                    }
                    Some(Record::Head { head, user }) => recs.push(Rec::Head { head, user: arc(user) }),
                    Some(Record::Synced { seg, upto }) => {
                        let m = marks.entry(seg).or_default();
                        *m = (*m).max(upto);
                    }
                    Some(Record::SegStart { prev, prev_len }) => start = Some((prev, prev_len)),
                    Some(Record::Fanout(f)) => recs.push(Rec::Fanout {
                        key: (arc(f.from), arc(f.device), f.client_msg_id),
                        msg_id: f.msg_id,
                        group: arc(f.group),
                        recipients: f.recipients.iter().map(|r| arc(r)).collect(),
                    }),
                    Some(Record::FanDone { client_msg_id, from, device }) => {
                        recs.push(Rec::FanDone((arc(from), arc(device), client_msg_id)))
                    }
                    Some(Record::Run) => recs.push(Rec::Run),
                    None => {}
                }
                Ok(())
            })?;
            segs.push(SegData { id: seg_id(*core, no), no, dir_core: *core, path, file, end, recs, start });
        }
        settle_tears(&*disk, dir, &mut segs, first, &marks, &mut report)?;
    }
    report.segments = segs.len();
    for sd in &segs {
        report.records += sd.recs.len() as u64;
        report.bytes += sd.end.valid_len;
    }
    // What recovery reads may sit only in the page cache (a process crash
    // keeps it there): make it durable before anything new is confirmed on
    // top of it.
    for sd in &segs {
        sync_or_note(&*disk, &sd.file, &sd.path)?;
    }

    // 2. Index every record.
    let mut users: HashMap<Arc<str>, UserAcc> = HashMap::new();
    let mut dedup: HashMap<(Arc<str>, Arc<str>), Acks> = HashMap::new();
    let mut group_sends: HashMap<SendKey, GroupSend> = HashMap::new();
    let mut intents: HashMap<SendKey, Intent> = HashMap::new();
    let mut done: HashSet<SendKey> = HashSet::new();
    // Per directory, the segment where the last run began (its RUN record):
    // fan-outs logged before it were examined by that run's recovery.
    let mut run_from: HashMap<usize, u32> = HashMap::new();
    for sd in &segs {
        if sd.recs.iter().any(|r| matches!(r, Rec::Run)) {
            run_from.insert(sd.dir_core, sd.no);
        }
    }
    let mut newest: HashMap<usize, u32> = HashMap::new();
    for sd in &segs {
        let n = newest.entry(sd.dir_core).or_default();
        *n = (*n).max(sd.no);
    }
    for (si, sd) in segs.iter_mut().enumerate() {
        let last_run = run_from.get(&sd.dir_core).is_none_or(|&n| sd.no >= n);
        for r in sd.recs.drain(..) {
            match r {
                Rec::Msg(m) => {
                    let acc = users.entry(m.user.clone()).or_default();
                    if m.seq >= acc.head {
                        acc.head = m.seq;
                        acc.head_seg = Some(si);
                    }
                    acc.entries.push(Ent { seq: m.seq, msg_id: m.msg_id, ts: m.ts, from: m.from.clone(), seg: si, off: m.off, len: m.len });
                    // Group copies seed dedup once per SEND (below).
                    if m.group.is_none() {
                        let acks = dedup.entry((m.from.clone(), m.device.clone())).or_default();
                        if !acks.iter().rev().take(64).any(|a| a.0 == m.cmid) {
                            acks.push((m.cmid, m.msg_id, m.ts));
                        }
                    }
                    if m.group.is_some() {
                        let g = group_sends.entry((m.from, m.device, m.cmid)).or_insert_with(|| GroupSend {
                            msg_id: m.msg_id,
                            ts: m.ts,
                            seg: si,
                            payload: (m.off, m.len),
                            recipients: HashSet::new(),
                        });
                        g.recipients.insert(m.user);
                    }
                }
                Rec::Head { head, user } => {
                    let acc = users.entry(user).or_default();
                    if head >= acc.head {
                        acc.head = head;
                        acc.head_seg = Some(si);
                    }
                }
                Rec::Fanout { key, msg_id, group, recipients } => {
                    let tail = newest.get(&sd.dir_core).is_some_and(|&n| sd.no + 1 >= n);
                    intents.insert(key, Intent { group, msg_id, recipients, eligible: last_run && tail });
                }
                Rec::Run => {}
                Rec::FanDone(key) => {
                    done.insert(key);
                }
            }
        }
        sd.recs.shrink_to_fit();
    }

    for (key, g) in &group_sends {
        // Remembered from its copies, as a direct send is. Known limit: if
        // a power cut took a FANOUT before its SENDACK while some copies
        // survived, a retry of that SEND is answered as done and the
        // members without a copy do not get it.
        {
            let acks = dedup.entry((key.0.clone(), key.1.clone())).or_default();
            acks.push((key.2, g.msg_id, g.ts));
        }
    }

    // 3. Per user: dense seqs, retention, the index.
    let workers = o.workers.max(1);
    let mut per_core: Vec<HashMap<Arc<str>, DInbox>> = (0..workers).map(|_| HashMap::new()).collect();
    let mut refs: HashMap<usize, HashSet<usize>> = HashMap::new(); // seg index -> cores referencing
    let mut live: Vec<HashMap<usize, u64>> = (0..workers).map(|_| HashMap::new()).collect();
    let cutoff = o.now_ms.saturating_sub(o.settings.retention.max_age_ms);
    let present: HashSet<(usize, u32)> = segs.iter().map(|s| (s.dir_core, s.no)).collect();
    // One placeholder shelf for all: each core's store installs its own.
    let shelf = super::dinbox::FileTable::default();
    for (user, mut acc) in users {
        acc.entries.sort_by_key(|e| e.seq);
        // A gap in a user's seqs: retention trimmed the records below it
        // and deleted the segment that held the missing ones, while an older
        // segment survived for other users' sake. That is only possible if
        // a segment between the two is gone; otherwise a segment is missing
        // or damaged and recovery refuses.
        let mut first = 0;
        for i in 1..acc.entries.len() {
            let (a, b) = (&acc.entries[i - 1], &acc.entries[i]);
            if b.seq == a.seq + 1 {
                continue;
            }
            let (sa, sb) = (&segs[a.seg], &segs[b.seg]);
            let hole = sa.dir_core != sb.dir_core || (sa.no + 1..sb.no).any(|n| !present.contains(&(sa.dir_core, n)));
            if b.seq <= a.seq || !hole {
                return Err(LogError::Corrupt {
                    path: sb.path.clone(),
                    offset: b.off,
                    why: format!("user {user:?}: seq goes from {} to {} (a segment is missing or damaged)", a.seq, b.seq),
                });
            }
            first = i;
        }
        acc.entries.drain(..first);
        // Retention, as the running store applies it.
        let mut start = 0;
        let n = acc.entries.len();
        while start < n && ((n - start) as u64 > o.settings.retention.max_messages || acc.entries[start].ts < cutoff) {
            start += 1;
        }
        let core = home_core(&user, workers);
        let head_seg = acc.head_seg.map_or(0, |i| segs[i].id);
        let mut inbox = DInbox::new(acc.head, head_seg, shelf.clone());
        inbox.oldest = acc.entries.get(start).map_or(acc.head + 1, |e| e.seq);
        // Index only: payloads are read back when a device needs them
        // (the hot-payload cache starts empty).
        for e in acc.entries.drain(..).skip(start) {
            let sd = &segs[e.seg];
            refs.entry(e.seg).or_default().insert(core);
            *live[core].entry(e.seg).or_default() += 1;
            inbox.entries.push_back(DEntry { msg_id: e.msg_id, timestamp_ms: e.ts, from: e.from, seg: sd.id, off: e.off, len: e.len });
        }
        report.retained += inbox.entries.len() as u64;
        if let Some(i) = acc.head_seg {
            refs.entry(i).or_default().insert(core);
        }
        per_core[core].insert(user, inbox);
    }
    report.users = per_core.iter().map(|m| m.len()).sum();

    // 4. Stores: each gets the segments its inboxes reference.
    let seg_of: HashMap<SegId, usize> = segs.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let mut stores = Vec::with_capacity(workers);
    for (core, inboxes) in per_core.into_iter().enumerate() {
        let mut table: HashMap<SegId, Segment> = HashMap::new();
        let mut wanted: HashSet<usize> = live[core].keys().copied().collect();
        for i in inboxes.values() {
            if let Some(&si) = seg_of.get(&i.head_seg) {
                wanted.insert(si);
            }
        }
        for si in wanted {
            let sd = &segs[si];
            let referencing = refs.get(&si).map_or(0, |r| r.len());
            table.insert(
                sd.id,
                Segment {
                    path: sd.path.clone(),
                    file: sd.file.clone(),
                    live: live[core].get(&si).copied().unwrap_or(0),
                    pinned: referencing > 1 || sd.dir_core != core,
                    own: sd.dir_core == core,
                },
            );
        }
        let next = next_no.get(&core).copied().unwrap_or(0) + 1;
        let mut st = DurableStore::with_disk(disk.clone(), core, &log_dir, o.settings, inboxes, table, next)?;
        // Everything kept was synced above: say so for each segment of this
        // directory (one small record each; the newest alone would do,
        // but it may be about to be deleted as empty).
        for sd in segs.iter().filter(|s| s.dir_core == core) {
            st.mark_durable(sd.no, sd.end.valid_len)
                .map_err(|e| LogError::Io { path: sd.path.clone(), source: std::io::Error::other(e.to_string()) })?;
        }
        stores.push(st);
    }

    // 5. Group fan-outs a crash cut short: the FANOUT record names the
    //    recipients (the membership at send time); each that lacks a copy
    //    gets one, once. Only fan-outs that may still have been in flight
    //    are looked at (see `Intent::eligible`) and not those marked done,
    //    so a copy that retention trimmed is not delivered again; one with no copy left
    //    at all was never confirmed (the SENDACK waits for every copy) and
    //    its retry stores it afresh.
    let mut keys: Vec<SendKey> = intents.iter().filter(|(k, i)| i.eligible && !done.contains(*k)).map(|(k, _)| k.clone()).collect();
    keys.sort();
    for key in keys {
        let (Some(intent), Some(g)) = (intents.get(&key), group_sends.get(&key)) else { continue };
        let (from, device, cmid) = key.clone();
        let missing: Vec<&Arc<str>> = intent.recipients.iter().filter(|m| !g.recipients.contains(*m)).collect();
        if !missing.is_empty() {
            let sd = &segs[g.seg];
            let mut buf = vec![0u8; g.payload.1 as usize];
            sd.file.read_at(&mut buf, g.payload.0).map_err(io_err(&sd.path))?;
            let payload = Bytes::from(buf);
            for m in &missing {
                let core = home_core(m, workers);
                let msg = NewMessage {
                    msg_id: intent.msg_id,
                    timestamp_ms: g.ts,
                    from: from.clone(),
                    device: device.clone(),
                    client_msg_id: cmid,
                    group: Some(intent.group.clone()),
                    payload: payload.clone(),
                };
                stores[core].append(m, msg, o.now_ms).map_err(|e| LogError::Io {
                    path: log_dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            }
            tracing::warn!(group = %intent.group, msg_id = intent.msg_id, members = missing.len(), "log: completed a group fan-out interrupted by a crash");
            report.fanouts_completed.push((intent.group.to_string(), missing.len()));
        }
        // Complete now (made durable with everything else below).
        stores[home_core(&from, workers)].fanout_done(&from, &device, cmid);
    }

    // 6. Segments with no retained entry: heads they alone prove move to
    // the new active segments first (HEAD records), then the files go.
    let mut has_live: HashSet<usize> = HashSet::new();
    for l in &live {
        has_live.extend(l.iter().filter(|(_, n)| **n > 0).map(|(si, _)| *si));
    }
    let doomed: Vec<usize> = (0..segs.len()).filter(|i| !has_live.contains(i)).collect();
    let doomed_ids: HashSet<SegId> = doomed.iter().map(|&i| segs[i].id).collect();
    for s in stores.iter_mut() {
        s.rewrite_heads(&doomed_ids)
            .and_then(|_| s.mark_run_start())
            .map_err(|e| LogError::Io { path: log_dir.clone(), source: std::io::Error::other(e.to_string()) })?;
        s.sync_now();
        if let Some(why) = s.failure() {
            return Err(LogError::Io { path: log_dir.clone(), source: std::io::Error::other(why.to_string()) });
        }
    }
    for si in doomed {
        match disk.delete(&segs[si].path) {
            Ok(()) => report.segments_deleted += 1,
            Err(e) => tracing::warn!(path = %segs[si].path.display(), error = %e, "cannot delete an expired log segment"),
        }
    }

    // 7. Dedup tables, on the core that is the sender's home now.
    let mut seeds: Vec<Vec<DedupSeed>> = (0..workers).map(|_| Vec::new()).collect();
    for ((user, device), mut acks) in dedup {
        acks.sort_by_key(|a| a.1);
        let keep = acks.len().saturating_sub(o.dedup_per_device);
        acks.drain(..keep);
        seeds[home_core(&user, workers)].push(DedupSeed { user, device, acks });
    }

    report.elapsed_ms = t0.elapsed().as_millis() as u64;
    Ok(Recovered { stores, dedup: seeds, report })
}

/// Syncs a segment; if that fails, leaves the rewrite note (the cache may
/// now show what the disk does not have) and refuses to go on.
fn sync_or_note(disk: &dyn super::disk::Disk, file: &FileRef, path: &Path) -> Result<(), LogError> {
    file.sync().map_err(|source| {
        if let Some(dir) = path.parent() {
            let _ = disk.create(&dir.join(super::durable::REWRITE_NOTE));
        }
        LogError::Io { path: path.to_path_buf(), source }
    })
}

/// After a failed fsync: the page cache may hold writes the disk never
/// got, marked clean. Writing every segment out again and syncing makes
/// what this recovery reads what is on disk; then the note goes.
fn rewrite_dir(disk: &dyn super::disk::Disk, dir: &Path) -> Result<(), LogError> {
    tracing::warn!(dir = %dir.display(), "log: the last run stopped on a failed fsync; writing every segment out again before trusting it");
    let mut buf = vec![0u8; 1 << 20];
    for (_, path) in log::list_segments(disk, dir)? {
        let f = disk.open(&path).map_err(io_err(&path))?;
        let len = f.len().map_err(io_err(&path))?;
        let mut at = 0;
        while at < len {
            let n = ((len - at) as usize).min(buf.len());
            f.read_at(&mut buf[..n], at).map_err(io_err(&path))?;
            f.write_at(&buf[..n], at).map_err(io_err(&path))?;
            at += n as u64;
        }
        // A cut (torn tail) the failed sync did not persist either.
        f.set_len(len).map_err(io_err(&path))?;
        sync_or_note(disk, &f, &path)?;
    }
    let note = dir.join(super::durable::REWRITE_NOTE);
    disk.delete(&note).map_err(io_err(&note))?;
    disk.sync_dir(dir).map_err(io_err(dir))
}

/// One directory's segments (`segs[first..]`, oldest first): decides
/// whether damage at the end of a segment is what a crash or power cut
/// leaves, or corruption.
///
/// A segment is damaged when its last record is cut short (torn bytes) or
/// when the next segment's SEGSTART says it was longer than it is. Damage
/// in the newest segment with content is a torn tail: cut. Damage in an
/// older one is a power cut only if nothing proves the damaged bytes were
/// durable: no SYNCED record covers them and no later segment was ever
/// synced (syncs complete in order, so a later segment's sync implies all
/// of this one was durable). Then the segment is cut there and every later
/// segment of the directory is dropped: none of it can have been
/// confirmed under `always`. Otherwise it is corruption: refuse.
fn settle_tears(
    disk: &dyn super::disk::Disk,
    dir: &Path,
    segs: &mut Vec<SegData>,
    first: usize,
    marks: &HashMap<u64, u64>,
    report: &mut RecoveryReport,
) -> Result<(), LogError> {
    let magic = log::MAGIC.len() as u64;
    let n = segs.len();
    for i in first..n {
        let sd = &segs[i];
        let claimed = segs.get(i + 1).and_then(|next| next.start).filter(|(prev, _)| *prev == sd.no as u64).map(|(_, l)| l);
        let short = claimed.is_some_and(|l| l > sd.end.valid_len);
        if sd.end.torn_bytes == 0 && !short {
            continue;
        }
        let later_content = segs[i + 1..].iter().any(|s| !s.recs.is_empty());
        let later_synced = segs[i + 1..].iter().any(|s| marks.get(&(s.no as u64)).is_some_and(|&u| u > magic));
        let proven = marks.get(&(sd.no as u64)).copied().unwrap_or(0);
        if later_synced || sd.end.valid_len < proven {
            return Err(LogError::Corrupt {
                path: sd.path.clone(),
                offset: sd.end.valid_len,
                why: format!(
                    "damaged record where a completed fsync had made the log durable (up to byte {}){}",
                    if later_synced { u64::MAX } else { proven },
                    if later_synced { ", with a later segment synced after it" } else { "" }
                ),
            });
        }
        let cut = sd.end.torn_bytes + claimed.map_or(0, |l| l.saturating_sub(sd.end.valid_len + sd.end.torn_bytes));
        if later_content || i + 1 < n {
            tracing::warn!(path = %sd.path.display(), bytes = cut, later_segments = n - i - 1, "log: a power cut lost the end of this segment before it was synced; cutting it there and dropping the later segments of this directory (nothing in them was confirmed under fsync = always)");
        } else {
            tracing::warn!(path = %sd.path.display(), bytes = sd.end.torn_bytes, "log: torn record at the end of the newest segment (crash mid-write): truncated");
        }
        report.torn.push((sd.path.clone(), sd.end.torn_bytes));
        let keep = sd.end.valid_len;
        let (path, file) = (sd.path.clone(), sd.file.clone());
        if keep < magic {
            disk.delete(&path).map_err(io_err(&path))?;
            segs.remove(i);
        } else {
            file.set_len(keep).map_err(io_err(&path))?;
            sync_or_note(disk, &file, &path)?;
        }
        let from = if keep < magic { i } else { i + 1 };
        for later in segs.drain(from..) {
            disk.delete(&later.path).map_err(io_err(&later.path))?;
        }
        disk.sync_dir(dir).map_err(io_err(dir))?;
        return Ok(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::LogSettings;
    use crate::store::Retention;

    fn settings() -> LogSettings {
        LogSettings {
            policy: crate::config::Fsync::Never,
            fsync_interval_ms: 100,
            segment_max_bytes: 64 << 20,
            retention: Retention { max_messages: 1000, max_age_ms: u64::MAX / 4 },
        }
    }

    fn msg(id: u64, cmid: u64, group: Option<&str>) -> NewMessage {
        NewMessage {
            msg_id: id,
            timestamp_ms: 1_000,
            from: Arc::from("alice"),
            device: Arc::from("phone"),
            client_msg_id: cmid,
            group: group.map(Arc::from),
            payload: Bytes::from(format!("m{id}")),
        }
    }

    fn recover_in(dir: &Path, workers: usize, groups: &HashMap<String, Vec<Arc<str>>>) -> Recovered {
        recover(&RecoverOpts { data_dir: dir, workers, settings: settings(), dedup_per_device: 2, groups, now_ms: 2_000 }).unwrap()
    }

    #[test]
    fn interrupted_group_fanout_is_completed_and_dedup_rebuilt() {
        let d = tempfile::tempdir().unwrap();
        let log_dir = d.path().join("log");
        {
            let mut st = DurableStore::new(0, &log_dir, settings(), HashMap::new(), HashMap::new(), 1).unwrap();
            // The crash hit after bob's copy of the group message, before
            // carol's; dave joins the group later and must not get it.
            let recipients: Vec<Arc<str>> = vec![Arc::from("bob"), Arc::from("carol")];
            st.record_fanout(&msg(7, 1, Some("team")), &recipients).unwrap();
            st.append("bob", msg(7, 1, Some("team")), 1_000).unwrap();
            // A fan-out that completed (and whose copy for erin retention
            // trimmed since): never again.
            let both: Vec<Arc<str>> = vec![Arc::from("bob"), Arc::from("erin")];
            st.record_fanout(&msg(8, 9, Some("team")), &both).unwrap();
            st.append("bob", msg(8, 9, Some("team")), 1_000).unwrap();
            st.fanout_done("alice", "phone", 9);
            for i in 2..=4 {
                st.append("bob", msg(7 + i, i, None), 1_000).unwrap();
            }
            st.shutdown();
        }
        let team: Vec<Arc<str>> = ["alice", "bob", "carol", "dave"].iter().map(|s| Arc::from(*s)).collect();
        let groups = HashMap::from([("team".to_string(), team)]);
        let mut rec = recover_in(d.path(), 1, &groups);
        assert_eq!(rec.report.fanouts_completed, vec![("team".to_string(), 1)]);
        let carol = rec.stores[0].peek("carol");
        assert_eq!(carol.bounds(), (1, 1));
        let e = carol.get(1).unwrap();
        assert_eq!((e.msg_id, &e.payload[..]), (7, &b"m7"[..]));
        assert_eq!(rec.stores[0].peek("alice").bounds(), (1, 0), "the sender's inbox is not written");
        assert_eq!(rec.stores[0].peek("dave").bounds(), (1, 0), "a member who joined later gets nothing");
        assert_eq!(rec.stores[0].peek("erin").bounds(), (1, 0), "a completed fan-out is not completed again");
        // Dedup: the last 2 SENDs of alice/phone, oldest first.
        let seed = &rec.dedup[0][0];
        assert_eq!((&*seed.user, &*seed.device), ("alice", "phone"));
        assert_eq!(seed.acks.iter().map(|a| a.0).collect::<Vec<_>>(), vec![3, 4]);
        // And it is not completed twice on the next start.
        for s in rec.stores.iter_mut() {
            s.shutdown();
        }
        drop(rec);
        let rec = recover_in(d.path(), 1, &groups);
        assert!(rec.report.fanouts_completed.is_empty());
        assert_eq!(rec.stores[0].peek("carol").bounds(), (1, 1));
    }

    #[test]
    fn worker_count_change_keeps_every_inbox() {
        let d = tempfile::tempdir().unwrap();
        let groups = HashMap::new();
        {
            let mut rec = recover_in(d.path(), 2, &groups);
            for u in 0..20 {
                let user = format!("u{u}");
                let core = home_core(&user, 2);
                for i in 1..=3 {
                    rec.stores[core].append(&user, msg(u * 10 + i, u * 10 + i, None), 1_000).unwrap();
                }
            }
            for s in rec.stores.iter_mut() {
                s.shutdown();
            }
        }
        // Three workers now: users move home, their records stay where they are.
        let rec = recover_in(d.path(), 3, &groups);
        for u in 0..20u64 {
            let user = format!("u{u}");
            let inbox = rec.stores[home_core(&user, 3)].peek(&user);
            assert_eq!(inbox.bounds(), (1, 3), "{user}");
            assert_eq!(inbox.get(2).unwrap().msg_id, u * 10 + 2);
        }
    }
}
