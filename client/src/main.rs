//! The `ringgate-client` command line: send, listen and chat through ringgate, over the SDK's route fetch and ladder connect.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use ringgate_client::ladder::LadderEvent;
use ringgate_client::{Client, ClientConfig, ClientEvent, Error, Target, TokenSource, Trust};

#[derive(Parser)]
#[command(name = "ringgate-client", version, about = "Send and receive messages through a ringgate gateway")]
struct Cli {
    /// Route service URL, e.g. https://im.example.com:7443/v1/route.
    #[arg(long, global = true, value_name = "URL")]
    route: Option<String>,
    /// The route service's Ed25519 public key: 64 hex characters (`<data_dir>/route-key.pub`).
    #[arg(long = "route-key", global = true, value_name = "HEX")]
    route_key: Option<String>,
    /// Fallback endpoint HOST:PORT (repeatable); used in order when no route can be had.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    endpoint: Vec<String>,
    /// Accept any server certificate, for the route fetch too (development only).
    #[arg(long, global = true, conflicts_with = "ca")]
    insecure: bool,
    /// Trust the certificates in this PEM file (e.g. ringgate-data/dev-cert.pem).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The JWT (see `ringgate token --user NAME`).
    #[arg(long, global = true, value_name = "T", conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the JWT.
    #[arg(long = "token-file", global = true, value_name = "F")]
    token_file: Option<PathBuf>,
    /// Device id (default: cli-send, cli-listen or cli-chat).
    #[arg(long, global = true, value_name = "D")]
    device: Option<String>,
    /// Print the ladder's attempts, the winner and reconnects on stderr.
    #[arg(short, global = true)]
    v: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send one message; prints msg_id=<n> after SENDACK 0.
    Send {
        /// Recipient user id.
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        to: Option<String>,
        /// Recipient group.
        #[arg(long)]
        group: Option<String>,
        /// The message text.
        text: String,
    },
    /// Print messages as `seq<TAB>from<TAB>payload` and acknowledge them.
    Listen {
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Interactive: lines typed are sent to USER, messages received are printed.
    Chat {
        #[arg(long)]
        to: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringgate-client: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

fn config(cli: &Cli, default_device: &str) -> Result<ClientConfig, Error> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| Error::Config(format!("--token-file {}: {e}", f.display())))?
            .trim()
            .to_string(),
        (None, None) => return Err(Error::Config("give --token T or --token-file F (mint one with `ringgate token --user NAME`)".into())),
    };
    let device = cli.device.clone().unwrap_or_else(|| default_device.to_string());
    let mut cfg = ClientConfig::new(device, TokenSource::Static(token));
    cfg.trust = if cli.insecure {
        Trust::Insecure
    } else if let Some(ca) = &cli.ca {
        Trust::CaFile(ca.clone())
    } else {
        Trust::Unset
    };
    if let Some(url) = &cli.route {
        let key = cli
            .route_key
            .as_deref()
            .ok_or_else(|| Error::Config("--route needs --route-key HEX (the server prints it and writes <data_dir>/route-key.pub)".into()))?;
        cfg = cfg.route(url.clone(), ringgate_client::route::parse_key(key)?);
    }
    for e in &cli.endpoint {
        cfg = cfg.endpoint(e)?;
    }
    if matches!(cfg.trust, Trust::Unset) {
        return Err(Error::Config(
            "no TLS trust: give --ca FILE (a fresh `ringgate serve` writes ringgate-data/dev-cert.pem) or --insecure".into(),
        ));
    }
    if cli.v {
        let t0 = Instant::now();
        cfg = cfg.on_event(move |e| verbose(t0, e));
    }
    Ok(cfg)
}

