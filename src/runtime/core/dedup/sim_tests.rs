//! Deterministic virtual-time tests of packed dedup tables through whole cores: packed a while after the device leaves, answers from the packed form after a reconnect (through a migration, with replacement), and a SEND that completes after its device left.

use bytes::Bytes;

use crate::config::Config;
use crate::proto::error::sendack;
use crate::proto::frame::{Frame, Push, SendAck, Utf8Bytes};
use crate::runtime::core::sim::{Sim, StoreKind};
use crate::runtime::core::TICK_MS;

fn send(cmid: u64, to: &str) -> Frame {
    Frame::Send(crate::proto::frame::Send {
        client_msg_id: cmid,
        target_kind: 1,
        target: Utf8Bytes::from(to),
        payload: Bytes::from(format!("message {cmid}")),
    })
}

fn sendacks(frames: &[Frame]) -> Vec<SendAck> {
    frames.iter().filter_map(|f| if let Frame::SendAck(a) = f { Some(*a) } else { None }).collect()
}

fn pushes(frames: &[Frame]) -> Vec<Push> {
    frames.iter().filter_map(|f| if let Frame::Push(p) = f { Some(p.clone()) } else { None }).collect()
}

/// (packed, entries) of `user`'s `device` on `core`.
fn table(sim: &Sim, core: usize, user: &str, device: &str) -> (bool, usize) {
    let (packed, len, _) = sim.cores[core].dedup_of(user, device).expect("the device has a table");
    (packed, len)
}

const N: u64 = 200;

#[test]
fn an_offline_device_is_packed_after_the_delay_and_a_retry_after_reconnecting_gets_its_original_sendack_once() {
    let cfg = Config::default();
    let delay = cfg.session.dedup_pack_after_ms;
    assert!(delay >= 1_000, "the default leaves flapping devices alone for a while");
    let mut sim = Sim::new(2, StoreKind::Memory, cfg, &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    // Alice lands on the foreign core and moves home (core 0) each time.
    let (a, _, _) = sim.login(1, &alice, "phone");
    for cmid in 1..=N {
        sim.write(a, &send(cmid, &bob));
    }
    sim.run();
    let first = sendacks(&sim.frames(a));
    assert_eq!(first.len(), N as usize);
    assert!(first.iter().all(|a| a.status == sendack::STORED));
    assert_eq!(table(&sim, 0, &alice, "phone"), (false, N as usize), "live while the device sends");

    sim.hang_up(a);
    sim.run();
    assert!(sim.closed(a));
    // A flap: back and gone again within the delay; nothing is packed yet.
    sim.advance(delay / 2);
    let (a2, _, _) = sim.login(1, &alice, "phone");
    sim.hang_up(a2);
    sim.run();
    sim.advance(delay / 2 + 2 * TICK_MS);
    assert_eq!(table(&sim, 0, &alice, "phone"), (false, N as usize), "packed only `delay` after the last disconnect");
    sim.advance(delay / 2 + 2 * TICK_MS);
    assert_eq!(table(&sim, 0, &alice, "phone"), (true, N as usize), "packed, every entry kept");
    let (_, _, bytes) = sim.cores[0].dedup_of(&alice, "phone").unwrap();
    assert!(bytes <= 10 * N as usize, "{bytes} B for {N} entries");

    // Back (through the other core again); retries of old ids, first and
    // last, get their original answers from the packed table.
    let (a3, _, _) = sim.login(1, &alice, "phone");
    for cmid in [1, N / 2, N] {
        sim.write(a3, &send(cmid, &bob));
    }
    sim.run();
    let retried = sendacks(&sim.frames(a3));
    let want: Vec<SendAck> = [1, N / 2, N].iter().map(|c| first[*c as usize - 1]).collect();
    assert_eq!(retried, want, "the original SENDACKs: same msg_id and timestamp");
    assert!(table(&sim, 0, &alice, "phone").0, "a lookup does not expand the table");

    // A new id expands it and is stored; the oldest id is still remembered.
    sim.write(a3, &send(N + 1, &bob));
    sim.write(a3, &send(1, &bob));
    sim.run();
    let mut acks = sendacks(&sim.frames(a3));
    // The retry is answered at once, the new SEND once bob's core appended it.
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0], first[0]);
    let new = acks.pop().unwrap();
    assert_eq!((new.client_msg_id, new.status), (N + 1, sendack::STORED));
    assert_eq!(table(&sim, 0, &alice, "phone"), (false, N as usize + 1));

    // Nothing was delivered twice.
    let (_, ack, frames) = sim.login(1, &bob, "phone");
    assert_eq!(ack.head_seq, N + 1, "each SEND stored once");
    let ids: Vec<u64> = pushes(&frames).iter().map(|p| p.msg_id).collect();
    let mut want: Vec<u64> = first.iter().map(|a| a.msg_id).collect();
    want.push(new.msg_id);
    assert_eq!(&ids[..], &want[..ids.len()], "replayed in order, no duplicate");
}

