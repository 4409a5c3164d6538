//! Sans-IO HTTP/1.1: request heads parsed with `httparse`, bounded bodies (Content-Length or chunked), keep-alive, and a response encoder.
//!
//! No sockets and no clock here, so the admin API today and the web
//! transports on the gateway port later (WebSocket upgrade, SSE, long-poll)
//! share one parser whose every limit is tested with plain byte slices.
//! The caller owns the read buffer: it appends what the socket gave and calls
//! [`parse_request`]; `Ok(Incomplete)` means "read more" (mini-redis'
//! "incomplete is not an error"), `Err` carries the status to answer with
//! before closing (the stream cannot be resynchronised after a bad request).
//!
//! Deliberately refused, each with its own status: a head over
//! `max_head_bytes` (431), more than `max_headers` headers (431), a body over
//! `max_body_bytes` (413, decided from the Content-Length or chunk sizes
//! before the bytes arrive), Transfer-Encoding other than `chunked` (501),
//! both Content-Length and Transfer-Encoding, or several different
//! Content-Lengths (400: the classic request-smuggling ambiguity), HTTP/1.0
//! keeps working but without chunked bodies.

mod response;

pub use response::{encode_chunk, encode_last_chunk, reason_phrase, Response};

/// Bounds on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, bytes.
    pub max_head_bytes: usize,
    /// Number of header lines.
    pub max_headers: usize,
    /// Decoded body bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: 16 * 1024, max_headers: 64, max_body_bytes: 1 << 20 }
    }
}

/// A complete request. Header names keep their case as sent; look them up
/// with [`Request::header`] (case-insensitive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// First header with this name (ASCII case-insensitive), as bytes.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// First header with this name as trimmed text, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok()).map(str::trim)
    }

    /// The path without its query string.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }

    /// Whether the connection stays open after the answer: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header_str("connection").map(|v| v.to_ascii_lowercase());
        let has = |t: &str| conn.as_deref().is_some_and(|c| c.split(',').any(|x| x.trim() == t));
        if self.minor_version == 0 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

/// Why a request was refused: always the client's fault; answer `status`
/// and close the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head larger than {0} bytes or with too many headers")]
    HeadTooLarge(usize),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("transfer-encoding {0:?} is not supported (only chunked)")]
    UnsupportedEncoding(String),
    #[error("HTTP version not supported")]
    Version,
}

impl HttpError {
    /// The status line to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge(_) => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::UnsupportedEncoding(_) => 501,
            HttpError::Version => 505,
        }
    }
}

/// Result of looking at the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request; the first `consumed` bytes of the buffer were it.
    Complete { request: Request, consumed: usize },
    /// Read more. `expect_continue`: the head is complete and asked for
    /// `100 Continue` before sending its body (curl does past 1 KiB).
    Incomplete { expect_continue: bool },
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// Parses one request from the front of `buf`.
pub fn parse_request(buf: &[u8], lim: &Limits) -> Result<Parsed, HttpError> {
    let mut headers = vec![httparse::EMPTY_HEADER; lim.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > lim.max_head_bytes {
                return Err(HttpError::HeadTooLarge(lim.max_head_bytes));
            }
            return Ok(Parsed::Incomplete { expect_continue: false });
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge(lim.max_head_bytes)),
        Err(httparse::Error::Version) => return Err(HttpError::Version),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > lim.max_head_bytes {
        return Err(HttpError::HeadTooLarge(lim.max_head_bytes));
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let minor_version = req.version.unwrap_or(1);
    let mut framing = Framing::None;
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    let mut out_headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| HttpError::Malformed("invalid Content-Length".into()))?;
            if content_length.is_some_and(|c| c != v) {
                return Err(HttpError::Malformed("conflicting Content-Length headers".into()));
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value).trim().to_ascii_lowercase();
            if v != "chunked" {
                return Err(HttpError::UnsupportedEncoding(v));
            }
            if minor_version == 0 || matches!(framing, Framing::Chunked) {
                return Err(HttpError::Malformed("transfer-encoding not allowed here".into()));
            }
            framing = Framing::Chunked;
        } else if h.name.eq_ignore_ascii_case("expect") {
            if !h.value.eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::Malformed("unsupported Expect".into()));
            }
            expect_continue = minor_version == 1;
        }
        out_headers.push((h.name.to_string(), h.value.to_vec()));
    }
    if let Some(n) = content_length {
        if matches!(framing, Framing::Chunked) {
            return Err(HttpError::Malformed("both Content-Length and Transfer-Encoding".into()));
        }
        if n > lim.max_body_bytes {
            return Err(HttpError::BodyTooLarge(lim.max_body_bytes));
        }
        framing = Framing::Length(n);
    }
    let rest = &buf[head_len..];
    let (body, body_len) = match framing {
        Framing::None => (Vec::new(), 0),
        Framing::Length(n) => {
            if rest.len() < n {
                return Ok(Parsed::Incomplete { expect_continue: expect_continue && rest.is_empty() });
            }
            (rest[..n].to_vec(), n)
        }
        Framing::Chunked => match decode_chunked(rest, lim.max_body_bytes)? {
            Some(r) => r,
            None => return Ok(Parsed::Incomplete { expect_continue: expect_continue && rest.is_empty() }),
        },
    };
    let request = Request { method, target, minor_version, headers: out_headers, body };
    Ok(Parsed::Complete { request, consumed: head_len + body_len })
}

/// Longest chunk size line (size, extensions, CRLF) accepted: a longer one
/// is junk. One rule whether the line arrives whole or in pieces.
const MAX_CHUNK_LINE: usize = 1024;

/// Decodes a chunked body at the front of `buf`: `Ok(None)` until the last
/// chunk and the trailers' end are buffered. Trailers are read and dropped.
fn decode_chunked(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let (start, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete((start, _))) if start > MAX_CHUNK_LINE => {
                return Err(HttpError::Malformed("chunk size line too long".into()));
            }
            Ok(httparse::Status::Complete(r)) => r,
            Ok(httparse::Status::Partial) => {
                // Without its end yet, the line is already longer than this
                // many bytes (its CRLF is still to come): refused now, as the
                // same line arriving whole is.
                if buf.len() - pos >= MAX_CHUNK_LINE {
                    return Err(HttpError::Malformed("chunk size line too long".into()));
                }
                return Ok(None);
            }
            Err(_) => return Err(HttpError::Malformed("invalid chunk size".into())),
        };
        let size = usize::try_from(size).map_err(|_| HttpError::BodyTooLarge(max_body))?;
        if body.len().saturating_add(size) > max_body {
            return Err(HttpError::BodyTooLarge(max_body));
        }
        pos += start;
        if size == 0 {
            // Trailers: header lines up to an empty line.
            loop {
                let Some(eol) = find_crlf(&buf[pos..]) else {
                    if buf.len() - pos > 8 * 1024 {
                        return Err(HttpError::Malformed("trailers too long".into()));
                    }
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
        }
        pos += 2;
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests;
