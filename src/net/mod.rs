//! Sockets as the kernel sees them: listener setup (SO_REUSEPORT groups, backlog, defer-accept) and per-connection options.

pub mod listener;
pub mod sockopt;
