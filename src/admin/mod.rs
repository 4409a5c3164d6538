//! The admin listener: HTTP/1.1 on `server.admin_listen`, its bearer token, and its own threads, apart from the worker cores.
//!
//! Why its own threads and not the worker runtimes: an admin request can
//! block (an fsync of a state file, a wait for every core to apply a group
//! change, a scrape reading `/proc`), and on a worker it would stall every
//! connection of that core for that long. Here, one accept thread and at
//! most `admin.max_connections` blocking connection threads (plain
//! `std::net`, read and write timeouts) serve the API; they reach the
//! cores only by posting an `AdminCmd` to a core's mailbox and waiting on
//! its reply channel (`runtime::core::admin`), exactly like another core
//! would. The listener is up before recovery starts, so `/healthz` and
//! `/readyz` (503 "recovering") answer during a long recovery.

mod api;
mod fleet;
pub mod state;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::Config;
use crate::http::{self, Parsed};
use crate::metrics::Metrics;
use crate::runtime::mesh::Mesh;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin token {path}: {message}")]
    Token { path: PathBuf, message: String },
    #[error("admin listener on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("admin listener: {addr} is already served by {holder}; {}", crate::runtime::port_advice(.holder, "server.admin_listen"))]
    AdminPortInUse { addr: String, holder: crate::net::listener::PortHolder },
    #[error("admin state: {0}")]
    State(#[from] state::StateError),
}

/// Where the admin token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Config,
    File(PathBuf),
    /// `<data_dir>/admin-token`, created now (`true`) or on an earlier start.
    DataDir(PathBuf, bool),
}

/// The token per ADMIN.md: `admin.token`, `admin.token_file`, or
/// `<data_dir>/admin-token` (created with mode 0600 on first start).
pub fn load_or_create_token(cfg: &Config) -> Result<(Vec<u8>, TokenSource), AdminError> {
    let err = |path: &Path, message: String| AdminError::Token { path: path.to_path_buf(), message };
    if let Some(t) = &cfg.admin.token {
        return Ok((t.trim().as_bytes().to_vec(), TokenSource::Config));
    }
    let check = |path: &Path, text: &str| -> Result<Vec<u8>, AdminError> {
        let t = text.trim();
        if t.len() < 16 {
            return Err(err(path, "token must be at least 16 bytes".into()));
        }
        Ok(t.as_bytes().to_vec())
    };
    if let Some(p) = &cfg.admin.token_file {
        let text = std::fs::read_to_string(p).map_err(|e| err(p, e.to_string()))?;
        return Ok((check(p, &text)?, TokenSource::File(p.clone())));
    }
    let dir = &cfg.store.data_dir;
    let path = dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((check(&path, &text)?, TokenSource::DataDir(path, false))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
            let mut raw = [0u8; 24];
            getrandom::getrandom(&mut raw).map_err(|e| err(&path, format!("no randomness: {e}")))?;
            let token = hex::encode(raw);
            crate::auth::write_private(&path, format!("{token}\n").as_bytes()).map_err(|e| err(&path, e.to_string()))?;
            Ok((token.into_bytes(), TokenSource::DataDir(path, true)))
        }
        Err(e) => Err(err(&path, e.to_string())),
    }
}

/// Everything the admin threads share.
pub struct Ctx {
    pub(crate) cfg: Config,
    token: Vec<u8>,
    /// Must exist for `/readyz` (when the token lives in the data directory).
    token_path: Option<PathBuf>,
    pub(crate) metrics: Arc<Metrics>,
    mesh: OnceLock<Mesh>,
    /// Fleet mode: groups, mutes, idempotency keys and presence live in the engine.
    fleet: OnceLock<Arc<crate::fleet::Fleet>>,
    pub(crate) state: Mutex<state::State>,
    next_core: AtomicUsize,
    active: AtomicUsize,
    publish_bucket: Mutex<Bucket>,
}

