//! What one peer may make the server hold or do: the `[limits]` settings, token buckets, per-address admission and the rules for names.
//!
//! Everything here is sans-IO (time is passed in as milliseconds) and
//! per-core: a core keeps its own admission table and buckets, so nothing on
//! the accept or message path takes a lock or writes another core's memory.
//! The price of per-core tables is that per-address limits are enforced per
//! core: with N workers an address gets `ceil(limit / N)` pre-auth
//! connections on each core (SO_REUSEPORT spreads one address's
//! connections over the cores by port, so the total stays near the limit).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `[limits]`: bounds on what a peer can make the server hold, and the
/// answer when one is reached. Key names are a contract (outside checks set
/// them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Unsent output (frames plus sealed TLS records) above which the server
    /// stops reading from the connection, so TCP backpressure reaches the
    /// peer. Default 1048576 (1 MiB).
    pub output_high_water_bytes: u64,
    /// Above the high-water mark this long → DISCONNECT 8 (slow consumer).
    /// Default 30000.
    pub slow_consumer_timeout_ms: u64,
    /// SENDs per second per connection (burst = rate); excess SENDs get
    /// SENDACK 3 and nothing is stored. Default 2000.
    pub send_rate_per_connection: u32,
    /// SENDs of one connection awaiting their SENDACK; beyond it → SENDACK 5.
    /// Default 1024.
    pub max_sends_in_flight: u32,
    /// Largest SEND payload; beyond it (or when the PUSH it makes would not
    /// fit `session.max_frame`) → SENDACK 4. Default 61440.
    pub max_payload_bytes: u32,
    /// Connections that have not completed CONNECT, per source address;
    /// beyond it the address's oldest such connection is closed to make
    /// room for the new one. Default 256.
    pub max_preauth_per_ip: u32,
    /// New connections per second per source address (burst = rate); beyond
    /// it a new connection is closed at once. Default 200.
    pub connect_rate_per_ip: u32,
    /// Open connections in the process; 0 = the open-files limit minus the
    /// server's own reserve. Near it, pre-auth connections are shed oldest
    /// first; authenticated ones are never shed. Default 0.
    pub max_connections: u64,
    /// CONNECTs accepted per second per core (burst = rate); beyond it →
    /// CONNACK 3 (server busy) and close. Default 10000.
    pub connect_rate: u32,
    /// Messages queued in one core's mailbox for new work (appends from
    /// other cores); when full, the SEND gets SENDACK 5. Default 65536.
    pub mailbox_capacity: u32,
    /// Devices remembered per user (each holds a cursor and a dedup
    /// table). A new device beyond it evicts the least recently seen
    /// offline device; if every device is online → CONNACK 3. Default 64.
    pub max_devices_per_user: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            output_high_water_bytes: 1 << 20,
            slow_consumer_timeout_ms: 30_000,
            send_rate_per_connection: 2_000,
            max_sends_in_flight: 1_024,
            max_payload_bytes: 61_440,
            max_preauth_per_ip: 256,
            connect_rate_per_ip: 200,
            max_connections: 0,
            connect_rate: 10_000,
            mailbox_capacity: 65_536,
            max_devices_per_user: 64,
        }
    }
}

impl LimitsConfig {
    /// Range checks `Config::validate()` runs.
    pub fn validate(&self) -> Result<(), String> {
        if self.output_high_water_bytes < 64 * 1024 {
            return Err(format!(
                "limits.output_high_water_bytes = {} is below 65536 (one full TLS record must fit)",
                self.output_high_water_bytes
            ));
        }
        for (name, v) in [
            ("send_rate_per_connection", self.send_rate_per_connection),
            ("max_sends_in_flight", self.max_sends_in_flight),
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_preauth_per_ip", self.max_preauth_per_ip),
            ("connect_rate_per_ip", self.connect_rate_per_ip),
            ("connect_rate", self.connect_rate),
            ("mailbox_capacity", self.mailbox_capacity),
            ("max_devices_per_user", self.max_devices_per_user),
        ] {
            if v == 0 {
                return Err(format!("limits.{name} must be at least 1"));
            }
        }
        if self.slow_consumer_timeout_ms == 0 {
            return Err("limits.slow_consumer_timeout_ms must be at least 1".into());
        }
        // max_payload_bytes above what max_frame allows is not an error: the
        // smaller of the two applies (a SEND whose PUSH would not fit gets
        // SENDACK 4 whatever this says).
        Ok(())
    }
}

/// Longest user id or group name (the protocol's `str` allows more; ids are
/// keys in every table, so they are kept short).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a user id or group name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty")]
    Empty,
    #[error("longer than 255 bytes")]
    TooLong,
    #[error("contains a control character")]
    Control,
}

/// User ids (JWT `sub`, SEND targets) and group names: 1–255 bytes of UTF-8
/// without control characters (C0, DEL, C1). They end up in logs, the admin
/// API's JSON and file names of tools; a newline or escape in one would
/// forge log lines or terminal output.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    Ok(())
}

