//! The outbound side: the app's plaintext HTTP (HTTP/1.1, or HTTP/2 with prior knowledge as
//! gRPC clients send it) routed by authority to mesh upstreams over mTLS, with timeouts,
//! retries and trace propagation; and opaque TCP forwarded per bound port.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
// Deadlines, back-off and budgets all read tokio's clock, so a paused-time test sees one clock.
use tokio::time::Instant;

use crate::config::{EgressDestination, EgressProtocol};
use crate::grpc;
use crate::http::{
    accept_loop, decided_path, full, incoming, local_reply, normalize_path, serve_connection,
    strip_hop_by_hop, Hop, BAD_PATH,
};
use crate::protocol::Serve;
use crate::proxy::{Active, Shared};
use crate::retry::{back_off, retryable, Outcome};
use crate::tcp::pipe;
use crate::telemetry::{AccessLog, RequestKey, TcpKey};
use crate::upstream::{connect_stream, Body, Upstream, UpstreamError};

/// Bodies up to this size are buffered so a retry can send them again; larger bodies stream
/// through untouched and are sent once.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

pub async fn serve_http(shared: Arc<Shared>, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    accept_loop(listener, shutdown, move |tcp| {
        let shared = shared.clone();
        async move {
            let stop = shared.shutdown.clone();
            serve_connection(tcp, Serve::Either, stop, move |req| {
                request(shared.clone(), req, None)
            })
            .await;
        }
    })
    .await;
}

fn me(active: &Active) -> String {
    format!(
        "{}/{}",
        active.config.workload.namespace, active.config.workload.service
    )
}

/// Routes one request by its authority; `fallback` ("ns/service:port") is the upstream a
/// captured connection's original destination maps to, used when the authority names none
/// (a client that called an address rather than a service name). A gRPC caller gets the
/// sidecar's own replies as gRPC statuses.
pub(crate) async fn request(
    shared: Arc<Shared>,
    req: http::Request<hyper::body::Incoming>,
    fallback: Option<String>,
) -> http::Response<Body> {
    if grpc::is_grpc(req.headers()) {
        grpc::local_reply(route(shared, req, fallback).await)
    } else {
        route(shared, req, fallback).await
    }
}

