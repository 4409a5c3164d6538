//! TLS 1.3 record protection after the handshake, so an idle TLS connection keeps ~120 bytes of keys instead of rustls' whole state.
//!
//! rustls runs the handshake. Once it is complete and its last records (the
//! server Finished and the session ticket) are on the wire, the connection
//! extracts the traffic keys (`dangerous_extract_secrets`, the same hand-off
//! kTLS uses) and drops the `ServerConnection` (≈8 KB measured per idle
//! connection). From then on this module seals and opens application-data
//! records itself, with aws-lc-rs AEADs (the provider rustls used). The AEAD
//! key schedule is expanded per batch of records, not kept, so what stays
//! resident per connection is two keys, two IVs and two sequence numbers.
//!
//! What this layer does not do, and how it fails safely:
//! - TLS 1.2 connections are not handed off (they stay on rustls);
//! - a client KeyUpdate cannot be followed (the traffic secret is gone):
//!   the connection is closed and the client reconnects with fresh keys;
//! - before a key reaches its confidentiality limit (2^23 records for
//!   AES-GCM) the connection is closed for the same reason.
//!
//! Every record is checked: outer type application_data, length within
//! 2^14 + 256, AEAD tag, non-empty inner plaintext with a known type.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use bytes::{Buf, BytesMut};
use rustls::ConnectionTrafficSecrets;

/// TLS record header length.
pub const HEADER_LEN: usize = 5;
/// Largest TLS 1.3 ciphertext (RFC 8446 §5.2).
pub const MAX_CIPHERTEXT: usize = (1 << 14) + 256;
/// Largest TLS 1.2 ciphertext (RFC 5246 §6.2.3), the bound while rustls reads.
pub const MAX_CIPHERTEXT_TLS12: usize = (1 << 14) + 2048;
/// Largest plaintext per record.
const MAX_PLAINTEXT: usize = 1 << 14;
const TAG_LEN: usize = 16;
/// Records per key before we close (AES-GCM's limit in rustls is 2^23; we stop short).
const RECORD_LIMIT: u64 = (1 << 23) - 1024;

const CT_ALERT: u8 = 0x15;
const CT_HANDSHAKE: u8 = 0x16;
const CT_APPDATA: u8 = 0x17;

/// Why a record could not be handled. All but `Limit` are the peer's fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("TLS record of type {0:#04x} after the handshake")]
    UnexpectedType(u8),
    #[error("TLS record of {0} bytes exceeds the limit")]
    Overflow(usize),
    #[error("TLS record failed authentication (bad_record_mac)")]
    BadMac,
    #[error("TLS record with no content type")]
    Empty,
    #[error("TLS alert {0} from the peer")]
    PeerAlert(u8),
    #[error("TLS KeyUpdate from the peer is not supported after hand-off; reconnect")]
    KeyUpdate,
    #[error("TLS handshake message {0} after the handshake")]
    PostHandshake(u8),
    #[error("TLS key used for too many records; reconnect")]
    Limit,
    #[error("unsupported cipher for record hand-off")]
    Cipher,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20,
}

impl Alg {
    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Alg::Aes128Gcm => &aead::AES_128_GCM,
            Alg::Aes256Gcm => &aead::AES_256_GCM,
            Alg::Chacha20 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// One direction's key material.
struct Dir {
    key: [u8; 32],
    iv: [u8; 12],
    seq: u64,
}

impl Dir {
    fn from_secrets(seq: u64, s: &ConnectionTrafficSecrets) -> Result<(Alg, Dir), RecordError> {
        let (alg, key, iv) = match s {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Alg::Aes128Gcm, key.as_ref(), iv.as_ref()),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Alg::Aes256Gcm, key.as_ref(), iv.as_ref()),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (Alg::Chacha20, key.as_ref(), iv.as_ref()),
            _ => return Err(RecordError::Cipher),
        };
        if key.len() > 32 || iv.len() != 12 {
            return Err(RecordError::Cipher);
        }
        let mut d = Dir { key: [0; 32], iv: [0; 12], seq };
        d.key[..key.len()].copy_from_slice(key);
        d.iv.copy_from_slice(iv);
        Ok((alg, d))
    }

    fn nonce(&self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    fn bind(&self, alg: Alg) -> LessSafeKey {
        let len = alg.aead().key_len();
        // The length matches the algorithm by construction in from_secrets.
        let unbound = UnboundKey::new(alg.aead(), &self.key[..len]).unwrap_or_else(|_| unreachable!("key length fixed by suite"));
        LessSafeKey::new(unbound)
    }
}

