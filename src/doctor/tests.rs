//! Unit tests of the doctor: profiles, the ceiling, explanations, apply against a temporary sysctl root.
use super::*;

/// A fixed cost for tests of the arithmetic (the product uses the measured one).
const IDLE_TLS_CONNECTION: ConnectionCost = ConnectionCost { process_bytes: 3_800, kernel_bytes: 3_700 };

fn limits() -> Limits {
    Limits {
        nofile_soft: 20_000,
        nofile_hard: 20_000,
        nr_open: Some(1_048_576),
        file_max: Some(2_466_174),
        files_allocated: Some(174),
        mem_available_bytes: Some(24 * 1024 * 1024 * 1024),
        cgroup_memory_free_bytes: None,
        conntrack_max: None,
        conntrack_count: None,
        local_port_range: Some((32_768, 60_999)),
        workers: 2,
    }
}

fn setting(key: &str, value: &str) -> Setting {
    Setting { key: key.into(), value: value.into(), line: 1, ignore_failure: false }
}

// --- parsing ---

#[test]
fn parses_keys_values_and_comments() {
    let text = "# comment\n; also a comment\n\n  net.core.somaxconn = 4096  \nnet.ipv4.tcp_rmem=4096\t16384   2097152\n-net.netfilter.nf_conntrack_max = 5\nnet/ipv4/conf/eth0.100/rp_filter = 1\n";
    let s = parse_profile("t", text).unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(s[0], Setting { key: "net.core.somaxconn".into(), value: "4096".into(), line: 4, ignore_failure: false });
    assert_eq!(s[1].value, "4096 16384 2097152");
    assert_eq!(s[1].line, 5);
    assert!(s[2].ignore_failure);
    assert_eq!(s[2].key, "net.netfilter.nf_conntrack_max");
    // Slash form: dots are literal (VLAN interface names).
    assert_eq!(s[3].path_under(Path::new("/proc/sys")), Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter"));
    assert_eq!(s[0].path_under(Path::new("/proc/sys")), Path::new("/proc/sys/net/core/somaxconn"));
}

#[test]
fn syntax_errors_name_the_line() {
    let cases = [
        ("a.b = 1\nnot a setting\n", 2, "expected `key = value`"),
        ("= 5\n", 1, "empty key"),
        ("net.core.somaxconn =   \n", 1, "has no value"),
        ("net.ipv4.conf.*.rp_filter = 1\n", 1, "glob"),
        ("net/../../etc/passwd = x\n", 1, "not a sysctl key"),
        ("/etc/passwd = x\n", 1, "not a sysctl key"),
        ("net..core = 1\n", 1, "not a sysctl key"),
        ("a.b = 1\n# x\na/b = 2\n", 3, "already set on line 1"),
    ];
    for (text, line, needle) in cases {
        match parse_profile("f.conf", text) {
            Err(ProfileError::Syntax { line: l, message, origin }) => {
                assert_eq!(origin, "f.conf");
                assert_eq!(l, line, "{text:?}: {message}");
                assert!(message.contains(needle), "{text:?}: {message}");
            }
            other => panic!("{text:?}: expected a syntax error, got {other:?}"),
        }
    }
    assert!(matches!(parse_profile("e", "# only comments\n"), Err(ProfileError::Empty { .. })));
}

#[test]
fn unknown_profile_lists_the_known_ones() {
    let e = embedded_profile("c10m").unwrap_err().to_string();
    assert!(e.contains("c10m") && e.contains("c1m, low-latency, loadgen"), "{e}");
}

#[test]
fn embedded_profiles_parse_and_document_every_key() {
    for (name, text) in PROFILES {
        let p = embedded_profile(name).unwrap();
        assert!(!p.settings.is_empty(), "{name}");
        for s in &p.settings {
            assert!(!s.key.contains("tw_recycle"), "{name} sets {}", s.key);
        }
        // Every setting sits in a paragraph that starts with a comment
        // (a few related keys may share one), so none is unexplained.
        let lines: Vec<&str> = text.lines().collect();
        for s in &p.settings {
            let mut i = s.line - 1;
            loop {
                assert!(i > 0, "{name}: {} has no comment above it", s.key);
                i -= 1;
                let l = lines[i].trim();
                assert!(!l.is_empty(), "{name}: {} (line {}) has no comment above it", s.key, s.line);
                if l.starts_with('#') {
                    break;
                }
            }
        }
    }
}

#[test]
fn c1m_has_the_keys_the_issue_asks_for_and_keeps_abort_on_overflow_off() {
    let p = embedded_profile("c1m").unwrap();
    let get = |k: &str| p.settings.iter().find(|s| s.key == k).map(|s| s.value.clone());
    for k in [
        "fs.file-max",
        "fs.nr_open",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.tcp_mem",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_tw_reuse",
        "net.ipv4.tcp_max_tw_buckets",
        "net.ipv4.ip_local_port_range",
        "net.core.netdev_max_backlog",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_abort_on_overflow",
    ] {
        assert!(get(k).is_some(), "c1m lacks {k}");
    }
    assert_eq!(get("net.ipv4.tcp_abort_on_overflow").as_deref(), Some("0"));
    // LimitNOFILE in deploy/ringgate.service must fit under fs.nr_open.
    let nr_open: u64 = get("fs.nr_open").unwrap().parse().unwrap();
    let unit = include_str!("../../deploy/ringgate.service");
    let nofile: u64 = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .expect("unit sets LimitNOFILE")
        .parse()
        .unwrap();
    assert!(nofile <= nr_open, "LimitNOFILE={nofile} > fs.nr_open={nr_open}");
}

#[test]
fn low_latency_only_sets_namespaced_net_keys() {
    // tests/doctor.rs applies it inside a network namespace and checks
    // the host is untouched; fs.*, vm.* or kernel.* keys would leak.
    for s in embedded_profile("low-latency").unwrap().settings {
        assert!(s.key.starts_with("net.ipv4.tcp_"), "{}", s.key);
    }
}

// --- ceiling ---

#[test]
fn open_files_bind_on_a_20k_host() {
    let c = connection_ceiling(&limits(), IDLE_TLS_CONNECTION, Side::Server);
    assert_eq!(c.binding, "open_files_per_process");
    assert_eq!(c.connections, 20_000 - 16 - 2 * 2);
    assert!(c.binding_name.contains("20,000"), "{}", c.binding_name);
    assert!(!c.fits(1_000_000));
    assert!(c.fits(19_980));
    assert!(!c.fits(19_981));
    // fs.nr_open (1,048,576) holds a million; only the rlimit is short.
    assert_eq!(c.short_of(1_000_000).iter().map(|x| x.id).collect::<Vec<_>>(), ["open_files_per_process"]);
    assert_eq!(c.short_of(1_100_000).iter().map(|x| x.id).collect::<Vec<_>>(), ["open_files_per_process", "nr_open"]);
}

#[test]
fn memory_binds_when_limits_are_raised() {
    let mut l = limits();
    l.nofile_hard = 4_194_304;
    l.nr_open = Some(4_194_304);
    l.file_max = Some(8_388_608);
    l.mem_available_bytes = Some(7_500 * 1_000_000 + 7_499);
    let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
    assert_eq!(c.binding, "memory");
    assert_eq!(c.connections, 1_000_000);
    assert!(c.fits(1_000_000));
    assert!(!c.fits(1_000_001));
    // A different per-connection cost moves the ceiling proportionally.
    let c2 = connection_ceiling(&l, ConnectionCost { process_bytes: 11_300, kernel_bytes: 3_700 }, Side::Server);
    assert_eq!(c2.connections, 500_000);
}

#[test]
fn file_max_counts_files_already_open() {
    let mut l = limits();
    l.nofile_hard = 10_000_000;
    l.nr_open = Some(10_000_000);
    l.file_max = Some(100_000);
    l.files_allocated = Some(30_000);
    let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
    assert_eq!(c.binding, "file_max");
    assert_eq!(c.connections, 100_000 - 30_000 - 20);
}

#[test]
fn nr_open_binds_when_the_hard_limit_is_unlimited() {
    let mut l = limits();
    l.nofile_hard = RLIM_INFINITY;
    l.nofile_soft = RLIM_INFINITY;
    l.nr_open = Some(50_000);
    let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
    assert_eq!(c.binding, "nr_open");
    assert!(c.constraints[0].name.contains("unlimited"));
}

#[test]
fn a_tie_names_the_per_process_limit() {
    let mut l = limits();
    l.nr_open = Some(20_000);
    let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
    assert_eq!(c.binding, "open_files_per_process");
}

#[test]
fn cgroup_and_conntrack_count_when_present() {
    let mut l = limits();
    l.nofile_hard = 4_194_304;
    l.cgroup_memory_free_bytes = Some(75_000_000);
    let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
    assert_eq!((c.binding, c.connections), ("cgroup_memory", 10_000));
    l.conntrack_max = Some(9_000);
    l.conntrack_count = Some(1_000);
    let c = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
    assert_eq!((c.binding, c.connections), ("conntrack", 8_000));
}

#[test]
fn ports_limit_a_client_not_a_server() {
    let mut l = limits();
    l.nofile_hard = 4_194_304;
    l.nr_open = Some(4_194_304);
    let server = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
    let ports = server.constraints.iter().find(|c| c.id == "local_ports").unwrap();
    assert!(!ports.applies);
    assert!(ports.note.contains("not a server"), "{}", ports.note);
    assert_ne!(server.binding, "local_ports");
    let client = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Client);
    assert_eq!((client.binding, client.connections), ("local_ports", 60_999 - 32_768 + 1));
}

