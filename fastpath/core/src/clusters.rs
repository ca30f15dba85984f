//! What the admin port shows of the upstreams in force, as Envoy's `/clusters`: per cluster its
//! endpoints (in flight, ejected, why), its circuit breaker's gauges and overflows, and per
//! mirrored route what was copied and dropped. Read from the live state, never cached.

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::breaker::GaugeReport;
use crate::state::Active;

#[derive(Debug, Serialize)]
struct Endpoint {
    address: String,
    in_flight: usize,
    ejected: bool,
    ejected_for_ms: Option<u64>,
    ejections: u32,
}

#[derive(Debug, Serialize)]
struct Cluster {
    name: String,
    endpoints: Vec<Endpoint>,
    circuit_breaker: Vec<GaugeReport>,
    outlier_detection: Option<Value>,
}

/// The report as JSON: `{"clusters": [...], "mirrors": [...]}`, clusters by name.
pub fn report_json(active: &Active) -> String {
    let now = Instant::now();
    let mut clusters: Vec<Cluster> = active
        .clusters
        .iter()
        .map(|(name, up)| {
            let outlier = up.outlier.as_ref().map(|d| d.report(now));
            let endpoints = up
                .endpoints
                .load()
                .iter()
                .map(|e| {
                    let host = outlier
                        .as_ref()
                        .and_then(|r| r.hosts.iter().find(|h| h.address == e.addr));
                    Endpoint {
                        address: e.addr.clone(),
                        in_flight: e.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                        ejected: host.is_some_and(|h| h.ejected),
                        ejected_for_ms: host.and_then(|h| h.ejected_for_ms),
                        ejections: host.map_or(0, |h| h.ejections),
                    }
                })
                .collect();
            Cluster {
                name: name.clone(),
                endpoints,
                circuit_breaker: up.breaker.report(),
                outlier_detection: outlier.map(|r| {
                    let totals: Vec<Value> = r
                        .ejections_total
                        .iter()
                        .map(|(reason, n)| serde_json::json!({"reason": reason, "count": n}))
                        .collect();
                    serde_json::json!({"ejected_now": r.ejected_now, "ejections_total": totals})
                }),
            }
        })
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    serde_json::json!({
        "clusters": clusters,
        "mirrors": active
            .routes
            .mirrors()
            .map(|(route, m)| serde_json::json!({"route": route, "copies": m.report()}))
            .collect::<Vec<_>>(),
    })
    .to_string()
}
