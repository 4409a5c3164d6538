//! What every result file records about the run (commit, kernel, CPUs, sysctls), and the Markdown table the suite writes.
//!
//! Tables print each figure with its ratio to the reference server of the
//! run (ringgate on io_uring): a peer's cell reads `15,412 (0.25×)`,
//! meaning ringgate's figure is 0.25 times the peer's, measured in the
//! same run on the same machine. Ratios across runs or machines are not
//! printed anywhere, because they would not mean anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::procfs;

/// The context every JSON result carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub tool: String,
    pub scenario: String,
    pub date_utc: String,
    pub git_commit: String,
    /// `true` when the work tree differed from the commit.
    pub git_dirty: bool,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_kb: u64,
    pub server_cpus: Vec<usize>,
    pub client_cpus: Vec<usize>,
    pub client_procs: u32,
    pub nofile_limit: u64,
    pub sysctls: BTreeMap<String, String>,
    pub command_line: Vec<String>,
}

fn cmd_out(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// `YYYY-MM-DDTHH:MM:SSZ` from the system clock, without a date crate.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    utc_from_unix(secs)
}

/// Civil date from Unix seconds (Howard Hinnant's days-from-civil, inverted).
pub fn utc_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Envelope {
    pub fn collect(scenario: &str, server_cpus: &[usize], client_cpus: &[usize], client_procs: u32) -> Envelope {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let mem_total_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        Envelope {
            tool: format!("ringgate-bench {}", env!("CARGO_PKG_VERSION")),
            scenario: scenario.to_string(),
            date_utc: utc_now(),
            git_commit: cmd_out("git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            git_dirty: cmd_out("git", &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()),
            kernel: cmd_out("uname", &["-srvm"]).unwrap_or_default(),
            cpu_model,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            mem_total_kb,
            server_cpus: server_cpus.to_vec(),
            client_cpus: client_cpus.to_vec(),
            client_procs,
            nofile_limit: procfs::nofile_limit().1,
            sysctls: procfs::read_sysctls(procfs::RECORDED_SYSCTLS),
            command_line: std::env::args().collect(),
        }
    }
}

/// Writes `value` as pretty JSON to `dir/name`.
pub fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(value)? + "\n").with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// `12,345` style integers for tables.
pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let neg = v < 0.0;
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

/// A figure with a fixed number of decimals, or `–` when missing.
pub fn fixed(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".into(),
    }
}

/// One column of a figure table.
pub struct Column<'a> {
    pub title: &'a str,
    /// `None` = not measured for that row.
    pub values: Vec<Option<f64>>,
    pub format: fn(f64) -> String,
}

/// A Markdown table: one row per server, each cell `value (ref ÷ value×)`
/// for rows other than the reference row `ref_row`.
pub fn figure_table(rows: &[String], ref_row: Option<usize>, cols: &[Column<'_>]) -> String {
    let mut s = String::new();
    s.push_str("| server |");
    for c in cols {
        s.push_str(&format!(" {} |", c.title));
    }
    s.push('\n');
    s.push_str("|---|");
    for _ in cols {
        s.push_str("---:|");
    }
    s.push('\n');
    for (r, name) in rows.iter().enumerate() {
        s.push_str(&format!("| {name} |"));
        for c in cols {
            let cell = match c.values.get(r).copied().flatten() {
                None => "–".to_string(),
                Some(v) => {
                    let reference = ref_row.filter(|&k| k != r).and_then(|k| c.values.get(k).copied().flatten());
                    match crate::stats::ratio(reference, Some(v)) {
                        Some(x) => format!("{} ({x:.2}×)", (c.format)(v)),
                        None => (c.format)(v),
                    }
                }
            };
            s.push_str(&format!(" {cell} |"));
        }
        s.push('\n');
    }
    s
}

pub const README_BEGIN: &str = "<!-- suite-results:begin -->";
pub const README_END: &str = "<!-- suite-results:end -->";

/// Replaces the text between the suite markers in `readme` (appending the
/// markers if absent).
pub fn splice_readme(readme: &str, block: &str) -> String {
    let inner = format!("{README_BEGIN}\n{block}\n{README_END}");
    match (readme.find(README_BEGIN), readme.find(README_END)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &readme[..a], inner, &readme[b + README_END.len()..]),
        _ => format!("{readme}\n{inner}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_from_unix(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(15_412.0), "15,412");
        assert_eq!(thousands(-1_234_567.0), "-1,234,567");
        assert_eq!(fixed(Some(1.23456), 2), "1.23");
        assert_eq!(fixed(None, 2), "–");
    }

    #[test]
    fn figure_table_prints_ratios_to_the_reference_row() {
        let rows = vec!["ringgate-uring".to_string(), "nginx".to_string(), "mosquitto".to_string()];
        let t = figure_table(
            &rows,
            Some(0),
            &[Column { title: "B/conn", values: vec![Some(4_000.0), Some(16_000.0), None], format: thousands }],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| server | B/conn |");
        assert_eq!(lines[1], "|---|---:|");
        assert_eq!(lines[2], "| ringgate-uring | 4,000 |");
        assert_eq!(lines[3], "| nginx | 16,000 (0.25×) |");
        assert_eq!(lines[4], "| mosquitto | – |");
    }

    #[test]
    fn readme_splice_replaces_only_between_markers() {
        let r = format!("# T\nbefore\n{README_BEGIN}\nold\n{README_END}\nafter\n");
        let out = splice_readme(&r, "new table");
        assert_eq!(out, format!("# T\nbefore\n{README_BEGIN}\nnew table\n{README_END}\nafter\n"));
        assert_eq!(splice_readme(&out, "new table"), out, "idempotent");
        let appended = splice_readme("# T\n", "x");
        assert!(appended.ends_with(&format!("{README_BEGIN}\nx\n{README_END}\n")));
    }

    #[test]
    fn envelope_has_the_recorded_fields() {
        let e = Envelope::collect("idle", &[0], &[1], 1);
        let v = serde_json::to_value(&e).unwrap();
        for k in ["git_commit", "kernel", "cpus", "sysctls", "server_cpus", "client_cpus", "date_utc", "nofile_limit"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert!(e.cpus >= 1);
        assert!(e.date_utc.ends_with('Z'));
    }
}
