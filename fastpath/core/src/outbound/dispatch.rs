//! Dispatch, the last layer of the outbound stack: one route's request sent to its backends,
//! try after try — cluster by weight, endpoint by the upstream's balancer — within the route's
//! per-try and overall deadlines and its retry budget. A body small enough to replay is buffered
//! so a retry can resend it; a larger one streams once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use rand::Rng;
// Deadlines, back-off and budgets all read tokio's clock, so a paused-time test sees one clock.
use tokio::time::Instant;

use crate::body::{full, Body};
use crate::breaker::{self, Limit};
use crate::exchange::Exchange;
use crate::hash;
use crate::http::local_reply;
use crate::retry::{back_off, retryable, Outcome};
use crate::routing::{Host, Route};
use crate::state::{Active, Shared};
use crate::tcp::Conn;
use crate::telemetry::{TcpKey, Telemetry};
use crate::tunables::MAX_REPLAY_BODY;
use crate::upgrade;
use crate::upstream::{Upstream, UpstreamError};

/// How a dispatch ended: the response (an upstream's, or the sidecar's own 503/504), the
/// cluster of the last try, and how many tries it took.
pub struct Sent {
    pub response: http::Response<Body>,
    pub cluster: String,
    pub tries: u32,
    /// The cluster's circuit breaker refused it (503, response flag `UO`).
    pub overflowed: bool,
    /// The route's deadline (or the last try's) passed with no answer (504, response flag `UT`).
    pub timed_out: bool,
}

impl Sent {
    /// Ends `ex` with this response, as `route` decided it; its span names the route, the last
    /// try's cluster and how many tries it took.
    pub fn finish(
        self,
        ex: Exchange,
        telemetry: &Arc<Telemetry>,
        route: &Route,
    ) -> http::Response<Body> {
        let (cluster, tries) = (self.cluster, self.tries);
        let attributes = |_: &Exchange| {
            vec![
                ("weft.route".into(), route.config.name.clone()),
                ("weft.cluster".into(), cluster),
                ("weft.tries".into(), tries.to_string()),
            ]
        };
        ex.finish(telemetry, &route.config.name, self.response, attributes)
    }
}

/// What a dispatch is for, as the sidecar's own replies name it.
pub struct Target<'a> {
    /// "b/api", or "external service b/payments (api.payments.example:80)".
    pub service: &'a str,
    /// The answer when no try got one: 503 in the mesh, as Envoy's; 502 for an outside server.
    pub unavailable: StatusCode,
}