/// A token bucket for `admin.publishes_per_s`.
pub(crate) struct Bucket {
    rate_per_s: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl Bucket {
    fn new(rate_per_s: u32) -> Self {
        Bucket { rate_per_s: rate_per_s as f64, tokens: rate_per_s as f64, last: std::time::Instant::now() }
    }

    /// Takes one token; false when the rate is exceeded (0 = no limit).
    pub(crate) fn take(&mut self, now: std::time::Instant) -> bool {
        if self.rate_per_s == 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate_per_s).min(self.rate_per_s.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The running admin listener.
pub struct Admin {
    ctx: Arc<Ctx>,
    pub addr: SocketAddr,
}

impl Admin {
    /// Binds the listener and starts serving (health and metrics at once;
    /// `/v1` answers 503 until [`Admin::set_mesh`]).
    pub fn start(cfg: &Config, metrics: Arc<Metrics>, st: state::State) -> Result<Admin, AdminError> {
        let (token, source) = load_or_create_token(cfg)?;
        let token_path = match &source {
            TokenSource::DataDir(p, created) => {
                if *created {
                    tracing::info!(path = %p.display(), "generated an admin API token");
                    eprintln!("ringgate: admin API token created at {}", p.display());
                }
                Some(p.clone())
            }
            _ => None,
        };
        let addr = cfg.server.admin_listen.clone();
        let listener = TcpListener::bind(&addr).map_err(|source| match addr.parse::<std::net::SocketAddr>() {
            Ok(a) if source.kind() == std::io::ErrorKind::AddrInUse => {
                AdminError::AdminPortInUse { addr: addr.clone(), holder: crate::net::listener::PortHolder::of_port(a.port()) }
            }
            _ => AdminError::Bind { addr: addr.clone(), source },
        })?;
        let local = listener.local_addr().map_err(|source| AdminError::Bind { addr, source })?;
        let ctx = Arc::new(Ctx {
            cfg: cfg.clone(),
            token,
            token_path,
            metrics,
            mesh: OnceLock::new(),
            fleet: OnceLock::new(),
            state: Mutex::new(st),
            next_core: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            publish_bucket: Mutex::new(Bucket::new(cfg.admin.publishes_per_s)),
        });
        let c = ctx.clone();
        // Supervised: a panic in the accept loop is logged and the loop
        // starts again on the same listener (health checks and the API
        // must outlive a bug in one request path).
        std::thread::Builder::new()
            .name("ringgate-admin".into())
            .spawn(move || loop {
                let p = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| accept_loop(&c, &listener))) {
                    Ok(never) => match never {},
                    Err(p) => p,
                };
                tracing::error!(panic = %panic_text(&*p), "the admin accept loop panicked: restarting it");
                std::thread::sleep(Duration::from_millis(100));
            })
            .map_err(|source| AdminError::Bind { addr: local.to_string(), source })?;
        ctx.metrics.health.admin_up.store(true, Ordering::Relaxed);
        // The address once, in the message: tools and tests read `admin_addr=`.
        tracing::info!("admin API on admin_addr={local}");
        Ok(Admin { ctx, addr: local })
    }

    /// The workers run: `/v1` requests can reach them now.
    pub fn set_mesh(&self, mesh: Mesh) {
        let _ = self.ctx.mesh.set(mesh);
    }

    /// Fleet mode: from now on the admin state is the engine's.
    pub fn set_fleet(&self, fleet: Arc<crate::fleet::Fleet>) {
        let _ = self.ctx.fleet.set(fleet);
    }
}

impl Ctx {
    pub(crate) fn mesh(&self) -> Option<&Mesh> {
        self.mesh.get()
    }

    pub(crate) fn fleet(&self) -> Option<&Arc<crate::fleet::Fleet>> {
        self.fleet.get()
    }

    pub(crate) fn pick_core(&self, cores: usize) -> usize {
        self.next_core.fetch_add(1, Ordering::Relaxed) % cores.max(1)
    }

    /// Constant-time comparison of a presented bearer token.
    pub(crate) fn token_ok(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(presented.ct_eq(&self.token))
    }

    pub(crate) fn publish_allowed(&self) -> bool {
        self.publish_bucket.lock().unwrap_or_else(|e| e.into_inner()).take(std::time::Instant::now())
    }

