//! The connected client: one background task owns the connection, reconnects through the ladder, retries SENDs and deduplicates PUSHes.
//!
//! The application talks to that task through bounded channels: `send`
//! queues a SEND and returns a future that resolves with its SENDACK
//! (however many reconnects it takes: the SEND is re-sent with the same
//! `client_msg_id`, and the server's dedup answers a retry with the original
//! SENDACK); `recv` hands out PUSHes in seq order, each seq once, and
//! acknowledges cumulatively what it has handed out.
//!
//! Reconnects start over at the route: a fresh token from the hook, the
//! cached route (refreshed first when past its TTL), the ladder, then
//! CONNECT with the `last_seq` kept across connections.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::frame::{self, ConnAck, Push, SendAck, ServerFrame};
use crate::ladder::{self, AttemptError, LadderEvent};
use crate::route::{self, BackoffPolicy, Endpoint, Freshness, LadderPolicy, Route, RouteCache, RouteQuery, RouteUrl};
use crate::tls::{self, Trust};
use crate::Error;

/// A token for the next connection. Called once per connection cycle, so a
/// slow refresh can only ever serve the cycle that asked for it.
pub type TokenFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// Where tokens come from.
#[derive(Clone)]
pub enum TokenSource {
    Static(String),
    Hook(TokenFn),
}

/// What the client did, for logs and `-v`.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    Ladder(LadderEvent),
    Connected { endpoint: String, after: Duration, connack: ConnAck },
    Disconnected { why: String },
    Reconnecting { after: Duration },
    RouteFetched { endpoints: Vec<String>, reported_failed: Vec<String> },
    RouteFailed { why: String, using: &'static str },
}

pub type EventFn = Arc<dyn Fn(&ClientEvent) + Send + Sync>;

/// Everything the client needs; build with [`ClientConfig::new`] and the setters.
#[derive(Clone)]
pub struct ClientConfig {
    pub device: String,
    pub token: TokenSource,
    /// `http(s)://host:port[/v1/route]` and the pinned Ed25519 key.
    pub route: Option<(String, [u8; 32])>,
    /// Used when no route can be had and none is cached, in this order.
    pub fallback: Vec<Endpoint>,
    pub trust: Trust,
    /// Sent as `user` on route fetches.
    pub user_hint: Option<String>,
    /// Ladder and backoff when no route supplies them.
    pub ladder: LadderPolicy,
    pub backoff: BackoffPolicy,
    /// CONNECT keepalive_s (0 = server's choice).
    pub keepalive_s: u16,
    pub route_timeout: Duration,
    /// SENDs awaiting their SENDACK at most; `send` waits beyond this.
    pub max_pending_sends: usize,
    /// PUSHes received but not yet taken by `recv`.
    pub max_buffered_pushes: usize,
    pub events: Option<EventFn>,
}

impl ClientConfig {
    pub fn new(device: impl Into<String>, token: TokenSource) -> Self {
        ClientConfig {
            device: device.into(),
            token,
            route: None,
            fallback: Vec::new(),
            trust: Trust::Unset,
            user_hint: None,
            ladder: LadderPolicy::default(),
            backoff: BackoffPolicy::default(),
            keepalive_s: 0,
            route_timeout: Duration::from_secs(10),
            max_pending_sends: 1024,
            max_buffered_pushes: 4096,
            events: None,
        }
    }
    pub fn route(mut self, url: impl Into<String>, key: [u8; 32]) -> Self {
        self.route = Some((url.into(), key));
        self
    }
    /// Adds a built-in fallback endpoint `HOST:PORT` (TLS).
    pub fn endpoint(mut self, host_port: &str) -> Result<Self, Error> {
        let ep = Endpoint::fallback(self.fallback.len(), host_port)?;
        self.fallback.push(ep);
        Ok(self)
    }
    pub fn trust(mut self, t: Trust) -> Self {
        self.trust = t;
        self
    }
    pub fn ladder(mut self, l: LadderPolicy) -> Self {
        self.ladder = l;
        self
    }
    pub fn backoff(mut self, b: BackoffPolicy) -> Self {
        self.backoff = b;
        self
    }
    pub fn on_event(mut self, f: impl Fn(&ClientEvent) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(f));
        self
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Group(String),
}

