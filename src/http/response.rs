//! Response encoding: status line, headers, a Content-Length body, or chunked streaming pieces.

/// A response with a complete body (always sent with `Content-Length`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Response { status, headers: vec![("Content-Type".into(), content_type.into())], body }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response::new(status, "application/json", value.to_string().into_bytes())
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Writes the response. `keep_alive = false` adds `Connection: close`;
    /// `head_only` leaves the body out (a HEAD request) but keeps its length.
    pub fn encode(&self, keep_alive: bool, head_only: bool, out: &mut Vec<u8>) {
        self.encode_into(keep_alive, head_only, out);
    }

    /// `encode` into any buffer (the gateway port writes into the
    /// connection's `BytesMut`). No `Content-Length` on 1xx and 204 (RFC
    /// 9110 forbids it there).
    pub fn encode_into(&self, keep_alive: bool, head_only: bool, out: &mut impl bytes::BufMut) {
        self.encode_head(keep_alive, !matches!(self.status, 100..=199 | 204), out);
        if !head_only {
            out.put_slice(&self.body);
        }
    }

    /// The head of a response whose body is streamed after it (SSE:
    /// the caller set `Transfer-Encoding: chunked`): no `Content-Length`.
    pub fn encode_stream_head(&self, keep_alive: bool, out: &mut impl bytes::BufMut) {
        self.encode_head(keep_alive, false, out);
    }

    fn encode_head(&self, keep_alive: bool, with_length: bool, out: &mut impl bytes::BufMut) {
        out.put_slice(format!("HTTP/1.1 {} {}\r\n", self.status, reason_phrase(self.status)).as_bytes());
        for (n, v) in &self.headers {
            // A header value with CR/LF would split the response; drop it.
            if n.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
                continue;
            }
            out.put_slice(n.as_bytes());
            out.put_slice(b": ");
            out.put_slice(v.as_bytes());
            out.put_slice(b"\r\n");
        }
        if with_length {
            out.put_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        if !keep_alive {
            out.put_slice(b"Connection: close\r\n");
        }
        out.put_slice(b"\r\n");
    }
}

/// One chunk of a `Transfer-Encoding: chunked` body (empty data writes nothing:
/// an empty chunk would end the body).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body.
pub fn encode_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}
