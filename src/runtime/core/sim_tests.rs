//! Deterministic virtual-time tests of the rules that live in `Core`: cross-core routing, dedup across reconnects, SENDACK after the sync, migration home, replacement, retransmission, idle close.
//!
//! Every test drives real cores through `sim::Sim` (simulated pipes, the
//! real mesh, a virtual clock, the memory store or the durable log on the
//! simulated disk). Nothing sleeps and nothing depends on scheduling: the
//! test decides which core takes its mailbox when, and when an fsync
//! completes, so each rule is checked at the exact step where it applies.

use bytes::Bytes;

use super::sim::{Sim, StoreKind};
use super::TICK_MS;
use crate::config::Config;
use crate::proto::error::sendack;
use crate::proto::frame::{Frame, Push, SendAck, Utf8Bytes, FLAG_REDELIVERY};
use crate::proto::session::CLOSE_LINGER_MS;
use crate::proto::DisconnectReason;

fn send(cmid: u64, to: &str, payload: &str) -> Frame {
    Frame::Send(crate::proto::frame::Send {
        client_msg_id: cmid,
        target_kind: 1,
        target: Utf8Bytes::from(to),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

fn sendacks(frames: &[Frame]) -> Vec<SendAck> {
    frames.iter().filter_map(|f| if let Frame::SendAck(a) = f { Some(*a) } else { None }).collect()
}

fn pushes(frames: &[Frame]) -> Vec<Push> {
    frames.iter().filter_map(|f| if let Frame::Push(p) = f { Some(p.clone()) } else { None }).collect()
}

fn disconnects(frames: &[Frame]) -> Vec<u8> {
    frames.iter().filter_map(|f| if let Frame::Disconnect { reason, .. } = f { Some(*reason) } else { None }).collect()
}

/// Advances one tick at a time until `c` receives something or `max_ms`
/// passed; returns the virtual ms that passed and the frames.
fn wait_for(sim: &mut Sim, c: super::sim::Client, max_ms: u64) -> (u64, Vec<Frame>) {
    let mut waited = 0;
    while waited < max_ms {
        sim.advance(TICK_MS);
        waited += TICK_MS;
        let f = sim.frames(c);
        if !f.is_empty() {
            return (waited, f);
        }
    }
    (waited, Vec::new())
}

#[test]
fn send_to_a_user_homed_elsewhere_goes_through_their_core_and_sendack_waits_for_appended() {
    let mut sim = Sim::new(2, StoreKind::Memory, Config::default(), &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (a, _, _) = sim.login(0, &alice, "phone");
    let (b, _, _) = sim.login(1, &bob, "phone");

    sim.write(a, &send(1, &bob, "one"));
    sim.write(a, &send(2, &bob, "two"));
    assert!(sim.step_io(), "alice's connection had bytes to read");
    assert!(sim.frames(a).is_empty(), "no SENDACK before bob's home core appended");
    assert!(sim.frames(b).is_empty(), "nothing reaches bob before his core takes its mailbox");
    assert_eq!(sim.mailbox_len(1), 2, "one Append per SEND, posted to bob's home core");
    assert_eq!(sim.mailbox_len(0), 0);

    // Bob's core takes the first Append only: push, then Appended back.
    assert!(sim.deliver_one(1));
    let p1 = pushes(&sim.frames(b));
    assert_eq!(p1.len(), 1);
    assert_eq!((p1[0].seq, &p1[0].payload[..], p1[0].from.as_str()), (1, &b"one"[..], alice.as_str()));
    assert!(sim.frames(a).is_empty(), "SENDACK waits for the Appended answer");
    assert_eq!(sim.mailbox_len(0), 1, "Appended goes back to the sender's core");

    assert!(sim.deliver_one(1));
    let p2 = pushes(&sim.frames(b));
    assert_eq!(p2.len(), 1);
    assert_eq!((p2[0].seq, &p2[0].payload[..]), (2, &b"two"[..]), "mailbox order is inbox order");

    // Alice's core takes both answers: the SENDACKs, in order, name the
    // msg_ids bob was pushed.
    assert_eq!(sim.deliver(0), 2);
    let acks = sendacks(&sim.frames(a));
    assert_eq!(acks.len(), 2);
    assert_eq!((acks[0].client_msg_id, acks[0].status, acks[0].msg_id), (1, sendack::STORED, p1[0].msg_id));
    assert_eq!((acks[1].client_msg_id, acks[1].status, acks[1].msg_id), (2, sendack::STORED, p2[0].msg_id));
    assert_ne!(p1[0].msg_id, p2[0].msg_id);
    assert_eq!(p1[0].msg_id & 0xff, 0, "the msg_id is minted on the sender's core (low byte = core)");
}

#[test]
fn a_send_retried_after_a_reconnect_gets_its_first_msg_id_and_is_stored_once() {
    let mut sim = Sim::new(2, StoreKind::Memory, Config::default(), &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    // Alice lands on the other core each time and moves home.
    let (a1, _, _) = sim.login(1, &alice, "phone");
    sim.write(a1, &send(7, &bob, "hello"));
    sim.run();
    let first = sendacks(&sim.frames(a1));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].status, sendack::STORED);

    // The SENDACK was lost with the connection; the device reconnects and retries.
    sim.hang_up(a1);
    sim.run();
    assert!(sim.closed(a1));
    let (a2, _, _) = sim.login(1, &alice, "phone");
    sim.write(a2, &send(7, &bob, "hello"));
    sim.run();
    let retry = sendacks(&sim.frames(a2));
    assert_eq!(retry, first, "same client_msg_id from the same device: the original answer");

    // Another device of the same user has its own ids.
    let (t, _, _) = sim.login(0, &alice, "tablet");
    sim.write(t, &send(7, &bob, "from the tablet"));
    sim.run();
    let other = sendacks(&sim.frames(t));
    assert_eq!(other.len(), 1);
    assert_ne!(other[0].msg_id, first[0].msg_id);

    let (_, ack, frames) = sim.login(1, &bob, "phone");
    assert_eq!(ack.head_seq, 2, "the retried SEND was stored once");
    let p = pushes(&frames);
    assert_eq!(p.iter().map(|p| p.msg_id).collect::<Vec<_>>(), vec![first[0].msg_id, other[0].msg_id]);
}

#[test]
fn a_send_retried_while_its_record_is_unsynced_is_answered_once_on_the_new_connection() {
    let mut sim = Sim::new(2, StoreKind::Durable, Config::default(), &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (a1, _, _) = sim.login(0, &alice, "phone");
    sim.write(a1, &send(9, &bob, "pending"));
    sim.run();
    assert!(sendacks(&sim.frames(a1)).is_empty(), "bob's record is not synced yet");
    sim.hang_up(a1);
    sim.run();

    let (a2, _, _) = sim.login(1, &alice, "phone");
    sim.write(a2, &send(9, &bob, "pending"));
    sim.run();
    assert!(sendacks(&sim.frames(a2)).is_empty(), "the original is still being stored: no answer yet, no second copy");
    assert_eq!(sim.cores[1].stats_line().1, 1, "the retry appended no second copy");

    assert!(sim.sync(1));
    sim.run();
    let acks = sendacks(&sim.frames(a2));
    assert_eq!(acks.len(), 1, "the SENDACK goes to the device's current connection, once");
    assert_eq!(acks[0].status, sendack::STORED);
    assert!(!sim.sync(1), "nothing more was written");

    let (_, ack, frames) = sim.login(1, &bob, "phone");
    assert_eq!(ack.head_seq, 1, "stored once");
    assert_eq!(pushes(&frames)[0].msg_id, acks[0].msg_id);
}

#[test]
fn sendack_0_and_the_push_wait_for_the_sync_of_the_record() {
    let mut sim = Sim::new(2, StoreKind::Durable, Config::default(), &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (a, _, _) = sim.login(0, &alice, "phone");
    let (b, _, _) = sim.login(1, &bob, "phone");

    sim.write(a, &send(1, &bob, "durable"));
    sim.run();
    sim.advance(1_000);
    assert!(sendacks(&sim.frames(a)).is_empty(), "no SENDACK before the fsync, however long it takes");
    assert!(pushes(&sim.frames(b)).is_empty(), "not visible to bob before it is durable");
    assert!(!sim.sync(0), "the sender's core wrote nothing");

    assert!(sim.sync(1), "bob's core queued the fsync of his record");
    assert!(sendacks(&sim.frames(a)).is_empty(), "the result is applied when bob's core takes it");
    sim.run();
    let p = pushes(&sim.frames(b));
    assert_eq!(p.len(), 1);
    let acks = sendacks(&sim.frames(a));
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].status, acks[0].msg_id), (sendack::STORED, p[0].msg_id));
}

#[test]
fn a_failed_sync_answers_sendack_5_and_pushes_nothing() {
    let mut sim = Sim::new(1, StoreKind::Durable, Config::default(), &[]);
    let (a, _, _) = sim.login(0, "alice", "phone");
    let (b, _, _) = sim.login(0, "bob", "phone");

    sim.disk.fail_sync_in(1);
    sim.write(a, &send(1, "bob", "lost"));
    sim.run();
    assert!(sendacks(&sim.frames(a)).is_empty());
    assert!(sim.sync(0));
    sim.run();
    assert_eq!(sim.disk.failed_syncs(), 1);
    let acks = sendacks(&sim.frames(a));
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].client_msg_id, acks[0].status, acks[0].msg_id), (1, sendack::RETRY, 0));
    assert!(pushes(&sim.frames(b)).is_empty(), "a record whose fsync failed is never pushed");

    // The log is failed: a retry of the same id is tried afresh (not
    // answered from dedup) and refused at once, like any new SEND.
    sim.write(a, &send(1, "bob", "lost"));
    sim.write(a, &send(2, "bob", "later"));
    sim.run();
    let acks = sendacks(&sim.frames(a));
    assert_eq!(acks.iter().map(|a| (a.client_msg_id, a.status)).collect::<Vec<_>>(), vec![(1, sendack::RETRY), (2, sendack::RETRY)]);
    assert!(pushes(&sim.frames(b)).is_empty());
}