async fn route(
    shared: Arc<Shared>,
    mut req: http::Request<hyper::body::Incoming>,
    fallback: Option<String>,
) -> http::Response<Body> {
    let started = Instant::now();
    let protocol = if grpc::is_grpc(req.headers()) {
        "grpc"
    } else {
        "http"
    };
    let active = shared.active.load_full();
    let revision = active.config.revision.clone();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut host = active.routes.host(&authority);
    if host.is_none() {
        if let Some((dest, upstream)) = egress_http(&active, &authority) {
            return egress(&shared, &active, dest, upstream, req, started).await;
        }
        host = fallback.as_deref().and_then(|k| active.routes.service(k));
    }
    let Some(host) = host else {
        // REGISTRY_ONLY: only destinations the intent lets this workload call have a route.
        return local_reply(
            StatusCode::FORBIDDEN,
            "outbound: no route",
            &revision,
            format!("{} has no route to {authority:?}: it is not a destination this workload may call (revision {revision})", me(&active)),
        );
    };
    // Normalized once, here, so the route chosen, the path forwarded and the callee's
    // authorization all see one spelling. Egress (above) is left as the app wrote it: the
    // outside server is not ours to protect and may give different spellings meaning.
    let escaped = active.config.path_normalization.escaped_slashes;
    if let Err(e) = normalize_path(&mut req, escaped) {
        return local_reply(
            StatusCode::BAD_REQUEST,
            BAD_PATH,
            &revision,
            format!(
                "{} refused a request to {}: bad path: {e}",
                me(&active),
                host.service
            ),
        );
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let Some(route) = host.route(&method, decided_path(&req), req.headers()) else {
        return local_reply(
            StatusCode::NOT_FOUND,
            "outbound: no route",
            &revision,
            format!("no route of {} matches {method} {path}", host.service),
        );
    };
    let hop = Hop::begin(req.headers(), active.config.telemetry.sampling_percent);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    hop.propagate(&mut parts.headers);
    parts.uri = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    if let Ok(v) = http::HeaderValue::from_str(&authority) {
        parts.headers.insert(http::header::HOST, v);
    }

    let retries = route.config.retries.as_ref().filter(|r| r.attempts > 0);
    let small = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(
            method == http::Method::GET || method == http::Method::HEAD,
            |n| n <= MAX_REPLAY_BODY,
        );
    let mut body = if retries.is_some() && small {
        match body.collect().await {
            Ok(collected) => RequestBody::Replay(collected.to_bytes()),
            Err(_) => {
                return local_reply(
                    StatusCode::BAD_REQUEST,
                    "outbound",
                    &revision,
                    "request body could not be read".into(),
                )
            }
        }
    } else {
        RequestBody::Stream(Some(body))
    };
    let budget = active.budgets.0.get(&route.config.name);
    if let Some(b) = budget {
        b.deposit(Instant::now());
    }
    let deadline = route
        .config
        .timeout_ms
        .map(|ms| started + Duration::from_millis(ms));
    let max_tries = 1 + retries.map_or(0, |r| r.attempts);
    let mut tries = 0;
    let (response, cluster) = loop {
        tries += 1;
        let cluster = route.pick().to_owned();
        let Some(upstream) = active.clusters.get(&cluster) else {
            break (
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &route.config.name,
                    &revision,
                    format!("unknown cluster {cluster}"),
                ),
                cluster,
            );
        };
        let per_try = retries
            .and_then(|r| r.per_try_timeout_ms)
            .map(Duration::from_millis);
        let budget_left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let limit = match (per_try, budget_left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let outcome = attempt(&shared, upstream, &parts, &mut body, limit).await;
        let can_retry = tries < max_tries
            && body.can_send_again()
            && retries.is_some_and(|r| {
                retryable(
                    r,
                    outcome
                        .as_ref()
                        .map_or_else(|o| *o, |r| Outcome::Status(r.status().as_u16())),
                )
            })
            && deadline.is_none_or(|d| Instant::now() < d)
            && budget.is_none_or(|b| b.withdraw(Instant::now()));
        if can_retry {
            let wait = back_off(tries - 1, rand::rng().random_range(0.0..1.0));
            tokio::time::sleep(deadline.map_or(wait, |d| {
                wait.min(d.saturating_duration_since(Instant::now()))
            }))
            .await;
            continue;
        }
        break match outcome {
            Ok(resp) => (resp, cluster),
            Err(Outcome::Timeout) => (
                local_reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    &route.config.name,
                    &revision,
                    format!("{} timed out after {} tries", host.service, tries),
                ),
                cluster,
            ),
            Err(o) => (
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &route.config.name,
                    &revision,
                    format!("{} unavailable ({o:?}) after {tries} tries", host.service),
                ),
                cluster,
            ),
        };
    };
    let response = if protocol == "grpc" {
        grpc::local_reply(response)
    } else {
        response
    };
    let code = response.status().as_u16();
    let response = grpc::record(
        &shared,
        RequestKey {
            direction: "outbound",
            source: active.config.workload.spiffe_id.clone(),
            destination: host.service.clone(),
            port: host.port,
            code,
            policy: route.config.name.clone(),
            protocol,
            grpc_status: None,
        },
        started,
        response,
    );
    shared.telemetry.log_access(AccessLog {
        start_unix_ms: hop.start_unix_ms(),
        direction: "outbound",
        source: active.config.workload.spiffe_id.clone(),
        destination: format!("{}:{}", host.service, host.port),
        method: method.to_string(),
        path: path.clone(),
        status: code,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        decided_by: route.config.name.clone(),
        trace_id: hop.trace_id(),
        revision: revision.clone(),
    });
    hop.finish(
        &shared,
        format!("outbound {}:{} {method}", host.service, host.port),
        vec![
            ("http.method".into(), method.to_string()),
            ("http.target".into(), path),
            ("http.status_code".into(), code.to_string()),
            ("weft.route".into(), route.config.name.clone()),
            ("weft.cluster".into(), cluster),
            ("weft.tries".into(), tries.to_string()),
            ("weft.revision".into(), revision),
        ],
    );
    response
}

/// A request body across tries: bytes that can be sent again, or a stream sent at most once.
enum RequestBody {
    Replay(Bytes),
    Stream(Option<hyper::body::Incoming>),
}

impl RequestBody {
    /// The body for one try; a stream is handed over only the first time.
    fn take(&mut self) -> Body {
        match self {
            RequestBody::Replay(bytes) => full(bytes.clone()),
            RequestBody::Stream(stream) => {
                stream.take().map_or_else(|| full(Bytes::new()), incoming)
            }
        }
    }

    /// Whether another try could still send the whole body.
    fn can_send_again(&self) -> bool {
        matches!(self, RequestBody::Replay(_) | RequestBody::Stream(Some(_)))
    }
}

