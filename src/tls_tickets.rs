//! TLS 1.3 session ticket keys read from a file (`tls.ticket_key_file`), so a fleet sharing the file resumes each other's sessions, with rotation by replacing the file and reloading.
//!
//! A ticket is `key id (8) ‖ nonce (12) ‖ AES-256-GCM(session state) ‖
//! tag (16)`, sealed with aws-lc-rs's `RandomizedNonceKey` (it draws the
//! nonce), with the key id as associated data. The key id is a hash of the
//! key, so every node holding the same file names the key the same way and
//! a ticket says which key to try without trial decryption.
//!
//! Rotation: a reload that finds new bytes in the file makes them the
//! encrypting key and keeps the old one for decryption only, until
//! `tls.ticket_key_overlap_s` after the reload; one previous key is kept
//! (a second rotation within the overlap forgets the oldest). A restart
//! forgets the previous key: tickets sealed with it cost a full handshake,
//! nothing more. A ticketer is immutable, like the rustls `ServerConfig`
//! holding it; a rotation builds a new one.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

/// Raw key bytes in the file (as 64 hex digits).
pub const KEY_BYTES: usize = 32;
const ID_BYTES: usize = 8;
const TAG_BYTES: usize = 16;
/// How long a client may use a ticket (RFC 8446 caps it at 7 days); the
/// same 6 hours rustls' own ticketer uses, or the overlap when shorter, so
/// a ticket never outlives the key that can open it by much.
const LIFETIME_S: u32 = 6 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("tls.ticket_key_file {path}: {message}")]
    File { path: PathBuf, message: String },
}

/// One key and its id.
struct Key {
    id: [u8; ID_BYTES],
    aead: RandomizedNonceKey,
    raw: [u8; KEY_BYTES],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "Key({})", hex::encode(self.id))
    }
}

impl Key {
    fn new(raw: [u8; KEY_BYTES]) -> Self {
        let digest = Sha256::new().chain_update(b"ringgate ticket key id\0").chain_update(raw).finalize();
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(&digest[..ID_BYTES]);
        // AES-256 takes exactly 32 bytes, which `raw` is.
        let aead = RandomizedNonceKey::new(&AES_256_GCM, &raw).unwrap_or_else(|_| unreachable!("32-byte AES-256 key"));
        Key { id, aead, raw }
    }
}

/// The ticketer of one configuration: the current key, and the previous one
/// until a wall-clock deadline (Unix seconds).
#[derive(Debug)]
pub struct FileTicketer {
    current: Key,
    previous: Option<(Key, u64)>,
    lifetime_s: u32,
}

impl FileTicketer {
    /// A ticketer that encrypts with `raw` and decrypts nothing else.
    pub fn new(raw: [u8; KEY_BYTES], overlap_s: u64) -> Self {
        FileTicketer { current: Key::new(raw), previous: None, lifetime_s: lifetime(overlap_s) }
    }

    /// The ticketer after the file was read again at `now_s`: the same keys
    /// when `raw` did not change (the previous key keeps its deadline), else
    /// `raw` encrypting and today's key decrypting until `now_s + overlap_s`.
    pub fn rotated(&self, raw: [u8; KEY_BYTES], overlap_s: u64, now_s: u64) -> Self {
        let lifetime_s = lifetime(overlap_s);
        if raw == self.current.raw {
            let previous = self.previous.as_ref().map(|(k, until)| (Key::new(k.raw), *until));
            return FileTicketer { current: Key::new(raw), previous, lifetime_s };
        }
        FileTicketer {
            current: Key::new(raw),
            previous: Some((Key::new(self.current.raw), now_s.saturating_add(overlap_s))),
            lifetime_s,
        }
    }

