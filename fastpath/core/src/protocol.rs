//! Which HTTP version each hop speaks, and the shape a request takes for it.
//!
//! A port's protocol decides: `http2` and `grpc` ports speak HTTP/2 (h2 over mTLS between
//! sidecars, h2c with prior knowledge to the app, as gRPC servers expect), `http` ports keep
//! HTTP/1.1. Between sidecars the version is negotiated by ALPN, so a peer that does not offer
//! `h2` (a sidecar of an older release, during a rolling upgrade) is still served over HTTP/1.1.

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri, Version};

use crate::config::Protocol;

/// ALPN for HTTP/2 between sidecars: the standard `h2`.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1 between sidecars. Its own name (not `http/1.1`) tells a mesh peer from a
/// client that merely speaks TLS, and is what every earlier release offers.
pub const ALPN_HTTP1: &[u8] = b"weft/http1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http1,
    Http2,
}

impl HttpVersion {
    /// The version to speak to a port of this protocol. `tcp` never reaches HTTP.
    pub fn for_protocol(protocol: Protocol) -> HttpVersion {
        match protocol {
            Protocol::Http2 | Protocol::Grpc => HttpVersion::Http2,
            Protocol::Http | Protocol::Tcp => HttpVersion::Http1,
        }
    }

    /// What a sidecar offers a peer by ALPN, most wanted first. HTTP/2 upstreams also offer
    /// HTTP/1.1, so a peer without HTTP/2 is still reachable; HTTP/1.1 upstreams offer only it,
    /// so `http` ports behave exactly as before.
    pub fn offered(self) -> Vec<Vec<u8>> {
        match self {
            HttpVersion::Http1 => vec![ALPN_HTTP1.to_vec()],
            HttpVersion::Http2 => vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()],
        }
    }

    /// The version a TLS handshake settled on; no ALPN at all means HTTP/1.1.
    pub fn negotiated(alpn: Option<&[u8]>) -> HttpVersion {
        match alpn {
            Some(ALPN_H2) => HttpVersion::Http2,
            _ => HttpVersion::Http1,
        }
    }

    pub fn wire(self) -> Version {
        match self {
            HttpVersion::Http1 => Version::HTTP_11,
            HttpVersion::Http2 => Version::HTTP_2,
        }
    }
}

/// What a server listener accepts on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    Only(HttpVersion),
    /// HTTP/1.1 or HTTP/2 with prior knowledge (h2c), told apart by the client's preface.
    Either,
}

/// The request's authority: the URI's (HTTP/2's `:authority`, or an absolute-form HTTP/1.1
/// target), else the `Host` header.
pub fn authority(parts: &http::request::Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// Puts a request in the form `version` sends: HTTP/1.1 in origin form with a `Host` header;
/// HTTP/2 in absolute form (`:scheme`, `:authority`, `:path`) without one, since `Host` and
/// `:authority` must not disagree and gRPC servers read `:authority`.
pub fn shape_request(parts: &mut http::request::Parts, version: HttpVersion, scheme: Scheme) {
    // The common case, HTTP/1.1 already in origin form with its Host: nothing to rebuild.
    if version == HttpVersion::Http1
        && parts.uri.authority().is_none()
        && parts.headers.contains_key(HOST)
    {
        parts.version = Version::HTTP_11;
        return;
    }
    let authority = authority(parts);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.version = version.wire();
    match version {
        HttpVersion::Http1 => {
            if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
                parts.headers.insert(HOST, v);
            }
            parts.uri = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
        }
        HttpVersion::Http2 => {
            let absolute = authority
                .and_then(|a| a.parse::<Authority>().ok())
                .and_then(|a| {
                    Uri::builder()
                        .scheme(scheme)
                        .authority(a)
                        .path_and_query(path.as_str())
                        .build()
                        .ok()
                });
            match absolute {
                Some(uri) => {
                    parts.headers.remove(HOST);
                    parts.uri = uri;
                }
                None => parts.uri = path.parse().unwrap_or_else(|_| Uri::from_static("/")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>, version: Version) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri).version(version);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn http2_and_grpc_ports_speak_http2_and_http_ports_keep_http1() {
        assert_eq!(
            HttpVersion::for_protocol(Protocol::Grpc),
            HttpVersion::Http2
        );
        assert_eq!(
            HttpVersion::for_protocol(Protocol::Http2),
            HttpVersion::Http2
        );
        assert_eq!(
            HttpVersion::for_protocol(Protocol::Http),
            HttpVersion::Http1
        );
    }

    #[test]
    fn http2_offers_h2_then_http1_and_http1_offers_only_http1() {
        assert_eq!(
            HttpVersion::Http2.offered(),
            vec![b"h2".to_vec(), b"weft/http1".to_vec()]
        );
        assert_eq!(HttpVersion::Http1.offered(), vec![b"weft/http1".to_vec()]);
    }

    #[test]
    fn only_h2_negotiates_http2() {
        assert_eq!(HttpVersion::negotiated(Some(b"h2")), HttpVersion::Http2);
        assert_eq!(
            HttpVersion::negotiated(Some(b"weft/http1")),
            HttpVersion::Http1
        );
        assert_eq!(HttpVersion::negotiated(None), HttpVersion::Http1);
    }

    #[test]
    fn an_http1_request_becomes_absolute_form_http2_without_host() {
        let mut parts = request("/pkg.Svc/Call?x=1", Some("api.b:8080"), Version::HTTP_11);
        shape_request(&mut parts, HttpVersion::Http2, Scheme::HTTPS);
        assert_eq!(parts.uri, "https://api.b:8080/pkg.Svc/Call?x=1");
        assert_eq!(parts.version, Version::HTTP_2);
        assert!(parts.headers.get(HOST).is_none());
    }

    #[test]
    fn an_http2_request_becomes_origin_form_http1_with_host() {
        let mut parts = request("http://api.b:8080/items", None, Version::HTTP_2);
        shape_request(&mut parts, HttpVersion::Http1, Scheme::HTTP);
        assert_eq!(parts.uri, "/items");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers[HOST], "api.b:8080");
    }

    #[test]
    fn without_any_authority_http2_keeps_the_path() {
        let mut parts = request("/x", None, Version::HTTP_11);
        shape_request(&mut parts, HttpVersion::Http2, Scheme::HTTP);
        assert_eq!(parts.uri, "/x");
    }
}
