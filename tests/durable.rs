//! Durable inboxes against the real binary: SIGKILL during and after send
//! bursts, torn and corrupt log records, retention deleting segments, seq
//! continuity and dedup across restarts, SIGTERM, and the data-dir lock.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Every `.seg` file under the server's log, newest last per directory.
fn segments(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(data.join("log")) {
        let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(&d).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "seg")).collect();
            files.sort();
            out.extend(files);
        }
    }
    out
}

/// Receives pushes until `n` distinct seqs arrived; returns them by seq.
fn drain_pushes(c: &mut Client, n: usize) -> BTreeMap<u64, Push> {
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        if Instant::now() > deadline {
            c.fail(format!("only {} of {n} pushes arrived", got.len()));
        }
        let p = c.expect_push();
        c.ack(p.seq);
        got.entry(p.seq).or_insert(p);
    }
    got
}

/// The server's stderr is read by a thread: give it time to catch up.
fn log_shows(s: &Server, needle: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if s.stderr_tail().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn payload(i: u64) -> Vec<u8> {
    format!("durable message {i}").into_bytes()
}

/// The "done when": 300 SENDACKed messages to an offline user,
/// SIGKILL, restart: all 300 replayed in seq order; a retried SEND gets its
/// original msg_id and is not delivered twice.
#[test]
fn sendacked_messages_survive_sigkill_in_order_and_dedup_survives() {
    let mut s = Config::default().durable("always").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let mut burst = Vec::new();
    for i in 1..=300u64 {
        burst.extend(send_to_user(i, "bob", &payload(i)).encode());
    }
    alice.send_raw(&burst).unwrap();
    let mut acks = BTreeMap::new();
    for i in 1..=300u64 {
        let a = alice.expect_sendack(i);
        assert_eq!(a.status, 0, "SEND {i}: {a:?}");
        acks.insert(i, a);
    }
    s.kill9();
    s.restart();

    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (1, 300));
    for i in 1..=300u64 {
        let p = bob.expect_push_seq(i, &payload(i));
        assert!(p.is_redelivery());
        assert_eq!(p.msg_id, acks[&i].msg_id, "seq {i} carries another message");
        assert_eq!(p.from, "alice");
        bob.ack(i);
    }

    // The device retries SEND 150 after the restart (its SENDACK was lost,
    // say): the original answer, and nothing new for bob.
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.send_msg(150, "bob", &payload(150));
    let again = alice.expect_sendack(150);
    assert_eq!(again, acks[&150]);
    bob.expect_silence(QUIET);
    // A new message continues the seqs.
    alice.send_ok(301, "bob", b"after restart");
    bob.expect_push_seq(301, b"after restart");
}

/// SIGKILL at varied moments during a pipelined burst: whatever was
/// SENDACKed before the kill is there after the restart, exactly once, at
/// dense seqs, in the order it was sent.
#[test]
fn sigkill_at_random_moments_loses_nothing_acked() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut s = Config::default().durable("always").start();
    let mut acked: Vec<SendAck> = Vec::new();
    let mut cmid = 0u64;
    for round in 0..4 {
        let (mut alice, _) = s.login("alice", &format!("phone{round}"), 0);
        let mut burst = Vec::new();
        let first = cmid + 1;
        for _ in 0..2000 {
            cmid += 1;
            burst.extend(send_to_user(cmid, "bob", &payload(cmid)).encode());
        }
        let pid = s.pid();
        let delay = Duration::from_micros(2_000 + next() % 20_000);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: kill(2) on our child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        });
        let _ = alice.send_raw(&burst);
        // Read SENDACKs until the connection dies.
        while let Ok(f) = alice.recv_frame(WAIT) {
            if let Frame::SendAck(a) = f {
                assert!(a.client_msg_id >= first && a.client_msg_id <= cmid);
                if a.status == 0 {
                    acked.push(a);
                }
            }
        }
        killer.join().unwrap();
        s.kill9();
        s.restart();
        eprintln!("round {round}: killed after {delay:?}, {} acked so far", acked.len());
    }
    let (mut bob, ack) = s.login("bob", "phone", 0);
    let head = ack.head_seq;
    assert!(head >= acked.len() as u64, "head {head} below {} acked messages", acked.len());
    let got = drain_pushes(&mut bob, head as usize);
    // Dense seqs 1..=head, each a distinct message.
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), (1..=head).collect::<Vec<_>>());
    let by_msg: BTreeMap<u64, &Push> = got.values().map(|p| (p.msg_id, p)).collect();
    assert_eq!(by_msg.len(), got.len(), "a message was stored twice");
    let mut last_seq = 0;
    for a in &acked {
        let p = by_msg.get(&a.msg_id).unwrap_or_else(|| panic!("SENDACKed message {a:?} lost (seed {seed})"));
        assert_eq!(p.payload, payload(a.client_msg_id));
        assert!(p.seq > last_seq, "acked messages out of order (seed {seed})");
        last_seq = p.seq;
    }
}

