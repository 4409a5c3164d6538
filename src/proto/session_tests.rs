//! Deterministic virtual-time tests of every session rule (PROTOCOL.md 1-9) that lives in the session.
