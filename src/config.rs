//! The one configuration struct: TOML in, validated settings out.
//!
//! Every field has a documented default with its unit in its name, so
//! `ringgate serve` with no file just works, and a file only states what it
//! changes. Unknown keys are refused with their name (`deny_unknown_fields`):
//! a misspelt `ack_timout_ms` silently ignored would be worse than an error.
//! The key names are a contract that outside tools write.
//!
//! This file holds the sections and parsing; `validate` holds every rule a
//! parse cannot check, and `default_toml` the commented default file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod default_toml;
mod validate;

/// Why a configuration could not be used. Always the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub session: SessionConfig,
    pub store: StoreConfig,
    pub limits: crate::limits::LimitsConfig,
    pub admin: AdminConfig,
    pub route: RouteConfig,
    pub web: WebConfig,
    /// `[fleet]`: several nodes sharing every inbox through Redis
    /// (`crate::fleet`). Absent, or with no `redis` URL = one node on the
    /// local log (the default). Not serialized when absent, so the default
    /// configuration has no fleet keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetConfig>,
    /// Initial groups: name → member user ids. A SEND to a group fans out to
    /// every member but the sender (the sender must be a member). Seeds an
    /// empty data directory only: afterwards the groups saved by the admin
    /// API (`<data_dir>/admin/groups.json`) win.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// Which io_uring-or-epoll driver the per-core runtimes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring when the kernel offers it, else epoll with a log line.
    #[default]
    Auto,
    /// io_uring or refuse to start.
    Uring,
    /// monoio's legacy epoll driver (the benchmark's baseline).
    Legacy,
}

/// `[server]`: listeners, workers and socket options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Client listener, `host:port`. Default `0.0.0.0:7443`.
    pub listen: String,
    /// Admin API and metrics listener (HTTP/1.1, ADMIN.md). Default `127.0.0.1:7080`.
    pub admin_listen: String,
    /// Worker threads, one runtime each; 0 = one per core. Default 0.
    pub workers: usize,
    /// Accept queue length per listener. Default 4096 (clamped by net.core.somaxconn).
    pub backlog: u32,
    /// Runtime driver: "auto", "uring" or "legacy". Default "auto".
    pub driver: Driver,
    /// Pin worker N to CPU N. Default true.
    pub pin_workers: bool,
    /// Seconds of silence before the kernel sends keepalive probes. Default 60.
    pub tcp_keepalive_idle_s: u32,
    /// Seconds between keepalive probes. Default 10.
    pub tcp_keepalive_interval_s: u32,
    /// Unanswered probes before the kernel drops the connection. Default 6.
    pub tcp_keepalive_count: u32,
    /// TCP_USER_TIMEOUT: unacknowledged sent data older than this kills the
    /// connection. Default 30000; 0 leaves the kernel default.
    pub tcp_user_timeout_ms: u32,
    /// TCP_DEFER_ACCEPT: wake accept only once the client sent data. Default 1; 0 = off.
    pub defer_accept_s: u32,
    /// SO_RCVBUF; 0 = kernel autotuning (recommended). Default 0.
    pub recv_buffer_bytes: u32,
    /// SO_SNDBUF; 0 = kernel autotuning (recommended). Default 0.
    pub send_buffer_bytes: u32,
    /// How long a graceful shutdown waits for connections to close. Default 10000.
    pub shutdown_grace_ms: u64,
    /// Start even when another process already serves `listen` (SO_REUSEPORT
    /// would silently split connections between the two): only for a
    /// zero-downtime restart. Default false.
    pub allow_shared_port: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7443".into(),
            admin_listen: "127.0.0.1:7080".into(),
            workers: 0,
            backlog: 4096,
            driver: Driver::Auto,
            pin_workers: true,
            tcp_keepalive_idle_s: 60,
            tcp_keepalive_interval_s: 10,
            tcp_keepalive_count: 6,
            tcp_user_timeout_ms: 30_000,
            defer_accept_s: 1,
            recv_buffer_bytes: 0,
            send_buffer_bytes: 0,
            shutdown_grace_ms: 10_000,
            allow_shared_port: false,
        }
    }
}