#[test]
fn torn_last_record_is_cut_and_reported() {
    let mut s = Config::default().durable("always").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    for i in 1..=5u64 {
        alice.send_ok(i, "bob", &payload(i));
    }
    s.kill9();
    // A crash in the middle of writing a record: header says 200 bytes,
    // only 30 made it.
    let segs = segments(&s.data_dir());
    let newest = segs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap().clone();
    let before = std::fs::metadata(&newest).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&newest).unwrap();
    let mut torn = 200u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 26]);
    f.write_all(&torn).unwrap();
    drop(f);
    // It must be the newest segment of its directory to count as torn.
    let dir_newest = segments(&s.data_dir()).into_iter().filter(|p| p.parent() == newest.parent()).last().unwrap();
    assert_eq!(dir_newest, newest, "the record-holding segment is not its directory's newest");

    s.restart();
    let log = s.stderr_tail();
    assert!(log.contains("torn record") && log.contains("bytes=30"), "no torn-tail report:\n{log}");
    assert_eq!(std::fs::metadata(&newest).unwrap().len(), before);
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!(ack.head_seq, 5);
    for i in 1..=5u64 {
        bob.expect_push_seq(i, &payload(i));
    }
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.send_ok(6, "bob", b"six");
    bob.expect_push_seq(6, b"six");
}

#[test]
fn corrupt_record_in_the_middle_refuses_to_start_and_names_it() {
    let mut s = Config::default().durable("always").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    for i in 1..=5u64 {
        alice.send_ok(i, "bob", &payload(i));
    }
    s.kill9();
    let seg = segments(&s.data_dir()).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    // Hit the body of the first message record (bookkeeping records such
    // as RUN and SYNCED may come before it).
    let scan = ringgate::store::log::scan(&seg, &data, true).unwrap();
    let first = scan
        .records
        .iter()
        .find(|f| matches!(ringgate::store::log::decode_body(&data[f.body.0..f.body.1]), Some(ringgate::store::log::Record::Message(_))))
        .unwrap();
    data[first.body.0 + 12] ^= 0x55;
    std::fs::write(&seg, &data).unwrap();
    let name = seg.file_name().unwrap().to_string_lossy().to_string();
    match Server::spawn(&s.config, s.dir()) {
        Ok(_) => panic!("server started on a corrupt log"),
        Err(why) => {
            assert!(why.contains("corrupt record"), "{why}");
            assert!(why.contains(&name) && why.contains(&format!("offset {}", first.offset)), "{why}");
        }
    }
}

#[test]
fn replay_after_restart_reads_old_payloads_back_from_disk() {
    // More than the 64 payloads kept in memory per inbox.
    let mut s = Config::default().durable("interval").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let mut burst = Vec::new();
    for i in 1..=150u64 {
        burst.extend(send_to_user(i, "bob", &payload(i)).encode());
    }
    alice.send_raw(&burst).unwrap();
    for i in 1..=150u64 {
        assert_eq!(alice.expect_sendack(i).status, 0);
    }
    // Clean stop: SIGTERM flushes under "interval".
    s.sigterm();
    assert_eq!(s.wait_exit(WAIT).and_then(|e| e.code()), Some(0), "{}", s.stderr_tail());
    s.restart();
    let (mut bob, _) = s.login("bob", "phone", 0);
    for i in 1..=150u64 {
        bob.expect_push_seq(i, &payload(i));
        if i % 32 == 0 {
            bob.ack(i);
        }
    }
}

