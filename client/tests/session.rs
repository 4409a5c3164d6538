//! The SDK's session rules against a scripted server on a real socket
//! (transport `tcp`, so the script sees the frames): PUSH dedup by seq and
//! cumulative PUSHACK, SEND retried with the same client_msg_id across a
//! reconnect and after SENDACK 5, a fresh token per connection, immediate
//! reconnect on DISCONNECT 6 right after a win, heartbeat PINGs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringgate_client::{BackoffPolicy, Client, ClientConfig, Endpoint, TokenSource, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// A frame as the script sees it: type and body.
type Frame = (u8, Vec<u8>);

async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut len)).await.ok()?.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    let ty = body.remove(0);
    Some((ty, body))
}

fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(ty);
    v.extend_from_slice(body);
    v
}

fn s16(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

fn connack(status: u8, heartbeat_s: u16) -> Vec<u8> {
    let mut b = vec![status];
    b.extend(s16("alice"));
    b.extend(heartbeat_s.to_be_bytes());
    b.extend(65536u32.to_be_bytes());
    b.extend(1u64.to_be_bytes());
    b.extend(0u64.to_be_bytes());
    b.extend(0u64.to_be_bytes());
    frame(0x02, &b)
}

fn push(seq: u64, payload: &str) -> Vec<u8> {
    let mut b = seq.to_be_bytes().to_vec();
    b.extend(seq.to_be_bytes());
    b.extend(0u64.to_be_bytes());
    b.extend(s16("bob"));
    b.push(0);
    b.extend(payload.as_bytes());
    frame(0x05, &b)
}

fn sendack(cmid: u64, status: u8) -> Vec<u8> {
    let mut b = cmid.to_be_bytes().to_vec();
    b.push(status);
    b.extend(42u64.to_be_bytes());
    b.extend(0u64.to_be_bytes());
    frame(0x04, &b)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// CONNECT body → (token, last_seq).
fn parse_connect(b: &[u8]) -> (String, u64) {
    let dl = u16::from_be_bytes([b[3], b[4]]) as usize;
    let at = 5 + dl;
    let tl = u16::from_be_bytes([b[at], b[at + 1]]) as usize;
    let token = String::from_utf8(b[at + 2..at + 2 + tl].to_vec()).unwrap();
    (token, u64_at(b, at + 2 + tl))
}

fn tcp_endpoint(port: u16) -> Endpoint {
    Endpoint { id: "script".into(), transport: "tcp".into(), host: None, addr: Some("127.0.0.1".into()), port, sni: None, priority: 0, weight: 100 }
}

fn config(port: u16, token: TokenSource) -> ClientConfig {
    let mut c = ClientConfig::new("dev", token).trust(Trust::Insecure).backoff(BackoffPolicy { base_ms: 20, cap_ms: 100, jitter: 0.0 });
    c.fallback = vec![tcp_endpoint(port)];
    c
}

/// Reads frames until one of type `ty`, answering PINGs.
async fn expect(s: &mut TcpStream, ty: u8) -> Vec<u8> {
    loop {
        let (t, b) = read_frame(s).await.unwrap_or_else(|| panic!("no frame {ty:#x}"));
        if t == ty {
            return b;
        }
        if t == 0x07 {
            let _ = s.write_all(&frame(0x08, &b)).await;
        }
    }
}

#[tokio::test]
async fn dedup_ack_send_retry_and_token_per_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let tokens = Arc::new(AtomicUsize::new(0));
    let t2 = tokens.clone();
    let hook: ringgate_client::client::TokenFn = Arc::new(move || {
        let n = t2.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(format!("token-{n}")) })
    });
    let server = tokio::spawn(async move {
        // Connection 1: CONNECT with the first token and last_seq 0.
        let (mut s, _) = l.accept().await.unwrap();
        let (_, b) = read_frame(&mut s).await.unwrap();
        assert_eq!(parse_connect(&b), ("token-0".into(), 0));
        s.write_all(&connack(0, 30)).await.unwrap();
        // seq 1, its retransmission, seq 2.
        s.write_all(&[push(1, "one"), push(1, "one"), push(2, "two")].concat()).await.unwrap();
        // The client acks cumulatively once the app took both, and sends
        // (in either order).
        let mut acked = 0;
        let mut send1 = None;
        while acked < 2 || send1.is_none() {
            let (t, b) = read_frame(&mut s).await.expect("PUSHACK and SEND");
            match t {
                0x06 => acked = u64_at(&b, 0),
                0x03 => send1 = Some(b),
                _ => {}
            }
        }
        // Drop the connection without answering the SEND.
        let send1 = send1.unwrap();
        let cmid = u64_at(&send1, 0);
        drop(s);
        // Connection 2: a fresh token, last_seq 2, and the same SEND again.
        let (mut s, _) = l.accept().await.unwrap();
        let (_, b) = read_frame(&mut s).await.unwrap();
        assert_eq!(parse_connect(&b), ("token-1".into(), 2));
        s.write_all(&connack(0, 30)).await.unwrap();
        let again = expect(&mut s, 0x03).await;
        assert_eq!(again, send1, "retried with the same client_msg_id and body");
        // Busy: the client must retry on its own.
        s.write_all(&sendack(cmid, 5)).await.unwrap();
        let third = expect(&mut s, 0x03).await;
        assert_eq!(u64_at(&third, 0), cmid);
        s.write_all(&sendack(cmid, 0)).await.unwrap();
        // Replayed seq 2 is a duplicate and never reaches the app; seq 3 does.
        s.write_all(&[push(2, "two"), push(3, "three")].concat()).await.unwrap();
        let mut acked = 0;
        while acked < 3 {
            acked = u64_at(&expect(&mut s, 0x06).await, 0);
        }
        s
    });
    let mut c = Client::connect(config(port, TokenSource::Hook(hook))).await.unwrap();
    let a = c.recv().await.unwrap();
    let b = c.recv().await.unwrap();
    assert_eq!((a.seq, &a.payload[..], b.seq), (1, &b"one"[..], 2));
    let ack = tokio::time::timeout(WAIT, c.send_to_user("bob", b"hello")).await.expect("SENDACK").unwrap();
    assert_eq!((ack.status, ack.msg_id), (0, 42));
    let m = c.recv().await.unwrap();
    assert_eq!(m.seq, 3, "seq 2 was not delivered twice");
    assert_eq!(c.counters().duplicate_pushes.load(Ordering::SeqCst), 2);
    assert_eq!(c.last_seq(), 3);
    let _s = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(tokens.load(Ordering::SeqCst), 2, "one token per connection");
}

