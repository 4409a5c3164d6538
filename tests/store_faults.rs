//! The real server when the disk fails: an fsync that returns EIO stops all confirmation, SENDs get SENDACK 5, the process drains and exits non-zero, and a restart recovers exactly what was confirmed.
//!
//! The fault is injected from outside the binary: the test builds a tiny
//! `LD_PRELOAD` shim (C, compiled with the system `cc`) whose `fdatasync`
//! fails with EIO on its Nth call and passes every other call to libc. So
//! the server under test is the unmodified release binary on a real file
//! system: no fault hook in production code, and the failing call is the
//! very `fdatasync(2)` the syncer thread makes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <unistd.h>

static long calls;

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    long n = __atomic_add_fetch(&calls, 1, __ATOMIC_SEQ_CST);
    const char *at = getenv("RG_FAIL_FDATASYNC_AT");
    if (at && n == atol(at)) {
        /* Like Linux after a writeback error: report EIO once; the next
           call succeeds although the data may be gone. */
        fprintf(stderr, "shim: fdatasync #%ld on fd %d fails with EIO\n", n, fd);
        errno = EIO;
        return -1;
    }
    return real(fd);
}
"#;

/// Builds the shim into `dir`; panics with the compiler's output if it cannot.
fn build_shim(dir: &Path) -> PathBuf {
    let src = dir.join("fsync_shim.c");
    let so = dir.join("fsync_shim.so");
    std::fs::write(&src, SHIM_C).unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("this test needs a C compiler (`cc`) to build its LD_PRELOAD shim");
    assert!(out.status.success(), "building the shim failed:\n{}", String::from_utf8_lossy(&out.stderr));
    so
}

fn payload(i: u64) -> Vec<u8> {
    format!("fsync-fault message {i}").into_bytes()
}

/// The issue's "done when" on the real server: SENDs one at a time under
/// `fsync = "always"` (one fdatasync each) until the injected EIO; after it
/// not one SENDACK 0, the failed SEND answered 5, a non-zero exit, and a
/// restart that holds exactly the SENDs confirmed before the failure.
#[test]
fn failed_fsync_stops_confirmation_and_exits_non_zero() {
    let shim_dir = tempfile::tempdir().unwrap();
    let shim = build_shim(shim_dir.path());
    let mut cfg = Config::default().durable("always");
    // Start-up makes a few fdatasyncs (new segments, recovery's sync); the
    // 20th call falls inside the SENDs below.
    cfg.env = vec![
        ("LD_PRELOAD".into(), shim.to_string_lossy().into_owned()),
        ("RG_FAIL_FDATASYNC_AT".into(), "20".into()),
    ];
    let mut s = cfg.start();
    let (mut alice, _) = s.login("alice", "phone", 0);

    let mut confirmed: Vec<(u64, u64)> = Vec::new(); // (client_msg_id, msg_id)
    let mut refused = Vec::new();
    let mut i = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Send until the connection ends (the server drains after the failure).
    'outer: while Instant::now() < deadline && i < 200 {
        i += 1;
        if alice.send_raw(&send_to_user(i, "bob", &payload(i)).encode()).is_err() {
            break;
        }
        loop {
            match alice.recv_frame(WAIT) {
                Ok(Frame::SendAck(a)) if a.client_msg_id == i => {
                    if a.status == 0 {
                        assert!(refused.is_empty(), "SENDACK 0 for SEND {i} after SEND {:?} was refused: {a:?}", refused);
                        confirmed.push((i, a.msg_id));
                    } else {
                        assert_eq!(a.status, 5, "SEND {i}: {a:?}");
                        refused.push(i);
                    }
                    break;
                }
                Ok(Frame::Disconnect { reason, .. }) => {
                    assert_eq!(reason, 7, "a failed store drains like a shutdown");
                    break 'outer;
                }
                Ok(_) => {}
                Err(_) => break 'outer,
            }
        }
    }
    assert!(!refused.is_empty(), "no SEND was refused after the injected EIO (sent {i}, confirmed {})\n{}", confirmed.len(), s.stderr_tail());
    assert!(confirmed.len() >= 5, "the fault hit too early to show anything: {} confirmed", confirmed.len());
    let status = s.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("the server did not exit after the fsync failure\n{}", s.stderr_tail()));
    assert!(!status.success() && status.code().is_some(), "exit status {status:?}\n{}", s.stderr_tail());
    let log = s.stderr_tail();
    assert!(log.contains("shim: fdatasync #20"), "the shim did not fire:\n{log}");
    assert!(log.contains("durable log failed"), "no clear error line:\n{log}");

    // The supervisor restarts it (without the shim): recovery first writes
    // the log out again, then everything confirmed is there, in order.
    s.config.env.clear();
    s.restart();
    assert!(s.stderr_tail().contains("writing every segment out again"), "{}", s.stderr_tail());
    let (mut bob, ack) = s.login("bob", "phone", 0);
    assert!(ack.head_seq >= confirmed.len() as u64, "head {} below {} confirmed", ack.head_seq, confirmed.len());
    for (seq, (cmid, msg_id)) in confirmed.iter().enumerate() {
        let p = bob.expect_push_seq(seq as u64 + 1, &payload(*cmid));
        assert_eq!(p.msg_id, *msg_id);
        bob.ack(p.seq);
    }
    // And the refused SEND can be retried with the same id: it is stored now.
    let (mut alice, _) = s.login("alice", "phone", 0);
    let retry = refused[0];
    let a = alice.send_ok(retry, "bob", &payload(retry));
    assert!(a.msg_id != 0);
}