#[test]
fn zero_limits_give_zero_not_a_panic() {
    let l = Limits {
        nofile_soft: 0,
        nofile_hard: 0,
        nr_open: None,
        file_max: None,
        files_allocated: None,
        mem_available_bytes: None,
        cgroup_memory_free_bytes: None,
        conntrack_max: None,
        conntrack_count: None,
        local_port_range: Some((5, 1)),
        workers: 0,
    };
    let c = connection_ceiling(&l, ConnectionCost { process_bytes: 0, kernel_bytes: 0 }, Side::Client);
    assert_eq!(c.connections, 0);
}

// --- comparison and consequences ---

#[test]
fn rows_compare_whitespace_insensitively_and_floors_allow_more() {
    let ctx = Context::default();
    let r = compare_row(&setting("net.ipv4.tcp_rmem", "4096 16384 2097152"), &Live::Value("4096 16384 2097152".into()), &ctx);
    assert_eq!(r.status, RowStatus::Ok);
    let r = compare_row(&setting("fs.file-max", "8388608"), &Live::Value("9223372036854775807".into()), &ctx);
    assert_eq!(r.status, RowStatus::Above);
    let r = compare_row(&setting("fs.file-max", "8388608"), &Live::Value("2466174".into()), &ctx);
    assert_eq!(r.status, RowStatus::Differs);
    // Not a floor key: more is not automatically fine.
    let r = compare_row(&setting("net.ipv4.tcp_fin_timeout", "15"), &Live::Value("60".into()), &ctx);
    assert_eq!(r.status, RowStatus::Differs);
    assert!(r.consequence.contains("60 s"), "{}", r.consequence);
    let r = compare_row(&setting("net.core.netdev_max_backlog", "16384"), &Live::Absent, &ctx);
    assert_eq!(r.status, RowStatus::Absent);
}

