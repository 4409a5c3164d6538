//! Thread-per-core runtime: one monoio runtime per worker thread (io_uring, or the legacy epoll driver), its listener, its tasks, and process lifecycle.
//!
//! Each worker thread is pinned to a core and runs one monoio runtime with
//! its own SO_REUSEPORT listener on the shared address, its own [`Core`]
//! (connections, inboxes, timer wheel) and five kinds of task:
//!
//! - the accept loop, which registers each new socket and spawns its task;
//! - one small task per connection, which waits for socket *readiness* (no
//!   buffer pinned, see `conn.rs`) or a wake-up from the core, then lets the
//!   core read, handle frames and write;
//! - the mailbox task, which receives messages from other cores (`mesh.rs`);
//! - the ticker, which advances the core's timer wheel every `TICK_MS`;
//! - the flusher, which writes each connection made dirty in a loop turn
//!   once, at the end of the turn (`core/flush.rs`).
//!
//! Cores share nothing mutable; see `core.rs` for how users are homed.
//! Panics: monoio does not catch panics in tasks, and one escaping a task
//! would take down the whole core. Each connection task is wrapped in
//! `catch_unwind`, so a bug reachable from one connection costs only that
//! connection (counted and logged). Nothing a peer sends is meant to reach a
//! panic in the first place.

pub mod conn;
pub mod core;
pub mod framing;
pub mod ledger;
pub mod gate_http;
pub mod mesh;
pub mod peer_log;
pub mod reload;
pub mod server;
pub mod tls_record;
pub mod transport;
mod worker;
pub mod web;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt;
use monoio::net::{TcpListener, TcpStream};

use self::core::{AcceptError, ConnKey, Core, Outcome, Shared, TICK_MS};
use self::mesh::{CoreMsg, Mailbox};
use crate::config::{Config, Driver};
use crate::store::memory::MemoryStore;
use crate::store::recovery::DedupSeed;
use crate::store::InboxStore;