/// The route, its cache and the failures to report: shared by the
/// connection task and the background refresher.
struct RouteState {
    url: RouteUrl,
    key: [u8; 32],
    tls: Option<Arc<rustls::ClientConfig>>,
    user: Option<String>,
    timeout: Duration,
    cache: Mutex<RouteCache>,
    failed: Mutex<BTreeSet<String>>,
    fetches: AtomicU64,
    kick: Notify,
    events: Option<EventFn>,
    /// One fetch at a time, so a failure is reported once, not by the
    /// connect path and the refresher together.
    fetching: tokio::sync::Mutex<()>,
}

impl RouteState {
    /// Fetches now, reporting the failures collected so far; on success
    /// they are forgotten and the new route is cached.
    async fn refresh(&self) -> Result<Route, Error> {
        let _one = self.fetching.lock().await;
        let failed: Vec<String> = self.failed.lock().map(|f| f.iter().cloned().collect()).unwrap_or_default();
        let q = RouteQuery { user: self.user.clone(), transports: vec!["tls".into(), "tcp".into()], failed: failed.clone() };
        let r = route::fetch(&self.url, &q, &self.key, self.tls.clone(), self.timeout).await;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let r = r?;
        if let Ok(mut f) = self.failed.lock() {
            for id in &failed {
                f.remove(id);
            }
        }
        if let Ok(mut c) = self.cache.lock() {
            c.store(r.clone(), Instant::now());
        }
        if let Some(ev) = &self.events {
            ev(&ClientEvent::RouteFetched { endpoints: r.endpoints.iter().map(|e| e.id.clone()).collect(), reported_failed: failed });
        }
        Ok(r)
    }

    fn cached(&self) -> (Option<Route>, Freshness, Option<Instant>) {
        match self.cache.lock() {
            Ok(c) => (c.route().cloned(), c.freshness(Instant::now()), c.refresh_at()),
            Err(_) => (None, Freshness::Empty, None),
        }
    }
}

