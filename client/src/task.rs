//! The background task that owns the connection: connect cycles (route, token, ladder), the connected loop, reconnects.
//!
//! Everything here runs on one tokio task per [`Client`](crate::Client);
//! the handle reaches it only through the command channel, the push
//! channel and two atomics (what the application has taken, for acks).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::client::{emit, rand01, ClientConfig, ClientEvent, Counters, RouteState, TokenSource};
use crate::frame::{self, ConnAck, Push, SendAck, ServerFrame};
use crate::ladder::{self, AttemptError};
use crate::route::{self, BackoffPolicy, Endpoint, Freshness, LadderPolicy};
use crate::tls;
use crate::Error;

pub(crate) enum Cmd {
    Send { cmid: u64, frame: Bytes, tx: oneshot::Sender<Result<SendAck, Error>> },
    Close,
}

pub(crate) struct PendingSend {
    frame: Bytes,
    pub(crate) tx: oneshot::Sender<Result<SendAck, Error>>,
    /// Set after SENDACK 5 (busy): resend then.
    retry_at: Option<Instant>,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection that passed CONNECT.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    connack: ConnAck,
    rbuf: BytesMut,
}

pub(crate) struct Task {
    pub(crate) cfg: ClientConfig,
    pub(crate) frames_tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) route: Option<Arc<RouteState>>,
    pub(crate) cmd: mpsc::Receiver<Cmd>,
    pub(crate) pushes: mpsc::Sender<Push>,
    pub(crate) delivered: Arc<AtomicU64>,
    pub(crate) ack_kick: Arc<Notify>,
    pub(crate) pending: BTreeMap<u64, PendingSend>,
    pub(crate) last_seq: u64,
    pub(crate) acked: u64,
    pub(crate) counters: Arc<Counters>,
    pub(crate) closing: bool,
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
    pub(crate) async fn run(&mut self, first: oneshot::Sender<Result<(), Error>>) -> Result<(), Error> {
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