impl<'a> Target<'a> {
    pub fn mesh(host: &'a Host) -> Target<'a> {
        Target {
            service: &host.service,
            unavailable: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

pub async fn send(
    shared: &Shared,
    active: &Active,
    target: &Target<'_>,
    route: &Route,
    parts: http::request::Parts,
    body: Body,
    started: Instant,
) -> Sent {
    let key = parts.extensions.get::<hash::Key>().map(|k| k.0);
    let revision = &active.config.revision;
    let retries = route.config.retries.as_ref().filter(|r| r.attempts > 0);
    let small = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(
            parts.method == http::Method::GET || parts.method == http::Method::HEAD,
            |n| n <= MAX_REPLAY_BODY,
        );
    let mut body = if (retries.is_some() || route.mirror.is_some()) && small {
        match body.collect().await {
            Ok(collected) => RequestBody::Replay(collected.to_bytes()),
            Err(_) => {
                return Sent {
                    response: local_reply(
                        StatusCode::BAD_REQUEST,
                        "outbound",
                        revision,
                        "request body could not be read".into(),
                    ),
                    cluster: String::new(),
                    tries: 0,
                    overflowed: false,
                    timed_out: false,
                }
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
    if let Some(m) = &route.mirror {
        super::shadow::copy(shared, active, m, &parts, &body, deadline);
    }
    let max_tries = 1 + retries.map_or(0, |r| r.attempts);
    let mut head = Head(Some(parts));
    let mut tries = 0;
    // A retry holds a maxRetries slot until the next try is done.
    let mut retry_slot = None;
    loop {
        tries += 1;
        let cluster = route.pick().to_owned();
        let Some(upstream) = active.upstream(&cluster) else {
            let response = local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &route.config.name,
                revision,
                format!("unknown cluster {cluster}"),
            );
            return Sent {
                response,
                cluster,
                tries,
                overflowed: false,
                timed_out: false,
            };
        };
        let per_try = retries
            .and_then(|r| r.per_try_timeout_ms)
            .map(Duration::from_millis);
        let budget_left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let limit = match (per_try, budget_left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let again = tries < max_tries;
        let outcome = attempt(shared, upstream, key, &mut head, again, &mut body, limit).await;
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
            && budget.is_none_or(|b| b.withdraw(Instant::now()))
            && upstream
                .breaker
                .admit(Limit::Retries)
                .map(|slot| retry_slot.replace(slot))
                .is_ok();
        if can_retry {
            let wait = back_off(tries - 1, rand::rng().random_range(0.0..1.0));
            tokio::time::sleep(deadline.map_or(wait, |d| {
                wait.min(d.saturating_duration_since(Instant::now()))
            }))
            .await;
            continue;
        }
        let overflowed = outcome.as_ref().is_err_and(|o| *o == Outcome::Overflow);
        let timed_out = outcome.as_ref().is_err_and(|o| *o == Outcome::Timeout);
        let response = match outcome {
            Ok(resp) => resp,
            Err(Outcome::Overflow) => {
                let mut reply = local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &route.config.name,
                    revision,
                    format!("{cluster}: circuit breaker open (too many requests outstanding)"),
                );
                reply
                    .headers_mut()
                    .insert("x-envoy-overloaded", http::HeaderValue::from_static("true"));
                reply
            }
            Err(Outcome::Timeout) => local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                &route.config.name,
                revision,
                format!("{} timed out after {} tries", target.service, tries),
            ),
            Err(o) => local_reply(
                target.unavailable,
                &route.config.name,
                revision,
                format!("{} unavailable ({o:?}) after {tries} tries", target.service),
            ),
        };
        return Sent {
            response,
            cluster,
            tries,
            overflowed,
            timed_out,
        };
    }
}

/// An Upgrade request (WebSocket): one try, since a handshake the far side may already have
/// acted on cannot be replayed, bounded by the route's timeout (the upgraded stream is not);
/// on 101 the client's and the upstream's connections are spliced. To an HTTP/2 cluster the
/// handshake goes as an extended CONNECT stream (`upstream::pool`), answered as a 101 here.
#[allow(clippy::too_many_arguments)]
pub async fn upgrade(
    shared: &Shared,
    active: &Active,
    host: &Host,
    route: &Route,
    parts: http::request::Parts,
    body: Body,
    client: hyper::upgrade::OnUpgrade,
) -> Sent {
    let revision = &active.config.revision;
    let cluster = route.pick().to_owned();
    let reply =
        |status, message: String| local_reply(status, &route.config.name, revision, message);
    let Some(upstream) = active.clusters.get(&cluster) else {
        let response = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unknown cluster {cluster}"),
        );
        return Sent {
            response,
            cluster,
            tries: 1,
            overflowed: false,
            timed_out: false,
        };
    };
    let limit = route.config.timeout_ms.map(Duration::from_millis);
    let mut body = RequestBody::Stream(Some(body));
    let mut head = Head(Some(parts));
    let outcome = attempt(shared, upstream, None, &mut head, false, &mut body, limit).await;
    let overflowed = matches!(outcome, Err(Outcome::Overflow));
    let timed_out = matches!(outcome, Err(Outcome::Timeout));
    let mut response = match outcome {
        Ok(resp) => resp,
        Err(Outcome::Timeout) => reply(
            StatusCode::GATEWAY_TIMEOUT,
            format!("{} timed out before switching protocols", host.service),
        ),
        Err(o) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} unavailable ({o:?})", host.service),
        ),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let server = hyper::upgrade::on(&mut response);
        let key = TcpKey {
            direction: "outbound",
            source: active.config.workload.spiffe_id.clone(),
            destination: host.service.clone(),
            port: host.port,
        };
        let conn = Conn::new(key, route.config.name.clone(), revision);
        upgrade::splice(shared.telemetry.clone(), conn, client, server);
    }
    Sent {
        response,
        cluster,
        tries: 1,
        overflowed,
        timed_out,
    }
}

/// A request body across tries: bytes that can be sent again, or a stream sent at most once.
pub enum RequestBody {
    Replay(Bytes),
    Stream(Option<Body>),
}

impl RequestBody {
    /// The body for one try; a stream is handed over only the first time.
    fn take(&mut self) -> Body {
        match self {
            RequestBody::Replay(bytes) => full(bytes.clone()),
            RequestBody::Stream(stream) => stream.take().unwrap_or_else(|| full(Bytes::new())),
        }
    }

    /// Whether another try could still send the whole body.
    fn can_send_again(&self) -> bool {
        matches!(self, RequestBody::Replay(_) | RequestBody::Stream(Some(_)))
    }
}

/// A request's head across tries: copied for a try another may follow, moved into the last, so
/// the common request with no retries never copies its header map.
pub struct Head(Option<http::request::Parts>);

impl Head {
    /// `None` only after the last try took it, and no try follows the last.
    fn for_try(&mut self, again: bool) -> Option<http::request::Parts> {
        if again {
            self.0.clone()
        } else {
            self.0.take()
        }
    }
}

/// One try against one endpoint of an upstream, bounded by `limit`; `again` says whether
/// another try may follow this one. The body is taken only once a connection is up: a try that
/// cannot connect has sent nothing, and leaves a streamed body for the next try.
pub async fn attempt(
    shared: &Shared,
    upstream: &Upstream,
    key: Option<u64>,
    head: &mut Head,
    again: bool,
    body: &mut RequestBody,
    limit: Option<Duration>,
) -> Result<http::Response<Body>, Outcome> {
    let slot = upstream
        .breaker
        .admit(Limit::Requests)
        .map_err(|_| Outcome::Overflow)?;
    upstream.resolve_if_empty().await;
    let endpoint = upstream.pick_keyed(key).ok_or(Outcome::ConnectFailure)?;
    let parts = head.for_try(again).ok_or(Outcome::Reset)?;
    let in_flight = endpoint.start_request();
    let sent = Instant::now();
    let send = async {
        let connection = upstream.connection(&endpoint, &shared.tls).await?;
        let req = http::Request::from_parts(parts, body.take());
        connection.send(req).await
    };
    let result = match limit {
        Some(l) => tokio::time::timeout(l, send)
            .await
            .map_err(|_| Outcome::Timeout),
        None => Ok(send.await),
    };
    drop(in_flight);
    let outcome = match result {
        Err(timeout) => Err(timeout),
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            upgrade::strip_response(&mut parts);
            // The maxRequests slot is held until the answer's body is done.
            let body = breaker::hold(body, slot);
            Ok(http::Response::from_parts(parts, body))
        }
        Ok(Err(UpstreamError::Overflow(_))) => Err(Outcome::Overflow),
        Ok(Err(e)) if e.is_connect_failure() => Err(Outcome::ConnectFailure),
        Ok(Err(UpstreamError::Http { source, .. })) if source.is_canceled() => {
            Err(Outcome::RefusedStream)
        }
        Ok(Err(_)) => Err(Outcome::Reset),
    };
    if outcome.is_ok() {
        endpoint.latency.observe(sent.elapsed(), Instant::now());
    }
    if let Some(detector) = &upstream.outlier {
        let seen = outcome
            .as_ref()
            .map_or_else(|o| *o, |r| Outcome::Status(r.status().as_u16()));
        let total = upstream.endpoints.load().len();
        detector.record(&endpoint.addr, seen, total, Instant::now());
    }
    outcome
}