#[tokio::test]
async fn replaced_right_after_win_reconnects_without_backoff_and_pings() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_frame(&mut s).await.unwrap();
        s.write_all(&connack(0, 1)).await.unwrap();
        let mut d = vec![6u8];
        d.extend(s16("replaced"));
        s.write_all(&frame(0x09, &d)).await.unwrap();
        let t = Instant::now();
        let (mut s, _) = l.accept().await.unwrap();
        let gap = t.elapsed();
        read_frame(&mut s).await.unwrap();
        // Heartbeat 1 s: PINGs come about every half second.
        s.write_all(&connack(0, 1)).await.unwrap();
        let t = Instant::now();
        let (ty, _) = read_frame(&mut s).await.unwrap();
        (gap, ty, t.elapsed())
    });
    let mut cfg = config(port, TokenSource::Static("t".into()));
    // A backoff this long would show.
    cfg.backoff = BackoffPolicy { base_ms: 5000, cap_ms: 5000, jitter: 0.0 };
    let _c = Client::connect(cfg).await.unwrap();
    let (gap, ty, ping_after) = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert!(gap < Duration::from_millis(2000), "reconnected after {gap:?}");
    assert_eq!(ty, 0x07, "a PING");
    assert!(ping_after < Duration::from_millis(1500), "{ping_after:?}");
}

#[tokio::test]
async fn bad_token_is_a_typed_error() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        read_frame(&mut s).await.unwrap();
        s.write_all(&connack(2, 30)).await.unwrap();
    });
    let r = Client::connect(config(port, TokenSource::Static("t".into()))).await;
    assert!(matches!(r, Err(ringgate_client::Error::BadToken)), "{:?}", r.err());
}
