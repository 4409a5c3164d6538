//! TLS 1.3 record protection after the handshake, so an idle TLS connection keeps ~220 bytes of keys instead of rustls' whole state.
//!
//! rustls runs the handshake. Once it is complete and its last records (the
//! server Finished and the session ticket) are on the wire, the connection
//! extracts the traffic keys (`dangerous_extract_secrets`, the same hand-off
//! kTLS uses) and drops the `ServerConnection` (≈8 KB measured per idle
//! connection). From then on this module seals and opens records itself,
//! with aws-lc-rs AEADs (the provider rustls used). What stays resident per
//! connection is two raw keys, two IVs, two sequence numbers, the two
//! traffic secrets (for KeyUpdate) and an id (~220 bytes). The expanded AEAD
//! key schedules (the AES round keys and GHASH table, ~0.5 KB per
//! direction) live in a small per-thread cache ([`KeyCache`]) keyed by that
//! id: a connection active in the last few hundred flushes on this core
//! finds its keys there, an idle one pays one key expansion (~0.5 µs) when
//! it wakes up.
//!
//! The traffic secrets come from rustls' key log hook ([`SecretLog`], set
//! on the server config): rustls hands out only keys and IVs at the
//! hand-off, and the next generation of keys after a KeyUpdate is derived
//! from the secret (RFC 8446 §7.2). rustls' `KernelConnection` would do
//! that derivation for us, but it keeps ~1 KB of key schedule per
//! connection for life; here it is two HKDF-Expand-Label calls with
//! aws-lc-rs' HKDF, checked against rustls' own derivation in the tests.
//!
//! What this layer does (RFC 8446 §5, §6, §4.6.3):
//! - every record is checked: outer type application_data (a
//!   change_cipher_spec or any plaintext record after the handshake is
//!   `unexpected_message`), ciphertext ≤ 2^14 + 256 and inner plaintext
//!   ≤ 2^14 + 1 bytes (`record_overflow`), the AEAD tag (`bad_record_mac`),
//!   a non-zero inner content type (`unexpected_message`), well-formed
//!   alerts (`decode_error`);
//! - KeyUpdate from the peer: the receiving keys move on; when it asks for
//!   one back, our KeyUpdate goes out before the next record we send and
//!   the sending keys move on too; a bad request value is
//!   `illegal_parameter`;
//! - our own KeyUpdate after `tls.key_update_after_records` records under
//!   one key, well before AES-GCM's confidentiality limit (§5.5);
//! - exactly one alert per connection: the error alert of the first
//!   [`RecordError`] (mapped to its alert in [`RecordError::alert`], the
//!   one place), or close_notify, never both and never twice.
//!
//! What it does not do: TLS 1.2 (those connections stay on rustls), and
//! handshake messages split across records after the handshake (only a
//! KeyUpdate can legally come from a client then; one split over two
//! records is refused with `unexpected_message`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use bytes::{Buf, BytesMut};
use rustls::{AlertDescription, ConnectionTrafficSecrets};

/// TLS record header length.
pub const HEADER_LEN: usize = 5;
/// Largest TLS 1.3 ciphertext (RFC 8446 §5.2).
pub const MAX_CIPHERTEXT: usize = (1 << 14) + 256;
/// Largest TLS 1.2 ciphertext (RFC 5246 §6.2.3), the bound while rustls reads.
pub const MAX_CIPHERTEXT_TLS12: usize = (1 << 14) + 2048;
/// Largest plaintext per record (content; in TLS 1.3 content plus padding).
pub const MAX_PLAINTEXT: usize = 1 << 14;
const TAG_LEN: usize = 16;
/// Records one key may seal before we send a KeyUpdate: the largest value
/// `tls.key_update_after_records` accepts. AES-GCM's confidentiality limit
/// is 2^24.5 full records (RFC 8446 §5.5); rustls rotates at 2^23 and so do
/// we at most, whatever the suite.
pub const MAX_RECORDS_PER_KEY: u64 = 1 << 23;
/// The default of `tls.key_update_after_records`.
pub const DEFAULT_KEY_UPDATE_AFTER_RECORDS: u64 = MAX_RECORDS_PER_KEY - (1 << 16);

