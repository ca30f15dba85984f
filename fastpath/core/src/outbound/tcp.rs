//! Opaque TCP from the app: each bound port (or captured original destination) forwards to one
//! mesh upstream over mTLS, or to an ExternalService, counted per connection.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::egress;
use crate::config::EgressProtocol;
use crate::http::accept_loop;
use crate::state::Shared;
use crate::tcp::{pipe, Conn};
use crate::telemetry::TcpKey;
use crate::upstream::connect_stream;

pub async fn serve_tcp(shared: Arc<Shared>, key: String, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    accept_loop(listener, shutdown, move |tcp| {
        tcp_connection(shared.clone(), key.clone(), tcp)
    })
    .await;
}

pub(crate) async fn tcp_connection(shared: Arc<Shared>, key: String, client: TcpStream) {
    tcp_or_tls(shared, key, client, None).await
}

/// TLS an app speaks itself, caught by capture, to the ExternalService `key` ("host:port")
/// whose name its ClientHello gave.
pub(crate) async fn tls_connection(
    shared: Arc<Shared>,
    key: String,
    client: TcpStream,
    server_name: String,
) {
    tcp_or_tls(shared, key, client, Some(server_name)).await
}

async fn tcp_or_tls(
    shared: Arc<Shared>,
    key: String,
    mut client: TcpStream,
    server_name: Option<String>,
) {
    let active = shared.active.load_full();
    if let Some((dest, upstream)) = active.egress.get(&key) {
        if dest.protocol != EgressProtocol::Http {
            return egress::tcp(&shared, &active, dest, upstream, client, server_name).await;
        }
    }
    let Some(target) = active
        .config
        .outbound
        .tcp
        .iter()
        .find(|t| format!("{}:{}", t.service, t.port) == key)
    else {
        // No longer a permitted destination at this revision: REGISTRY_ONLY.
        let key = TcpKey {
            direction: "outbound",
            source: active.config.workload.spiffe_id.clone(),
            destination: key,
            port: 0,
        };
        return Conn::new(key, "outbound: no route", &active.config.revision)
            .denied(&shared.telemetry);
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
    let conn = Conn::new(stats, target.cluster.clone(), &active.config.revision);
    upstream.resolve_if_empty().await;
    // Try each endpoint at most once: a refused connection should not fail the client if
    // another pod can take it.
    let tries = upstream.endpoints.load().len().max(1);
    for _ in 0..tries {
        let Some(endpoint) = upstream.pick() else {
            break;
        };
        match connect_stream(&endpoint.addr, &upstream.transport, &shared.tls).await {
            Ok(mut server) => {
                return pipe(&shared.telemetry, conn, &mut client, &mut server).await;
            }
            Err(_) => endpoint.connect_failed(),
        }
    }
    conn.connect_failed(&shared.telemetry);
}