#[test]
fn consequences_describe_the_live_value() {
    let ctx = Context { mem_total_bytes: Some(32 << 30), files_allocated: Some(1_000), side: Some(Side::Server) };
    assert!(explain("net.core.somaxconn", "128", &ctx).contains("clamped"));
    assert!(explain("net.ipv4.tcp_abort_on_overflow", "1", &ctx).contains("RST"));
    assert!(explain("net.ipv4.tcp_abort_on_overflow", "0", &ctx).contains("latency, not connections"));
    assert!(explain("fs.file-max", "100000", &ctx).contains("~99,000 more"));
    let mem = explain("net.ipv4.tcp_mem", "786432 1048576 1572864", &ctx);
    assert!(mem.contains("4.0 GiB") && mem.contains("6.0 GiB") && mem.contains("(18% of RAM)"), "{mem}");
    assert!(explain("net.ipv4.ip_local_port_range", "32768 60999", &ctx).contains("does not limit accepted"));
    let client = Context { side: Some(Side::Client), ..ctx.clone() };
    assert!(explain("net.ipv4.ip_local_port_range", "1024 65535", &client).contains("64,512"));
    assert!(explain("net.ipv4.tcp_notsent_lowat", "4294967295", &ctx).contains("no limit"));
    assert_eq!(explain("net.ipv4.something_new", "1", &ctx), "");
}

// --- apply (against a directory standing in for /proc/sys) ---

fn fake_root() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let w = |rel: &str, v: &str| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    };
    w("net/ipv4/tcp_fin_timeout", "60\n");
    w("net/ipv4/tcp_rmem", "4096\t16384\t2097152\n");
    w("fs/file-max", "9223372036854775807\n");
    w("net/core/somaxconn", "4096\n");
    // A directory where a file should be: writing it fails.
    std::fs::create_dir_all(d.path().join("net/ipv4/tcp_mem")).unwrap();
    d
}

#[test]
fn apply_reports_every_key() {
    let root = fake_root();
    let settings = parse_profile(
        "t",
        "net.ipv4.tcp_fin_timeout = 15\nnet.ipv4.tcp_rmem = 4096 16384 2097152\nfs.file-max = 8388608\n\
         net.core.somaxconn = 65535\nnet.core.netdev_max_backlog = 16384\nnet.ipv4.tcp_mem = 1 2 3\n",
    )
    .unwrap();
    let r = apply_settings(root.path(), &settings);
    assert_eq!(r[0].outcome, Outcome::Changed { old: "60".into(), new: "15".into() });
    assert_eq!(r[1].outcome, Outcome::Unchanged { value: "4096 16384 2097152".into() });
    assert_eq!(
        r[2].outcome,
        Outcome::KeptHigher { live: "9223372036854775807".into(), profile: "8388608".into() }
    );
    assert_eq!(r[3].outcome, Outcome::Changed { old: "4096".into(), new: "65535".into() });
    assert_eq!(r[4].outcome, Outcome::Absent);
    assert!(!r[4].is_fatal());
    assert!(matches!(&r[5].outcome, Outcome::Failed { .. }), "{:?}", r[5]);
    assert!(r[5].is_fatal());
    // The files hold the new values (and only them: O_TRUNC).
    assert_eq!(std::fs::read_to_string(root.path().join("net/ipv4/tcp_fin_timeout")).unwrap(), "15");
    assert_eq!(std::fs::read_to_string(root.path().join("fs/file-max")).unwrap().trim(), "9223372036854775807");
    let text = render_apply(&Profile { name: "t".into(), settings }, &r);
    assert!(text.contains("60 -> 15"), "{text}");
    assert!(text.contains("2 changed, 1 unchanged, 1 kept, 1 absent, 1 failed"), "{text}");
}