const CT_CHANGE_CIPHER_SPEC: u8 = 0x14;
const CT_ALERT: u8 = 0x15;
const CT_HANDSHAKE: u8 = 0x16;
const CT_APPDATA: u8 = 0x17;
/// Handshake message type of KeyUpdate (RFC 8446 §4).
const HS_KEY_UPDATE: u8 = 24;
/// `KeyUpdateRequest` values (§4.6.3).
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;
/// Alert levels (§6).
const LEVEL_WARNING: u8 = 1;
const LEVEL_FATAL: u8 = 2;

/// Why a record could not be handled. Each variant says whose fault it is
/// and maps to the alert we send in one place, [`RecordError::alert`].
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Peer: a ciphertext longer than 2^14 + 256 bytes (§5.2), or during the
    /// handshake a plaintext record longer than 2^14 bytes (§5.1).
    #[error("TLS record of {0} bytes exceeds the limit")]
    Overflow(usize),
    /// Peer: inner plaintext (content, type, padding) over 2^14 + 1 bytes (§5.4).
    #[error("TLS record decrypts to {0} bytes, more than 2^14 + 1")]
    PlaintextOverflow(usize),
    /// Peer: the AEAD tag did not verify (§5.2).
    #[error("TLS record failed authentication (bad_record_mac)")]
    BadMac,
    /// Peer: a record of an outer type other than application_data after
    /// the handshake (plaintext records are over once keys are in use).
    #[error("TLS record of type {0:#04x} after the handshake")]
    UnexpectedType(u8),
    /// Peer: change_cipher_spec after the handshake (§5: only before Finished).
    #[error("TLS change_cipher_spec after Finished")]
    ChangeCipherSpec,
    /// Peer: an inner plaintext of zeros only, no content type (§5.4).
    #[error("TLS record with no content type")]
    NoContentType,
    /// Peer: an inner content type that cannot follow the handshake.
    #[error("TLS record of inner type {0:#04x} after the handshake")]
    UnexpectedInnerType(u8),
    /// Peer: an alert record that is not exactly a level and a description.
    #[error("malformed TLS alert record ({0} bytes)")]
    BadAlert(usize),
    /// The peer's own alert (not close_notify): answered with none.
    #[error("TLS alert {0} from the peer")]
    PeerAlert(u8),
    /// Peer: a handshake message other than KeyUpdate after the handshake.
    #[error("TLS handshake message {0} after the handshake")]
    PostHandshake(u8),
    /// Peer: a malformed handshake message (an empty handshake record, a
    /// KeyUpdate whose length is not 1).
    #[error("malformed TLS handshake message after the handshake")]
    BadHandshake,
    /// Peer: a handshake message split across records, or data after a
    /// KeyUpdate in its record (§5.1: a key change must align with a
    /// record boundary).
    #[error("TLS KeyUpdate not aligned with its record")]
    Misaligned,
    /// Peer: a KeyUpdate whose request_update is neither 0 nor 1 (§4.6.3).
    #[error("TLS KeyUpdate with request_update {0}")]
    KeyUpdateRequest(u8),
    /// Local: a sequence number ran out (2^64 records; unreachable).
    #[error("TLS sequence number exhausted")]
    Limit,
    /// Local: the handshake agreed on something the hand-off cannot carry.
    #[error("unsupported cipher for record hand-off")]
    Cipher,
    /// Local: rustls did not hand us the traffic secrets (the server
    /// config lacks [`SecretLog`]).
    #[error("TLS traffic secrets were not captured at the hand-off")]
    NoTrafficSecrets,
}

