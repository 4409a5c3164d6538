//! The per-core I/O (syncer) thread: group-committed fsyncs in submission order, and the next segment created ahead of need, so the core's event loop never waits for either.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::disk::DiskRef;
use super::StoreError;
use super::durable::FileRef;
use super::log;

/// One sync the store asked for: which file, and a ticket that comes back
/// with the result (tickets grow; a result covers every ticket up to it).
pub(super) type SyncJob = (FileRef, u64);

/// Work for the per-core I/O (syncer) thread.
pub(super) enum Job {
    Sync(SyncJob),
    /// Create the next segment ahead of need (file, header, fsyncs of both
    /// and of the directory), so rotation never waits for it.
    Create { path: PathBuf, dir: PathBuf, slot: SpareSlot },
    /// Unlink a segment retention emptied (its sync already completed).
    Delete(PathBuf),
}

/// A segment created ahead by the I/O thread: `None` while in the making.
pub(super) type SpareSlot = Arc<Mutex<Option<std::io::Result<(PathBuf, FileRef)>>>>;

/// Sends work to this core's syncer thread.
pub(super) struct Syncer {
    pub(super) tx: std::sync::mpsc::Sender<Job>,
}

/// Runs a batch of sync jobs in submission order: everything queued shares
/// one round (group commit); a file named twice is synced once. The result
/// is the highest ticket, or the first error.
pub(super) fn run_batch(batch: &[SyncJob]) -> Result<u64, StoreError> {
    let mut upto = 0;
    let mut result = Ok(());
    let mut done_files: Vec<*const ()> = Vec::new();
    for (f, ticket) in batch {
        upto = upto.max(*ticket);
        let p = Arc::as_ptr(f) as *const ();
        if done_files.contains(&p) {
            continue;
        }
        done_files.push(p);
        if let Err(e) = f.sync() {
            if result.is_ok() {
                result = Err(StoreError::io("fsync", e));
            }
        }
    }
    result.map(|_| upto)
}

/// Creates a segment file with its magic and makes it and its directory
/// entry durable.
pub(super) fn create_segment(disk: &dyn super::disk::Disk, path: &Path, dir: &Path) -> std::io::Result<FileRef> {
    let f = disk.create(path)?;
    f.write_at(log::MAGIC, 0)?;
    f.sync()?;
    disk.sync_dir(dir)?;
    Ok(f)
}

/// `run_batch`, its duration recorded in `ringgate_fsync_seconds`.
fn timed_batch(core: usize, batch: &[SyncJob]) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    let r = run_batch(batch);
    crate::metrics::record_fsync(core, started.elapsed());
    r
}

impl Syncer {
    /// `done(ticket)` is called on the syncer thread after each batch.
    pub(super) fn spawn(core: usize, disk: DiskRef, done: Box<dyn Fn(Result<u64, StoreError>) + Send>) -> Syncer {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name(format!("ringgate-sync{core}")).spawn(move || {
            // Supervised: a panic here is a store failure, reported the way
            // a failed fsync is (the core fails the log and the process
            // drains). Unnoticed, SENDs under `fsync = always` would wait
            // for their sync forever.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sync_loop(core, &*disk, &rx, &*done)));
            if let Err(p) = run {
                let why = StoreError::Thread { thread: "syncer", what: format!("panicked: {}", panic_text(&p)) };
                tracing::error!(core, "{why}");
                done(Err(why));
            }
        });
        if let Err(e) = spawned {
            // No thread: every sync would wait forever. Nothing is confirmed
            // with the failure reported from the first sync request's side.
            tracing::error!(core, error = %e, "cannot start the syncer thread");
        }
        Syncer { tx }
    }
}

/// What a panic carried, as text.
pub(super) fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "(no message)".into())
}

/// The syncer thread's loop, until the store drops its sender.
fn sync_loop(core: usize, disk: &dyn super::disk::Disk, rx: &std::sync::mpsc::Receiver<Job>, done: &(dyn Fn(Result<u64, StoreError>) + Send)) {
    {
        {
            let mut batch: Vec<SyncJob> = Vec::new();
            while let Ok(first) = rx.recv() {
                let mut jobs = vec![first];
                while let Ok(more) = rx.try_recv() {
                    jobs.push(more);
                }
                for job in jobs {
                    match job {
                        Job::Sync(j) => batch.push(j),
                        Job::Delete(path) => match disk.delete(&path) {
                            Ok(()) => tracing::info!(path = %path.display(), "retention: deleted a log segment with no retained messages"),
                            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot delete an expired log segment"),
                        },
                        Job::Create { path, dir, slot } => {
                            // Syncs queued before it complete first (order).
                            if !batch.is_empty() {
                                done(timed_batch(core, &batch));
                                batch.clear();
                            }
                            let made = create_segment(disk, &path, &dir)
                                .map(|f| (path.clone(), f));
                            if let Ok(mut s) = slot.lock() {
                                *s = Some(made);
                            }
                        }
                    }
                }
                if !batch.is_empty() {
                    done(timed_batch(core, &batch));
                    batch.clear();
                }
            }
        }
    }
}

