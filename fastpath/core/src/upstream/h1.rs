//! fastpath's own HTTP/1.1 client connection, for every pooled HTTP/1.1 hop: the local app, a
//! peer sidecar that settled on HTTP/1.1, an ExternalService. The request is written, and its
//! response head read, by the task that sends it; the response body is read from the socket by
//! whoever polls the body (the downstream connection's task). hyper's client put a connection
//! task of its own between the two, reached through a channel, so each request woke a second
//! task and crossed two channels; here a request through one proxy is one task's work.
//!
//! Only plain request/response exchanges take this path. An Upgrade (WebSocket) or CONNECT
//! request hands its idle connection to hyper (`into_hyper`), which owns the switch.
//!
//! Framing follows RFC 9112 §6. A response that cannot be framed (a bad or conflicting
//! `Content-Length`, a head over [`MAX_HEAD`]) is an error; a response whose framing is sound
//! but leaves doubt about what follows (read-until-close, `Transfer-Encoding` together with
//! `Content-Length`, `Connection: close`, HTTP/1.0 without keep-alive, bytes after the end) is
//! delivered and its connection closed rather than reused, so one response can never bleed into
//! the next caller's.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connect::Stream;
use crate::body::{Body, BoxError};
use crate::breaker::Permit;

/// The largest response head (status line and headers) read; hyper's client allowed about as
/// much before its buffer limit.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response head or a trailer section may carry (hyper's limit was 100).
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Chunk-extension bytes allowed in one body (hyper's limit): many tiny chunks with long
/// extensions are a way to make a proxy do work for nothing.
const MAX_EXTENSIONS: usize = 16 * 1024;
/// Read buffer growth per read: a typical response in one read, without a large idle buffer.
const READ_CHUNK: usize = 8 * 1024;
/// Request body bytes gathered before a write: small bodies leave with their head in one
/// write; large ones stream in pieces of this size.
const WRITE_BATCH: usize = 16 * 1024;

/// The idle connections of one endpoint, most recently used last. A response body that ends
/// cleanly puts its connection back here itself.
pub type Idle = Arc<Mutex<Vec<H1>>>;

/// Lets go of the idle connections the peer has closed or broken since they were last used.
pub fn sweep(idle: &Idle) {
    idle.lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain_mut(H1::reusable);
}

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a response")]
    Closed,
    #[error("connection closed in the middle of a response")]
    Truncated,
    #[error("bad response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("bad response framing: {0}")]
    Framing(&'static str),
    #[error("request body: {0}")]
    Body(BoxError),
}

/// One open HTTP/1.1 connection, idle between exchanges.
pub struct H1 {
    io: Box<dyn Stream>,
    /// Bytes read and not yet consumed. Empty whenever the connection is idle.
    buf: BytesMut,
    /// The circuit breaker's connection slot, held for as long as the connection is open.
    slot: Permit,
}

impl fmt::Debug for H1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H1")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl H1 {
    pub fn new(io: Box<dyn Stream>, slot: Permit) -> H1 {
        H1 {
            io,
            buf: BytesMut::new(),
            slot,
        }
    }

    /// Whether an idle connection can carry another request, looked at once without waiting:
    /// the peer having closed it (EOF), an error, or bytes it had no reason to send all retire
    /// it. Nothing polls an idle connection, so this is where a close by the peer is noticed.
    pub fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        self.buf.is_empty()
            && matches!(
                Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
                Poll::Pending
            )
    }

    /// Gives the idle connection to hyper, for an exchange it must own: an Upgrade (WebSocket)
    /// or CONNECT, whose connection becomes the tunnel once the far side agrees.
    pub async fn into_hyper(
        self,
        req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        let H1 { io, slot, .. } = self;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
            drop::<Permit>(slot);
        });
        sender.send_request(req).await
    }

    /// Sends one request and reads its response head. The body is read as it is polled and,
    /// once it ends cleanly, the connection goes back to `idle`. Dropped midway, the future
    /// (or the body) closes the connection: its answer is unwanted.
    pub async fn send(
        mut self,
        req: http::Request<Body>,
        idle: Idle,
    ) -> Result<http::Response<Body>, H1Error> {
        let (parts, body) = req.into_parts();
        let head_request = parts.method == Method::HEAD;
        let mut writing = Some(Writing::new(&parts, body));
        let head = poll_fn(|cx| {
            if let Some(w) = writing.as_mut() {
                match w.poll(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => writing = None,
                    // The caller's body failed: there is no request to finish.
                    Poll::Ready(Err(e @ H1Error::Body(_))) => return Poll::Ready(Err(e)),
                    // The peer stopped reading; it may have answered already (an early 413),
                    // so that answer is taken if it is there, else the write's error.
                    Poll::Ready(Err(e)) => {
                        return match self.poll_head(cx, head_request) {
                            Poll::Ready(Ok(head)) => {
                                writing = None;
                                Poll::Ready(Ok((head, false)))
                            }
                            _ => Poll::Ready(Err(e)),
                        };
                    }
                    Poll::Pending => {}
                }
            }
            self.poll_head(cx, head_request)
                .map_ok(|head| (head, writing.is_none()))
        })
        .await;
        let ((parts, framing, keep_alive), written) = head?;
        // Not written, and nothing left to write: the write failed after an early answer. The
        // peer may still be waiting for body bytes, so the connection must not be reused.
        let aborted_write = !written && writing.is_none();
        let mut body = H1Body {
            conn: Some(self),
            framing,
            keep_alive,
            writing: if written { None } else { writing },
            aborted_write,
            idle,
            extensions: 0,
        };
        if body.framing.ended() {
            body.done();
        }
        Ok(http::Response::from_parts(parts, body.boxed()))
    }

    /// Reads into the buffer; `Ok(0)` is the peer's EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Reads until a final response head is complete, skipping interim (1xx) responses.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<Head, H1Error>> {
        loop {
            while !self.buf.is_empty() {
                match self.parse_head(head_request)? {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    Parsed::Interim => continue,
                    Parsed::Partial => break,
                }
            }
            if self.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(H1Error::HeadTooLarge));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(if self.buf.is_empty() {
                    H1Error::Closed
                } else {
                    H1Error::Truncated
                }));
            }
        }
    }

    /// A response head taken from the buffer: a final one, an interim (1xx) one consumed, or
    /// nothing yet while it is partial.
    fn parse_head(&mut self, head_request: bool) -> Result<Parsed, H1Error> {
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut parsed, &self.buf, &mut slots)
            .map_err(H1Error::Head)?;
        let httparse::Status::Complete(len) = status else {
            return Ok(Parsed::Partial);
        };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| H1Error::Framing("bad status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                // Only Upgrade requests (hyper's) may be answered so.
                return Err(H1Error::Framing(
                    "101 to a request that asked for no upgrade",
                ));
            }
            self.buf.advance(len);
            return Ok(Parsed::Interim);
        }
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Names first, with where each value lies; the values are then cut from the head's
        // bytes without copying them.
        let base = self.buf.as_ptr() as usize;
        let mut fields = Vec::with_capacity(parsed.headers.len());
        for h in parsed.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| H1Error::Framing("bad header name"))?;
            fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
        }
        let bytes = self.buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(fields.len());
        for (name, at, n) in fields {
            let value = HeaderValue::from_maybe_shared(bytes.slice(at..at + n))
                .map_err(|_| H1Error::Framing("bad header value"))?;
            headers.append(name, value);
        }
        let (framing, sound) = framing(status, version, head_request, &headers)?;
        let keep_alive = sound && persistent(version, &headers);
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        Ok(Parsed::Final((
            response.into_parts().0,
            framing,
            keep_alive,
        )))
    }
}

