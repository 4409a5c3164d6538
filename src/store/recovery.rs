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

use super::durable::{seg_id, DEntry, DInbox, DurableStore, LogSettings, SegId, Segment, HOT_PAYLOADS};
use super::log::{self, LogError, Record};
use super::{InboxStore, NewMessage};
use crate::runtime::mesh::home_core;

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

struct SegData {
    id: SegId,
    dir_core: usize,
    path: PathBuf,
    data: Vec<u8>,
    /// Where the scan found the records (read once, indexed later).
    records: Vec<log::Found>,
}

struct Ent {
    seq: u64,
    msg_id: u64,
    ts: u64,
    from: Arc<str>,
    seg: usize,
    off: u64,
    len: u32,
    body_start: usize,
}

#[derive(Default)]
struct UserAcc {
    entries: Vec<Ent>,
    head: u64,
    head_seg: Option<usize>,
}

struct GroupSend {
    group: Arc<str>,
    msg_id: u64,
    ts: u64,
    seg: usize,
    payload: (usize, usize),
    recipients: HashSet<Arc<str>>,
}

/// Reads `<data_dir>/log` and builds one store per worker.
pub fn recover(o: &RecoverOpts<'_>) -> Result<Recovered, LogError> {
    let t0 = Instant::now();
    let log_dir = o.data_dir.join("log");
    let mut report = RecoveryReport::default();
    let mut segs: Vec<SegData> = Vec::new();
    let mut next_no: HashMap<usize, u32> = HashMap::new();

    // 1. Read and check every segment of every core directory.
    let mut dirs: Vec<(usize, PathBuf)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&log_dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            if let Some(c) = name.to_str().and_then(|n| n.strip_prefix("core-")).and_then(|n| n.parse::<usize>().ok()) {
                if c < 256 {
                    dirs.push((c, e.path()));
                }
            }
        }
    }
    dirs.sort();
    for (core, dir) in &dirs {
        let list = log::list_segments(dir)?;
        let n = list.len();
        for (i, (no, path)) in list.into_iter().enumerate() {
            next_no.insert(*core, no);
            let data = std::fs::read(&path).map_err(|source| LogError::Io { path: path.clone(), source })?;
            let scan = log::scan(&path, &data, i + 1 == n)?;
            if scan.torn_bytes > 0 {
                tracing::warn!(path = %path.display(), bytes = scan.torn_bytes, "log: torn record at the end of the newest segment (crash mid-write): truncated");
                truncate(&path, scan.valid_len)?;
                report.torn.push((path.clone(), scan.torn_bytes));
            }
            report.records += scan.records.len() as u64;
            report.bytes += scan.valid_len;
            let mut data = data;
            data.truncate(scan.valid_len as usize);
            segs.push(SegData { id: seg_id(*core, no), dir_core: *core, path, data, records: scan.records });
        }
    }
    report.segments = segs.len();

    // 2. Index every record.
    let mut intern: HashMap<String, Arc<str>> = HashMap::new();
    let mut arc = |s: &str| -> Arc<str> {
        if let Some(a) = intern.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        intern.insert(s.to_string(), a.clone());
        a
    };
    let mut users: HashMap<Arc<str>, UserAcc> = HashMap::new();
    let mut dedup: HashMap<(Arc<str>, Arc<str>), Acks> = HashMap::new();
    let mut group_sends: HashMap<(Arc<str>, Arc<str>, u64), GroupSend> = HashMap::new();
    for (si, sd) in segs.iter().enumerate() {
        for &f in &sd.records {
            let body = &sd.data[f.body.0..f.body.1];
            match log::decode_body(body) {
                Some(Record::Message(m)) => {
                    let user = arc(m.user);
                    let from = arc(m.from);
                    let device = arc(m.device);
                    let po = log::payload_offset_in_body(&m);
                    let acc = users.entry(user.clone()).or_default();
                    if m.seq >= acc.head {
                        acc.head = m.seq;
                        acc.head_seg = Some(si);
                    }
                    acc.entries.push(Ent {
                        seq: m.seq,
                        msg_id: m.msg_id,
                        ts: m.timestamp_ms,
                        from: from.clone(),
                        seg: si,
                        off: (f.body.0 + po) as u64,
                        len: m.payload.len() as u32,
                        body_start: f.body.0 + po,
                    });
                    let acks = dedup.entry((from.clone(), device.clone())).or_default();
                    if !acks.iter().rev().take(64).any(|a| a.0 == m.client_msg_id) {
                        acks.push((m.client_msg_id, m.msg_id, m.timestamp_ms));
                    }
                    if !m.group.is_empty() {
                        let g = group_sends.entry((from, device, m.client_msg_id)).or_insert_with(|| GroupSend {
                            group: arc(m.group),
                            msg_id: m.msg_id,
                            ts: m.timestamp_ms,
                            seg: si,
                            payload: (f.body.0 + po, f.body.1),
                            recipients: HashSet::new(),
                        });
                        g.recipients.insert(user);
                    }
                }
                Some(Record::Head { head, user }) => {
                    let acc = users.entry(arc(user)).or_default();
                    if head >= acc.head {
                        acc.head = head;
                        acc.head_seg = Some(si);
                    }
                }
                None => {
                    return Err(LogError::Corrupt { path: sd.path.clone(), offset: f.offset, why: "undecodable record".into() })
                }
            }
        }
    }

    // 3. Per user: dense seqs, retention, the hot payloads.
    let workers = o.workers.max(1);
    let mut per_core: Vec<HashMap<Arc<str>, DInbox>> = (0..workers).map(|_| HashMap::new()).collect();
    let mut refs: HashMap<usize, HashSet<usize>> = HashMap::new(); // seg index -> cores referencing
    let mut live: Vec<HashMap<usize, u64>> = (0..workers).map(|_| HashMap::new()).collect();
    let cutoff = o.now_ms.saturating_sub(o.settings.retention.max_age_ms);
    for (user, mut acc) in users {
        acc.entries.sort_by_key(|e| e.seq);
        for w in acc.entries.windows(2) {
            if w[1].seq != w[0].seq + 1 {
                let sd = &segs[w[1].seg];
                return Err(LogError::Corrupt {
                    path: sd.path.clone(),
                    offset: w[1].off,
                    why: format!("user {user:?}: seq goes from {} to {} (a segment is missing or damaged)", w[0].seq, w[1].seq),
                });
            }
        }
        // Retention, as the running store applies it.
        let mut start = 0;
        let n = acc.entries.len();
        while start < n && ((n - start) as u64 > o.settings.retention.max_messages || acc.entries[start].ts < cutoff) {
            start += 1;
        }
        let core = home_core(&user, workers);
        let head_seg = acc.head_seg.map_or(0, |i| segs[i].id);
        let mut inbox = DInbox::new(acc.head, head_seg);
        inbox.oldest = acc.entries.get(start).map_or(acc.head + 1, |e| e.seq);
        let hot_from = n.saturating_sub(HOT_PAYLOADS).max(start);
        for (i, e) in acc.entries.drain(..).enumerate().skip(start) {
            let sd = &segs[e.seg];
            let payload = (i >= hot_from).then(|| Bytes::copy_from_slice(&sd.data[e.body_start..e.body_start + e.len as usize]));
            refs.entry(e.seg).or_default().insert(core);
            *live[core].entry(e.seg).or_default() += 1;
            inbox.entries.push_back(DEntry { msg_id: e.msg_id, timestamp_ms: e.ts, from: e.from, seg: sd.id, off: e.off, len: e.len, payload });
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
            let file = std::fs::File::open(&sd.path).map_err(|source| LogError::Io { path: sd.path.clone(), source })?;
            let referencing = refs.get(&si).map_or(0, |r| r.len());
            table.insert(
                sd.id,
                Segment {
                    path: sd.path.clone(),
                    file: Arc::new(file),
                    live: live[core].get(&si).copied().unwrap_or(0),
                    pinned: referencing > 1 || sd.dir_core != core,
                    own: sd.dir_core == core,
                },
            );
        }
        let next = next_no.get(&core).copied().unwrap_or(0) + 1;
        stores.push(DurableStore::new(core, &log_dir, o.settings, inboxes, table, next)?);
    }

    // 5. Group fan-outs a crash cut short: append to the members that lack it.
    for ((from, device, cmid), g) in group_sends {
        let Some(members) = o.groups.get(&*g.group) else { continue };
        let missing: Vec<&Arc<str>> = members.iter().filter(|m| **m != from && !g.recipients.contains(*m)).collect();
        if missing.is_empty() {
            continue;
        }
        let payload = Bytes::copy_from_slice(&segs[g.seg].data[g.payload.0..g.payload.1]);
        for m in &missing {
            let core = home_core(m, workers);
            let msg = NewMessage {
                msg_id: g.msg_id,
                timestamp_ms: g.ts,
                from: from.clone(),
                device: device.clone(),
                client_msg_id: cmid,
                group: Some(g.group.clone()),
                payload: payload.clone(),
            };
            stores[core].append(m, msg, o.now_ms).map_err(|e| LogError::Io {
                path: log_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        tracing::warn!(group = %g.group, msg_id = g.msg_id, members = missing.len(), "log: completed a group fan-out interrupted by a crash");
        report.fanouts_completed.push((g.group.to_string(), missing.len()));
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
            .map_err(|e| LogError::Io { path: log_dir.clone(), source: std::io::Error::other(e.to_string()) })?;
        s.sync_now();
    }
    for si in doomed {
        match std::fs::remove_file(&segs[si].path) {
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

fn truncate(path: &Path, len: u64) -> Result<(), LogError> {
    let io = |source| LogError::Io { path: path.to_path_buf(), source };
    if len < log::MAGIC.len() as u64 {
        return std::fs::remove_file(path).map_err(io);
    }
    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io)?;
    f.set_len(len).map_err(io)?;
    f.sync_all().map_err(io)
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
            // The crash hit after bob's copy of the group message, before carol's.
            st.append("bob", msg(7, 1, Some("team")), 1_000).unwrap();
            for i in 2..=4 {
                st.append("bob", msg(7 + i, i, None), 1_000).unwrap();
            }
            st.shutdown();
        }
        let team: Vec<Arc<str>> = ["alice", "bob", "carol"].iter().map(|s| Arc::from(*s)).collect();
        let groups = HashMap::from([("team".to_string(), team)]);
        let mut rec = recover_in(d.path(), 1, &groups);
        assert_eq!(rec.report.fanouts_completed, vec![("team".to_string(), 1)]);
        let carol = rec.stores[0].peek("carol");
        assert_eq!(carol.bounds(), (1, 1));
        let e = carol.get(1).unwrap();
        assert_eq!((e.msg_id, &e.payload[..]), (7, &b"m7"[..]));
        assert_eq!(rec.stores[0].peek("alice").bounds(), (1, 0), "the sender's inbox is not written");
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
