//! The runtime state every connection task shares: where the sidecar listens, the compiled
//! config (`Active`, swapped whole on reload), the TLS material and the telemetry sinks.
//!
//! It sits below the two directions and the lifecycle: `inbound`, `outbound` and `capture`
//! read it, `proxy` builds and swaps it, and nothing here knows who spawns what.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::{EgressDestination, InboundPort, LoadBalancer, ProxyConfig};
use crate::error::ProxyError;
use crate::protocol::HttpVersion;
use crate::retry::{Budget, Budgets};
use crate::routing;
use crate::telemetry::Telemetry;
use crate::tls::Material;
use crate::upstream::{Transport, Upstream};

/// Where this sidecar listens. Not part of ProxyConfig: binding is the target's business
/// (loopback ports locally; capture ports under iptables).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listeners {
    /// Inbound port name -> address the mTLS listener binds.
    #[serde(default)]
    pub inbound: HashMap<String, SocketAddr>,
    /// Inbound port name -> where the app listens; default 127.0.0.1:<targetPort>.
    #[serde(default)]
    pub app: HashMap<String, SocketAddr>,
    /// The app's plaintext HTTP egress (routed by Host).
    pub outbound_http: Option<SocketAddr>,
    /// "ns/service:port" -> a local address that forwards opaque TCP to that upstream.
    #[serde(default)]
    pub outbound_tcp: HashMap<String, SocketAddr>,
    /// Where iptables redirects the app's outbound TCP (transparent capture); see `capture`.
    pub outbound_capture: Option<SocketAddr>,
    /// Captured original destination -> the upstream it reaches: "ns/service:port" (a mesh TCP
    /// or HTTP upstream) or "host:port" (an ExternalService). Which addresses stand for which
    /// upstream is the target's knowledge, like endpoints, so it lives here, not in ProxyConfig.
    #[serde(default)]
    pub original_destinations: HashMap<SocketAddr, String>,
    /// Gateway listener name -> address its HTTPS listener binds.
    #[serde(default)]
    pub gateway: HashMap<String, SocketAddr>,
}

/// One config, compiled for the request path.
#[derive(Debug)]
pub struct Active {
    pub config: ProxyConfig,
    pub routes: routing::Table,
    pub inbound: HashMap<String, InboundPort>,
    pub clusters: HashMap<String, Arc<Upstream>>,
    pub apps: HashMap<String, Arc<Upstream>>,
    pub budgets: Budgets,
    /// ExternalService destinations by "host:port", each with the upstream that reaches it.
    pub egress: HashMap<String, (EgressDestination, Arc<Upstream>)>,
    /// The route of each HTTP ExternalService destination, by "host:port".
    pub egress_routes: HashMap<String, routing::Route>,
    /// A gateway's client-facing TLS, by listener name.
    pub gateway: crate::edge_tls::Acceptors,
    /// "namespace/service" of this workload: every inbound request's destination. This and
    /// the two below are shared by every request's telemetry rather than copied into it.
    pub workload: Arc<str>,
    /// The config's revision.
    pub revision: Arc<str>,
    /// This workload's SPIFFE ID: every outbound request's source.
    pub spiffe_id: Arc<str>,
}

impl Active {
    pub(crate) fn compile(
        config: ProxyConfig,
        listeners: &Listeners,
        previous: Option<&Active>,
    ) -> Result<Active, ProxyError> {
        let routes = routing::Table::build(&config.outbound.http)?;
        let inbound = config
            .inbound
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        // Keep the pools and health of clusters whose identity and endpoints did not change.
        let clusters = config
            .outbound
            .clusters
            .iter()
            .map(|c| {
                let fresh = Upstream::for_cluster(c);
                let kept = previous.and_then(|p| p.clusters.get(&c.name)).filter(|old| {
                    matches!((&old.transport, &fresh.transport),
                        (Transport::Mesh { expected_id: a }, Transport::Mesh { expected_id: b }) if a == b)
                        && old.dns == fresh.dns
                        && old.load_balancer == fresh.load_balancer
                        && old.version == fresh.version
                        && old.resilience == fresh.resilience
                });
                match kept {
                    Some(old) => {
                        if fresh.dns.is_none() {
                            old.set_endpoints(fresh.endpoints.load().iter().map(|e| e.addr.clone()).collect());
                        }
                        (c.name.clone(), old.clone())
                    }
                    None => (c.name.clone(), Arc::new(fresh)),
                }
            })
            .collect();
        let apps = config
            .inbound
            .iter()
            .map(|p| {
                let addr = listeners
                    .app
                    .get(&p.name)
                    .copied()
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], p.target_port)));
                let version = HttpVersion::for_protocol(p.protocol);
                let kept = previous
                    .and_then(|prev| prev.apps.get(&p.name))
                    .filter(|a| {
                        a.version == version
                            && a.endpoints
                                .load()
                                .first()
                                .is_some_and(|e| e.addr == addr.to_string())
                    });
                let app = kept.cloned().unwrap_or_else(|| {
                    Arc::new(
                        Upstream::new(
                            format!("app:{}", p.name),
                            LoadBalancer::RoundRobin,
                            Transport::Plain,
                            vec![addr.to_string()],
                        )
                        .speaking(version),
                    )
                });
                (p.name.clone(), app)
            })
            .collect();
        let egress_routes = config
            .outbound
            .egress
            .iter()
            .filter(|d| d.protocol == crate::config::EgressProtocol::Http)
            .map(|d| {
                Ok((
                    format!("{}:{}", d.host, d.port),
                    routing::Route::compile(&d.route())?,
                ))
            })
            .collect::<Result<HashMap<_, _>, crate::config::ConfigError>>()?;
        let now = tokio::time::Instant::now();
        let budgets = Budgets(
            config
                .outbound
                .http
                .iter()
                .flat_map(|h| &h.routes)
                .chain(egress_routes.values().map(|r| &r.config))
                .filter_map(|r| {
                    Some((
                        r.name.clone(),
                        Budget::new(r.retries.as_ref()?.budget.as_ref()?, now),
                    ))
                })
                .collect(),
        );
        let egress = egress_upstreams(&config)?;
        let gateway = crate::edge_tls::acceptors(&config.gateway)?;
        let workload = format!("{}/{}", config.workload.namespace, config.workload.service);
        Ok(Active {
            workload: Arc::from(workload),
            revision: Arc::from(config.revision.as_str()),
            spiffe_id: Arc::from(config.workload.spiffe_id.as_str()),
            config,
            routes,
            inbound,
            clusters,
            apps,
            budgets,
            egress,
            egress_routes,
            gateway,
        })
    }

    /// The upstream a route's backend names: a mesh cluster, or an ExternalService's own
    /// (`egress:host:port`).
    pub fn upstream(&self, cluster: &str) -> Option<&Arc<Upstream>> {
        self.clusters.get(cluster).or_else(|| {
            let key = cluster.strip_prefix("egress:")?;
            self.egress.get(key).map(|(_, up)| up)
        })
    }
}

