//! The server name a TLS client asks for, read from its ClientHello without terminating TLS
//! (RFC 8446 §4.1.2, RFC 6066 §3), so transparent capture can let an app's own TLS to a
//! declared ExternalService through and refuse the rest.
//!
//! Only what is needed is parsed, with every length checked against what remains: a hostile
//! or truncated hello gives `Err`, never a panic or an out-of-bounds read.

/// Why no server name could be read (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniError {
    /// The hello is longer than the bytes seen so far: read more and ask again.
    Incomplete,
    /// Not a TLS ClientHello, or a malformed one.
    Malformed,
    /// A well-formed ClientHello that names no server (an IP-literal client, say).
    Absent,
}

/// A TLS record carrying a handshake: what a ClientHello begins with.
pub fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x16, 0x03, ..] | [0x16])
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SniError> {
        if self.0.len() < n {
            return Err(SniError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, SniError> {
        Ok(self.take(1)?[0] as usize)
    }

    fn u16(&mut self) -> Result<usize, SniError> {
        let b = self.take(2)?;
        Ok((b[0] as usize) << 8 | b[1] as usize)
    }

    fn u24(&mut self) -> Result<usize, SniError> {
        let b = self.take(3)?;
        Ok((b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }

    /// A length-prefixed block, as its own reader.
    fn block(&mut self, len: usize) -> Result<Reader<'a>, SniError> {
        Ok(Reader(self.take(len)?))
    }
}

/// The lower-cased DNS host name of the `server_name` extension of the ClientHello that
/// `bytes` begin with. The hello must fit in its first record (16 KiB), as every client's does.
pub fn server_name(bytes: &[u8]) -> Result<String, SniError> {
    if bytes.len() < 5 {
        return Err(if looks_like_tls(bytes) || bytes.is_empty() {
            SniError::Incomplete
        } else {
            SniError::Malformed
        });
    }
    let mut record = Reader(bytes);
    if record.u8()? != 0x16 || record.u8()? != 0x03 {
        return Err(SniError::Malformed);
    }
    record.take(1)?; // minor version: any
    let len = record.u16()?;
    if len > 1 << 14 {
        return Err(SniError::Malformed);
    }
    if record.0.len() < len {
        return Err(SniError::Incomplete);
    }
    let mut hs = record.block(len)?;
    if hs.u8()? != 0x01 {
        return Err(SniError::Malformed); // not a ClientHello
    }
    let body_len = hs.u24()?;
    let mut hello = hs.block(body_len)?;
    hello.take(2 + 32)?; // legacy version, random
    let session = hello.u8()?;
    hello.take(session)?;
    let suites = hello.u16()?;
    hello.take(suites)?;
    let compression = hello.u8()?;
    hello.take(compression)?;
    if hello.0.is_empty() {
        return Err(SniError::Absent); // no extensions at all
    }
    let ext_len = hello.u16()?;
    let mut exts = hello.block(ext_len)?;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let mut ext = exts.block(len)?;
        if kind != 0 {
            continue;
        }
        let list_len = ext.u16()?;
        let mut list = ext.block(list_len)?;
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let len = list.u16()?;
            let name = list.take(len)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).map_err(|_| SniError::Malformed)?;
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                return if valid {
                    Ok(name.trim_end_matches('.').to_ascii_lowercase())
                } else {
                    Err(SniError::Malformed)
                };
            }
        }
        return Err(SniError::Absent);
    }
    Err(SniError::Absent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls writes it for `name`.
    fn hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_the_name_of_a_real_client_hello() {
        assert_eq!(
            server_name(&hello("Api.Example.COM")),
            Ok("api.example.com".into())
        );
    }

    #[test]
    fn an_ip_literal_client_sends_no_name() {
        assert_eq!(server_name(&hello("10.0.0.1")), Err(SniError::Absent));
    }

    #[test]
    fn every_truncation_asks_for_more_or_is_malformed_never_panics() {
        let full = hello("example.org");
        for n in 0..full.len() {
            let got = server_name(&full[..n]);
            assert!(
                matches!(got, Err(SniError::Incomplete | SniError::Malformed)),
                "{n}: {got:?}"
            );
        }
        // a short prefix is incomplete, not refused: the rest may still arrive
        assert_eq!(server_name(&full[..3]), Err(SniError::Incomplete));
    }

    #[test]
    fn other_protocols_are_not_tls() {
        assert!(!looks_like_tls(b"GET / HTTP/1.1"));
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), Err(SniError::Malformed));
        assert!(looks_like_tls(&hello("a.b")));
    }

    #[test]
    fn corrupt_lengths_are_malformed() {
        let mut h = hello("example.org");
        for i in 5..h.len().min(120) {
            let saved = h[i];
            h[i] = 0xff;
            let _ = server_name(&h); // must not panic, whatever it says
            h[i] = saved;
        }
    }
}
