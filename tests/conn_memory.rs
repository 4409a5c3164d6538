//! What one idle, authenticated TLS 1.3 connection costs the server, item by item, measured: the Rust heap by allocation size (with mimalloc's size-class rounding), the C heap (aws-lc's `malloc`), and the process RSS they must add up to.
//!
//! The server runs in this process: `ringgate::runtime::serve`, the code
//! the binary runs, with mimalloc as the global allocator as in
//! `src/main.rs` (and transparent huge pages off, as the binary sets them),
//! under a counting wrapper that keeps, for every requested size below
//! 8 KiB, how many blocks of it are live. The clients run in a child
//! process (this test binary again, see [`client_child`]), so nothing of
//! theirs is counted: each opens a TLS 1.3 connection, sends CONNECT,
//! reads CONNACK and then keeps only its socket.
//!
//! Method: open a warm-up batch (the allocator's pools and the tables'
//! first growth go into the baseline), take a sample, open N more, wait
//! until the server holds them, take a sample; every figure is the
//! difference divided by N. Allocation sizes that N connections added at
//! least N/20 blocks of are listed one by one, named where their size is
//! the `size_of` of a known type.
//!
//! `conn_memory_breakdown` (ignored: 10,000 connections, ~30 s) prints the
//! table of docs/measurements.md ("Per-connection memory") and measures
//! the real binary the same way for comparison:
//!
//!     cargo test --release --workspace --test conn_memory -- --ignored --nocapture
//!
//! `CONNMEM_CONNS` changes N, `CONNMEM_WORKERS` the worker threads (1, as
//! in the benchmark suite). `conn_memory_bounds` (in the default run, 1,000
//! connections) holds the Rust heap per idle connection under a bound and
//! checks that the record layer's keys are the only TLS state left.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Connect, Frame, TlsOptions, TlsVersion};
use ringgate::runtime::conn::{Conn, Identity, Tls};
use ringgate::runtime::tls_record::Record13;

// ---------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------

/// Sizes counted one by one; larger blocks (slabs, tables) are summed.
const SMALL: usize = 8192;

static BY_SIZE: [AtomicI64; SMALL] = [const { AtomicI64::new(0) }; SMALL];
static BIG_BYTES: AtomicI64 = AtomicI64::new(0);
static BIG_COUNT: AtomicI64 = AtomicI64::new(0);
static LIVE_REQUESTED: AtomicI64 = AtomicI64::new(0);
static LIVE_USABLE: AtomicI64 = AtomicI64::new(0);
/// `CONNMEM_TRACE_SIZES=648,288`: print a backtrace of every 500th
/// allocation of each of these sizes (to name an unknown row); 0 = none.
static TRACE_SIZES: [AtomicI64; 8] = [const { AtomicI64::new(0) }; 8];
static TRACE_SEEN: [AtomicI64; 8] = [const { AtomicI64::new(0) }; 8];
/// `CONNMEM_TRACE_BIG=1`: a backtrace of every allocation of 128 KiB or more
/// (the tables' and slabs' growth steps).
static TRACE_BIG: AtomicI64 = AtomicI64::new(0);

extern "C" {
    // mimalloc (linked through the `mimalloc` crate): the block size an
    // allocation really got, and the one a request of `size` would get.
    fn mi_usable_size(p: *const c_void) -> usize;
    fn mi_good_size(size: usize) -> usize;
}

struct Counting;

