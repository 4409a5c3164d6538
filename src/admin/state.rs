//! What the admin API makes durable, kept out of the message log: groups, mutes and publish idempotency keys, each in its own small file under `<data_dir>/admin/`.
//!
//! Groups and mutes are rewritten whole on every change (temp file, fsync,
//! rename, fsync the directory), so a crash leaves the old or the new file,
//! never half of one; a change costs two fsyncs and is answered after them.
//! They are small (operators' lists, not traffic), and keeping them out of
//! the per-core log keeps the log's record format the log's own business.
//! Idempotency keys are appended one JSON line each (fdatasync before the
//! answer) and the file is compacted when it holds twice the live keys.
//!
//! Only the admin threads use this, under one mutex: never the message path.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid state file ({message}); fix or remove it")]
    Corrupt { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Replaces `path` with `data` so that a crash leaves either version whole.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

#[derive(Serialize, Deserialize, Default)]
struct GroupsFile {
    version: u32,
    groups: BTreeMap<String, Vec<String>>,
}

#[derive(Serialize, Deserialize, Default)]
struct MutesFile {
    version: u32,
    mutes: BTreeMap<String, u64>,
}

/// One remembered publish.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct IdemRecord {
    pub key: String,
    /// SHA-256 (hex) of the request body in canonical JSON.
    pub hash: String,
    pub at_ms: u64,
    /// The first answer, returned again for a retry.
    pub response: serde_json::Value,
}

/// The admin API's durable state.
pub struct State {
    dir: PathBuf,
    pub groups: BTreeMap<String, Vec<String>>,
    pub mutes: BTreeMap<String, u64>,
    idem: HashMap<String, IdemRecord>,
    idem_order: VecDeque<(u64, String)>,
    /// Keys whose publish is under way (a concurrent retry gets 409).
    pub idem_inflight: HashSet<String>,
    idem_file: Option<File>,
    idem_lines: usize,
    ttl_ms: u64,
    max_keys: usize,
}

