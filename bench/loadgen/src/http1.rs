//! Just enough HTTP/1.1 for a load generator: write a prepared request, read one response
//! (Content-Length, chunked, or until close), count its body bytes without keeping them.

use std::io::{self, Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed before the response was complete")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// What a response was: enough to count it, not its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body_bytes: u64,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// A request line and headers, built once and written as is for every request.
pub fn request(host: &str, path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weft-loadgen\r\n{connection}\r\n")
        .into_bytes()
}

/// Reads responses from one connection; bytes that arrive past a response stay for the next.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

const BUFFER: usize = 64 * 1024;
const MAX_HEAD: usize = 16 * 1024;

impl Default for Reader {
    fn default() -> Self {
        Reader {
            buf: vec![0; BUFFER],
            start: 0,
            end: 0,
        }
    }
}

impl Reader {
    pub fn exchange<S: Read + Write>(
        &mut self,
        stream: &mut S,
        request: &[u8],
    ) -> Result<Response, HttpError> {
        stream.write_all(request)?;
        stream.flush()?;
        self.read_response(stream)
    }

    pub fn read_response<S: Read>(&mut self, stream: &mut S) -> Result<Response, HttpError> {
        let head_end = loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n\r\n") {
                break self.start + i + 4;
            }
            if self.end - self.start > MAX_HEAD {
                return Err(HttpError::Malformed("response head over 16 KiB"));
            }
            if self.fill(stream)? == 0 {
                return Err(HttpError::Closed);
            }
        };
        let head = Head::parse(&self.buf[self.start..head_end])?;
        self.start = head_end;
        let body_bytes = match head.framing {
            Framing::Length(n) => {
                self.skip(stream, n)?;
                n
            }
            Framing::Chunked => self.chunked(stream)?,
            Framing::None => 0,
            Framing::UntilClose => self.until_close(stream)?,
        };
        Ok(Response {
            status: head.status,
            body_bytes,
            close: head.close || head.framing == Framing::UntilClose,
        })
    }

    /// Reads more bytes after those buffered; returns how many (0: the peer closed).
    fn fill<S: Read>(&mut self, stream: &mut S) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let n = loop {
            match stream.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.end += n;
        Ok(n)
    }

    fn skip<S: Read>(&mut self, stream: &mut S, mut n: u64) -> Result<(), HttpError> {
        loop {
            let here = ((self.end - self.start) as u64).min(n);
            self.start += here as usize;
            n -= here;
            if n == 0 {
                return Ok(());
            }
            if self.fill(stream)? == 0 {
                return Err(HttpError::Closed);
            }
        }
    }

    fn line<S: Read>(&mut self, stream: &mut S) -> Result<Vec<u8>, HttpError> {
        loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n") {
                let line = self.buf[self.start..self.start + i].to_vec();
                self.start += i + 2;
                return Ok(line);
            }
            if self.end - self.start > MAX_HEAD {
                return Err(HttpError::Malformed("chunk line over 16 KiB"));
            }
            if self.fill(stream)? == 0 {
                return Err(HttpError::Closed);
            }
        }
    }

    fn chunked<S: Read>(&mut self, stream: &mut S) -> Result<u64, HttpError> {
        let mut total = 0;
        loop {
            let line = self.line(stream)?;
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size)
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .ok_or(HttpError::Malformed("chunk size"))?;
            if size == 0 {
                // trailers, then the empty line
                while !self.line(stream)?.is_empty() {}
                return Ok(total);
            }
            self.skip(stream, size)?;
            if !self.line(stream)?.is_empty() {
                return Err(HttpError::Malformed("no CRLF after a chunk"));
            }
            total += size;
        }
    }

    fn until_close<S: Read>(&mut self, stream: &mut S) -> Result<u64, HttpError> {
        let mut total = (self.end - self.start) as u64;
        self.start = self.end;
        loop {
            let n = self.fill(stream)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            self.start = self.end;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// 1xx, 204 and 304 have no body.
    None,
    UntilClose,
}

struct Head {
    status: u16,
    framing: Framing,
    close: bool,
}

impl Head {
    fn parse(head: &[u8]) -> Result<Head, HttpError> {
        let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed("not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        if !status_line.starts_with("HTTP/1.") {
            return Err(HttpError::Malformed("not an HTTP/1.x status line"));
        }
        let status: u16 = status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or(HttpError::Malformed("status code"))?;
        let mut close = status_line.starts_with("HTTP/1.0");
        let (mut length, mut chunked) = (None, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse()
                        .map_err(|_| HttpError::Malformed("content-length"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let value = value.to_ascii_lowercase();
                close = value.contains("close") || (close && !value.contains("keep-alive"));
            }
        }
        let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::None
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        Ok(Head {
            status,
            framing,
            close,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out its bytes a few at a time, as a socket may.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn stream(data: &[u8], step: usize) -> Trickle {
        Trickle {
            data: data.to_vec(),
            at: 0,
            step,
        }
    }

    #[test]
    fn back_to_back_responses_on_one_connection() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\n\
                     content-length: 0\r\nconnection: close\r\n\r\n";
        for step in [1, 3, 7, 4096] {
            let mut s = stream(wire, step);
            let mut r = Reader::default();
            let first = r.read_response(&mut s).unwrap();
            assert_eq!(
                (first.status, first.body_bytes, first.close),
                (200, 5, false)
            );
            let second = r.read_response(&mut s).unwrap();
            assert_eq!(
                (second.status, second.body_bytes, second.close),
                (404, 0, true)
            );
        }
    }

    #[test]
    fn chunked_bodies_are_counted_across_reads() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5\r\nhello\r\na;ext=1\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n\
                     HTTP/1.1 204 No Content\r\n\r\n";
        for step in [1, 2, 5, 4096] {
            let mut s = stream(wire, step);
            let mut r = Reader::default();
            assert_eq!(r.read_response(&mut s).unwrap().body_bytes, 15);
            assert_eq!(r.read_response(&mut s).unwrap().status, 204);
        }
    }

    #[test]
    fn a_body_larger_than_the_buffer_is_skipped_not_kept() {
        let size = 5 * BUFFER + 17;
        let mut wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
        wire.extend(std::iter::repeat_n(b'x', size));
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let mut s = stream(&wire, 10_000);
        let mut r = Reader::default();
        assert_eq!(r.read_response(&mut s).unwrap().body_bytes, size as u64);
        assert_eq!(r.read_response(&mut s).unwrap().body_bytes, 2);
        assert_eq!(r.buf.len(), BUFFER);
    }

    #[test]
    fn without_a_length_the_body_runs_to_the_close() {
        let mut s = stream(b"HTTP/1.0 200 OK\r\n\r\nall of it", 4);
        let got = Reader::default().read_response(&mut s).unwrap();
        assert_eq!((got.body_bytes, got.close), (9, true));
    }

    #[test]
    fn a_truncated_response_is_an_error() {
        let mut s = stream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 64);
        assert!(matches!(
            Reader::default().read_response(&mut s),
            Err(HttpError::Closed)
        ));
        let mut s = stream(b"SSH-2.0-OpenSSH\r\n\r\n", 64);
        assert!(matches!(
            Reader::default().read_response(&mut s),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn requests_carry_the_host_and_close_only_when_asked() {
        let keep = String::from_utf8(request("api.b:8080", "/", false)).unwrap();
        assert!(keep.starts_with("GET / HTTP/1.1\r\nHost: api.b:8080\r\n"));
        assert!(!keep.contains("Connection"));
        assert!(String::from_utf8(request("h", "/big", true))
            .unwrap()
            .contains("Connection: close\r\n"));
    }
}
