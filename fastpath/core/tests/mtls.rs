//! Two sidecars started as the binding starts them (`Proxy::start`, each on its own runtime)
//! on loopback, with real mTLS: identity pinning both ways, authorization, and reload. Real
//! time; nothing here waits on a timer.

mod common;

use common::app::App;
use common::mesh::{api_config, cluster, web_config, Client, Pki, Reply, REVISION, WEB_ID};
use common::pki::{Ca, Identity};
use fastpath::{Listeners, Proxy, ProxyError};
use serde_json::json;

/// The test's own runtime: it runs the app and the client, never a proxy.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("test runtime")
}

fn start(config: &str, who: &Identity, listeners: serde_json::Value) -> Proxy {
    let listeners: Listeners = serde_json::from_value(listeners).expect("listeners");
    Proxy::start(config, who.material(), listeners, 1).expect("sidecar starts")
}

/// `b/api` (holding `api_cert`) in front of `app`, and `a/web` (holding `web_cert`) routing
/// `api.b:8080` to it.
struct TwoSidecars {
    web: Proxy,
    api: Proxy,
}

impl TwoSidecars {
    fn start(app: &App, web_cert: &Identity, api_cert: &Identity) -> TwoSidecars {
        let api = start(
            &api_config(),
            api_cert,
            json!({"inbound": {"http": "127.0.0.1:0"}, "app": {"http": app.addr.to_string()}}),
        );
        let web = start(
            &TwoSidecars::web_config(&api, REVISION),
            web_cert,
            json!({"outboundHttp": "127.0.0.1:0"}),
        );
        TwoSidecars { web, api }
    }

    fn web_config(api: &Proxy, revision: &str) -> String {
        let routes = json!([{"name": "b/api#0", "matches": [],
                             "backends": [{"cluster": "b/api", "weight": 100}]}]);
        let endpoint = api.bound["inbound:http"].to_string();
        let config = web_config(
            routes,
            json!([cluster("b/api", "ROUND_ROBIN", &[&endpoint])]),
        );
        let mut config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
        config["revision"] = revision.into();
        config.to_string()
    }

    fn get(&self, rt: &tokio::runtime::Runtime, path: &str) -> Reply {
        let outbound = self.web.bound["outbound:http"];
        rt.block_on(async { Client::connect(outbound).await.get(path).await })
    }
}

#[test]
fn an_allowed_request_crosses_mtls_to_the_app_with_its_trace() {
    let rt = runtime();
    let pki = Pki::new();
    let app = rt.block_on(App::start("api"));
    let mesh = TwoSidecars::start(&app, &pki.web, &pki.api);

    let reply = mesh.get(&rt, "/api/items?x=1");

    assert_eq!(reply, (200, "api received=0".into()));
    let seen = &app.seen()[0];
    assert_eq!(seen.path, "/api/items");
    assert_eq!(seen.headers["host"], "api.b:8080");
    assert_eq!(seen.headers[fastpath::inbound::PEER_HEADER], WEB_ID);
    let traceparent = seen.headers["traceparent"].to_str().unwrap();
    assert_eq!(
        traceparent.split('-').map(str::len).collect::<Vec<_>>(),
        [2, 32, 16, 2]
    );
    let stats = mesh.api.telemetry().snapshot_json();
    assert!(
        stats.contains(&format!("\"source\":\"{WEB_ID}\"")),
        "{stats}"
    );
}

#[test]
fn a_denied_request_gets_403_naming_the_policy_and_the_revision() {
    let rt = runtime();
    let pki = Pki::new();
    let app = rt.block_on(App::start("api"));
    let mesh = TwoSidecars::start(&app, &pki.web, &pki.api);

    let reply = mesh.get(&rt, "/admin/users");

    let expected = format!(
        "weft: {WEB_ID} may not GET /admin/users on b/api:8080: denied by b/no-admin \
         (revision {REVISION})\n"
    );
    assert_eq!(reply, (403, expected));
    assert_eq!(app.hits(), 0, "a denied request never reaches the app");
}

#[test]
fn an_upstream_holding_another_services_certificate_cannot_pose_as_it() {
    let rt = runtime();
    let pki = Pki::new();
    let app = rt.block_on(App::start("impostor"));
    // A valid mesh certificate, but for c/db: a/web expects b/api's identity at this address.
    let mesh = TwoSidecars::start(&app, &pki.web, &pki.db);

    let (status, body) = mesh.get(&rt, "/api/x");

    assert_eq!(status, 503, "{body}");
    assert_eq!(app.hits(), 0);
}

#[test]
fn a_client_from_another_ca_is_refused_by_the_inbound_listener() {
    let rt = runtime();
    let pki = Pki::new();
    let app = rt.block_on(App::start("api"));
    // a/web's name, signed by a CA b/api does not trust (a/web itself trusts the mesh CA).
    let mut forged = Ca::new("evil CA").issue(WEB_ID);
    forged.bundle = pki.ca.pem();
    let mesh = TwoSidecars::start(&app, &forged, &pki.api);

    let (status, body) = mesh.get(&rt, "/api/x");

    assert_eq!(status, 503, "{body}");
    assert_eq!(app.hits(), 0);
}

#[test]
fn an_invalid_config_is_refused_and_the_old_one_keeps_serving() {
    let rt = runtime();
    let pki = Pki::new();
    let app = rt.block_on(App::start("api"));
    let mesh = TwoSidecars::start(&app, &pki.web, &pki.api);
    let good = TwoSidecars::web_config(&mesh.api, "next@sha1:2");
    let extra = good.replacen('{', "{\"surprise\": true, ", 1);

    let err = mesh.web.reload(&extra).unwrap_err();
    assert!(matches!(err, ProxyError::Config(_)), "{err:?}");
    assert!(
        err.to_string().contains("unknown field `surprise`"),
        "{err}"
    );
    assert_eq!(mesh.web.revision(), REVISION);
    assert_eq!(mesh.get(&rt, "/api/x").0, 200);

    assert_eq!(mesh.web.reload(&good).unwrap(), "next@sha1:2");
    assert_eq!(mesh.get(&rt, "/api/x").0, 200);
}