enum Parsed {
    Final(Head),
    Interim,
    Partial,
}

/// A response head: its parts, how its body is framed, and whether the connection may carry
/// another exchange after it.
type Head = (http::response::Parts, Framing, bool);

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// Bytes left of a `Content-Length`; zero once read (and for HEAD, 1xx, 204, 304).
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes.
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Framing {
    fn ended(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Done)
    }
}

/// The framing of a response, and whether it leaves the connection sound for reuse.
fn framing(
    status: StatusCode,
    version: Version,
    head_request: bool,
    headers: &HeaderMap,
) -> Result<(Framing, bool), H1Error> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), true));
    }
    let length = content_length(headers)?;
    // Transfer-Encoding in an HTTP/1.0 message is faulty framing (RFC 9112 §6.1): read to
    // the close, as a 1.0 response without a length is.
    if version == Version::HTTP_10 && headers.contains_key(TRANSFER_ENCODING) {
        return Ok((Framing::Eof, false));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        // With Content-Length too, Transfer-Encoding wins, and the connection is not trusted
        // after (RFC 9112 §6.3, item 3).
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), length.is_none())
        } else {
            (Framing::Eof, false)
        });
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Eof, false),
    })
}

/// The one `Content-Length` a response gives: repeated values must agree (RFC 9110 §8.6).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(H1Error::Framing("bad content-length"));
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Framing("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the peer keeps the connection open after this response.
fn persistent(version: Version, headers: &HeaderMap) -> bool {
    let mut keep_alive = false;
    let mut close = false;
    for value in headers.get_all(CONNECTION) {
        let value = value.as_bytes();
        // Nearly every server sends exactly one of these two, spelled so.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
            continue;
        }
        for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            close |= token.eq_ignore_ascii_case(b"close");
        }
    }
    !close && (version != Version::HTTP_10 || keep_alive)
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sending {
    /// No body and no `Content-Length` (a GET, as hyper sent it).
    None,
    Length(u64),
    Chunked,
}

