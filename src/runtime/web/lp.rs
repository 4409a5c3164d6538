//! Long-poll session state (WEB.md "Long-poll"): the one open poll, when it ends, and how long a closed session keeps its sid.
//!
//! A long-poll session is a virtual connection: it has no socket, and its
//! `out` buffer is the queue of server frames polls drain (bounded by the
//! session's inflight window and `limits.output_high_water_bytes`). This
//! struct is the rest: which HTTP connection holds the open poll, if any.

use super::Sid;
use crate::runtime::core::ConnKey;

#[derive(Debug)]
pub struct LpState {
    pub sid: Sid,
    /// The HTTP connection holding the open poll, and when it is answered `204`.
    pub poll: Option<(ConnKey, u64)>,
    /// Set when the session closed: the sid is forgotten at this time if no
    /// poll came to take the final frames.
    pub closed_expiry_ms: u64,
    /// When the queue went above the output high-water mark; 0 = below.
    pub over_hw_since_ms: u64,
    /// The slow-consumer deadline while over the high-water mark.
    pub slow_deadline_ms: u64,
    /// The HTTP connection the session's frames were last handed to. While
    /// that answer is not written yet, a newer poll is not answered ahead
    /// of it (see `Core::lp_poll`).
    pub answered: Option<ConnKey>,
}

impl LpState {
    pub fn new(sid: Sid) -> Self {
        LpState { sid, poll: None, closed_expiry_ms: 0, over_hw_since_ms: 0, slow_deadline_ms: 0, answered: None }
    }

    pub fn deadline(&self) -> Option<u64> {
        [self.poll.map(|p| p.1), Some(self.closed_expiry_ms), Some(self.slow_deadline_ms)]
            .into_iter()
            .flatten()
            .filter(|d| *d != 0)
            .min()
    }
}