impl RecordError {
    /// The alert this error sends before the connection closes: the only
    /// place where record errors meet the wire. `None` when the peer ended
    /// it with an alert of its own (RFC 8446 §6.2: no answer to a fatal
    /// alert).
    pub fn alert(&self) -> Option<AlertDescription> {
        use AlertDescription as A;
        Some(match self {
            RecordError::Overflow(_) | RecordError::PlaintextOverflow(_) => A::RecordOverflow,
            RecordError::BadMac => A::BadRecordMac,
            RecordError::UnexpectedType(_)
            | RecordError::ChangeCipherSpec
            | RecordError::NoContentType
            | RecordError::UnexpectedInnerType(_)
            | RecordError::PostHandshake(_)
            | RecordError::Misaligned => A::UnexpectedMessage,
            RecordError::BadAlert(_) | RecordError::BadHandshake => A::DecodeError,
            RecordError::KeyUpdateRequest(_) => A::IllegalParameter,
            RecordError::Limit | RecordError::Cipher | RecordError::NoTrafficSecrets => A::InternalError,
            RecordError::PeerAlert(_) => return None,
        })
    }

    /// True when the peer broke the protocol (or ended it), false for our own failures.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, RecordError::Limit | RecordError::Cipher | RecordError::NoTrafficSecrets)
    }
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

    /// The suite's hash, which the traffic secrets are as long as: every
    /// TLS 1.3 suite binds its AEAD to one hash.
    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Alg::Aes256Gcm => hkdf::HKDF_SHA384,
            Alg::Aes128Gcm | Alg::Chacha20 => hkdf::HKDF_SHA256,
        }
    }

    fn hash_len(self) -> usize {
        match self {
            Alg::Aes256Gcm => 48,
            Alg::Aes128Gcm | Alg::Chacha20 => 32,
        }
    }
}

/// A TLS 1.3 application traffic secret (as long as the suite's hash).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    buf: [u8; 48],
    len: u8,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.len)
    }
}

impl Secret {
    /// A secret of these bytes (32 or 48 of them for the TLS 1.3 suites);
    /// `None` when longer than any suite's hash.
    pub fn from_bytes(s: &[u8]) -> Option<Self> {
        Self::new(s)
    }

    fn new(s: &[u8]) -> Option<Self> {
        let mut buf = [0; 48];
        buf.get_mut(..s.len())?.copy_from_slice(s);
        Some(Self { buf, len: s.len() as u8 })
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// The next generation, `application_traffic_secret_N+1` (RFC 8446 §7.2).
    fn next(&self, alg: Alg) -> Secret {
        let mut buf = [0; 48];
        let n = alg.hash_len();
        expand_label(alg, self.bytes(), b"traffic upd", &mut buf[..n]);
        Secret { buf, len: n as u8 }
    }
}

/// The output length asked of aws-lc-rs' HKDF-Expand.
struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) of RFC 8446 §7.1: the
/// HkdfLabel structure is encoded here, the HKDF itself is aws-lc-rs'.
fn expand_label(alg: Alg, secret: &[u8], label: &[u8], out: &mut [u8]) {
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    let prk = hkdf::Prk::new_less_safe(alg.hkdf(), secret);
    // Fails only for outputs over 255 hash blocks; ours are ≤ 48 bytes.
    prk.expand(&info, OutLen(out.len()))
        .and_then(|okm| okm.fill(out))
        .unwrap_or_else(|_| unreachable!("HKDF output of {} bytes", out.len()));
}