/// One try against one endpoint of an upstream, bounded by `limit`. The body is taken only
/// once a connection is up: a try that cannot connect has sent nothing, and leaves a streamed
/// body for the next try.
async fn attempt(
    shared: &Shared,
    upstream: &Upstream,
    parts: &http::request::Parts,
    body: &mut RequestBody,
    limit: Option<Duration>,
) -> Result<http::Response<Body>, Outcome> {
    let endpoint = upstream.pick().ok_or(Outcome::ConnectFailure)?;
    let in_flight = endpoint.start_request();
    let send = async {
        let connection = upstream.connection(&endpoint, &shared.tls).await?;
        let req = http::Request::from_parts(parts.clone(), body.take());
        connection.send(req).await
    };
    let result = match limit {
        Some(l) => tokio::time::timeout(l, send)
            .await
            .map_err(|_| Outcome::Timeout),
        None => Ok(send.await),
    };
    drop(in_flight);
    match result? {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(http::Response::from_parts(parts, incoming(body)))
        }
        Err(e) if e.is_connect_failure() => Err(Outcome::ConnectFailure),
        Err(UpstreamError::Http { source, .. }) if source.is_canceled() => {
            Err(Outcome::RefusedStream)
        }
        Err(_) => Err(Outcome::Reset),
    }
}

pub async fn serve_tcp(shared: Arc<Shared>, key: String, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    accept_loop(listener, shutdown, move |tcp| {
        tcp_connection(shared.clone(), key.clone(), tcp)
    })
    .await;
}

/// The ExternalService an HTTP authority names, if this workload may use it.
fn egress_http<'a>(
    active: &'a Active,
    authority: &str,
) -> Option<(&'a EgressDestination, &'a Arc<Upstream>)> {
    let (name, port) = crate::routing::split_authority(authority)?;
    let (dest, upstream) = active
        .egress
        .get(&format!("{}:{port}", name.to_ascii_lowercase()))?;
    (dest.protocol == EgressProtocol::Http).then_some((dest, upstream))
}

/// HTTP to a destination outside the mesh: sent once (no mesh routing, no retries), over TLS
/// verified against the system roots when the intent says to originate it.
async fn egress(
    shared: &Shared,
    active: &Active,
    dest: &EgressDestination,
    upstream: &Upstream,
    req: http::Request<hyper::body::Incoming>,
    started: Instant,
) -> http::Response<Body> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    let response = match attempt(
        shared,
        upstream,
        &parts,
        &mut RequestBody::Stream(Some(body)),
        None,
    )
    .await
    {
        Ok(resp) => resp,
        Err(o) => local_reply(
            StatusCode::BAD_GATEWAY,
            &format!("egress:{}", dest.name),
            &active.config.revision,
            format!(
                "external service {} ({}:{}) unavailable: {o:?}",
                dest.name, dest.host, dest.port
            ),
        ),
    };
    shared.telemetry.record_request(
        RequestKey {
            direction: "outbound",
            source: active.config.workload.spiffe_id.clone(),
            destination: dest.name.clone(),
            port: dest.port,
            code: response.status().as_u16(),
            policy: format!("egress:{}", dest.name),
            protocol: "http",
            grpc_status: None,
        },
        started.elapsed(),
    );
    response
}

pub(crate) async fn tcp_connection(shared: Arc<Shared>, key: String, mut client: TcpStream) {
    let active = shared.active.load_full();
    if let Some((dest, upstream)) = active.egress.get(&key) {
        if dest.protocol != EgressProtocol::Http {
            return egress_tcp(&shared, &active, dest, upstream, client).await;
        }
    }
    let Some(target) = active
        .config
        .outbound
        .tcp
        .iter()
        .find(|t| format!("{}:{}", t.service, t.port) == key)
    else {
        return; // no longer a permitted destination at this revision
    };
    let Some(upstream) = active.clusters.get(&target.cluster) else {
        return;
    };
    let stats = TcpKey {
        direction: "outbound",
        source: active.config.workload.spiffe_id.clone(),
        destination: target.service.clone(),
        port: target.port,
    };
    // Try each endpoint at most once: a refused connection should not fail the client if
    // another pod can take it.
    let tries = upstream.endpoints.load().len().max(1);
    for _ in 0..tries {
        let Some(endpoint) = upstream.pick() else {
            return;
        };
        match connect_stream(&endpoint.addr, &upstream.transport, &shared.tls).await {
            Ok(mut server) => {
                return pipe(&shared.telemetry, stats, &mut client, &mut server).await;
            }
            Err(_) => endpoint.connect_failed(),
        }
    }
}

/// Opaque TCP (or TLS the app speaks itself) to a destination outside the mesh.
async fn egress_tcp(
    shared: &Shared,
    active: &Active,
    dest: &EgressDestination,
    upstream: &Upstream,
    mut client: TcpStream,
) {
    let stats = TcpKey {
        direction: "outbound",
        source: active.config.workload.spiffe_id.clone(),
        destination: dest.name.clone(),
        port: dest.port,
    };
    let Some(endpoint) = upstream.pick() else {
        return;
    };
    let Ok(mut server) = connect_stream(&endpoint.addr, &upstream.transport, &shared.tls).await
    else {
        endpoint.connect_failed();
        return;
    };
    pipe(&shared.telemetry, stats, &mut client, &mut server).await;
}
