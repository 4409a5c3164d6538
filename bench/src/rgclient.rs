//! ringgate protocol v1 client helpers over any async byte stream: tokens, CONNECT/CONNACK, frame reading, timestamped payloads.
//!
//! Frames are built and parsed with the server's own codec
//! (`ringgate::proto::frame`), so the load generator cannot drift from the
//! wire format; PROTOCOL.md is the contract both follow.

use std::io;

use bytes::{Buf, BytesMut};
use ringgate::proto::frame::{self, ConnAck, Connect, Frame, Send, Utf8Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames the client accepts (the server's default is 64 KiB).
pub const CLIENT_MAX_FRAME: u32 = 1 << 20;

/// Unix seconds now.
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An HS256 token with `sub = user`, signed with the secret the bench wrote into the server config.
pub fn token(key: &ringgate::auth::JwtKey, user: &str, ttl_s: u64) -> String {
    key.mint(user, unix_now_s(), ttl_s)
}

pub fn encode_connect(out: &mut BytesMut, device: &str, token: &str, last_seq: u64, keepalive_s: u16) {
    Frame::Connect(Connect {
        version: 1,
        keepalive_s,
        device_id: Utf8Bytes::from(device),
        token: Utf8Bytes::from(token),
        last_seq,
    })
    .encode(out);
}

pub fn encode_send(out: &mut BytesMut, client_msg_id: u64, target_user: &str, payload: &[u8]) {
    Frame::Send(Send {
        client_msg_id,
        target_kind: 1,
        target: Utf8Bytes::from(target_user),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
    .encode(out);
}

pub fn encode_pushack(out: &mut BytesMut, seq: u64) {
    Frame::PushAck { seq }.encode(out);
}

/// Decodes one buffered frame, or reads until one is complete. `Ok(None)`: clean EOF.
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, rbuf: &mut BytesMut) -> io::Result<Option<Frame>> {
    loop {
        match frame::decode(rbuf, CLIENT_MAX_FRAME) {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        rbuf.reserve(4096);
        if s.read_buf(rbuf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Decodes one frame that is already buffered, without reading.
pub fn next_buffered(rbuf: &mut BytesMut) -> io::Result<Option<Frame>> {
    frame::decode(rbuf, CLIENT_MAX_FRAME).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Sends CONNECT and waits for CONNACK; a refusal or DISCONNECT is an error.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    rbuf: &mut BytesMut,
    device: &str,
    token: &str,
    last_seq: u64,
) -> io::Result<ConnAck> {
    connect_keepalive(s, rbuf, device, token, last_seq, 0).await
}

/// [`connect`] asking for a heartbeat interval (`keepalive_s`, 0 = the server's).
pub async fn connect_keepalive<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    rbuf: &mut BytesMut,
    device: &str,
    token: &str,
    last_seq: u64,
    keepalive_s: u16,
) -> io::Result<ConnAck> {
    let mut out = BytesMut::with_capacity(64 + token.len());
    encode_connect(&mut out, device, token, last_seq, keepalive_s);
    s.write_all(&out).await?;
    s.flush().await?;
    s.flush().await?;
    match read_frame(s, rbuf).await? {
        Some(Frame::ConnAck(c)) if c.status == 0 => Ok(c),
        Some(Frame::ConnAck(c)) => Err(io::Error::other(format!("CONNACK status {}", c.status))),
        Some(Frame::Disconnect { reason, message }) => {
            Err(io::Error::other(format!("DISCONNECT({reason}) before CONNACK: {}", message.as_str())))
        }
        Some(f) => Err(io::Error::other(format!("expected CONNACK, got {}", f.name()))),
        None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before CONNACK")),
    }
}

/// Smallest payload: the 8-byte send timestamp and the 4-byte sender index.
pub const MIN_PAYLOAD: usize = 12;

/// A payload of `size` bytes (at least 12): `ts_ns` big-endian, then the
/// sending connection's index (so a receiver can credit the sender's
/// end-to-end window), then padding.
pub fn stamped_payload(ts_ns: u64, sender: u32, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&ts_ns.to_be_bytes());
    out.extend_from_slice(&sender.to_be_bytes());
    out.resize(size.max(MIN_PAYLOAD), b'.');
}

/// The timestamp a [`stamped_payload`] carries.
pub fn payload_ts(p: &[u8]) -> Option<u64> {
    let mut b = p.get(..8)?;
    Some(b.get_u64())
}

/// The sender index a [`stamped_payload`] carries.
pub fn payload_sender(p: &[u8]) -> Option<u32> {
    let mut b = p.get(8..12)?;
    Some(b.get_u32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_payload_round_trip_and_minimum() {
        let mut p = Vec::new();
        stamped_payload(0x0102_0304_0506_0708, 7, 32, &mut p);
        assert_eq!(p.len(), 32);
        assert_eq!(payload_ts(&p), Some(0x0102_0304_0506_0708));
        assert_eq!(payload_sender(&p), Some(7));
        stamped_payload(5, 1, 2, &mut p);
        assert_eq!(p.len(), 12, "never shorter than timestamp + sender");
        assert_eq!(payload_ts(&p[..7]), None);
        assert_eq!(payload_sender(&p[..11]), None);
    }

    #[test]
    fn token_verifies_with_the_server_key() {
        let key = ringgate::auth::JwtKey::new(b"bench-secret");
        let t = token(&key, "u42", 60);
        let c = key.verify(&t, unix_now_s()).unwrap();
        assert_eq!(c.sub, "u42");
        assert!(c.exp > unix_now_s());
        assert!(ringgate::auth::JwtKey::new(b"other").verify(&t, unix_now_s()).is_err());
    }

    #[test]
    fn connect_handshake_against_a_scripted_server() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut client, mut server) = tokio::io::duplex(4096);
            let srv = tokio::spawn(async move {
                let mut rbuf = BytesMut::new();
                let f = read_frame(&mut server, &mut rbuf).await.unwrap().unwrap();
                let Frame::Connect(c) = f else { panic!("not CONNECT: {f:?}") };
                assert_eq!((c.version, c.device_id.as_str(), c.last_seq), (1, "d1", 9));
                let mut out = BytesMut::new();
                Frame::ConnAck(ConnAck {
                    status: 0,
                    user_id: "u".into(),
                    heartbeat_s: 30,
                    max_frame: 65536,
                    oldest_seq: 1,
                    head_seq: 12,
                    server_time_ms: 1,
                })
                .encode(&mut out);
                // A PUSH right behind the CONNACK must stay buffered for the caller.
                frame::encode_push(&mut out, 10, 1, 1, "s", 1, b"p");
                server.write_all(&out).await.unwrap();
                server.flush().await.unwrap();
                server
            });
            let mut rbuf = BytesMut::new();
            let ack = connect(&mut client, &mut rbuf, "d1", "tok", 9).await.unwrap();
            assert_eq!(ack.head_seq, 12);
            let _server = srv.await.unwrap();
            match read_frame(&mut client, &mut rbuf).await.unwrap() {
                Some(Frame::Push(p)) => assert_eq!(p.seq, 10),
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn refused_connect_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (mut client, mut server) = tokio::io::duplex(4096);
            let mut out = BytesMut::new();
            Frame::ConnAck(ConnAck {
                status: 2,
                user_id: "".into(),
                heartbeat_s: 30,
                max_frame: 1,
                oldest_seq: 0,
                head_seq: 0,
                server_time_ms: 0,
            })
            .encode(&mut out);
            server.write_all(&out).await.unwrap();
            server.flush().await.unwrap();
            let mut rbuf = BytesMut::new();
            let e = connect(&mut client, &mut rbuf, "d", "bad", 0).await.unwrap_err();
            assert!(e.to_string().contains("status 2"), "{e}");
        });
    }
}
