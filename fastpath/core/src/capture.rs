//! Transparent capture: the app's outbound TCP, redirected here by iptables, sent on by the
//! connection's original destination (SO_ORIGINAL_DST).
//!
//! The target maps original destinations to upstreams (`Listeners::original_destinations`).
//! A destination mapped to a TCP upstream is forwarded without reading a byte, so protocols
//! where the server speaks first (databases, SMTP) work. Anything else is sniffed: HTTP/1.x,
//! and HTTP/2 with prior knowledge (h2c, as gRPC clients speak it), go through the outbound
//! HTTP path (routed by authority, falling back to the upstream the original destination maps
//! to); everything else is refused, as REGISTRY_ONLY demands.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::config::EgressProtocol;
use crate::http::{accept_loop, serve_connection};
use crate::protocol::{HttpVersion, Serve};
use crate::state::{Active, Shared};
use crate::tcp::Conn;
use crate::telemetry::TcpKey;
use crate::tunables::SNIFF_TIMEOUT;

/// Enough bytes to tell an HTTP/1 request line by its method ("OPTIONS " is the longest) and
/// HTTP/2 by the start of its preface.
const SNIFF_BYTES: usize = H2_PREFACE.len();
/// The start of the HTTP/2 client connection preface (RFC 9113 §3.4) up to its blank line:
/// what a client with prior knowledge (h2c) sends first. It is not an HTTP/1 request: "PRI"
/// is no method.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";
/// HTTP/1.1 methods (RFC 9110 and PATCH).
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// The `destination` label of refused captured connections in the TCP counters: a fixed
/// name, because an address an app may choose freely would make the metrics unbounded.
pub const UNREGISTERED: &str = "unregistered";
/// The label of connections that were not redirected, or were redirected to this listener.
pub const LOOP: &str = "capture-loop";

/// What a captured connection's original destination says to do, before any byte is read.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan<'a> {
    /// A mesh TCP upstream or a TCP/TLS ExternalService, by its `Listeners.outboundTcp` key.
    Tcp(&'a str),
    /// Read the first bytes. HTTP/1 is routed by Host, else to this HTTP upstream key if any.
    Sniff(Option<&'a str>),
    /// The original destination is the capture listener itself: not redirected, or a loop.
    Loop,
}

/// Decides by the original destination alone. `is_tcp` says whether an upstream key names a
/// TCP upstream (or a non-HTTP ExternalService) at the config in force.
pub fn plan<'a>(
    original: SocketAddr,
    local: SocketAddr,
    map: &'a HashMap<SocketAddr, String>,
    is_tcp: impl Fn(&str) -> bool,
) -> Plan<'a> {
    let original = canonical(original);
    if original == canonical(local) {
        return Plan::Loop;
    }
    match map.get(&original) {
        Some(key) if is_tcp(key) => Plan::Tcp(key),
        mapped => Plan::Sniff(mapped.map(String::as_str)),
    }
}

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Http1,
    /// A TLS handshake record: the app's own TLS, told apart by its ClientHello's SNI.
    Tls,
    /// HTTP/2 with prior knowledge.
    Http2,
    Other,
    /// Too few bytes to tell yet.
    NeedMore,
}

pub fn sniff(first: &[u8]) -> Sniffed {
    if crate::sni::looks_like_tls(first) {
        return Sniffed::Tls;
    }
    if first.starts_with(H2_PREFACE) {
        return Sniffed::Http2;
    }
    let mut could_be = H2_PREFACE.starts_with(first);
    for method in METHODS {
        if first.starts_with(method) {
            return Sniffed::Http1;
        }
        could_be |= method.starts_with(first);
    }
    if could_be && first.len() < SNIFF_BYTES {
        Sniffed::NeedMore
    } else {
        Sniffed::Other
    }
}