/// The upstreams of the destinations outside the mesh this workload may reach. Egress with TLS
/// origination loads the system's roots once per config.
fn egress_upstreams(
    config: &ProxyConfig,
) -> Result<HashMap<String, (EgressDestination, Arc<Upstream>)>, ProxyError> {
    let mut tls = None;
    let mut out = HashMap::new();
    for d in &config.outbound.egress {
        let (transport, port) = match &d.tls_origination {
            Some(o) => {
                let tls = match &tls {
                    Some(t) => Arc::clone(t),
                    None => tls.insert(crate::tls::egress_client()?).clone(),
                };
                (
                    Transport::Egress {
                        sni: o.sni.clone(),
                        tls,
                    },
                    o.port,
                )
            }
            None => (Transport::Plain, d.port),
        };
        // Static addresses, when the intent gives them, stand for the host; else its name,
        // resolved when connecting.
        let targets = if d.addresses.is_empty() {
            vec![format!("{}:{port}", d.host)]
        } else {
            d.addresses
                .iter()
                .map(|a| std::net::SocketAddr::new(*a, port).to_string())
                .collect()
        };
        let up = Upstream::new(
            format!("egress:{}", d.name),
            LoadBalancer::RoundRobin,
            transport,
            targets,
        );
        out.insert(format!("{}:{}", d.host, d.port), (d.clone(), Arc::new(up)));
    }
    Ok(out)
}

/// State every connection task shares.
#[derive(Debug)]
pub struct Shared {
    pub active: ArcSwap<Active>,
    pub tls: ArcSwap<Material>,
    /// Shared with response bodies that report when they end (gRPC calls).
    pub telemetry: Arc<Telemetry>,
    pub listeners: Listeners,
    pub shutdown: watch::Receiver<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(egress: serde_json::Value) -> Result<ProxyConfig, crate::config::ConfigError> {
        ProxyConfig::parse(
            &serde_json::json!({
                "schemaVersion": crate::config::SCHEMA_VERSION,
                "revision": "r1",
                "trustDomain": "t.local",
                "mtls": "STRICT",
                "workload": {"namespace": "a", "service": "egress", "serviceAccount": "egress",
                             "spiffeId": "spiffe://t.local/ns/a/sa/egress"},
                "inbound": [],
                "outbound": {"http": [], "tcp": [], "egress": egress, "clusters": []},
                "telemetry": {"samplingPercent": 0.0},
            })
            .to_string(),
        )
    }

    fn endpoints(config: &ProxyConfig) -> Vec<String> {
        let upstreams = egress_upstreams(config).expect("upstreams");
        let (_, up) = &upstreams["api.partner.test:80"];
        up.endpoints.load().iter().map(|e| e.addr.clone()).collect()
    }

    #[test]
    fn static_addresses_stand_for_the_host_on_the_port_connected_to() {
        let named = config(serde_json::json!([
            {"name": "a/partner", "host": "api.partner.test", "port": 80, "protocol": "http"}
        ]))
        .expect("valid");
        assert_eq!(endpoints(&named), ["api.partner.test:80"]);
        let fixed = config(serde_json::json!([
            {"name": "a/partner", "host": "api.partner.test", "port": 80, "protocol": "http",
             "tlsOrigination": {"port": 443, "sni": "api.partner.test"},
             "addresses": ["192.0.2.7", "2001:db8::7"]}
        ]))
        .expect("valid");
        assert_eq!(endpoints(&fixed), ["192.0.2.7:443", "[2001:db8::7]:443"]);
    }

    #[test]
    fn an_address_that_is_not_an_ip_literal_is_refused() {
        let err = config(serde_json::json!([
            {"name": "a/partner", "host": "api.partner.test", "port": 80, "protocol": "http",
             "addresses": ["partner.example"]}
        ]))
        .expect_err("a name is not an address");
        assert!(err.to_string().contains("invalid IP address"), "{err}");
    }
}
