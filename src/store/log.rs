//! The append-only log on disk: record format with length and CRC, segment files, and the scan that recovery reads them with.
//!
//! Layout: `<data_dir>/log/core-<N>/<seq:08>.seg`, one directory per core
//! that wrote it. A segment starts with an 8-byte magic; then records:
//!
//! ```text
//! len u32 LE | crc32c(body) u32 LE | body (len bytes)
//! body = kind u8, then
//!   1 MESSAGE: seq u64, msg_id u64, timestamp_ms u64, client_msg_id u64,
//!              user str, from str, device str, group str (empty: direct), payload (rest)
//!   2 HEAD:    head u64, user str        (keeps a user's head seq alive after
//!                                         retention deleted its last records)
//!   3 SYNCED:  seg u64, upto u64         (segment `seg` of this directory was
//!                                         durable up to byte `upto`: written
//!                                         after an fsync succeeded)
//!   4 SEGSTART: prev u64, prev_len u64   (first record of a segment: the
//!                                         segment before it ended at prev_len)
//!   5 FANOUT:  msg_id u64, client_msg_id u64, from str, device str, group str,
//!              n u16, n × recipient str  (a group send's recipients, written
//!                                         before any copy)
//!   6 FANDONE: client_msg_id u64, from str, device str  (every copy of it
//!                                         was confirmed)
//!   7 RUN:     (empty)                   (a recovery finished: what follows
//!                                         was written by the run after it)
//!   8 MSGREF:  as MESSAGE, but instead of the payload: payload_off u64,
//!              payload_len u32 — the payload of an earlier MESSAGE in the
//!              same segment (another member's copy of the same group
//!              send: a group message's payload is written once per
//!              segment, each further member gets only this index entry)
//! str = u16 LE length + UTF-8
//! ```
//!
//! A scan tells a torn tail (the last record of the newest segment is cut
//! short or fails its CRC with nothing after it: the crash hit mid-write)
//! from corruption (a bad record with valid-looking data after it, or in an
//! older segment): the first is truncated and reported with the byte count,
//! the second stops recovery with the segment path and offset, so seqs are
//! never silently rebuilt wrong.

use std::path::{Path, PathBuf};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"RGLOG\x00\x01\n";
pub const RECORD_HEADER: usize = 8;
/// Upper bound of one record body (a frame is at most 16 MiB by config).
pub const MAX_RECORD: usize = 17 << 20;

pub const KIND_MESSAGE: u8 = 1;
pub const KIND_HEAD: u8 = 2;
pub const KIND_SYNCED: u8 = 3;
pub const KIND_SEGSTART: u8 = 4;
pub const KIND_FANOUT: u8 = 5;
pub const KIND_FANDONE: u8 = 6;
pub const KIND_RUN: u8 = 7;
pub const KIND_MSGREF: u8 = 8;

/// Why the log could not be read or written. Operator-facing.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("corrupt record in {path} at offset {offset}: {why}; refusing to start (move the segment aside to recover what is before it)")]
    Corrupt { path: PathBuf, offset: u64, why: String },
}

