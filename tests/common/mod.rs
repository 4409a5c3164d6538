//! Harness shared by the integration tests: an independent ringgate client
//! written only from `shared/PROTOCOL.md` (its own frame codec, its own JWT
//! minting, its own TLS setup) and a [`Server`] that runs the real binary on
//! `127.0.0.1:0` in a temporary directory.
//!
//! Nothing here uses the crate under test: if the server and this client
//! disagree about a byte, the test fails instead of both sides sharing the
//! same mistake.
//!
//! Waiting policy: whatever the server *must* do is awaited for up to
//! [`WAIT`] (the machine is small and shared, so this is generous); whatever
//! it *must not* do is watched for [`QUIET`]. No test asserts that something
//! was fast.
//!
//! This file holds the protocol's numbers, token minting and the browser
//! lookup; `frames` is the client's own codec, `server` runs the binary,
//! `client` is the TLS/TCP client that speaks to it.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

mod client;
mod frames;
mod server;

pub use client::*;
pub use frames::*;
pub use server::*;

/// The JWT secret every test server is configured with.
pub const SECRET: &str = "test-secret-0123456789abcdef";
/// The ALPN id of protocol v1.
pub const ALPN: &[u8] = b"ringgate/1";
/// Upper bound for anything the server must do (deliver, answer, close).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something the server must not do.
pub const QUIET: Duration = Duration::from_millis(800);
/// How long to wait for the server's `listening` line.
pub const STARTUP: Duration = Duration::from_secs(20);

/// PUSH flags bit 0.
pub const REDELIVERY: u8 = 1;
/// SEND target kinds.
pub const TO_USER: u8 = 1;
pub const TO_GROUP: u8 = 2;

/// Frame type bytes.
pub mod ty {
    pub const CONNECT: u8 = 0x01;
    pub const CONNACK: u8 = 0x02;
    pub const SEND: u8 = 0x03;
    pub const SENDACK: u8 = 0x04;
    pub const PUSH: u8 = 0x05;
    pub const PUSHACK: u8 = 0x06;
    pub const PING: u8 = 0x07;
    pub const PONG: u8 = 0x08;
    pub const DISCONNECT: u8 = 0x09;
}

/// CONNACK status values.
pub mod connack {
    pub const OK: u8 = 0;
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_TOKEN: u8 = 2;
    pub const BUSY: u8 = 3;
    pub const MALFORMED: u8 = 4;
}

/// SENDACK status values.
pub mod sendack {
    pub const STORED: u8 = 0;
    pub const NO_SUCH_TARGET: u8 = 1;
    pub const FORBIDDEN: u8 = 2;
    pub const RATE_LIMITED: u8 = 3;
    pub const PAYLOAD_TOO_LARGE: u8 = 4;
    pub const BUSY: u8 = 5;
}

/// DISCONNECT reasons.
pub mod reason {
    pub const NORMAL: u8 = 0;
    pub const PROTOCOL_ERROR: u8 = 1;
    pub const FRAME_TOO_LARGE: u8 = 2;
    pub const TOKEN_EXPIRED: u8 = 3;
    pub const ACK_TIMEOUT: u8 = 4;
    pub const IDLE_TIMEOUT: u8 = 5;
    pub const REPLACED: u8 = 6;
    pub const SHUTDOWN: u8 = 7;
    pub const SLOW_CONSUMER: u8 = 8;
    pub const HANDSHAKE_TIMEOUT: u8 = 9;
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

pub fn unix_now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// An HS256 JWT for `user` signed with `secret`, expiring `ttl_s` from now
/// (negative: already expired).
pub fn token_with(user: &str, secret: &str, ttl_s: i64) -> String {
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT"}).to_string();
    let claims = serde_json::json!({"sub": user, "exp": unix_now_s() + ttl_s}).to_string();
    let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac accepts any key length");
    mac.update(signing_input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{signing_input}.{}", b64(&sig))
}

/// A valid token for `user` (one hour).
pub fn token(user: &str) -> String {
    token_with(user, SECRET, 3600)
}

/// An unsigned token claiming `alg: none`, which must never be accepted.
pub fn token_alg_none(user: &str) -> String {
    let header = serde_json::json!({"alg": "none", "typ": "JWT"}).to_string();
    let claims = serde_json::json!({"sub": user, "exp": unix_now_s() + 3600}).to_string();
    format!("{}.{}.", b64(header.as_bytes()), b64(claims.as_bytes()))
}

// ---------------------------------------------------------------------------
// A real browser (the JS client tests, the plan report)
// ---------------------------------------------------------------------------

/// Where Chromium is: `RINGGATE_CHROMIUM`, else the usual names on PATH.
pub fn chromium_path() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("RINGGATE_CHROMIUM") {
        return Some(std::path::PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The browser, or `None` (with a message) when it is absent and not required.
pub fn chromium_or_skip(test: &str) -> Option<std::path::PathBuf> {
    match chromium_path() {
        Some(p) => Some(p),
        None if std::env::var("RINGGATE_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") => {
            panic!("RINGGATE_REQUIRE_CHROMIUM=1 but no chromium on PATH (nor RINGGATE_CHROMIUM)")
        }
        None => {
            eprintln!("{test}: no chromium installed (apt-get install chromium): real-browser test SKIPPED");
            None
        }
    }
}

