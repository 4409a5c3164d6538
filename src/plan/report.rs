//! The capacity plan as a report: Markdown with every figure traced to its
//! JSON path, and a self-contained HTML page that plots the measured curves
//! (inline SVG) with the plan's operating point. Separate from the model
//! (`plan.rs`) because rendering changes for readers, the arithmetic for
//! measurements; `ringgate plan --fleet` reuses `md_to_html`.

use std::fmt::Write as _;

use super::{Measured, Plan, PushPoint, Targets, OFFLINE_DEDUP_BYTES, OFFLINE_DEDUP_SOURCE, OFFLINE_USER_BYTES, OFFLINE_USER_SOURCE, OFFLINE_USER_TOTAL_BYTES};
use crate::numfmt::thousands_f;

fn gib(b: f64) -> String {
    format!("{:.2} GiB", b / (1u64 << 30) as f64)
}

/// The Markdown report.
pub fn markdown(m: &Measured, t: &Targets, p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# ringgate capacity plan\n");
    let _ = writeln!(
        s,
        "**Nodes: {}** ({} for the load + 1 spare; {} cores, {:.0} GiB each) — binding constraint: {}.\n",
        p.nodes, p.nodes_for_load, t.cores_per_node, t.ram_per_node_gib, p.binding
    );
    let _ = writeln!(s, "## Inputs\n\nTargets: {} connections, {} messages/s, {:.0} % reconnecting within {:.0} s, headroom {:.0} %.\n", thousands_f(t.connections as f64), thousands_f(t.messages_per_s), t.reconnect_fraction * 100.0, t.reconnect_window_s, t.headroom * 100.0);
    let _ = writeln!(s, "Measured figures, from `{}` (target `{}`, run {} on {}, commit `{}`):\n", m.source, m.target, m.date, m.machine, m.commit);
    let mem_at = m.memory.iter().find(|p| p.json == m.memory_source).map_or(0.0, |p| p.conns);
    let _ = writeln!(s, "| figure | value | from (curve, point) | JSON |\n|---|---:|---|---|");
    let _ = writeln!(s, "| process memory per idle TLS connection | {} B | memory curve, point at {} connections | `{}.rss_bytes_per_conn` |", thousands_f(m.process_bytes_per_conn), thousands_f(mem_at), m.memory_source);
    let _ = writeln!(s, "| kernel memory per connection (server side) | {} B | memory curve, point at {} connections | `{}.kernel_slab_bytes_per_conn` ÷ 2 |", thousands_f(m.kernel_bytes_per_conn), thousands_f(mem_at), m.memory_source);
    let _ = writeln!(s, "| base process memory | {} | single-process idle run | `idle[target].server_before.mem.rss_kb` |", gib(m.base_rss_bytes));
    if t.offline_users > 0 {
        let _ = writeln!(s, "| memory per offline user: inbox index (100 retained messages, durable store) | {OFFLINE_USER_BYTES:.0} B | {OFFLINE_USER_SOURCE} | — |");
        let _ = writeln!(s, "| memory per offline user: one device's full dedup table (1,024 ids), packed | {OFFLINE_DEDUP_BYTES:.0} B | {OFFLINE_DEDUP_SOURCE} | — |");
    }
    let _ = writeln!(s, "| server CPU per full TLS handshake | {:.0} µs | handshake run | `handshake[target, full].server_cpu_us_per_handshake` |", m.cpu_us_per_handshake);
    let _ = writeln!(s, "| server CPU per reconnect (storm) | {:.0} µs | reconnect-storm run | `storm[target].server_cpu_us_per_reconnect` |", m.cpu_us_per_reconnect);
    if let Some(c) = m.push.iter().find(|c| c.json == p.cpu_source) {
        let _ = writeln!(s, "| server CPU per message (the costliest point) | {:.2} µs | load curve, point at {} | `{}.server_cpu_us_per_msg` |", c.cpu_us_per_msg, c.label(), c.json);
    }
    let _ = writeln!(s, "\n### Load curve (measured: latency and CPU per message against offered load)\n");
    let _ = writeln!(s, "| offered msg/s | delivered msg/s | p50 ms | p99 ms | server CPU µs/msg | used by the plan | JSON |\n|---:|---:|---:|---:|---:|---|---|");
    for c in &m.push {
        let mut used = Vec::new();
        if c.json == p.cpu_source {
            used.push("CPU per message");
        }
        if p.p99_ms.as_ref().is_some_and(|q| q.2 == c.json) {
            used.push("p99 quoted");
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | `{}` |",
            c.offered_per_s.map_or("saturation".into(), thousands_f),
            thousands_f(c.delivered_per_s),
            c.p50_ms,
            c.p99_ms,
            c.cpu_us_per_msg,
            if used.is_empty() { "–".to_string() } else { used.join(", ") },
            c.json
        );
    }
    let _ = writeln!(s, "\n### Memory curve (measured: bytes per idle connection against connections held)\n");
    let _ = writeln!(s, "| connections | server processes | process B/conn | kernel B/conn (server side) | used by the plan | JSON |\n|---:|---:|---:|---:|---|---|");
    for c in &m.memory {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | `{}` |",
            thousands_f(c.conns),
            c.processes,
            thousands_f(c.process_bytes_per_conn),
            thousands_f(c.kernel_bytes_per_conn),
            if c.json == m.memory_source { "memory per connection" } else { "–" },
            c.json
        );
    }
    let _ = writeln!(s, "\n## Result\n\n| resource | need | nodes |\n|---|---:|---:|");
    let offline = if t.offline_users > 0 { format!(" + {} × {} B", thousands_f(t.offline_users as f64), thousands_f(OFFLINE_USER_TOTAL_BYTES)) } else { String::new() };
    let _ = writeln!(s, "| RAM: ({} + {} × {} B{offline}) × {:.2} | {} | {} |", gib(m.base_rss_bytes), thousands_f(t.connections as f64), thousands_f(p.bytes_per_conn), 1.0 + t.headroom, gib(p.ram_bytes), p.nodes_for_ram);
    let _ = writeln!(
        s,
        "| cores: messages {}/s × {:.2} µs × {:.2} = {:.2}; storm {} / {:.0} s × {:.0} µs × {:.2} = {:.2} | {:.2} cores | {} |",
        thousands_f(t.messages_per_s), p.cpu_us_per_msg, 1.0 + t.headroom, p.msg_cores, thousands_f(p.reconnects), t.reconnect_window_s, m.cpu_us_per_reconnect, 1.0 + t.headroom, p.storm_cores, p.cores, p.nodes_for_cpu
    );
    let _ = writeln!(
        s,
        "\nOpen files: {} per process ({}) leave {} connections per process, so **{} ringgate process(es) per node**{}.",
        if t.nofile_per_process > 0 { t.nofile_per_process } else { m.nofile_limit },
        if t.nofile_per_process > 0 { "`--nofile-per-process`, set LimitNOFILE to match" } else { "the benchmark machine's limit" },
        p.conns_per_process,
        p.processes_per_node,
        if p.processes_per_node > 1 { " (each with its own port or SO_REUSEPORT group and its own data directory)" } else { "" }
    );
    let _ = writeln!(
        s,
        "\nN+1: {} nodes carry the load; the spare means any one can fail and the other {} still hold every connection, so each node is sized for {} connections.",
        p.nodes,
        p.nodes_for_load,
        thousands_f((t.connections as f64 / p.nodes_for_load as f64).ceil())
    );
    let _ = writeln!(s, "\nsysctl profile: **`sysctl/{}.conf`** (check a node with `ringgate doctor --profile {} --target-connections {}`).", p.profile, p.profile, (t.connections as f64 / p.nodes_for_load as f64).ceil());
    match &p.p99_ms {
        Some((load, p99, json)) => {
            let _ = writeln!(s, "\nLatency: per-core load {} msg/s (one node down); the nearest measured load at or above it ({} msg/s per core, load curve point `{json}`) had p99 {:.2} ms.", thousands_f(p.per_core_load), thousands_f(*load), p99);
        }
        None => {
            let _ = writeln!(s, "\nLatency: the planned per-core load is above every measured open-loop load; no p99 can be quoted from this run.");
        }
    }
    let _ = writeln!(s, "\n## Assumptions\n");
    for a in [
        "Figures scale linearly with cores and connections (thread-per-core, shared-nothing); the benchmark ran on fewer cores than a node has.",
        "Connections are idle between messages (the idle figure); active ones briefly hold buffers of up to 16 KiB each.",
        "The kernel figure is half the loopback slab delta, which counts both ends of each connection.",
        "The highest CPU per message on the load curve is used; CPU per reconnect includes TLS, CONNECT and replay.",
        "Memory per connection is the memory curve's point with the most connections (fixed costs amortised as on a node).",
        "A reconnect storm coincides with steady traffic; their cores add up.",
        "Open files: 16 + 2 per core are kept for listeners, the log and the runtime.",
        "Per-core message load is compared with the benchmark's offered load divided by the cores the server had in that run (`envelope.server_cpus`).",
    ] {
        let _ = writeln!(s, "- {a}");
    }
    s
}