/// A decoded record, borrowing the segment bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Message(MessageRec<'a>),
    Head { head: u64, user: &'a str },
    /// Segment `seg` was durable up to byte `upto` when this was written.
    Synced { seg: u64, upto: u64 },
    /// The segment before this one (number `prev`) ended at `prev_len`.
    SegStart { prev: u64, prev_len: u64 },
    /// A group send's intent: its recipients (the membership at send time).
    Fanout(FanoutRec<'a>),
    /// Every copy of that group send was confirmed.
    FanDone { client_msg_id: u64, from: &'a str, device: &'a str },
    /// A recovery finished here: a new run of the server starts.
    Run,
    /// A message whose payload is that of an earlier record in the same
    /// segment, at `payload_off` (its `payload` field is empty).
    MessageRef { m: MessageRec<'a>, payload_off: u64, payload_len: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutRec<'a> {
    pub msg_id: u64,
    pub client_msg_id: u64,
    pub from: &'a str,
    pub device: &'a str,
    pub group: &'a str,
    pub recipients: Vec<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRec<'a> {
    pub seq: u64,
    pub msg_id: u64,
    pub timestamp_ms: u64,
    pub client_msg_id: u64,
    pub user: &'a str,
    pub from: &'a str,
    pub device: &'a str,
    pub group: &'a str,
    pub payload: &'a [u8],
}

/// The part MESSAGE and MSGREF records share: the record header's room,
/// the kind, the numbers and the names of `m`; returns where the record starts.
fn put_message_head(out: &mut Vec<u8>, kind: u8, m: &MessageRec<'_>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(kind);
    for v in [m.seq, m.msg_id, m.timestamp_ms, m.client_msg_id] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for s in [m.user, m.from, m.device, m.group] {
        put_str(out, s);
    }
    start
}

/// Appends one MESSAGE record to `out`; returns the offset of the payload
/// within what was appended (to read it back later without the rest).
pub fn encode_message(out: &mut Vec<u8>, m: &MessageRec<'_>) -> usize {
    let start = put_message_head(out, KIND_MESSAGE, m);
    let payload_at = out.len() - start;
    out.extend_from_slice(m.payload);
    seal(out, start);
    payload_at
}

/// Appends one MSGREF record: `m` (its payload ignored) pointing at a
/// payload already in the segment at `payload_off`.
pub fn encode_message_ref(out: &mut Vec<u8>, m: &MessageRec<'_>, payload_off: u64, payload_len: u32) {
    let start = put_message_head(out, KIND_MSGREF, m);
    out.extend_from_slice(&payload_off.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    seal(out, start);
}

/// Appends one HEAD record to `out`.
pub fn encode_head(out: &mut Vec<u8>, user: &str, head: u64) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(KIND_HEAD);
    out.extend_from_slice(&head.to_le_bytes());
    put_str(out, user);
    seal(out, start);
}

/// Appends a SYNCED record: segment `seg` is durable up to `upto`.
pub fn encode_synced(out: &mut Vec<u8>, seg: u64, upto: u64) {
    encode_pair(out, KIND_SYNCED, seg, upto);
}

/// Appends a SEGSTART record: the previous segment `prev` ended at `prev_len`.
pub fn encode_segstart(out: &mut Vec<u8>, prev: u64, prev_len: u64) {
    encode_pair(out, KIND_SEGSTART, prev, prev_len);
}

/// Appends a FANOUT record.
pub fn encode_fanout(out: &mut Vec<u8>, f: &FanoutRec<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(KIND_FANOUT);
    out.extend_from_slice(&f.msg_id.to_le_bytes());
    out.extend_from_slice(&f.client_msg_id.to_le_bytes());
    for s in [f.from, f.device, f.group] {
        put_str(out, s);
    }
    let n = f.recipients.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    for r in &f.recipients[..n] {
        put_str(out, r);
    }
    seal(out, start);
}

/// Appends a RUN record.
pub fn encode_run(out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(KIND_RUN);
    seal(out, start);
}

/// Appends a FANDONE record.
pub fn encode_fandone(out: &mut Vec<u8>, client_msg_id: u64, from: &str, device: &str) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(KIND_FANDONE);
    out.extend_from_slice(&client_msg_id.to_le_bytes());
    put_str(out, from);
    put_str(out, device);
    seal(out, start);
}

fn encode_pair(out: &mut Vec<u8>, kind: u8, a: u64, b: u64) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(kind);
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    seal(out, start);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Ids are bounded by the protocol (255 bytes); clamp defensively.
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn seal(out: &mut [u8], start: usize) {
    let body = &out[start + RECORD_HEADER..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.b.split_first()?;
        self.b = rest;
        Some(v)
    }
    fn u64(&mut self) -> Option<u64> {
        let v = self.b.get(..8)?;
        self.b = &self.b[8..];
        Some(u64::from_le_bytes(v.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = u16::from_le_bytes(self.b.get(..2)?.try_into().ok()?) as usize;
        let s = self.b.get(2..2 + n)?;
        self.b = &self.b[2 + n..];
        std::str::from_utf8(s).ok()
    }
}

/// Decodes a record body (after its CRC was checked).
pub fn decode_body(body: &[u8]) -> Option<Record<'_>> {
    let mut r = Reader { b: body };
    match r.u8()? {
        KIND_MESSAGE => {
            let (seq, msg_id, timestamp_ms, client_msg_id) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let (user, from, device, group) = (r.str()?, r.str()?, r.str()?, r.str()?);
            Some(Record::Message(MessageRec { seq, msg_id, timestamp_ms, client_msg_id, user, from, device, group, payload: r.b }))
        }
        KIND_MSGREF => {
            let (seq, msg_id, timestamp_ms, client_msg_id) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let (user, from, device, group) = (r.str()?, r.str()?, r.str()?, r.str()?);
            let payload_off = r.u64()?;
            let payload_len = u32::from_le_bytes(r.b.get(..4)?.try_into().ok()?);
            r.b = &r.b[4..];
            let m = MessageRec { seq, msg_id, timestamp_ms, client_msg_id, user, from, device, group, payload: &[] };
            r.b.is_empty().then_some(Record::MessageRef { m, payload_off, payload_len })
        }
        KIND_HEAD => {
            let head = r.u64()?;
            let user = r.str()?;
            r.b.is_empty().then_some(Record::Head { head, user })
        }
        KIND_SYNCED => {
            let (seg, upto) = (r.u64()?, r.u64()?);
            r.b.is_empty().then_some(Record::Synced { seg, upto })
        }
        KIND_FANOUT => {
            let (msg_id, client_msg_id) = (r.u64()?, r.u64()?);
            let (from, device, group) = (r.str()?, r.str()?, r.str()?);
            let n = u16::from_le_bytes(r.b.get(..2)?.try_into().ok()?) as usize;
            r.b = &r.b[2..];
            let mut recipients = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                recipients.push(r.str()?);
            }
            r.b.is_empty().then_some(Record::Fanout(FanoutRec { msg_id, client_msg_id, from, device, group, recipients }))
        }
        KIND_FANDONE => {
            let client_msg_id = r.u64()?;
            let (from, device) = (r.str()?, r.str()?);
            r.b.is_empty().then_some(Record::FanDone { client_msg_id, from, device })
        }
        KIND_RUN => r.b.is_empty().then_some(Record::Run),
        KIND_SEGSTART => {
            let (prev, prev_len) = (r.u64()?, r.u64()?);
            r.b.is_empty().then_some(Record::SegStart { prev, prev_len })
        }
        _ => None,
    }
}

/// Offset of the payload inside a MESSAGE body (for reading it back).
pub fn payload_offset_in_body(m: &MessageRec<'_>) -> usize {
    1 + 32 + 8 + m.user.len() + m.from.len() + m.device.len() + m.group.len()
}

/// One record found by a scan: where it is and its body's position.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    /// Offset of the record header in the file.
    pub offset: u64,
    /// Range of the body in the scanned bytes (file offsets).
    pub body: (usize, usize),
}

/// What scanning one segment found.
#[derive(Debug)]
pub struct Scan {
    pub records: Vec<Found>,
    /// Bytes of a torn tail that were cut off (0 if none).
    pub torn_bytes: u64,
    /// Length of the valid prefix of the file.
    pub valid_len: u64,
}

/// Where a segment's valid records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEnd {
    /// Length of the valid prefix (magic plus whole, CRC-checked records).
    pub valid_len: u64,
    /// Bytes after it that do not form a record: a write cut short by a
    /// crash or a power cut (recovery decides which it may be).
    pub torn_bytes: u64,
}

