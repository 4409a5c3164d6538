//! The measured figures `ringgate doctor`, `ringgate plan` and the README quote, read from one committed benchmark result and named with it.
//!
//! One figure per quantity: the idle-connection cost comes from the newest
//! committed `idle-multi` run (embedded at build time, so a deployed binary
//! carries it), never from a constant typed in elsewhere. A test checks
//! that the embedded file is the newest `bench/results/idle-multi-*.json`;
//! committing a newer run means pointing [`IDLE_RESULT_PATH`] at it. The
//! fleet figures (CPU per cross-node message, engine memory per user and
//! per message) come the same way from the newest `fleet-*.json`
//! ([`FLEET_RESULT_PATH`]).
//!
//! The kernel figure is half the slab growth per connection: the benchmark
//! runs client and server on one host over loopback, so the kernel holds
//! both ends of every connection (two sockets, files, dentries). A gateway
//! holds one end.

use std::sync::OnceLock;

use serde_json::Value;

/// The committed run the figures come from (repository path).
pub const IDLE_RESULT_PATH: &str = "bench/results/idle-multi-2026-12-05T080536Z.json";
const IDLE_RESULT: &str = include_str!("../bench/results/idle-multi-2026-12-05T080536Z.json");

/// What one idle TLS connection was measured to cost, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleCost {
    /// The result file (repository path).
    pub source: &'static str,
    /// Connections held in that run.
    pub connections: u64,
    /// Server processes sharing the port in that run.
    pub servers: u64,
    /// When the run was made (UTC).
    pub date: String,
    /// The commit the run measured.
    pub commit: String,
    /// Server RSS growth ÷ connections.
    pub process_bytes_per_conn: f64,
    /// Kernel slab growth ÷ connections ÷ 2 (one end of each connection).
    pub kernel_bytes_per_conn: f64,
}

impl IdleCost {
    pub fn total_bytes_per_conn(&self) -> f64 {
        self.process_bytes_per_conn + self.kernel_bytes_per_conn
    }
}

/// Why a result file cannot give the figures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MeasuredError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no {0} in the result's first entry")]
    Missing(&'static str),
}

/// Reads the idle-connection figures from an `idle-multi` result JSON.
pub fn parse_idle(source: &'static str, text: &str) -> Result<IdleCost, MeasuredError> {
    let v: Value = serde_json::from_str(text).map_err(|e| MeasuredError::Json(e.to_string()))?;
    let r = v.pointer("/idle_multi/0").ok_or(MeasuredError::Missing("result"))?;
    let num = |k: &'static str| r.get(k).and_then(Value::as_f64).ok_or(MeasuredError::Missing(k));
    Ok(IdleCost {
        source,
        connections: num("connected")? as u64,
        servers: num("servers")? as u64,
        date: v.pointer("/envelope/date_utc").and_then(Value::as_str).unwrap_or("?").to_string(),
        commit: v.pointer("/envelope/git_commit").and_then(Value::as_str).unwrap_or("?").chars().take(12).collect(),
        process_bytes_per_conn: num("rss_bytes_per_conn")?,
        kernel_bytes_per_conn: num("kernel_slab_bytes_per_conn")? / 2.0,
    })
}

/// The embedded run's figures.
pub fn idle_cost() -> &'static IdleCost {
    static COST: OnceLock<IdleCost> = OnceLock::new();
    // The embedded file is fixed at build time and parsed by a unit test,
    // so a failure here is a build of a broken tree, not a runtime condition.
    COST.get_or_init(|| parse_idle(IDLE_RESULT_PATH, IDLE_RESULT).expect("embedded idle-multi result parses (see measured::tests)"))
}

/// The committed `ringgate-bench fleet` run the fleet figures come from.
/// A test checks it is the newest `bench/results/fleet-*.json`.
pub const FLEET_RESULT_PATH: &str = "bench/results/fleet-2026-12-05T072903Z.json";
const FLEET_RESULT: &str = include_str!("../bench/results/fleet-2026-12-05T072903Z.json");

/// What fleet mode was measured to cost (3 nodes + Redis on one machine,
/// every message crossing nodes), and where.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetCost {
    pub source: &'static str,
    pub date: String,
    pub commit: String,
    /// CPU of all ringgate nodes per delivered cross-node message (median of the paced runs).
    pub node_cpu_us_per_msg: f64,
    /// CPU of redis-server per message.
    pub engine_cpu_us_per_msg: f64,
    /// Commands the engine ran per message.
    pub engine_cmds_per_msg: f64,
    /// Engine `used_memory` per offline user (device record + inbox keys, no message).
    pub bytes_per_offline_user: f64,
    /// Engine `used_memory` per retained message of `payload_bytes`.
    pub bytes_per_message: f64,
    /// A sending device's full dedup record in the engine.
    pub dedup_bytes_per_device: f64,
    pub payload_bytes: u64,
}