fn verbose(t0: Instant, e: &ClientEvent) {
    let at = t0.elapsed().as_millis();
    let line = match e {
        ClientEvent::Ladder(LadderEvent::Started { what, after, .. }) => {
            format!("ladder: attempt {what} started at +{} ms", after.as_millis())
        }
        ClientEvent::Ladder(LadderEvent::Failed { id, after, why }) => {
            format!("ladder: attempt {id} failed at +{} ms: {why}", after.as_millis())
        }
        ClientEvent::Ladder(LadderEvent::Won { what, after, .. }) => {
            format!("ladder: {what} won after {} ms", after.as_millis())
        }
        ClientEvent::Ladder(LadderEvent::Abandoned { id }) => format!("ladder: attempt {id} closed (lost)"),
        ClientEvent::Connected { endpoint, after, connack } => format!(
            "connected to {endpoint} in {} ms as {} (heartbeat {} s, head_seq {})",
            after.as_millis(),
            connack.user_id,
            connack.heartbeat_s,
            connack.head_seq
        ),
        ClientEvent::Disconnected { why } => format!("disconnected: {why}"),
        ClientEvent::Reconnecting { after } => format!("reconnecting in {} ms", after.as_millis()),
        ClientEvent::RouteFetched { endpoints, reported_failed } => {
            format!("route: endpoints [{}], reported failed [{}]", endpoints.join(", "), reported_failed.join(", "))
        }
        ClientEvent::RouteFailed { why, using } => format!("route: {why}; using {using}"),
    };
    eprintln!("[{at:>6} ms] {line}");
}

fn sendack_meaning(status: u8) -> &'static str {
    match status {
        0 => "stored",
        1 => "no such target",
        2 => "forbidden",
        3 => "rate limited",
        4 => "payload too large",
        5 => "server busy",
        _ => "unknown status",
    }
}

async fn run(cli: Cli) -> ExitCode {
    let default_device = match &cli.cmd {
        Cmd::Send { .. } => "cli-send",
        Cmd::Listen { .. } => "cli-listen",
        Cmd::Chat { .. } => "cli-chat",
    };
    let cfg = match config(&cli, default_device) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringgate-client: {e}");
            return ExitCode::from(2);
        }
    };
    let mut client = match Client::connect(cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringgate-client: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.cmd {
        Cmd::Send { to, group, text } => {
            let target = match (to, group) {
                (Some(u), _) => Target::User(u),
                (None, Some(g)) => Target::Group(g),
                (None, None) => unreachable!("clap requires --to or --group"),
            };
            let r = client.send(target, text.as_bytes()).await;
            let code = match r {
                Ok(ack) if ack.status == 0 => {
                    println!("msg_id={}", ack.msg_id);
                    ExitCode::SUCCESS
                }
                Ok(ack) => {
                    println!("status={} ({})", ack.status, sendack_meaning(ack.status));
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("ringgate-client: {e}");
                    ExitCode::from(2)
                }
            };
            client.close().await;
            code
        }
        Cmd::Listen { count } => {
            let mut n = 0u64;
            if count == Some(0) {
                client.close().await;
                return ExitCode::SUCCESS;
            }
            while let Some(m) = client.recv().await {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}\t{}\t{}", m.seq, m.from, String::from_utf8_lossy(&m.payload));
                let _ = out.flush();
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    client.close().await;
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("ringgate-client: {}", client.end_reason().unwrap_or(Error::Closed));
            ExitCode::FAILURE
        }
        Cmd::Chat { to } => chat(client, to).await,
    }
}

async fn chat(mut client: Client, to: String) -> ExitCode {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.is_empty() => {}
                Ok(Some(l)) => {
                    // Sends resolve in the background; failures are reported.
                    let fut = client.send(Target::User(to.clone()), l.into_bytes());
                    tokio::spawn(async move {
                        match fut.await {
                            Ok(a) if a.status == 0 => {}
                            Ok(a) => eprintln!("ringgate-client: not sent: status={} ({})", a.status, sendack_meaning(a.status)),
                            Err(e) => eprintln!("ringgate-client: not sent: {e}"),
                        }
                    });
                }
                Ok(None) | Err(_) => {
                    // Give queued sends a moment to be acknowledged.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    client.close().await;
                    return ExitCode::SUCCESS;
                }
            },
            m = client.recv() => match m {
                Some(m) => println!("{}\t{}\t{}", m.seq, m.from, String::from_utf8_lossy(&m.payload)),
                None => {
                    eprintln!("ringgate-client: {}", client.end_reason().unwrap_or(Error::Closed));
                    return ExitCode::FAILURE;
                }
            },
        }
    }
}