/// Refreshes the route at `refresh_ratio × ttl` after each receipt, in the
/// background, so no send ever waits for it; a failed refresh keeps the old
/// copy and tries again a little later.
async fn refresher(rs: Arc<RouteState>) {
    let mut failures = 0u32;
    loop {
        let (_, _, at) = rs.cached();
        let wait = match at {
            Some(at) => tokio::time::sleep_until(at.into()),
            // Nothing cached (the route service was unreachable at start and
            // the built-in endpoints are in use): try again soon.
            None => tokio::time::sleep(Duration::from_secs(30)),
        };
        tokio::select! {
            _ = wait => {}
            _ = rs.kick.notified() => {}
        }
        match rs.refresh().await {
            Ok(_) => failures = 0,
            Err(e) => {
                if let Some(ev) = &rs.events {
                    ev(&ClientEvent::RouteFailed { why: e.to_string(), using: "the cached route" });
                }
                let delay = BackoffPolicy { base_ms: 1000, cap_ms: 60_000, jitter: 0.5 }.delay(failures, rand01());
                failures = failures.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

enum Cmd {
    Send { cmid: u64, frame: Bytes, tx: oneshot::Sender<Result<SendAck, Error>> },
    Close,
}

struct PendingSend {
    frame: Bytes,
    tx: oneshot::Sender<Result<SendAck, Error>>,
    /// Set after SENDACK 5 (busy): resend then.
    retry_at: Option<Instant>,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection that passed CONNECT.
struct Conn {
    io: Box<dyn Io>,
    connack: ConnAck,
    rbuf: BytesMut,
}

/// A handle to the client. Dropping it stops the background task.
pub struct Client {
    cmd: mpsc::Sender<Cmd>,
    pushes: mpsc::Receiver<Push>,
    delivered: Arc<AtomicU64>,
    ack_kick: Arc<Notify>,
    next_cmid: Arc<AtomicU64>,
    route: Option<Arc<RouteState>>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
    refresher: Option<tokio::task::JoinHandle<()>>,
    end: Arc<Mutex<Option<Error>>>,
}

/// Figures the task keeps, readable from the handle.
#[derive(Default, Debug)]
pub struct Counters {
    pub connects: AtomicU64,
    pub duplicate_pushes: AtomicU64,
    pub resent_sends: AtomicU64,
    pub last_seq: AtomicU64,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(r) = &self.refresher {
            r.abort();
        }
    }
}

fn emit(events: &Option<EventFn>, e: ClientEvent) {
    if let Some(f) = events {
        f(&e);
    }
}

/// A uniform random number in [0, 1) from the OS (jitter needs no quality).
fn rand01() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Client {
    /// Connects (route, ladder, CONNECT) and returns once the first
    /// connection is up, or with the error that prevented it. After that the
    /// client reconnects by itself until dropped or closed.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, Error> {
        let frames_tls = match cfg.trust {
            Trust::Unset => None,
            ref t => Some(tls::client_config(t, tls::ALPN_FRAMES)?),
        };
        let route = match &cfg.route {
            Some((url, key)) => {
                let url = RouteUrl::parse(url)?;
                let tls = if url.https { Some(tls::client_config(&cfg.trust, tls::ALPN_HTTP)?) } else { None };
                Some(Arc::new(RouteState {
                    url,
                    key: *key,
                    tls,
                    user: cfg.user_hint.clone(),
                    timeout: cfg.route_timeout,
                    cache: Mutex::new(RouteCache::default()),
                    failed: Mutex::new(BTreeSet::new()),
                    fetches: AtomicU64::new(0),
                    kick: Notify::new(),
                    events: cfg.events.clone(),
                    fetching: tokio::sync::Mutex::new(()),
                }))
            }
            None => None,
        };
        if route.is_none() && cfg.fallback.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (push_tx, push_rx) = mpsc::channel(cfg.max_buffered_pushes.max(1));
        let delivered = Arc::new(AtomicU64::new(0));
        let ack_kick = Arc::new(Notify::new());
        let counters = Arc::new(Counters::default());
        let end = Arc::new(Mutex::new(None));
        let (first_tx, first_rx) = oneshot::channel();
        let mut task = Task {
            cfg,
            frames_tls,
            route: route.clone(),
            cmd: cmd_rx,
            pushes: push_tx,
            delivered: delivered.clone(),
            ack_kick: ack_kick.clone(),
            pending: BTreeMap::new(),
            last_seq: 0,
            acked: 0,
            counters: counters.clone(),
            closing: false,
        };
        let end2 = end.clone();
        let handle = tokio::spawn(async move {
            let r = task.run(first_tx).await;
            let e = r.err().unwrap_or(Error::Closed);
            for (_, p) in std::mem::take(&mut task.pending) {
                let _ = p.tx.send(Err(e.clone()));
            }
            if let Ok(mut g) = end2.lock() {
                *g = Some(e);
            }
        });
        match first_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(end.lock().ok().and_then(|g| g.clone()).unwrap_or(Error::Closed)),
        }
        let refresher = route.clone().map(|r| tokio::spawn(refresher(r)));
        let start = unix_ms() << 10;
        Ok(Client {
            cmd: cmd_tx,
            pushes: push_rx,
            delivered,
            ack_kick,
            next_cmid: Arc::new(AtomicU64::new(start)),
            route,
            counters,
            task: handle,
            refresher,
            end,
        })
    }

    /// A client_msg_id never used before by this device: time-based, so a
    /// new process with the same device does not reuse its predecessor's ids
    /// (the server would answer them from its dedup table, not deliver).
    fn cmid(&self) -> u64 {
        let floor = unix_ms() << 10;
        let mut cur = self.next_cmid.load(Ordering::Relaxed);
        loop {
            let next = (cur + 1).max(floor);
            match self.next_cmid.compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(c) => cur = c,
            }
        }
    }

    /// Sends `payload` and resolves with the SENDACK (any status: check
    /// [`SendAck::status`]); retried with the same `client_msg_id` across
    /// reconnects and after status 5 (busy) until answered.
    pub fn send(&self, target: Target, payload: impl AsRef<[u8]>) -> impl Future<Output = Result<SendAck, Error>> + Send + 'static {
        let cmid = self.cmid();
        let (kind, t) = match &target {
            Target::User(u) => (1u8, u.as_str()),
            Target::Group(g) => (2u8, g.as_str()),
        };
        let mut b = BytesMut::new();
        frame::encode_send(&mut b, cmid, kind, t, payload.as_ref());
        let frame = b.freeze();
        let cmd = self.cmd.clone();
        let end = self.end.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            let gone = || end.lock().ok().and_then(|g| g.clone()).unwrap_or(Error::Closed);
            cmd.send(Cmd::Send { cmid, frame, tx }).await.map_err(|_| gone())?;
            rx.await.map_err(|_| gone())?
        }
    }

    pub async fn send_to_user(&self, user: &str, payload: impl AsRef<[u8]>) -> Result<SendAck, Error> {
        self.send(Target::User(user.into()), payload).await
    }

    pub async fn send_to_group(&self, group: &str, payload: impl AsRef<[u8]>) -> Result<SendAck, Error> {
        self.send(Target::Group(group.into()), payload).await
    }

    /// The next message, in seq order, each seq once; it is acknowledged
    /// (cumulatively) once taken. `None` once the client has ended: see
    /// [`Client::end_reason`].
    pub async fn recv(&mut self) -> Option<Push> {
        let p = self.pushes.recv().await?;
        self.delivered.fetch_max(p.seq, Ordering::Relaxed);
        self.ack_kick.notify_one();
        Some(p)
    }

    /// Why the client ended, once it has.
    pub fn end_reason(&self) -> Option<Error> {
        self.end.lock().ok().and_then(|g| g.clone())
    }

    /// Highest seq received with nothing missing below it.
    pub fn last_seq(&self) -> u64 {
        self.counters.last_seq.load(Ordering::Relaxed)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Fetches the route now (reporting failed endpoints); Err without a route URL.
    pub async fn refresh_route(&self) -> Result<Route, Error> {
        match &self.route {
            Some(r) => r.refresh().await,
            None => Err(Error::Config("no route URL configured".into())),
        }
    }

    /// Route fetches made so far (background and on connect).
    pub fn route_fetches(&self) -> u64 {
        self.route.as_ref().map_or(0, |r| r.fetches.load(Ordering::Relaxed))
    }

    /// Endpoint ids waiting to be reported on the next route fetch.
    pub fn failed_to_report(&self) -> Vec<String> {
        self.route.as_ref().and_then(|r| r.failed.lock().ok().map(|f| f.iter().cloned().collect())).unwrap_or_default()
    }

    /// Sends DISCONNECT(0) and stops. Pending sends fail with [`Error::Closed`].
    pub async fn close(self) {
        let _ = self.cmd.send(Cmd::Close).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !self.task.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

struct Task {
    cfg: ClientConfig,
    frames_tls: Option<Arc<rustls::ClientConfig>>,
    route: Option<Arc<RouteState>>,
    cmd: mpsc::Receiver<Cmd>,
    pushes: mpsc::Sender<Push>,
    delivered: Arc<AtomicU64>,
    ack_kick: Arc<Notify>,
    pending: BTreeMap<u64, PendingSend>,
    last_seq: u64,
    acked: u64,
    counters: Arc<Counters>,
    closing: bool,
}

/// Why a connection ended.
enum Ended {
    /// Reconnect after the backoff.
    Lost(String),
    /// Reconnect now (DISCONNECT 6 right after a ladder win).
    Again(String),
    /// The application closed the client.
    Closed,
}

impl Task {
    async fn run(&mut self, first: oneshot::Sender<Result<(), Error>>) -> Result<(), Error> {
        let mut first = Some(first);
        let mut failures = 0u32;
        let mut force_route = false;
        loop {
            let backoff = self.backoff();
            let conn = match self.connect_cycle(force_route).await {
                Ok(c) => c,
                Err(e) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(e.clone()));
                        return Err(e);
                    }
                    if e.is_fatal(matches!(self.cfg.token, TokenSource::Hook(_))) {
                        return Err(e);
                    }
                    force_route = true;
                    let d = backoff.delay(failures, rand01());
                    failures = failures.saturating_add(1);
                    emit(&self.cfg.events, ClientEvent::Reconnecting { after: d });
                    self.sleep_or_close(d).await?;
                    continue;
                }
            };
            force_route = false;
            failures = 0;
            if let Some(f) = first.take() {
                let _ = f.send(Ok(()));
            }
            let (conn, won_at) = conn;
            match self.connected(conn, won_at).await {
                Ended::Closed => return Err(Error::Closed),
                Ended::Again(why) => {
                    emit(&self.cfg.events, ClientEvent::Disconnected { why });
                }
                Ended::Lost(why) => {
                    emit(&self.cfg.events, ClientEvent::Disconnected { why });
                    let d = backoff.delay(0, rand01());
                    emit(&self.cfg.events, ClientEvent::Reconnecting { after: d });
                    self.sleep_or_close(d).await?;
                }
            }
        }
    }

    /// Sleeps, but answers sends meanwhile (queued) and honours close.
    async fn sleep_or_close(&mut self, d: Duration) -> Result<(), Error> {
        let until = tokio::time::Instant::now() + d;
        loop {
            if self.pending.len() >= self.cfg.max_pending_sends {
                tokio::time::sleep_until(until).await;
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                c = self.cmd.recv() => match c {
                    Some(Cmd::Send { cmid, frame, tx }) => {
                        self.pending.insert(cmid, PendingSend { frame, tx, retry_at: None });
                    }
                    Some(Cmd::Close) | None => return Err(Error::Closed),
                },
            }
        }
    }

    fn backoff(&self) -> BackoffPolicy {
        self.route
            .as_ref()
            .and_then(|r| r.cached().0.map(|r| r.backoff))
            .unwrap_or_else(|| self.cfg.backoff.clone())
    }

    /// Picks the endpoints (route or fallback), gets a token, runs the ladder.
    async fn connect_cycle(&mut self, force_route: bool) -> Result<(Conn, Instant), Error> {
        let (endpoints, policy) = self.endpoints(force_route).await?;
        let token = match &self.cfg.token {
            TokenSource::Static(t) => t.clone(),
            TokenSource::Hook(f) => f().await.map_err(Error::Token)?,
        };
        let tls = self.frames_tls.clone();
        let device = self.cfg.device.clone();
        let last_seq = self.last_seq;
        let keepalive = self.cfg.keepalive_s;
        let events = self.cfg.events.clone();
        let r = ladder::run(
            &endpoints,
            &policy,
            |ep| attempt(ep, tls.clone(), device.clone(), token.clone(), last_seq, keepalive),
            |e| emit(&events, ClientEvent::Ladder(e)),
        )
        .await;
        let failed = match &r {
            Ok(w) => w.failed.clone(),
            Err((_, f)) => f.clone(),
        };
        if let Some(rs) = &self.route {
            if let Ok(mut f) = rs.failed.lock() {
                // Only ids the route named mean anything to the server.
                let known: BTreeSet<String> = rs.cached().0.map(|r| r.endpoints.into_iter().map(|e| e.id).collect()).unwrap_or_default();
                f.extend(failed.into_iter().filter(|id| known.contains(id)));
            }
        }
        let w = r.map_err(|(e, _)| e)?;
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        emit(
            &self.cfg.events,
            ClientEvent::Connected { endpoint: w.endpoint.display(), after: w.elapsed, connack: w.value.connack.clone() },
        );
        Ok((w.value, Instant::now()))
    }

    /// The route's endpoints (fetched first when empty or past TTL), or
    /// the built-in fallback ones.
    async fn endpoints(&mut self, force: bool) -> Result<(Vec<Endpoint>, LadderPolicy), Error> {
        let supported = |eps: Vec<Endpoint>| -> Vec<Endpoint> {
            eps.into_iter().filter(|e| e.transport == "tls" || e.transport == "tcp").collect()
        };
        let mut route_error = None;
        if let Some(rs) = self.route.clone() {
            let (cached, fresh, _) = rs.cached();
            let route = match (fresh, cached) {
                (Freshness::Fresh, Some(r)) if !force => Some(r),
                (Freshness::Refresh, Some(r)) if !force => {
                    rs.kick.notify_one();
                    Some(r)
                }
                (_, cached) => match rs.refresh().await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        let using = if cached.is_some() { "the cached route" } else { "the built-in endpoints" };
                        emit(&self.cfg.events, ClientEvent::RouteFailed { why: e.to_string(), using });
                        route_error = Some(e);
                        cached
                    }
                },
            };
            if let Some(r) = route {
                let eps = supported(r.endpoints);
                if !eps.is_empty() {
                    return Ok((eps, r.ladder));
                }
            }
        }
        let eps = supported(self.cfg.fallback.clone());
        if eps.is_empty() {
            // Say why the route gave nothing, not just that nothing is left.
            return Err(route_error.unwrap_or(Error::NoEndpoints));
        }
        Ok((eps, self.cfg.ladder.clone()))
    }

    /// Runs one connection until it ends.
    async fn connected(&mut self, conn: Conn, won_at: Instant) -> Ended {
        let Conn { io, connack, mut rbuf } = conn;
        let (mut rd, mut wr) = tokio::io::split(io);
        let max_frame = connack.max_frame.max(256);
        let hb = Duration::from_secs(u64::from(connack.heartbeat_s.max(1)));
        let mut out = BytesMut::new();
        // Everything not yet SENDACKed goes again, oldest first, same ids.
        let mut resent = 0;
        for p in self.pending.values_mut() {
            out.extend_from_slice(&p.frame);
            p.retry_at = None;
            resent += 1;
        }
        if self.counters.connects.load(Ordering::Relaxed) > 1 {
            self.counters.resent_sends.fetch_add(resent, Ordering::Relaxed);
        }
        // Messages taken before this connection were acked on an older one
        // (or not, if it broke first): say so again.
        let delivered = self.delivered.load(Ordering::Relaxed);
        if delivered > 0 {
            frame::encode_pushack(&mut out, delivered);
            self.acked = delivered;
        }
        let mut ping = tokio::time::interval(hb / 2);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_rx = Instant::now();
        let mut nonce = 0u64;
        let attempt_window = Duration::from_millis(self.policy_attempt_timeout());
        loop {
            // Frames that arrived with or after CONNACK.
            loop {
                match frame::decode(&mut rbuf, max_frame) {
                    Ok(None) => break,
                    Err(e) => return Ended::Lost(format!("bad frame from server: {e}")),
                    Ok(Some(f)) => {
                        if let Some(end) = self.on_frame(f, &mut out, won_at, attempt_window) {
                            let _ = wr.write_all(&out).await;
                            return end;
                        }
                    }
                }
            }
            let now = Instant::now();
            for p in self.pending.values_mut() {
                if p.retry_at.is_some_and(|t| now >= t) {
                    p.retry_at = None;
                    out.extend_from_slice(&p.frame);
                }
            }
            if !out.is_empty() {
                if let Err(e) = wr.write_all(&out).await {
                    return Ended::Lost(format!("write: {e}"));
                }
                let _ = wr.flush().await;
                out.clear();
            }
            if self.closing {
                let _ = wr.shutdown().await;
                return Ended::Closed;
            }
            let can_take = self.pending.len() < self.cfg.max_pending_sends;
            // The earliest SEND waiting to be retried after SENDACK 5.
            let retry_at = self.pending.values().filter_map(|p| p.retry_at).min();
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = retry => {}
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) => return Ended::Lost("server closed the connection".into()),
                    Ok(_) => last_rx = Instant::now(),
                    Err(e) => return Ended::Lost(format!("read: {e}")),
                },
                c = self.cmd.recv(), if can_take => match c {
                    Some(Cmd::Send { cmid, frame, tx }) => {
                        out.extend_from_slice(&frame);
                        self.pending.insert(cmid, PendingSend { frame, tx, retry_at: None });
                    }
                    Some(Cmd::Close) | None => {
                        // What the application took is acknowledged before leaving.
                        let d = self.delivered.load(Ordering::Relaxed);
                        if d > self.acked {
                            frame::encode_pushack(&mut out, d);
                            self.acked = d;
                        }
                        frame::encode_disconnect(&mut out, 0, "client closed");
                        self.closing = true;
                    }
                },
                _ = self.ack_kick.notified() => {
                    let d = self.delivered.load(Ordering::Relaxed);
                    if d > self.acked {
                        frame::encode_pushack(&mut out, d);
                        self.acked = d;
                    }
                }
                _ = ping.tick() => {
                    // The server answers PINGs, so silence this long means the path is gone.
                    if last_rx.elapsed() > hb * 2 {
                        return Ended::Lost(format!("nothing heard for {:?}", last_rx.elapsed()));
                    }
                    nonce += 1;
                    frame::encode_ping(&mut out, nonce);
                }
            }
        }
    }

    fn policy_attempt_timeout(&self) -> u64 {
        self.route
            .as_ref()
            .and_then(|r| r.cached().0.map(|r| r.ladder.attempt_timeout_ms))
            .unwrap_or(self.cfg.ladder.attempt_timeout_ms)
    }

    /// Handles one server frame; `Some` ends the connection.
    fn on_frame(&mut self, f: ServerFrame, out: &mut BytesMut, won_at: Instant, attempt_window: Duration) -> Option<Ended> {
        match f {
            ServerFrame::Push(p) => {
                if p.seq <= self.last_seq {
                    // A retransmission or replay of something we have.
                    self.counters.duplicate_pushes.fetch_add(1, Ordering::Relaxed);
                    let d = self.delivered.load(Ordering::Relaxed);
                    if d >= p.seq {
                        frame::encode_pushack(out, d);
                        self.acked = self.acked.max(d);
                    }
                    return None;
                }
                let seq = p.seq;
                match self.pushes.try_send(p) {
                    Ok(()) => {
                        self.last_seq = seq;
                        self.counters.last_seq.store(seq, Ordering::Relaxed);
                    }
                    // The application is not taking messages: let the server
                    // keep them (it replays above last_seq on reconnect).
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return Some(Ended::Lost("receive buffer full (application not calling recv)".into()))
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            ServerFrame::SendAck(a) => {
                if a.status == 5 {
                    if let Some(p) = self.pending.get_mut(&a.client_msg_id) {
                        p.retry_at = Some(Instant::now() + self.cfg.backoff.delay(0, rand01()));
                    }
                } else if let Some(p) = self.pending.remove(&a.client_msg_id) {
                    let _ = p.tx.send(Ok(a));
                }
            }
            ServerFrame::Ping(n) => frame::encode_pong(out, n),
            ServerFrame::Pong(_) => {}
            ServerFrame::ConnAck(_) => return Some(Ended::Lost("second CONNACK".into())),
            ServerFrame::Disconnect { reason, message } => {
                let why = format!("DISCONNECT {reason} ({message})");
                if reason == 6 && won_at.elapsed() < attempt_window {
                    // Two ladder attempts of this device reached the node.
                    return Some(Ended::Again(why));
                }
                return Some(Ended::Lost(why));
            }
        }
        None
    }
}

/// One ladder attempt: TCP, TLS (with the route's SNI), CONNECT, CONNACK.
async fn attempt(
    ep: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    device: String,
    token: String,
    last_seq: u64,
    keepalive_s: u16,
) -> Result<Conn, AttemptError> {
    let fail = |m: String| AttemptError::Failed(m);
    let addr = route::lookup(ep.dial_host(), ep.port).await.map_err(|e| fail(format!("resolve: {e}")))?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| fail(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = match ep.transport.as_str() {
        "tls" => {
            let cfg = tls.ok_or_else(|| AttemptError::Fatal(Error::Config("TLS endpoint but no trust configured (--ca, --insecure or a pin)".into())))?;
            let name = tls::server_name(ep.tls_name()).map_err(AttemptError::Fatal)?;
            let s = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| fail(format!("TLS: {e}")))?;
            Box::new(s)
        }
        "tcp" => Box::new(tcp),
        other => return Err(fail(format!("transport {other} not supported by this client"))),
    };
    let mut out = BytesMut::new();
    frame::encode_connect(&mut out, keepalive_s, &device, &token, last_seq);
    io.write_all(&out).await.map_err(|e| fail(format!("write CONNECT: {e}")))?;
    io.flush().await.map_err(|e| fail(format!("write CONNECT: {e}")))?;
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        match frame::decode(&mut rbuf, frame::DEFAULT_MAX_FRAME) {
            Err(e) => return Err(fail(format!("bad frame: {e}"))),
            Ok(Some(ServerFrame::ConnAck(c))) => {
                return match c.status {
                    0 => Ok(Conn { io, connack: c, rbuf }),
                    3 => Err(fail("CONNACK 3 (server busy)".into())),
                    1 => Err(AttemptError::Fatal(Error::UnsupportedVersion)),
                    2 => Err(AttemptError::Fatal(Error::BadToken)),
                    4 => Err(AttemptError::Fatal(Error::MalformedConnect)),
                    s => Err(fail(format!("CONNACK status {s}"))),
                };
            }
            Ok(Some(ServerFrame::Disconnect { reason, message })) => {
                return Err(fail(format!("DISCONNECT {reason} ({message}) before CONNACK")))
            }
            Ok(Some(other)) => return Err(fail(format!("{other:?} before CONNACK"))),
            Ok(None) => {}
        }
        match io.read_buf(&mut rbuf).await {
            Ok(0) => return Err(fail("closed before CONNACK".into())),
            Ok(_) => {}
            Err(e) => return Err(fail(format!("read: {e}"))),
        }
    }
}
