//! Outbound timeouts and retries through real sidecars on loopback, on a paused clock: a
//! per-try timeout, the route timeout over all tries, connect failures with passive ejection,
//! and the retry budget. Each test asserts the time the request took on that clock.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::app::App;
use common::mesh::{
    answered_by, api_endpoint, cluster, dead_addr, tries, web_config, web_sidecar, Client, Pki,
};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Up to this much back-off is added before each retry (25 ms, with jitter, for the first).
const FIRST_BACK_OFF: Duration = Duration::from_millis(25);

fn route(retries: Value, timeout_ms: Option<u64>) -> Value {
    json!([{
        "name": "b/api#0",
        "matches": [],
        "backends": [{"cluster": "b/api", "weight": 100}],
        "timeoutMs": timeout_ms,
        "retries": retries,
    }])
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_moves_the_request_to_another_endpoint() {
    let pki = Pki::new();
    let slow = api_endpoint(
        App::start_with_delay("slow", Duration::from_secs(10)).await,
        &pki.api,
    );
    let fast = api_endpoint(App::start("fast").await, &pki.api);
    let retries = json!({"attempts": 2, "perTryTimeoutMs": 100, "retryOn": ["gateway-error"]});
    let clusters = json!([cluster("b/api", "ROUND_ROBIN", &[&slow.addr, &fast.addr])]);
    let (web, outbound) = web_sidecar(&pki, &web_config(route(retries, None), clusters));
    let mut client = Client::connect(outbound).await;

    let t0 = Instant::now();
    let reply = client.get("/api/x").await;
    let took = t0.elapsed();

    assert_eq!(reply.0, 200, "{reply:?}");
    assert_eq!(answered_by(&reply), "fast");
    assert_eq!((slow.app.hits(), fast.app.hits()), (1, 1));
    assert_eq!(tries(&web), [2]);
    let per_try = Duration::from_millis(100);
    assert!(
        per_try <= took && took <= per_try + FIRST_BACK_OFF + Duration::from_millis(2),
        "took {took:?}: one per-try timeout, one back-off, one fast answer"
    );
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_the_request_even_with_retries_left() {
    let pki = Pki::new();
    let slow = api_endpoint(
        App::start_with_delay("slow", Duration::from_secs(10)).await,
        &pki.api,
    );
    let retries = json!({"attempts": 5, "perTryTimeoutMs": 200, "retryOn": ["gateway-error"]});
    let clusters = json!([cluster("b/api", "ROUND_ROBIN", &[&slow.addr])]);
    let (web, outbound) = web_sidecar(&pki, &web_config(route(retries, Some(300)), clusters));
    let mut client = Client::connect(outbound).await;

    let t0 = Instant::now();
    let (status, body) = client.get("/api/x").await;
    let took = t0.elapsed();

    assert_eq!(status, 504, "{body}");
    assert_eq!(body, "weft: b/api timed out after 2 tries\n");
    assert_eq!(
        tries(&web),
        [2],
        "the second try is cut short by the route's deadline"
    );
    assert!(
        Duration::from_millis(300) <= took && took <= Duration::from_millis(302),
        "took {took:?}, the route timeout is 300 ms"
    );
    // Envoy's flag for a request its route's timeout cut short
    let logged = web.telemetry().drain_access_log(usize::MAX);
    assert_eq!(
        logged
            .iter()
            .map(|l| (l.status, l.response_flags))
            .collect::<Vec<_>>(),
        [(504, "UT")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_is_retried_elsewhere_and_the_endpoint_skipped_until_it_may_be_back() {
    let pki = Pki::new();
    let live = api_endpoint(App::start("live").await, &pki.api);
    let dead = dead_addr();
    let retries = json!({"attempts": 2, "retryOn": ["connect-failure"]});
    let clusters = json!([cluster("b/api", "ROUND_ROBIN", &[&dead, &live.addr])]);
    let (web, outbound) = web_sidecar(&pki, &web_config(route(retries, None), clusters));
    let mut client = Client::connect(outbound).await;

    let reply = client.get("/api/x").await;
    assert_eq!((reply.0, answered_by(&reply)), (200, "live"), "{reply:?}");
    assert_eq!(
        tries(&web),
        [2],
        "refused by the dead endpoint, answered by the live one"
    );
    for _ in 0..4 {
        assert_eq!(client.get("/api/x").await.0, 200);
    }
    assert_eq!(
        tries(&web),
        [1, 1, 1, 1],
        "the dead endpoint is ejected: no more tries on it"
    );

    // Ejection is a back-off, not a verdict: once it has passed, the endpoint is tried again.
    tokio::time::sleep(fastpath::tunables::EJECT_BASE).await;
    for _ in 0..2 {
        assert_eq!(client.get("/api/x").await.0, 200);
    }
    assert!(
        tries(&web).contains(&2),
        "the dead endpoint got another chance"
    );
    assert_eq!(live.app.hits(), 7);
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_stops_retries_once_spent_and_refills_over_time() {
    let pki = Pki::new();
    let failing = api_endpoint(App::start("failing").await, &pki.api);
    let retries = json!({
        "attempts": 3,
        "retryOn": ["gateway-error"],
        "budget": {"percent": 1.0, "minRetriesPerSecond": 1},
    });
    let clusters = json!([cluster("b/api", "ROUND_ROBIN", &[&failing.addr])]);
    let (web, outbound) = web_sidecar(&pki, &web_config(route(retries, None), clusters));
    let mut client = Client::connect(outbound).await;

    for _ in 0..3 {
        assert_eq!(client.get("/status/503").await.0, 503);
    }
    // The bucket starts with one retry (a second's minimum); 1% of three requests adds little.
    assert_eq!(tries(&web), [2, 1, 1]);
    assert_eq!(failing.app.hits(), 4);

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(client.get("/status/503").await.0, 503);
    assert_eq!(
        tries(&web),
        [2],
        "a second later, one more retry is allowed"
    );
}
#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_sent_whole_when_a_refused_connection_is_retried() {
    let pki = Pki::new();
    let live = api_endpoint(App::start("live").await, &pki.api);
    let dead = dead_addr();
    let retries = json!({"attempts": 2, "retryOn": ["connect-failure"]});
    let clusters = json!([cluster("b/api", "ROUND_ROBIN", &[&dead, &live.addr])]);
    let (web, outbound) = web_sidecar(&pki, &web_config(route(retries, None), clusters));
    let mut client = Client::connect(outbound).await;

    // Over the replay limit, so the proxy streams it rather than buffering it.
    let size = fastpath::tunables::MAX_REPLAY_BODY as usize + 1;
    let reply = client
        .post("/api/upload", Bytes::from(vec![7u8; size]))
        .await;

    assert_eq!(tries(&web), [2]);
    assert_eq!(reply, (200, format!("live received={size}")));
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_accepts_but_never_answers_the_handshake_fails_in_bounded_time() {
    let pki = Pki::new();
    // Accepts TCP and then says nothing: the ClientHello is never answered.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("address").to_string();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let tls = arc_swap::ArcSwap::from_pointee(pki.web.material());
    let transport = fastpath::upstream::Transport::Mesh {
        expected_id: common::mesh::API_ID.into(),
    };
    let started = Instant::now();
    let result = fastpath::upstream::connect_stream(&addr, &transport, &tls).await;
    let err = result.err().expect("the handshake must fail");
    assert!(err.is_connect_failure(), "{err}");
    assert!(err.to_string().contains("TLS handshake timed out"), "{err}");
    assert_eq!(
        started.elapsed().as_secs(),
        fastpath::tunables::TLS_HANDSHAKE_TIMEOUT.as_secs()
    );
    held.abort();
}
