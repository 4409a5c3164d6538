//! The fleet's decisions without I/O: what a SEND does after its claim, what the intent sweep does with a stale group send, which mirrors the heartbeat repairs.
//!
//! The engine thread (`engine.rs`) runs these between its Redis calls; the
//! seeded simulation (`sim.rs`) runs the same functions between the calls
//! of its fake engine, so the rules it checks over many seeds are the ones
//! the nodes follow, not a copy of them.

use std::sync::Arc;

use super::Stored;
use crate::store::NewMessage;

/// A dedup record of the engine (`scripts::CLAIM`): `p|d msg_id ts node len(targets) targets payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Every copy was appended (`d`); else pending (`p`).
    pub done: bool,
    pub msg_id: u64,
    pub ts: u64,
    pub targets: Vec<String>,
    /// Group sends only (empty otherwise and once done).
    pub payload: Vec<u8>,
}

impl Claim {
    pub fn parse(rec: &[u8]) -> Option<Claim> {
        let mut p = Cursor(rec);
        let status = p.word()?;
        let msg_id = p.num()?;
        // `d msg_id ts` (`done_record`) has nothing after the timestamp.
        let Some(ts) = p.num() else {
            let ts = std::str::from_utf8(p.rest()).ok()?.parse().ok()?;
            return (status == b"d").then_some(Claim { done: true, msg_id, ts, targets: Vec::new(), payload: Vec::new() });
        };
        let _node = p.word()?;
        let n = p.num()? as usize;
        let t = p.take(n)?;
        let targets = std::str::from_utf8(t).ok()?.split('\n').filter(|s| !s.is_empty()).map(String::from).collect();
        Some(Claim { done: status == b"d", msg_id, ts, targets, payload: p.rest().to_vec() })
    }
}

/// The record that marks a claimed send done (`scripts::DONE`, and what
/// `scripts::send` writes): targets and payload are no longer needed, and
/// the node is left out (about 40 bytes per remembered id: a device's
/// bucket stays in the engine's compact encoding).
pub fn done_record(msg_id: u64, ts: u64) -> String {
    format!("d {msg_id} {ts}")
}

/// What makes an append idempotent in an inbox (`rg:{u}:i`): the SEND
/// itself, `(sender, device, client_msg_id)`, which every attempt, retry
/// and survivor's completion of it shares, and which no other SEND has.
/// Not the msg_id: before msg_ids carried a leased node index
/// (`fleet_msg_id`) two nodes could mint the same one, and an append keyed
/// by it took a second message for a retry of the first and dropped it
/// while confirming it; the SEND is the identity that needs no such lease.
pub fn append_key(sender: &str, device: &str, client_msg_id: impl std::fmt::Display) -> String {
    format!("{sender}\n{device}\n{client_msg_id}")
}

/// The append key of an admin publish (never retried on another node:
/// its idempotency key is the admin API's).
pub fn publish_key(node: &str, msg_id: u64) -> String {
    format!("\0{node}\n{msg_id}")
}

/// A pending group send in `rg:{intents}:z`.
pub fn intent(sender: &str, device: &str, client_msg_id: u64) -> String {
    format!("{sender}\n{device}\n{client_msg_id}")
}

/// `(sender, device, client_msg_id)` of an intent; None when unreadable (forget it).
pub fn parse_intent(intent: &str) -> Option<(&str, &str, &str)> {
    let mut it = intent.splitn(3, '\n');
    Some((it.next()?, it.next()?, it.next()?))
}

/// What a SEND does once the engine answered its claim.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterClaim {
    /// Already stored (a retry of a done send): the original SENDACK,
    /// nothing appended again.
    Answer(Stored),
    /// Append `msg_id` to every target (idempotent by msg_id in the
    /// engine), then mark the claim done. `fresh`: this attempt made the
    /// claim; else it finishes one a dead or slow attempt left pending,
    /// with that attempt's msg_id, timestamp and recipients. (A group
    /// send's durable intent is written before its claim: see `engine.rs`.)
    Append { msg_id: u64, ts: u64, targets: Vec<Arc<str>>, fresh: bool },
}

/// The rule of PROTOCOL.md 4 across nodes: a claim found done answers the
/// original; a pending one is finished under its own msg_id (never the
/// retry's), so every recipient holds the message once.
pub fn after_claim(existing: Option<&[u8]>, msg: &NewMessage, targets: Vec<Arc<str>>) -> Option<AfterClaim> {
    let Some(rec) = existing else {
        return Some(AfterClaim::Append { msg_id: msg.msg_id, ts: msg.timestamp_ms, targets, fresh: true });
    };
    let r = Claim::parse(rec)?;
    if r.done {
        return Some(AfterClaim::Answer(Stored { refused: None, msg_id: r.msg_id, timestamp_ms: r.ts, seqs: Vec::new() }));
    }
    Some(AfterClaim::Append { msg_id: r.msg_id, ts: r.ts, targets: r.targets.into_iter().map(Arc::from).collect(), fresh: false })
}

