//! Outbound load balancing through real sidecars on loopback: round robin, least-request
//! (power of two choices) and weighted backends. Paused time keeps each test instant.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::app::App;
use common::mesh::{
    answered_by, api_endpoint, cluster, web_config, web_sidecar, ApiEndpoint, Client, Pki,
};
use serde_json::json;

async fn endpoints(pki: &Pki, names: &[&str]) -> Vec<ApiEndpoint> {
    let mut out = Vec::new();
    for name in names {
        out.push(api_endpoint(App::start(name).await, &pki.api));
    }
    out
}

fn one_route(cluster_name: &str) -> serde_json::Value {
    json!([{
        "name": "b/api#0",
        "matches": [],
        "backends": [{"cluster": cluster_name, "weight": 100}],
    }])
}

#[tokio::test(start_paused = true)]
async fn round_robin_alternates_endpoints_in_order() {
    let pki = Pki::new();
    let eps = endpoints(&pki, &["one", "two"]).await;
    let config = web_config(
        one_route("b/api"),
        json!([cluster(
            "b/api",
            "ROUND_ROBIN",
            &[&eps[0].addr, &eps[1].addr]
        )]),
    );
    let (_web, outbound) = web_sidecar(&pki, &config);
    let mut client = Client::connect(outbound).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let reply = client.get("/api/x").await;
        assert_eq!(reply.0, 200, "{reply:?}");
        order.push(answered_by(&reply).to_owned());
    }
    assert_eq!(order, ["one", "two", "one", "two", "one", "two"]);
}

#[tokio::test(start_paused = true)]
async fn least_request_sends_new_requests_to_the_idle_endpoint() {
    let pki = Pki::new();
    let eps = endpoints(&pki, &["one", "two"]).await;
    let config = web_config(
        one_route("b/api"),
        json!([cluster(
            "b/api",
            "LEAST_REQUEST",
            &[&eps[0].addr, &eps[1].addr]
        )]),
    );
    let (_web, outbound) = web_sidecar(&pki, &config);
    // One request that the app holds keeps its endpoint busy...
    let mut holder = Client::connect(outbound).await;
    let held = tokio::spawn(async move { holder.get("/hold").await });
    while eps.iter().all(|e| e.app.hits() == 0) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let busy = eps.iter().position(|e| e.app.hits() == 1).unwrap();
    let idle = 1 - busy;
    // ...so every other request goes to the idle one: of any two choices, it has fewer.
    let mut client = Client::connect(outbound).await;
    for _ in 0..20 {
        let reply = client.get("/api/x").await;
        assert_eq!(answered_by(&reply), eps[idle].app.name, "{reply:?}");
    }
    assert_eq!(eps[busy].app.hits(), 1);
    held.abort();
}

#[tokio::test(start_paused = true)]
async fn a_request_the_app_gave_up_on_no_longer_counts_as_in_flight() {
    let pki = Pki::new();
    let eps = endpoints(&pki, &["one", "two"]).await;
    let config = web_config(
        one_route("b/api"),
        json!([cluster(
            "b/api",
            "LEAST_REQUEST",
            &[&eps[0].addr, &eps[1].addr]
        )]),
    );
    let (web, outbound) = web_sidecar(&pki, &config);
    let in_flight = || -> Vec<usize> {
        web.cluster("b/api")
            .expect("cluster b/api")
            .endpoints
            .load()
            .iter()
            .map(|e| e.in_flight.load(Ordering::Relaxed))
            .collect()
    };
    let mut holder = Client::connect(outbound).await;
    let held = tokio::spawn(async move { holder.get("/hold").await });
    while eps.iter().all(|e| e.app.hits() == 0) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(in_flight().iter().sum::<usize>(), 1);

    held.abort(); // the app hangs up while its request is still waiting upstream
    tokio::time::sleep(Duration::from_millis(10)).await;

    // Otherwise least-request would shun that endpoint for the rest of the proxy's life.
    assert_eq!(in_flight(), [0, 0]);
}

#[tokio::test(start_paused = true)]
async fn weighted_backends_split_traffic_by_weight() {
    let pki = Pki::new();
    let eps = endpoints(&pki, &["v1", "v2"]).await;
    let routes = json!([{
        "name": "b/api-canary#0",
        "matches": [],
        "backends": [{"cluster": "b/api/v1", "weight": 90}, {"cluster": "b/api/v2", "weight": 10}],
    }]);
    let clusters = json!([
        cluster("b/api/v1", "ROUND_ROBIN", &[&eps[0].addr]),
        cluster("b/api/v2", "ROUND_ROBIN", &[&eps[1].addr]),
    ]);
    let (_web, outbound) = web_sidecar(&pki, &web_config(routes, clusters));
    let mut client = Client::connect(outbound).await;
    const N: usize = 400;
    for _ in 0..N {
        assert_eq!(client.get("/api/x").await.0, 200);
    }
    let v2 = eps[1].app.hits();
    assert_eq!(eps[0].app.hits() + v2, N);
    // Binomial(400, 0.1): the standard deviation is 6, so ±30 is five of them.
    assert!((10..=70).contains(&v2), "v2 got {v2} of {N}, expected 40");
}
