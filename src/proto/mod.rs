//! Sans-IO protocol core: frame codec, per-connection session state machine and the per-core ACK timer wheel.
//!
//! Nothing in here touches a socket, a runtime or a clock: bytes and `now`
//! (milliseconds) go in, frames, deadlines and events come out. The runtime
//! glue in `crate::runtime` only moves bytes and calls into this module, so
//! every protocol rule is tested here deterministically with virtual time.

pub mod ack_wheel;
pub mod error;
pub mod frame;
pub mod session;
#[cfg(test)]
mod session_tests;

pub use error::{DisconnectReason, FrameError};
pub use frame::Frame;