#[test]
fn a_packed_table_answers_through_replacement_and_repacks_after_the_next_disconnect() {
    let mut cfg = Config::default();
    cfg.session.dedup_pack_after_ms = 0;
    let mut sim = Sim::new(2, StoreKind::Memory, cfg, &[]);
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (a, _, _) = sim.login(0, &alice, "phone");
    sim.write(a, &send(5, &bob));
    sim.run();
    let first = sendacks(&sim.frames(a));
    sim.hang_up(a);
    sim.run();
    sim.advance(2 * TICK_MS);
    assert_eq!(table(&sim, 0, &alice, "phone"), (true, 1));

    // Two connections of the device: the second replaces the first.
    let (old, _, _) = sim.login(1, &alice, "phone");
    let (new, _, _) = sim.login(0, &alice, "phone");
    sim.write(new, &send(5, &bob));
    sim.write(new, &send(6, &bob));
    sim.run();
    let acks = sendacks(&sim.frames(new));
    assert_eq!(acks[0], first[0]);
    assert_eq!(acks[1].client_msg_id, 6);
    assert!(sendacks(&sim.frames(old)).is_empty());
    // The replaced connection's end does not make the device idle.
    sim.advance(crate::proto::session::CLOSE_LINGER_MS + 2 * TICK_MS);
    assert!(sim.closed(old));
    assert!(!sim.closed(new));
    assert_eq!(table(&sim, 0, &alice, "phone"), (false, 2), "online: not packed");
    sim.hang_up(new);
    sim.run();
    sim.advance(2 * TICK_MS);
    assert_eq!(table(&sim, 0, &alice, "phone"), (true, 2));
}

#[test]
fn a_send_completing_after_its_device_left_is_remembered_then_packed() {
    let mut sim = Sim::new(2, StoreKind::Durable, Config::default(), &[]);
    let delay = sim.cfg.session.dedup_pack_after_ms;
    let alice = sim.user_homed_at(0, "alice");
    let bob = sim.user_homed_at(1, "bob");
    let (a, _, _) = sim.login(0, &alice, "phone");
    sim.write(a, &send(1, &bob));
    sim.write(a, &send(2, &bob));
    sim.run();
    while sim.sync(1) {
        sim.run();
    }
    assert_eq!(sendacks(&sim.frames(a)).len(), 2);
    // The third is pending (bob's record not synced) when alice leaves.
    sim.write(a, &send(3, &bob));
    sim.run();
    assert!(sendacks(&sim.frames(a)).is_empty());
    sim.hang_up(a);
    sim.run();
    assert!(sim.closed(a));
    sim.advance(delay + 2 * TICK_MS);
    assert_eq!(table(&sim, 0, &alice, "phone"), (false, 3), "a pending SEND keeps the table live");

    // It completes with nobody to tell: remembered, and packed a delay later.
    assert!(sim.sync(1));
    sim.run();
    assert!(!sim.sync(1));
    assert_eq!(table(&sim, 0, &alice, "phone"), (false, 3));
    sim.advance(delay + 2 * TICK_MS);
    assert_eq!(table(&sim, 0, &alice, "phone"), (true, 3));

    let (a2, _, _) = sim.login(0, &alice, "phone");
    sim.write(a2, &send(3, &bob));
    sim.run();
    let acks = sendacks(&sim.frames(a2));
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].client_msg_id, acks[0].status), (3, sendack::STORED));
    assert!(!sim.sync(1), "the retry wrote nothing");
    let (_, ack, frames) = sim.login(1, &bob, "phone");
    assert_eq!(ack.head_seq, 3, "stored once");
    assert_eq!(pushes(&frames).last().map(|p| p.msg_id), Some(acks[0].msg_id), "the original SENDACK's msg_id");
}

/// A full table (`dedup_per_device` entries) of a device that went
/// offline: its heap bytes live and packed, from the real SEND path's
/// msg_ids and timestamps.
#[test]
fn a_full_table_of_an_offline_device_shrinks_to_a_few_kilobytes() {
    let mut cfg = Config::default();
    cfg.session.dedup_pack_after_ms = 0;
    let full = cfg.session.dedup_per_device as u64;
    let mut sim = Sim::new(1, StoreKind::Memory, cfg, &[]);
    let (a, _, _) = sim.login(0, "alice", "phone");
    for burst in 0..(full + 1) / 64 + 1 {
        for cmid in burst * 64 + 1..=(burst * 64 + 64).min(full + 1) {
            sim.write(a, &send(cmid, "bob"));
        }
        sim.run();
        assert!(sendacks(&sim.frames(a)).iter().all(|a| a.status == sendack::STORED));
        // Bursts a few ms apart, like a busy client.
        sim.clock.advance(3);
    }
    let (packed, len, live) = sim.cores[0].dedup_of("alice", "phone").unwrap();
    assert_eq!((packed, len as u64), (false, full));
    sim.hang_up(a);
    sim.run();
    sim.advance(2 * TICK_MS);
    let (packed, len, bytes) = sim.cores[0].dedup_of("alice", "phone").unwrap();
    assert_eq!((packed, len as u64), (true, full));
    eprintln!("full dedup table ({full} entries) through the SEND path: live {live} B, packed {bytes} B");
    assert!(live >= 40 * full as usize && bytes <= 8 * full as usize, "live {live} B, packed {bytes} B");
}