/// A request on its way out: the encoded bytes not yet written, and the body still to come.
struct Writing {
    out: Vec<u8>,
    written: usize,
    body: Option<Body>,
    framing: Sending,
    /// Body bytes encoded so far, against a declared length.
    sent: u64,
    trailers: Option<HeaderMap>,
}

impl Writing {
    fn new(parts: &http::request::Parts, body: Body) -> Writing {
        let framing = match hyper::body::Body::size_hint(&body).exact() {
            Some(0) => {
                // A body-carrying method says its body is empty, as hyper did; a GET says
                // nothing unless the caller did.
                let says = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
                    || parts.headers.contains_key(CONTENT_LENGTH);
                if says {
                    Sending::Length(0)
                } else {
                    Sending::None
                }
            }
            Some(n) => Sending::Length(n),
            // Unknown: a length the caller gave is kept (a body that breaks it fails the
            // request); GET, HEAD and CONNECT send none rather than an empty chunked one, as
            // hyper did (servers may refuse a body there, or read `0\r\n\r\n` as a request).
            None => match content_length(&parts.headers) {
                Ok(Some(n)) => Sending::Length(n),
                _ if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) => {
                    Sending::None
                }
                _ => Sending::Chunked,
            },
        };
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(parts.method.as_str().as_bytes());
        out.push(b' ');
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            // Framing is this hop's own, decided from the body.
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match framing {
            Sending::None => {}
            Sending::Length(n) => {
                out.extend_from_slice(b"content-length: ");
                push_decimal(&mut out, n);
                out.extend_from_slice(b"\r\n");
            }
            Sending::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        let body = match framing {
            Sending::None | Sending::Length(0) => None,
            _ => Some(body),
        };
        Writing {
            out,
            written: 0,
            body,
            framing,
            sent: 0,
            trailers: None,
        }
    }