/// Reads the fleet figures from a `ringgate-bench fleet` result JSON.
pub fn parse_fleet(source: &'static str, text: &str) -> Result<FleetCost, MeasuredError> {
    let v: Value = serde_json::from_str(text).map_err(|e| MeasuredError::Json(e.to_string()))?;
    let r = v.pointer("/fleet/0").ok_or(MeasuredError::Missing("fleet result"))?;
    let num = |p: &'static str| r.pointer(p).and_then(Value::as_f64).filter(|x| x.is_finite()).ok_or(MeasuredError::Missing(p));
    Ok(FleetCost {
        source,
        date: v.pointer("/envelope/date_utc").and_then(Value::as_str).unwrap_or("?").to_string(),
        commit: v.pointer("/envelope/git_commit").and_then(Value::as_str).unwrap_or("?").chars().take(12).collect(),
        node_cpu_us_per_msg: num("/fleet_nodes_cpu_us_per_msg")?,
        engine_cpu_us_per_msg: num("/fleet_engine_cpu_us_per_msg")?,
        engine_cmds_per_msg: num("/engine_cmds_per_msg")?,
        bytes_per_offline_user: num("/memory/bytes_per_offline_user")?,
        bytes_per_message: num("/memory/bytes_per_message")?,
        dedup_bytes_per_device: num("/memory/dedup_bytes_per_sending_device")?,
        payload_bytes: num("/memory/payload_bytes")? as u64,
    })
}

/// The embedded fleet run's figures.
pub fn fleet_cost() -> &'static FleetCost {
    static COST: OnceLock<FleetCost> = OnceLock::new();
    // Fixed at build time and parsed by a unit test (see idle_cost).
    COST.get_or_init(|| parse_fleet(FLEET_RESULT_PATH, FLEET_RESULT).expect("embedded fleet result parses (see measured::tests)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_run_parses_and_is_the_newest_committed() {
        let c = idle_cost();
        assert!(c.connections >= 100_000, "{c:?}");
        assert!(c.process_bytes_per_conn > 500.0 && c.process_bytes_per_conn < 20_000.0, "{c:?}");
        assert!(c.kernel_bytes_per_conn > 500.0 && c.kernel_bytes_per_conn < 20_000.0, "{c:?}");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
        let newest = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("idle-multi-") && n.ends_with(".json"))
            .max()
            .unwrap();
        assert_eq!(IDLE_RESULT_PATH, format!("bench/results/{newest}"), "point measured::IDLE_RESULT_PATH at the newest run");
    }

    #[test]
    fn the_embedded_fleet_run_parses_and_is_the_newest_committed() {
        let c = fleet_cost();
        assert!(c.node_cpu_us_per_msg > 1.0 && c.node_cpu_us_per_msg < 10_000.0, "{c:?}");
        assert!(c.engine_cpu_us_per_msg > 0.1 && c.engine_cmds_per_msg >= 1.0, "{c:?}");
        assert!(c.bytes_per_message > c.payload_bytes as f64 && c.bytes_per_message < 10_000.0, "{c:?}");
        assert!(c.bytes_per_offline_user > 10.0 && c.dedup_bytes_per_device > 1_000.0, "{c:?}");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
        let newest = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("fleet-") && n.ends_with(".json"))
            .max()
            .unwrap();
        assert_eq!(FLEET_RESULT_PATH, format!("bench/results/{newest}"), "point measured::FLEET_RESULT_PATH at the newest run");
    }

    #[test]
    fn missing_fleet_figures_are_named() {
        assert_eq!(parse_fleet("x", r#"{"fleet": [{"fleet_nodes_cpu_us_per_msg": 5}]}"#), Err(MeasuredError::Missing("/fleet_engine_cpu_us_per_msg")));
        assert_eq!(parse_fleet("x", r#"{"fleet": []}"#), Err(MeasuredError::Missing("fleet result")));
    }

    #[test]
    fn missing_figures_are_named() {
        assert_eq!(parse_idle("x", r#"{"idle_multi": [{"connected": 5}]}"#), Err(MeasuredError::Missing("servers")));
        assert!(matches!(parse_idle("x", "nope"), Err(MeasuredError::Json(_))));
    }
}
