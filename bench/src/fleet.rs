//! The parent side of the load generator: spawns `--procs N` worker processes, drives their phases and merges their tallies.
//!
//! Why processes and not just threads: the machine caps open files at
//! 20,000 per process (hard limit; root cannot raise it), so 50,000
//! connections need at least three client processes. Each worker holds at
//! most [`worker::MAX_CONNS_PER_PROC`]; [`plan_procs`] says how many are
//! needed and refuses clearly when the user asked for too few.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::worker::{self, Tally, WorkerSpec, MAX_CONNS_PER_PROC};

/// One line from a worker.
#[derive(Debug)]
pub enum Line {
    Progress(u64),
    Event(String, Tally),
    Result(Tally),
    Fatal(String),
    /// stdout closed (the worker exited).
    Eof,
}

pub fn parse_line(s: &str) -> Option<Line> {
    let (kind, rest) = s.split_once(' ').unwrap_or((s, ""));
    Some(match kind {
        "PROGRESS" => Line::Progress(rest.trim().parse().ok()?),
        "EVENT" => {
            let (stage, json) = rest.split_once(' ')?;
            Line::Event(stage.to_string(), serde_json::from_str(json).ok()?)
        }
        "RESULT" => Line::Result(serde_json::from_str(rest).ok()?),
        "FATAL" => Line::Fatal(rest.to_string()),
        _ => return None,
    })
}

/// How many worker processes `conns` connections need, given what the user
/// asked for (0 = choose). Errors when the request cannot fit.
pub fn plan_procs(conns: u64, requested: u32) -> Result<u32> {
    let needed = conns.div_ceil(MAX_CONNS_PER_PROC).max(1) as u32;
    if requested == 0 {
        return Ok(needed);
    }
    if requested < needed {
        bail!(
            "{conns} connections need at least {needed} client processes: each may hold {MAX_CONNS_PER_PROC} \
             (this machine allows 20,000 open files per process); pass --procs {needed} or more"
        );
    }
    Ok(requested)
}

pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    rx: mpsc::Receiver<(usize, Line)>,
    progress: Vec<u64>,
    results: Vec<Option<Tally>>,
    pending_events: Vec<(usize, String, Tally)>,
    /// Checked every 200 ms while waiting: `Some(why)` aborts the wait
    /// (e.g. the machine is running out of memory).
    guard: Option<Box<dyn FnMut() -> Option<String>>>,
}

/// Pins the calling (forked, not yet exec'd) process to `cpus`.
pub fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: cpu_set_t is plain data and every index is checked against CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(c, &mut set);
            }
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `cmd` start pinned to `cpus` (the `taskset` the brief asks for, without the binary).
pub fn pin_command(cmd: &mut Command, cpus: Vec<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls sched_setaffinity, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || set_affinity(&cpus));
    }
}