#[test]
fn retention_deletes_expired_segments_and_moves_oldest() {
    let mut s = Config::default().durable("never").inbox_max_messages(5).segment_max_bytes(1 << 20).start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    let big = vec![7u8; 60_000];
    for i in 1..=60u64 {
        alice.send_ok(i, "bob", &big);
    }
    // 60 × 60 KB ≈ 3.6 MB over 1 MiB segments; only the last 5 are retained,
    // so all but the newest segment or two are gone.
    // A segment goes once the sync after its last retained entry did
    // (on the syncer thread): give it a moment.
    let deadline = Instant::now() + WAIT;
    let mut segs = segments(&s.data_dir());
    while segs.len() > 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        segs = segments(&s.data_dir());
    }
    assert!(segs.len() <= 2, "expired segments not deleted: {segs:?}");
    assert!(log_shows(&s, "deleted a log segment"), "{}", s.stderr_tail());
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (56, 60));
    for i in 56..=60u64 {
        bob.expect_push_seq(i, &big);
    }
    bob.ack(60);
    drop(bob);
    s.sigterm();
    assert_eq!(s.wait_exit(WAIT).and_then(|e| e.code()), Some(0));
    s.restart();
    let (_bob, ack) = s.login("bob", "phone", 60);
    assert_eq!((ack.oldest_seq, ack.head_seq), (56, 60), "retention state lost across restart");
}

#[test]
fn head_survives_when_retention_removed_every_record() {
    // Age retention of 1 s: everything expires, segments go, but the seqs
    // must continue, never restart at 1.
    let mut s = Config::default().durable("always").inbox_max_age_s(1).start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    for i in 1..=3u64 {
        alice.send_ok(i, "bob", &payload(i));
    }
    std::thread::sleep(Duration::from_millis(1500));
    s.sigterm();
    assert_eq!(s.wait_exit(WAIT).and_then(|e| e.code()), Some(0));
    s.restart();
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert_eq!((ack.oldest_seq, ack.head_seq), (4, 3));
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.send_ok(4, "bob", b"four");
    bob.expect_push_seq(4, b"four");
    // And once more, after the segment holding only the head record is gone.
    s.sigterm();
    assert_eq!(s.wait_exit(WAIT).and_then(|e| e.code()), Some(0));
    std::thread::sleep(Duration::from_millis(1200));
    s.restart();
    let (_bob, ack) = s.login("bob", "phone", 4);
    assert_eq!(ack.head_seq, 4);
}

#[test]
fn sigterm_sends_disconnect_7_exits_0_and_state_is_intact() {
    let mut s = Config::default().durable("always").start();
    let (mut bob, _) = s.login("bob", "phone", 0);
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.send_ok(1, "bob", b"one");
    bob.expect_push_seq(1, b"one");
    bob.ack(1);
    s.sigterm();
    for c in [&mut bob, &mut alice] {
        match c.recv_frame(WAIT) {
            Ok(Frame::Disconnect { reason: 7, .. }) => {}
            other => c.fail(format!("expected DISCONNECT(7), got {other:?}")),
        }
    }
    assert_eq!(s.wait_exit(WAIT).and_then(|e| e.code()), Some(0), "{}", s.stderr_tail());
    assert!(log_shows(&s, "log flushed"), "{}", s.stderr_tail());
    s.restart();
    let (mut bob, ack) = s.login("bob", "phone", 1);
    assert_eq!(ack.head_seq, 1);
    bob.expect_silence(QUIET);
}

#[test]
fn second_instance_on_the_same_data_dir_is_refused() {
    let s = Config::default().durable("always").start();
    match Server::spawn(&s.config, s.dir()) {
        Ok(_) => panic!("a second server started on the same data directory"),
        Err(why) => {
            assert!(why.contains("in use by another ringgate"), "{why}");
            assert!(why.contains(&format!("pid {}", s.pid())), "{why}");
        }
    }
}

#[test]
fn group_messages_survive_restart_for_every_member() {
    let mut s = Config::default().durable("always").start();
    let (mut alice, _) = s.login("alice", "phone", 0);
    alice.send_frame(&send_to_group(1, "team", b"hello team"));
    assert_eq!(alice.expect_sendack(1).status, 0);
    s.kill9();
    s.restart();
    for m in ["bob", "carol"] {
        let (mut c, ack) = s.login(m, "phone", 0);
        assert_eq!(ack.head_seq, 1, "{m}");
        c.expect_push_seq(1, b"hello team");
    }
    let (_a, ack) = s.login("alice", "phone", 0);
    assert_eq!(ack.head_seq, 0, "the sender's own inbox is not written");
}
