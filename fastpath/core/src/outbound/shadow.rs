//! Mirroring, the per-route layer that copies a request once dispatch has its body: a copy in
//! the route's share, with a body dispatch buffered, is sent in the background to the mirror's
//! cluster and its answer discarded (see `crate::mirror` for the bound and the counters).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::Rng;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::dispatch::RequestBody;
use crate::body::full;
use crate::mirror::{shadow_host, Mirror, COPY_TIMEOUT};
use crate::state::{Active, Shared};
use crate::tls::Material;
use crate::upstream::Upstream;

/// Starts a copy of the request if this one is in the mirror's share and its body was
/// buffered; never waits, and counts what it could not copy.
pub fn copy(
    shared: &Shared,
    active: &Active,
    mirror: &Arc<Mirror>,
    parts: &http::request::Parts,
    body: &RequestBody,
    deadline: Option<Instant>,
) {
    let bytes = match body {
        RequestBody::Replay(b) => Some(b.clone()),
        RequestBody::Stream(_) => None,
    };
    let roll = rand::rng().random_range(0.0..100.0);
    let Ok(permit) = mirror.admit(roll, bytes.is_some()) else {
        return;
    };
    let Some(upstream) = active.clusters.get(&mirror.cluster) else {
        mirror.failed();
        return;
    };
    let limit: Duration = deadline.map_or(COPY_TIMEOUT, |d| {
        d.saturating_duration_since(Instant::now())
    });
    send(
        shared.tls.load_full(),
        upstream.clone(),
        mirror.clone(),
        permit,
        parts.clone(),
        bytes.unwrap_or_default(),
        limit,
    );
}

/// Sends a copy of a request (`parts` and its buffered `body`) to `upstream` in the
/// background, holding `permit` until it is done; the answer is read to its end and dropped.
pub fn send(
    tls: Arc<Material>,
    upstream: Arc<Upstream>,
    mirror: Arc<Mirror>,
    permit: OwnedSemaphorePermit,
    mut parts: http::request::Parts,
    body: bytes::Bytes,
    limit: Duration,
) {
    if let Some(host) = parts.headers.get(http::header::HOST) {
        if let Ok(v) = http::HeaderValue::from_str(&shadow_host(host.to_str().unwrap_or(""))) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    tokio::spawn(async move {
        let _permit = permit;
        // The certificates in force when the copy was made; a rotation meanwhile is harmless.
        let tls = ArcSwap::new(tls);
        let copy = async {
            use http_body_util::BodyExt;
            upstream.resolve_if_empty().await;
            let endpoint = upstream.pick().ok_or(())?;
            let connection = upstream.connection(&endpoint, &tls).await.map_err(|_| ())?;
            let req = http::Request::from_parts(parts, full(body));
            let resp = connection.send(req).await.map_err(|_| ())?;
            // Read to the end so an HTTP/1.1 connection goes back to the pool.
            resp.into_body().collect().await.map_err(|_| ())?;
            Ok::<(), ()>(())
        };
        if !matches!(tokio::time::timeout(limit, copy).await, Ok(Ok(()))) {
            mirror.failed();
        }
    });
}
