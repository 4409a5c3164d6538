//! `ringgate plan` against a real benchmark suite JSON (a copy of one run's
//! bench/results/latest.json): the report's numbers must be the JSON's.

mod common;

use std::process::Command;

use serde_json::Value;

fn fixture() -> (std::path::PathBuf, Value) {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench-suite.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    (p, v)
}

fn target<'a>(v: &'a Value, section: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    v[section].as_array().unwrap().iter().find(|e| e["target"] == "ringgate-uring" && pred(e)).unwrap()
}

#[test]
fn report_figures_trace_back_to_the_benchmark_json() {
    let (path, v) = fixture();
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["plan", "--bench"])
        .arg(&path)
        .args(["--connections", "2000000", "--messages-per-s", "100000", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    let idle = target(&v, "idle", |_| true);
    // Memory per connection: the largest point of the curve, which is the
    // committed multi-process run doctor also sizes with (ringgate::measured).
    let m = ringgate::measured::idle_cost();
    let (rss, kernel) = (m.process_bytes_per_conn, m.kernel_bytes_per_conn);
    let th = |v: f64| ringgate::doctor::thousands(v.round() as u64);
    let row = format!("| {} B | memory curve, point at {} connections | `{}: idle_multi[0].rss_bytes_per_conn` |", th(rss), th(m.connections as f64), m.source);
    assert!(md.contains(&row), "{row} not in\n{md}");
    assert!(md.contains(&format!("| {} B |", th(kernel))), "{md}");
    // The suite's own point is on the curve too.
    let own = idle["rss_bytes_per_conn"].as_f64().unwrap();
    assert!(md.contains(&format!("| 10,000 | 1 | {} |", th(own))), "{md}");
    let hs = target(&v, "handshake", |e| e["mode"] == "full")["server_cpu_us_per_handshake"].as_f64().unwrap();
    assert!(md.contains(&format!("| {hs:.0} µs |")), "{md}");
    // RAM = (base + N × (rss + kernel)) × 1.3, printed in GiB.
    let base = idle["server_before"]["mem"]["rss_kb"].as_f64().unwrap() * 1024.0;
    let ram = (base + 2e6 * (rss + kernel)) * 1.3 / (1u64 << 30) as f64;
    assert!(md.contains(&format!("{ram:.2} GiB")), "RAM {ram:.2} GiB not in\n{md}");
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 4);
    assert!(html.contains("Reconnect-storm recovery time"));
    assert!(!html.contains("<pre>"), "tables are HTML tables now");
    assert!(html.contains("<table>"));
}

/// A suite JSON with curves: the fixture plus push runs at six open-loop
/// loads and idle runs at three connection counts and one multi-process
/// run, as `ringgate-bench suite --idle-multi-conns` writes them.
fn fixture_with_curves() -> Value {
    let (_, mut v) = fixture();
    let push0 = target(&v, "push", |e| e["offered_per_s"].is_null()).clone();
    let idle0 = target(&v, "idle", |_| true).clone();
    let push = v["push"].as_array_mut().unwrap();
    for (k, rate) in [2_000.0, 24_000.0, 32_000.0, 40_000.0].into_iter().enumerate() {
        let mut e = push0.clone();
        e["offered_per_s"] = rate.into();
        e["msgs_per_s"] = rate.into();
        e["latency_us"]["p50_us"] = (900 + 100 * k as u64).into();
        e["latency_us"]["p99_us"] = (2_000 + 1_500 * k as u64).into();
        e["server_cpu_us_per_msg"] = (30.0 - k as f64).into();
        push.push(e);
    }
    let idle = v["idle"].as_array_mut().unwrap();
    for (n, rss) in [(2_000u64, 4_100.0), (5_000, 3_300.0)] {
        let mut e = idle0.clone();
        e["connected"] = n.into();
        e["conns"] = n.into();
        e["rss_bytes_per_conn"] = rss.into();
        idle.push(e);
    }
    let mut multi = idle0.clone();
    multi["connected"] = 200_000u64.into();
    multi["servers"] = 13u64.into();
    multi["rss_bytes_per_conn"] = 2_100.0.into();
    multi["kernel_slab_bytes_per_conn"] = 6_400.0.into();
    v["idle_multi"] = Value::Array(vec![multi]);
    v
}