impl State {
    /// Loads `<data_dir>/admin/`; `seed_groups` fills an empty directory.
    /// `durable_keys`: idempotency keys survive restarts.
    pub fn load(
        data_dir: &Path,
        seed_groups: &BTreeMap<String, Vec<String>>,
        durable_keys: bool,
        ttl_ms: u64,
        max_keys: usize,
        now_ms: u64,
    ) -> Result<State, StateError> {
        let dir = data_dir.join("admin");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let gpath = dir.join("groups.json");
        let groups = match std::fs::read(&gpath) {
            Ok(b) => serde_json::from_slice::<GroupsFile>(&b)
                .map_err(|e| StateError::Corrupt { path: gpath.clone(), message: e.to_string() })?
                .groups,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let g = GroupsFile { version: 1, groups: seed_groups.clone() };
                write_atomic(&gpath, &serde_json::to_vec_pretty(&g).unwrap_or_default())?;
                g.groups
            }
            Err(e) => return Err(StateError::Io { path: gpath, source: e }),
        };
        let mpath = dir.join("mutes.json");
        let mutes = match std::fs::read(&mpath) {
            Ok(b) => serde_json::from_slice::<MutesFile>(&b)
                .map_err(|e| StateError::Corrupt { path: mpath.clone(), message: e.to_string() })?
                .mutes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(StateError::Io { path: mpath, source: e }),
        };
        let mut s = State {
            dir,
            groups,
            mutes,
            idem: HashMap::new(),
            idem_order: VecDeque::new(),
            idem_inflight: HashSet::new(),
            idem_file: None,
            idem_lines: 0,
            ttl_ms,
            max_keys,
        };
        if durable_keys {
            s.load_idem(now_ms)?;
        }
        Ok(s)
    }

    fn idem_path(&self) -> PathBuf {
        self.dir.join("idempotency.jsonl")
    }

    fn load_idem(&mut self, now_ms: u64) -> Result<(), StateError> {
        let path = self.idem_path();
        match File::open(&path) {
            Ok(f) => {
                for line in std::io::BufReader::new(f).lines() {
                    let line = line.map_err(io(&path))?;
                    // A torn last line (crash mid-append) is skipped: its
                    // publish was never answered.
                    if let Ok(r) = serde_json::from_str::<IdemRecord>(&line) {
                        self.idem_lines += 1;
                        self.remember(r);
                    }
                }
                self.expire(now_ms);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StateError::Io { path, source: e }),
        }
        self.compact()?;
        Ok(())
    }

    fn remember(&mut self, r: IdemRecord) {
        self.idem_order.push_back((r.at_ms, r.key.clone()));
        self.idem.insert(r.key.clone(), r);
    }

    /// Forgets keys past their ttl, and the oldest past `max_keys`.
    pub fn expire(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.ttl_ms);
        while let Some((at, key)) = self.idem_order.front() {
            let live = self.idem.get(key).is_some_and(|r| r.at_ms == *at);
            if live && *at >= cutoff && self.idem.len() <= self.max_keys {
                break;
            }
            if live {
                self.idem.remove(key);
            }
            self.idem_order.pop_front();
        }
    }

    pub fn idem_get(&mut self, key: &str, now_ms: u64) -> Option<&IdemRecord> {
        self.expire(now_ms);
        self.idem.get(key)
    }

    /// Remembers a publish's answer (durably when the keys are durable).
    pub fn idem_put(&mut self, r: IdemRecord) -> Result<(), StateError> {
        if self.idem_file.is_some() {
            let path = self.idem_path();
            let mut line = serde_json::to_vec(&r).unwrap_or_default();
            line.push(b'\n');
            if let Some(f) = self.idem_file.as_mut() {
                f.write_all(&line).map_err(io(&path))?;
                f.sync_data().map_err(io(&path))?;
            }
            self.idem_lines += 1;
        }
        self.remember(r);
        if self.idem_file.is_some() && self.idem_lines > 2 * self.idem.len() + 1024 {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the key file with the live keys only and reopens it for appends.
    fn compact(&mut self) -> Result<(), StateError> {
        let path = self.idem_path();
        let mut data = Vec::new();
        for (at, key) in &self.idem_order {
            if let Some(r) = self.idem.get(key).filter(|r| r.at_ms == *at) {
                data.extend(serde_json::to_vec(r).unwrap_or_default());
                data.push(b'\n');
            }
        }
        self.idem_file = None;
        write_atomic(&path, &data)?;
        self.idem_lines = self.idem.len();
        self.idem_file = Some(OpenOptions::new().append(true).open(&path).map_err(io(&path))?);
        Ok(())
    }

    pub fn save_groups(&self) -> Result<(), StateError> {
        let g = GroupsFile { version: 1, groups: self.groups.clone() };
        write_atomic(&self.dir.join("groups.json"), &serde_json::to_vec_pretty(&g).unwrap_or_default())
    }

    pub fn save_mutes(&self) -> Result<(), StateError> {
        let m = MutesFile { version: 1, mutes: self.mutes.clone() };
        write_atomic(&self.dir.join("mutes.json"), &serde_json::to_vec_pretty(&m).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, at: u64) -> IdemRecord {
        IdemRecord { key: key.into(), hash: "h".into(), at_ms: at, response: serde_json::json!({"msg_id": 1}) }
    }

    #[test]
    fn seed_once_then_saved_state_wins() {
        let d = tempfile::tempdir().unwrap();
        let seed = BTreeMap::from([("g".to_string(), vec!["a".to_string()])]);
        let mut s = State::load(d.path(), &seed, true, 1000, 10, 0).unwrap();
        assert_eq!(s.groups, seed);
        s.groups.insert("h".into(), vec![]);
        s.groups.remove("g");
        s.save_groups().unwrap();
        s.mutes.insert("a".into(), 99);
        s.save_mutes().unwrap();
        let s = State::load(d.path(), &seed, true, 1000, 10, 0).unwrap();
        assert_eq!(s.groups.keys().collect::<Vec<_>>(), vec!["h"]);
        assert_eq!(s.mutes.get("a"), Some(&99));
    }

    #[test]
    fn keys_survive_restart_expire_and_stay_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mut s = State::load(d.path(), &BTreeMap::new(), true, 1000, 3, 0).unwrap();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            s.idem_put(rec(k, 10 + i as u64)).unwrap();
        }
        assert!(s.idem_get("a", 20).is_none(), "over max_keys: the oldest goes");
        assert!(s.idem_get("b", 20).is_some());
        // A torn last line is ignored.
        let mut f = OpenOptions::new().append(true).open(d.path().join("admin/idempotency.jsonl")).unwrap();
        f.write_all(b"{\"key\":\"x\",\"ha").unwrap();
        let mut s = State::load(d.path(), &BTreeMap::new(), true, 1000, 3, 20).unwrap();
        assert_eq!(s.idem_get("d", 20).unwrap().response["msg_id"], 1);
        assert!(s.idem_get("x", 20).is_none());
        assert!(s.idem_get("d", 2000).is_none(), "past ttl");
        // Not durable: nothing read back.
        let mut s = State::load(d.path(), &BTreeMap::new(), false, 1000, 3, 20).unwrap();
        assert!(s.idem_get("d", 20).is_none());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("admin")).unwrap();
        std::fs::write(d.path().join("admin/groups.json"), b"{nope").unwrap();
        let e = State::load(d.path(), &BTreeMap::new(), false, 1, 1, 0).err().unwrap().to_string();
        assert!(e.contains("groups.json"), "{e}");
    }
}