/// Positional reads of a segment, so a scan never holds more than a window.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()>;
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        let src = usize::try_from(off).ok().and_then(|o| self.get(o..o.checked_add(buf.len())?));
        match src {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl ReadAt for dyn super::disk::DiskFile {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        self.read_at(buf, off)
    }
}

/// Read-ahead window over a [`ReadAt`]: one read per `WINDOW` bytes of
/// small records, one per record above that.
struct Window<'a, R: ReadAt + ?Sized> {
    src: &'a R,
    len: u64,
    buf: Vec<u8>,
    at: u64,
}

const WINDOW: usize = 1 << 20;

impl<'a, R: ReadAt + ?Sized> Window<'a, R> {
    fn get(&mut self, off: u64, n: usize) -> std::io::Result<&[u8]> {
        let have = off >= self.at && off + n as u64 <= self.at + self.buf.len() as u64;
        if !have {
            let want = (n.max(WINDOW) as u64).min(self.len.saturating_sub(off)) as usize;
            self.buf.clear();
            self.buf.resize(want.max(n), 0);
            self.src.read_exact_at(&mut self.buf[..want], off)?;
            self.buf.truncate(want);
            self.at = off;
        }
        let s = (off - self.at) as usize;
        Ok(&self.buf[s..s + n])
    }
}