/// An IPv4 address seen through a dual-stack socket (`::ffff:a.b.c.d`) as the IPv4 address,
/// so map keys and the loop check compare like with like.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The destination the app connected to before iptables redirected it here.
pub fn original_dst(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    // socket2 wraps getsockopt(SOL_IP, SO_ORIGINAL_DST) and (SOL_IPV6, IP6T_SO_ORIGINAL_DST),
    // so this crate keeps `forbid(unsafe_code)`. IPv4 on a dual-stack socket is tracked by
    // the IPv4 conntrack table, so it is asked with the IPv4 option.
    let addr = match canonical(tcp.local_addr()?) {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket()
        .map(canonical)
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    accept_loop(listener, shutdown, move |tcp| {
        connection(shared.clone(), tcp)
    })
    .await;
}

fn is_tcp(active: &Active, key: &str) -> bool {
    active
        .egress
        .get(key)
        .is_some_and(|(d, _)| d.protocol != EgressProtocol::Http)
        || active
            .config
            .outbound
            .tcp
            .iter()
            .any(|t| format!("{}:{}", t.service, t.port) == key)
}

async fn connection(shared: Arc<Shared>, tcp: TcpStream) {
    let active = shared.active.load_full();
    let (Ok(original), Ok(local)) = (original_dst(&tcp), tcp.local_addr()) else {
        // No conntrack entry: nothing redirected this connection, so it has nowhere to go.
        return refuse(&shared, &active, LOOP, 0);
    };
    let map = &shared.listeners.original_destinations;
    match plan(original, local, map, |k| is_tcp(&active, k)) {
        Plan::Loop => refuse(&shared, &active, LOOP, original.port()),
        Plan::Tcp(key) => {
            crate::outbound::tcp_connection(shared.clone(), key.to_owned(), tcp).await
        }
        Plan::Sniff(fallback) => {
            let version = match first_bytes(&tcp).await {
                Sniffed::Tls => return tls(&shared, &active, original, tcp).await,
                Sniffed::Http1 => HttpVersion::Http1,
                Sniffed::Http2 => HttpVersion::Http2,
                Sniffed::Other | Sniffed::NeedMore => {
                    return refuse(&shared, &active, UNREGISTERED, original.port())
                }
            };
            let fallback = fallback.map(str::to_owned);
            let stop = shared.shutdown.clone();
            let shared = shared.clone();
            let peer = tcp.peer_addr().ok().map(|a| crate::hash::PeerIp(a.ip()));
            serve_connection(tcp, Serve::Only(version), stop, move |mut req| {
                if let Some(peer) = peer {
                    req.extensions_mut().insert(peer);
                }
                crate::outbound::request(shared.clone(), req, fallback.clone())
            })
            .await;
        }
    }
}

/// Sniffs the first bytes without consuming them, for at most [`SNIFF_TIMEOUT`].
async fn first_bytes(tcp: &TcpStream) -> Sniffed {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0u8; SNIFF_BYTES];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Sniffed::Other, // silent, closed or failed
        };
        match sniff(&buf[..n]) {
            // `peek` returns at once while the bytes it saw are unread: wait for more.
            Sniffed::NeedMore if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Sniffed::NeedMore => return Sniffed::Other,
            found => return found,
        }
    }
}

/// The app's own TLS: passed through, unterminated, to the ExternalService its ClientHello
/// names if this workload may reach it on this port, else refused. The connection goes to the
/// declared host by name, never to the address the app dialed, so a forged SNI reaches only
/// what the intent declared.
async fn tls(shared: &Arc<Shared>, active: &Active, original: SocketAddr, tcp: TcpStream) {
    let name = client_hello_name(&tcp).await;
    let allowed = name.as_ref().ok().and_then(|n| {
        let key = format!("{n}:{}", original.port());
        let (dest, _) = active.egress.get(&key)?;
        (dest.protocol == EgressProtocol::Tls).then_some(key)
    });
    match (allowed, name) {
        (Some(key), Ok(name)) => {
            crate::outbound::tls_connection(shared.clone(), key, tcp, name).await
        }
        (_, name) => {
            let mut conn = refusal(active, UNREGISTERED, original.port());
            conn.server_name = Some(name.unwrap_or_default());
            conn.denied(&shared.telemetry);
        }
    }
}

