//! `ringgate doctor` as an operator runs it: the real binary against this host's /proc, and `--apply` inside a throwaway network namespace so the host is never changed.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn ringgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringgate"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\nexit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", stdout(o)))
}

/// `ulimit -Hn` as a shell started from this test sees it (what the binary
/// inherits), independent of the code under test.
fn shell_hard_nofile() -> Option<u64> {
    let o = Command::new("sh").args(["-c", "ulimit -Hn"]).output().ok()?;
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// The tightest applying constraint, computed here from the JSON's list
/// (ties: the first listed, as documented).
fn tightest(report: &Value) -> Value {
    let cs = report["ceiling"]["constraints"].as_array().expect("constraints array");
    assert!(!cs.is_empty());
    let mut best: Option<&Value> = None;
    for c in cs.iter().filter(|c| c["applies"].as_bool() == Some(true)) {
        let n = c["connections"].as_u64().expect("connections is a number");
        if best.is_none_or(|b| n < b["connections"].as_u64().unwrap()) {
            best = Some(c);
        }
    }
    best.expect("at least one constraint applies").clone()
}

/// The part of a constraint's name that does not move between two runs
/// (memory available and files open now do).
fn stable_label(name: &str) -> &str {
    name.split([':', '(']).next().unwrap().trim()
}

#[test]
fn a_target_beyond_the_tightest_limit_fails_and_names_it() {
    let target = 1_000_000u64;
    let o = run(ringgate().args(["doctor", "--profile", "c1m", "--target-connections", &target.to_string(), "--json"]));
    let report = json(&o);
    let t = tightest(&report);
    let ceiling = report["ceiling"]["connections"].as_u64().unwrap();
    assert_eq!(report["ceiling"]["binding"], t["id"], "binding is not the tightest limit");
    assert_eq!(ceiling, t["connections"].as_u64().unwrap());
    let fits = target <= ceiling;
    assert_eq!(report["target"]["fits"].as_bool(), Some(fits));
    assert_eq!(o.status.code(), Some(if fits { 0 } else { 1 }), "exit code must say whether {target} fits under {ceiling}");

    // The text form names the same constraint as binding.
    let o = run(ringgate().args(["doctor", "--profile", "c1m", "--target-connections", &target.to_string()]));
    let text = stdout(&o);
    let binding = text.lines().find(|l| l.starts_with("Binding constraint:")).expect("a 'Binding constraint:' line");
    let name = t["name"].as_str().unwrap();
    assert!(binding.contains(stable_label(name)), "{binding:?} does not name {name:?}");

    if shell_hard_nofile() == Some(20_000) {
        // This machine: the per-process open-files limit binds, far below a million.
        assert_eq!(t["id"], "open_files_per_process");
        assert!(binding.contains("RLIMIT_NOFILE") && binding.contains("20,000"), "{binding}");
        assert_eq!(o.status.code(), Some(1));
        assert!(text.contains("DOES NOT FIT"), "{text}");
        assert!(text.contains("open files 20,000 per process"), "{text}");
    }

    // On a host that holds a million, the non-zero exit is still checked:
    // one connection more than the ceiling never fits. Only with a limit
    // that cannot move between two runs (memory and files-in-use do).
    if fits && matches!(t["id"].as_str(), Some("open_files_per_process" | "nr_open")) {
        let o = run(ringgate().args(["doctor", "--target-connections", &(ceiling + 1).to_string()]));
        assert_eq!(o.status.code(), Some(1));
        let o = run(ringgate().args(["doctor", "--target-connections", &ceiling.to_string()]));
        assert_eq!(o.status.code(), Some(0));
    }
}

#[test]
fn json_report_has_every_profile_key_and_the_facts() {
    for profile in ["c1m", "low-latency", "loadgen"] {
        let o = run(ringgate().args(["doctor", "--profile", profile, "--json"]));
        assert_eq!(o.status.code(), Some(0), "no target given: nothing to fail");
        let r = json(&o);
        assert_eq!(r["profile"], profile);
        let rows = r["rows"].as_array().unwrap();
        let keys: Vec<&str> = rows.iter().map(|x| x["key"].as_str().unwrap()).collect();
        for fact in ["RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "memory", "cores", "io_uring", "kernel TLS"] {
            assert!(keys.contains(&fact), "{profile}: no {fact} row");
        }
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("sysctl/{profile}.conf"))).unwrap();
        let settings = ringgate::doctor::parse_profile(profile, &text).unwrap();
        for s in &settings {
            let row = rows.iter().find(|x| x["key"] == s.key.as_str()).unwrap_or_else(|| panic!("{profile}: no row for {}", s.key));
            assert_eq!(row["profile"], s.value.as_str());
            // The live column is what /proc says (or absent), read here independently.
            let path = Path::new("/proc/sys").join(s.key.replace('.', "/"));
            match std::fs::read_to_string(&path) {
                Ok(v) => {
                    let live = v.split_whitespace().collect::<Vec<_>>().join(" ");
                    assert_eq!(row["live"], live.as_str(), "{}", s.key);
                    let got = row["status"].as_str().unwrap();
                    if live == s.value {
                        assert_eq!(got, "ok", "{}", s.key);
                    } else {
                        assert!(got == "differs" || got == "above", "{}: {got}", s.key);
                    }
                }
                Err(_) => assert_eq!(row["status"], "absent", "{}", s.key),
            }
        }
        let (soft, hard) = ringgate::net::listener::nofile_limit();
        assert_eq!(r["limits"]["nofile_soft"].as_u64(), Some(soft));
        assert_eq!(r["limits"]["nofile_hard"].as_u64(), Some(hard));
        // Ports bind a client, never a server.
        let ports = r["ceiling"]["constraints"].as_array().unwrap().iter().find(|c| c["id"] == "local_ports").cloned();
        if let Some(p) = ports {
            assert_eq!(p["applies"].as_bool(), Some(profile == "loadgen"), "{profile}: {p}");
        }
        assert_eq!(r["ceiling"]["side"], if profile == "loadgen" { "client" } else { "server" });
    }
}

