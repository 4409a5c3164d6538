//! One worker thread, the monoio driver of one `Core`: its runtime (io_uring or epoll), the accept loop, one task per connection waiting for readiness, the mailbox, the ticker and the flusher.
//!
//! The driver owns the sockets; the core owns the buffers. A readiness
//! event gets the kernel transport (`transport::Kernel`), through which the
//! core's reads become non-blocking `recv`s into its own buffers; after
//! every call into the core the driver performs the writes the core queued
//! ([`transmit`]: `poll_transmit`, `send`, `on_sent`, `core/transmit.rs`).

use super::*;
use super::transport::{Kernel, Sock};
use super::core::Tx;

pub(super) fn run_worker(
    id: usize,
    driver: DriverKind,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    grace: Duration,
    store: Box<dyn InboxStore + Send>,
    seed: Vec<DedupSeed>,
) {
    let fut = worker_main(id, shared, listener, grace, store, seed);
    // A panic in a connection task is caught in `conn_task`; one anywhere
    // else (mailbox loop, adopt path, ticker, accept loop, store) would leave
    // this core dead while the process keeps serving half its users. Such a
    // panic ends the process instead, so the supervisor restarts it and
    // recovery runs.
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| match driver {
        DriverKind::Uring => {
            let build = |setup| {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(4096)
                    .uring_builder(uring_builder(setup))
                    .enable_timer()
                    .build()
            };
            let setup = UringSetup::from_env();
            match build(setup) {
                Err(e) if setup != UringSetup::Plain => {
                    // An older kernel refuses the flags (EINVAL): run without.
                    tracing::info!(worker = id, error = %e, ?setup, "io_uring setup flags refused; using a plain ring");
                    build(UringSetup::Plain)
                }
                r => r,
            }
            .map(|mut rt| rt.block_on(fut))
        }
        DriverKind::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(fut)),
    }));
    match run {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(worker = id, error = %e, "worker runtime failed to start");
            std::process::exit(1);
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            tracing::error!(worker = id, panic = %what, "worker thread panicked outside a connection; exiting so the supervisor restarts the process");
            eprintln!("ringgate: worker {id} panicked outside a connection: {what}; exiting (code {WORKER_PANIC_EXIT})");
            std::process::exit(WORKER_PANIC_EXIT);
        }
    }
}

/// How the worker's io_uring is set up (`RINGGATE_URING_SETUP`, for
/// measuring; the default is `Coop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UringSetup {
    /// No flags: a completion from another CPU (loopback softirq, say)
    /// interrupts the worker with task work (an IPI) to post its CQE.
    Plain,
    /// IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG (5.19+): completions are
    /// posted at the worker's next kernel entry, without interrupting it.
    Coop,
    /// IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN (6.1+): completions are
    /// posted only when the worker waits for them (`io_uring_enter` with
    /// GETEVENTS), in one batch.
    Defer,
}

impl UringSetup {
    fn from_env() -> Self {
        match std::env::var("RINGGATE_URING_SETUP").as_deref() {
            Ok("plain") => UringSetup::Plain,
            Ok("defer") => UringSetup::Defer,
            _ => UringSetup::Coop,
        }
    }
}

fn uring_builder(setup: UringSetup) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    match setup {
        UringSetup::Plain => {}
        UringSetup::Coop => {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        UringSetup::Defer => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
    }
    b
}