/// One direction's key material. Packed to 4-byte alignment: 52 bytes
/// instead of 56, so that [`Record13`] is 224 bytes, which mimalloc
/// serves from its 224-byte class instead of the 256-byte one (its
/// size is pinned in the tests; the `u64` is only read and written by
/// value, never borrowed, and an unaligned load costs nothing on the
/// targets we run on).
#[repr(packed(4))]
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

    /// The keys of a traffic secret (RFC 8446 §7.3), from sequence number 0.
    fn from_traffic_secret(alg: Alg, secret: &Secret) -> Dir {
        let mut d = Dir { key: [0; 32], iv: [0; 12], seq: 0 };
        expand_label(alg, secret.bytes(), b"key", &mut d.key[..alg.aead().key_len()]);
        expand_label(alg, secret.bytes(), b"iv", &mut d.iv);
        d
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

/// Slots in each thread's cache of expanded keys (a power of two). 512
/// slots × two directions × ~0.6 KB ≈ 0.6 MB per core at most; the slot is
/// chosen by the connection id, so ids handed out in a row never collide.
pub const KEY_CACHE_SLOTS: usize = 512;

/// Ids for [`Record13`]s, unique for the life of the process, so a cache
/// entry can never be mistaken for another connection's keys (the id is
/// never reused; when a KeyUpdate changes a direction's key, that
/// direction's cache entry is dropped at once).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `tls.key_update_after_records`, set once at start ([`set_key_update_after`]).
static KEY_UPDATE_AFTER: AtomicU64 = AtomicU64::new(DEFAULT_KEY_UPDATE_AFTER_RECORDS);

/// Sets how many records one sending key seals before our own KeyUpdate,
/// for connections handed off from now on (`tls.key_update_after_records`,
/// validated by the config to 1..=2^23).
pub fn set_key_update_after(records: u64) {
    KEY_UPDATE_AFTER.store(records.clamp(1, MAX_RECORDS_PER_KEY), Ordering::Relaxed);
}

/// Which direction's key a cache lookup wants.
#[derive(Clone, Copy)]
enum Way {
    Tx,
    Rx,
}

/// One slot: the expanded keys of the connection `id`, bound lazily per direction.
struct Slot {
    id: u64,
    tx: Option<LessSafeKey>,
    rx: Option<LessSafeKey>,
}

/// A direct-mapped cache of expanded AEAD keys for the connections this
/// thread served recently (one per core: thread-per-core). A miss evicts
/// whichever connection held the slot; that one re-expands its key from
/// the raw bytes the next time it flushes. Entries of a connection that
/// moved to another core stay until overwritten or the thread ends.
pub struct KeyCache {
    slots: Vec<Option<Slot>>,
    hits: u64,
    misses: u64,
}

impl KeyCache {
    fn new() -> Self {
        Self { slots: (0..KEY_CACHE_SLOTS).map(|_| None).collect(), hits: 0, misses: 0 }
    }

    /// The key of `id`'s direction `way`, expanding it from `dir` on a miss.
    fn get(&mut self, id: u64, alg: Alg, way: Way, dir: &Dir) -> &LessSafeKey {
        let slot = &mut self.slots[(id as usize) & (KEY_CACHE_SLOTS - 1)];
        if slot.as_ref().map(|s| s.id) != Some(id) {
            *slot = Some(Slot { id, tx: None, rx: None });
        }
        let Some(s) = slot.as_mut() else { unreachable!("slot filled above") };
        let k = match way {
            Way::Tx => &mut s.tx,
            Way::Rx => &mut s.rx,
        };
        if k.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        k.get_or_insert_with(|| dir.bind(alg))
    }

    /// Drops `id`'s expanded key of one direction (its raw key changed).
    fn forget(&mut self, id: u64, way: Way) {
        if let Some(s) = self.slots[(id as usize) & (KEY_CACHE_SLOTS - 1)].as_mut().filter(|s| s.id == id) {
            match way {
                Way::Tx => s.tx = None,
                Way::Rx => s.rx = None,
            }
        }
    }

    fn evict(&mut self, id: u64) {
        let slot = &mut self.slots[(id as usize) & (KEY_CACHE_SLOTS - 1)];
        if slot.as_ref().map(|s| s.id) == Some(id) {
            *slot = None;
        }
    }

    /// (hits, misses) of this thread's cache so far: for tests and benchmarks.
    pub fn stats() -> (u64, u64) {
        KEYS.with(|c| {
            let c = c.borrow();
            (c.hits, c.misses)
        })
    }
}

thread_local! {
    static KEYS: RefCell<KeyCache> = RefCell::new(KeyCache::new());
    /// Traffic secrets rustls logged on this thread since the last
    /// [`take_captured`] (see [`SecretLog`]).
    static CAPTURED: RefCell<TrafficSecrets> = RefCell::new(TrafficSecrets::default());
}

/// The application traffic secrets of one handshake (RFC 8446 §7.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficSecrets {
    pub client: Option<Secret>,
    pub server: Option<Secret>,
}