/// Where sync jobs run.
pub(super) enum IoExec {
    /// On the calling thread, at once (recovery, tools).
    Inline,
    /// Queued until the owner calls [`DurableStore::run_io`] (the
    /// simulation drives completion order and power cuts between).
    Deferred(VecDeque<SyncJob>),
    /// On the per-core syncer thread; results come back as messages.
    Thread(Syncer),
}


/// Payloads to read back from the log: (cache key, file, length).
pub(super) struct ReadJob {
    pub(super) items: Vec<(super::cache::PayloadKey, FileRef, u32)>,
}

/// What a [`ReadJob`] read: each payload or why it could not be read.
pub(super) struct ReadDone {
    pub(super) items: Vec<(super::cache::PayloadKey, Result<bytes::Bytes, String>)>,
}

/// The per-core reader thread: cold payloads are read with `pread` here,
/// never on the event loop. A thread of its own, so a replay never waits
/// behind an fsync and an fsync never behind a replay.
pub(super) struct Reader {
    pub(super) tx: std::sync::mpsc::Sender<ReadJob>,
    pub(super) rx: std::sync::mpsc::Receiver<ReadDone>,
}

impl Reader {
    /// `nudge()` is called on the reader thread after each job: the core
    /// then collects the result with `try_recv` (see `DurableStore::poll_io`).
    pub(super) fn spawn(core: usize, nudge: Box<dyn Fn() + Send>) -> Reader {
        // Unbounded channels, bounded work: a payload is in at most one job
        // (`DurableStore::reading` dedups keys), a job is at most 64 entries
        // or 4 MiB, and a job is sent only for a session whose fill missed:
        // the queue is bounded by the sessions waiting for payloads.
        let (tx, jobs) = std::sync::mpsc::channel::<ReadJob>();
        let (done_tx, rx) = std::sync::mpsc::channel::<ReadDone>();
        let spawned = std::thread::Builder::new().name(format!("ringgate-read{core}")).spawn(move || {
            // Supervised: when the loop panics, the result channel closes
            // and the nudge makes the core look: the store sees the reader
            // gone and fails like on an fsync error (sessions waiting for
            // cold payloads would otherwise wait forever).
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_loop(&jobs, &done_tx, &*nudge)));
            if let Err(p) = run {
                tracing::error!(core, "the reader thread panicked: {}", panic_text(&p));
                drop(done_tx);
                nudge();
            }
        });
        if let Err(e) = spawned {
            // Dropping the closure dropped the result sender: the store
            // finds the reader gone at its first poll.
            tracing::error!(core, error = %e, "cannot start the reader thread");
        }
        Reader { tx, rx }
    }
}

/// The reader thread's loop, until the store drops its sender.
fn read_loop(jobs: &std::sync::mpsc::Receiver<ReadJob>, done_tx: &std::sync::mpsc::Sender<ReadDone>, nudge: &(dyn Fn() + Send)) {
    {
        {
            while let Ok(job) = jobs.recv() {
                let items = job
                    .items
                    .into_iter()
                    .map(|(key, f, len)| {
                        let mut buf = vec![0u8; len as usize];
                        let r = f.read_at(&mut buf, key.1).map(|_| bytes::Bytes::from(buf)).map_err(|e| e.to_string());
                        (key, r)
                    })
                    .collect();
                if done_tx.send(ReadDone { items }).is_err() {
                    break;
                }
                nudge();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::disk::DiskFile;

    /// A simulated file whose sync and read panic (a bug in a disk backend,
    /// or in our code below the syncer loop).
    struct PanickingFile;

    impl DiskFile for PanickingFile {
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
            panic!("injected read panic")
        }
        fn sync(&self) -> io::Result<()> {
            panic!("injected sync panic")
        }
        fn set_len(&self, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(0)
        }
    }

    /// A syncer thread that panics reports it as a failed sync (the store
    /// then fails and the process drains, as on an fsync error) instead of
    /// leaving every SEND waiting for its sync.
    #[test]
    fn syncer_panic_is_reported_as_a_failed_sync() {
        let (tx, rx) = mpsc::channel();
        let disk: DiskRef = Arc::new(crate::store::sim_disk::SimDisk::new(1));
        let s = Syncer::spawn(0, disk, Box::new(move |r| tx.send(r).unwrap()));
        s.tx.send(Job::Sync((Arc::new(PanickingFile), 1))).unwrap();
        let r = rx.recv_timeout(Duration::from_secs(10)).expect("no result from the syncer");
        assert!(matches!(&r, Err(e) if e.to_string().contains("panicked") && e.to_string().contains("injected sync panic")), "{r:?}");
    }

    /// A reader thread that panics closes its result channel and nudges the
    /// core, which finds it gone (`DurableStore::poll_io` fails the store).
    #[test]
    fn reader_panic_closes_its_channel_and_nudges() {
        let (ntx, nrx) = mpsc::channel();
        let r = Reader::spawn(0, Box::new(move || ntx.send(()).unwrap()));
        r.tx.send(ReadJob { items: vec![((1, 0), Arc::new(PanickingFile), 4)] }).unwrap();
        nrx.recv_timeout(Duration::from_secs(10)).expect("no nudge after the panic");
        assert!(matches!(r.rx.recv_timeout(Duration::from_secs(10)), Err(mpsc::RecvTimeoutError::Disconnected)));
    }
}
