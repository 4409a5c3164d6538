//! The HTTP/1.1 the nginx peer needs: one GET request and finding where its response ends.

/// `GET /` with keep-alive on or off.
pub fn get_request(keep_alive: bool) -> Vec<u8> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    format!("GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: ringgate-bench\r\nConnection: {conn}\r\n\r\n").into_bytes()
}

/// Length of the first complete response in `buf` (headers plus a
/// `Content-Length` body), `None` while incomplete. Responses without a
/// Content-Length (chunked) are not used by the benchmark's static page.
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut body = 0usize;
    for line in head.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                body = v.trim().parse().ok()?;
            }
        }
    }
    (buf.len() >= end + body).then_some(end + body)
}

/// The status code of a response head.
pub fn status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|&b| b == b'\r').next()?;
    std::str::from_utf8(line).ok()?.split(' ').nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_length_needs_the_whole_body() {
        let r = b"HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(response_len(r), Some(r.len()));
        assert_eq!(response_len(&r[..r.len() - 1]), None);
        assert_eq!(response_len(b"HTTP/1.1 204 No Content\r\n\r\n"), Some(27));
        assert_eq!(response_len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"), None);
        assert_eq!(status(r), Some(200));
    }

    #[test]
    fn request_says_keep_alive_or_close() {
        assert!(String::from_utf8(get_request(false)).unwrap().contains("Connection: close\r\n\r\n"));
        assert!(String::from_utf8(get_request(true)).unwrap().ends_with("Connection: keep-alive\r\n\r\n"));
    }
}
