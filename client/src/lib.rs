//! ringgate-client: the Rust SDK for ringgate — route fetch, ladder connect, reliable send and receive over protocol v1.
//!
//! Map of the crate:
//!
//! - [`route`]: `GET /v1/route` (HttpDNS-style), its Ed25519 signature
//!   checked against a pinned key, and the cache that ages it.
//! - [`ladder`]: staggered connect over the route's endpoints; first
//!   CONNACK 0 wins, the losers are closed and reported.
//! - [`client`]: the connected [`Client`]: reconnect with backoff + jitter
//!   keeping `last_seq`, SEND retried with the same `client_msg_id` until
//!   SENDACKed, PUSH dedup by seq and cumulative PUSHACK, heartbeat, a token
//!   hook called once per connection.
//! - `task` (private): the background task that owns the connection.
//! - [`tls`]: trust (CA file, pinned certificate, or `--insecure`) and SNI.
//! - [`frame`]: the protocol v1 codec, written from the contract.
//!
//! # Example
//!
//! Start a server (`ringgate serve`), mint two tokens (`ringgate token
//! --user alice`, `--user bob`), then:
//!
//! ```no_run
//! use ringgate_client::{Client, ClientConfig, Target, TokenSource, Trust};
//!
//! # async fn demo(alice_token: String) -> Result<(), ringgate_client::Error> {
//! let cfg = ClientConfig::new("laptop", TokenSource::Static(alice_token))
//!     // The development certificate the server wrote on first start.
//!     .trust(Trust::CaFile("ringgate-data/dev-cert.pem".into()))
//!     // With a route service, add `.route(url, key)`; endpoints are the fallback.
//!     .endpoint("127.0.0.1:7443")?;
//! let mut client = Client::connect(cfg).await?;
//! let ack = client.send(Target::User("bob".into()), b"hello").await?;
//! assert_eq!(ack.status, 0);
//! println!("stored as msg_id {}", ack.msg_id);
//! while let Some(msg) = client.recv().await {
//!     println!("{} from {}: {}", msg.seq, msg.from, String::from_utf8_lossy(&msg.payload));
//! }
//! # Ok(()) }
//! ```
//!
//! The same flow as a program is `examples/chat.rs`; the command-line client
//! `ringgate-client` (this package's binary) is built on exactly this API.

pub mod client;
pub mod demo;
pub mod frame;
pub mod ladder;
pub mod route;
mod task;
pub mod tls;
pub mod token_check;

pub use client::{Client, ClientConfig, ClientEvent, Target, TokenSource};
pub use frame::{ConnAck, Push, SendAck};
pub use route::{BackoffPolicy, Endpoint, LadderPolicy, Route};
pub use tls::Trust;

/// What went wrong, and whose doing it was.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Ours: a setting is missing or malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// No endpoint to try (no route, no fallback, or none with a supported transport).
    #[error("no endpoints to connect to (give --route or --endpoint)")]
    NoEndpoints,
    /// Every endpoint of the ladder failed; the last failure is given.
    #[error("every endpoint failed; last: {0}")]
    AllEndpointsFailed(String),
    /// The route service could not be reached or answered non-200.
    #[error("route fetch: {0}")]
    RouteFetch(String),
    /// The route answer is not signed by the pinned key: a hijack, a stale
    /// pin, or the wrong service. Never used.
    #[error("route signature rejected: {0}")]
    RouteSignature(String),
    /// The route answer is signed but does not parse.
    #[error("route format: {0}")]
    RouteFormat(String),
    /// CONNACK 2: the server refused the token (expired, wrong secret).
    #[error("the server refused the token (CONNACK 2): expired, or minted with another secret")]
    BadToken,
    /// CONNACK 1.
    #[error("the server does not speak protocol version 1 (CONNACK 1)")]
    UnsupportedVersion,
    /// CONNACK 4: our CONNECT was malformed (device id length, token size).
    #[error("the server found our CONNECT malformed (CONNACK 4): check the device id (1..64 bytes) and token size")]
    MalformedConnect,
    /// The token hook failed.
    #[error("token hook: {0}")]
    Token(String),
    /// The client was closed (or dropped) before the operation finished.
    #[error("client closed")]
    Closed,
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Whether reconnecting cannot help. A refused token can, when a hook
    /// may produce a fresh one.
    pub fn is_fatal(&self, has_token_hook: bool) -> bool {
        match self {
            Error::BadToken => !has_token_hook,
            Error::UnsupportedVersion | Error::MalformedConnect | Error::Config(_) | Error::Closed => true,
            _ => false,
        }
    }
}
