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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config, driver, workers } => {
            init_logs();
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
            tracing::info!(version = env!("CARGO_PKG_VERSION"), config = ?config, "ringgate starting");
            match ringgate::runtime::serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("ringgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Token { config, user, ttl_s } => {
            let cfg = match load(config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringgate: {e}");
                    return ExitCode::from(2);
                }
            };
            if user.is_empty() {
                eprintln!("ringgate: --user must not be empty");
                return ExitCode::from(2);
            }
            match ringgate::auth::load_or_create_secret(&cfg.auth, &cfg.store.data_dir) {
                Ok((secret, _)) => {
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
        Cmd::Config { cmd: ConfigCmd::Check { file } } => match load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ringgate: {e}");
                ExitCode::from(2)
            }
        },
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
