//! Calls to destinations outside the mesh (ExternalServices): HTTP sent once, with no mesh
//! routing or retries, over TLS verified against the system roots when the intent says to
//! originate it; and opaque TCP (or TLS the app speaks itself).

use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpStream;

use super::dispatch::{attempt, RequestBody};
use crate::body::Body;
use crate::config::{EgressDestination, EgressProtocol};
use crate::exchange::Exchange;
use crate::http::{local_reply, strip_hop_by_hop};
use crate::state::{Active, Shared};
use crate::tcp::{pipe, Conn};
use crate::telemetry::TcpKey;
use crate::upstream::{connect_stream, Upstream};

/// The ExternalService an HTTP authority names, if this workload may use it.
pub fn http_destination<'a>(
    active: &'a Active,
    authority: &str,
) -> Option<(&'a EgressDestination, &'a Arc<Upstream>)> {
    let (name, port) = crate::routing::split_authority(authority)?;
    let (dest, upstream) = active
        .egress
        .get(&format!("{}:{port}", name.to_ascii_lowercase()))?;
    (dest.protocol == EgressProtocol::Http).then_some((dest, upstream))
}

/// HTTP to a destination outside the mesh, with the path as the app wrote it.
pub async fn http(
    shared: &Shared,
    active: &Active,
    mut ex: Exchange,
    dest: &EgressDestination,
    upstream: &Upstream,
    req: http::Request<Body>,
) -> http::Response<Body> {
    let decided_by = format!("egress:{}", dest.name);
    ex.destination = dest.name.clone();
    ex.port = dest.port;
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.uri = ex
        .path
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let mut body = RequestBody::Stream(Some(body));
    let response = match attempt(shared, upstream, None, &parts, &mut body, None).await {
        Ok(resp) => resp,
        Err(o) => local_reply(
            StatusCode::BAD_GATEWAY,
            &decided_by,
            &active.config.revision,
            format!(
                "external service {} ({}:{}) unavailable: {o:?}",
                dest.name, dest.host, dest.port
            ),
        ),
    };
    ex.finish(&shared.telemetry, &decided_by, response, vec![])
}

/// Opaque TCP (or TLS the app speaks itself) to a destination outside the mesh.
pub async fn tcp(
    shared: &Shared,
    active: &Active,
    dest: &EgressDestination,
    upstream: &Upstream,
    mut client: TcpStream,
    server_name: Option<String>,
) {
    let stats = TcpKey {
        direction: "outbound",
        source: active.config.workload.spiffe_id.clone(),
        destination: dest.name.clone(),
        port: dest.port,
    };
    let mut conn = Conn::new(
        stats,
        format!("egress:{}", dest.name),
        &active.config.revision,
    );
    conn.server_name = server_name;
    let Some(endpoint) = upstream.pick() else {
        return conn.connect_failed(&shared.telemetry);
    };
    match connect_stream(&endpoint.addr, &upstream.transport, &shared.tls).await {
        Ok(mut server) => pipe(&shared.telemetry, conn, &mut client, &mut server).await,
        Err(_) => {
            endpoint.connect_failed();
            conn.connect_failed(&shared.telemetry);
        }
    }
}