/// `[tls]`: certificates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve TLS; false serves plain TCP. Default true.
    pub enabled: bool,
    /// PEM certificate chain; empty = self-signed dev certificate in data_dir.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Issue TLS 1.3 session tickets (resumption without server state). Default true.
    pub session_tickets: bool,
    /// Extra certificates chosen by SNI server name.
    pub certificates: Vec<SniCertificate>,
    /// TLS 1.3 records sealed under one key before the server sends a
    /// KeyUpdate and moves to the next key (RFC 8446 §4.6.3, §5.5).
    /// Default 8323072 (2^23 - 2^16, under AES-GCM's limit); 1 to 8388608.
    pub key_update_after_records: u64,
    /// Session ticket key file (64 hex digits, created with mode 0600 when
    /// missing); nodes sharing it resume each other's sessions. Unset = a
    /// random key per process. Default unset.
    pub ticket_key_file: Option<PathBuf>,
    /// After the ticket key file is replaced and reloaded, the previous key
    /// still decrypts tickets this long. Default 86400.
    pub ticket_key_overlap_s: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cert_file: None,
            key_file: None,
            session_tickets: true,
            certificates: Vec::new(),
            key_update_after_records: crate::runtime::tls_record::DEFAULT_KEY_UPDATE_AFTER_RECORDS,
            ticket_key_file: None,
            ticket_key_overlap_s: 86_400,
        }
    }
}

/// One `[[tls.certificates]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// The SNI name (exact, lowercase) this certificate answers.
    pub server_name: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[auth]`: the JWT HS256 secret and the claims checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The secret itself. Prefer `jwt_secret_file`.
    pub jwt_secret: Option<String>,
    /// File holding the secret (trailing newline ignored). With neither set,
    /// a random secret is created at `<data_dir>/jwt-secret`.
    pub jwt_secret_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, seconds. Default 30.
    pub leeway_s: u64,
    /// When set, a token's `iss` must equal it. Default unset.
    pub issuer: Option<String>,
    /// When set, a token's `aud` (string or array) must contain it. Default unset.
    pub audience: Option<String>,
    /// `[[auth.keys]]`: keys chosen by a token's `kid` header. Default none.
    pub keys: Vec<AuthKey>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { jwt_secret: None, jwt_secret_file: None, leeway_s: 30, issuer: None, audience: None, keys: Vec::new() }
    }
}

/// One `[[auth.keys]]` entry: a token whose header names `kid` is checked
/// with this key and must say this `alg`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthKey {
    /// The key id tokens name in their `kid` header (1..=128 bytes).
    pub kid: String,
    /// `HS256`, `RS256`, `ES256` or `EdDSA` (Ed25519).
    pub alg: String,
    /// SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`), for RS256, ES256 and EdDSA.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// File holding the shared secret (trailing newline ignored, at least 16 bytes), HS256 only.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

/// `[session]`: protocol timers and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Heartbeat interval told to clients in CONNACK; idle close after 2.5×. Default 30.
    pub heartbeat_s: u16,
    /// Time from TCP accept to a valid CONNECT (TLS handshake included). Default 10000.
    pub handshake_timeout_ms: u64,
    /// First retransmission timeout of an unacked PUSH; doubles per retry. Default 5000.
    pub ack_timeout_ms: u64,
    /// Retransmissions before DISCONNECT(4). Default 2.
    pub max_retries: u32,
    /// Unacked PUSHes in flight per connection. Default 64.
    pub inflight_window: u32,
    /// Largest frame body accepted, bytes. Default 65536.
    pub max_frame: u32,
    /// Remembered client_msg_ids per device for dedup. Default 1024.
    pub dedup_per_device: usize,
    /// A device's dedup table is packed (~5 B per entry instead of ~115) this
    /// long after its last connection ended; 0 = at the next tick. Default 30000.
    pub dedup_pack_after_ms: u64,
}

impl Default for SessionConfig {
    /// The protocol core's defaults (PROTOCOL.md's), so the two cannot drift.
    fn default() -> Self {
        let l = crate::proto::session::SessionLimits::default();
        Self {
            heartbeat_s: l.heartbeat_s,
            handshake_timeout_ms: l.handshake_timeout_ms,
            ack_timeout_ms: l.ack_timeout_ms,
            max_retries: l.max_retries,
            inflight_window: l.inflight_window,
            max_frame: l.max_frame,
            dedup_per_device: 1024,
            dedup_pack_after_ms: 30_000,
        }
    }
}