/// Bytes a PUSH frame adds around its payload, length prefix included:
/// length u32, type u8, seq u64, msg_id u64, timestamp u64, from str (u16 +
/// bytes), flags u8.
pub const fn push_overhead(from_len: usize) -> usize {
    4 + 1 + 8 + 8 + 8 + 2 + from_len + 1
}

/// Whether a PUSH from `from` with `payload_len` bytes fits `max_frame`
/// (which counts the type byte and the body, not the length prefix).
pub fn push_fits(from_len: usize, payload_len: usize, max_frame: u32) -> bool {
    push_overhead(from_len) - 4 + payload_len <= max_frame as usize
}

/// A token bucket: `rate` tokens per second, at most `rate` stored (burst =
/// rate). 12 bytes, so one can live in every connection.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Thousandths of a token, so sub-token refills are not lost between
    /// frequent calls.
    milli_tokens: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn full(rate: u32, now_ms: u64) -> Self {
        TokenBucket { milli_tokens: rate as u64 * 1000, last_ms: now_ms }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: u32, now_ms: u64) -> bool {
        self.refill(rate, now_ms);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, rate: u32, now_ms: u64) {
        let cap = rate as u64 * 1000;
        let elapsed = now_ms.saturating_sub(self.last_ms);
        // rate tokens per 1000 ms = rate milli-tokens per ms.
        self.milli_tokens = self.milli_tokens.saturating_add(elapsed.saturating_mul(rate as u64)).min(cap);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Whether the bucket is full again (its state carries no information).
    pub fn is_full(&mut self, rate: u32, now_ms: u64) -> bool {
        self.refill(rate, now_ms);
        self.milli_tokens >= rate as u64 * 1000
    }
}

/// Why a new connection from an address is refused before any byte is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// The address opened connections faster than `connect_rate_per_ip`.
    ConnectRate,
    /// The table of tracked addresses is full (a spoofing-scale flood).
    TableFull,
}

impl AdmitError {
    /// The `reason` label of the rejection counter.
    pub fn label(self) -> &'static str {
        match self {
            AdmitError::ConnectRate => "connect_rate_ip",
            AdmitError::TableFull => "address_table_full",
        }
    }
}

#[derive(Debug)]
struct AddrState {
    /// The caller's ids of this address's pre-auth connections, oldest
    /// first; at most `max_preauth` (the bound is the admission rule).
    preauth: VecDeque<u64>,
    bucket: TokenBucket,
}

/// Per-core admission of new connections by source address.
///
/// Bounded: an address leaves the table once it has no pre-auth connection
/// and its bucket is full again (pruned by `prune`), and the table never
/// holds more than `max_addrs` addresses.
///
/// At an address's pre-auth limit a newcomer is admitted and the address's
/// *oldest* pre-auth connection is shed, rather than the newcomer refused:
/// the limit bounds what one address holds either way, but refusing
/// newcomers let a slowloris holding the slots lock out every fresh login
/// from the same address (users behind one NAT), while shedding the oldest
/// lets a client that completes its handshake in milliseconds win over
/// connections trickling bytes.
pub struct AddrTable {
    map: HashMap<IpAddr, AddrState>,
    max_preauth: u32,
    rate: u32,
    max_addrs: usize,
}

impl AddrTable {
    /// `workers`: the per-address pre-auth limit is split over the cores.
    pub fn new(cfg: &LimitsConfig, workers: usize) -> Self {
        let w = workers.max(1) as u32;
        AddrTable {
            map: HashMap::new(),
            max_preauth: cfg.max_preauth_per_ip.div_ceil(w).max(1),
            rate: cfg.connect_rate_per_ip.div_ceil(w).max(1),
            max_addrs: 65_536,
        }
    }

    /// New per-address limits (a reload); addresses already tracked keep
    /// their counts and buckets, which refill at the new rate from now on.
    pub fn set_limits(&mut self, cfg: &LimitsConfig, workers: usize) {
        let fresh = AddrTable::new(cfg, workers);
        self.max_preauth = fresh.max_preauth;
        self.rate = fresh.rate;
    }

    /// A connection from `ip`, known to the caller as `id` (ids grow with
    /// time), was accepted: admit it (counted as pre-auth until
    /// `leave_preauth`) or say why not. `Ok(Some(old))`: admitted, and the
    /// address's oldest pre-auth connection `old` no longer counts here:
    /// the caller closes it.
    pub fn admit(&mut self, ip: IpAddr, id: u64, now_ms: u64) -> Result<Option<u64>, AdmitError> {
        if !self.map.contains_key(&ip) && self.map.len() >= self.max_addrs {
            self.prune(now_ms);
            if self.map.len() >= self.max_addrs {
                return Err(AdmitError::TableFull);
            }
        }
        let rate = self.rate;
        let st = self.map.entry(ip).or_insert_with(|| AddrState { preauth: VecDeque::new(), bucket: TokenBucket::full(rate, now_ms) });
        // The rate first: a refused newcomer must not cost anyone a slot.
        if !st.bucket.take(rate, now_ms) {
            return Err(AdmitError::ConnectRate);
        }
        let shed = if st.preauth.len() >= self.max_preauth as usize { st.preauth.pop_front() } else { None };
        st.preauth.push_back(id);
        Ok(shed)
    }

