//! Typed errors and wire codes of the protocol layer: who misbehaved, and which DISCONNECT reason that earns.

use std::fmt;

/// DISCONNECT reasons (PROTOCOL.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DisconnectReason {
    Normal = 0,
    ProtocolError = 1,
    FrameTooLarge = 2,
    TokenExpired = 3,
    AckTimeout = 4,
    IdleTimeout = 5,
    Replaced = 6,
    ServerShutdown = 7,
    SlowConsumer = 8,
    HandshakeTimeout = 9,
}

impl DisconnectReason {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether the peer caused it (as opposed to the server's own decision).
    pub fn is_peer_fault(self) -> bool {
        matches!(
            self,
            DisconnectReason::ProtocolError
                | DisconnectReason::FrameTooLarge
                | DisconnectReason::TokenExpired
                | DisconnectReason::AckTimeout
                | DisconnectReason::IdleTimeout
                | DisconnectReason::SlowConsumer
                | DisconnectReason::HandshakeTimeout
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            DisconnectReason::Normal => "normal",
            DisconnectReason::ProtocolError => "protocol error",
            DisconnectReason::FrameTooLarge => "frame too large",
            DisconnectReason::TokenExpired => "token expired",
            DisconnectReason::AckTimeout => "ack timeout",
            DisconnectReason::IdleTimeout => "idle timeout",
            DisconnectReason::Replaced => "replaced by a newer connection",
            DisconnectReason::ServerShutdown => "server shutdown",
            DisconnectReason::SlowConsumer => "slow consumer",
            DisconnectReason::HandshakeTimeout => "handshake timeout",
        }
    }
}

/// CONNACK status codes.
pub mod connack {
    pub const OK: u8 = 0;
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_TOKEN: u8 = 2;
    pub const SERVER_BUSY: u8 = 3;
    pub const MALFORMED: u8 = 4;
}

/// SENDACK status codes.
pub mod sendack {
    pub const STORED: u8 = 0;
    pub const NO_SUCH_TARGET: u8 = 1;
    pub const FORBIDDEN: u8 = 2;
    pub const RATE_LIMITED: u8 = 3;
    pub const TOO_LARGE: u8 = 4;
    pub const RETRY: u8 = 5;
}

/// A frame the peer sent that cannot be decoded. Always the peer's fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Length prefix 0.
    Empty,
    /// Length prefix above the server's `max_frame`.
    TooLarge { len: u32, max: u32 },
    UnknownType(u8),
    /// A fixed field or `str` runs past the end of the frame.
    Truncated { frame: &'static str },
    /// A `str` field is not UTF-8.
    BadUtf8,
    /// Bytes after the last field of a frame without `rest`.
    TrailingBytes { frame: &'static str, extra: usize },
}

impl FrameError {
    pub fn disconnect_reason(&self) -> u8 {
        match self {
            FrameError::TooLarge { .. } => DisconnectReason::FrameTooLarge.code(),
            _ => DisconnectReason::ProtocolError.code(),
        }
    }

    pub fn reason(&self) -> DisconnectReason {
        match self {
            FrameError::TooLarge { .. } => DisconnectReason::FrameTooLarge,
            _ => DisconnectReason::ProtocolError,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty => write!(f, "frame length 0"),
            FrameError::TooLarge { len, max } => write!(f, "frame length {len} exceeds max_frame {max}"),
            FrameError::UnknownType(t) => write!(f, "unknown frame type 0x{t:02x}"),
            FrameError::Truncated { frame } => write!(f, "truncated {frame} frame"),
            FrameError::BadUtf8 => write!(f, "string field is not UTF-8"),
            FrameError::TrailingBytes { frame, extra } => {
                write!(f, "{extra} trailing bytes after {frame} frame")
            }
        }
    }
}

impl std::error::Error for FrameError {}