/// Scans a segment of `len` bytes, streaming: `visit(offset, body)` sees
/// every valid record in order; memory stays one window plus one record.
/// A torn tail (a record cut short, a CRC failure with nothing after it,
/// zeros) ends the scan and is reported; whether it is allowed is the
/// caller's call (it knows which segment is the newest and what was
/// synced). Corruption a crash cannot produce (bad magic, a CRC failure
/// with a record after it, a body that passes its CRC and does not decode)
/// is an error with the offset.
pub fn scan_with<R: ReadAt + ?Sized>(
    path: &Path,
    src: &R,
    len: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<(), LogError>,
) -> Result<ScanEnd, LogError> {
    let corrupt = |offset: u64, why: String| LogError::Corrupt { path: path.to_path_buf(), offset, why };
    let io = |source| LogError::Io { path: path.to_path_buf(), source };
    let mut w = Window { src, len, buf: Vec::new(), at: 0 };
    let m = MAGIC.len() as u64;
    if len < m {
        let head = w.get(0, len as usize).map_err(io)?;
        if MAGIC.starts_with(head) {
            return Ok(ScanEnd { valid_len: 0, torn_bytes: len });
        }
        return Err(corrupt(0, "file shorter than the segment header".into()));
    }
    if w.get(0, MAGIC.len()).map_err(io)? != MAGIC {
        return Err(corrupt(0, "not a ringgate log segment (bad magic)".into()));
    }
    let mut at = m;
    while at < len {
        let rest = len - at;
        let torn = ScanEnd { valid_len: at, torn_bytes: rest };
        if rest < RECORD_HEADER as u64 {
            return Ok(torn);
        }
        let h = w.get(at, RECORD_HEADER).map_err(io)?;
        let rlen = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if rlen == 0 || rlen > MAX_RECORD {
            // A zero or absurd length at the very end can be a torn header.
            if all_zero(&mut w, at, len).map_err(io)? {
                return Ok(torn);
            }
            return Err(corrupt(at, format!("record length {rlen} out of range")));
        }
        let end = at + (RECORD_HEADER + rlen) as u64;
        if end > len {
            return Ok(torn);
        }
        let body = w.get(at + RECORD_HEADER as u64, rlen).map_err(io)?;
        if crc32c::crc32c(body) != crc {
            if end == len || all_zero(&mut w, end, len).map_err(io)? {
                return Ok(torn);
            }
            return Err(corrupt(at, "CRC mismatch with more records after it".into()));
        }
        if decode_body(body).is_none() {
            return Err(corrupt(at, "record passes its CRC but does not decode".into()));
        }
        visit(at, body)?;
        at = end;
    }
    Ok(ScanEnd { valid_len: len, torn_bytes: 0 })
}