/// TLS 1.3 traffic keys of one connection after the handshake.
pub struct Record13 {
    alg: Alg,
    tx: Dir,
    rx: Dir,
}

/// What opening the buffered records produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Application data was appended (possibly none); more may come.
    More,
    /// The peer sent close_notify.
    CloseNotify,
}

impl Record13 {
    pub fn new(secrets: rustls::ExtractedSecrets) -> Result<Self, RecordError> {
        let (alg, tx) = Dir::from_secrets(secrets.tx.0, &secrets.tx.1)?;
        let (alg_rx, rx) = Dir::from_secrets(secrets.rx.0, &secrets.rx.1)?;
        if alg != alg_rx {
            return Err(RecordError::Cipher);
        }
        Ok(Self { alg, tx, rx })
    }

    /// Opens every complete record at the front of `input` (consuming it)
    /// and appends application data to `plain`. A partial record stays.
    pub fn open_all(&mut self, input: &mut BytesMut, plain: &mut BytesMut) -> Result<Opened, RecordError> {
        let mut key: Option<LessSafeKey> = None;
        while let Some(len) = complete_record(input, MAX_CIPHERTEXT)? {
            if input[0] != CT_APPDATA {
                return Err(RecordError::UnexpectedType(input[0]));
            }
            if self.rx.seq >= RECORD_LIMIT {
                return Err(RecordError::Limit);
            }
            let mut rec = input.split_to(len);
            let (hdr, body) = rec.split_at_mut(HEADER_LEN);
            let k = key.get_or_insert_with(|| self.rx.bind(self.alg));
            let pt = k
                .open_in_place(self.rx.nonce(), Aad::from(&hdr[..]), body)
                .map_err(|_| RecordError::BadMac)?;
            self.rx.seq += 1;
            // Inner plaintext: content, content type, zero padding.
            let end = pt.iter().rposition(|&b| b != 0).ok_or(RecordError::Empty)?;
            let ty = pt[end];
            let content = &pt[..end];
            match ty {
                CT_APPDATA => plain.extend_from_slice(content),
                CT_ALERT => {
                    if content.len() == 2 && content[1] == 0 {
                        return Ok(Opened::CloseNotify);
                    }
                    return Err(RecordError::PeerAlert(content.get(1).copied().unwrap_or(255)));
                }
                CT_HANDSHAKE => {
                    // 24 = key_update; anything else (new tickets are ours
                    // to send, not the client's) is out of place.
                    let t = content.first().copied().unwrap_or(0);
                    return Err(if t == 24 { RecordError::KeyUpdate } else { RecordError::PostHandshake(t) });
                }
                other => return Err(RecordError::UnexpectedType(other)),
            }
        }
        Ok(Opened::More)
    }

    /// Seals all of `plain` (consuming it) into records appended to `wire`.
    pub fn seal_all(&mut self, plain: &mut BytesMut, wire: &mut BytesMut) -> Result<(), RecordError> {
        if plain.is_empty() {
            return Ok(());
        }
        let key = self.tx.bind(self.alg);
        while !plain.is_empty() {
            let n = plain.len().min(MAX_PLAINTEXT);
            self.seal_one(&key, &plain[..n], CT_APPDATA, wire)?;
            plain.advance(n);
        }
        Ok(())
    }

    /// Appends an encrypted close_notify alert to `wire`.
    pub fn close_notify(&mut self, wire: &mut BytesMut) -> Result<(), RecordError> {
        let key = self.tx.bind(self.alg);
        self.seal_one(&key, &[1, 0], CT_ALERT, wire)
    }

