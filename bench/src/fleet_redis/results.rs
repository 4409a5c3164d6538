//! What the fleet scenario takes and records: its options, the result
//! types written as JSON (committed under `bench/results/`, read back by
//! `ringgate plan --fleet` and the renderer, so old results must keep
//! parsing), and their Markdown tables.
//!
//! Separate from the runner so that the format that outlives a run is in
//! one place, with the test that loads a committed result.

use serde::{Deserialize, Serialize};

use crate::report::thousands;
use crate::stats::{ratio, Summary};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetOpts {
    /// Sender → receiver pairs in the push phase.
    pub pairs: u32,
    /// Paced offered load, msg/s for all senders together.
    pub rate: f64,
    pub payload_bytes: usize,
    pub warmup_s: f64,
    pub measure_s: f64,
    /// A/B rounds (fleet and single node alternate, the order flipped each round).
    pub rounds: u32,
    /// Also a closed-loop run (each sender keeps `window` messages in flight end to end).
    pub saturation: bool,
    pub window: u32,
    /// Node-kill phase: pairs spread over the nodes, paced load, SIGKILL of the third node.
    pub kill: bool,
    pub kill_pairs: u32,
    pub kill_rate: f64,
    pub kill_at_s: f64,
    pub kill_load_s: f64,
    /// Engine memory phase: users created, then messages retained per user.
    pub mem_users: u64,
    pub mem_messages: u64,
    /// `[fleet] heartbeat_ms` of the nodes (a dead node leaves the route after 3 ×).
    pub heartbeat_ms: u64,
}

impl Default for FleetOpts {
    fn default() -> Self {
        FleetOpts {
            pairs: 8,
            rate: 10_000.0,
            payload_bytes: 64,
            warmup_s: 1.0,
            measure_s: 5.0,
            rounds: 2,
            saturation: true,
            window: 16,
            kill: true,
            kill_pairs: 24,
            kill_rate: 3_000.0,
            kill_at_s: 2.0,
            kill_load_s: 6.0,
            mem_users: 2_000,
            mem_messages: 10,
            heartbeat_ms: 1_000,
        }
    }
}

impl FleetOpts {
    /// The suite's short form: one round at the target rate, a short kill phase, a small memory fill.
    pub fn short() -> FleetOpts {
        FleetOpts { rounds: 1, measure_s: 3.0, saturation: false, kill_pairs: 12, kill_load_s: 5.0, mem_users: 1_000, mem_messages: 5, ..Default::default() }
    }
}