/// A self-contained HTML page: the measured curves plotted (with the
/// plan's operating point and headroom marked), then the report with its
/// tables as HTML tables.
pub fn html(m: &Measured, t: &Targets, p: &Plan, md: &str) -> String {
    let h = 1.0 + t.headroom;
    // The plan's per-core load as an offered load on the benchmark's server
    // (it had `m.cpus` cores), so it can sit on the measured load axis.
    let op = p.per_core_load * m.cpus.max(1) as f64;
    let marks = vec![
        Mark { x: op, label: format!("operating point {op:.0} msg/s"), dashed: false },
        Mark { x: op * h, label: format!("+{:.0} % headroom", t.headroom * 100.0), dashed: true },
    ];
    let series = |name: &str, color: &'static str, f: &dyn Fn(&PushPoint) -> f64| Series {
        name: name.into(),
        color,
        pts: m.push.iter().map(|c| (c.load(), f(c))).filter(|q| q.1.is_finite()).collect(),
    };
    let mut notes = String::new();
    if op * h > m.push.iter().map(PushPoint::load).fold(0.0, f64::max) {
        notes += "<p class=\"warn\">The operating point with headroom lies beyond the highest measured load: the curve does not cover it.</p>";
    }
    let lat = Chart {
        title: format!("Latency vs offered load (measured, {} points, push runs of `{}`)", m.push.len(), m.target),
        xlabel: "offered load on the benchmark server, msg/s (saturation: delivered; log scale)".into(),
        ylabel: "ms".into(),
        series: vec![series("p50", "#1f6feb", &|c| c.p50_ms), series("p99", "#d1242f", &|c| c.p99_ms)],
        marks: marks.clone(),
        logx: true,
    }
    .svg();
    let cpu = Chart {
        title: "Server CPU per message vs offered load (measured)".into(),
        xlabel: "offered load on the benchmark server, msg/s (log scale)".into(),
        ylabel: "µs per message".into(),
        series: vec![series("CPU µs/msg", "#8250df", &|c| c.cpu_us_per_msg)],
        marks,
        logx: true,
    }
    .svg();
    let conns_per_process = (t.connections as f64 / p.nodes_for_load as f64 / p.processes_per_node as f64).ceil();
    let mem = Chart {
        title: format!("Memory per connection vs connections held (measured, {} points)", m.memory.len()),
        xlabel: "connections held (log scale)".into(),
        ylabel: "bytes per connection".into(),
        series: vec![
            Series { name: "process RSS".into(), color: "#1f6feb", pts: m.memory.iter().map(|c| (c.conns, c.process_bytes_per_conn)).collect() },
            Series { name: "kernel (server side)".into(), color: "#1a7f37", pts: m.memory.iter().map(|c| (c.conns, c.kernel_bytes_per_conn)).collect() },
        ],
        marks: vec![Mark { x: conns_per_process, label: format!("plan: {conns_per_process:.0} per process"), dashed: false }],
        logx: true,
    }
    .svg();
    let storm = Chart {
        title: "Reconnect-storm recovery time vs handshake cores (model: measured CPU per reconnect × reconnects ÷ cores)".into(),
        xlabel: "cores for handshakes".into(),
        ylabel: "seconds".into(),
        series: vec![Series {
            name: "recovery time".into(),
            color: "#1f6feb",
            pts: (1..=t.cores_per_node.max(2) * p.nodes).map(|c| (c as f64, p.reconnects * m.cpu_us_per_reconnect / 1e6 / c as f64)).collect(),
        }],
        marks: vec![Mark { x: t.cores_per_node as f64 * p.nodes as f64, label: "cores bought".into(), dashed: false }],
        logx: false,
    }
    .svg();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ringgate capacity plan</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#1f2328}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #d0d7de;padding:4px 8px}}\
         th{{background:#f6f8fa}}td.num{{text-align:right;font-variant-numeric:tabular-nums}}\
         code{{background:#f6f8fa;padding:0 3px}}.warn{{color:#9a6700}}svg{{display:block}}</style></head>\
         <body>{}<h2>Measured curves</h2>{notes}{lat}{cpu}{mem}{storm}</body></html>\n",
        md_to_html(md)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Inline Markdown of our own reports: `code` and **bold**, escaped.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(s).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            for (j, b) in part.split("**").enumerate() {
                if j % 2 == 1 {
                    let _ = write!(out, "<strong>{b}</strong>");
                } else {
                    out += b;
                }
            }
        }
    }
    out
}

/// The subset of Markdown this module writes (headings, paragraphs, `-`
/// lists, pipe tables) as HTML, so the page's tables are real tables.
pub fn md_to_html(md: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_end();
        if l.starts_with('|') {
            let row = |l: &str| -> Vec<String> { l.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect() };
            let head = row(l);
            let right: Vec<bool> = lines.get(i + 1).map_or(vec![], |a| row(a).iter().map(|c| c.ends_with(':')).collect());
            out += "<table><thead><tr>";
            for c in &head {
                let _ = write!(out, "<th>{}</th>", inline(c));
            }
            out += "</tr></thead><tbody>";
            i += 2;
            while i < lines.len() && lines[i].starts_with('|') {
                out += "<tr>";
                for (k, c) in row(lines[i]).iter().enumerate() {
                    let class = if right.get(k) == Some(&true) { " class=\"num\"" } else { "" };
                    let _ = write!(out, "<td{class}>{}</td>", inline(c));
                }
                out += "</tr>";
                i += 1;
            }
            out += "</tbody></table>\n";
            continue;
        }
        if let Some(h) = l.strip_prefix("### ") {
            let _ = writeln!(out, "<h3>{}</h3>", inline(h));
        } else if let Some(h) = l.strip_prefix("## ") {
            let _ = writeln!(out, "<h2>{}</h2>", inline(h));
        } else if let Some(h) = l.strip_prefix("# ") {
            let _ = writeln!(out, "<h1>{}</h1>", inline(h));
        } else if l.starts_with("- ") {
            out += "<ul>";
            while i < lines.len() && lines[i].starts_with("- ") {
                let _ = write!(out, "<li>{}</li>", inline(&lines[i][2..]));
                i += 1;
            }
            out += "</ul>\n";
            continue;
        } else if !l.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(l));
        }
        i += 1;
    }
    out
}

