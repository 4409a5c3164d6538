use proptest::prelude::*;

use super::*;

fn lim() -> Limits {
    Limits { max_head_bytes: 1024, max_headers: 8, max_body_bytes: 64 }
}

fn complete(buf: &[u8]) -> (Request, usize) {
    match parse_request(buf, &lim()).unwrap() {
        Parsed::Complete { request, consumed } => (request, consumed),
        other => panic!("not complete: {other:?}"),
    }
}

#[test]
fn get_without_body() {
    let raw = b"GET /v1/users/bob?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n";
    let (r, n) = complete(raw);
    assert_eq!(n, raw.len());
    assert_eq!(r.method, "GET");
    assert_eq!(r.path(), "/v1/users/bob");
    assert_eq!(r.header_str("authorization"), Some("Bearer t"));
    assert!(r.keep_alive());
    assert!(r.body.is_empty());
}

#[test]
fn content_length_body_and_pipelining() {
    let raw = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n";
    let (r, n) = complete(raw);
    assert_eq!(r.body, b"hello");
    let (r2, _) = complete(&raw[n..]);
    assert_eq!(r2.target, "/b");
}

#[test]
fn every_prefix_is_incomplete() {
    let raw = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    for i in 0..raw.len() {
        assert!(matches!(parse_request(&raw[..i], &lim()), Ok(Parsed::Incomplete { .. })), "prefix {i}");
    }
    let chunked = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
    for i in 0..chunked.len() {
        assert!(matches!(parse_request(&chunked[..i], &lim()), Ok(Parsed::Incomplete { .. })), "prefix {i}");
    }
    let (r, n) = complete(chunked);
    assert_eq!(r.body, b"abcde");
    assert_eq!(n, chunked.len());
}

#[test]
fn expect_continue_is_signalled_once_head_is_in() {
    let raw = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    assert_eq!(parse_request(raw, &lim()).unwrap(), Parsed::Incomplete { expect_continue: true });
    let mut with_body = raw.to_vec();
    with_body.extend_from_slice(b"he");
    assert_eq!(parse_request(&with_body, &lim()).unwrap(), Parsed::Incomplete { expect_continue: false });
}