#[test]
fn operator_mistakes_get_a_message_and_exit_2() {
    let o = run(ringgate().args(["doctor", "--profile", "c10m"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown profile \"c10m\"") && stderr(&o).contains("c1m, low-latency, loadgen"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "# fine\nnet.core.somaxconn = 1024\nnet.ipv4.tcp_fin_timeout\n").unwrap();
    let o = run(ringgate().args(["doctor", "--profile-file"]).arg(&bad));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 3") && stderr(&o).contains("key = value"), "{}", stderr(&o));

    let o = run(ringgate().args(["doctor", "--profile-file"]).arg(dir.path().join("missing.conf")));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read profile file"));

    let o = run(ringgate().args(["doctor", "--apply"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--apply needs a profile"), "{}", stderr(&o));

    let o = run(ringgate().args(["doctor", "--apply", "c1m", "--profile", "loadgen"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("name the profile once"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------
// --apply, in a network namespace
// ---------------------------------------------------------------------------

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// Why the namespace tests cannot run here, if they cannot.
fn netns_skip_reason() -> Option<&'static str> {
    if !is_root() {
        Some("not root: creating a network namespace and writing /proc/sys need root (CI runs as root)")
    } else if !have("ip") {
        Some("`ip` (iproute2) is missing; .ci/run installs it")
    } else {
        None
    }
}

/// A network namespace deleted on drop, so a failing assertion does not leak it.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Netns {
        let name = format!("rg-doctor-test-{}-{tag}", std::process::id());
        let o = run(Command::new("ip").args(["netns", "add", &name]));
        assert!(o.status.success(), "ip netns add {name} failed: {}", stderr(&o));
        Netns(name)
    }

    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]);
        c
    }

    /// A sysctl as seen inside the namespace.
    fn sysctl(&self, key: &str) -> Option<String> {
        let o = self.exec().arg("cat").arg(Path::new("/proc/sys").join(key.replace('.', "/"))).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).output();
    }
}

fn host_sysctl(key: &str) -> Option<String> {
    let v = std::fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/"))).ok()?;
    Some(v.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn apply_low_latency_changes_the_namespace_not_the_host() {
    if let Some(why) = netns_skip_reason() {
        eprintln!("skipping apply_low_latency_changes_the_namespace_not_the_host: {why}");
        return;
    }
    let profile = ringgate::doctor::embedded_profile("low-latency").unwrap();
    let ns = Netns::create("ll");
    let host_before: Vec<_> = profile.settings.iter().map(|s| host_sysctl(&s.key)).collect();
    let ns_before: Vec<_> = profile.settings.iter().map(|s| ns.sysctl(&s.key)).collect();
    // A fresh namespace starts at the kernel defaults, which this profile
    // changes; if none differed the test would prove nothing.
    assert!(
        profile.settings.iter().zip(&ns_before).any(|(s, b)| b.as_deref() != Some(s.value.as_str())),
        "every low-latency key already has its profile value in a fresh namespace: {ns_before:?}"
    );

    let o = run(ns.exec().arg(env!("CARGO_BIN_EXE_ringgate")).args(["doctor", "--apply", "low-latency"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for ((s, before), host) in profile.settings.iter().zip(&ns_before).zip(&host_before) {
        let after = ns.sysctl(&s.key);
        assert_eq!(after.as_deref(), Some(s.value.as_str()), "{} inside the namespace", s.key);
        assert_eq!(&host_sysctl(&s.key), host, "{} changed on the host", s.key);
        let line = text.lines().find(|l| l.contains(&s.key)).unwrap_or_else(|| panic!("no line for {}:\n{text}", s.key));
        let before = before.as_deref().unwrap();
        if before == s.value {
            assert!(line.contains("unchanged"), "{line}");
        } else {
            assert!(line.contains("changed") && line.contains(&format!("{before} -> {}", s.value)), "{line}");
        }
    }

    // Applying again changes nothing and still succeeds.
    let o = run(ns.exec().arg(env!("CARGO_BIN_EXE_ringgate")).args(["doctor", "--apply", "low-latency"]));
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains(&format!("0 changed, {} unchanged", profile.settings.len())), "{}", stdout(&o));
}

#[test]
fn apply_reports_absent_and_failed_keys_and_exits_1() {
    if let Some(why) = netns_skip_reason() {
        eprintln!("skipping apply_reports_absent_and_failed_keys_and_exits_1: {why}");
        return;
    }
    let ns = Netns::create("pf");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test.conf");
    // somaxconn is per namespace; the second key exists nowhere; the third
    // is refused by the kernel (EINVAL).
    std::fs::write(
        &file,
        "# test-only profile: namespaced keys only\nnet.core.somaxconn = 12345\n\
         net.ipv4.ringgate_test_no_such_key = 1\nnet.ipv4.tcp_fin_timeout = not-a-number\n",
    )
    .unwrap();
    let host_somaxconn = host_sysctl("net.core.somaxconn");
    let host_fin = host_sysctl("net.ipv4.tcp_fin_timeout");
    let ns_fin = ns.sysctl("net.ipv4.tcp_fin_timeout");
    assert_ne!(ns.sysctl("net.core.somaxconn").as_deref(), Some("12345"));

    let o = run(ns.exec().arg(env!("CARGO_BIN_EXE_ringgate")).args(["doctor", "--json", "--apply", "--profile-file"]).arg(&file));
    assert_eq!(o.status.code(), Some(1), "a refused key must fail the command");
    let r = json(&o);
    let results = r["results"].as_array().unwrap();
    let by_key = |k: &str| results.iter().find(|x| x["key"] == k).unwrap_or_else(|| panic!("no result for {k}: {r}"));
    assert_eq!(by_key("net.core.somaxconn")["outcome"], "changed");
    assert_eq!(by_key("net.core.somaxconn")["new"], "12345");
    assert_eq!(by_key("net.ipv4.ringgate_test_no_such_key")["outcome"], "absent");
    let fin = by_key("net.ipv4.tcp_fin_timeout");
    assert_eq!(fin["outcome"], "failed");
    assert!(!fin["error"].as_str().unwrap().is_empty());
    assert_eq!(r["failed"], 1);

    assert_eq!(ns.sysctl("net.core.somaxconn").as_deref(), Some("12345"));
    assert_eq!(ns.sysctl("net.ipv4.tcp_fin_timeout"), ns_fin);
    assert_eq!(host_sysctl("net.core.somaxconn"), host_somaxconn, "the host's somaxconn changed");
    assert_eq!(host_sysctl("net.ipv4.tcp_fin_timeout"), host_fin);
}

#[test]
fn apply_refuses_without_root_and_changes_nothing() {
    if !is_root() || !have("setpriv") {
        eprintln!("skipping apply_refuses_without_root_and_changes_nothing: needs root and setpriv to drop to an unprivileged user");
        return;
    }
    let profile = ringgate::doctor::embedded_profile("low-latency").unwrap();
    let before: Vec<_> = profile.settings.iter().map(|s| host_sysctl(&s.key)).collect();
    let o = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ringgate"))
        .args(["doctor", "--apply", "low-latency"]));
    if matches!(o.status.code(), Some(126 | 127)) {
        eprintln!("skipping: uid 65534 cannot execute the test binary here");
        return;
    }
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("must run as root") && stderr(&o).contains("nothing was changed"), "{}", stderr(&o));
    let after: Vec<_> = profile.settings.iter().map(|s| host_sysctl(&s.key)).collect();
    assert_eq!(before, after);
}
