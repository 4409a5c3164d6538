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
    /// Serve a browser chat page (the browser client, clients/js) that talks to the gateway as the token's user;
    /// prints the web.allowed_origins line the gateway needs and how to trust its certificate.
    Demo {
        /// Where to serve the page (its origin is http://ADDR).
        #[arg(long, default_value = "127.0.0.1:8088", value_name = "ADDR")]
        listen: String,
        /// The gateway's base URL as the browser reaches it.
        #[arg(long, default_value = "https://localhost:7443", value_name = "URL")]
        gateway: String,
        /// Recipient filled in on the page.
        #[arg(long, default_value = "alice")]
        to: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Demo { listen, gateway, to } = &cli.cmd {
        return demo(&cli, listen, gateway, to);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringgate-client: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

/// The token of `--token` or `--token-file`.
fn token_of(cli: &Cli) -> Result<String, Error> {
    match (&cli.token, &cli.token_file) {
        (Some(t), _) => Ok(t.trim().to_string()),
        (None, Some(f)) => Ok(std::fs::read_to_string(f)
            .map_err(|e| Error::Config(format!("--token-file {}: {e}", f.display())))?
            .trim()
            .to_string()),
        (None, None) => Err(Error::Config("give --token-file F or --token T (mint one with `ringgate token --user NAME > F`)".into())),
    }
}

fn demo(cli: &Cli, listen: &str, gateway: &str, to: &str) -> ExitCode {
    let token = match token_of(cli) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ringgate-client: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match std::net::TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ringgate-client: cannot serve the demo page on {listen}: {e} (choose another with --listen ADDR)");
            return ExitCode::from(2);
        }
    };
    let origin = listener.local_addr().map(ringgate_client::demo::origin_of).unwrap_or_else(|_| format!("http://{listen}"));
    let ca = cli.ca.as_ref().map(|p| p.display().to_string()).or_else(|| Some("ringgate-data/dev-cert.pem".into()));
    print!("{}", ringgate_client::demo::instructions(&origin, gateway.trim_end_matches('/'), ca.as_deref()));
    let _ = std::io::stdout().flush();
    let d = ringgate_client::demo::Demo { gateway: gateway.trim_end_matches('/').to_string(), token, to: to.to_string() };
    match ringgate_client::demo::serve(listener, &d) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringgate-client: demo server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(cli: &Cli, default_device: &str) -> Result<(ClientConfig, String), Error> {
    let token = token_of(cli)?;
    let device = cli.device.clone().unwrap_or_else(|| default_device.to_string());
    let mut cfg = ClientConfig::new(device, TokenSource::Static(token.clone()));
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
    // A token that is not a JWT at all would only earn a CONNACK 2 that
    // cannot say so: tell it before dialling.
    if let ringgate_client::token_check::TokenShape::Malformed(why) = ringgate_client::token_check::inspect(&token, unix_now()) {
        return Err(Error::Config(format!("the token is malformed ({why}); mint one with `ringgate token --user NAME`")));
    }
    // `chat` is interactive: its user must see the link come and go (a
    // kick, a gateway restart) without -v; -v adds the ladder's detail.
    let link_lines = matches!(cli.cmd, Cmd::Chat { .. });
    if cli.v || link_lines {
        let (t0, all) = (Instant::now(), cli.v);
        cfg = cfg.on_event(move |e| {
            if all || matches!(e, ClientEvent::Connected { .. } | ClientEvent::Disconnected { .. } | ClientEvent::Reconnecting { .. }) {
                verbose(t0, e)
            }
        });
    }
    Ok((cfg, token))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One line for a failure to connect; a refused token says why, read from the token itself.
fn connect_failure(e: &Error, token: &str) -> String {
    match e {
        Error::BadToken => format!("CONNACK 2: {}", ringgate_client::token_check::explain_refusal(token, unix_now())),
        e => e.to_string(),
    }
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

/// SENDACK status in words. 2 to a user can only be a mute (an operator's
/// `PUT /v1/users/NAME/mute`); to a group it may also be "not a member".
fn sendack_meaning(status: u8, group: bool) -> &'static str {
    match status {
        0 => "stored",
        1 => "no such target",
        2 if group => "forbidden: not a member of the group, or muted by an operator",
        2 => "muted: an operator muted this user (PUT /v1/users/NAME/mute); sends are refused until the mute ends",
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
        Cmd::Demo { .. } => unreachable!("demo runs before the runtime"),
    };
    let (cfg, token) = match config(&cli, default_device) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringgate-client: {e}");
            return ExitCode::from(2);
        }
    };
    let mut client = match Client::connect(cfg).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringgate-client: {}", connect_failure(&e, &token));
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
            let to_group = matches!(target, Target::Group(_));
            let r = client.send(target, text.as_bytes()).await;
            let code = match r {
                Ok(ack) if ack.status == 0 => {
                    println!("msg_id={}", ack.msg_id);
                    ExitCode::SUCCESS
                }
                Ok(ack) => {
                    println!("status={} ({})", ack.status, sendack_meaning(ack.status, to_group));
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
            eprintln!("ringgate-client: {}", connect_failure(&client.end_reason().unwrap_or(Error::Closed), &token));
            ExitCode::FAILURE
        }
        Cmd::Chat { to } => chat(client, to, &token).await,
        Cmd::Demo { .. } => unreachable!("demo runs before the runtime"),
    }
}

async fn chat(mut client: Client, to: String, token: &str) -> ExitCode {
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
                            Ok(a) => eprintln!("ringgate-client: not sent: status={} ({})", a.status, sendack_meaning(a.status, false)),
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
                    eprintln!("ringgate-client: {}", connect_failure(&client.end_reason().unwrap_or(Error::Closed), token));
                    return ExitCode::FAILURE;
                }
            },
        }
    }
}
