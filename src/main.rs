//! The `ringgate` command line: serve, mint tokens, check or print configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ringgate::config::{Config, Driver};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ringgate", version, about = "Thread-per-core io_uring IM and push gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (with no --config: TLS on 0.0.0.0:7443, data in ./ringgate-data).
    Serve {
        /// TOML configuration file (see `ringgate config default`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Force an io driver (overrides server.driver).
        #[arg(long)]
        driver: Option<DriverArg>,
        /// Worker threads (overrides server.workers; 0 = one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Print a JWT for a user, signed with the configured secret.
    Token {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// User id (the token's `sub`).
        #[arg(long, short)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_s: u64,
        /// Create `<data_dir>/jwt-secret` if it does not exist (otherwise that is an error:
        /// a token signed with a secret no server uses would be refused).
        #[arg(long)]
        create_secret: bool,
        /// Sign with the `[[auth.keys]]` entry of this kid instead of the secret (needs --key-file).
        #[arg(long, requires = "key_file")]
        kid: Option<String>,
        /// With --kid: the signing key, a PKCS#8 PEM private key (RS256, ES256, EdDSA) or the secret file (HS256).
        #[arg(long, requires = "kid")]
        key_file: Option<PathBuf>,
    },
    /// Reload the configuration of the running server that uses this config's data directory (sends it SIGHUP).
    Reload {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print what `GET /v1/route` would answer now (the signed JSON), for operators.
    Route {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The request's Host header (used for the node's own endpoint when listening on 0.0.0.0).
        #[arg(long)]
        host: Option<String>,
        /// The query string a client would send, e.g. `user=alice&transports=tls&failed=a1`.
        #[arg(long, default_value = "")]
        query: String,
    },
    /// Check or print configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Compare kernel limits with a sysctl profile, compute the connection ceiling, or apply a profile.
    Doctor(ringgate::doctor::DoctorArgs),
    /// Capacity plan (cores, RAM, nodes, binding constraint) from benchmark JSON and targets; writes report.md and report.html.
    Plan(ringgate::plan::PlanArgs),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Parse and validate a configuration file.
    Check { file: PathBuf },
    /// Print the complete default configuration, commented.
    Default,
}

