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

/// Appends one MESSAGE record to `out`; returns the offset of the payload
/// within what was appended (to read it back later without the rest).
pub fn encode_message(out: &mut Vec<u8>, m: &MessageRec<'_>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER]);
    out.push(KIND_MESSAGE);
    for v in [m.seq, m.msg_id, m.timestamp_ms, m.client_msg_id] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for s in [m.user, m.from, m.device, m.group] {
        put_str(out, s);
    }
    let payload_at = out.len() - start;
    out.extend_from_slice(m.payload);
    seal(out, start);
    payload_at
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
        KIND_HEAD => {
            let head = r.u64()?;
            let user = r.str()?;
            r.b.is_empty().then_some(Record::Head { head, user })
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
    /// Range of the body in the scanned bytes.
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

/// Scans segment bytes. `is_tail`: this is the newest segment of its
/// directory, where a torn last record is expected after a crash.
pub fn scan(path: &Path, data: &[u8], is_tail: bool) -> Result<Scan, LogError> {
    let corrupt = |offset: usize, why: String| LogError::Corrupt { path: path.to_path_buf(), offset: offset as u64, why };
    if data.len() < MAGIC.len() {
        if is_tail && MAGIC.starts_with(data) {
            return Ok(Scan { records: Vec::new(), torn_bytes: data.len() as u64, valid_len: 0 });
        }
        return Err(corrupt(0, "file shorter than the segment header".into()));
    }
    if &data[..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "not a ringgate log segment (bad magic)".into()));
    }
    let mut at = MAGIC.len();
    let mut records = Vec::new();
    while at < data.len() {
        let rest = data.len() - at;
        // A tail that cannot hold a header, or whose length runs past EOF, or
        // whose CRC fails as the very last record: the crash hit mid-write.
        let torn = |why: &str| -> Result<Scan, LogError> {
            if is_tail {
                Ok(Scan { records: Vec::new(), torn_bytes: rest as u64, valid_len: at as u64 })
            } else {
                Err(corrupt(at, format!("{why} in a segment that is not the newest")))
            }
        };
        if rest < RECORD_HEADER {
            let s = torn("record header cut short")?;
            return Ok(Scan { records, ..s });
        }
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap_or_default());
        if len == 0 || len > MAX_RECORD {
            // A zero or absurd length at the very end can be a torn header.
            if is_tail && data[at..].iter().all(|&b| b == 0) {
                let s = torn("zeroed tail")?;
                return Ok(Scan { records, ..s });
            }
            return Err(corrupt(at, format!("record length {len} out of range")));
        }
        let end = at + RECORD_HEADER + len;
        if end > data.len() {
            let s = torn("record cut short")?;
            return Ok(Scan { records, ..s });
        }
        let body = &data[at + RECORD_HEADER..end];
        if crc32c::crc32c(body) != crc {
            if end == data.len() {
                let s = torn("last record fails its CRC")?;
                return Ok(Scan { records, ..s });
            }
            return Err(corrupt(at, "CRC mismatch with more records after it".into()));
        }
        if decode_body(body).is_none() {
            return Err(corrupt(at, "record passes its CRC but does not decode".into()));
        }
        records.push(Found { offset: at as u64, body: (at + RECORD_HEADER, end) });
        at = end;
    }
    Ok(Scan { records, torn_bytes: 0, valid_len: data.len() as u64 })
}

/// Segment file name for number `n`.
pub fn segment_name(n: u32) -> String {
    format!("{n:08}.seg")
}

/// Lists `(number, path)` of the segments in a directory, oldest first.
pub fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, LogError> {
    let io = |source| LogError::Io { path: dir.to_path_buf(), source };
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(e)),
    };
    for e in rd {
        let e = e.map_err(io)?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse::<u32>().ok()) {
            out.push((n, e.path()));
        }
    }
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