    /// Writes everything, gathering what the body has ready into each write.
    fn poll(
        &mut self,
        io: &mut Box<dyn Stream>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), H1Error>> {
        loop {
            let mut waiting = false;
            while self.body.is_some() && self.out.len() - self.written < WRITE_BATCH {
                let polled = self.body.as_mut().map(|b| Pin::new(b).poll_frame(cx));
                match polled {
                    Some(Poll::Ready(Some(Ok(frame)))) => self.encode(frame)?,
                    Some(Poll::Ready(Some(Err(e)))) => return Poll::Ready(Err(H1Error::Body(e))),
                    Some(Poll::Ready(None)) => {
                        self.body = None;
                        self.end()?;
                    }
                    Some(Poll::Pending) => {
                        waiting = true;
                        break;
                    }
                    None => break,
                }
            }
            while self.written < self.out.len() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.out[self.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.written += n;
            }
            self.out.clear();
            self.written = 0;
            if self.body.is_none() || waiting {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                if self.body.is_none() {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
        }
    }

    fn encode(&mut self, frame: Frame<Bytes>) -> Result<(), H1Error> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    self.trailers = Some(trailers);
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(()); // an empty chunk would end a chunked body
        }
        self.sent += data.len() as u64;
        match self.framing {
            Sending::Length(n) if self.sent > n => {
                return Err(H1Error::Framing("request body longer than its length"))
            }
            Sending::Chunked => {
                push_hex(&mut self.out, data.len() as u64);
                self.out.extend_from_slice(b"\r\n");
                self.out.extend_from_slice(&data);
                self.out.extend_from_slice(b"\r\n");
                return Ok(());
            }
            _ => {}
        }
        self.out.extend_from_slice(&data);
        Ok(())
    }

