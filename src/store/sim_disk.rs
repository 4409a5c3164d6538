//! A simulated disk for tests: a page cache over a platter, with power cuts, failing fsyncs and failing reads, all driven by a seed.
//!
//! What it models, and why each matters to the log:
//!
//! - Writes land in the page cache; reads see them at once. A process
//!   crash (dropping the store) keeps the page cache: everything written
//!   survives it.
//! - `sync` copies a file's cache to the platter. A power cut keeps the
//!   platter plus, per file, a random *prefix* of the writes since its last
//!   sync, the last of them possibly torn (cut short, or its tail zeroed
//!   when the size reached the disk but the data did not).
//! - Directory operations (create, delete, rename) are journaled in order;
//!   `sync_dir` makes them all durable, a power cut keeps a random prefix.
//! - A failing `sync` returns EIO and, as Linux may, forgets the writes it
//!   could not make durable: the cache still shows them, the platter never
//!   gets them, and the next sync succeeds ("fsyncgate").
//! - Reads may fail (EIO) while `read_faults` is on.
//!
//! Not modelled: writeback that reorders pages *within* a file (a hole in
//! the middle of the unsynced region with later data intact), bit rot on
//! the platter except where a test flips a byte on purpose.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::disk::{Disk, DiskFile};

/// xorshift64*: small, seedable, good enough to pick fault points.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

#[derive(Clone, Debug)]
enum Write {
    Data { off: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct Inode {
    cache: Vec<u8>,
    platter: Vec<u8>,
    /// Writes since the last sync, in order.
    pending: Vec<Write>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    /// What the running process sees.
    names: HashMap<PathBuf, u64>,
    /// What a power cut leaves (before replaying a prefix of `journal`).
    durable_names: HashMap<PathBuf, u64>,
    journal: Vec<DirOp>,
    next_ino: u64,
    /// Sync calls that will fail, counted down from the next one: the
    /// `n`th sync from now fails (1 = the next), 0 = none armed.
    fail_sync_in: u64,
    /// Every read fails with probability 1/read_fault_one_in (0: off).
    read_fault_one_in: u64,
    rng: Option<Rng>,
    pub syncs: u64,
    pub failed_syncs: u64,
}

/// The simulated disk; cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct SimDisk {
    st: Arc<Mutex<State>>,
}

struct SimFile {
    st: Arc<Mutex<State>>,
    ino: u64,
}

fn lock(st: &Mutex<State>) -> MutexGuard<'_, State> {
    st.lock().unwrap_or_else(|p| p.into_inner())
}

fn apply(buf: &mut Vec<u8>, w: &Write) {
    match w {
        Write::Data { off, data } => {
            let end = *off as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*off as usize..end].copy_from_slice(data);
        }
        Write::SetLen(n) => buf.resize(*n as usize, 0),
    }
}

impl SimDisk {
    pub fn new(seed: u64) -> SimDisk {
        let d = SimDisk::default();
        lock(&d.st).rng = Some(Rng::new(seed ^ 0x5151));
        d
    }

    /// Makes the `n`th sync from now fail (1 = the next one).
    pub fn fail_sync_in(&self, n: u64) {
        lock(&self.st).fail_sync_in = n;
    }

    /// Reads fail with probability `1/one_in` (0 turns it off).
    pub fn read_faults(&self, one_in: u64) {
        lock(&self.st).read_fault_one_in = one_in;
    }

    pub fn failed_syncs(&self) -> u64 {
        lock(&self.st).failed_syncs
    }

    /// Power cut: the page cache is gone. Each file keeps its platter plus
    /// a random prefix of its unsynced writes (the last one maybe torn);
    /// the directory keeps a random prefix of its unsynced operations.
    pub fn power_cut(&self, rng: &mut Rng) {
        let mut st = lock(&self.st);
        let journal = std::mem::take(&mut st.journal);
        let keep = rng.below(journal.len() as u64 + 1) as usize;
        for op in &journal[..keep] {
            match op {
                DirOp::Link(p, ino) => {
                    st.durable_names.insert(p.clone(), *ino);
                }
                DirOp::Unlink(p) => {
                    st.durable_names.remove(p);
                }
            }
        }
        st.names = st.durable_names.clone();
        let live: std::collections::HashSet<u64> = st.names.values().copied().collect();
        st.inodes.retain(|ino, _| live.contains(ino));
        // In inode order, so the same seed cuts the same way.
        let mut inos: Vec<u64> = st.inodes.keys().copied().collect();
        inos.sort();
        for ino in inos {
            let Some(inode) = st.inodes.get_mut(&ino) else { continue };
            let pending = std::mem::take(&mut inode.pending);
            let mut disk = inode.platter.clone();
            let n = rng.below(pending.len() as u64 + 1) as usize;
            for w in &pending[..n] {
                apply(&mut disk, w);
            }
            if let Some(Write::Data { off, data }) = pending.get(n) {
                // The write the power cut interrupted: a prefix of it made
                // it, and maybe the size without the rest of the data.
                let part = rng.below(data.len() as u64 + 1) as usize;
                apply(&mut disk, &Write::Data { off: *off, data: data[..part].to_vec() });
                if rng.one_in(2) {
                    let zeros = vec![0u8; data.len() - part];
                    apply(&mut disk, &Write::Data { off: *off + part as u64, data: zeros });
                }
            }
            inode.platter = disk.clone();
            inode.cache = disk;
        }
    }

