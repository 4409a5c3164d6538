//! The default configuration file as `ringgate config default` prints it:
//! every key with its default and a comment. Separate because it is long
//! prose for operators, kept equal to `Config::default()` by the test below.

pub(super) const DEFAULT_TOML: &str = r#"# ringgate configuration. Every key is optional; shown are the defaults.
# Units are in the key names. Unknown keys are an error.

[server]
# Client listener (TLS unless tls.enabled = false).
listen = "0.0.0.0:7443"
# Admin API and Prometheus metrics (HTTP/1.1; keep it on loopback or a private network).
admin_listen = "127.0.0.1:7080"
# Worker threads, each a runtime with its own SO_REUSEPORT listener; 0 = one per core.
workers = 0
# Accept queue per listener; the kernel clamps it to net.core.somaxconn.
backlog = 4096
# "auto" (io_uring, else epoll with a log line), "uring" or "legacy" (epoll).
driver = "auto"
# Pin worker N to CPU N.
pin_workers = true
# TCP keepalive: idle seconds before probing, seconds between probes, probes.
tcp_keepalive_idle_s = 60
tcp_keepalive_interval_s = 10
tcp_keepalive_count = 6
# TCP_USER_TIMEOUT: drop a peer that leaves sent data unacknowledged this long; 0 = kernel default.
tcp_user_timeout_ms = 30000
# TCP_DEFER_ACCEPT seconds: accept wakes only once the client has sent data; 0 = off.
defer_accept_s = 1
# SO_RCVBUF / SO_SNDBUF; 0 = kernel autotuning (recommended).
recv_buffer_bytes = 0
send_buffer_bytes = 0
# Graceful shutdown: how long to wait for connections after DISCONNECT(7).
shutdown_grace_ms = 10000
# Start even if another process already serves `listen` (zero-downtime restarts only;
# otherwise the kernel would split new connections between the two).
allow_shared_port = false

[tls]
enabled = true
# PEM files; unset = a self-signed development certificate in store.data_dir.
# cert_file = "/etc/ringgate/cert.pem"
# key_file = "/etc/ringgate/key.pem"
# TLS 1.3 session tickets for resumption.
session_tickets = true
# TLS 1.3 records sealed under one key before the server's KeyUpdate (1 to 8388608).
key_update_after_records = 8323072
# More certificates, chosen by SNI:
# [[tls.certificates]]
# server_name = "im.example.com"
# cert_file = "/etc/ringgate/im.pem"
# key_file = "/etc/ringgate/im.key"
# Session ticket key shared by a fleet (64 hex digits; created 0600 when missing).
# Unset = a random key per process (no resumption across nodes or restarts).
# ticket_key_file = "/etc/ringgate/ticket.key"
# After the file is replaced and reloaded, the old key still decrypts this long.
ticket_key_overlap_s = 86400

[auth]
# HS256 secret for client JWTs (sub = user id, exp checked). Set one of:
# jwt_secret = "at least sixteen bytes"
# jwt_secret_file = "/etc/ringgate/jwt-secret"
# With neither, a random secret is created at <data_dir>/jwt-secret.
# Clock skew allowed on exp and nbf.
leeway_s = 30
# Required iss / aud claims, when set:
# issuer = "https://auth.example.com"
# audience = "ringgate"
# Keys chosen by the token's kid header (a token without kid uses the secret above):
# [[auth.keys]]
# kid = "k1"
# alg = "ES256"                               # HS256, RS256, ES256, EdDSA
# public_key_file = "/etc/ringgate/k1.pem"    # SPKI PEM (RS256, ES256, EdDSA)
# secret_file = "/etc/ringgate/k1.secret"     # HS256 only

[session]
# Heartbeat interval told to clients; a connection silent for 2.5x this is closed.
heartbeat_s = 30
# From TCP accept to a valid CONNECT, TLS handshake included.
handshake_timeout_ms = 10000
# First retransmission timeout of an unacknowledged PUSH; doubles per retry.
ack_timeout_ms = 5000
# Retransmissions before DISCONNECT(4).
max_retries = 2
# Unacknowledged PUSHes in flight per connection.
inflight_window = 64
# Largest frame body accepted, bytes.
max_frame = 65536
# client_msg_ids remembered per device for dedup of retried SENDs.
dedup_per_device = 1024
# A device's dedup table is packed (~5 B per entry) this long after its last
# connection ended; 0 = at the next tick.
dedup_pack_after_ms = 30000

[store]
# Dev certificate, JWT secret and (with durability = "durable") the log.
data_dir = "./ringgate-data"
# "durable" (append-only log under data_dir/log) or "memory" (lost on restart).
durability = "durable"
# Durable only. "always": SENDACK after the record is fsynced (group commit);
# a crash loses nothing that was SENDACKed.
# "interval": fsync every fsync_interval_ms; a power loss loses up to that much
# of SENDACKed messages, a process crash nothing (the page cache survives).
# "never": the kernel writes back when it likes; a power loss loses up to its
# writeback delay (~30 s), a process crash nothing.
fsync = "always"
fsync_interval_ms = 100
# A new log segment file starts past this size; expired segments are deleted.
segment_max_bytes = 67108864
# Retention per user inbox.
inbox_max_messages = 10000
inbox_max_age_s = 604800
# RAM retained messages may hold (memory store: beyond it SENDACK 5);
# 0 = a quarter of the machine's RAM, printed at start.
memory_budget_bytes = 0