async fn worker_main(
    id: usize,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    grace: Duration,
    store: Box<dyn InboxStore + Send>,
    seed: Vec<DedupSeed>,
) {
    let mut core = Core::new(id, shared.clone(), store, seed);
    core.peer_of = super::transport::kernel_peer_addr;
    let core = Rc::new(RefCell::new(core));
    let stop = Rc::new(Flag::default());
    match TcpListener::from_std(listener) {
        Ok(l) => {
            monoio::spawn(accept_loop(core.clone(), l, stop.clone()));
        }
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot register listener");
            std::process::exit(1);
        }
    }
    monoio::spawn(ticker(core.clone()));
    monoio::spawn(flusher(core.clone()));

    let mailbox = &shared.mesh[id];
    let mut batch = Vec::new();
    loop {
        mailbox.recv_batch(&mut batch).await;
        // In slices, with a turn for the connection tasks between them: a
        // fan-out to a large group arrives as thousands of appends, and
        // other clients on this core must not wait behind all of them.
        while batch.len() > MAILBOX_SLICE {
            let rest = batch.split_off(MAILBOX_SLICE);
            if handle_batch(&core, &mut batch, &stop) {
                break;
            }
            batch = rest;
            yield_now().await;
        }
        if handle_batch(&core, &mut batch, &stop) {
            break;
        }
    }
    // Draining: connections got DISCONNECT(7); wait for them to finish.
    let deadline = std::time::Instant::now() + grace;
    while core.borrow().conn_count() > 0 && std::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(TICK_MS)).await;
        mailbox.try_drain(&mut batch);
        handle_batch(&core, &mut batch, &stop);
    }
    core.borrow_mut().shutdown_store();
    let c = core.borrow();
    if let Some(f) = c.fsync_stats() {
        tracing::info!(
            worker = id,
            fsyncs = f.fsyncs,
            records = f.fsynced_records,
            max_batch = f.max_batch,
            mean_batch = if f.fsyncs > 0 { f.fsynced_records as f64 / f.fsyncs as f64 } else { 0.0 },
            segments_deleted = f.segments_deleted,
            "log flushed"
        );
    }
    if let Some(t) = c.trace_summary() {
        tracing::info!(worker = id, "stage trace: {t}");
    }
    let (inboxes, retained, st) = c.stats_line();
    tracing::info!(
        worker = id,
        open = c.conn_count(),
        accepted = st.accepted,
        tls_failures = st.tls_failures,
        handshake_timeouts = st.handshake_timeouts,
        panics = st.panics,
        migrated_out = st.migrated_out,
        sends = st.sends,
        inboxes,
        retained,
        "worker stopped"
    );
}

/// Mailbox messages handled before the connection tasks get a turn.
const MAILBOX_SLICE: usize = 128;

/// Handles queued cross-core messages; returns true once shutdown began.
fn handle_batch(core: &Rc<RefCell<Core>>, batch: &mut Vec<CoreMsg>, stop: &Rc<Flag>) -> bool {
    for msg in batch.drain(..) {
        if matches!(msg, CoreMsg::Shutdown) {
            stop.raise();
        }
        let adopt = {
            let mut c = core.borrow_mut();
            let a = c.on_message(msg);
            transmit(&mut c);
            a
        };
        if let Some(a) = adopt {
            adopt_conn(core, *a);
        }
    }
    core.borrow().shutting_down
}

/// A moved connection counts in `open_conns` from the moment it was
/// accepted until some core's `remove` gives it back; when the move fails
/// before a core registers it, it is given back here (it used to leak,
/// leaving the process short of `max_connections` for good).
fn lost_in_move(core: &Rc<RefCell<Core>>) {
    core.borrow().shared.open_conns.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

fn adopt_conn(core: &Rc<RefCell<Core>>, a: mesh::Adopt) {
    let Some(fd) = a.sock.map(Sock::fd) else {
        lost_in_move(core);
        return;
    };
    // SAFETY: the fd was released by the sending core (`into_raw_fd`) and
    // travelled here in the Adopt message; we are its only owner now.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let stream = match TcpStream::from_std(std_stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not register a moved connection");
            lost_in_move(core);
            return;
        }
    };
    let key = {
        let mut c = core.borrow_mut();
        let key = c.adopt(a);
        transmit(&mut c);
        key
    };
    monoio::spawn(conn_task(core.clone(), stream, key));
}

/// Exit status after a worker thread panicked outside a connection task.
pub const WORKER_PANIC_EXIT: i32 = 70;