thread_local! {
    static IN_TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn note(p: *mut u8, size: usize, sign: i64) {
    // SAFETY: `p` is a live block mimalloc handed out (checked non-null by the callers).
    let usable = unsafe { mi_usable_size(p as *const c_void) } as i64;
    LIVE_USABLE.fetch_add(sign * usable, Relaxed);
    LIVE_REQUESTED.fetch_add(sign * size as i64, Relaxed);
    if size < SMALL {
        BY_SIZE[size].fetch_add(sign, Relaxed);
    } else {
        BIG_BYTES.fetch_add(sign * size as i64, Relaxed);
        BIG_COUNT.fetch_add(sign, Relaxed);
    }
    if sign > 0 && size >= 128 << 10 && TRACE_BIG.load(Relaxed) != 0 && !IN_TRACE.with(|t| t.replace(true)) {
        eprintln!("allocation of {size} B:\n{}", std::backtrace::Backtrace::force_capture());
        IN_TRACE.with(|t| t.set(false));
    }
    if sign > 0 && TRACE_SIZES[0].load(Relaxed) != 0 {
        if let Some(i) = TRACE_SIZES.iter().position(|t| t.load(Relaxed) == size as i64) {
            if TRACE_SEEN[i].fetch_add(1, Relaxed) % 500 == 499 && !IN_TRACE.with(|t| t.replace(true)) {
                eprintln!("allocation of {size} B:\n{}", std::backtrace::Backtrace::force_capture());
                IN_TRACE.with(|t| t.set(false));
            }
        }
    }
}

// SAFETY: every call is forwarded to mimalloc unchanged; the wrapper only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc(l);
        if !p.is_null() {
            note(p, l.size(), 1);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc_zeroed(l);
        if !p.is_null() {
            note(p, l.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        note(p, l.size(), -1);
        mimalloc::MiMalloc.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let old_usable = mi_usable_size(p as *const c_void) as i64;
        let q = mimalloc::MiMalloc.realloc(p, l, new);
        if !q.is_null() {
            LIVE_USABLE.fetch_sub(old_usable, Relaxed);
            LIVE_REQUESTED.fetch_sub(l.size() as i64, Relaxed);
            if l.size() < SMALL {
                BY_SIZE[l.size()].fetch_sub(1, Relaxed);
            } else {
                BIG_BYTES.fetch_sub(l.size() as i64, Relaxed);
                BIG_COUNT.fetch_sub(1, Relaxed);
            }
            note(q, new, 1);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------

/// One reading of everything the breakdown is made of.
struct Sample {
    by_size: Vec<i64>,
    big_bytes: i64,
    requested: i64,
    usable: i64,
    /// glibc malloc in use (arena chunks + mmapped blocks): aws-lc's heap.
    c_heap: i64,
    rss: i64,
    rss_anon: i64,
    fds: i64,
}

fn status_kib(s: &str, key: &str) -> i64 {
    s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn fd_count(pid: &str) -> i64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as i64).unwrap_or(0)
}

impl Sample {
    fn take() -> Sample {
        // SAFETY: mallinfo2 only reads glibc's malloc statistics.
        let mi = unsafe { libc::mallinfo2() };
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        Sample {
            by_size: BY_SIZE.iter().map(|c| c.load(Relaxed)).collect(),
            big_bytes: BIG_BYTES.load(Relaxed),
            requested: LIVE_REQUESTED.load(Relaxed),
            usable: LIVE_USABLE.load(Relaxed),
            c_heap: (mi.uordblks + mi.hblkhd) as i64,
            rss: status_kib(&status, "VmRSS:") * 1024,
            rss_anon: status_kib(&status, "RssAnon:") * 1024,
            fds: fd_count("self"),
        }
    }
}

fn rss_of(pid: u32) -> (i64, i64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    (status_kib(&s, "VmRSS:") * 1024, status_kib(&s, "RssAnon:") * 1024)
}

/// A size's name when it is the `size_of` of something an idle connection keeps.
fn known_sizes(user_len: usize, device_len: usize) -> BTreeMap<usize, String> {
    let mut m = BTreeMap::new();
    let mut add = |size: usize, name: &str| {
        m.entry(size).and_modify(|s: &mut String| *s = format!("{s} or {name}")).or_insert_with(|| name.to_string());
    };
    add(std::mem::size_of::<Record13>(), "Box<Record13>: TLS 1.3 keys, IVs, sequence numbers, traffic secrets");
    add(std::mem::size_of::<Identity>(), "Box<Identity> (user, device)");
    // ArcInner<str>: two counts, then the bytes, padded to 8.
    add((16 + user_len).next_multiple_of(8), "Arc<str>: user id");
    add((16 + device_len).next_multiple_of(8), "Arc<str>: device id");
    m
}

// ---------------------------------------------------------------------------
// The server in this process
// ---------------------------------------------------------------------------

/// What the in-process server logged (shown when it fails to start).
static LOG: Mutex<String> = Mutex::new(String::new());

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut l = LOG.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() < 1 << 20 {
            l.push_str(&String::from_utf8_lossy(b));
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct InProc {
    addr: SocketAddr,
    cert: PathBuf,
    _server: ringgate::runtime::server::Server,
    _dir: tempfile::TempDir,
}

fn workers() -> u32 {
    std::env::var("CONNMEM_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// The benchmark's settings (`bench/src/targets.rs`): idle connections
/// outlive the run without PINGs; per-address limits would refuse a ramp
/// from one address.
fn config() -> common::Config {
    common::Config::default()
        .workers(workers())
        .heartbeat_s(3600)
        .set("limits", "max_preauth_per_ip = 1000000")
        .set("limits", "connect_rate_per_ip = 1000000")
        .set("limits", "connect_rate = 1000000")
}

/// One server per process (its metrics and key-update settings are process-wide).
fn inproc() -> &'static InProc {
    static SERVER: OnceLock<InProc> = OnceLock::new();
    SERVER.get_or_init(|| {
        let trace = std::env::var("CONNMEM_TRACE_SIZES").unwrap_or_default();
        TRACE_BIG.store(std::env::var("CONNMEM_TRACE_BIG").map_or(0, |v| (v == "1") as i64), Relaxed);
        for (slot, size) in TRACE_SIZES.iter().zip(trace.split(',').filter_map(|v| v.parse::<i64>().ok())) {
            slot.store(size, Relaxed);
        }
        // As `src/main.rs` does before anything is allocated.
        // SAFETY: PR_SET_THP_DISABLE takes plain integers.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
        let _ = tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::INFO).with_writer(|| LogSink).try_init();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = ringgate::config::Config::from_toml_str(&config().to_toml(&data)).expect("config parses");
        // The handle reports the bound address (no log scraping).
        let server = ringgate::runtime::server::Server::start(cfg);
        let addr = match server.wait_listening(common::STARTUP) {
            Ok(b) => b.gateway,
            Err(e) => panic!("in-process server did not start: {e}\n{}", LOG.lock().unwrap_or_else(|e| e.into_inner())),
        };
        InProc { addr, cert: data.join("dev-cert.pem"), _server: server, _dir: dir }
    })
}

// ---------------------------------------------------------------------------
// The clients, in a child process
// ---------------------------------------------------------------------------

/// A child process holding connections; told what to open over stdin.
struct Clients {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

/// Users are `<tag><index, 7 digits>`: every id has the same length, so
/// their `Arc<str>` blocks fall in one size.
const USER_LEN: usize = 9;
const DEVICE: &str = "d";

impl Clients {
    fn spawn(addr: SocketAddr, cert: &Path, tag: char) -> Clients {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "client_child", "--ignored", "--nocapture", "--test-threads=1", "-q"])
            .env("CONNMEM_CLIENT", format!("{addr} {} {tag}", cert.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn client process");
        let to = child.stdin.take().unwrap();
        let from = BufReader::new(child.stdout.take().unwrap());
        Clients { child, to, from }
    }

    /// Opens connections `from..from + n`; returns how many got CONNACK 0.
    fn open(&mut self, from: u64, n: u64) -> u64 {
        writeln!(self.to, "OPEN {from} {n}").unwrap();
        self.to.flush().unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.from.read_line(&mut line).unwrap() > 0, "client process ended");
            if let Some(rest) = line.trim().strip_prefix("DONE ") {
                let mut it = rest.split(' ').map(|v| v.parse::<u64>().unwrap());
                let (ok, failed) = (it.next().unwrap(), it.next().unwrap());
                assert_eq!(failed, 0, "{failed} of {n} connections failed");
                return ok;
            }
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = writeln!(self.to, "QUIT");
        let _ = self.to.flush();
        let _ = self.child.wait();
    }
}

/// One client connection: TLS 1.3 handshake, CONNECT, CONNACK; then only
/// the socket is kept (the server sends nothing to an idle device).
fn open_one(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, user: &str) -> std::io::Result<TcpStream> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(common::WAIT))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let mut s = rustls::Stream::new(&mut tls, &mut sock);
    s.write_all(&Frame::Connect(Connect::new(common::token(user), DEVICE, 0)).encode())?;
    s.flush()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)?;
    if body.first() != Some(&common::ty::CONNACK) || body.get(1) != Some(&common::connack::OK) {
        return Err(std::io::Error::other(format!("not CONNACK 0: {:?}", &body[..body.len().min(2)])));
    }
    drop(s);
    assert_eq!(tls.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    Ok(sock)
}

fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write and read the local struct only.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

/// The client process (runs only when started by [`Clients::spawn`]).
#[test]
#[ignore = "the client half of the other tests, started by them"]
fn client_child() {
    let Ok(spec) = std::env::var("CONNMEM_CLIENT") else { return };
    let mut it = spec.split(' ');
    let (addr, cert, tag): (SocketAddr, PathBuf, String) =
        (it.next().unwrap().parse().unwrap(), it.next().unwrap().into(), it.next().unwrap().into());
    raise_nofile();
    let cfg = common::tls_config(&cert, TlsOptions { version: TlsVersion::Tls13, ..Default::default() });
    let mut held: Vec<TcpStream> = Vec::new();
    let mut line = String::new();
    let stdin = std::io::stdin();
    loop {
        line.clear();
        if stdin.lock().read_line(&mut line).unwrap_or(0) == 0 || line.trim() == "QUIT" {
            return;
        }
        let mut w = line.trim().strip_prefix("OPEN ").unwrap().split(' ').map(|v| v.parse::<u64>().unwrap());
        let (from, n) = (w.next().unwrap(), w.next().unwrap());
        let failed = AtomicI64::new(0);
        let threads = 2u64;
        let got: Vec<TcpStream> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let (cfg, tag, failed) = (&cfg, &tag, &failed);
                    sc.spawn(move || {
                        let mut mine = Vec::new();
                        for i in (from + t..from + n).step_by(threads as usize) {
                            match open_one(addr, cfg, &format!("{tag}{i:0w$}", w = USER_LEN - 1)) {
                                Ok(s) => mine.push(s),
                                Err(e) => {
                                    if failed.fetch_add(1, Relaxed) < 3 {
                                        eprintln!("connection {i}: {e}");
                                    }
                                }
                            }
                        }
                        mine
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let ok = got.len();
        held.extend(got);
        println!("DONE {ok} {}", failed.load(Relaxed));
        std::io::stdout().flush().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------

/// Tests share the process's counters: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Waits until `fds()` reached `want` (the server accepted and registered
/// every connection), then lets it settle.
fn settle(fds: impl Fn() -> i64, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while fds() < want {
        assert!(Instant::now() < deadline, "server holds {} fds, expected {want}", fds());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
}

/// One row of the breakdown: bytes per connection.
struct Row {
    what: String,
    count: f64,
    requested: f64,
    usable: f64,
}

struct Breakdown {
    n: u64,
    rows: Vec<Row>,
    small_other_requested: f64,
    small_other_usable: f64,
    big: f64,
    requested: f64,
    usable: f64,
    c_heap: f64,
    rss: f64,
    rss_anon: f64,
}

/// Opens `warmup` then `n` idle connections to the in-process server and
/// measures what the `n` added.
fn measure_inproc(tag: char, warmup: u64, n: u64) -> Breakdown {
    let s = inproc();
    let mut c = Clients::spawn(s.addr, &s.cert, tag);
    assert_eq!(c.open(0, warmup), warmup);
    let fds0 = fd_count("self");
    settle(|| fd_count("self"), fds0);
    let a = Sample::take();
    assert_eq!(c.open(warmup, n), n);
    settle(|| fd_count("self"), a.fds + n as i64);
    let b = Sample::take();
    let nf = n as f64;
    let known = known_sizes(USER_LEN, DEVICE.len());
    let mut rows = Vec::new();
    let (mut other_req, mut other_use) = (0.0, 0.0);
    for size in 0..SMALL {
        let d = (b.by_size[size] - a.by_size[size]) as f64;
        if d == 0.0 {
            continue;
        }
        // SAFETY: mi_good_size only computes a size class.
        let good = unsafe { mi_good_size(size.max(1)) } as f64;
        if d.abs() >= nf / 20.0 {
            let what = known.get(&size).cloned().unwrap_or_else(|| "?".into());
            rows.push(Row { what: format!("{size} B: {what}"), count: d / nf, requested: d * size as f64 / nf, usable: d * good / nf });
        } else {
            other_req += d * size as f64 / nf;
            other_use += d * good / nf;
        }
    }
    rows.sort_by(|x, y| y.usable.total_cmp(&x.usable));
    drop(c);
    Breakdown {
        n,
        rows,
        small_other_requested: other_req,
        small_other_usable: other_use,
        big: (b.big_bytes - a.big_bytes) as f64 / nf,
        requested: (b.requested - a.requested) as f64 / nf,
        usable: (b.usable - a.usable) as f64 / nf,
        c_heap: (b.c_heap - a.c_heap) as f64 / nf,
        rss: (b.rss - a.rss) as f64 / nf,
        rss_anon: (b.rss_anon - a.rss_anon) as f64 / nf,
    }
}

fn print(b: &Breakdown) {
    println!("\nserver memory per idle TLS 1.3 connection, {} connections, {} worker(s), in-process server:", b.n, workers());
    println!("| allocation (size: what) | blocks/conn | requested B | usable B (mimalloc class) |");
    println!("|---|---:|---:|---:|");
    for r in &b.rows {
        println!("| {} | {:.2} | {:.0} | {:.0} |", r.what, r.count, r.requested, r.usable);
    }
    println!("| other small blocks (< N/20 each) | | {:.0} | {:.0} |", b.small_other_requested, b.small_other_usable);
    println!("| blocks ≥ 8 KiB (slabs, tables; growth amortised) | | {:.0} | {:.0} |", b.big, b.big);
    println!("| **Rust heap** | | **{:.0}** | **{:.0}** |", b.requested, b.usable);
    println!("| C heap (glibc malloc: aws-lc) | | {:.0} | |", b.c_heap);
    println!("| allocator pages not holding live blocks (RssAnon − usable − C heap) | | | {:.0} |", b.rss_anon - b.usable - b.c_heap);
    println!("| **RssAnon** | | | **{:.0}** |", b.rss_anon);
    println!("| VmRSS | | | {:.0} |", b.rss);
}

fn print_layout() {
    use std::mem::size_of;
    println!("\nsize_of (bytes):");
    for (what, size) in [
        ("Conn (in the core's slab, with its slot)", size_of::<Conn>()),
        ("  Session (in Conn)", size_of::<ringgate::proto::session::Session>()),
        ("  Tls (in Conn)", size_of::<Tls>()),
        ("  BytesMut ×4 (in Conn, unallocated while idle)", 4 * size_of::<bytes::BytesMut>()),
        ("  Option<Waker> (in Conn)", size_of::<Option<std::task::Waker>>()),
        ("Record13 (boxed)", size_of::<Record13>()),
        ("Identity (boxed)", size_of::<Identity>()),
    ] {
        println!("  {what}: {size}");
    }
}

#[test]
#[ignore = "10,000 connections (~30 s): the breakdown in docs/measurements.md"]
fn conn_memory_breakdown() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile();
    let n: u64 = std::env::var("CONNMEM_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let b = measure_inproc('b', 1_000, n);
    print_layout();
    print(&b);

    // The binary, same clients, same method: RSS only.
    let server = config().start();
    let pid = server.pid();
    let mut c = Clients::spawn(server.addr(), server.cert_path(), 'x');
    assert_eq!(c.open(0, 1_000), 1_000);
    let pids = pid.to_string();
    let fds0 = fd_count(&pids);
    settle(|| fd_count(&pids), fds0);
    let (r0, a0) = rss_of(pid);
    assert_eq!(c.open(1_000, n), n);
    settle(|| fd_count(&pids), fds0 + n as i64);
    let (r1, a1) = rss_of(pid);
    println!(
        "\nthe ringgate binary, same clients: VmRSS {:.0} B/conn, RssAnon {:.0} B/conn",
        (r1 - r0) as f64 / n as f64,
        (a1 - a0) as f64 / n as f64
    );
}

#[test]
fn conn_memory_bounds() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile();
    let b = measure_inproc('t', 600, 1_000);
    print(&b);
    // Blocks an idle connection holds itself (the task, the record layer,
    // the device, the ids, the socket's `Rc`): 976 B measured; a buffer
    // left allocated while idle (208 B) or a task in the next size class
    // (+128 B) goes over.
    let own = b.usable - b.big;
    assert!(own <= 1_100.0, "{own:.0} B of small blocks per idle connection");
    let rec = b.rows.iter().find(|r| r.what.contains("Record13")).map_or(0.0, |r| r.count);
    assert!((0.95..=1.05).contains(&rec), "{rec:.2} Record13 per connection");
    assert!(b.c_heap.abs() < 64.0, "{:.0} B of C heap per idle connection", b.c_heap);
}
