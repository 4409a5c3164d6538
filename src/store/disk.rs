//! The narrow file interface the log is written through: create, append, sync, read at, list, delete, rename, sync dir.
//!
//! [`RealDisk`] is the production backend (plain `std::fs`, positional
//! writes, `fdatasync`). Tests swap in `sim_disk::SimDisk`, which models
//! the page cache and the platter separately, so a power cut, a failed
//! fsync or a failed read can be injected at any point of a seeded run.
//! Everything the durable store and recovery do to files goes through this
//! trait; nothing else in `store/` touches `std::fs`.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// One open segment file.
// `len` is a fallible file-system query, not a collection size.
#[allow(clippy::len_without_is_empty)]
pub trait DiskFile: Send + Sync {
    /// Writes all of `buf` at `off` (into the page cache: not durable).
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Fills all of `buf` from `off`; an error if the file is shorter.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Makes every write so far durable (`fdatasync`). A failure means the
    /// writes since the last successful sync may be lost, even if a later
    /// sync succeeds (Linux may drop the dirty pages): the caller must not
    /// confirm anything it has not seen a sync succeed for *before* the
    /// failure.
    fn sync(&self) -> io::Result<()>;
    /// Cuts the file to `len` bytes (a failed append, a torn tail).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length.
    fn len(&self) -> io::Result<u64>;
}

/// A directory of segment files.
pub trait Disk: Send + Sync {
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>>;
    /// File names in `dir` (not paths), in no particular order; a missing
    /// directory lists as empty.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn delete(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, deletes, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

struct RealFile(std::fs::File);

impl DiskFile for RealFile {
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.0.write_all_at(buf, off)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, off)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Disk for RealDisk {
    fn create(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let f = std::fs::OpenOptions::new().create_new(true).read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn DiskFile>> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            if let Some(n) = e?.file_name().to_str() {
                out.push(n.to_string());
            }
        }
        Ok(out)
    }
    fn delete(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
}

/// The disk handle the store keeps: shared with its I/O thread.
pub type DiskRef = Arc<dyn Disk>;

/// The production disk.
pub fn real() -> DiskRef {
    Arc::new(RealDisk)
}
