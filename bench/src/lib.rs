//! ringgate-bench: the load generator, scenario harness and report writer for ringgate and its peers.
//!
//! Map of the crate:
//!
//! - [`procfs`]: parsers for the `/proc` files every figure comes from
//!   (`smaps_rollup`, `stat`, `net/sockstat`, `slabinfo`, sysctls).
//! - [`stats`]: latency histograms, percentile summaries and the open-loop
//!   schedule (coordinated-omission-free send timeline).
//! - [`mqtt`]: the minimal MQTT 3.1.1 codec the Mosquitto peer needs.
//! - [`rgclient`]: ringgate protocol v1 client helpers over any byte stream.
//! - [`http1`]: the one GET request the nginx peer is measured with.
//! - [`admin`]: a minimal blocking client of the admin API (publish, delivery ledger).
//! - [`clientnet`]: TLS client configuration and bind-before-connect over
//!   many loopback source addresses.
//! - [`worker`]: the load-generating child process (one tokio
//!   current-thread runtime per client core) and its job descriptions.
//! - [`fleet`]: the parent side: spawns `--procs N` workers, drives their
//!   phases over stdin/stdout and merges their results.
//! - [`targets`]: starts and measures the servers under test (ringgate on
//!   io_uring and epoll, nginx, Mosquitto) with generated configs and certs.
//! - [`scenarios`]: `idle`, `handshake`, `push`, `reconnect-storm`.
//! - [`suite`]: the one command that runs every scenario and writes the table.
//! - [`report`]: the JSON envelope (commit, kernel, sysctls) and the
//!   Markdown table the suite writes into `bench/README.md`.
//! - [`idle_multi`]: idle connections across several server processes sharing one port.
//! - [`lean`]: the held connection of the lean idle client (TLS record hand-off after CONNACK).
//! - [`reload_push`]: a configuration reload under the push load (p99 around it, connections lost).
//! - [`flame`]: folds `perf script` output and renders it with inferno.

pub mod admin;
pub mod clientnet;
pub mod fleet;
pub mod fleet_redis;
pub mod http1;
pub mod idle_multi;
pub mod lean;
pub mod flame;
pub mod mqtt;
pub mod procfs;
pub mod reload_push;
pub mod report;
pub mod rgclient;
pub mod scenarios;
pub mod stats;
pub mod suite;
pub mod targets;
pub mod worker;
pub mod wsclient;