    fn seal_one(&mut self, key: &LessSafeKey, content: &[u8], ty: u8, wire: &mut BytesMut) -> Result<(), RecordError> {
        if self.tx.seq >= RECORD_LIMIT {
            return Err(RecordError::Limit);
        }
        let ct_len = content.len() + 1 + TAG_LEN;
        let start = wire.len();
        wire.reserve(HEADER_LEN + ct_len);
        wire.extend_from_slice(&[CT_APPDATA, 0x03, 0x03]);
        wire.extend_from_slice(&(ct_len as u16).to_be_bytes());
        wire.extend_from_slice(content);
        wire.extend_from_slice(&[ty]);
        let (hdr, body) = wire[start..].split_at_mut(HEADER_LEN);
        let tag = key
            .seal_in_place_separate_tag(self.tx.nonce(), Aad::from(&hdr[..]), body)
            .map_err(|_| RecordError::Limit)?;
        wire.extend_from_slice(tag.as_ref());
        self.tx.seq += 1;
        Ok(())
    }
}

/// Length of the complete record at the front of `buf`, if it is all there.
pub fn complete_record(buf: &[u8], max: usize) -> Result<Option<usize>, RecordError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len > max {
        return Err(RecordError::Overflow(len));
    }
    Ok((buf.len() >= HEADER_LEN + len).then_some(HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(alg_secret: fn() -> ConnectionTrafficSecrets) -> (Record13, Record13) {
        let a = Record13::new(rustls::ExtractedSecrets { tx: (0, alg_secret()), rx: (5, alg_secret()) }).unwrap();
        // b's rx is a's tx and vice versa (same secret here, seqs crossed).
        let b = Record13::new(rustls::ExtractedSecrets { tx: (5, alg_secret()), rx: (0, alg_secret()) }).unwrap();
        (a, b)
    }

    fn aes128() -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes128Gcm { key: rustls::crypto::cipher::AeadKey::from([7u8; 32]), iv: rustls::crypto::cipher::Iv::copy(&[9u8; 12]) }
    }

    #[test]
    fn round_trip_and_tamper() {
        let (mut a, mut b) = pair(aes128);
        let big = vec![0xabu8; 40_000];
        let mut plain = BytesMut::from(&big[..]);
        let mut wire = BytesMut::new();
        a.seal_all(&mut plain, &mut wire).unwrap();
        assert!(plain.is_empty());
        let mut wire2 = wire.clone();
        // Delivered in two pieces: the first part leaves a partial record.
        let mut got = BytesMut::new();
        let mut first = wire.split_to(20_000);
        assert_eq!(b.open_all(&mut first, &mut got), Ok(Opened::More));
        first.extend_from_slice(&wire);
        assert_eq!(b.open_all(&mut first, &mut got), Ok(Opened::More));
        assert!(first.is_empty());
        assert_eq!(&got[..], &big[..]);
        // A flipped bit fails authentication.
        let (_, mut c) = pair(aes128);
        wire2[10] ^= 1;
        assert_eq!(c.open_all(&mut wire2, &mut got), Err(RecordError::BadMac));
    }

    #[test]
    fn close_notify_is_seen() {
        let (mut a, mut b) = pair(aes128);
        let mut wire = BytesMut::new();
        a.close_notify(&mut wire).unwrap();
        assert_eq!(b.open_all(&mut wire, &mut BytesMut::new()), Ok(Opened::CloseNotify));
    }

    #[test]
    fn oversized_and_plaintext_records_refused() {
        let (_, mut b) = pair(aes128);
        let mut rec = BytesMut::from(&[0x17, 3, 3, 0xff, 0xff][..]);
        assert_eq!(b.open_all(&mut rec, &mut BytesMut::new()), Err(RecordError::Overflow(0xffff)));
        let mut rec = BytesMut::from(&[0x16, 3, 3, 0, 1, 0][..]);
        assert_eq!(b.open_all(&mut rec, &mut BytesMut::new()), Err(RecordError::UnexpectedType(0x16)));
    }
}