    pub(crate) fn token_file_ok(&self) -> bool {
        self.token_path.as_ref().is_none_or(|p| p.exists())
    }
}

fn accept_loop(ctx: &Arc<Ctx>, listener: &TcpListener) -> std::convert::Infallible {
    let max = ctx.cfg.admin.max_connections;
    loop {
        // At the cap, leave further connections in the kernel's accept queue.
        while ctx.active.load(Ordering::Acquire) >= max {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let slot = ActiveSlot::take(ctx.clone());
        let spawned = std::thread::Builder::new().name("ringgate-adminc".into()).spawn(move || {
            let c = slot.0.clone();
            supervised(slot, || serve_conn(&c, stream));
        });
        if let Err(e) = spawned {
            // The closure (and the slot in it) was dropped: the count is back.
            tracing::warn!(error = %e, "cannot start an admin connection thread");
        }
    }
}

/// One of the `admin.max_connections` request threads, released when
/// dropped, so a request thread that panics gives its slot back (else a few
/// panics would stop the admin listener accepting for good).
struct ActiveSlot(Arc<Ctx>);

impl ActiveSlot {
    fn take(ctx: Arc<Ctx>) -> ActiveSlot {
        ctx.active.fetch_add(1, Ordering::AcqRel);
        ActiveSlot(ctx)
    }
}

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs one admin connection; a panic is logged (the connection closes, the
/// listener and the other requests go on) and the slot is released either way.
fn supervised<Slot>(slot: Slot, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        tracing::error!(panic = %panic_text(&*p), "an admin request panicked: its connection was closed");
    }
    drop(slot);
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "(no message)".into())
}

/// Idle keep-alive connections are closed after this.
const IDLE: Duration = Duration::from_secs(30);
/// A request must arrive whole within this from its first byte (a client
/// trickling bytes would otherwise hold one of the few admin threads).
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

fn serve_conn(ctx: &Ctx, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    let limits = http::Limits { max_body_bytes: ctx.cfg.admin.max_body_bytes, ..http::Limits::default() };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut sent_continue = false;
    let mut started: Option<std::time::Instant> = None;
    loop {
        match http::parse_request(&buf, &limits) {
            Ok(Parsed::Complete { request, consumed }) => {
                buf.drain(..consumed);
                sent_continue = false;
                started = None;
                let keep = request.keep_alive();
                let resp = api::handle(ctx, &request);
                let mut out = Vec::with_capacity(resp.body.len() + 256);
                resp.encode(keep, request.method == "HEAD", &mut out);
                if stream.write_all(&out).is_err() || !keep {
                    return;
                }
                continue;
            }
            Ok(Parsed::Incomplete { expect_continue }) => {
                if expect_continue && !sent_continue {
                    sent_continue = true;
                    if stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let resp = api::error_response(e.status(), &e.to_string());
                let mut out = Vec::new();
                resp.encode(false, false, &mut out);
                let _ = stream.write_all(&out);
                lingering_close(&mut stream);
                return;
            }
        }
        if started.is_some_and(|t| t.elapsed() > REQUEST_DEADLINE) {
            let mut out = Vec::new();
            api::error_response(408, "the request did not arrive in time").encode(false, false, &mut out);
            let _ = stream.write_all(&out);
            lingering_close(&mut stream);
            return;
        }
        let left = started.map_or(IDLE, |t| REQUEST_DEADLINE.saturating_sub(t.elapsed()).max(Duration::from_millis(10)));
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                started.get_or_insert_with(std::time::Instant::now);
                buf.extend_from_slice(&chunk[..n]);
            }
            // The deadline check above answers 408 for a started request.
            Err(e) if started.is_some() && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Closes after an error answer without losing it: closing a socket with
/// unread input sends an RST, which makes the peer drop our answer. So
/// send FIN first, then read and discard for a short while (as HTTP
/// servers' "lingering close" does).
fn lingering_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    while std::time::Instant::now() < until {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bucket;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    struct Slot(Arc<AtomicUsize>);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }

    #[test]
    fn a_panicking_admin_request_is_contained_and_gives_its_slot_back() {
        let active = Arc::new(AtomicUsize::new(2));
        super::supervised(Slot(active.clone()), || panic!("injected admin panic"));
        assert_eq!(active.load(Ordering::Acquire), 1, "the panicking request's slot was not released");
        super::supervised(Slot(active.clone()), || {});
        assert_eq!(active.load(Ordering::Acquire), 0);
    }

    #[test]
    fn bucket_allows_the_rate_with_a_one_second_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3);
        b.last = t0;
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(340)));
        assert!(!b.take(t0 + Duration::from_millis(340)));
        // Idle for long: still only one second's worth.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
        let mut free = Bucket::new(0);
        assert!((0..1000).all(|_| free.take(t0)));
    }
}