async fn ticker(core: Rc<RefCell<Core>>) {
    // Fault injection for the test that proves a panic outside a connection
    // task ends the process: RINGGATE_FAULT_TICKER_PANIC_AFTER_MS=N panics
    // the ticker of worker 0 after N ms. Read once; costs nothing otherwise.
    let panic_at = std::env::var("RINGGATE_FAULT_TICKER_PANIC_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| core.borrow().id == 0)
        .map(|ms| std::time::Instant::now() + Duration::from_millis(ms));
    loop {
        monoio::time::sleep(Duration::from_millis(TICK_MS)).await;
        if panic_at.is_some_and(|t| std::time::Instant::now() >= t) {
            panic!("injected ticker panic (RINGGATE_FAULT_TICKER_PANIC_AFTER_MS)");
        }
        let mut c = core.borrow_mut();
        c.on_tick();
        transmit(&mut c);
    }
}

/// Writes the connections the turn made dirty, once each (`core/flush.rs`).
/// Woken by the first `kick` of a turn, it runs behind the tasks already
/// ready, so it sees everything they produced.
async fn flusher(core: Rc<RefCell<Core>>) {
    let mut batch = Vec::new();
    loop {
        poll_fn(|cx| core.borrow_mut().poll_dirty(cx.waker(), &mut batch)).await;
        let mut c = core.borrow_mut();
        c.flush_dirty(&mut batch);
        transmit(&mut c);
    }
}

/// Performs every write `core` queued (`core/transmit.rs`), at once, after
/// each call into it: the core hands out one connection's socket and the
/// slices of its sealed output (or a FIN), this sends them with
/// `MSG_DONTWAIT`, and the core takes the result (and acts on it: advance,
/// half-close, wake a blocked task).
#[inline]
fn transmit(core: &mut Core) {
    while let Some(t) = core.poll_transmit() {
        let key = t.key;
        let r = match &t.what {
            Tx::Data(d) => Kernel::send(t.sock, d.slices()),
            Tx::Fin => {
                Kernel::shutdown_write(t.sock);
                Ok(0)
            }
        };
        core.on_sent(key, r);
    }
}

/// One readiness step of connection `key`: its backpressure write first
/// (`before_io`), then the read and the frames (`on_io`), each followed by
/// the writes it queued, so the outcome is acted on only after the
/// connection's last bytes went out.
fn io_step(core: &Rc<RefCell<Core>>, key: ConnKey) -> Outcome {
    let mut c = core.borrow_mut();
    c.before_io(key);
    transmit(&mut c);
    let outcome = c.on_io(key, &mut Kernel);
    transmit(&mut c);
    outcome
}

async fn accept_loop(core: Rc<RefCell<Core>>, listener: TcpListener, stop: Rc<Flag>) {
    let mut last_emfile_log = None::<std::time::Instant>;
    // Options set once on the listener are inherited by every accepted
    // socket (checked on the first one); until then, and if not, each
    // accepted socket gets them itself.
    let opts = core.borrow().shared.sockopts.clone();
    // SAFETY: `listener` owns the fd and outlives this borrow.
    let lfd = unsafe { BorrowedFd::borrow_raw(listener.as_raw_fd()) };
    super::transport::rx_wait::enable(listener.as_raw_fd());
    let mut inherit = match crate::net::sockopt::apply_to_listener(lfd, &opts) {
        Ok(()) => None,
        Err(e) => {
            tracing::debug!(error = %e, "listener options not set; setting them per connection");
            Some(false)
        }
    };
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = stop.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let fd = stream.as_raw_fd();
                // SAFETY: `stream` owns `fd` and outlives this borrow.
                let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
                // No O_NONBLOCK either: every recv/send/sendmsg on a
                // connection passes MSG_DONTWAIT (`conn.rs`, `transport.rs`)
                // and readiness comes from the driver, so the flag would
                // only cost `fcntl` calls (two per connection on io_uring,
                // whose accept op does not set it).
                let inherited = *inherit.get_or_insert_with(|| crate::net::sockopt::inherited(borrowed, &opts));
                if !inherited {
                    if let Err(e) = crate::net::sockopt::apply_to_stream(borrowed, &opts) {
                        tracing::warn!(error = %e, "dropping connection");
                        continue;
                    }
                }
                if core.borrow().shutting_down {
                    continue;
                }
                let accepted = core.borrow_mut().accept(Sock::from_fd(fd), peer.ip());
                let key = match accepted {
                    Ok(k) => k,
                    // Refused by a limit: closed at once (dropping `stream`),
                    // counted by the core, not logged per connection (a flood
                    // would turn the log into an amplifier).
                    Err(AcceptError::Admission(_) | AcceptError::Full) => continue,
                };
                monoio::spawn(conn_task(core.clone(), stream, key));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                core.borrow().m().rejections[crate::metrics::REJ_FD_LIMIT].inc();
                // Out of descriptors: free one held by an anonymous peer and
                // try again at once; only when there is none to shed, wait.
                if core.borrow_mut().shed_oldest_preauth() {
                    yield_now().await;
                    continue;
                }
                if last_emfile_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    let (soft, hard) = crate::net::listener::nofile_limit();
                    tracing::warn!(
                        soft,
                        hard,
                        "accept failed: open file limit reached (RLIMIT_NOFILE soft {soft}, hard {hard}); every connection uses one file descriptor. Raise LimitNOFILE / the hard limit, or spread load over more processes"
                    );
                    last_emfile_log = Some(std::time::Instant::now());
                }
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    tracing::debug!(worker = core.borrow().id, "listener closed");
}