[limits]
# Unsent output per connection above which reading from it stops (TCP backpressure).
output_high_water_bytes = 1048576
# Above the high-water mark this long: DISCONNECT 8 (slow consumer).
slow_consumer_timeout_ms = 30000
# SENDs per second per connection (burst = rate); excess: SENDACK 3, nothing stored.
send_rate_per_connection = 2000
# SENDs of one connection awaiting their SENDACK; beyond: SENDACK 5.
max_sends_in_flight = 1024
# Largest SEND payload; beyond it, or a PUSH that would exceed max_frame: SENDACK 4.
max_payload_bytes = 61440
# Connections per source address that have not completed CONNECT; beyond: the oldest is closed.
max_preauth_per_ip = 256
# New connections per second per source address (burst = rate); beyond: closed at once.
connect_rate_per_ip = 200
# Open connections in the process; 0 = the open-files limit minus the server's reserve.
# Near it, connections that have not completed CONNECT are shed, oldest first.
max_connections = 0
# CONNECTs accepted per second per core (burst = rate); beyond: CONNACK 3 and close.
connect_rate = 10000
# Cross-core messages queued per core for new work; when full a SEND gets SENDACK 5.
mailbox_capacity = 65536
# Devices remembered per user; a new one beyond evicts the least recently seen
# offline device; if every device is online: CONNACK 3.
max_devices_per_user = 64

[admin]
# Bearer token for /v1/... Set one of (or neither: a random token is created
# at <data_dir>/admin-token, mode 0600, and its path printed):
# token = "at least sixteen bytes"
# token_file = "/etc/ringgate/admin-token"
# Require the token for /metrics too.
metrics_token = false
# Publish idempotency keys: remembered this long (across restarts when durable), at most this many.
idempotency_ttl_s = 86400
idempotency_max_keys = 100000
# Delivery ledger (GET /v1/messages/{id}): kept this long (0 = off), at most this many entries per core.
ledger_retention_s = 3600
ledger_max_entries = 200000
# Publishes per second the API accepts (more get 429); 0 = no limit.
publishes_per_s = 0
# Largest request body, bytes; admin connections served at once.
max_body_bytes = 1048576
max_connections = 32

[route]
# GET /v1/route on the gateway port: the endpoints clients should use, signed.
# How long clients may use a route (they refresh at 0.75 x this).
ttl_s = 3600
# Client ladder: next endpoint after this long; one attempt gives up after that.
stagger_ms = 3000
attempt_timeout_ms = 30000
# Client reconnect backoff: exponential from base to cap, minus up to jitter x itself.
backoff_base_ms = 500
backoff_cap_ms = 30000
backoff_jitter = 0.5
# Endpoints clients report failed (>= 3 reports, >= half of the requests) over
# this decaying window are listed last.
feedback_window_s = 300
# Ed25519 PKCS#8 PEM signing key; unset = <data_dir>/route-key.pem, created on
# first start. The public key is printed and written to <data_dir>/route-key.pub.
# signing_key_file = "/etc/ringgate/route-key.pem"
# With no endpoints: this node, named public_host (else the listen IP, or the
# request's Host header when listening on 0.0.0.0).
# public_host = "im.example.com"
# [[route.endpoints]]
# id = "a1"
# transport = "tls"        # tls, tcp, wss, ws, sse, lp
# host = "im.example.com"  # host or addr required
# addr = "203.0.113.5"
# port = 7443
# sni = "im.example.com"   # default: host
# priority = 0             # lower first
# weight = 100             # higher first among equal priority

[web]
# Cross-origin Origins allowed on HTTP requests: "https://app.example.com", "https://*.example.com".
allowed_origins = []
# The listener's own origin is https even without TLS (behind a TLS-terminating proxy).
assume_https = false
# Idle keep-alive HTTP connections close after this.
keepalive_idle_s = 60
# A long-poll with nothing to return is answered 204 after this (capped at the session's heartbeat).
poll_timeout_s = 25
# permessage-deflate: not implemented; true is refused at startup.
deflate = false

# [fleet]
# Several nodes sharing every inbox through Redis 7 / Valkey (docs/fleet.md).
# Unset or empty redis = one node on the local log (the default).
# redis = ["redis://127.0.0.1:6379"]   # several URLs = Redis Cluster seed nodes
# node_id = "n1"                        # default: hostname + listen port
# advertise_host = "10.0.0.5"           # default: route.public_host, else the listen IP
# heartbeat_ms = 1000                   # a node is live while its heartbeat lives (3 x this)
# engine_timeout_ms = 2000              # slower engine calls: SENDACK 5 / admin 503
# max_engine_inflight = 65536           # engine requests queued per node; beyond: SENDACK 5
# max_clock_skew_ms = 1000              # how far node clocks may disagree (a data loss is told apart by time)

[groups]
# Initial groups (seed an empty data directory; then the admin API's saved groups win).
# name = ["member", "member", ...]
"#;

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::DEFAULT_TOML;

    #[test]
    fn default_toml_is_the_default() {
        let parsed = Config::from_toml_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }
}