/// Recipients one SEND script appends to at most; a larger group takes
/// the multi-step path (claim with intent, appends, done), so one script
/// never holds the engine for long.
pub const ONE_CALL_MAX_TARGETS: usize = 64;

/// Whether a client SEND is one engine call (`scripts::send`: claim,
/// appends and done atomically) rather than claim, appends, done: only on a
/// single engine (on a Cluster the sender's dedup keys and the recipients'
/// inboxes are in different slots) and for at most
/// `ONE_CALL_MAX_TARGETS` recipients. Either way a retry finds the same
/// records: a done one answers, a pending one (left by a multi-step
/// attempt) is finished by `after_claim`'s rule.
pub fn one_call(single_engine: bool, targets: usize) -> bool {
    single_engine && targets <= ONE_CALL_MAX_TARGETS
}

/// What the intent sweep does with a stale intent, given its dedup record.
#[derive(Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Done, or the record is gone (evicted) or unreadable: nothing to complete.
    Forget,
    /// Pending: append to every member, mark done, then forget the intent.
    Complete(Claim),
}

pub fn sweep(rec: Option<&[u8]>) -> Sweep {
    match rec.and_then(Claim::parse) {
        Some(c) if !c.done => Sweep::Complete(c),
        _ => Sweep::Forget,
    }
}

/// The heartbeat's gap check: the mirrored users whose engine head is
/// above the mirror's contiguous head, with the seq to fetch after.
/// `heads[i]` is the engine's head of `users[i]` (None: unknown, skipped).
pub fn repairs(users: Vec<(Arc<str>, u64)>, heads: &[Option<u64>]) -> Vec<(Arc<str>, u64)> {
    users.into_iter().zip(heads).filter(|((_, have), head)| head.is_some_and(|h| h > *have)).map(|(u, _)| u).collect()
}

/// Reads space-separated words and length-prefixed strings (engine records).
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    pub fn word(&mut self) -> Option<&'a [u8]> {
        let i = self.0.iter().position(|b| *b == b' ')?;
        let w = &self.0[..i];
        self.0 = &self.0[i + 1..];
        Some(w)
    }
    pub fn num(&mut self) -> Option<u64> {
        std::str::from_utf8(self.word()?).ok()?.parse().ok()
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let w = &self.0[..n];
        self.0 = &self.0[n..];
        Some(w)
    }
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> NewMessage {
        NewMessage {
            msg_id: 10,
            timestamp_ms: 20,
            from: Arc::from("a"),
            device: Arc::from("d"),
            client_msg_id: 7,
            group: None,
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_claim_decides_answer_finish_or_fresh() {
        let t = vec![Arc::from("b")];
        assert_eq!(after_claim(None, &msg(), t.clone()), Some(AfterClaim::Append { msg_id: 10, ts: 20, targets: t.clone(), fresh: true }));
        let done = done_record(9, 8);
        assert_eq!(Claim::parse(b"d 9 8 n1 0 ").map(|c| (c.done, c.msg_id, c.ts)), Some((true, 9, 8)), "the older, longer form");
        assert_eq!(Claim::parse(b"p 9 8"), None, "a pending record has its targets");
        assert_eq!(
            after_claim(Some(done.as_bytes()), &msg(), t.clone()),
            Some(AfterClaim::Answer(Stored { refused: None, msg_id: 9, timestamp_ms: 8, seqs: Vec::new() }))
        );
        // Pending: the claimed msg_id and recipients, not the retry's.
        let p = after_claim(Some(b"p 9 8 n1 7 bob\ncarpay"), &msg(), t).unwrap();
        assert_eq!(p, AfterClaim::Append { msg_id: 9, ts: 8, targets: vec![Arc::from("bob"), Arc::from("car")], fresh: false });
        assert_eq!(after_claim(Some(b"garbage"), &msg(), Vec::new()), None);
        assert_eq!(sweep(Some(done.as_bytes())), Sweep::Forget);
        assert_eq!(sweep(None), Sweep::Forget);
        assert!(matches!(sweep(Some(b"p 9 8 n1 3 bobhi")), Sweep::Complete(c) if c.payload == b"hi"));
        assert_eq!(parse_intent(&intent("a", "d", 7)), Some(("a", "d", "7")));
        let r = repairs(vec![(Arc::from("x"), 3), (Arc::from("y"), 5), (Arc::from("z"), 1)], &[Some(4), Some(5), None]);
        assert_eq!(r, vec![(Arc::from("x"), 3)]);
    }
}