/// Which io driver a worker actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    Uring,
    Legacy,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Uring => "io_uring",
            DriverKind::Legacy => "legacy (epoll)",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("auth secret: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("listener: {0}")]
    Listen(#[from] crate::net::listener::ListenError),
    #[error("io_uring was requested (--driver uring) but is not available on this kernel or is disabled (kernel.io_uring_disabled); use --driver legacy")]
    UringUnavailable,
    #[error("failed to start worker {0}: {1}")]
    Worker(usize, std::io::Error),
    #[error("durable log: {0}")]
    Log(#[from] crate::store::log::LogError),
    #[error("durable log failed ({0}); stopped so that recovery reads what is really on disk")]
    StoreFailed(String),
    #[error("data directory {path} is in use by another ringgate process{holder}; stop it or use another store.data_dir")]
    Locked { path: std::path::PathBuf, holder: String },
    #[error("data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("admin API: {0}")]
    Admin(#[from] crate::admin::AdminError),
    #[error("{addr} is already served by {holder}; {}", port_advice(.holder, "server.listen"))]
    PortInUse { addr: std::net::SocketAddr, holder: crate::net::listener::PortHolder },
    #[error("route endpoint: {0}")]
    Route(#[from] crate::route::RouteError),
    #[error("{0}")]
    Reload(#[from] reload::ReloadError),
}

/// What to do about a port another process holds, only what applies: a
/// second ringgate may share it on purpose (`allow_shared_port`, the
/// zero-downtime restart); any other program may not.
pub fn port_advice(holder: &crate::net::listener::PortHolder, key: &str) -> String {
    let shared = key == "server.listen" && holder.is_ringgate();
    let mut a = format!("{}, or set {key} to another address", holder.stop_hint());
    if shared {
        a.push_str(", or set server.allow_shared_port = true for a zero-downtime restart (the kernel then splits new connections between both)");
    }
    a
}

/// Takes an exclusive `flock` on `<data_dir>/LOCK` for the life of the
/// process (the kernel drops it when the process dies, even by SIGKILL, so
/// a crash never leaves a stale lock). The file holds the owner's pid.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServeError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|source| ServeError::DataDir { path: dir.to_path_buf(), source })?;
    let path = dir.join("LOCK");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| ServeError::DataDir { path: path.clone(), source })?;
    // SAFETY: flock on a valid fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        let holder = match pid.trim() {
            "" => String::new(),
            p => format!(" (pid {p})"),
        };
        return Err(ServeError::Locked { path: dir.to_path_buf(), holder });
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

/// A one-shot event on one core (stop accepting); one waiter, the accept loop.
#[derive(Default)]
struct Flag {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Flag {
    fn raise(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
    async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Picks the driver: the configured one, or io_uring when the kernel offers it.
pub fn choose_driver(wanted: Driver) -> Result<DriverKind, ServeError> {
    let uring = monoio::utils::detect_uring();
    match wanted {
        Driver::Uring if !uring => Err(ServeError::UringUnavailable),
        Driver::Uring => Ok(DriverKind::Uring),
        Driver::Legacy => Ok(DriverKind::Legacy),
        Driver::Auto if uring => Ok(DriverKind::Uring),
        Driver::Auto => {
            tracing::warn!("io_uring is not available (old kernel or kernel.io_uring_disabled); falling back to the legacy epoll driver");
            Ok(DriverKind::Legacy)
        }
    }
}

/// Runs the gateway until SIGTERM/SIGINT. Returns after a graceful shutdown.
/// In-process users start it through [`server::Server`] instead, which
/// reports its phases.
pub fn serve(cfg: Config) -> Result<(), ServeError> {
    serve_observed(cfg, None)
}

/// `serve`, publishing `Listening` and `Draining` to `phases` (the caller
/// publishes `Stopped` with the result).
fn serve_observed(cfg: Config, phases: Option<&server::Phases>) -> Result<(), ServeError> {
    cfg.validate()?;
    // SIGHUP (reload) is blocked before any thread starts, so every thread
    // inherits the mask and only the main thread's `sigwait` takes it: its
    // default action would end the process. SIGTERM and SIGINT are
    // blocked later, so they still end a start-up (log recovery) at once.
    block_hup();
    let workers = cfg.resolved_workers();
    let driver = choose_driver(cfg.server.driver)?;

    let (soft, hard) = crate::net::listener::nofile_limit();
    let raised = crate::net::listener::raise_nofile_soft_limit();
    tracing::info!(
        soft_before = soft,
        soft = raised,
        hard,
        "open files limit: at most ~{} connections in this process",
        raised.saturating_sub(crate::net::listener::server_fd_reserve(workers as u64))
    );

    let data_dir = cfg.store.data_dir.clone();
    let (secret, source) = crate::auth::load_or_create_secret(&cfg.auth, &data_dir)?;
    if let crate::auth::SecretSource::Generated(path) = &source {
        tracing::info!(path = %path.display(), "generated a random JWT secret");
        eprintln!(
            "ringgate: JWT secret created at {}\nringgate: mint a token with: ringgate token --user alice{}",
            path.display(),
            config_hint()
        );
    }
    if cfg.tls.enabled {
        crate::runtime::tls_record::set_key_update_after(cfg.tls.key_update_after_records);
        // Fail fast on a bad certificate, before a long log recovery; the
        // config the cores use is built by the reloader below (same code
        // as every reload).
        crate::tls::build_server_config(&cfg.tls, &data_dir)?;
    } else {
        tracing::warn!("TLS is disabled: serving plain TCP");
    }

    let durable_mode = cfg.store.durability == crate::config::Durability::Durable;
    let _lock = if durable_mode { Some(lock_data_dir(&data_dir)?) } else { None };

    // The admin listener comes up first, so health checks answer (readyz
    // 503 "recovering") while the log is read back.
    let metrics = Arc::new(crate::metrics::Metrics::new(if cfg.tls.enabled { "tls" } else { "tcp" }));
    metrics.set_cores(workers);
    metrics.install_global();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let admin_state = crate::admin::state::State::load(
        &data_dir,
        &cfg.groups,
        durable_mode,
        cfg.admin.idempotency_ttl_s.saturating_mul(1000),
        cfg.admin.idempotency_max_keys,
        now_ms,
    )
    .map_err(crate::admin::AdminError::from)?;
    // Groups and mutes: the saved state (the config's `[groups]` only seeded it).
    let mut groups = HashMap::new();
    for (name, members) in &admin_state.groups {
        groups.insert(name.clone(), members.iter().map(|m| Arc::from(m.as_str())).collect::<Vec<Arc<str>>>());
    }
    let mutes: HashMap<Arc<str>, u64> =
        admin_state.mutes.iter().filter(|(_, t)| **t > now_ms).map(|(u, t)| (Arc::from(u.as_str()), *t)).collect();
    let admin = crate::admin::Admin::start(&cfg, metrics.clone(), admin_state)?;
    if let Some(ms) = std::env::var("RINGGATE_TEST_HOLD_RECOVERY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        // Test hook: stretch the recovery window so a test can watch /readyz say 503.
        std::thread::sleep(Duration::from_millis(ms.min(60_000)));
    }

    // Inboxes: the durable log (recovered now, before any gateway listener
    // opens) or memory.
    let fleet_cfg = cfg.fleet().cloned();
    let mut durable = None;
    if durable_mode && fleet_cfg.is_none() {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let rec = crate::store::recovery::recover(&crate::store::recovery::RecoverOpts {
            data_dir: &data_dir,
            workers,
            settings: crate::store::durable::LogSettings {
                policy: cfg.store.fsync,
                fsync_interval_ms: cfg.store.fsync_interval_ms,
                segment_max_bytes: cfg.store.segment_max_bytes,
                retention: retention(&cfg),
            },
            dedup_per_device: cfg.session.dedup_per_device,
            groups: &groups,
            now_ms,
        })?;
        let r = &rec.report;
        tracing::info!(
            segments = r.segments,
            records = r.records,
            bytes = r.bytes,
            users = r.users,
            retained = r.retained,
            torn_tails = r.torn.len(),
            segments_deleted = r.segments_deleted,
            fanouts_completed = r.fanouts_completed.len(),
            elapsed_ms = r.elapsed_ms,
            fsync = ?cfg.store.fsync,
            "recovered the durable log"
        );
        durable = Some(rec);
    }

    let addr: std::net::SocketAddr = cfg.server.listen.parse().map_err(|_| {
        crate::config::ConfigError::Invalid(format!("server.listen {:?} is not an address", cfg.server.listen))
    })?;
    // Refused before anything binds: a test-only switch must never turn a
    // public gateway into an echo server.
    let ws_mode = web::ws::mode_from_env(std::env::var(web::ws::TEST_ECHO_ENV).ok().as_deref(), addr.ip())
        .map_err(crate::config::ConfigError::Invalid)?;
    if ws_mode == web::ws::Mode::Echo {
        tracing::warn!("{}=1: /v1/ws is a WebSocket echo server (test only, for the Autobahn conformance run)", web::ws::TEST_ECHO_ENV);
    }
    if !cfg.server.allow_shared_port && addr.port() != 0 {
        if let Some(holder) = crate::net::listener::port_holder(addr) {
            return Err(ServeError::PortInUse { addr, holder });
        }
    }
    // The route signing key: printed and written before the listener accepts.
    let route_key = crate::route::load_or_create_key(&cfg.route, &data_dir)?;
    let pub_path = crate::route::write_public(&route_key, &data_dir)?;
    tracing::info!(path = %route_key.path.display(), created = route_key.created, key_id = %route_key.key_id(), "route signing key");
    eprintln!(
        "ringgate: route public key {} (key_id {}), written to {}",
        route_key.public_hex(),
        route_key.key_id(),
        pub_path.display()
    );
    let listeners =
        crate::net::listener::bind_group(addr, workers, cfg.server.backlog, cfg.server.defer_accept_s)?;
    let local = listeners[0].local_addr().map_err(|e| ServeError::Worker(0, e))?;
    let mesh: mesh::Mesh =
        (0..workers).map(|_| Mailbox::with_capacity(cfg.limits.mailbox_capacity as usize)).collect::<Vec<_>>().into();
    // Keep a margin below the fd limit so the shedding starts before
    // accept(2) fails with EMFILE (`limits.max_connections = 0`).
    let fd_max_connections =
        raised.saturating_sub(crate::net::listener::server_fd_reserve(workers as u64)).saturating_sub(32).max(1);
    let fleet = match &fleet_cfg {
        Some(f) => Some(start_fleet(&cfg, f, local, mesh.clone(), &metrics)?),
        None => None,
    };
    if let Some(f) = &fleet {
        // Groups, mutes, idempotency keys and presence are the engine's (FLEET.md point 7).
        admin.set_fleet(f.clone());
    }
    let max_connections = match cfg.limits.max_connections {
        0 => fd_max_connections,
        n => n,
    };
    tracing::info!(max_connections, max_preauth_per_ip = cfg.limits.max_preauth_per_ip, "admission limits");
    let mut reloader = reload::Reloader::start(reload::Start {
        path: CONFIG_PATH.get().cloned(),
        cfg: cfg.clone(),
        overrides: cli_overrides(),
        fd_max_connections,
        listen: local,
        secret,
        route: {
            let route =
                crate::route::RouteService::new(cfg.route.clone(), route_key, local, cfg.tls.enabled, core::Clock::new().mono_ms());
            match &fleet {
                Some(f) => route.with_fleet(f.clone()),
                None => route,
            }
        },
        ws_mode,
        fleet: fleet.clone(),
    })?;
    let Some(live) = reloader.current() else { unreachable!("Reloader::start builds the first snapshot") };
    metrics.config_last_reload_ms.store(core::Clock::new().wall_ms(), std::sync::atomic::Ordering::Relaxed);
    let shared = Arc::new(Shared {
        limits: session_limits(&cfg),
        live,
        groups,
        mesh: mesh.clone(),
        dedup_per_device: cfg.session.dedup_per_device,
        dedup_pack_after_ms: cfg.session.dedup_pack_after_ms,
        sockopts: crate::net::sockopt::SockOpts::from_config(&cfg.server),
        clock: core::Clock::new(),
        open_conns: std::sync::atomic::AtomicU64::new(0),
        metrics: metrics.clone(),
        ledger: ledger::LedgerLimits {
            retention_ms: cfg.admin.ledger_retention_s.saturating_mul(1000),
            max_entries: cfg.admin.ledger_max_entries,
        },
        mutes,
        fleet: fleet.clone(),
    });
    metrics.health.recovering.store(false, std::sync::atomic::Ordering::Relaxed);

    block_signals();
    let grace = Duration::from_millis(cfg.server.shutdown_grace_ms);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut handles = Vec::new();
    let (stores, seeds): (Vec<Box<dyn InboxStore + Send>>, Vec<Vec<DedupSeed>>) = match durable {
        // Fleet mode: the engine holds the inboxes; each core mirrors its online users'.
        _ if fleet.is_some() => (
            (0..workers)
                .map(|_| Box::new(crate::fleet::mirror::FleetStore::new(cfg.store.inbox_max_messages)) as Box<dyn InboxStore + Send>)
                .collect(),
            (0..workers).map(|_| Vec::new()).collect(),
        ),
        Some(rec) => {
            let mut stores: Vec<Box<dyn InboxStore + Send>> = Vec::new();
            let budget = memory_budget(&cfg);
            tracing::info!(memory_budget_bytes = budget, per_core = budget / workers as u64, "durable store budget for payloads held in RAM (older ones are read back from the log)");
            for (id, mut st) in rec.stores.into_iter().enumerate() {
                let mesh = mesh.clone();
                st.set_payload_budget(budget / workers as u64);
                let nudge = mesh.clone();
                st.start_reader(Box::new(move || nudge[id].post(CoreMsg::StoreIo)));
                st.start_syncer(Box::new(move |r| mesh[id].post(CoreMsg::Synced(r))));
                // Readiness learns of the failure from the health flag the
                // runtime sets (metrics does not reach into the store).
                let m = metrics.clone();
                st.on_failure(Box::new(move |why| {
                    m.health.storage_failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    on_store_failure(why)
                }));
                stores.push(Box::new(st));
            }
            (stores, rec.dedup)
        }
        None => (
            {
                let budget = memory_budget(&cfg);
                tracing::info!(memory_budget_bytes = budget, per_core = budget / workers as u64, "memory store budget for retained messages");
                (0..workers)
                    .map(|_| Box::new(MemoryStore::with_budget(retention(&cfg), budget / workers as u64)) as Box<dyn InboxStore + Send>)
                    .collect()
            },
            (0..workers).map(|_| Vec::new()).collect(),
        ),
    };
    for (id, (listener, (store, seed))) in listeners.into_iter().zip(stores.into_iter().zip(seeds)).enumerate() {
        let shared = shared.clone();
        let pin = cfg.server.pin_workers;
        let h = std::thread::Builder::new()
            .name(format!("ringgate-w{id}"))
            .spawn(move || {
                if pin {
                    if let Err(e) = pin_to_cpu(id % cpus) {
                        tracing::warn!(worker = id, error = %e, "could not pin worker to its core");
                    }
                }
                worker::run_worker(id, driver, shared, listener, grace, store, seed)
            })
            .map_err(|e| ServeError::Worker(id, e))?;
        handles.push(h);
    }
    admin.set_mesh(mesh.clone());
    metrics.health.gateway_up.store(true, std::sync::atomic::Ordering::Relaxed);
    // The address once, in the message: tools and tests read `listening addr=`.
    tracing::info!("listening addr={local} tls={} workers={workers} driver={}", cfg.tls.enabled, driver.name());
    if let Some(p) = phases {
        p.set(server::Phase::Listening(server::Bound { gateway: local, admin: admin.addr }));
    }

    // The main thread only waits for signals: SIGHUP reloads, SIGTERM and
    // SIGINT shut down.
    while wait_for_signal() == libc::SIGHUP {
        tracing::info!("SIGHUP: reloading the configuration");
        reloader.reload(&mesh, &metrics);
    }
    metrics.health.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(p) = phases {
        p.set(server::Phase::Draining);
    }
    tracing::info!(grace_ms = cfg.server.shutdown_grace_ms, "shutting down: closing listeners, DISCONNECT(7) to every connection");
    for m in mesh.iter() {
        m.post(CoreMsg::Shutdown);
    }
    std::thread::spawn(|| {
        while wait_for_signal() == libc::SIGHUP {
            tracing::info!("SIGHUP while shutting down: ignored");
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
    for (id, h) in handles.into_iter().enumerate() {
        // A worker's panic outside a connection task already ended the
        // process (`WORKER_PANIC_EXIT`); what is left to see here is said.
        match h.join() {
            Ok(()) => tracing::debug!(worker = id, "worker stopped"),
            Err(p) => {
                let why = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                tracing::error!(worker = id, panic = why.as_deref().unwrap_or("(no message)"), "worker thread panicked");
            }
        }
    }
    if let Some(why) = crate::store::process_failure() {
        return Err(ServeError::StoreFailed(why.to_string()));
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Starts this node's fleet engine thread (FLEET.md).
fn start_fleet(
    cfg: &Config,
    f: &crate::config::FleetConfig,
    local: std::net::SocketAddr,
    mesh: mesh::Mesh,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<Arc<crate::fleet::Fleet>, ServeError> {
    let node_id = f.node_id.clone().unwrap_or_else(|| crate::fleet::default_node_id(local.port()));
    let host = f
        .advertise_host
        .clone()
        .or_else(|| cfg.route.public_host.clone())
        .unwrap_or_else(|| local.ip().to_string());
    let me = crate::fleet::Node {
        id: node_id.clone(),
        host,
        port: local.port(),
        transport: if cfg.tls.enabled { "tls" } else { "tcp" }.into(),
    };
    if cfg.tls.enabled && cfg.tls.cert_file.is_none() {
        tracing::warn!("fleet mode with a per-node development certificate: clients that pin it will not accept the other nodes; give every node the same certificate");
    }
    tracing::info!(node_id = %node_id, engine = ?f.redis, heartbeat_ms = f.heartbeat_ms, "fleet mode: inboxes live in the engine (store.durability and fsync do not apply)");
    let fleet = crate::fleet::start(f.clone(), node_id, me, mesh, retention(cfg), cfg.session.dedup_per_device.max(1024), metrics.clone(), cfg.groups.clone())
        .map_err(|e| ServeError::Worker(0, e))?;
    let _ = metrics.fleet.set(fleet.metrics.clone());
    Ok(fleet)
}

/// A core's durable log failed (an fsync error): remember it for the exit
/// status and start the same drain as SIGTERM, so the supervisor restarts
/// the process and recovery reads what is really on disk.
fn on_store_failure(why: &crate::store::StoreError) {
    crate::store::record_process_failure(&why.to_string());
    // SAFETY: kill(2) on our own pid; the main thread waits for it in sigwait.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}

/// Pins the calling thread to one CPU, so its runtime, its connections'
/// softirq work (with RPS/RFS tuned accordingly) and its caches stay put.
fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

static CONFIG_PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Tells `serve` which file the configuration came from, so its hints
/// (`ringgate token --config ...`) name it.
pub fn set_config_path(path: &std::path::Path) {
    let _ = CONFIG_PATH.set(path.to_path_buf());
}

static CLI_OVERRIDES: std::sync::OnceLock<(Option<Driver>, Option<usize>)> = std::sync::OnceLock::new();

/// Tells `serve` which settings the command line overrode (`--driver`,
/// `--workers`), so a reload applies them to the file it reads again
/// instead of reporting them as changed.
pub fn set_cli_overrides(driver: Option<Driver>, workers: Option<usize>) {
    let _ = CLI_OVERRIDES.set((driver, workers));
}

fn cli_overrides() -> fn(&mut Config) {
    |cfg| {
        if let Some((driver, workers)) = CLI_OVERRIDES.get() {
            if let Some(d) = driver {
                cfg.server.driver = *d;
            }
            if let Some(w) = workers {
                cfg.server.workers = *w;
            }
        }
    }
}

fn config_hint() -> String {
    match CONFIG_PATH.get() {
        Some(p) => format!(" --config {}", std::path::absolute(p).unwrap_or_else(|_| p.clone()).display()),
        None => String::new(),
    }
}

/// The session section as the sans-IO core sees it.
pub fn session_limits(cfg: &Config) -> crate::proto::session::SessionLimits {
    let s = &cfg.session;
    crate::proto::session::SessionLimits {
        heartbeat_s: s.heartbeat_s,
        handshake_timeout_ms: s.handshake_timeout_ms,
        ack_timeout_ms: s.ack_timeout_ms,
        max_retries: s.max_retries,
        inflight_window: s.inflight_window,
        max_frame: s.max_frame,
    }
}

/// `store.memory_budget_bytes`, with 0 resolved to a quarter of the
/// machine's RAM (MemTotal), or 1 GiB when that cannot be read.
pub fn memory_budget(cfg: &Config) -> u64 {
    if cfg.store.memory_budget_bytes > 0 {
        return cfg.store.memory_budget_bytes;
    }
    let total_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kb.map_or(1 << 30, |kb| kb * 1024 / 4)
}

pub fn retention(cfg: &Config) -> crate::store::Retention {
    crate::store::Retention {
        max_messages: cfg.store.inbox_max_messages,
        max_age_ms: cfg.store.inbox_max_age_s.saturating_mul(1000),
    }
}

fn sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGTERM/SIGINT/SIGHUP in this thread and (by inheritance) every worker,
/// so only `sigwait` in the main thread sees them.
fn block_signals() {
    let set = sigset();
    // SAFETY: valid set pointer; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

fn block_hup() {
    // SAFETY: sigemptyset/sigaddset initialise the set we own; a null
    // old-set pointer is allowed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for SIGTERM, SIGINT or SIGHUP and says which.
fn wait_for_signal() -> libc::c_int {
    let set = sigset();
    let mut sig = 0;
    // SAFETY: valid set and out pointer; the signals are blocked in every thread.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}