    /// The id of the encrypting key, hex (logged; says nothing of the key).
    pub fn key_id(&self) -> String {
        hex::encode(self.current.id)
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut buf = Vec::with_capacity(ID_BYTES + NONCE_LEN + plain.len() + TAG_BYTES);
        buf.extend_from_slice(plain);
        let nonce = self.current.aead.seal_in_place_append_tag(Aad::from(&self.current.id), &mut buf).ok()?;
        let mut out = Vec::with_capacity(ID_BYTES + NONCE_LEN + buf.len());
        out.extend_from_slice(&self.current.id);
        let nonce: &[u8; NONCE_LEN] = nonce.as_ref();
        out.extend_from_slice(nonce);
        out.extend_from_slice(&buf);
        Some(out)
    }

    fn open(&self, ticket: &[u8], now_s: u64) -> Option<Vec<u8>> {
        if ticket.len() < ID_BYTES + NONCE_LEN + TAG_BYTES {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_BYTES);
        let key = if id == self.current.id {
            &self.current
        } else {
            match &self.previous {
                Some((k, until)) if id == k.id && now_s < *until => k,
                _ => return None,
            }
        };
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = key.aead.open_in_place(nonce, Aad::from(&key.id), &mut buf).ok()?.len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

fn lifetime(overlap_s: u64) -> u32 {
    (overlap_s.min(u64::from(LIFETIME_S)) as u32).max(1)
}

fn unix_now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl rustls::server::ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        self.lifetime_s
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, unix_now_s())
    }
}

/// Reads the key file, creating it (32 random bytes as hex, mode 0600)
/// when it does not exist. Returns the key and whether it was created.
pub fn load_or_create(path: &Path) -> Result<([u8; KEY_BYTES], bool), TicketKeyError> {
    let err = |message: String| TicketKeyError::File { path: path.to_path_buf(), message };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let hex_text = text.trim();
            let bytes = hex::decode(hex_text).map_err(|_| err(format!("must hold {} hex digits", KEY_BYTES * 2)))?;
            let raw: [u8; KEY_BYTES] =
                bytes.try_into().map_err(|_| err(format!("must hold {} hex digits (a 256-bit key)", KEY_BYTES * 2)))?;
            warn_if_readable_by_others(path);
            Ok((raw, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; KEY_BYTES];
            aws_lc_rs::rand::fill(&mut raw).map_err(|_| err("no randomness".into()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create its directory: {e}")))?;
            }
            crate::auth::write_private(path, format!("{}\n", hex::encode(raw)).as_bytes()).map_err(|e| err(e.to_string()))?;
            Ok((raw, true))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "the session ticket key file is readable by others: whoever reads it can decrypt resumed sessions' keys; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_rotation_overlap() {
        let a = FileTicketer::new([1; 32], 100);
        let t = a.seal(b"session").unwrap();
        assert_eq!(a.open(&t, 0).unwrap(), b"session");
        // Another node with the same key opens it; one with another key not.
        assert_eq!(FileTicketer::new([1; 32], 100).open(&t, 0).unwrap(), b"session");
        assert!(FileTicketer::new([2; 32], 100).open(&t, 0).is_none());
        // Rotated at t=1000: the old key opens until 1100, new tickets use the new key.
        let b = a.rotated([2; 32], 100, 1000);
        assert_eq!(b.open(&t, 1099).unwrap(), b"session");
        assert!(b.open(&t, 1100).is_none(), "past the overlap");
        let t2 = b.seal(b"two").unwrap();
        assert!(a.open(&t2, 0).is_none());
        assert_ne!(a.key_id(), b.key_id());
        // Re-reading the same file keeps the previous key's deadline.
        let c = b.rotated([2; 32], 100, 1050);
        assert_eq!(c.open(&t, 1099).unwrap(), b"session");
        assert!(c.open(&t, 1100).is_none());
        // A tampered ticket does not open.
        let mut bad = t2.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(b.open(&bad, 0).is_none());
        assert!(b.open(&t2[..10], 0).is_none());
    }

    #[test]
    fn file_created_private_then_read() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/ticket.key");
        let (k1, made) = load_or_create(&p).unwrap();
        assert!(made);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let (k2, made) = load_or_create(&p).unwrap();
        assert!(!made);
        assert_eq!(k1, k2);
        std::fs::write(&p, "abcd\n").unwrap();
        assert!(load_or_create(&p).unwrap_err().to_string().contains("hex digits"));
    }
}