#[test]
fn a_refused_write_is_a_failure_with_the_old_value() {
    // /proc/self/stat reads fine and has no write handler: a stand-in
    // for a sysctl the kernel refuses (read-only, EINVAL).
    let root = fake_root();
    std::os::unix::fs::symlink("/proc/self/stat", root.path().join("net/ipv4/refuses")).unwrap();
    let r = apply_settings(root.path(), &parse_profile("t", "net.ipv4.refuses = 1\n").unwrap());
    match &r[0].outcome {
        Outcome::Failed { old: Some(old), wanted, error } => {
            assert!(!old.is_empty());
            assert_eq!(wanted, "1");
            assert!(!error.is_empty());
        }
        other => panic!("expected a failed write, got {other:?}"),
    }
    assert!(r[0].is_fatal());
}

#[test]
fn ignored_failures_are_not_fatal() {
    let root = fake_root();
    let settings = parse_profile("t", "-net.ipv4.tcp_mem = 1 2 3\n").unwrap();
    let r = apply_settings(root.path(), &settings);
    assert!(matches!(r[0].outcome, Outcome::Failed { .. }));
    assert!(!r[0].is_fatal());
}

// --- formatting ---

#[test]
fn numbers_read_well() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(20_000), "20,000");
    assert_eq!(thousands(1_234_567), "1,234,567");
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    assert_eq!(human_bytes_short(7_500), "7.5 KB");
}

#[test]
fn text_report_names_the_binding_constraint_and_the_gap() {
    let ceiling = connection_ceiling(&limits(), IDLE_TLS_CONNECTION, Side::Server);
    let report = Report {
        profile: "c1m".into(),
        kernel: "6.8.0".into(),
        rows: vec![],
        limits: limits(),
        target: Some(TargetVerdict {
            connections: 1_000_000,
            fits: ceiling.fits(1_000_000),
            short_of: ceiling.short_of(1_000_000).iter().map(|c| c.id).collect(),
        }),
        ceiling,
        assumption: "x".into(),
    };
    let t = render_text(&report);
    let binding = t.lines().find(|l| l.starts_with("Binding constraint:")).unwrap();
    assert!(binding.contains("RLIMIT_NOFILE hard limit 20,000"), "{binding}");
    assert!(t.contains("DOES NOT FIT, short by 980,020"), "{t}");
    assert!(t.contains("LimitNOFILE"), "{t}");
    assert_ceilings_sorted(&t);
    // Memory binding (it is not first in the fixed order of constraints).
    let mut l = limits();
    l.nofile_soft = 4_194_304;
    l.nofile_hard = 4_194_304;
    l.nr_open = Some(4_194_304);
    l.file_max = Some(8_388_608);
    l.mem_available_bytes = Some(7_500 * 1_000_000);
    let ceiling = connection_ceiling(&l, IDLE_TLS_CONNECTION, Side::Server);
    assert_eq!(ceiling.binding, "memory");
    let report = Report { profile: "c1m".into(), kernel: "6.8.0".into(), rows: vec![], limits: l, target: None, ceiling, assumption: "x".into() };
    assert_ceilings_sorted(&render_text(&report));
}

/// The ceilings are listed lowest first, the binding one on top, n/a last.
fn assert_ceilings_sorted(t: &str) {
    let listed: Vec<&str> = t
        .lines()
        .skip_while(|l| !l.starts_with("Connection ceiling"))
        .skip(1)
        .step_by(2)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert!(listed.len() >= 3, "{t}");
    let counts: Vec<u64> = listed.iter().take_while(|n| **n != "n/a").map(|n| n.replace(',', "").parse().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "not sorted: {listed:?}\n{t}");
    assert!(listed.iter().skip(counts.len()).all(|n| *n == "n/a"), "{listed:?}");
    assert!(t.lines().skip_while(|l| !l.starts_with("Connection ceiling")).nth(1).unwrap().contains("<- binding"), "{t}");
}