/// How inboxes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// In memory; lost on restart.
    Memory,
    /// Append-only log under `data_dir/log` (the default).
    #[default]
    Durable,
}

/// When the durable log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    #[default]
    Always,
    Interval,
    Never,
}

/// `[store]`: inboxes and the data directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Where the dev certificate, JWT secret and (later) the log live. Default "./ringgate-data".
    pub data_dir: PathBuf,
    /// "durable" or "memory". Default "durable".
    pub durability: Durability,
    /// "always", "interval" or "never" (durable only). Default "always".
    pub fsync: Fsync,
    /// fsync period under `fsync = "interval"`. Default 100.
    pub fsync_interval_ms: u64,
    /// Log segment size before a new file starts. Default 67108864 (64 MiB).
    pub segment_max_bytes: u64,
    /// Messages kept per user inbox. Default 10000.
    pub inbox_max_messages: u64,
    /// Age after which messages leave the inbox. Default 604800 (7 days).
    pub inbox_max_age_s: u64,
    /// What retained messages may hold in RAM, for the whole process
    /// (memory store: beyond it SENDs get SENDACK 5 until retention frees
    /// room; durable store: the hot-payload cache, older payloads are read
    /// back from the log). 0 = a quarter of the machine's RAM, printed at
    /// start. Default 0.
    pub memory_budget_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./ringgate-data"),
            durability: Durability::Durable,
            fsync: Fsync::Always,
            fsync_interval_ms: 100,
            segment_max_bytes: 64 << 20,
            inbox_max_messages: 10_000,
            inbox_max_age_s: 604_800,
            memory_budget_bytes: 0,
        }
    }
}

/// `[admin]`: the admin API, metrics and the delivery ledger (ADMIN.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/v1/...`. Prefer `token_file`. With neither, a
    /// random one is created at `<data_dir>/admin-token` (mode 0600).
    pub token: Option<String>,
    /// File holding the token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// Put `/metrics` behind the token too. Default false.
    pub metrics_token: bool,
    /// How long a publish's `idempotency_key` is remembered. Default 86400.
    pub idempotency_ttl_s: u64,
    /// Most idempotency keys remembered; past it the oldest are forgotten
    /// early (and logged). Default 100000.
    pub idempotency_max_keys: usize,
    /// How long the delivery ledger keeps a message; 0 turns the ledger off. Default 3600.
    pub ledger_retention_s: u64,
    /// Ledger entries (one per message and recipient) kept per core; the
    /// oldest go first past it. Default 200000.
    pub ledger_max_entries: usize,
    /// Admin publishes accepted per second (token bucket, bursts of one
    /// second's worth); more get 429. 0 = no limit. Default 0.
    pub publishes_per_s: u32,
    /// Largest request body, bytes. Default 1048576.
    pub max_body_bytes: usize,
    /// Admin connections served at once; more wait in the accept queue. Default 32.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: None,
            token_file: None,
            metrics_token: false,
            idempotency_ttl_s: 86_400,
            idempotency_max_keys: 100_000,
            ledger_retention_s: 3_600,
            ledger_max_entries: 200_000,
            publishes_per_s: 0,
            max_body_bytes: 1 << 20,
            max_connections: 32,
        }
    }
}

/// `[route]`: the route endpoint `GET /v1/route` (WEB.md "Route endpoint").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// How long clients may use a route. Default 3600.
    pub ttl_s: u64,
    /// Ladder: start the next endpoint this long after the previous. Default 3000.
    pub stagger_ms: u64,
    /// Ladder: one attempt gives up after this. Default 30000.
    pub attempt_timeout_ms: u64,
    /// Client reconnect backoff: first delay. Default 500.
    pub backoff_base_ms: u64,
    /// Client reconnect backoff: largest delay. Default 30000.
    pub backoff_cap_ms: u64,
    /// Client reconnect backoff: share of the delay taken off at random (0..=1). Default 0.5.
    pub backoff_jitter: f64,
    /// Client failure reports count over this decaying window. Default 300.
    pub feedback_window_s: u64,
    /// PKCS#8 PEM Ed25519 signing key; unset = `<data_dir>/route-key.pem`, created on first start.
    pub signing_key_file: Option<PathBuf>,
    /// Host name given for this node when no endpoints are configured; unset =
    /// the listen IP, or the request's `Host` when listening on 0.0.0.0 / `::`.
    pub public_host: Option<String>,
    /// `[[route.endpoints]]`, in config order. Empty = this node only.
    pub endpoints: Vec<RouteEndpoint>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            ttl_s: 3600,
            stagger_ms: 3000,
            attempt_timeout_ms: 30_000,
            backoff_base_ms: 500,
            backoff_cap_ms: 30_000,
            backoff_jitter: 0.5,
            feedback_window_s: 300,
            signing_key_file: None,
            public_host: None,
            endpoints: Vec::new(),
        }
    }
}