/// Runs `ringgate plan` on `v` for `connections`; the report lands in the returned directory.
fn plan_report(v: &Value, connections: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("suite.json");
    std::fs::write(&bench, serde_json::to_string(v).unwrap()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["plan", "--bench"])
        .arg(&bench)
        .args(["--connections", connections, "--messages-per-s", "100000", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    dir
}

#[test]
fn html_report_plots_the_measured_curves_and_names_their_points() {
    let v = fixture_with_curves();
    let dir = plan_report(&v, "2000000");
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    let n_push = v["push"].as_array().unwrap().iter().filter(|e| e["target"] == "ringgate-uring").count();
    assert_eq!(n_push, 7, "saturation + 6 open-loop loads");
    // The suite's multi-process point is on the curve; memory per connection
    // comes from the point with the most connections, the committed run
    // doctor sizes with, and the report says so.
    assert!(md.contains("| 200,000 | 13 | 2,100 | 3,200 | – | `idle_multi[0]` |"), "{md}");
    let m = ringgate::measured::idle_cost();
    assert!(m.connections > 200_000, "the committed run is the largest point");
    assert!(md.contains(&format!("| memory per connection | `{}: idle_multi[0]` |", m.source)), "{md}");
    // The costliest CPU point of the load curve is the one used, and named.
    let sat_cpu = target(&v, "push", |e| e["offered_per_s"].is_null())["server_cpu_us_per_msg"].as_f64().unwrap();
    let costliest = v["push"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == "ringgate-uring")
        .map(|e| e["server_cpu_us_per_msg"].as_f64().unwrap())
        .fold(sat_cpu, f64::max);
    assert!(md.contains(&format!("| {costliest:.2} µs | load curve, point at")), "{md}");
    // Every measured point is drawn: 7 loads × (p50, p99, CPU) + 5 memory points × 2 series.
    // (A data point is a circle of radius 3.5, a legend one 4; the storm chart, a model, comes last.)
    let measured_charts = html.split("<h3>Reconnect-storm").next().unwrap();
    assert_eq!(measured_charts.matches("r=\"3.5\"").count(), 7 * 3 + 5 * 2);
    assert!(html.contains("operating point"));
    assert!(html.contains("+30 % headroom"));
    assert!(html.contains("Latency vs offered load (measured, 7 points"));
    assert!(html.contains("Memory per connection vs connections held (measured, 5 points)"));
    assert!(html.contains("<td class=\"num\">200,000</td>"), "memory table rendered as an HTML table");
    assert!(html.contains("msg/s (log scale)"), "the load axis is logarithmic");
    assert!(md.contains("for the load + 1 spare"), "{md}");
}

/// The HTML report in a real browser (headless Chromium): the DOM Chromium
/// builds holds every chart and data point of the file (an SVG the parser
/// rejected would lose its circles), the committed million-scale run is on
/// the memory curve, and a screenshot is drawn.
#[test]
fn html_report_renders_in_chromium_with_the_committed_run() {
    let Some(chromium) = common::chromium_or_skip("html_report_renders_in_chromium_with_the_committed_run") else { return };
    let v = fixture_with_curves();
    let dir = plan_report(&v, "1000000");
    let html_path = dir.path().join("report.html");
    let html = std::fs::read_to_string(&html_path).unwrap();
    let m = ringgate::measured::idle_cost();
    let held = ringgate::numfmt::thousands(m.connections);
    assert!(html.contains(&held), "the committed run ({held} connections) is not in the report");
    let url = format!("file://{}", html_path.display());
    let profile = tempfile::tempdir().unwrap();
    let browser = |extra: &[&str]| {
        let o = Command::new(&chromium)
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1280,4000"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert!(o.status.success(), "chromium failed: {}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let dom = String::from_utf8(browser(&["--dump-dom"]).stdout).unwrap();
    for tag in ["<svg", "<circle", "<polyline", "<table", "<text"] {
        assert_eq!(dom.matches(tag).count(), html.matches(tag).count(), "Chromium's DOM and the file disagree on {tag}");
    }
    assert!(dom.matches("<svg").count() >= 4);
    assert!(dom.contains(&held));
    let shot = dir.path().join("report.png");
    browser(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "screenshot of {} bytes", png.len());
}

#[test]
fn missing_target_is_explained() {
    let (path, _) = fixture();
    let o = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["plan", "--bench"])
        .arg(&path)
        .args(["--target", "nosuch", "--connections", "10"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no idle result for target \"nosuch\""));
}