/// One series of measured (or modelled) points.
struct Series {
    name: String,
    color: &'static str,
    pts: Vec<(f64, f64)>,
}

/// A vertical marker (the operating point, its headroom).
#[derive(Clone)]
struct Mark {
    x: f64,
    label: String,
    dashed: bool,
}

/// A chart as inline SVG: axes with ticks, each series as points joined by
/// a line (every point is a measurement), vertical markers, a legend.
struct Chart {
    title: String,
    xlabel: String,
    ylabel: String,
    series: Vec<Series>,
    marks: Vec<Mark>,
    logx: bool,
}

impl Chart {
    fn svg(&self) -> String {
        // The legend sits in a row above the plot, the markers' labels inside it.
        let (w, h, l, b, top, right) = (720.0, 350.0, 70.0, 44.0, 40.0, 24.0);
        let all = || self.series.iter().flat_map(|s| s.pts.iter());
        let xs = all().map(|p| p.0).chain(self.marks.iter().map(|m| m.x)).filter(|x| x.is_finite() && *x > 0.0);
        let xmax = xs.clone().fold(0.0, f64::max).max(1e-9) * 1.05;
        let xmin = if self.logx { xs.fold(f64::INFINITY, f64::min).min(xmax / 10.0) / 1.3 } else { 0.0 };
        let ymax = all().map(|p| p.1).filter(|y| y.is_finite()).fold(0.0, f64::max).max(1e-9) * 1.15;
        let fx = |v: f64| if self.logx { (v.max(xmin).ln() - xmin.ln()) / (xmax.ln() - xmin.ln()) } else { v / xmax };
        let x = |v: f64| l + fx(v) * (w - l - right);
        let y = |v: f64| h - b - v / ymax * (h - b - top);
        let mut s = format!("<h3>{}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"11\">", inline(&self.title));
        let _ = write!(s, "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>", h - b, w - right, h - b);
        let _ = write!(s, "<line x1=\"{l}\" y1=\"{top}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>", h - b);
        let xticks: Vec<f64> = if self.logx {
            let mut v = Vec::new();
            let mut d = 10f64.powi(xmin.log10().floor() as i32);
            while d <= xmax {
                for k in [1.0, 2.0, 5.0] {
                    if d * k >= xmin && d * k <= xmax {
                        v.push(d * k);
                    }
                }
                d *= 10.0;
            }
            v
        } else {
            (0..=5).map(|i| xmax * i as f64 / 5.0).collect()
        };
        for xv in xticks {
            let _ = write!(s, "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#eee\"/>", x(xv), top, h - b);
            let _ = write!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>", x(xv), h - b + 14.0, short(xv));
        }
        for i in 0..=4 {
            let yv = ymax * i as f64 / 4.0;
            let _ = write!(s, "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", l - 4.0, y(yv) + 4.0, short(yv));
        }
        for (k, m) in self.marks.iter().enumerate() {
            if !m.x.is_finite() || m.x <= 0.0 {
                continue;
            }
            let dash = if m.dashed { " stroke-dasharray=\"5,4\"" } else { "" };
            let _ = write!(s, "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#9a6700\" stroke-width=\"1.5\"{dash}/>", x(m.x), top, h - b);
            // Label on the side of the line with more room.
            let (tx, anchor) = if x(m.x) > (l + w) / 2.0 { (x(m.x) - 4.0, "end") } else { (x(m.x) + 4.0, "start") };
            let _ = write!(s, "<text x=\"{tx:.1}\" y=\"{}\" fill=\"#9a6700\" text-anchor=\"{anchor}\">{}</text>", top + 12.0 + 13.0 * k as f64, escape(&m.label));
        }
        for (k, ser) in self.series.iter().enumerate() {
            let path: Vec<String> = ser.pts.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
            let _ = write!(s, "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>", ser.color, path.join(" "));
            for p in &ser.pts {
                let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"><title>{}: {} at {}</title></circle>", x(p.0), y(p.1), ser.color, escape(&ser.name), short(p.1), short(p.0));
            }
            let lx = l + 12.0 + 170.0 * k as f64;
            let _ = write!(s, "<circle cx=\"{lx}\" cy=\"14\" r=\"4\" fill=\"{}\"/><text x=\"{}\" y=\"18\">{}</text>", ser.color, lx + 8.0, escape(&ser.name));
        }
        let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", (l + w) / 2.0, h - 8.0, escape(&self.xlabel));
        let _ = write!(s, "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text></svg>", h / 2.0, h / 2.0, escape(&self.ylabel));
        s
    }
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
