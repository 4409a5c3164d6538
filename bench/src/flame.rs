//! Turns `perf script` output into a flamegraph SVG with inferno (collapse, then render), so no Perl FlameGraph scripts are needed.

use std::io::{BufReader, Read, Write};

use anyhow::{Context, Result};
use inferno::collapse::perf::{Folder, Options as FoldOptions};
use inferno::collapse::Collapse;
use inferno::flamegraph::{self, Options};

/// Folds `perf script` text into `stack;frames count` lines.
pub fn fold(perf_script: impl Read) -> Result<String> {
    let mut out = Vec::new();
    let mut opts = FoldOptions::default();
    opts.include_tid = false;
    opts.include_pid = false;
    Folder::from(opts).collapse(BufReader::new(perf_script), &mut out).context("folding perf script output")?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Renders folded stacks to an SVG.
pub fn render(folded: &str, title: &str, out: impl Write) -> Result<()> {
    let mut opts = Options::default();
    opts.title = title.to_string();
    opts.count_name = "samples".to_string();
    flamegraph::from_lines(&mut opts, folded.lines(), out).context("rendering flamegraph")?;
    Ok(())
}

/// The heaviest frames by inclusive samples (for the README's "what the top frames show").
pub fn top_frames(folded: &str, n: usize) -> Vec<(String, u64, f64)> {
    let mut incl: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut total = 0u64;
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else { continue };
        let Ok(c) = count.parse::<u64>() else { continue };
        total += c;
        let mut seen = std::collections::HashSet::new();
        for f in stack.split(';') {
            if seen.insert(f) {
                *incl.entry(f).or_default() += c;
            }
        }
    }
    let mut v: Vec<_> = incl.into_iter().map(|(f, c)| (f.to_string(), c, c as f64 * 100.0 / total.max(1) as f64)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// The frames where samples land (leaf, exclusive time): what the CPU was actually executing.
pub fn self_frames(folded: &str, n: usize) -> Vec<(String, u64, f64)> {
    let mut own: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut total = 0u64;
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else { continue };
        let Ok(c) = count.parse::<u64>() else { continue };
        total += c;
        if let Some(leaf) = stack.rsplit(';').next() {
            *own.entry(leaf).or_default() += c;
        }
    }
    let mut v: Vec<_> = own.into_iter().map(|(f, c)| (f.to_string(), c, c as f64 * 100.0 / total.max(1) as f64)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERF: &str = "ringgate-w0 1234 100.000001:     250000 cpu-clock:
\t    55d0c0de1000 aws_lc_0_25_ecdsa_sign+0x10 (/usr/bin/ringgate)
\t    55d0c0de2000 ringgate::runtime::core::Core::handshake+0x20 (/usr/bin/ringgate)
\t    55d0c0de3000 main+0x30 (/usr/bin/ringgate)

ringgate-w0 1234 100.000251:     250000 cpu-clock:
\t    55d0c0de4000 ringgate::proto::frame::decode+0x10 (/usr/bin/ringgate)
\t    55d0c0de3000 main+0x30 (/usr/bin/ringgate)

";

    #[test]
    fn fold_render_and_rank() {
        let folded = fold(PERF.as_bytes()).unwrap();
        assert!(folded.contains("ringgate-w0;main;ringgate::runtime::core::Core::handshake;aws_lc_0_25_ecdsa_sign 250000"), "{folded}");
        let top = top_frames(&folded, 3);
        assert_eq!(top[0].0, "main");
        // perf's cpu-clock samples are weighted by their period (ns of CPU).
        assert_eq!(top[0].1, 500_000);
        assert!((top[0].2 - 100.0).abs() < 1e-9);
        let own = self_frames(&folded, 5);
        assert_eq!(own.len(), 2);
        assert!(own.iter().all(|(f, _, pct)| f != "main" && (*pct - 50.0).abs() < 1e-9), "{own:?}");
        let mut svg = Vec::new();
        render(&folded, "test", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("ecdsa_sign"));
    }
}