/// One `[[route.endpoints]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEndpoint {
    /// Stable id clients report in `failed=` (1..=64 bytes, no commas).
    pub id: String,
    /// `tls`, `tcp`, `wss`, `ws`, `sse` or `lp`.
    pub transport: String,
    /// DNS name; `host` or `addr` is required.
    #[serde(default)]
    pub host: Option<String>,
    /// IP address to dial (skips DNS).
    #[serde(default)]
    pub addr: Option<String>,
    pub port: u16,
    /// TLS server name; default `host`.
    #[serde(default)]
    pub sni: Option<String>,
    /// Lower first. Default 0.
    #[serde(default)]
    pub priority: i64,
    /// Higher first among equal priority. Default 100.
    #[serde(default = "default_endpoint_weight")]
    pub weight: u32,
}

fn default_endpoint_weight() -> u32 {
    100
}

/// `[fleet]` (FLEET.md "Configuration").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Redis/Valkey URLs: one = a single instance, several = Redis Cluster
    /// seed nodes. Empty = single node on the local log.
    pub redis: Vec<String>,
    /// Unique in the fleet; unset = hostname + listen port.
    pub node_id: Option<String>,
    /// What the route lists for this node; unset = `route.public_host`, else the listen IP.
    pub advertise_host: Option<String>,
    /// A node is live while its heartbeat key lives (3 x this). Default 1000.
    pub heartbeat_ms: u64,
    /// An engine call slower than this: SENDACK 5 / admin 503. Default 2000.
    pub engine_timeout_ms: u64,
    /// Engine requests queued per node; beyond: SENDACK 5. Default 65536.
    pub max_engine_inflight: usize,
    /// How far the nodes' wall clocks may disagree (NTP). After an engine
    /// data loss, a message below a device's cursor is told apart from an
    /// old one by its timestamp only when it is this much newer than the
    /// device's CONNECT (docs/fleet.md "Seqs are never reused"). Default 1000.
    pub max_clock_skew_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            redis: Vec::new(),
            node_id: None,
            advertise_host: None,
            heartbeat_ms: 1000,
            engine_timeout_ms: 2000,
            max_engine_inflight: 65536,
            max_clock_skew_ms: 1000,
        }
    }
}

impl FleetConfig {
    /// True when this node is part of a fleet (at least one engine URL).
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }
}

/// `[web]`: HTTP on the gateway port (the route endpoint and WebSocket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Cross-origin `Origin`s allowed: `scheme://host[:port]` or `scheme://*.domain[:port]`. Default empty.
    pub allowed_origins: Vec<String>,
    /// Treat this listener's own origin as https even without TLS (behind a TLS proxy). Default false.
    pub assume_https: bool,
    /// Idle keep-alive HTTP connections close after this. Default 60.
    pub keepalive_idle_s: u64,
    /// A long-poll (`POST /v1/lp`) with nothing to return is answered `204` after this. Default 25.
    pub poll_timeout_s: u64,
    /// permessage-deflate on WebSocket: not implemented, so `true` is refused at startup. Default false.
    pub deflate: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { allowed_origins: Vec::new(), assume_https: false, keepalive_idle_s: 60, poll_timeout_s: 25, deflate: false }
    }
}