impl TrafficSecrets {
    /// Adds what was captured since the last call (a handshake logs its
    /// secrets in one `process_new_packets`, but nothing relies on that).
    pub fn absorb(&mut self, more: TrafficSecrets) {
        if more.client.is_some() {
            self.client = more.client;
        }
        if more.server.is_some() {
            self.server = more.server;
        }
    }

    /// A fatal alert sealed under the server's first application key
    /// (sequence 0), for an error found while rustls still owns a TLS 1.3
    /// connection but has already switched to those keys: its Finished is
    /// out and, until the client's Finished, it sends nothing more. `None`
    /// before that point (the alert then goes in plaintext) or for a suite
    /// this layer does not carry.
    pub fn handshake_alert(&self, suite: rustls::CipherSuite, desc: AlertDescription) -> Option<Vec<u8>> {
        let alg = match suite {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => Alg::Aes128Gcm,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => Alg::Aes256Gcm,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Alg::Chacha20,
            _ => return None,
        };
        let secret = self.server.as_ref().filter(|s| s.len as usize == alg.hash_len())?;
        let mut dir = Dir::from_traffic_secret(alg, secret);
        let key = dir.bind(alg);
        let mut wire = BytesMut::new();
        seal_one(&mut dir, &key, &[LEVEL_FATAL, u8::from(desc)], CT_ALERT, &mut wire);
        Some(wire.to_vec())
    }
}

/// rustls' key log hook, set on the server config: it keeps the two
/// application traffic secrets of each TLS 1.3 handshake for the hand-off
/// (and nothing else: `will_log` refuses every other label, so rustls does
/// not even format them). rustls calls it on the thread that runs the
/// handshake, inside `process_new_packets`; the connection glue clears the
/// capture before that call and takes it right after, so what it takes is
/// its own connection's.
#[derive(Debug)]
pub struct SecretLog;

const CLIENT_SECRET_LABEL: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_SECRET_LABEL: &str = "SERVER_TRAFFIC_SECRET_0";

impl TrafficSecrets {
    /// Keeps `secret` if `label` is one of the two application traffic secrets.
    fn capture(&mut self, label: &str, secret: &[u8]) {
        let Some(s) = Secret::new(secret) else { return };
        match label {
            CLIENT_SECRET_LABEL => self.client = Some(s),
            SERVER_SECRET_LABEL => self.server = Some(s),
            _ => {}
        }
    }
}

fn is_traffic_label(label: &str) -> bool {
    label == CLIENT_SECRET_LABEL || label == SERVER_SECRET_LABEL
}

impl rustls::KeyLog for SecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURED.with(|c| c.borrow_mut().capture(label, secret));
    }

    fn will_log(&self, label: &str) -> bool {
        is_traffic_label(label)
    }
}

/// The key log of ONE connection, for clients that run many handshakes
/// interleaved on one thread (an async load generator): there the
/// thread-local capture of [`SecretLog`] cannot tell connections apart, so
/// each connection gets a config carrying its own log.
#[derive(Debug, Default)]
pub struct ConnSecretLog(std::sync::Mutex<TrafficSecrets>);

impl ConnSecretLog {
    /// What was captured so far (and clears it).
    pub fn take(&self) -> TrafficSecrets {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl rustls::KeyLog for ConnSecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).capture(label, secret);
    }

    fn will_log(&self, label: &str) -> bool {
        is_traffic_label(label)
    }
}