/// The server name of the ClientHello waiting on `tcp`, peeked (not consumed) for at most
/// [`SNIFF_TIMEOUT`].
async fn client_hello_name(tcp: &TcpStream) -> Result<String, crate::sni::SniError> {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = vec![0u8; 5 + (1 << 14)];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err(crate::sni::SniError::Incomplete),
        };
        match crate::sni::server_name(&buf[..n]) {
            Err(crate::sni::SniError::Incomplete) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            found => return found,
        }
    }
}

fn refusal(active: &Active, destination: &str, port: u16) -> Conn {
    let key = TcpKey {
        direction: "outbound",
        source: active.config.workload.spiffe_id.clone(),
        destination: destination.to_owned(),
        port,
    };
    Conn::new(key, destination, &active.config.revision)
}

/// Closes a captured connection that has nowhere it may go, and counts and logs it.
fn refuse(shared: &Shared, active: &Active, destination: &str, port: u16) {
    refusal(active, destination, port).denied(&shared.telemetry);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn http1_methods_and_the_http2_preface_are_recognised() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Http1);
        assert_eq!(sniff(b"OPTIONS * HTTP/1.1"), Sniffed::Http1);
        assert_eq!(
            sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"),
            Sniffed::Http2
        );
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n"), Sniffed::NeedMore);
        assert_eq!(sniff(b"PRI * HTTP/1.1\r\n\r\n"), Sniffed::Other);
        assert_eq!(sniff(b"\x16\x03\x01\x02\x00"), Sniffed::Tls); // a TLS ClientHello
        assert_eq!(sniff(b"*1\r\n$4\r\nPING"), Sniffed::Other); // redis
        assert_eq!(sniff(b"get / HTTP/1.1"), Sniffed::Other); // methods are case-sensitive
    }

    #[test]
    fn a_prefix_of_a_method_waits_for_more_but_not_forever() {
        assert_eq!(sniff(b"G"), Sniffed::NeedMore);
        assert_eq!(sniff(b"OPTION"), Sniffed::NeedMore);
        assert_eq!(sniff(b"GETX"), Sniffed::Other);
        assert_eq!(sniff(b""), Sniffed::NeedMore);
    }

    #[test]
    fn the_original_destination_picks_tcp_sniffing_or_a_loop() {
        let map: HashMap<SocketAddr, String> = [
            (addr("10.0.0.5:5432"), "c/db:5432".to_owned()),
            (addr("10.0.0.6:8080"), "b/api:8080".to_owned()),
        ]
        .into();
        let tcp = |k: &str| k == "c/db:5432";
        let local = addr("127.0.0.1:15001");
        assert_eq!(
            plan(addr("10.0.0.5:5432"), local, &map, tcp),
            Plan::Tcp("c/db:5432")
        );
        assert_eq!(
            plan(addr("10.0.0.6:8080"), local, &map, tcp),
            Plan::Sniff(Some("b/api:8080"))
        );
        assert_eq!(
            plan(addr("192.0.2.1:80"), local, &map, tcp),
            Plan::Sniff(None)
        );
        assert_eq!(plan(local, local, &map, tcp), Plan::Loop);
    }

    #[test]
    fn a_tcp_key_that_left_the_config_is_sniffed_not_forwarded() {
        let map: HashMap<SocketAddr, String> =
            [(addr("10.0.0.5:5432"), "c/db:5432".to_owned())].into();
        assert_eq!(
            plan(addr("10.0.0.5:5432"), addr("127.0.0.1:1"), &map, |_| false),
            Plan::Sniff(Some("c/db:5432"))
        );
    }

    #[test]
    fn ipv4_through_a_dual_stack_socket_compares_as_ipv4() {
        let map: HashMap<SocketAddr, String> =
            [(addr("10.0.0.5:5432"), "c/db:5432".to_owned())].into();
        assert_eq!(
            plan(
                addr("[::ffff:10.0.0.5]:5432"),
                addr("[::]:15001"),
                &map,
                |_| true
            ),
            Plan::Tcp("c/db:5432")
        );
        assert_eq!(
            plan(
                addr("[::ffff:127.0.0.1]:15001"),
                addr("127.0.0.1:15001"),
                &map,
                |_| true
            ),
            Plan::Loop
        );
    }
}
