//! The HTTP/1.1 client against scripted peers on loopback: framing, reuse, interim responses,
//! request encoding, and responses split across reads at every point.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::body::full;
use crate::breaker::{Breaker, Limit};

/// What the scripted peer does once it has answered.
enum Peer {
    /// Keeps its end open until the test is done with it.
    Stays,
    /// Closes at once.
    Closes,
}

/// A connection whose peer reads one request head and answers `wire`; the peer hands back the
/// head it read and, if it stays, its end of the connection.
async fn answering(
    wire: &'static [u8],
    then: Peer,
) -> (H1, tokio::task::JoinHandle<(String, Option<TcpStream>)>) {
    let (conn, mut server) = pair().await;
    let peer = tokio::spawn(async move {
        let head = read_head(&mut server).await;
        server.write_all(wire).await.unwrap();
        (head, matches!(then, Peer::Stays).then_some(server))
    });
    (conn, peer)
}

async fn pair() -> (H1, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let slot = Arc::new(Breaker::new(None))
        .admit(Limit::Connections)
        .unwrap();
    (H1::new(Box::new(client), slot), server)
}

fn get(path: &str) -> http::Request<Body> {
    http::Request::get(path)
        .header("host", "app")
        .body(full(Bytes::new()))
        .unwrap()
}

/// Reads one request head (to the blank line) and returns it.
async fn read_head(server: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        assert_eq!(
            server.read(&mut byte).await.unwrap(),
            1,
            "peer closed mid-head"
        );
        seen.push(byte[0]);
    }
    String::from_utf8(seen).unwrap()
}

async fn body_of(resp: http::Response<Body>) -> (Bytes, Option<http::HeaderMap>) {
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn a_length_framed_response_returns_its_connection_for_the_next_request() {
    let (conn, mut server) = pair().await;
    let idle = Idle::default();
    let peer = tokio::spawn(async move {
        let first = read_head(&mut server).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello")
            .await
            .unwrap();
        let second = read_head(&mut server).await;
        server
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        (first, second)
    });
    let resp = conn.send(get("/one?x=1"), idle.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-a"], "1");
    assert_eq!(body_of(resp).await.0, "hello");
    let mut again = idle
        .lock()
        .unwrap()
        .pop()
        .expect("back in the pool once its body ended");
    assert!(again.reusable());
    let resp = again.send(get("/two"), idle.clone()).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.body().is_end_stream());
    // An empty body is over at once: the connection is back before anyone reads it.
    assert_eq!(idle.lock().unwrap().len(), 1);
    let (first, second) = peer.await.unwrap();
    assert!(first.starts_with("GET /one?x=1 HTTP/1.1\r\n"), "{first}");
    assert!(first.contains("host: app\r\n"), "{first}");
    assert!(
        !first.contains("content-length"),
        "a GET says nothing of a body: {first}"
    );
    assert!(second.starts_with("GET /two HTTP/1.1\r\n"), "{second}");
}

#[tokio::test]
async fn a_chunked_response_is_decoded_with_its_trailers() {
    let (conn, mut server) = pair().await;
    let idle = Idle::default();
    let peer = tokio::spawn(async move {
        read_head(&mut server).await;
        server
            .write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 31\r\n\r\n",
            )
            .await
            .unwrap();
        server
    });
    let resp = conn.send(get("/"), idle.clone()).await.unwrap();
    let (body, trailers) = body_of(resp).await;
    assert_eq!(body, "helloabcdefghijklmnopqrstuvwxyz");
    assert_eq!(trailers.unwrap()["x-sum"], "31");
    assert_eq!(
        idle.lock().unwrap().len(),
        1,
        "a clean chunked end keeps the connection"
    );
    drop(peer.await.unwrap());
}

#[tokio::test]
async fn a_response_read_to_close_is_delivered_and_its_connection_not_kept() {
    let (conn, _peer) = answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", Peer::Closes).await;
    let idle = Idle::default();
    let resp = conn.send(get("/"), idle.clone()).await.unwrap();
    assert_eq!(body_of(resp).await.0, "until the end");
    assert!(idle.lock().unwrap().is_empty());
}

#[tokio::test]
async fn doubtful_responses_are_delivered_but_never_reused() {
    let cases: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        // Transfer-Encoding wins over Content-Length, and the connection is not trusted after.
        b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        // Bytes after the response's end: whatever they are, they are not the next answer.
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
    ];
    for wire in cases {
        let (conn, peer) = answering(wire, Peer::Stays).await;
        let idle = Idle::default();
        let resp = conn.send(get("/"), idle.clone()).await.unwrap();
        assert_eq!(
            body_of(resp).await.0,
            "ok",
            "{}",
            String::from_utf8_lossy(wire)
        );
        assert!(
            idle.lock().unwrap().is_empty(),
            "{}",
            String::from_utf8_lossy(wire)
        );
        drop(peer.await.unwrap());
    }
}