    /// Pre-auth connection `id` from `ip` completed CONNECT or closed.
    /// O(pre-auth connections of the address), at most `max_preauth`.
    pub fn leave_preauth(&mut self, ip: IpAddr, id: u64) {
        if let Some(st) = self.map.get_mut(&ip) {
            if let Some(i) = st.preauth.iter().position(|x| *x == id) {
                st.preauth.remove(i);
            }
            if st.preauth.is_empty() && st.preauth.capacity() > 4 {
                // A burst from this address is over: give the room back.
                st.preauth = VecDeque::new();
            }
        }
    }

    /// Drops addresses that hold nothing any more. O(table); called about
    /// once a second.
    pub fn prune(&mut self, now_ms: u64) {
        let rate = self.rate;
        self.map.retain(|_, st| !st.preauth.is_empty() || !st.bucket.is_full(rate, now_ms));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        LimitsConfig::default().validate().unwrap();
        LimitsConfig::default().validate().unwrap();
        let mut c = LimitsConfig::default();
        c.send_rate_per_connection = 0;
        assert!(c.validate().unwrap_err().contains("send_rate_per_connection"));
    }

    #[test]
    fn names() {
        assert_eq!(check_name("alice"), Ok(()));
        assert_eq!(check_name("Zoë 李"), Ok(()));
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name(&"a".repeat(255)), Ok(()));
        assert_eq!(check_name(&"a".repeat(256)), Err(NameError::TooLong));
        for bad in ["a\nb", "\u{1b}[31m", "a\u{7f}", "x\u{85}", "\0"] {
            assert_eq!(check_name(bad), Err(NameError::Control), "{bad:?}");
        }
    }

    #[test]
    fn push_fit_is_exact() {
        // A PUSH's frame length = 1 + 8 + 8 + 8 + 2 + from + 1 + payload.
        assert!(push_fits(5, 65_536 - 28 - 5, 65_536));
        assert!(!push_fits(5, 65_536 - 28 - 5 + 1, 65_536));
    }

    #[test]
    fn bucket_refills_at_rate_with_burst_equal_rate() {
        let mut b = TokenBucket::full(10, 0);
        for _ in 0..10 {
            assert!(b.take(10, 0));
        }
        assert!(!b.take(10, 0));
        // 100 ms = one token at 10/s.
        assert!(!b.take(10, 99));
        assert!(b.take(10, 100));
        assert!(!b.take(10, 100));
        // A long pause refills to the burst only.
        let mut n = 0;
        while b.take(10, 1_000_000) {
            n += 1;
        }
        assert_eq!(n, 10);
        // Time going backwards (it cannot, but) never mints tokens.
        assert!(!b.take(10, 5));
    }

    #[test]
    fn addr_table_sheds_oldest_preauth_and_limits_rate_and_prunes() {
        let cfg = LimitsConfig { max_preauth_per_ip: 3, connect_rate_per_ip: 7, ..LimitsConfig::default() };
        let mut t = AddrTable::new(&cfg, 1);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for id in 1..=3 {
            assert_eq!(t.admit(a, id, 0), Ok(None));
        }
        // At the limit the newcomer is admitted and the oldest is shed.
        assert_eq!(t.admit(a, 4, 0), Ok(Some(1)));
        // Another address is unaffected.
        assert_eq!(t.admit(b, 5, 0), Ok(None));
        // Completing CONNECT frees a slot (2 leaves): the next sheds nobody,
        // the one after sheds the oldest left (3).
        t.leave_preauth(a, 2);
        assert_eq!(t.admit(a, 6, 0), Ok(None));
        assert_eq!(t.admit(a, 7, 0), Ok(Some(3)));
        // The 7th connection in the second spends the last token; the 8th
        // is refused by the rate, and sheds nobody.
        assert_eq!(t.admit(a, 8, 0), Ok(Some(4)));
        assert_eq!(t.admit(a, 9, 0), Err(AdmitError::ConnectRate));
        t.leave_preauth(a, 9);
        // Prune keeps addresses that still hold something.
        t.prune(0);
        assert_eq!(t.len(), 2);
        for id in [6, 7, 8] {
            t.leave_preauth(a, id);
        }
        t.leave_preauth(b, 5);
        t.prune(10_000);
        assert!(t.is_empty());
    }

    #[test]
    fn addr_table_splits_the_limit_over_cores() {
        let cfg = LimitsConfig { max_preauth_per_ip: 5, ..LimitsConfig::default() };
        let mut t = AddrTable::new(&cfg, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for id in 0..3 {
            assert_eq!(t.admit(a, id, 0), Ok(None));
        }
        assert_eq!(t.admit(a, 3, 0), Ok(Some(0)));
    }
}