/// One measured push run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetRun {
    /// `fleet` (sender on n1, receiver on n2, + Redis) or `single` (local log, fsync always).
    pub setup: String,
    pub round: u32,
    /// `paced` or `saturation`.
    pub mode: String,
    pub offered_per_s: Option<f64>,
    pub sent_in_window: u64,
    pub delivered_in_window: u64,
    pub msgs_per_s: f64,
    /// Scheduled send time (paced) or send time (saturation) → receipt.
    pub latency_us: Summary,
    /// Messages sent in the window that never arrived.
    pub missing: u64,
    /// SENDACKs with a status other than 0.
    pub send_errors: u64,
    /// CPU of the ringgate process(es) in the window, s.
    pub nodes_cpu_s: f64,
    /// CPU of `redis-server` in the window, s (0 for the single node).
    pub engine_cpu_s: f64,
    /// (nodes + engine) CPU ÷ messages delivered in the window, µs.
    pub cpu_us_per_msg: f64,
    pub engine_cpu_us_per_msg: f64,
    /// Commands the engine processed in the window ÷ messages delivered (`INFO stats` total_commands_processed).
    pub engine_cmds_per_msg: Option<f64>,
    /// AOF rewrites that ran in the window (`INFO persistence`: finished
    /// in it, or still running at its end). Redis starts one whenever the
    /// AOF doubled past 64 MB; its child writes the whole dataset next to
    /// the per-turn fsync, which shows in the p99 (docs/fleet.md, "Latency").
    #[serde(default)]
    pub engine_aof_rewrites: Option<u64>,
    /// AOF bytes the engine wrote in the window ÷ messages delivered
    /// (`aof_current_size` growth; unknown when a rewrite reset it).
    #[serde(default)]
    pub engine_aof_bytes_per_msg: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KillResult {
    pub pairs: u32,
    pub rate: f64,
    /// Clients (senders + receivers) that were on the killed node.
    pub clients_on_killed_node: u64,
    /// SIGKILL → every one of them back (CONNACK on another node) and caught up, ms.
    pub all_back_and_caught_up_ms: f64,
    /// SIGKILL → the last of them got its CONNACK, ms.
    pub all_reconnected_ms: f64,
    /// Per client: SIGKILL → back and caught up.
    pub back_and_caught_up_us: Summary,
    /// SENDs retried with their client_msg_id after the reconnect (unanswered when the node died).
    pub retried_sends: u64,
    pub confirmed: u64,
    /// Confirmed (SENDACK 0) but never delivered, after the drain.
    pub lost: u64,
    /// A message delivered under two seqs (a retransmission of one seq is not counted).
    pub duplicates: u64,
    /// Clients that were never back (should be 0).
    pub not_back: u64,
    pub send_errors: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EngineMemory {
    pub users: u64,
    pub messages_per_user: u64,
    pub payload_bytes: u64,
    /// `used_memory` growth ÷ users after each user connected once (one device known, no message).
    pub bytes_per_known_user: f64,
    /// Growth ÷ users at each user's first message, less one message: the inbox's own keys.
    pub bytes_per_inbox: f64,
    /// Growth ÷ messages for the further messages.
    pub bytes_per_message: f64,
    /// An offline user with a device and an inbox, without messages: known user + inbox.
    pub bytes_per_offline_user: f64,
    /// `MEMORY USAGE` of a sending device's dedup keys once it sent more than the engine keeps.
    pub dedup_bytes_per_sending_device: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetResult {
    pub opts: FleetOpts,
    pub redis_version: String,
    /// The engine's `appendfsync` in this run (`always` unless overridden).
    #[serde(default)]
    pub redis_appendfsync: String,
    pub server_version: String,
    pub nodes: usize,
    /// `/proc/loadavg` before and after (the machine is shared).
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub runs: Vec<FleetRun>,
    /// Medians over the rounds of the paced runs.
    pub fleet_p99_us: f64,
    pub single_p99_us: f64,
    pub fleet_cpu_us_per_msg: f64,
    pub single_cpu_us_per_msg: f64,
    /// The fleet's paced CPU per message split: ringgate nodes and redis-server (medians).
    pub fleet_nodes_cpu_us_per_msg: f64,
    pub fleet_engine_cpu_us_per_msg: f64,
    /// Engine commands per message (median of the paced fleet runs).
    pub engine_cmds_per_msg: f64,
    /// fleet ÷ single CPU per message (target ≤ 4).
    pub cpu_ratio: f64,
    pub p99_target_met: bool,
    pub cpu_target_met: bool,
    pub kill: Option<KillResult>,
    pub memory: Option<EngineMemory>,
    pub notes: Vec<String>,
}

fn us_ms(v: u64) -> String {
    format!("{:.2}", v as f64 / 1000.0)
}

/// The Markdown tables: push runs with ratios to the single node of the same round, then the kill and memory figures.
pub fn markdown(r: &FleetResult) -> String {
    let mut s = String::new();
    s += &format!(
        "### Fleet: 3 nodes + Redis {} (appendfsync {}) vs one node (local log, fsync always)\n\nSender on n1, receiver on n2 (every message crosses nodes through the engine); server CPU = ringgate processes + redis-server from /proc/<pid>/stat. Load average {} before, {} after.\n\n",
        r.redis_version, r.redis_appendfsync, r.loadavg_before, r.loadavg_after
    );
    let mut data: Vec<&FleetRun> = r.runs.iter().collect();
    data.sort_by_key(|x| (x.mode != "paced", x.round, x.setup != "single"));
    s += "| setup | load | round | msg/s | p50 ms | p99 ms | p99.9 ms | CPU µs/msg (servers) | of which Redis | engine cmds/msg | missing | p99 ÷ single | CPU ÷ single |\n";
    s += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for x in &data {
        // The ratios are to the single node of the same round and load.
        let base = r.runs.iter().find(|b| b.setup == "single" && b.round == x.round && b.mode == x.mode);
        let rat = |a: f64, b: Option<f64>| ratio(Some(a), b).map_or("–".to_string(), |v| format!("{v:.2}×"));
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |\n",
            if x.setup == "fleet" { "fleet: n1 → n2 + Redis" } else { "single node, local log" },
            x.offered_per_s.map_or("saturation".to_string(), |o| format!("{} msg/s", thousands(o))),
            x.round,
            thousands(x.msgs_per_s),
            us_ms(x.latency_us.p50_us),
            us_ms(x.latency_us.p99_us),
            us_ms(x.latency_us.p999_us),
            x.cpu_us_per_msg,
            if x.setup == "fleet" { format!("{:.1}", x.engine_cpu_us_per_msg) } else { "–".into() },
            x.engine_cmds_per_msg.map_or("–".into(), |c| format!("{c:.2}")),
            thousands(x.missing as f64),
            if x.setup == "fleet" { rat(x.latency_us.p99_us as f64, base.map(|b| b.latency_us.p99_us as f64)) } else { "1×".into() },
            if x.setup == "fleet" { rat(x.cpu_us_per_msg, base.map(|b| b.cpu_us_per_msg)) } else { "1×".into() },
        );
    }
    s += &format!(
        "\nMedians of the paced runs: cross-node p99 **{:.2} ms** (target < 5 ms: {}), single node {:.2} ms; CPU per message fleet {:.1} µs vs single {:.1} µs = **{:.2}×** (target ≤ 4×: {}).\n",
        r.fleet_p99_us / 1000.0,
        if r.p99_target_met { "met" } else { "missed" },
        r.single_p99_us / 1000.0,
        r.fleet_cpu_us_per_msg,
        r.single_cpu_us_per_msg,
        r.cpu_ratio,
        if r.cpu_target_met { "met" } else { "missed" }
    );
    let fleet_runs: Vec<&FleetRun> = r.runs.iter().filter(|x| x.setup == "fleet").collect();
    if fleet_runs.iter().any(|x| x.engine_aof_rewrites.is_some()) {
        let per_run: Vec<String> = fleet_runs
            .iter()
            .map(|x| {
                format!(
                    "{} round {}: {} rewrite(s){}",
                    x.mode,
                    x.round,
                    x.engine_aof_rewrites.map_or("?".into(), |n| n.to_string()),
                    x.engine_aof_bytes_per_msg.map_or(String::new(), |b| format!(", {b:.0} B of AOF per message"))
                )
            })
            .collect();
        s += &format!("\nEngine AOF in the fleet windows (a rewrite writes the whole dataset beside the per-turn fsync): {}.\n", per_run.join("; "));
    }
    if let Some(k) = &r.kill {
        s += &format!(
            "\nNode kill (SIGKILL of n3 at {:.0} s of {:.0} s of paced load, {} pairs at {} msg/s, each receiver on another node than its sender): its {} clients back on another node and caught up after **{:.0} ms** (last CONNACK {:.0} ms; median per client {:.0} ms); {} SENDs retried with their ids; {} confirmed, **{} lost, {} duplicates**, {} clients not back.\n",
            r.opts.kill_at_s,
            r.opts.kill_load_s,
            k.pairs,
            thousands(k.rate),
            k.clients_on_killed_node,
            k.all_back_and_caught_up_ms,
            k.all_reconnected_ms,
            k.back_and_caught_up_us.p50_us as f64 / 1000.0,
            k.retried_sends,
            thousands(k.confirmed as f64),
            k.lost,
            k.duplicates,
            k.not_back
        );
    }
    if let Some(m) = &r.memory {
        s += &format!(
            "\nEngine memory (`used_memory` deltas, {} users × {} messages of {} B through ringgate): **{:.0} B per offline user** (device record {:.0} B + inbox keys {:.0} B), **{:.0} B per retained message**; a sending device's dedup record {:.0} B.\n",
            thousands(m.users as f64),
            m.messages_per_user,
            m.payload_bytes,
            m.bytes_per_offline_user,
            m.bytes_per_known_user,
            m.bytes_per_inbox,
            m.bytes_per_message,
            m.dedup_bytes_per_sending_device
        );
    }
    for n in &r.notes {
        s += &format!("\n- {n}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_prints_ratios_targets_and_kill() {
        let run = |setup: &str, p99: u64, cpu: f64| FleetRun {
            setup: setup.into(),
            round: 0,
            mode: "paced".into(),
            offered_per_s: Some(10_000.0),
            sent_in_window: 50_000,
            delivered_in_window: 50_000,
            msgs_per_s: 10_000.0,
            latency_us: Summary { p50_us: p99 / 3, p99_us: p99, p999_us: p99 * 2, ..Default::default() },
            missing: 0,
            send_errors: 0,
            nodes_cpu_s: 1.0,
            engine_cpu_s: 0.5,
            cpu_us_per_msg: cpu,
            engine_cpu_us_per_msg: cpu / 3.0,
            engine_cmds_per_msg: Some(4.0),
            engine_aof_rewrites: Some(1),
            engine_aof_bytes_per_msg: None,
        };
        let r = FleetResult {
            opts: FleetOpts::default(),
            redis_version: "7.0.15".into(),
            redis_appendfsync: "always".into(),
            server_version: "ringgate".into(),
            nodes: 3,
            loadavg_before: "1.0 1.0 1.0".into(),
            loadavg_after: "1.5 1.0 1.0".into(),
            runs: vec![run("single", 900, 20.0), run("fleet", 3000, 60.0)],
            fleet_p99_us: 3000.0,
            single_p99_us: 900.0,
            fleet_cpu_us_per_msg: 60.0,
            single_cpu_us_per_msg: 20.0,
            fleet_nodes_cpu_us_per_msg: 40.0,
            fleet_engine_cpu_us_per_msg: 20.0,
            engine_cmds_per_msg: 4.0,
            cpu_ratio: 3.0,
            p99_target_met: true,
            cpu_target_met: true,
            kill: Some(KillResult { clients_on_killed_node: 16, all_back_and_caught_up_ms: 812.0, confirmed: 18_000, ..Default::default() }),
            memory: Some(EngineMemory { bytes_per_offline_user: 300.0, bytes_per_message: 200.0, ..Default::default() }),
            notes: vec![],
        };
        let md = markdown(&r);
        assert!(md.contains("| 3.33× | 3.00× |"), "ratios to the single node of the same round: {md}");
        assert!(md.contains("**3.00 ms** (target < 5 ms: met)"), "{md}");
        assert!(md.contains("**3.00×** (target ≤ 4×: met)"), "{md}");
        assert!(md.contains("**812 ms**") && md.contains("**0 lost, 0 duplicates**"), "{md}");
        assert!(md.contains("**300 B per offline user**") && md.contains("**200 B per retained message**"), "{md}");
        assert!(md.contains("Engine AOF in the fleet windows") && md.contains("paced round 0: 1 rewrite(s)"), "{md}");
    }

    /// Results written before the AOF fields existed still load (plan and
    /// render read the committed ones).
    #[test]
    fn runs_without_aof_fields_still_parse() {
        let v: serde_json::Value = serde_json::from_str(include_str!("../../results/fleet-2026-12-05T072903Z.json")).expect("the committed result is JSON");
        let d: FleetResult = serde_json::from_value(v["fleet"][0].clone()).expect("fleet[0] parses");
        assert!(d.runs.iter().all(|r| r.engine_aof_rewrites.is_none() && r.engine_aof_bytes_per_msg.is_none()));
    }
}
