//! Reload without restart: SIGHUP (or `ringgate reload`) re-reads the configuration file, builds one immutable snapshot of everything that may change live, and hands it to every core through its mailbox.
//!
//! What changes live is [`Live`]: token keys (`[auth]`), the TLS server
//! config (certificates, `[[tls.certificates]]`, ticket keys), `[limits]`
//! (but `mailbox_capacity`), `[web] allowed_origins` and `[route]` (but
//! `signing_key_file`). Everything else needs a restart, and a reload names
//! each such key that changed in the log.
//!
//! All or nothing: the file is parsed and validated whole and every file it
//! names (certificates, keys, secrets, the ticket key) is read and checked
//! before anything is published. A failure changes nothing, is logged with
//! its reason and counted as `ringgate_config_reloads_total{result="error"}`.
//!
//! Why a snapshot through the mailbox: a core reads its `Live` on every
//! accept and CONNECT, so it must cost no lock and no atomic; each core
//! swaps its `Arc<Live>` between two messages of its own loop, and an old
//! snapshot lives as long as a connection task still holds a piece of it
//! (a TLS handshake in progress keeps the `ServerConfig` it began with).
//! Established connections keep running: their TLS keys are their own, and
//! a connection authenticated by a key that a reload removed runs until its
//! token expires (the token's `exp` was taken at CONNECT).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use std::sync::Arc;

use super::gate_http::Gate;
use super::mesh::{CoreMsg, Mesh};
use crate::auth::TokenKeys;
use crate::config::Config;
use crate::limits::LimitsConfig;
use crate::tls::Resumption;
use crate::tls_tickets::FileTicketer;

/// How long a reload waits for every core to take the new snapshot before
/// it reports (bounded: the main thread also handles shutdown signals).
const RELOAD_APPLY_WAIT: Duration = Duration::from_secs(2);

/// Everything a reload may change, as the cores read it. Immutable but for
/// the count of cores that took it.
pub struct Live {
    pub jwt: TokenKeys,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits_cfg: LimitsConfig,
    /// `limits.max_connections` resolved (0 there = from the fd limit).
    pub max_connections: u64,
    /// HTTP on the gateway port (route endpoint, origins).
    pub gate: Arc<Gate>,
    /// Cores that have taken this snapshot: a reload is reported (logged,
    /// counted in `ringgate_config_reloads_total`, which `ringgate reload`
    /// and the admin API read) only once every core runs with it, so a
    /// SEND right after the report meets the new limits.
    pub applied: AtomicUsize,
}

/// Keys that may change live: a whole section (`auth`), or one key.
const LIVE_KEYS: &[&str] = &[
    "auth",
    "tls.cert_file",
    "tls.key_file",
    "tls.certificates",
    "tls.session_tickets",
    "tls.ticket_key_file",
    "tls.ticket_key_overlap_s",
    "limits",
    "web.allowed_origins",
    "route",
];
/// Exceptions inside a live section.
const RESTART_KEYS: &[&str] = &["limits.mailbox_capacity", "route.signing_key_file"];

fn is_live(key: &str) -> bool {
    let under = |p: &&str| key == *p || key.starts_with(&format!("{p}."));
    !RESTART_KEYS.iter().any(under) && LIVE_KEYS.iter().any(under)
}

/// The keys whose values differ, dotted (`limits.connect_rate`); a table
/// is compared key by key, an array (`tls.certificates`) whole.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, x.get(k), y.get(k), out);
                }
            }
            (a, b) if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let (a, b) = (toml::Value::try_from(old).ok(), toml::Value::try_from(new).ok());
    let mut out = Vec::new();
    walk("", a.as_ref(), b.as_ref(), &mut out);
    out
}

