//! The capture listener without iptables: what must happen to a connection that reaches it
//! without having been redirected. The redirected path is tested end to end, in network
//! namespaces with the real iptables script, by `tests/test_capture_netns.py`.

mod common;

use std::io::Read;
use std::time::Duration;

use common::mesh::{web_config, Pki, WEB_ID};
use fastpath::{Listeners, Proxy, ProxyError};
use serde_json::json;

fn listeners(value: serde_json::Value) -> Listeners {
    serde_json::from_value(value).expect("listeners")
}

fn web(pki: &Pki, listeners: Listeners) -> Result<Proxy, ProxyError> {
    Proxy::start(
        &web_config(json!([]), json!([])),
        pki.web.material(),
        listeners,
        1,
    )
}

#[test]
fn a_connection_that_was_not_redirected_is_closed_and_counted_not_served() {
    let pki = Pki::new();
    let proxy = web(
        &pki,
        listeners(json!({
            "outboundCapture": "127.0.0.1:0",
            "originalDestinations": {"10.0.0.1:80": "b/api:8080"},
        })),
    )
    .expect("sidecar starts");
    let capture = proxy.bound["outbound:capture"];
    let mut client = std::net::TcpStream::connect(capture).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Write::write_all(&mut client, b"GET / HTTP/1.1\r\nHost: api.b:8080\r\n\r\n")
        .expect("write");
    // Its original destination is the capture listener itself (or unknown): served, it would
    // be sent back to the sidecar. It is closed without an answer instead.
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "got {:?}",
        String::from_utf8_lossy(&answer)
    );
    let stats: serde_json::Value =
        serde_json::from_str(&proxy.telemetry().snapshot_json()).expect("JSON");
    let refused: Vec<_> = stats["tcp"]
        .as_array()
        .expect("tcp stats")
        .iter()
        .filter(|e| e[0]["destination"] == fastpath::capture::LOOP && e[0]["source"] == WEB_ID)
        .map(|e| e[1]["denied"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(refused, vec![1]);
}

#[test]
fn original_destinations_without_a_capture_listener_are_refused() {
    let pki = Pki::new();
    let err = web(
        &pki,
        listeners(json!({"originalDestinations": {"10.0.0.1:80": "b/api:8080"}})),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("outboundCapture"), "{err}");
}

#[test]
fn an_original_destination_must_be_an_address() {
    let err = serde_json::from_value::<Listeners>(json!({
        "outboundCapture": "127.0.0.1:0",
        "originalDestinations": {"api.b:8080": "b/api:8080"},
    }))
    .expect_err("refused");
    assert!(err.to_string().contains("address"), "{err}");
}