#[derive(Clone, Copy, ValueEnum)]
enum DriverArg {
    Uring,
    Legacy,
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    let cfg = match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn init_logs() {
    use std::io::IsTerminal;
    // rustls logs peer errors at WARN, with peer-supplied text (an SNI, say)
    // in them: one line per bad ClientHello would make the log an amplifier.
    // We count those failures and log them ourselves at debug, so rustls is
    // held to ERROR unless RUST_LOG names it explicitly.
    let mut spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    if !spec.contains("rustls") {
        spec.push_str(",rustls=error");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// No transparent huge pages for this process. mimalloc asks for them on
/// its arenas (`madvise(MADV_HUGEPAGE)`, its `allow_thp` option, on by
/// default), and then every 2 MiB of heap that any small allocation
/// touches costs 2 MiB of RSS: with them, the first 60 KB SEND to 2,000
/// members added 28–34 MiB (2,000 inboxes, ledger entries and mailbox
/// messages scattered over many 2 MiB regions), with 4 KiB pages 3.9 MiB;
/// an idle server 14 MiB instead of 1.6 MiB (tests/limits.rs,
/// tests/store_budget.rs). Also spares the core thread the zeroing of a
/// whole 2 MiB page on a fault. The same `prctl` mimalloc uses for
/// `MIMALLOC_ALLOW_THP=0`; pages faulted before `main` keep theirs.
/// `RINGGATE_TRANSPARENT_HUGE_PAGES=1` keeps them (for an A/B measurement).
#[cfg(target_os = "linux")]
fn no_transparent_huge_pages() {
    if std::env::var_os("RINGGATE_TRANSPARENT_HUGE_PAGES").is_some_and(|v| v == "1") {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory
    // of ours; it only sets a flag of this process (inherited by children).
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if r != 0 {
        eprintln!("ringgate: cannot turn off transparent huge pages (RSS may grow in 2 MiB steps): {}", std::io::Error::last_os_error());
    }
}

#[cfg(not(target_os = "linux"))]
fn no_transparent_huge_pages() {}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, driver, workers } => {
            init_logs();
            if let Some(p) = &config {
                ringgate::runtime::set_config_path(p);
            }
            let mut cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringgate: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(d) = driver {
                cfg.server.driver = match d {
                    DriverArg::Uring => Driver::Uring,
                    DriverArg::Legacy => Driver::Legacy,
                };
            }
            if let Some(w) = workers {
                cfg.server.workers = w;
            }
            ringgate::runtime::set_cli_overrides(Some(cfg.server.driver).filter(|_| driver.is_some()), workers);
            tracing::info!(version = env!("CARGO_PKG_VERSION"), config = ?config, "ringgate starting");
            match ringgate::runtime::serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once: the log is stderr too (the line used to be printed twice).
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Route { config, host, query } => route_cmd(config.as_ref(), host.as_deref(), &query),
        Cmd::Reload { config } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringgate: {e}");
                    return ExitCode::from(2);
                }
            };
            match ringgate::runtime::reload::signal_running(&cfg.store.data_dir) {
                Ok(pid) => {
                    eprintln!("ringgate: sent SIGHUP to pid {pid}; its log says whether the reload was applied (ringgate_config_reloads_total)");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Token { config, user, ttl_s, create_secret, kid, key_file } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringgate: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = ringgate::limits::check_name(&user) {
                // The server would refuse this token's sub (CONNACK 2).
                eprintln!("ringgate: --user {user:?} is not a valid user id: {e} (1..=255 bytes of UTF-8 without control characters)");
                return ExitCode::from(2);
            }
            if ttl_s == 0 {
                eprintln!("ringgate: --ttl-s must be at least 1 (a token with no lifetime is refused at once)");
                return ExitCode::from(2);
            }
            if let (Some(kid), Some(key_file)) = (&kid, &key_file) {
                return token_with_key(&cfg, kid, key_file, &user, ttl_s);
            }
            match ringgate::auth::load_secret(&cfg.auth, &cfg.store.data_dir, create_secret) {
                Ok((secret, source)) => {
                    let made = if matches!(source, ringgate::auth::SecretSource::Generated(_)) { "created and " } else { "" };
                    eprintln!("ringgate: token signed with the secret {made}from {}", source.describe());
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    println!("{}", ringgate::auth::JwtKey::new(&secret).mint(&user, now, ttl_s));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Config { cmd: ConfigCmd::Check { file } } => config_check(&file),
        Cmd::Doctor(args) => ringgate::doctor::run(args),
        Cmd::Plan(args) => match ringgate::plan::run(&args) {
            Ok(dir) => {
                eprintln!("ringgate: wrote {0}/report.md and {0}/report.html", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringgate: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Config { cmd: ConfigCmd::Default } => {
            print!("{}", Config::default_toml());
            ExitCode::SUCCESS
        }
    }
}

/// `ringgate token --kid K --key-file F`: a token the `[[auth.keys]]` entry `K` verifies.
fn token_with_key(cfg: &Config, kid: &str, key_file: &std::path::Path, user: &str, ttl_s: u64) -> ExitCode {
    let Some(entry) = cfg.auth.keys.iter().find(|k| k.kid == kid) else {
        let known: Vec<&str> = cfg.auth.keys.iter().map(|k| k.kid.as_str()).collect();
        eprintln!("ringgate: --kid {kid:?} is not an [[auth.keys]] entry of this configuration (it has {known:?}); the server would refuse the token");
        return ExitCode::from(2);
    };
    let Some(alg) = ringgate::auth::KeyAlg::parse(&entry.alg) else {
        eprintln!("ringgate: auth.keys kid {kid:?}: alg {:?} is not one of HS256, RS256, ES256, EdDSA", entry.alg);
        return ExitCode::from(2);
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    match ringgate::auth::mint_with_key(kid, alg, key_file, user, now, ttl_s) {
        Ok(t) => {
            eprintln!("ringgate: token signed with kid {kid} ({})", alg.name());
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `config check`: every problem at once, including certificate, key and
/// secret files that are missing or do not parse.
fn config_check(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ringgate: cannot read config file {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    // Parse problems (syntax, unknown keys, types, enum values) first, then
    // what validation finds in the rest: all of it in one run.
    let (cfg, mut errs) = Config::parse_all(&text);
    let Some(cfg) = cfg else {
        return report_problems(file, &errs);
    };
    errs.extend(cfg.problems());
    errs.extend(ringgate::tls::check_files(&cfg.tls));
    if let Some(p) = &cfg.auth.jwt_secret_file {
        if let Err(e) = ringgate::auth::load_secret(&cfg.auth, &cfg.store.data_dir, false) {
            errs.push(format!("auth.jwt_secret_file {}: {e}", p.display()));
        }
    }
    if let Err(e) = ringgate::auth::TokenKeys::load(b"0123456789abcdef", &cfg.auth) {
        errs.push(e.to_string());
    }
    if let Some(p) = cfg.tls.ticket_key_file.as_ref().filter(|p| p.exists()) {
        if let Err(e) = ringgate::tls_tickets::load_or_create(p) {
            errs.push(e.to_string());
        }
    }
    if let Some(p) = &cfg.route.signing_key_file {
        if let Err(e) = ringgate::route::read_key(p) {
            errs.push(e.to_string());
        }
    }
    if errs.is_empty() {
        println!("{}: ok", file.display());
        return ExitCode::SUCCESS;
    }
    report_problems(file, &errs)
}

fn report_problems(file: &std::path::Path, errs: &[String]) -> ExitCode {
    eprintln!("ringgate: {}: {} problem{}:", file.display(), errs.len(), if errs.len() == 1 { "" } else { "s" });
    for e in errs {
        // A syntax error spans lines (the parser quotes the line): indent them under the item.
        eprintln!("  - {}", e.replace('\n', "\n    "));
    }
    ExitCode::from(2)
}

/// `ringgate route`: the body `GET /v1/route?QUERY` would get now.
fn route_cmd(config: Option<&PathBuf>, host: Option<&str>, query: &str) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringgate: {e}");
            return ExitCode::from(2);
        }
    };
    let (path, _) = ringgate::route::key_path(&cfg.route, &cfg.store.data_dir);
    let key = match ringgate::route::read_key(&path) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ringgate: {e} (`ringgate serve` creates the key on first start; pass its --config)");
            return ExitCode::FAILURE;
        }
    };
    let listen = cfg.server.listen.parse().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 7443)));
    eprintln!("ringgate: signed with {} (public key {}, key_id {})", path.display(), key.public_hex(), key.key_id());
    let svc = ringgate::route::RouteService::new(cfg.route.clone(), key, listen, cfg.tls.enabled, 0);
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let q = ringgate::route::RouteQuery::parse(query.trim_start_matches('?'));
    println!("{}", svc.answer(&q, host, 0, wall));
    ExitCode::SUCCESS
}