impl Fleet {
    /// Starts one worker per spec, pinned to `cpus`.
    pub fn spawn(specs: Vec<WorkerSpec>, cpus: &[usize]) -> Result<Fleet> {
        let exe = std::env::current_exe().context("locating ringgate-bench")?;
        let (tx, rx) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.arg("worker").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
            pin_command(&mut cmd, cpus.to_vec());
            let mut child = cmd.spawn().context("spawning a worker process")?;
            let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("worker stdin"))?;
            writeln!(stdin, "{}", serde_json::to_string(spec)?)?;
            stdin.flush()?;
            let stdout = child.stdout.take().ok_or_else(|| anyhow!("worker stdout"))?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(l) = parse_line(&line) {
                        if tx.send((i, l)).is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send((i, Line::Eof));
            });
            children.push(child);
            stdins.push(stdin);
        }
        let n = children.len();
        Ok(Fleet { children, stdins, rx, progress: vec![0; n], results: vec![None; n], pending_events: Vec::new(), guard: None })
    }

    /// Installs a check run while waiting (see the field).
    pub fn set_guard(&mut self, g: impl FnMut() -> Option<String> + 'static) {
        self.guard = Some(Box::new(g));
    }

    fn check_guard(&mut self) -> Result<()> {
        if let Some(why) = self.guard.as_mut().and_then(|g| g()) {
            bail!("{why}");
        }
        Ok(())
    }

    /// Handles whatever the workers said so far without waiting: fails on a
    /// worker's FATAL or early exit, or when the guard trips.
    pub fn poll(&mut self) -> Result<()> {
        while let Ok((i, l)) = self.rx.try_recv() {
            if let Some(ev) = self.handle(i, l)? {
                self.pending_events.push(ev);
            }
        }
        if let Some(i) = self.results.iter().position(|r| r.is_some()) {
            bail!("worker {i} ended early: {:?}", self.results[i].as_ref().map(|r| &r.errors));
        }
        self.check_guard()
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// The worker processes' pids (to sample the client side's memory).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Sends a phase command to every worker.
    pub fn command(&mut self, name: &str, arg: u64) -> Result<()> {
        for s in &mut self.stdins {
            writeln!(s, "{name} {arg}")?;
            s.flush()?;
        }
        Ok(())
    }

    fn handle(&mut self, i: usize, l: Line) -> Result<Option<(usize, String, Tally)>> {
        match l {
            Line::Progress(p) => self.progress[i] = p,
            Line::Event(stage, t) => return Ok(Some((i, stage, t))),
            Line::Result(t) => self.results[i] = Some(t),
            Line::Fatal(m) => bail!("worker {i}: {m}"),
            Line::Eof => {
                if self.results[i].is_none() {
                    bail!("worker {i} exited without a result");
                }
            }
        }
        Ok(None)
    }

    fn total_progress(&self) -> u64 {
        self.progress.iter().sum()
    }

    /// Waits until every worker reported `stage`; returns the merged tally.
    pub fn wait_stage(&mut self, stage: &str, timeout: Duration, bar: Option<&ProgressBar>) -> Result<Tally> {
        let deadline = Instant::now() + timeout;
        let mut merged = Tally::default();
        let mut seen = vec![false; self.len()];
        let early: Vec<_> = std::mem::take(&mut self.pending_events);
        for (i, s, t) in early {
            if s == stage && !seen[i] {
                seen[i] = true;
                merged.merge(&t);
            } else {
                self.pending_events.push((i, s, t));
            }
        }
        while seen.iter().any(|s| !s) {
            let left = deadline.checked_duration_since(Instant::now()).ok_or_else(|| anyhow!("timed out waiting for stage {stage}"))?;
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((i, l)) => {
                    if let Some((i, s, t)) = self.handle(i, l)? {
                        if s == stage {
                            seen[i] = true;
                            merged.merge(&t);
                        } else {
                            self.pending_events.push((i, s, t));
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("workers gone while waiting for {stage}"),
            }
            self.check_guard()?;
            // A worker whose threads failed reports its result early; say why.
            if let Some((i, r)) = self.results.iter().enumerate().find_map(|(i, r)| r.as_ref().map(|r| (i, r))) {
                if seen.get(i) == Some(&false) {
                    bail!("worker {i} ended before stage {stage}: {:?}", r.errors);
                }
            }
            if let Some(b) = bar {
                b.set_position(self.total_progress());
            }
        }
        Ok(merged)
    }

    /// Waits for every worker's final result and merges them.
    pub fn wait_results(&mut self, timeout: Duration, bar: Option<&ProgressBar>) -> Result<Tally> {
        let deadline = Instant::now() + timeout;
        while self.results.iter().any(|r| r.is_none()) {
            let left = deadline.checked_duration_since(Instant::now()).ok_or_else(|| anyhow!("timed out waiting for worker results"))?;
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((i, l)) => {
                    if let Some(ev) = self.handle(i, l)? {
                        self.pending_events.push(ev);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("workers gone before their results"),
            }
            self.check_guard()?;
            if let Some(b) = bar {
                b.set_position(self.total_progress());
            }
        }
        let mut merged = Tally::default();
        for r in self.results.iter().flatten() {
            merged.merge(r);
        }
        Ok(merged)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Closing stdin aborts a worker's phases; then reap, killing stragglers.
        self.stdins.clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:>28} [{elapsed_precise}] {bar:30} {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_message(msg.to_string());
    b
}

/// Re-exported so scenarios name the spec type from one place.
pub use worker::Job;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procs_needed_for_the_open_file_limit() {
        assert_eq!(plan_procs(10_000, 0).unwrap(), 1);
        assert_eq!(plan_procs(19_000, 0).unwrap(), 1);
        assert_eq!(plan_procs(19_001, 0).unwrap(), 2);
        assert_eq!(plan_procs(50_000, 0).unwrap(), 3);
        assert_eq!(plan_procs(50_000, 4).unwrap(), 4);
        let e = plan_procs(50_000, 2).unwrap_err().to_string();
        assert!(e.contains("--procs 3") && e.contains("20,000 open files"), "{e}");
    }

    #[test]
    fn worker_lines_parse() {
        assert!(matches!(parse_line("PROGRESS 42"), Some(Line::Progress(42))));
        let mut t = Tally::default();
        t.add("ok", 2);
        let s = format!("EVENT ready {}", serde_json::to_string(&t).unwrap());
        match parse_line(&s) {
            Some(Line::Event(stage, t)) => {
                assert_eq!(stage, "ready");
                assert_eq!(t.count("ok"), 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_line("RESULT {}"), Some(Line::Result(_))));
        assert!(matches!(parse_line("FATAL too many"), Some(Line::Fatal(m)) if m == "too many"));
        assert!(parse_line("noise").is_none());
        assert!(parse_line("PROGRESS x").is_none());
    }
}