    fn end(&mut self) -> Result<(), H1Error> {
        match self.framing {
            Sending::Length(n) if self.sent != n => {
                Err(H1Error::Framing("request body shorter than its length"))
            }
            Sending::Chunked => {
                self.out.extend_from_slice(b"0\r\n");
                for (name, value) in self.trailers.iter().flatten() {
                    self.out.extend_from_slice(name.as_str().as_bytes());
                    self.out.extend_from_slice(b": ");
                    self.out.extend_from_slice(value.as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                }
                self.out.extend_from_slice(b"\r\n");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A parsed chunk-size line: bytes it took (its CRLF included), the size, its extensions' length.
#[derive(Debug, PartialEq)]
struct ChunkLine {
    used: usize,
    size: u64,
    extensions: usize,
}

/// Parses `chunk-size [ chunk-ext ] CRLF` (RFC 9112 §7.1) from the front of `buf`: `None`
/// while the line is incomplete. Stricter than httparse's: at least one hex digit, at most
/// sixteen, and no bare CR or LF anywhere in the line.
fn chunk_size(buf: &[u8]) -> Result<Option<ChunkLine>, H1Error> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
    let Some(lf) = window.iter().position(|b| *b == b'\n') else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(H1Error::Framing("chunk size line too long"));
        }
        if window.iter().rev().skip(1).any(|b| *b == b'\r') {
            return Err(H1Error::Framing("bad chunk extension"));
        }
        return Ok(None);
    };
    let Some(line) = window[..lf].strip_suffix(b"\r") else {
        return Err(H1Error::Framing("chunk size line not ended by CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(H1Error::Framing("bad chunk size"));
    }
    let size = line[..digits].iter().fold(0u64, |n, d| {
        n << 4 | u64::from((*d as char).to_digit(16).unwrap_or_default())
    });
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if rest.contains(&b'\r') || (!ext.is_empty() && ext[0] != b';') {
        return Err(H1Error::Framing("bad chunk extension"));
    }
    Ok(Some(ChunkLine {
        used: lf + 1,
        size,
        extensions: rest.len(),
    }))
}

/// A response body read straight from the connection by whoever polls it.
struct H1Body {
    /// `None` once the body is done and the connection gone back to the pool (or closed).
    conn: Option<H1>,
    framing: Framing,
    keep_alive: bool,
    /// The rest of a request body, when the response came before all of it was written: it
    /// goes on being written as the response is read, as hyper did.
    writing: Option<Writing>,
    aborted_write: bool,
    idle: Idle,
    /// Chunk-extension bytes seen so far in this body, against [`MAX_EXTENSIONS`].
    extensions: usize,
}

impl H1Body {
    /// The body is over: the connection goes back to the pool if nothing about this exchange
    /// leaves doubt, else it closes.
    fn done(&mut self) {
        self.framing = Framing::Done;
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && self.writing.is_none() && !self.aborted_write && conn.buf.is_empty() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }

    /// Advances an unfinished request body. The peer refusing more (a write error) stops the
    /// writing but not the reading: its answer may be whole. The caller's body failing ends
    /// the exchange: the peer may be waiting for the rest of it before it finishes answering.
    fn poll_writing(&mut self, cx: &mut Context<'_>) -> Result<(), H1Error> {
        let (Some(w), Some(conn)) = (self.writing.as_mut(), self.conn.as_mut()) else {
            return Ok(());
        };
        match w.poll(&mut conn.io, cx) {
            Poll::Ready(Ok(())) => self.writing = None,
            Poll::Ready(Err(e)) => {
                self.writing = None;
                self.aborted_write = true;
                if matches!(e, H1Error::Body(_)) {
                    return Err(e);
                }
            }
            Poll::Pending => {}
        }
        Ok(())
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        if let Err(e) = self.poll_writing(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Done | Framing::Length(0) => {
                    self.done();
                    return Poll::Ready(None);
                }
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        return Poll::Ready(Some(Err(H1Error::Truncated)));
                    }
                    let take = left.min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(take as usize).freeze();
                    let left = left - take;
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::Chunked(Chunk::DataEnd),
                        _ => Framing::Chunked(Chunk::Data(left)),
                    };
                    if self.framing == Framing::Length(0) {
                        self.done();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Eof => {
                    if conn.buf.is_empty() && ready!(conn.poll_fill(cx))? == 0 {
                        self.done();
                        return Poll::Ready(None);
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(Chunk::Size) => match chunk_size(&conn.buf)? {
                    Some(line) => {
                        self.extensions += line.extensions;
                        if self.extensions > MAX_EXTENSIONS {
                            return Poll::Ready(Some(Err(H1Error::Framing(
                                "too many chunk extension bytes",
                            ))));
                        }
                        conn.buf.advance(line.used);
                        self.framing = Framing::Chunked(if line.size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(line.size)
                        });
                    }
                    None => {
                        if ready!(conn.poll_fill(cx))? == 0 {
                            return Poll::Ready(Some(Err(H1Error::Truncated)));
                        }
                    }
                },
                Framing::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() < 2 {
                        if ready!(conn.poll_fill(cx))? == 0 {
                            return Poll::Ready(Some(Err(H1Error::Truncated)));
                        }
                        continue;
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(H1Error::Framing("chunk not ended by CRLF"))));
                    }
                    conn.buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        self.done();
                        return Poll::Ready(None);
                    }
                    let mut slots = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(&conn.buf, &mut slots) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let name = HeaderName::from_bytes(f.name.as_bytes());
                                let value = HeaderValue::from_bytes(f.value);
                                if let (Ok(name), Ok(value)) = (name, value) {
                                    trailers.append(name, value);
                                }
                            }
                            conn.buf.advance(used);
                            self.done();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(httparse::Status::Partial) => {
                            if conn.buf.len() > MAX_HEAD {
                                return Poll::Ready(Some(Err(H1Error::HeadTooLarge)));
                            }
                            if ready!(conn.poll_fill(cx))? == 0 {
                                return Poll::Ready(Some(Err(H1Error::Truncated)));
                            }
                        }
                        Err(e) => return Poll::Ready(Some(Err(H1Error::Head(e)))),
                    }
                }
            }
        }
    }
}

impl hyper::body::Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(this.poll_next(cx)) {
            Some(Err(e)) => {
                // A broken body closes its connection.
                this.conn = None;
                this.framing = Framing::Done;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            other => Poll::Ready(other.map(|r| r.map_err(|e| -> BoxError { Box::new(e) }))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
