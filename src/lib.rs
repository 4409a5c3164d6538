//! ringgate: a thread-per-core io_uring IM and push gateway speaking protocol v1 over TLS.
//!
//! Map of the crate:
//!
//! - [`proto`]: the sans-IO protocol core — frame codec, per-connection
//!   session state machine, per-core ACK timer wheel. No sockets, no clock.
//! - [`runtime`]: the thin glue — worker threads (one monoio runtime per
//!   core), accept loops, connection tasks, cross-core mailboxes, lifecycle.
//! - [`store`]: inboxes behind a trait: in memory, or the durable per-core
//!   log with group-committed fsync and start-up recovery.
//! - [`admin`]: the admin API (HTTP/1.1 on its own threads): publish,
//!   delivery ledger, presence, kick, mute, durable groups, health, metrics.
//! - [`http`]: sans-IO HTTP/1.1 requests and responses, the one parser of
//!   the admin API and the gateway port's web transports.
//! - [`placement`]: which core owns a user (used by the runtime and the
//!   store's recovery alike).
//! - [`metrics`]: per-core lock-free counters, Prometheus text at scrape.
//! - [`route`]: the route endpoint's signed payload, endpoint order and
//!   failure feedback (`GET /v1/route`, served by `runtime::gate_http`).
//! - [`auth`]: JWTs: the HS256 secret and the `[[auth.keys]]` chosen by `kid`.
//! - [`tls`]: rustls server configuration and the development certificate.
//! - [`tls_tickets`]: session ticket keys from a file, shared by a fleet and rotated by reload.
//! - [`net`]: listener and socket options, chosen on purpose.
//! - [`limits`]: what one peer may make the server hold or do (rate limits,
//!   admission by address, name rules), sans-IO.
//! - [`config`]: the one serde configuration struct with documented defaults.
//! - [`doctor`]: the live machine's limits against a sysctl profile, and the
//!   connection ceiling they allow.
//! - `fuzzing`: the entry points of the fuzz targets in `fuzz/` (hidden).
//! - [`measured`]: the measured per-connection figures (one committed run, named) that doctor, plan and the README quote.
//! - [`plan`]: capacity planning from the benchmark suite's JSON.

pub mod admin;
pub mod auth;
pub mod config;
pub mod config_schema;
pub mod numfmt;
pub mod doctor;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod http;
pub mod metrics;
pub mod net;
pub mod measured;
pub mod placement;
pub mod plan;
pub mod proto;
pub mod route;
pub mod runtime;
pub mod store;
pub mod tls;
pub mod tls_tickets;