fn all_zero<R: ReadAt + ?Sized>(w: &mut Window<'_, R>, from: u64, len: u64) -> std::io::Result<bool> {
    let mut at = from;
    while at < len {
        let n = ((len - at) as usize).min(WINDOW);
        if w.get(at, n)?.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Scans segment bytes in memory (tests and tools). `is_tail`: this is the
/// newest segment of its directory, where a torn last record is expected
/// after a crash; elsewhere it is corruption.
pub fn scan(path: &Path, data: &[u8], is_tail: bool) -> Result<Scan, LogError> {
    let mut records = Vec::new();
    let end = scan_with(path, data, data.len() as u64, |offset, body| {
        let b = (offset as usize + RECORD_HEADER, offset as usize + RECORD_HEADER + body.len());
        records.push(Found { offset, body: b });
        Ok(())
    })?;
    if end.torn_bytes > 0 && !is_tail {
        return Err(LogError::Corrupt {
            path: path.to_path_buf(),
            offset: end.valid_len,
            why: "torn record in a segment that is not the newest".into(),
        });
    }
    Ok(Scan { records, torn_bytes: end.torn_bytes, valid_len: end.valid_len })
}

/// Segment file name for number `n`.
pub fn segment_name(n: u32) -> String {
    format!("{n:08}.seg")
}

/// Lists `(number, path)` of the segments in a directory, oldest first.
pub fn list_segments(disk: &dyn super::disk::Disk, dir: &Path) -> Result<Vec<(u32, PathBuf)>, LogError> {
    let names = disk.list(dir).map_err(|source| LogError::Io { path: dir.to_path_buf(), source })?;
    let mut out: Vec<(u32, PathBuf)> = names
        .iter()
        .filter_map(|name| name.strip_suffix(".seg").and_then(|n| n.parse::<u32>().ok()).map(|n| (n, dir.join(name))))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, payload: &[u8]) -> MessageRec<'_> {
        MessageRec { seq, msg_id: 100 + seq, timestamp_ms: 5, client_msg_id: 7, user: "bob", from: "alice", device: "phone", group: "", payload }
    }

    fn segment(n: u64) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        for s in 1..=n {
            encode_message(&mut v, &msg(s, format!("payload {s}").as_bytes()));
        }
        encode_head(&mut v, "carol", 42);
        v
    }

    #[test]
    fn round_trip() {
        let data = segment(3);
        let s = scan(Path::new("x"), &data, false).unwrap();
        assert_eq!(s.records.len(), 4);
        let f = s.records[1];
        match decode_body(&data[f.body.0..f.body.1]).unwrap() {
            Record::Message(m) => {
                assert_eq!(m, msg(2, b"payload 2"));
                let off = payload_offset_in_body(&m);
                assert_eq!(&data[f.body.0 + off..f.body.1], b"payload 2");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode_body(&data[s.records[3].body.0..s.records[3].body.1]), Some(Record::Head { head: 42, user: "carol" }));
    }

    #[test]
    fn torn_tail_is_cut_at_every_length() {
        let full = segment(3);
        let good = scan(Path::new("x"), &full, true).unwrap();
        let last = good.records[3].offset as usize;
        for cut in last + 1..full.len() {
            let s = scan(Path::new("x"), &full[..cut], true).unwrap();
            assert_eq!(s.records.len(), 3, "cut at {cut}");
            assert_eq!(s.valid_len as usize, last);
            assert_eq!(s.torn_bytes as usize, cut - last);
        }
        // The same cut in an older segment is corruption.
        assert!(matches!(scan(Path::new("x"), &full[..full.len() - 1], false), Err(LogError::Corrupt { .. })));
    }

    #[test]
    fn flipped_byte_in_the_middle_is_corruption_with_its_offset() {
        let mut data = segment(3);
        let s = scan(Path::new("seg"), &data, true).unwrap();
        let second = s.records[1];
        data[second.body.0 + 3] ^= 0x40;
        match scan(Path::new("seg"), &data, true) {
            Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset, second.offset),
            other => panic!("{other:?}"),
        }
        // In the last record with nothing after it, it reads as a torn write.
        let mut data = segment(3);
        let n = data.len();
        data[n - 1] ^= 1;
        assert_eq!(scan(Path::new("seg"), &data, true).unwrap().records.len(), 3);
    }
}