/// What [`SecretLog`] captured on this thread since the last call (and
/// clears it).
pub fn take_captured() -> TrafficSecrets {
    CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

/// TLS 1.3 traffic keys and state of one connection after the handshake.
pub struct Record13 {
    alg: Alg,
    /// The peer asked for our KeyUpdate; it goes out before our next record.
    update_requested: bool,
    /// An alert (close_notify or an error) went out: none may follow.
    alert_sent: bool,
    /// Key of this connection's expanded keys in the per-thread [`KeyCache`].
    id: u64,
    /// Records one sending key seals before our own KeyUpdate.
    update_after: u64,
    tx: Dir,
    rx: Dir,
    tx_secret: Secret,
    rx_secret: Secret,
    /// ALPN the handshake chose, kept across the hand-off from rustls:
    /// None = none, Some(true) = `http/1.1`, Some(false) = `ringgate/1`.
    pub alpn_http: Option<bool>,
}

impl Drop for Record13 {
    fn drop(&mut self) {
        // Free the expanded keys now rather than when the slot is reused
        // (`try_with`: the thread may be tearing down its locals).
        let _ = KEYS.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                c.evict(self.id);
            }
        });
    }
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
    /// The record layer of a server connection: `secrets` from rustls'
    /// hand-off, `traffic` the secrets [`SecretLog`] captured for it.
    pub fn new(secrets: rustls::ExtractedSecrets, traffic: &TrafficSecrets) -> Result<Self, RecordError> {
        Self::with_limit(secrets, traffic, KEY_UPDATE_AFTER.load(Ordering::Relaxed), false)
    }

    /// The record layer of a CLIENT connection (the load generator's lean
    /// hand-off): the tx secret is the client's.
    pub fn new_client(secrets: rustls::ExtractedSecrets, traffic: &TrafficSecrets) -> Result<Self, RecordError> {
        Self::with_limit(secrets, traffic, KEY_UPDATE_AFTER.load(Ordering::Relaxed), true)
    }

    /// As [`Record13::new`] with an explicit KeyUpdate interval, on either
    /// side (`client`: the tx secret is the client's).
    pub(crate) fn with_limit(secrets: rustls::ExtractedSecrets, traffic: &TrafficSecrets, update_after: u64, client: bool) -> Result<Self, RecordError> {
        let (alg, tx) = Dir::from_secrets(secrets.tx.0, &secrets.tx.1)?;
        let (alg_rx, rx) = Dir::from_secrets(secrets.rx.0, &secrets.rx.1)?;
        if alg != alg_rx {
            return Err(RecordError::Cipher);
        }
        let (ours, theirs) = if client { (&traffic.client, &traffic.server) } else { (&traffic.server, &traffic.client) };
        let (Some(tx_secret), Some(rx_secret)) = (ours.clone(), theirs.clone()) else {
            return Err(RecordError::NoTrafficSecrets);
        };
        if tx_secret.len as usize != alg.hash_len() || rx_secret.len as usize != alg.hash_len() {
            return Err(RecordError::Cipher);
        }
        Ok(Self {
            alg,
            update_requested: false,
            alert_sent: false,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            update_after: update_after.clamp(1, MAX_RECORDS_PER_KEY),
            tx,
            rx,
            tx_secret,
            rx_secret,
            alpn_http: None,
        })
    }

    /// Opens every complete record at the front of `input` (consuming it)
    /// and appends application data to `plain`. A partial record stays.
    pub fn open_all(&mut self, input: &mut BytesMut, plain: &mut BytesMut) -> Result<Opened, RecordError> {
        if complete_record(input, MAX_CIPHERTEXT)?.is_none() {
            // Refuse a wrong type as soon as its header is in, not only
            // once the whole (maybe never sent) body arrived.
            if let Some(&ty) = input.first().filter(|_| input.len() >= HEADER_LEN) {
                check_outer_type(ty)?;
            }
            return Ok(Opened::More);
        }
        KEYS.with(|c| self.open_with(&mut c.borrow_mut(), input, plain))
    }

    fn open_with(&mut self, cache: &mut KeyCache, input: &mut BytesMut, plain: &mut BytesMut) -> Result<Opened, RecordError> {
        // The expanded key is looked up once per batch, and again only after
        // a KeyUpdate changed it.
        'keys: loop {
            let key = cache.get(self.id, self.alg, Way::Rx, &self.rx);
            while let Some(len) = complete_record(input, MAX_CIPHERTEXT)? {
                check_outer_type(input[0])?;
                let mut rec = input.split_to(len);
                let (hdr, body) = rec.split_at_mut(HEADER_LEN);
                let pt = key
                    .open_in_place(self.rx.nonce(), Aad::from(&hdr[..]), body)
                    .map_err(|_| RecordError::BadMac)?;
                self.rx.seq = self.rx.seq.checked_add(1).ok_or(RecordError::Limit)?;
                // Inner plaintext: content, content type, zero padding (§5.4).
                if pt.len() > MAX_PLAINTEXT + 1 {
                    return Err(RecordError::PlaintextOverflow(pt.len()));
                }
                let end = pt.iter().rposition(|&b| b != 0).ok_or(RecordError::NoContentType)?;
                let content = &pt[..end];
                match pt[end] {
                    CT_APPDATA => plain.extend_from_slice(content),
                    CT_ALERT => match content {
                        [LEVEL_WARNING | LEVEL_FATAL, 0] => return Ok(Opened::CloseNotify),
                        // user_canceled is followed by close_notify (§6.1).
                        [LEVEL_WARNING | LEVEL_FATAL, 90] => {}
                        [LEVEL_WARNING | LEVEL_FATAL, d] => return Err(RecordError::PeerAlert(*d)),
                        _ => return Err(RecordError::BadAlert(content.len())),
                    },
                    CT_HANDSHAKE => {
                        self.on_key_update(content)?;
                        cache.forget(self.id, Way::Rx);
                        continue 'keys;
                    }
                    other => return Err(RecordError::UnexpectedInnerType(other)),
                }
            }
            return Ok(Opened::More);
        }
    }

    /// A handshake record after the handshake: only a KeyUpdate filling it
    /// is accepted; it moves the receiving keys on (§4.6.3).
    fn on_key_update(&mut self, msg: &[u8]) -> Result<(), RecordError> {
        let Some(&typ) = msg.first() else { return Err(RecordError::BadHandshake) };
        if typ != HS_KEY_UPDATE {
            return Err(RecordError::PostHandshake(typ));
        }
        let Some(len) = msg.get(1..4).map(|l| u32::from_be_bytes([0, l[0], l[1], l[2]]) as usize) else {
            return Err(RecordError::Misaligned);
        };
        if len != 1 {
            return Err(RecordError::BadHandshake);
        }
        // The new key starts with the next record: the message must end
        // this one (§5.1), neither split nor followed by more.
        let [_, _, _, _, request] = *msg else { return Err(RecordError::Misaligned) };
        match request {
            UPDATE_NOT_REQUESTED => {}
            UPDATE_REQUESTED => self.update_requested = true,
            other => return Err(RecordError::KeyUpdateRequest(other)),
        }
        self.rx_secret = self.rx_secret.next(self.alg);
        self.rx = Dir::from_traffic_secret(self.alg, &self.rx_secret);
        Ok(())
    }

    /// Seals all of `plain` (consuming it) into records appended to `wire`,
    /// preceded by our KeyUpdate when the peer asked for one or the sending
    /// key reached `update_after` records.
    pub fn seal_all(&mut self, plain: &mut BytesMut, wire: &mut BytesMut) -> Result<(), RecordError> {
        if plain.is_empty() && !self.update_requested {
            return Ok(());
        }
        KEYS.with(|c| {
            let mut c = c.borrow_mut();
            'keys: loop {
                if self.update_requested || self.tx.seq >= self.update_after {
                    self.send_key_update(&mut c, wire);
                }
                let key = c.get(self.id, self.alg, Way::Tx, &self.tx);
                while !plain.is_empty() {
                    // The one compare per record that keeps a key under its limit.
                    if self.tx.seq >= self.update_after {
                        continue 'keys;
                    }
                    let n = plain.len().min(MAX_PLAINTEXT);
                    seal_one(&mut self.tx, key, &plain[..n], CT_APPDATA, wire);
                    plain.advance(n);
                }
                return Ok(());
            }
        })
    }

    /// Seals our KeyUpdate under the current key, then moves the sending
    /// keys on (§4.6.3). Never asks the peer for one back: only our own
    /// key's record count is ours to watch.
    fn send_key_update(&mut self, cache: &mut KeyCache, wire: &mut BytesMut) {
        let key = cache.get(self.id, self.alg, Way::Tx, &self.tx);
        seal_one(&mut self.tx, key, &[HS_KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED], CT_HANDSHAKE, wire);
        cache.forget(self.id, Way::Tx);
        self.tx_secret = self.tx_secret.next(self.alg);
        self.tx = Dir::from_traffic_secret(self.alg, &self.tx_secret);
        self.update_requested = false;
    }

    /// Appends an encrypted close_notify to `wire`, unless an alert already
    /// went out. Returns whether it was sealed.
    pub fn close_notify(&mut self, wire: &mut BytesMut) -> bool {
        self.alert(LEVEL_WARNING, AlertDescription::CloseNotify, wire)
    }

    /// Appends the alert `err` calls for ([`RecordError::alert`]) to `wire`,
    /// unless an alert already went out. Returns whether one was sealed.
    pub fn error_alert(&mut self, err: &RecordError, wire: &mut BytesMut) -> bool {
        match err.alert() {
            Some(a) => self.alert(LEVEL_FATAL, a, wire),
            None => false,
        }
    }

    /// Whether an alert (close_notify or an error) was sealed.
    pub fn alert_sent(&self) -> bool {
        self.alert_sent
    }

    fn alert(&mut self, level: u8, desc: AlertDescription, wire: &mut BytesMut) -> bool {
        if std::mem::replace(&mut self.alert_sent, true) {
            return false;
        }
        KEYS.with(|c| {
            let mut c = c.borrow_mut();
            if self.update_requested || self.tx.seq >= self.update_after {
                self.send_key_update(&mut c, wire);
            }
            let key = c.get(self.id, self.alg, Way::Tx, &self.tx);
            seal_one(&mut self.tx, key, &[level, u8::from(desc)], CT_ALERT, wire);
        });
        true
    }
}

