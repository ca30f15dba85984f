//! Calls to destinations outside the mesh (ExternalServices): HTTP through the dispatch layer
//! as a mesh route's (the port's timeout and retries), over TLS verified against the system
//! roots when the intent says to originate it; and opaque TCP (or TLS the app speaks itself).

use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpStream;

use super::dispatch::{self, Target};
use crate::body::Body;
use crate::config::EgressDestination;
use crate::exchange::Exchange;
use crate::http::strip_hop_by_hop;
use crate::routing::Route;
use crate::state::{Active, Shared};
use crate::tcp::{pipe, Conn};
use crate::telemetry::TcpKey;
use crate::upstream::{connect_stream, Upstream};

/// The ExternalService an HTTP authority names, if this workload may use it, with its route.
pub fn http_destination<'a>(
    active: &'a Active,
    authority: &str,
) -> Option<(&'a EgressDestination, &'a Route)> {
    let (name, port) = crate::routing::split_authority(authority)?;
    let key = format!("{}:{port}", name.to_ascii_lowercase());
    let (dest, _) = active.egress.get(&key)?;
    Some((dest, active.egress_routes.get(&key)?))
}

/// HTTP to a destination outside the mesh, with the path as the app wrote it: dispatched like
/// a mesh route (the port's timeout and retries, its own upstream), traced with the trace
/// context passed on to the outside server, and finished like every other exchange.
pub async fn http(
    shared: &Shared,
    active: &Active,
    mut ex: Exchange,
    dest: &EgressDestination,
    route: &Route,
    req: http::Request<Body>,
) -> http::Response<Body> {
    ex.destination = Arc::from(dest.name.as_str());
    ex.port = dest.port;
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    ex.hop.propagate(&mut parts.headers);
    parts.uri = ex
        .path
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    let service = format!(
        "external service {} ({}:{})",
        dest.name, dest.host, dest.port
    );
    let target = Target {
        service: &service,
        unavailable: StatusCode::BAD_GATEWAY,
    };
    let sent = dispatch::send(shared, active, &target, route, parts, body, ex.started).await;
    ex.response_flags = match (sent.overflowed, sent.timed_out) {
        (true, _) => "UO",
        (false, true) => "UT",
        (false, false) => "",
    };
    sent.finish(ex, &shared.telemetry, route)
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
    upstream.resolve_if_empty().await;
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