impl Config {
    /// Reads and parses a TOML file (not yet validated).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse { path: path.to_path_buf(), message },
            other => other,
        })
    }

    /// Parses TOML text; unknown keys are errors naming the key. Every
    /// problem found is in the message (see [`Config::parse_all`]).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        match Self::parse_all(text) {
            (Some(c), errs) if errs.is_empty() => Ok(c),
            (_, errs) => Err(ConfigError::Invalid(errs.join("; "))),
        }
    }

    /// Parses TOML text and reports every problem a parse can find at once:
    /// a syntax error (with its line and a hint), else every unknown key,
    /// value of the wrong type and enum value not accepted, each with its
    /// dotted path and what is accepted there (`config_schema.rs`). The
    /// config is what is left with the bad entries taken out (`None` only
    /// for a syntax error), so `problems()` can still be run on it.
    pub fn parse_all(text: &str) -> (Option<Self>, Vec<String>) {
        let mut value: toml::Value = match toml::from_str(text) {
            Ok(v) => v,
            Err(e) => return (None, vec![crate::config_schema::syntax_error(text, &e)]),
        };
        let mut errs = Vec::new();
        match crate::config_schema::trace::<Config>() {
            Ok(schema) => {
                crate::config_schema::walk(&mut value, &schema, "", &mut errs);
            }
            // Only a config type that cannot be traced (a test guards it):
            // the plain deserialize below still reports the first problem.
            Err(e) => tracing::debug!("config schema not traced: {e}"),
        }
        match Config::deserialize(value) {
            Ok(c) => (Some(c), errs),
            Err(e) => {
                errs.push(e.to_string().trim_end().to_string());
                (None, errs)
            }
        }
    }

    /// Worker count with 0 resolved to the number of cores.
    pub fn resolved_workers(&self) -> usize {
        if self.server.workers > 0 {
            self.server.workers
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }

    /// The fleet section when this node is part of a fleet.
    pub fn fleet(&self) -> Option<&FleetConfig> {
        self.fleet.as_ref().filter(|f| f.enabled())
    }

    /// A complete, commented default configuration (`ringgate config default`).
    pub fn default_toml() -> &'static str {
        default_toml::DEFAULT_TOML
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration table (docs/configuration.md) states every
    /// default; it must not drift. A new key gets a row there (the pages of
    /// TLS records, operations and limits keep the rows of their own keys).
    #[test]
    fn readme_table_matches_defaults() {
        let readme = [
            include_str!("../docs/configuration.md"),
            include_str!("../docs/tls-record-layer.md"),
            include_str!("../docs/operations.md"),
            include_str!("../docs/limits.md"),
        ]
        .join("\n");
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let mut checked = 0;
        for line in readme.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 4 || !cells[1].starts_with('`') {
                continue;
            }
            let key = cells[1].trim_matches('`');
            if key.starts_with('[') {
                continue;
            }
            let Some((section, field)) = key.split_once('.') else { continue };
            if field.contains(['`', ',', ' ']) {
                continue;
            }
            let want = cells[2];
            let got = defaults.get(section).and_then(|t| t.get(field));
            match (want, got) {
                ("unset", None) => {}
                (w, Some(v)) => assert_eq!(w.trim_matches('`'), v.to_string(), "docs/configuration.md default of {key}"),
                (w, None) => panic!("docs/configuration.md lists {key} = {w} but the config has no default value for it"),
            }
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} docs/configuration.md rows checked");
        // And the other way: every key is documented.
        for (section, table) in defaults.as_table().unwrap() {
            for field in table.as_table().into_iter().flat_map(|t| t.keys()) {
                let key = format!("{section}.{field}");
                assert!(readme.contains(&format!("`{key}`")) || readme.contains(&format!("[[{key}]]")), "{key} missing from the table in docs/configuration.md");
            }
        }
    }

    #[test]
    fn empty_file_is_default() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml_str("[session]\nack_timout_ms = 5\n").unwrap_err().to_string();
        assert!(e.contains("ack_timout_ms"), "{e}");
        let e = Config::from_toml_str("[nope]\n").unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn contract_keys_parse() {
        let c = Config::from_toml_str(
            r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 2
backlog = 128
[tls]
enabled = false
cert_file = "c.pem"
key_file = "k.pem"
[auth]
jwt_secret_file = "s"
[session]
heartbeat_s = 5
handshake_timeout_ms = 100
ack_timeout_ms = 200
max_retries = 3
inflight_window = 8
max_frame = 4096
[store]
data_dir = "/tmp/x"
durability = "memory"
fsync = "interval"
fsync_interval_ms = 7
inbox_max_messages = 9
inbox_max_age_s = 10
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.workers, 2);
        assert_eq!(c.session.inflight_window, 8);
        assert_eq!(c.store.fsync, Fsync::Interval);
    }

}