#[test]
fn limits_have_their_status() {
    let big = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2000));
    assert_eq!(parse_request(big.as_bytes(), &lim()).unwrap_err().status(), 431);
    // Too long even before the head is complete.
    let partial = format!("GET /{}", "a".repeat(2000));
    assert_eq!(parse_request(partial.as_bytes(), &lim()).unwrap_err().status(), 431);
    let many: String = (0..20).map(|i| format!("H{i}: v\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(parse_request(raw.as_bytes(), &lim()).unwrap_err().status(), 431);
    // Body size is refused from the header, before the bytes arrive.
    let raw = b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n";
    assert_eq!(parse_request(raw, &lim()).unwrap_err().status(), 413);
    let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n";
    assert_eq!(parse_request(raw, &lim()).unwrap_err().status(), 413);
    let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n";
    assert_eq!(parse_request(raw, &lim()).unwrap_err().status(), 400);
}

#[test]
fn ambiguous_framing_is_refused() {
    let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(parse_request(both, &lim()).unwrap_err().status(), 400);
    let two = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
    assert_eq!(parse_request(two, &lim()).unwrap_err().status(), 400);
    let same = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
    assert_eq!(complete(same).0.body, b"abc");
    let neg = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
    assert_eq!(parse_request(neg, &lim()).unwrap_err().status(), 400);
    let plus = b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n";
    assert_eq!(parse_request(plus, &lim()).unwrap_err().status(), 400);
    let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    assert_eq!(parse_request(gzip, &lim()).unwrap_err().status(), 501);
    let bad_chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n";
    assert_eq!(parse_request(bad_chunk, &lim()).unwrap_err().status(), 400);
}

#[test]
fn garbage_and_versions() {
    assert_eq!(parse_request(b"\x16\x03\x01\x00\xa5\x01\r\n\r\n", &lim()).unwrap_err().status(), 400);
    assert_eq!(parse_request(b"GET / HTTP/2.0\r\n\r\n", &lim()).unwrap_err().status(), 505);
    let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
    assert!(!r.keep_alive());
    let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(r.keep_alive());
    let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
    assert!(!r.keep_alive());
}

#[test]
fn response_encoding() {
    let mut out = Vec::new();
    Response::json(404, &serde_json::json!({"a": 1})).encode(false, false, &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
    assert!(s.contains("Content-Length: 7\r\n"));
    assert!(s.contains("Connection: close\r\n"));
    assert!(s.ends_with("\r\n\r\n{\"a\":1}"));
    // A header value cannot inject a line.
    let mut out = Vec::new();
    Response::new(200, "text/plain", b"x".to_vec()).header("X-Bad", "a\r\nSet-Cookie: y").encode(true, true, &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(!s.contains("Set-Cookie"));
    assert!(s.ends_with("Content-Length: 1\r\n\r\n"));
    // No Content-Length on 204 and 101 (RFC 9110), nor on a streamed head.
    for status in [101, 204] {
        let mut out = Vec::new();
        Response { status, headers: Vec::new(), body: Vec::new() }.encode(true, false, &mut out);
        assert!(!String::from_utf8(out).unwrap().contains("Content-Length"), "{status}");
    }
    let mut out = bytes::BytesMut::new();
    Response::new(200, "text/event-stream", Vec::new()).header("Transfer-Encoding", "chunked").encode_stream_head(true, &mut out);
    assert_eq!(&out[..], b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut out = Vec::new();
    encode_chunk(b"hello", &mut out);
    encode_chunk(b"", &mut out);
    encode_last_chunk(&mut out);
    assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
}

proptest! {
    /// Whatever bytes arrive, parsing answers (never panics), and a complete
    /// request never claims more bytes than there are.
    #[test]
    fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Parsed::Complete { consumed, request }) = parse_request(&data, &lim()) {
            prop_assert!(consumed <= data.len());
            prop_assert!(request.body.len() <= lim().max_body_bytes);
        }
    }

    /// Valid-looking heads with random bodies and framing also never panic,
    /// and a Content-Length request round-trips its body.
    #[test]
    fn structured_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..80),
        chunked in any::<bool>(),
        cut in 0usize..200,
        junk in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut raw = Vec::new();
        if chunked {
            raw.extend_from_slice(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
            for c in body.chunks(7) {
                encode_chunk(c, &mut raw);
            }
            encode_last_chunk(&mut raw);
        } else {
            raw.extend_from_slice(format!("POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
            raw.extend_from_slice(&body);
        }
        let whole = parse_request(&raw, &lim());
        if body.len() > lim().max_body_bytes {
            prop_assert_eq!(whole.unwrap_err().status(), 413);
        } else {
            match whole.unwrap() {
                Parsed::Complete { request, consumed } => {
                    prop_assert_eq!(request.body, body.clone());
                    prop_assert_eq!(consumed, raw.len());
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
        let mut mangled = raw[..cut.min(raw.len())].to_vec();
        mangled.extend_from_slice(&junk);
        let _ = parse_request(&mangled, &lim());
    }
}

/// A chunk size line (size, extensions, CRLF) is judged by one rule whether
/// it arrives whole or in pieces: at most 1,024 bytes (it was refused in
/// pieces past 1,024 buffered bytes but accepted whole at any length).
#[test]
fn chunk_size_line_one_rule_whole_or_in_pieces() {
    let lim = Limits { max_head_bytes: 1024, max_headers: 8, max_body_bytes: 4096 };
    let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    for line_len in [1000, 1023, 1024, 1025, 1026, 1100, 3000] {
        // "3;x=aaa...\r\n" is `line_len` bytes with its CRLF.
        let ext = "a".repeat(line_len - "3;x=\r\n".len());
        let mut raw = head.to_vec();
        raw.extend_from_slice(format!("3;x={ext}\r\nabc\r\n0\r\n\r\n").as_bytes());
        let whole = parse_request(&raw, &lim).map(|p| matches!(p, Parsed::Complete { .. })).map_err(|e| e.status());
        assert_eq!(whole, if line_len <= 1024 { Ok(true) } else { Err(400) }, "whole, line of {line_len} B");
        // In pieces: every prefix is Incomplete or the whole's answer.
        for i in head.len()..raw.len() {
            match parse_request(&raw[..i], &lim) {
                Ok(Parsed::Incomplete { .. }) => {}
                Ok(Parsed::Complete { .. }) => panic!("prefix {i} complete"),
                Err(e) => assert_eq!(Err(e.status()), whole, "prefix {i} of a line of {line_len} B"),
            }
        }
    }
}
