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

use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::frame::{self, ConnAck, Push, SendAck};
use crate::ladder::LadderEvent;
use crate::route::{self, BackoffPolicy, Endpoint, Freshness, LadderPolicy, Route, RouteCache, RouteQuery, RouteUrl};
use crate::task::{Cmd, Task};
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
pub(crate) struct RouteState {
    url: RouteUrl,
    key: [u8; 32],
    tls: Option<Arc<rustls::ClientConfig>>,
    user: Option<String>,
    timeout: Duration,
    cache: Mutex<RouteCache>,
    pub(crate) failed: Mutex<BTreeSet<String>>,
    fetches: AtomicU64,
    pub(crate) kick: Notify,
    events: Option<EventFn>,
    /// One fetch at a time, so a failure is reported once, not by the
    /// connect path and the refresher together.
    fetching: tokio::sync::Mutex<()>,
}

impl RouteState {
    /// Fetches now, reporting the failures collected so far; on success
    /// they are forgotten and the new route is cached.
    pub(crate) async fn refresh(&self) -> Result<Route, Error> {
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

    pub(crate) fn cached(&self) -> (Option<Route>, Freshness, Option<Instant>) {
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

pub(crate) fn emit(events: &Option<EventFn>, e: ClientEvent) {
    if let Some(f) = events {
        f(&e);
    }
}

/// A uniform random number in [0, 1) from the OS (jitter needs no quality).
pub(crate) fn rand01() -> f64 {
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