/// One connection's task. Any panic inside is contained here.
async fn conn_task(core: Rc<RefCell<Core>>, stream: TcpStream, key: ConnKey) {
    // Set when a readiness op was dropped while still in flight (the core
    // woke the task first): on io_uring the op keeps a reference to the fd
    // until its cancellation completes, and `into_raw_fd` would panic.
    let abandoned = Cell::new(false);
    let fut = async {
        if let Some(adopt) = drive(&core, &stream, key, &abandoned).await {
            let home = adopt.target_core(core.borrow().shared.mesh.len());
            let mut adopt = adopt;
            adopt.sock = Some(if abandoned.get() {
                // SAFETY: dup(2) of the fd `stream` owns; the copy is ours
                // (the other core's task owns it from here) and monoio
                // closes the original once the cancelled op is done.
                let fd = unsafe { libc::dup(stream.as_raw_fd()) };
                drop(stream);
                if fd < 0 {
                    tracing::warn!(error = %std::io::Error::last_os_error(), "could not move a connection");
                    lost_in_move(&core);
                    return;
                }
                Sock::from_fd(fd)
            } else {
                Sock::from_fd(stream.into_raw_fd())
            });
            let shared = core.borrow().shared.clone();
            shared.mesh[home].post(CoreMsg::Adopt(adopt));
            return;
        }
        // Dropped, not closed with close(2): on io_uring the drop costs a
        // close op plus an async-cancel op (monoio drops the close op
        // unfinished), but close(2) measured the same (handshake CPU
        // -0.4 ± 1.4 µs over 12 alternating pairs), so monoio keeps it.
        drop(stream);
    };
    if AssertUnwindSafe(fut).catch_unwind().await.is_err() {
        let mut c = core.borrow_mut();
        c.stats.panics += 1;
        tracing::error!(worker = c.id, "a connection task panicked; closed that connection only");
    }
    core.borrow_mut().remove(key);
}

async fn drive(
    core: &Rc<RefCell<Core>>,
    stream: &TcpStream,
    key: ConnKey,
    abandoned: &Cell<bool>,
) -> Option<Box<mesh::Adopt>> {
    // Read before waiting (so the loop starts with `on_io`): a socket
    // accepted with TCP_DEFER_ACCEPT (the default, `server.defer_accept_s`)
    // already holds the ClientHello, and a moved connection may hold the
    // frames that followed its CONNECT, so a readiness wait first would
    // only cost a PollAdd round trip (or a poll(2) plus an epoll wake-up on
    // the legacy driver). When nothing is there, this costs one recv that
    // says EAGAIN.
    loop {
        match io_step(core, key) {
            Outcome::Continue => {}
            Outcome::Close => return None,
            Outcome::Migrate(a) => return Some(a),
        }
        let write = core.borrow_mut().wants_write(key)?;
        // Pinned here, not moved into `race`: an async fn keeps a value
        // passed to it and the local it is pinned into, both, in its
        // future, which is part of every connection's task.
        let waited = if write {
            race(core, key, pin!(stream.writable(false)), abandoned).await
        } else {
            race(core, key, pin!(stream.readable(false)), abandoned).await
        };
        if !waited {
            // Ready at once: on the legacy driver a readiness op completes
            // without yielding when the socket is already ready, so a busy
            // connection (a sender pipelining faster than one read budget)
            // could keep the core to itself while its peer keeps sending.
            // Give the executor a turn.
            yield_now().await;
        }
    }
}

/// Waits for socket readiness or for the core to wake this connection.
/// Resolves to whether it had to wait (was Pending at least once); sets
/// `abandoned` when the wake-up came first and the readiness op is dropped
/// in flight. A plain `poll_fn`, not an async fn: its state is only what
/// the closure holds, which keeps every connection's task small.
fn race<'a, F: Future<Output = std::io::Result<()>>>(
    core: &'a Rc<RefCell<Core>>,
    key: ConnKey,
    mut ready: Pin<&'a mut F>,
    abandoned: &'a Cell<bool>,
) -> impl Future<Output = bool> + 'a {
    let mut waited = false;
    poll_fn(move |cx| {
        if core.borrow_mut().poll_woken(key, cx.waker()) {
            if waited {
                abandoned.set(true);
            }
            return Poll::Ready(waited);
        }
        match ready.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(waited),
            Poll::Pending => {
                waited = true;
                Poll::Pending
            }
        }
    })
}

/// Returns Pending once (after scheduling its own wake-up), so the executor
/// runs the other ready tasks before this one continues.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
