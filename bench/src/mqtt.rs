//! The minimal MQTT 3.1.1 codec the Mosquitto peer needs: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH/PUBACK, PINGREQ.
//!
//! Only what a push client does, so the comparison with ringgate is
//! like for like: QoS 1 PUBLISH is the SEND, the broker's PUBACK to the
//! publisher is the SENDACK, and the subscriber's PUBACK is the PUSHACK
//! (MQTT acknowledges each message; ringgate's PUSHACK is cumulative).

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// Largest "remaining length" MQTT can express (4 varint bytes).
pub const MAX_REMAINING: usize = 268_435_455;

#[derive(Debug, PartialEq, Eq)]
pub enum MqttError {
    /// A fifth continuation byte in the remaining length.
    BadLength,
    /// A packet body shorter than its fixed fields.
    Truncated(u8),
    TooLarge(usize),
}

impl std::fmt::Display for MqttError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for MqttError {}

#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    ConnAck { session_present: bool, code: u8 },
    Publish { dup: bool, qos: u8, retain: bool, topic: Bytes, packet_id: Option<u16>, payload: Bytes },
    PubAck { packet_id: u16 },
    SubAck { packet_id: u16, codes: Vec<u8> },
    PingResp,
    /// Anything else a broker may send that a push client ignores.
    Other { kind: u8 },
}

