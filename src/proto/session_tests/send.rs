//! Session tests of rule 4: a SEND from the device is handed to the server
//! with its fields, its payload a slice of the read buffer.

use super::*;

// ---------------------------------------------------------------------------
// Rule 4: SEND is handed out with its payload as a slice of the read buffer
// ---------------------------------------------------------------------------

#[test]
fn send_is_handed_out_with_its_fields() {
    let mut h = H::new();
    h.open(0);
    h.send(&Frame::Send(frame::Send {
        client_msg_id: 99,
        target_kind: 2,
        target: "team-7".into(),
        payload: bytes::Bytes::from_static(b"hello group"),
    }));
    let base = h.rbuf.as_ptr() as usize;
    let end = base + h.rbuf.len();
    match h.poll() {
        Event::Send(s) => {
            assert_eq!(s.client_msg_id, 99);
            assert_eq!(s.target_kind, 2);
            assert_eq!(s.target.as_str(), "team-7");
            assert_eq!(&s.payload[..], b"hello group");
            let p = s.payload.as_ptr() as usize;
            assert!(p >= base && p + s.payload.len() <= end, "payload was copied out of the read buffer");
        }
        other => panic!("expected Send, got {other:?}"),
    }
    assert!(h.take().is_empty(), "the SENDACK is the server's to write");
    assert!(h.rbuf.is_empty());
}

#[test]
fn send_with_empty_payload_and_unknown_target_kind_reaches_the_server() {
    // The target kind is the router's business (SENDACK 1), not a framing error.
    let mut h = H::new();
    h.open(0);
    h.send(&Frame::Send(frame::Send {
        client_msg_id: 1,
        target_kind: 9,
        target: "".into(),
        payload: bytes::Bytes::new(),
    }));
    match h.poll() {
        Event::Send(s) => {
            assert_eq!(s.target_kind, 9);
            assert!(s.payload.is_empty());
        }
        other => panic!("expected Send, got {other:?}"),
    }
}

#[test]
fn send_refreshes_the_idle_deadline() {
    let mut h = H::new();
    h.open(0);
    h.now = 70_000;
    h.send(&Frame::Send(frame::Send {
        client_msg_id: 1,
        target_kind: 1,
        target: "bob".into(),
        payload: bytes::Bytes::new(),
    }));
    assert!(matches!(h.poll(), Event::Send(_)));
    assert_eq!(h.s.next_deadline(), Some(70_000 + IDLE_30S_MS));
}