#[tokio::test]
async fn a_keep_alive_http_1_0_response_is_reused() {
    let (conn, peer) = answering(
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 2\r\n\r\nok",
        Peer::Stays,
    )
    .await;
    let idle = Idle::default();
    let resp = conn.send(get("/"), idle.clone()).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_10);
    assert_eq!(body_of(resp).await.0, "ok");
    assert_eq!(idle.lock().unwrap().len(), 1);
    drop(peer.await.unwrap());
}

#[tokio::test]
async fn unframeable_responses_are_errors() {
    let cases: [(&[u8], &str); 4] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            "conflicting",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
            "bad content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\nok",
            "conflicting",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            "101",
        ),
    ];
    for (wire, says) in cases {
        let (conn, mut server) = pair().await;
        tokio::spawn(async move {
            read_head(&mut server).await;
            server.write_all(wire).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let err = conn.send(get("/"), Idle::default()).await.unwrap_err();
        assert!(
            err.to_string().contains(says),
            "{err} for {}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[tokio::test]
async fn agreeing_repeated_lengths_are_one_length() {
    let (conn, _peer) = answering(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2, 2\r\n\r\nok",
        Peer::Closes,
    )
    .await;
    let resp = conn.send(get("/"), Idle::default()).await.unwrap();
    assert_eq!(body_of(resp).await.0, "ok");
}

#[tokio::test]
async fn interim_responses_are_skipped_and_head_responses_have_no_body() {
    let (conn, peer) = answering(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
        Peer::Stays,
    )
    .await;
    let idle = Idle::default();
    let req = http::Request::head("/")
        .header("host", "app")
        .body(full(Bytes::new()))
        .unwrap();
    let resp = conn.send(req, idle.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "1234");
    assert_eq!(body_of(resp).await.0, "");
    assert_eq!(idle.lock().unwrap().len(), 1);
    assert!(peer.await.unwrap().0.starts_with("HEAD / HTTP/1.1\r\n"));
}

#[tokio::test]
async fn a_body_of_known_length_goes_with_its_length_and_a_stream_goes_chunked() {
    // Known length: the caller's own content-length is replaced by the body's.
    let (conn, mut server) = pair().await;
    let peer = tokio::spawn(async move {
        let head = read_head(&mut server).await;
        let mut body = [0u8; 4];
        server.read_exact(&mut body).await.unwrap();
        server
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        (head, body)
    });
    let req = http::Request::post("/")
        .header("host", "app")
        .header("content-length", "4")
        .body(full(Bytes::from_static(b"data")))
        .unwrap();
    assert_eq!(conn.send(req, Idle::default()).await.unwrap().status(), 204);
    let (head, body) = peer.await.unwrap();
    assert_eq!(head.matches("content-length").count(), 1, "{head}");
    assert!(head.contains("content-length: 4\r\n"), "{head}");
    assert_eq!(&body, b"data");

    // Unknown length: chunked, trailers after the last chunk.
    let (conn, mut server) = pair().await;
    let peer = tokio::spawn(async move {
        let head = read_head(&mut server).await;
        let mut wire = Vec::new();
        while !wire.ends_with(b"0\r\nx-t: 1\r\n\r\n") {
            let mut buf = [0u8; 256];
            let n = server.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the body's end: {wire:?}");
            wire.extend_from_slice(&buf[..n]);
        }
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        (head, wire)
    });
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-t", http::HeaderValue::from_static("1"));
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::data(Bytes::new())),
        Ok(Frame::data(Bytes::from(vec![b'z'; 20]))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = http::Request::post("/up")
        .header("host", "app")
        .body(Frames(frames.into(), false).boxed())
        .unwrap();
    assert_eq!(conn.send(req, Idle::default()).await.unwrap().status(), 200);
    let (head, wire) = peer.await.unwrap();
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    let expected = format!(
        "3\r\nabc\r\n14\r\n{}\r\n0\r\nx-t: 1\r\n\r\n",
        "z".repeat(20)
    );
    assert_eq!(String::from_utf8(wire).unwrap(), expected);
}

/// A body of unknown length that yields each frame after a pause, as one arriving from a
/// caller does.
struct Frames(
    std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>,
    bool,
);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.1 = !this.1;
        if this.1 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(this.0.pop_front())
    }
}

#[tokio::test]
async fn an_answer_before_the_request_body_is_taken_and_the_connection_dropped() {
    let (conn, mut server) = pair().await;
    let idle = Idle::default();
    tokio::spawn(async move {
        read_head(&mut server).await;
        // Refuses without reading the body, then goes.
        server
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbig")
            .await
            .unwrap();
        drop(server);
    });
    let req = http::Request::post("/")
        .header("host", "app")
        .body(full(Bytes::from(vec![b'x'; 8 << 20])))
        .unwrap();
    let resp = conn.send(req, idle.clone()).await.unwrap();
    assert_eq!(resp.status(), 413);
    // The body may or may not arrive before the reset the unread upload provokes.
    let _ = resp.into_body().collect().await;
    assert!(idle.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_connection_the_peer_closed_is_not_reusable() {
    let (mut conn, server) = pair().await;
    assert!(conn.reusable());
    drop(server);
    // The FIN takes a moment to arrive on loopback.
    let mut tries = 0;
    while conn.reusable() {
        tries += 1;
        assert!(tries < 200, "a closed connection still looks reusable");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_sweep_lets_go_of_idle_connections_their_peers_closed() {
    let idle = Idle::default();
    let (open, _kept) = pair().await;
    let (closed, gone) = pair().await;
    idle.lock().unwrap().extend([open, closed]);
    drop(gone);
    let mut tries = 0;
    loop {
        sweep(&idle);
        if idle.lock().unwrap().len() == 1 {
            break;
        }
        tries += 1;
        assert!(tries < 200, "the closed one is still kept");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(idle.lock().unwrap()[0].reusable(), "the open one stays");
}

#[tokio::test]
async fn a_truncated_body_is_an_error_and_an_empty_close_is_closed() {
    let (conn, _peer) = answering(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        Peer::Closes,
    )
    .await;
    let resp = conn.send(get("/"), Idle::default()).await.unwrap();
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(err.to_string().contains("middle of a response"), "{err}");

    let (conn, mut server) = pair().await;
    tokio::spawn(async move {
        read_head(&mut server).await;
    });
    let err = conn.send(get("/"), Idle::default()).await.unwrap_err();
    assert!(matches!(err, H1Error::Closed), "{err}");
}

#[tokio::test]
async fn a_head_over_the_limit_is_refused() {
    let (conn, mut server) = pair().await;
    tokio::spawn(async move {
        read_head(&mut server).await;
        let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
        while wire.len() <= MAX_HEAD {
            wire.extend_from_slice(format!("x-pad: {}\r\n", "p".repeat(900)).as_bytes());
        }
        let _ = server.write_all(&wire).await;
        let _ = server.read(&mut [0u8; 1]).await;
    });
    let err = conn.send(get("/"), Idle::default()).await.unwrap_err();
    assert!(
        matches!(err, H1Error::HeadTooLarge | H1Error::Head(_)),
        "{err}"
    );
}

/// A response of `parts` chunks, written in pieces cut at `cuts`, decodes to the same body
/// whichever reads its bytes arrive in.
fn chunked_wire(parts: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
    let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    let mut body = Vec::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        wire.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        wire.extend_from_slice(p);
        wire.extend_from_slice(b"\r\n");
        body.extend_from_slice(p);
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    (wire, body)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_response_decodes_the_same_however_its_bytes_are_split(
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let (wire, body) = chunked_wire(&parts);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = runtime.block_on(async move {
            let (conn, mut server) = pair().await;
            tokio::spawn(async move {
                read_head(&mut server).await;
                let mut at = 0;
                for cut in cuts.iter().cycle() {
                    if at >= wire.len() {
                        break;
                    }
                    let end = (at + cut).min(wire.len());
                    server.write_all(&wire[at..end]).await.unwrap();
                    server.flush().await.unwrap();
                    tokio::task::yield_now().await;
                    at = end;
                }
                server
            });
            let idle = Idle::default();
            let resp = conn.send(get("/"), idle.clone()).await.unwrap();
            let got = body_of(resp).await.0;
            let kept = idle.lock().unwrap().len();
            (got, kept)
        });
        prop_assert_eq!(&got.0[..], &body[..]);
        prop_assert_eq!(got.1, 1);
    }
}

/// A body that says it has `declared` bytes, yields `sent`, waits a moment, then ends (or
/// fails, with `fail`): a caller whose body breaks its own framing.
struct Lying {
    declared: u64,
    sent: Option<Bytes>,
    pause: Pin<Box<tokio::time::Sleep>>,
    fail: bool,
}

impl Lying {
    fn new(declared: u64, sent: &'static [u8], fail: bool) -> Lying {
        Lying {
            declared,
            sent: Some(Bytes::from_static(sent)),
            pause: Box::pin(tokio::time::sleep(std::time::Duration::from_millis(50))),
            fail,
        }
    }
}

impl hyper::body::Body for Lying {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.sent.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        ready!(std::future::Future::poll(this.pause.as_mut(), cx));
        if this.fail {
            return Poll::Ready(Some(Err("the caller went away".into())));
        }
        Poll::Ready(None)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.declared)
    }
}

#[tokio::test]
async fn an_early_answer_to_a_request_whose_body_broke_never_pools_the_connection() {
    let (conn, peer) = answering(
        b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
        Peer::Stays,
    )
    .await;
    let idle = Idle::default();
    let body = Lying::new(10, b"abc", false);
    let req = http::Request::post("/")
        .header("host", "app")
        .body(body.boxed())
        .unwrap();
    let resp = conn.send(req, idle.clone()).await.unwrap();
    assert_eq!(resp.status(), 401);
    let _ = resp.into_body().collect().await;
    assert!(
        idle.lock().unwrap().is_empty(),
        "7 body bytes are still owed on it"
    );
    drop(peer.await.unwrap());
}

#[tokio::test]
async fn a_caller_body_failing_after_an_early_answer_fails_the_answer() {
    let (conn, mut server) = pair().await;
    tokio::spawn(async move {
        read_head(&mut server).await;
        // Answers at once, but will only finish once it has the whole upload.
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe")
            .await
            .unwrap();
        let _ = server.read(&mut [0u8; 64]).await;
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    });
    let body = Lying::new(10, b"abc", true);
    let req = http::Request::post("/")
        .header("host", "app")
        .body(body.boxed())
        .unwrap();
    let resp = conn.send(req, Idle::default()).await.unwrap();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        resp.into_body().collect(),
    )
    .await
    .expect("the failed upload ends the exchange instead of waiting on the peer")
    .unwrap_err();
    assert!(err.to_string().contains("went away"), "{err}");
}

#[tokio::test]
async fn a_get_with_a_body_of_unknown_length_sends_no_body() {
    let (conn, mut server) = pair().await;
    let peer = tokio::spawn(async move {
        let head = read_head(&mut server).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut more = [0u8; 16];
        let extra = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            server.read(&mut more),
        )
        .await;
        (head, extra.ok().map(|r| r.unwrap()))
    });
    let req = http::Request::get("/")
        .header("host", "app")
        .body(Frames(vec![].into(), false).boxed())
        .unwrap();
    assert_eq!(conn.send(req, Idle::default()).await.unwrap().status(), 200);
    let (head, extra) = peer.await.unwrap();
    assert!(
        !head.contains("transfer-encoding") && !head.contains("content-length"),
        "{head}"
    );
    assert!(
        matches!(extra, None | Some(0)),
        "nothing follows the head: {extra:?}"
    );
}

#[tokio::test]
async fn transfer_encoding_in_an_http_1_0_response_reads_to_the_close() {
    let (conn, _peer) = answering(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Peer::Closes).await;
    let idle = Idle::default();
    let resp = conn.send(get("/"), idle.clone()).await.unwrap();
    assert_eq!(
        body_of(resp).await.0,
        "2\r\nok\r\n0\r\n\r\n",
        "not decoded as chunks"
    );
    assert!(idle.lock().unwrap().is_empty());
}

#[test]
fn chunk_size_lines_are_parsed_strictly() {
    let ok = |line: &[u8], size: u64, used: usize| {
        let parsed = chunk_size(line).unwrap().unwrap();
        assert_eq!(
            (parsed.size, parsed.used),
            (size, used),
            "{}",
            String::from_utf8_lossy(line)
        );
    };
    ok(b"5\r\nhello", 5, 3);
    ok(b"1A;name=v\r\n", 26, 11);
    ok(b"0 ;x\r\n", 0, 6);
    ok(b"ffffffffffffffff\r\n", u64::MAX, 18);
    for bad in [
        &b"\r\n"[..],
        b";x\r\n",
        b"5;a\nb\r\nhello",
        b"5\n",
        b"5;a\rb\r\n",
        b"5x\r\n",
        b"10000000000000000\r\n",
    ] {
        assert!(chunk_size(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
    assert_eq!(chunk_size(b"5;ext").unwrap(), None, "incomplete");
    assert!(chunk_size(&vec![b'1'; MAX_CHUNK_LINE + 1]).is_err());
}

#[tokio::test]
async fn a_body_of_endless_chunk_extensions_is_cut_off() {
    let (conn, mut server) = pair().await;
    tokio::spawn(async move {
        read_head(&mut server).await;
        let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..8 {
            wire.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(3000)).as_bytes());
        }
        let _ = server.write_all(&wire).await;
        let _ = server.read(&mut [0u8; 1]).await;
    });
    let resp = conn.send(get("/"), Idle::default()).await.unwrap();
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(err.to_string().contains("extension"), "{err}");
}