/// Why a reload was refused. Always the operator's to fix; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the server was started without --config: there is no file to read again")]
    NoFile,
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    TicketKey(#[from] crate::tls_tickets::TicketKeyError),
    #[error("{0}")]
    Route(#[from] crate::route::RouteError),
}

/// The main thread's reload state: what is running, and what outlives a snapshot.
pub struct Reloader {
    path: Option<PathBuf>,
    /// The configuration running now (with command-line overrides applied).
    running: Config,
    data_dir: PathBuf,
    /// Command-line overrides, applied to every file read again.
    overrides: fn(&mut Config),
    resumption: Option<Resumption>,
    /// rustls' per-process ticketer, used while no ticket key file is set.
    process_ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    file_ticketer: Option<Arc<FileTicketer>>,
    /// `max_connections` when `limits.max_connections = 0`.
    fd_max_connections: u64,
    listen: std::net::SocketAddr,
    /// `/v1/ws` mode chosen at start from the environment (test-only echo).
    ws_mode: super::web::ws::Mode,
    /// Fleet mode: the route lists the fleet's live nodes (kept across reloads).
    fleet: Option<Arc<crate::fleet::Fleet>>,
    clock: super::core::Clock,
    /// The snapshot the cores run (set once `start` built the first).
    current: Option<Arc<Live>>,
}

/// What `serve` hands the reloader once the first snapshot is built.
pub struct Start {
    pub path: Option<PathBuf>,
    pub cfg: Config,
    pub overrides: fn(&mut Config),
    pub fd_max_connections: u64,
    pub listen: std::net::SocketAddr,
    pub secret: Vec<u8>,
    pub route: crate::route::RouteService,
    pub ws_mode: super::web::ws::Mode,
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl Reloader {
    /// The first snapshot, built by the same code as every reload.
    pub fn start(s: Start) -> Result<Self, super::ServeError> {
        let data_dir = s.cfg.store.data_dir.clone();
        let mut r = Reloader {
            path: s.path,
            data_dir,
            overrides: s.overrides,
            resumption: None,
            process_ticketer: None,
            file_ticketer: None,
            fd_max_connections: s.fd_max_connections,
            listen: s.listen,
            ws_mode: s.ws_mode,
            fleet: s.fleet.clone(),
            clock: super::core::Clock::new(),
            current: None,
            running: s.cfg.clone(),
        };
        if s.cfg.tls.enabled {
            let process = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(crate::tls::TlsError::from)?;
            r.process_ticketer = Some(process.clone());
            r.resumption = Some(Resumption::new(Some(process))?);
        }
        let gate = Arc::new(Gate { ws_mode: s.ws_mode, ..Gate::new(&s.cfg, s.route) });
        let (live, file_ticketer, certs) = r.build(&s.cfg, Some(s.secret), gate)?;
        for c in &certs {
            tracing::info!(
                path = %c.path.display(),
                sha256 = %c.sha256_fingerprint,
                generated = c.generated,
                server_name = c.server_name.as_deref().unwrap_or("*"),
                "TLS certificate"
            );
            if c.generated {
                eprintln!("ringgate: self-signed development certificate at {} (SHA-256 {})", c.path.display(), c.sha256_fingerprint);
            }
        }
        if let Some(t) = &file_ticketer {
            tracing::info!(key_id = %t.key_id(), "TLS session tickets from tls.ticket_key_file");
        }
        if !s.cfg.auth.keys.is_empty() {
            tracing::info!(kids = ?live.jwt.kids(), "token keys ([[auth.keys]]); tokens without kid use the HS256 secret");
        }
        r.file_ticketer = file_ticketer;
        r.current = Some(Arc::new(live));
        Ok(r)
    }

    /// The snapshot the cores start with (built by `start`).
    pub fn current(&self) -> Option<Arc<Live>> {
        self.current.clone()
    }

    /// Builds a snapshot for `cfg` (validated), reading every file it
    /// names; publishes nothing. `secret`: the HS256 secret already loaded
    /// (at start), else read again (`jwt_secret_file` may have changed).
    #[allow(clippy::type_complexity)]
    fn build(
        &mut self,
        cfg: &Config,
        secret: Option<Vec<u8>>,
        gate: Arc<Gate>,
    ) -> Result<(Live, Option<Arc<FileTicketer>>, Vec<crate::tls::CertInfo>), ReloadError> {
        let secret = match secret {
            Some(s) => s,
            None => crate::auth::load_secret(&cfg.auth, &self.data_dir, false)?.0,
        };
        let jwt = TokenKeys::load(&secret, &cfg.auth)?;
        let mut file_ticketer = None;
        let mut certs = Vec::new();
        let tls = match &self.resumption {
            Some(base) => {
                let mut resumption = base.clone();
                if let Some(path) = &cfg.tls.ticket_key_file {
                    let (raw, created) = crate::tls_tickets::load_or_create(path)?;
                    if created {
                        tracing::info!(path = %path.display(), "created a session ticket key file (mode 0600): copy it to every node that should resume this node's sessions");
                    }
                    let now_s = self.clock.wall_ms() / 1000;
                    let t = match &self.file_ticketer {
                        Some(old) => old.rotated(raw, cfg.tls.ticket_key_overlap_s, now_s),
                        None => FileTicketer::new(raw, cfg.tls.ticket_key_overlap_s),
                    };
                    let t = Arc::new(t);
                    resumption.ticketer = t.clone();
                    file_ticketer = Some(t);
                } else if let Some(p) = &self.process_ticketer {
                    resumption.ticketer = p.clone();
                }
                let (server, infos) = crate::tls::build_server_config_with(&cfg.tls, &self.data_dir, &resumption)?;
                certs = infos;
                Some(server)
            }
            None => None,
        };
        let max_connections = match cfg.limits.max_connections {
            0 => self.fd_max_connections,
            n => n,
        };
        Ok((Live { jwt, tls, limits_cfg: cfg.limits.clone(), max_connections, gate, applied: AtomicUsize::new(0) }, file_ticketer, certs))
    }

    /// Reads the file again and, when all of it is good, publishes the new
    /// snapshot to every core. Logs and counts the outcome either way.
    pub fn reload(&mut self, mesh: &Mesh, metrics: &crate::metrics::Metrics) {
        match self.try_reload(mesh) {
            Ok(()) => {
                metrics.config_reloads[0].fetch_add(1, Ordering::Relaxed);
                metrics.config_last_reload_ms.store(self.clock.wall_ms(), Ordering::Relaxed);
            }
            Err(e) => {
                metrics.config_reloads[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "configuration reload failed; nothing changed, still serving the previous configuration");
            }
        }
    }

    fn try_reload(&mut self, mesh: &Mesh) -> Result<(), ReloadError> {
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        let mut cfg = Config::load(&path)?;
        (self.overrides)(&mut cfg);
        cfg.validate()?;
        let changed = changed_keys(&self.running, &cfg);
        let (live_keys, restart_keys): (Vec<&String>, Vec<&String>) = changed.iter().partition(|k| is_live(k));
        // Keys that need a restart keep their running values.
        let mut applied = cfg.clone();
        revert_restart_keys(&mut applied, &self.running);
        // The route service is rebuilt on the key already in use (a new
        // `signing_key_file` needs a restart); its failure-report window
        // starts over.
        let key = crate::route::read_key(&crate::route::key_path(&applied.route, &self.data_dir).0)?;
        let mut route = crate::route::RouteService::new(applied.route.clone(), key, self.listen, applied.tls.enabled, self.clock.mono_ms());
        if let Some(f) = &self.fleet {
            route = route.with_fleet(f.clone());
        }
        let gate = Arc::new(Gate { ws_mode: self.ws_mode, ..Gate::new(&applied, route) });
        let (live, file_ticketer, certs) = self.build(&applied, None, gate)?;

        // Everything was read and checked: publish.
        let live = Arc::new(live);
        for m in mesh.iter() {
            m.post(CoreMsg::Reload(live.clone()));
        }
        // A core takes it on its next turn, normally within a millisecond;
        // one that is busy longer than the bound still takes it, later.
        let deadline = Instant::now() + RELOAD_APPLY_WAIT;
        while live.applied.load(Ordering::Acquire) < mesh.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let taken = live.applied.load(Ordering::Acquire);
        if taken < mesh.len() {
            tracing::warn!(taken, cores = mesh.len(), waited_ms = RELOAD_APPLY_WAIT.as_millis() as u64, "not every core has taken the new configuration yet; the rest take it when their current work is done");
        }
        for c in &certs {
            tracing::info!(path = %c.path.display(), sha256 = %c.sha256_fingerprint, server_name = c.server_name.as_deref().unwrap_or("*"), "TLS certificate");
        }
        if let Some(t) = &file_ticketer {
            tracing::info!(key_id = %t.key_id(), "TLS session ticket key");
        }
        for k in &restart_keys {
            tracing::warn!(key = %k, "changed in the file but needs a restart to take effect; still running with the old value");
        }
        tracing::info!(
            changed = ?live_keys,
            kids = ?live.jwt.kids(),
            "configuration reloaded: new connections use it, established connections keep running"
        );
        self.file_ticketer = file_ticketer;
        self.current = Some(live);
        self.running = applied;
        Ok(())
    }
}

/// Puts the running values back for every key a reload cannot change, so
/// `running` stays what really runs (and the next reload names them again).
fn revert_restart_keys(new: &mut Config, running: &Config) {
    let live_tls = new.tls.clone();
    let (auth, limits, web_origins, route) =
        (new.auth.clone(), new.limits.clone(), new.web.allowed_origins.clone(), new.route.clone());
    *new = running.clone();
    new.tls.cert_file = live_tls.cert_file;
    new.tls.key_file = live_tls.key_file;
    new.tls.certificates = live_tls.certificates;
    new.tls.session_tickets = live_tls.session_tickets;
    new.tls.ticket_key_file = live_tls.ticket_key_file;
    new.tls.ticket_key_overlap_s = live_tls.ticket_key_overlap_s;
    new.auth = auth;
    new.limits = LimitsConfig { mailbox_capacity: running.limits.mailbox_capacity, ..limits };
    new.web.allowed_origins = web_origins;
    new.route = crate::config::RouteConfig { signing_key_file: running.route.signing_key_file.clone(), ..route };
}

/// Finds the process serving `data_dir` through its `LOCK` (held with
/// `flock` for the life of a durable server, holding its pid) and sends it
/// SIGHUP. Refuses when no process holds the lock, so a stale pid in the
/// file is never signalled.
pub fn signal_running(data_dir: &Path) -> Result<u32, String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let path = data_dir.join("LOCK");
    let mut f = std::fs::File::open(&path).map_err(|e| {
        format!("{}: {e} (no durable ringgate has used this data directory; a server with store.durability = \"memory\" takes no lock: send it SIGHUP, e.g. `systemctl reload ringgate` or `kill -HUP PID`)", path.display())
    })?;
    // SAFETY: flock on a valid fd we own; a shared, non-blocking probe.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return Err(format!("no running ringgate holds {} (is it running, with this --config?)", path.display()));
    }
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
    let pid: i32 = text.trim().parse().map_err(|_| format!("{} does not hold a pid ({:?})", path.display(), text.trim()))?;
    if pid <= 1 {
        return Err(format!("{} holds pid {pid}, which is not a ringgate", path.display()));
    }
    // SAFETY: kill(2) with a plain pid and signal number.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(format!("cannot signal pid {pid}: {}", std::io::Error::last_os_error()));
    }
    Ok(pid as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_split_into_live_and_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.limits.connect_rate = 5;
        new.limits.mailbox_capacity = 7;
        new.session.heartbeat_s = 9;
        new.web.allowed_origins = vec!["https://a.example".into()];
        new.tls.cert_file = Some("c.pem".into());
        new.auth.leeway_s = 1;
        new.route.signing_key_file = Some("k.pem".into());
        let ch = changed_keys(&old, &new);
        let live: Vec<&String> = ch.iter().filter(|k| is_live(k)).collect();
        let restart: Vec<&String> = ch.iter().filter(|k| !is_live(k)).collect();
        assert_eq!(live, ["auth.leeway_s", "limits.connect_rate", "tls.cert_file", "web.allowed_origins"]);
        assert_eq!(restart, ["limits.mailbox_capacity", "route.signing_key_file", "session.heartbeat_s"]);
        // And reverting keeps exactly the live changes.
        let mut applied = new.clone();
        revert_restart_keys(&mut applied, &old);
        let ch = changed_keys(&old, &applied);
        assert_eq!(ch, ["auth.leeway_s", "limits.connect_rate", "tls.cert_file", "web.allowed_origins"]);
    }
}
