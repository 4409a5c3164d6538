//! A running gateway as a value: [`Server::start`] runs `serve` on a thread of this process and publishes its lifecycle phases — starting, listening (with the bound addresses), draining, stopped (with the result) — so that callers wait on them instead of scraping a log line.
//!
//! The binary keeps calling `serve` on its main thread (signals end it);
//! in-process users (tests, embedders) hold a `Server` and end it with
//! [`Server::shutdown`], which starts the same graceful drain as SIGTERM.
//! pingora's `Server` is the model: phases a test can observe.

use std::net::SocketAddr;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Config;

/// Where a listening server can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The gateway port (every worker's SO_REUSEPORT listener).
    pub gateway: SocketAddr,
    /// The admin listener (health, metrics, API).
    pub admin: SocketAddr,
}

/// A server's lifecycle, in order; a start-up that fails goes from
/// `Starting` straight to `Stopped(Err)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Reading the config, recovering the log, binding.
    Starting,
    /// Every worker runs and the gateway accepts.
    Listening(Bound),
    /// A shutdown began: listeners closed, DISCONNECT(7) to every
    /// connection, the grace period runs.
    Draining,
    /// `serve` returned: `Ok` after a graceful shutdown, else why not
    /// (a start-up refusal, a store failure).
    Stopped(Result<(), String>),
}

/// The phase cell `serve` writes and [`Server`] reads.
#[derive(Debug)]
pub struct Phases {
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Default for Phases {
    fn default() -> Self {
        Phases { phase: Mutex::new(Phase::Starting), changed: Condvar::new() }
    }
}

impl Phases {
    pub(crate) fn set(&self, p: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
        self.changed.notify_all();
    }

    pub fn get(&self) -> Phase {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `done` holds for the phase, at most `timeout`; the last
    /// phase seen either way.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&Phase) -> bool) -> Result<Phase, Phase> {
        let deadline = Instant::now() + timeout;
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if done(&p) {
                return Ok(p.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(p.clone());
            }
            p = self.changed.wait_timeout(p, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// A gateway running on a thread of this process.
///
/// One per process: the metrics registry, the TLS key-update setting and
/// the store's failure flag are process-wide, as they are in the binary.
pub struct Server {
    phases: Arc<Phases>,
    thread: Option<JoinHandle<()>>,
    shutdown_sent: Mutex<bool>,
}

impl Server {
    /// Starts `serve(cfg)` on its own thread; returns at once (phase `Starting`).
    pub fn start(cfg: Config) -> Server {
        let phases = Arc::new(Phases::default());
        let p = phases.clone();
        let thread = std::thread::Builder::new()
            .name("ringgate-serve".into())
            .spawn(move || {
                let r = super::serve_observed(cfg, Some(&p));
                p.set(Phase::Stopped(r.map_err(|e| e.to_string())));
            })
            .expect("spawn the serve thread");
        Server { phases, thread: Some(thread), shutdown_sent: Mutex::new(false) }
    }

    pub fn phase(&self) -> Phase {
        self.phases.get()
    }

    /// Waits for `Listening` (its addresses), or says why it did not come:
    /// the start-up error, or the phase still current at the timeout.
    pub fn wait_listening(&self, timeout: Duration) -> Result<Bound, String> {
        match self.phases.wait_until(timeout, |p| !matches!(p, Phase::Starting)) {
            Ok(Phase::Listening(b)) => Ok(b),
            Ok(Phase::Stopped(Err(e))) => Err(format!("the server did not start: {e}")),
            Ok(p) => Err(format!("the server is {p:?}, not listening")),
            Err(p) => Err(format!("the server is still {p:?} after {timeout:?}")),
        }
    }

    /// Waits for `Stopped`; None at the timeout.
    pub fn wait_stopped(&self, timeout: Duration) -> Option<Result<(), String>> {
        match self.phases.wait_until(timeout, |p| matches!(p, Phase::Stopped(_))) {
            Ok(Phase::Stopped(r)) => Some(r),
            _ => None,
        }
    }

    /// Starts the graceful drain, as SIGTERM does for the binary: the
    /// signal goes to the serving thread alone, which waits for it with
    /// every signal blocked (so it never reaches the rest of the process).
    /// Only once `Listening`: before that the serving thread has not
    /// blocked the signal yet, and a start-up is not drained. Once.
    pub fn shutdown(&self) {
        if !matches!(self.phases.get(), Phase::Listening(_)) {
            return;
        }
        let mut sent = self.shutdown_sent.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::replace(&mut *sent, true) {
            return;
        }
        if let Some(t) = &self.thread {
            // SAFETY: the thread is alive (its JoinHandle is held and it has
            // not returned: the phase is still Listening), and SIGTERM is
            // blocked in it, so delivery only makes its `sigwait` return.
            unsafe { libc::pthread_kill(t.as_pthread_t(), libc::SIGTERM) };
        }
    }
}

impl Drop for Server {
    /// A server dropped while listening is drained and joined, so its
    /// port and data directory are free when the owner goes on.
    fn drop(&mut self) {
        self.shutdown();
        if matches!(self.phases.get(), Phase::Draining) || *self.shutdown_sent.lock().unwrap_or_else(|e| e.into_inner()) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}