#[test]
fn connect_on_a_foreign_core_moves_home_with_its_pipelined_frames_and_is_served_there() {
    let mut sim = Sim::new(2, StoreKind::Memory, Config::default(), &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (b, _, _) = sim.login(1, &bob, "phone");

    let a = sim.connect_at(1);
    let connect = sim.connect_frame(&alice, "phone", 0, 0);
    sim.write(a, &connect);
    sim.write(a, &Frame::Ping { nonce: 42 });
    assert!(sim.step_io());
    assert!(sim.frames(a).is_empty(), "the CONNACK is written by the home core");
    assert_eq!(sim.core_of(a), None, "in flight to the home core");
    assert_eq!(sim.cores[1].conn_count(), 1, "only bob is left on core 1");
    assert_eq!(sim.cores[1].stats.migrated_out, 1);
    assert_eq!(sim.mailbox_len(0), 1, "an Adopt for alice's home core");

    assert!(sim.deliver_one(0));
    assert_eq!(sim.core_of(a), Some(0));
    let f = sim.frames(a);
    assert!(matches!(f.first(), Some(Frame::ConnAck(c)) if c.status == 0 && c.user_id.as_str() == alice), "{f:?}");
    assert_eq!(f.get(1), Some(&Frame::Pong { nonce: 42 }), "the PING read behind CONNECT on core 1 is answered on core 0");

    // From now on the connection is served on core 0.
    sim.write(a, &Frame::Ping { nonce: 43 });
    sim.write(a, &send(1, &bob, "from home"));
    sim.run();
    let f = sim.frames(a);
    assert_eq!(f.first(), Some(&Frame::Pong { nonce: 43 }));
    assert_eq!(sendacks(&f).len(), 1);
    assert_eq!(pushes(&sim.frames(b)).len(), 1);
    assert_eq!(sim.core_of(a), Some(0));
    assert_eq!((sim.cores[0].conn_count(), sim.cores[1].conn_count()), (1, 1));
}

#[test]
fn a_newer_connection_of_a_device_replaces_the_older_with_disconnect_6() {
    let mut sim = Sim::new(2, StoreKind::Memory, Config::default(), &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (old, _, _) = sim.login(0, &alice, "phone");
    let (tablet, _, _) = sim.login(0, &alice, "tablet");
    let (b, _, _) = sim.login(1, &bob, "phone");

    // The same device again, through the other core.
    let (new, _, _) = sim.login(1, &alice, "phone");
    let f = sim.frames(old);
    assert_eq!(disconnects(&f), vec![DisconnectReason::Replaced.code()], "{f:?}");
    assert!(sim.server_fin(old), "FIN follows the DISCONNECT");
    assert!(sim.frames(tablet).is_empty(), "another device of the user is not replaced");

    // The new connection is the device's: bob's message reaches it, not the old one.
    sim.write(b, &send(1, &alice, "to the phone"));
    sim.run();
    assert_eq!(pushes(&sim.frames(new)).len(), 1);
    assert!(pushes(&sim.frames(old)).is_empty());
    assert_eq!(pushes(&sim.frames(tablet)).len(), 1);

    // The old connection lingers, then is closed even if its peer never reads.
    sim.advance(CLOSE_LINGER_MS + 2 * TICK_MS);
    assert!(sim.closed(old));
    assert!(!sim.closed(new));
}

#[test]
fn an_unacked_push_is_retransmitted_after_the_ack_timeout_then_closed_after_the_retry_bound() {
    let cfg = Config::default();
    let (timeout, retries) = (cfg.session.ack_timeout_ms, cfg.session.max_retries);
    assert!(retries >= 1);
    let mut sim = Sim::new(2, StoreKind::Memory, cfg, &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (a, _, _) = sim.login(0, &alice, "phone");
    let (b, _, _) = sim.login(1, &bob, "phone");
    sim.write(a, &send(1, &bob, "ack me"));
    sim.run();
    let p = pushes(&sim.frames(b));
    assert_eq!((p.len(), p[0].flags), (1, 0));

    // Each retransmission comes no earlier than its deadline (timeout,
    // doubling) and at most a tick or two after.
    let mut wait = timeout;
    for _ in 0..retries {
        let (after, f) = wait_for(&mut sim, b, 4 * wait);
        assert!(after >= wait && after <= wait + 2 * TICK_MS, "retransmitted after {after} ms, deadline {wait} ms");
        let r = pushes(&f);
        assert_eq!(r.len(), 1, "{f:?}");
        assert_eq!((r[0].seq, r[0].msg_id, r[0].flags), (1, p[0].msg_id, FLAG_REDELIVERY));
        wait *= 2;
    }
    let (after, f) = wait_for(&mut sim, b, 4 * wait);
    assert!(after >= wait && after <= wait + 2 * TICK_MS, "closed after {after} ms, deadline {wait} ms");
    assert_eq!(disconnects(&f), vec![DisconnectReason::AckTimeout.code()], "{f:?}");
    assert!(sim.server_fin(b));

    // The message stays in bob's inbox for his next connection.
    sim.advance(CLOSE_LINGER_MS + 2 * TICK_MS);
    assert!(sim.closed(b));
    let (_, _, replay) = sim.login(1, &bob, "phone");
    assert_eq!(pushes(&replay).iter().map(|p| p.msg_id).collect::<Vec<_>>(), vec![p[0].msg_id]);
}

#[test]
fn an_acked_push_is_not_retransmitted() {
    let mut sim = Sim::new(1, StoreKind::Memory, Config::default(), &[]);
    let timeout = sim.cfg.session.ack_timeout_ms;
    let (a, _, _) = sim.login(0, "alice", "phone");
    let (b, _, _) = sim.login(0, "bob", "phone");
    sim.write(a, &send(1, "bob", "x"));
    sim.run();
    assert_eq!(pushes(&sim.frames(b)).len(), 1);
    sim.write(b, &Frame::PushAck { seq: 1 });
    sim.run();
    let (_, f) = wait_for(&mut sim, b, 3 * timeout);
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn a_push_into_a_socket_that_does_not_drain_closes_as_slow_consumer_instead_of_resending() {
    let mut sim = Sim::new(1, StoreKind::Memory, Config::default(), &[]);
    let timeout = sim.cfg.session.ack_timeout_ms;
    let (a, _, _) = sim.login(0, "alice", "phone");
    let (b, _, _) = sim.login(0, "bob", "phone");
    // Bob stops reading: his socket takes no more bytes.
    sim.set_capacity(b, 0);
    sim.write(a, &send(1, "bob", "stuck"));
    sim.run();
    assert_eq!(sendacks(&sim.frames(a)).len(), 1);
    assert_eq!(sim.unread(b), 0, "the PUSH waits in the server's buffer");
    sim.advance(timeout + 2 * TICK_MS);
    // Bob reads again: the one PUSH, then DISCONNECT 8 behind it (no second copy).
    sim.set_capacity(b, super::sim::DEFAULT_CAPACITY);
    sim.run();
    let f = sim.frames(b);
    assert_eq!(pushes(&f).len(), 1, "{f:?}");
    assert_eq!(pushes(&f)[0].flags, 0);
    assert_eq!(disconnects(&f), vec![DisconnectReason::SlowConsumer.code()]);
}

/// A write the flusher could not finish (the socket took part of it, then
/// pushed back) is reported to the core by the driver, which wakes the
/// connection's task: it was waiting to read and now waits to write, so
/// the rest goes out as soon as the reader drains — with no tick and no
/// byte from the reader (an SSE stream, a client that only listens).
#[test]
fn a_write_the_flusher_could_not_finish_goes_out_when_the_reader_drains() {
    let mut sim = Sim::new(1, StoreKind::Memory, Config::default(), &[]);
    let (a, _, _) = sim.login(0, "alice", "phone");
    let (b, _, _) = sim.login(0, "bob", "phone");
    sim.set_capacity(b, 10);
    sim.write(a, &send(1, "bob", "longer than the ten bytes bob's socket takes"));
    sim.run();
    assert_eq!(sendacks(&sim.frames(a)).len(), 1);
    assert_eq!(sim.unread(b), 10, "the socket took a part: {}", sim.describe(b));
    sim.set_capacity(b, super::sim::DEFAULT_CAPACITY);
    sim.run();
    let f = sim.frames(b);
    assert_eq!(pushes(&f).len(), 1, "{f:?} {}", sim.describe(b));
}

#[test]
fn an_idle_connection_is_closed_at_2_5_heartbeats_and_a_ping_restarts_the_count() {
    let mut sim = Sim::new(1, StoreKind::Memory, Config::default(), &[]);
    let c = sim.connect_at(0);
    let connect = sim.connect_frame("alice", "phone", 2, 0);
    sim.write(c, &connect);
    sim.run();
    match sim.frames(c).first() {
        Some(Frame::ConnAck(a)) => assert_eq!((a.status, a.heartbeat_s), (0, 2), "a lower keepalive is taken"),
        other => panic!("{other:?}"),
    }
    let idle = 2 * 2_500;
    sim.advance(idle - 1_000);
    sim.write(c, &Frame::Ping { nonce: 1 });
    sim.run();
    assert_eq!(sim.frames(c), vec![Frame::Pong { nonce: 1 }]);

    let (after, f) = wait_for(&mut sim, c, 2 * idle);
    assert!(after >= idle && after <= idle + 2 * TICK_MS, "closed {after} ms after the PING, idle limit {idle} ms");
    assert_eq!(disconnects(&f), vec![DisconnectReason::IdleTimeout.code()]);
    assert!(sim.server_fin(c));
    sim.advance(CLOSE_LINGER_MS + 2 * TICK_MS);
    assert!(sim.closed(c));
    assert_eq!(sim.cores[0].conn_count(), 0);
}

#[test]
fn a_websocket_session_is_another_transport_of_the_same_core_rules() {
    // The device's TCP connection on its home core is replaced by the same
    // device over WebSocket, which upgrades and sends CONNECT on the other
    // core, moves home with its WebSocket state, and is served there.
    let mut sim = Sim::new(2, StoreKind::Memory, Config::default(), &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (tcp, _, _) = sim.login(0, &alice, "phone");
    let (b, _, _) = sim.login(1, &bob, "phone");

    let ws = sim.connect_at(1);
    sim.ws_upgrade(ws);
    let connect = sim.connect_frame(&alice, "phone", 0, 0);
    sim.ws_write(ws, &connect);
    sim.ws_write(ws, &Frame::Ping { nonce: 5 });
    sim.run();
    let (status, f, close) = sim.ws_frames(ws);
    assert_eq!(status.as_deref(), Some("HTTP/1.1 101 Switching Protocols"));
    assert!(matches!(f.first(), Some(Frame::ConnAck(c)) if c.status == 0), "{f:?}");
    assert_eq!(f.get(1), Some(&Frame::Pong { nonce: 5 }));
    assert_eq!(close, None);
    assert_eq!(sim.core_of(ws), Some(0), "moved to alice's home core");
    assert_eq!(disconnects(&sim.frames(tcp)), vec![DisconnectReason::Replaced.code()]);

    // Routing, SENDACK and PUSH/PUSHACK work the same inside WebSocket messages.
    sim.write(b, &send(1, &alice, "to the browser"));
    sim.ws_write(ws, &send(2, &bob, "from the browser"));
    sim.run();
    let (_, f, _) = sim.ws_frames(ws);
    let p = pushes(&f);
    assert_eq!(p.len(), 1);
    assert_eq!(&p[0].payload[..], b"to the browser");
    assert_eq!(sendacks(&f).iter().map(|a| (a.client_msg_id, a.status)).collect::<Vec<_>>(), vec![(2, sendack::STORED)]);
    assert_eq!(pushes(&sim.frames(b)).len(), 1);

    // A replaced WebSocket session ends with DISCONNECT 6 and close 4006.
    sim.ws_write(ws, &Frame::PushAck { seq: 1 });
    let (tcp2, _, _) = sim.login(1, &alice, "phone");
    let (_, f, close) = sim.ws_frames(ws);
    assert_eq!(disconnects(&f), vec![DisconnectReason::Replaced.code()]);
    assert_eq!(close, Some(4006));
    assert_eq!(sim.core_of(tcp2), Some(0));
}

/// A name from `prefix` whose home is `core` of `cores`.
fn homed(core: usize, cores: usize, prefix: &str) -> String {
    (0..).map(|i| format!("{prefix}{i}")).find(|u| crate::runtime::mesh::home_core(u, cores) == core).unwrap()
}

#[test]
fn a_group_sendack_waits_for_the_intent_record_and_every_copy_on_every_core() {
    // Both recipients live on core 1: on core 0 only the intent record
    // (the recipients, logged before any copy) holds the SENDACK back.
    let (alice, bob, carol) = (homed(0, 2, "alice"), homed(1, 2, "bob"), homed(1, 2, "carol"));
    let members = [alice.as_str(), bob.as_str(), carol.as_str()];
    let mut sim = Sim::new(2, StoreKind::Durable, Config::default(), &[("team", &members)]);
    let (a, _, _) = sim.login(0, &alice, "phone");
    let (b, _, _) = sim.login(1, &bob, "phone");
    let (c, _, _) = sim.login(1, &carol, "phone");
    sim.write(
        a,
        &Frame::Send(crate::proto::frame::Send {
            client_msg_id: 1,
            target_kind: 2,
            target: Utf8Bytes::from("team"),
            payload: Bytes::from_static(b"all hands"),
        }),
    );
    sim.run();
    assert!(sim.frames(a).is_empty());

    // Both copies become durable on core 1 and are pushed; alice still
    // waits for the intent record on core 0.
    while sim.sync(1) {
        sim.run();
    }
    assert_eq!(pushes(&sim.frames(b)).len(), 1);
    let pc = pushes(&sim.frames(c));
    assert_eq!(pc.len(), 1);
    assert!(sendacks(&sim.frames(a)).is_empty(), "the intent record on core 0 is not durable yet");

    let mut acks = Vec::new();
    while acks.is_empty() {
        assert!(sim.sync(0), "no SENDACK although nothing is left to sync");
        sim.run();
        acks = sendacks(&sim.frames(a));
    }
    assert!(!sim.sync(0) && !sim.sync(1), "the SENDACK came before every record was synced");
    assert_eq!((acks.len(), acks[0].status), (1, sendack::STORED));
    assert_eq!(pc[0].msg_id, acks[0].msg_id);
    assert!(pushes(&sim.frames(a)).is_empty(), "the sender is not a recipient of its own group send");
}

#[test]
fn an_expired_token_closes_the_connection_with_disconnect_3_at_its_expiry() {
    let mut cfg = Config::default();
    cfg.auth.leeway_s = 0;
    let mut sim = Sim::new(1, StoreKind::Memory, cfg, &[]);
    let c = sim.connect_at(0);
    let token = sim.token_for("alice", 20);
    sim.write(
        c,
        &Frame::Connect(crate::proto::frame::Connect {
            version: 1,
            keepalive_s: 0,
            device_id: Utf8Bytes::from("phone"),
            token: Utf8Bytes::from(token.as_str()),
            last_seq: 0,
        }),
    );
    sim.run();
    assert!(matches!(sim.frames(c).first(), Some(Frame::ConnAck(a)) if a.status == 0));
    let (after, f) = wait_for(&mut sim, c, 60_000);
    assert!(after >= 20_000 && after <= 20_000 + 2 * TICK_MS, "closed after {after} ms, token valid for 20 s");
    assert_eq!(disconnects(&f), vec![DisconnectReason::TokenExpired.code()]);

    // The same token is now refused at CONNECT (the virtual wall clock moved too).
    let again = sim.connect_at(0);
    sim.write(
        again,
        &Frame::Connect(crate::proto::frame::Connect {
            version: 1,
            keepalive_s: 0,
            device_id: Utf8Bytes::from("phone"),
            token: Utf8Bytes::from(token.as_str()),
            last_seq: 0,
        }),
    );
    sim.run();
    assert!(matches!(sim.frames(again).first(), Some(Frame::ConnAck(a)) if a.status == crate::proto::error::connack::BAD_TOKEN));
}

#[test]
fn a_send_still_waiting_at_shutdown_is_answered_sendack_5_before_disconnect_7() {
    // The drain after an fsync failure (or SIGTERM) can reach the sender's
    // core before the recipient's core has answered: the SEND must still
    // get an answer the client can act on, ahead of the DISCONNECT.
    let mut sim = Sim::new(2, StoreKind::Durable, Config::default(), &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (a, _, _) = sim.login(0, &alice, "phone");
    let (_b, _, _) = sim.login(1, &bob, "phone");

    sim.write(a, &send(1, &bob, "in flight"));
    sim.run();
    assert!(sendacks(&sim.frames(a)).is_empty(), "bob's record is not synced yet");
    sim.cores[0].begin_shutdown();
    sim.run();
    let f = sim.frames(a);
    let acks = sendacks(&f);
    assert_eq!(acks.iter().map(|a| (a.client_msg_id, a.status, a.msg_id)).collect::<Vec<_>>(), vec![(1, sendack::RETRY, 0)], "{f:?}");
    assert_eq!(disconnects(&f), vec![DisconnectReason::ServerShutdown as u8]);
    let ack_at = f.iter().position(|x| matches!(x, Frame::SendAck(_))).unwrap();
    let dc_at = f.iter().position(|x| matches!(x, Frame::Disconnect { .. })).unwrap();
    assert!(ack_at < dc_at, "SENDACK 5 comes before DISCONNECT 7: {f:?}");

    // Bob's core completes it later: nothing more reaches the closed connection.
    assert!(sim.sync(1));
    sim.run();
    assert!(sendacks(&sim.frames(a)).is_empty());
}