    /// Flips one bit of a file on the platter and in the cache (bit rot).
    pub fn flip(&self, path: &Path, off: u64) -> bool {
        let mut st = lock(&self.st);
        let Some(&ino) = st.names.get(path) else { return false };
        let Some(i) = st.inodes.get_mut(&ino) else { return false };
        let o = off as usize;
        if o >= i.cache.len() {
            return false;
        }
        i.cache[o] ^= 0x10;
        if o < i.platter.len() {
            i.platter[o] ^= 0x10;
        }
        true
    }

    /// The file's current bytes (what a process would read).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = lock(&self.st);
        let ino = st.names.get(path)?;
        st.inodes.get(ino).map(|i| i.cache.clone())
    }

    /// Every file path, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        let st = lock(&self.st);
        let mut v: Vec<PathBuf> = st.names.keys().cloned().collect();
        v.sort();
        v
    }
}

impl DiskFile for SimFile {
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut st = lock(&self.st);
        let i = st.inodes.get_mut(&self.ino).ok_or_else(|| io::Error::other("stale handle"))?;
        let w = Write::Data { off, data: buf.to_vec() };
        apply(&mut i.cache, &w);
        i.pending.push(w);
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut st = lock(&self.st);
        let one_in = st.read_fault_one_in;
        if one_in > 0 {
            if let Some(rng) = st.rng.as_mut() {
                if rng.one_in(one_in) {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            }
        }
        let i = st.inodes.get(&self.ino).ok_or_else(|| io::Error::other("stale handle"))?;
        let o = off as usize;
        let src = i.cache.get(o..o + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = lock(&self.st);
        st.syncs += 1;
        let fail = match st.fail_sync_in {
            0 => false,
            1 => {
                st.fail_sync_in = 0;
                true
            }
            n => {
                st.fail_sync_in = n - 1;
                false
            }
        };
        if fail {
            st.failed_syncs += 1;
        }
        let i = st.inodes.get_mut(&self.ino).ok_or_else(|| io::Error::other("stale handle"))?;
        let pending = std::mem::take(&mut i.pending);
        if fail {
            // The pages it could not write are marked clean: the cache
            // still shows them, the platter will never get them.
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        for w in &pending {
            apply(&mut i.platter, w);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = lock(&self.st);
        let i = st.inodes.get_mut(&self.ino).ok_or_else(|| io::Error::other("stale handle"))?;
        let w = Write::SetLen(len);
        apply(&mut i.cache, &w);
        i.pending.push(w);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let st = lock(&self.st);
        let i = st.inodes.get(&self.ino).ok_or_else(|| io::Error::other("stale handle"))?;
        Ok(i.cache.len() as u64)
    }
}

impl Disk for SimDisk {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let mut st = lock(&self.st);
        if st.names.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        st.next_ino += 1;
        let ino = st.next_ino;
        st.inodes.insert(ino, Inode::default());
        st.names.insert(path.to_path_buf(), ino);
        st.journal.push(DirOp::Link(path.to_path_buf(), ino));
        Ok(Arc::new(SimFile { st: self.st.clone(), ino }))
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let st = lock(&self.st);
        let ino = *st.names.get(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(Arc::new(SimFile { st: self.st.clone(), ino }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = lock(&self.st);
        let mut out: Vec<String> = Vec::new();
        for p in st.names.keys() {
            // Files directly in `dir`, and subdirectories (a file's parent
            // chain) as names, like read_dir.
            if let Ok(rest) = p.strip_prefix(dir) {
                if let Some(first) = rest.components().next() {
                    let name = first.as_os_str().to_string_lossy().to_string();
                    if !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
        }
        Ok(out)
    }

    fn delete(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.st);
        st.names.remove(path).ok_or(io::ErrorKind::NotFound)?;
        st.journal.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = lock(&self.st);
        let ino = st.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        st.names.insert(to.to_path_buf(), ino);
        st.journal.push(DirOp::Unlink(from.to_path_buf()));
        st.journal.push(DirOp::Link(to.to_path_buf(), ino));
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut st = lock(&self.st);
        // One journal for the whole file system, as ext4 and xfs have.
        let journal = std::mem::take(&mut st.journal);
        for op in journal {
            match op {
                DirOp::Link(p, ino) => {
                    st.durable_names.insert(p, ino);
                }
                DirOp::Unlink(p) => {
                    st.durable_names.remove(&p);
                }
            }
        }
        Ok(())
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories exist implicitly (as prefixes of file paths).
        Ok(())
    }
}