/// Refuses, after the handshake, every outer type but application_data.
fn check_outer_type(ty: u8) -> Result<(), RecordError> {
    match ty {
        CT_APPDATA => Ok(()),
        CT_CHANGE_CIPHER_SPEC => Err(RecordError::ChangeCipherSpec),
        other => Err(RecordError::UnexpectedType(other)),
    }
}

/// Seals one record of `content` with inner type `ty` under `tx`'s next
/// sequence number. The caller keeps `tx.seq` below its KeyUpdate limit
/// (≤ 2^23), so the sequence number cannot wrap.
fn seal_one(tx: &mut Dir, key: &LessSafeKey, content: &[u8], ty: u8, wire: &mut BytesMut) {
    let ct_len = content.len() + 1 + TAG_LEN;
    let start = wire.len();
    wire.reserve(HEADER_LEN + ct_len);
    wire.extend_from_slice(&[CT_APPDATA, 0x03, 0x03]);
    wire.extend_from_slice(&(ct_len as u16).to_be_bytes());
    wire.extend_from_slice(content);
    wire.extend_from_slice(&[ty]);
    let (hdr, body) = wire[start..].split_at_mut(HEADER_LEN);
    // aws-lc-rs fails a seal only for inputs over the AEAD's maximum
    // (gigabytes); ours are at most 2^14 + 1 bytes.
    let tag = key
        .seal_in_place_separate_tag(tx.nonce(), Aad::from(&hdr[..]), body)
        .unwrap_or_else(|_| unreachable!("AEAD seal of {ct_len} bytes"));
    wire.extend_from_slice(tag.as_ref());
    tx.seq += 1;
}

/// A plaintext alert record (before any key is in use).
pub fn plaintext_alert(desc: AlertDescription) -> [u8; 7] {
    [CT_ALERT, 0x03, 0x03, 0, 2, LEVEL_FATAL, u8::from(desc)]
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
mod tests;