/// Appends the variable-length "remaining length".
pub fn put_remaining(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

/// `Ok(Some((value, bytes used)))`, `Ok(None)` if more bytes are needed.
pub fn get_remaining(buf: &[u8]) -> Result<Option<(usize, usize)>, MqttError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else { return Ok(None) };
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(MqttError::BadLength)
    } else {
        Ok(None)
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn packet(out: &mut BytesMut, first: u8, body: &[u8]) {
    out.put_u8(first);
    put_remaining(out, body.len());
    out.put_slice(body);
}

/// CONNECT with protocol level 4 (3.1.1); `keepalive_s` 0 turns the broker's idle check off.
pub fn encode_connect(out: &mut BytesMut, client_id: &str, keepalive_s: u16, clean_session: bool) {
    let mut b = BytesMut::with_capacity(12 + client_id.len());
    put_str(&mut b, b"MQTT");
    b.put_u8(4);
    b.put_u8(if clean_session { 0x02 } else { 0 });
    b.put_u16(keepalive_s);
    put_str(&mut b, client_id.as_bytes());
    packet(out, CONNECT << 4, &b);
}

pub fn encode_subscribe(out: &mut BytesMut, packet_id: u16, topic: &str, qos: u8) {
    let mut b = BytesMut::with_capacity(5 + topic.len());
    b.put_u16(packet_id);
    put_str(&mut b, topic.as_bytes());
    b.put_u8(qos);
    // SUBSCRIBE's fixed-header flags are reserved as 0b0010.
    packet(out, (SUBSCRIBE << 4) | 0x02, &b);
}

/// PUBLISH; `packet_id` is required for QoS 1 and 2 and ignored for QoS 0.
pub fn encode_publish(out: &mut BytesMut, topic: &str, qos: u8, packet_id: u16, payload: &[u8]) {
    let id_len = if qos > 0 { 2 } else { 0 };
    out.put_u8((PUBLISH << 4) | (qos << 1));
    put_remaining(out, 2 + topic.len() + id_len + payload.len());
    put_str(out, topic.as_bytes());
    if qos > 0 {
        out.put_u16(packet_id);
    }
    out.put_slice(payload);
}

pub fn encode_puback(out: &mut BytesMut, packet_id: u16) {
    out.put_u8(PUBACK << 4);
    out.put_u8(2);
    out.put_u16(packet_id);
}

pub fn encode_pingreq(out: &mut BytesMut) {
    out.put_u8(PINGREQ << 4);
    out.put_u8(0);
}

pub fn encode_disconnect(out: &mut BytesMut) {
    out.put_u8(DISCONNECT << 4);
    out.put_u8(0);
}

/// Splits one packet off `buf`; `Ok(None)` leaves `buf` untouched.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Packet>, MqttError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some((len, used)) = get_remaining(&buf[1..])? else { return Ok(None) };
    if len > MAX_REMAINING {
        return Err(MqttError::TooLarge(len));
    }
    if buf.len() < 1 + used + len {
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(1 + used);
    let mut body = buf.split_to(len).freeze();
    let kind = first >> 4;
    let need = |b: &Bytes, n: usize| if b.len() < n { Err(MqttError::Truncated(kind)) } else { Ok(()) };
    let p = match kind {
        CONNACK => {
            need(&body, 2)?;
            Packet::ConnAck { session_present: body[0] & 1 == 1, code: body[1] }
        }
        PUBLISH => {
            let qos = (first >> 1) & 0x03;
            need(&body, 2)?;
            let tlen = body.get_u16() as usize;
            need(&body, tlen)?;
            let topic = body.split_to(tlen);
            let packet_id = if qos > 0 {
                need(&body, 2)?;
                Some(body.get_u16())
            } else {
                None
            };
            Packet::Publish { dup: first & 0x08 != 0, qos, retain: first & 1 == 1, topic, packet_id, payload: body }
        }
        PUBACK => {
            need(&body, 2)?;
            Packet::PubAck { packet_id: body.get_u16() }
        }
        SUBACK => {
            need(&body, 2)?;
            let packet_id = body.get_u16();
            Packet::SubAck { packet_id, codes: body.to_vec() }
        }
        PINGRESP => Packet::PingResp,
        other => Packet::Other { kind: other },
    };
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_spec_examples() {
        // The boundaries from MQTT 3.1.1 section 2.2.3.
        for (n, bytes) in [
            (0usize, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xff, 0xff, 0x7f]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (268_435_455, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut b = BytesMut::new();
            put_remaining(&mut b, n);
            assert_eq!(&b[..], &bytes[..], "encode {n}");
            assert_eq!(get_remaining(&bytes), Ok(Some((n, bytes.len()))), "decode {n}");
        }
        assert_eq!(get_remaining(&[0x80, 0x80]), Ok(None));
        assert_eq!(get_remaining(&[0x80, 0x80, 0x80, 0x80, 0x01]), Err(MqttError::BadLength));
    }

    #[test]
    fn connect_bytes_are_exact() {
        let mut b = BytesMut::new();
        encode_connect(&mut b, "c1", 60, true);
        let expect = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'c', b'1'];
        assert_eq!(&b[..], &expect[..]);
    }

    #[test]
    fn subscribe_sets_reserved_flags() {
        let mut b = BytesMut::new();
        encode_subscribe(&mut b, 7, "u/a", 1);
        assert_eq!(&b[..], &[0x82, 8, 0, 7, 0, 3, b'u', b'/', b'a', 1][..]);
    }

    #[test]
    fn publish_qos1_round_trip_and_qos0_has_no_id() {
        let mut b = BytesMut::new();
        encode_publish(&mut b, "u/bob", 1, 513, b"hello");
        encode_publish(&mut b, "t", 0, 99, b"x");
        assert_eq!(b[0], 0x32);
        let p = decode(&mut b).unwrap().unwrap();
        assert_eq!(
            p,
            Packet::Publish {
                dup: false,
                qos: 1,
                retain: false,
                topic: Bytes::from_static(b"u/bob"),
                packet_id: Some(513),
                payload: Bytes::from_static(b"hello")
            }
        );
        match decode(&mut b).unwrap().unwrap() {
            Packet::Publish { qos: 0, packet_id: None, payload, .. } => assert_eq!(&payload[..], b"x"),
            other => panic!("{other:?}"),
        }
        assert!(b.is_empty());
    }

    #[test]
    fn broker_packets_decode() {
        let mut b = BytesMut::from(&[0x20, 2, 0, 0, 0x90, 3, 0, 7, 1, 0x40, 2, 1, 2, 0xd0, 0][..]);
        assert_eq!(decode(&mut b).unwrap(), Some(Packet::ConnAck { session_present: false, code: 0 }));
        assert_eq!(decode(&mut b).unwrap(), Some(Packet::SubAck { packet_id: 7, codes: vec![1] }));
        assert_eq!(decode(&mut b).unwrap(), Some(Packet::PubAck { packet_id: 258 }));
        assert_eq!(decode(&mut b).unwrap(), Some(Packet::PingResp));
        assert_eq!(decode(&mut b).unwrap(), None);
    }

    #[test]
    fn partial_packets_wait_and_leave_buffer_alone() {
        let mut full = BytesMut::new();
        encode_publish(&mut full, "u/x", 1, 1, &[7u8; 300]);
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(decode(&mut b).unwrap(), None, "cut at {cut}");
            assert_eq!(b.len(), cut);
        }
    }

    #[test]
    fn truncated_fixed_fields_are_errors() {
        let mut b = BytesMut::from(&[0x40, 1, 0][..]);
        assert_eq!(decode(&mut b), Err(MqttError::Truncated(PUBACK)));
        // PUBLISH QoS 1 whose topic length runs past the body.
        let mut b = BytesMut::from(&[0x32, 3, 0, 9, b'a'][..]);
        assert_eq!(decode(&mut b), Err(MqttError::Truncated(PUBLISH)));
    }

    #[test]
    fn small_control_packets() {
        let mut b = BytesMut::new();
        encode_puback(&mut b, 0xbeef);
        encode_pingreq(&mut b);
        encode_disconnect(&mut b);
        assert_eq!(&b[..], &[0x40, 2, 0xbe, 0xef, 0xc0, 0, 0xe0, 0][..]);
    }
}
