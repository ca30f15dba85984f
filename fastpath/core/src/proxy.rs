//! The running proxy: listeners bound once, config and certificates swapped atomically.
//!
//! `Proxy::start` binds every listener before returning, so "started" means "ready". A reload
//! compiles the new config completely before swapping it in; a config that fails to compile is
//! refused and the old one keeps serving. Requests in flight keep the `Active` they started
//! with (an `Arc`), so nothing is dropped by a swap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, EgressDestination, InboundPort, LoadBalancer, ProxyConfig};
use crate::protocol::HttpVersion;
use crate::retry::{Budget, Budgets};
use crate::routing;
use crate::telemetry::Telemetry;
use crate::tls::{Material, TlsError};
use crate::upstream::{Transport, Upstream};
use crate::{capture, inbound, outbound};

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
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid listeners: {0}")]
    Listeners(String),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
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
}

impl Active {
    fn compile(
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
        let now = tokio::time::Instant::now();
        let budgets = Budgets(
            config
                .outbound
                .http
                .iter()
                .flat_map(|h| &h.routes)
                .filter_map(|r| {
                    Some((
                        r.name.clone(),
                        Budget::new(r.retries.as_ref()?.budget.as_ref()?, now),
                    ))
                })
                .collect(),
        );
        let egress = egress_upstreams(&config)?;
        Ok(Active {
            config,
            routes,
            inbound,
            clusters,
            apps,
            budgets,
            egress,
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
        let (transport, target) = match &d.tls_origination {
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
                    format!("{}:{}", d.host, o.port),
                )
            }
            None => (Transport::Plain, format!("{}:{}", d.host, d.port)),
        };
        let up = Upstream::new(
            format!("egress:{}", d.name),
            LoadBalancer::RoundRobin,
            transport,
            vec![target],
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
    pub telemetry: Telemetry,
    pub listeners: Listeners,
    pub shutdown: watch::Receiver<bool>,
}

pub struct Proxy {
    /// The runtime `start` made; `None` when the caller's runtime runs the tasks (`spawn_on`).
    runtime: Option<tokio::runtime::Runtime>,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub bound: HashMap<String, SocketAddr>,
}

/// Default worker threads: one, like a sidecar should be (the app owns the pod's CPU).
pub const DEFAULT_WORKERS: usize = 1;
/// How often DNS endpoint names are resolved again.
pub const DNS_REFRESH: Duration = Duration::from_secs(5);

impl Proxy {
    /// Starts on a runtime of its own with `workers` threads: what the binding and the
    /// binary use, so the proxy never competes with its host for a runtime.
    pub fn start(
        config_json: &str,
        material: Material,
        listeners: Listeners,
        workers: usize,
    ) -> Result<Proxy, ProxyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name("fastpath")
            .enable_all()
            .build()
            .map_err(ProxyError::Runtime)?;
        let mut proxy = Proxy::spawn_on(runtime.handle(), config_json, material, listeners)?;
        proxy.runtime = Some(runtime);
        Ok(proxy)
    }

    /// Starts on a runtime the caller owns. Tests use it so the proxy, its upstreams and the
    /// test share one clock: with `start_paused`, timeouts and retries take no real time.
    /// Stop it with [`Proxy::drain`] from that runtime; `shutdown` only signals.
    pub fn spawn_on(
        runtime: &tokio::runtime::Handle,
        config_json: &str,
        material: Material,
        listeners: Listeners,
    ) -> Result<Proxy, ProxyError> {
        let config = ProxyConfig::parse(config_json)?;
        for name in listeners.inbound.keys().chain(listeners.app.keys()) {
            if !config.inbound.iter().any(|p| &p.name == name) {
                return Err(ProxyError::Listeners(format!(
                    "no inbound port named {name:?} in the config"
                )));
            }
        }
        if listeners.outbound_capture.is_none() && !listeners.original_destinations.is_empty() {
            return Err(ProxyError::Listeners(
                "originalDestinations needs an outboundCapture listener".into(),
            ));
        }
        let active = Active::compile(config, &listeners, None)?;
        let (tx, rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            active: ArcSwap::from_pointee(active),
            tls: ArcSwap::from_pointee(material),
            telemetry: Telemetry::default(),
            listeners: listeners.clone(),
            shutdown: rx,
        });
        let mut bound = HashMap::new();
        let mut tasks = Vec::new();
        // Bind everything before spawning anything: a start either fully succeeds or fails.
        let mut bind = |key: String, addr: SocketAddr| -> Result<TcpListener, ProxyError> {
            let std = std::net::TcpListener::bind(addr)
                .map_err(|source| ProxyError::Bind { addr, source })?;
            std.set_nonblocking(true)
                .map_err(|source| ProxyError::Bind { addr, source })?;
            bound.insert(
                key,
                std.local_addr()
                    .map_err(|source| ProxyError::Bind { addr, source })?,
            );
            let _guard = runtime.enter();
            TcpListener::from_std(std).map_err(|source| ProxyError::Bind { addr, source })
        };
        let mut pending = Vec::new();
        for (name, addr) in &listeners.inbound {
            pending.push((
                Kind::Inbound(name.clone()),
                bind(format!("inbound:{name}"), *addr)?,
            ));
        }
        if let Some(addr) = listeners.outbound_http {
            pending.push((Kind::OutboundHttp, bind("outbound:http".into(), addr)?));
        }
        if let Some(addr) = listeners.outbound_capture {
            pending.push((Kind::Capture, bind("outbound:capture".into(), addr)?));
        }
        for (key, addr) in &listeners.outbound_tcp {
            pending.push((
                Kind::OutboundTcp(key.clone()),
                bind(format!("outbound:{key}"), *addr)?,
            ));
        }
        for (kind, listener) in pending {
            let shared = shared.clone();
            tasks.push(runtime.spawn(async move {
                match kind {
                    Kind::Inbound(name) => inbound::serve(shared, name, listener).await,
                    Kind::OutboundHttp => outbound::serve_http(shared, listener).await,
                    Kind::OutboundTcp(key) => outbound::serve_tcp(shared, key, listener).await,
                    Kind::Capture => capture::serve(shared, listener).await,
                }
            }));
        }
        tasks.push(runtime.spawn(refresh_dns(shared.clone())));
        Ok(Proxy {
            runtime: None,
            shared,
            shutdown: tx,
            tasks,
            bound,
        })
    }

    /// Swaps in a new config, or returns why it was refused (the old one stays).
    pub fn reload(&self, config_json: &str) -> Result<String, ProxyError> {
        let config = ProxyConfig::parse(config_json)?;
        let previous = self.shared.active.load();
        let active = Active::compile(config, &self.shared.listeners, Some(&previous))?;
        let revision = active.config.revision.clone();
        self.shared.active.store(Arc::new(active));
        Ok(revision)
    }

    /// Swaps in new certificates and trust bundle; established connections are untouched.
    pub fn rotate(&self, material: Material) {
        self.shared.tls.store(Arc::new(material));
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain`, then stops.
    /// On a caller's runtime (`spawn_on`) it can only signal: await [`Proxy::drain`] there.
    pub fn shutdown(&mut self, drain: Duration) {
        let _ = self.shutdown.send(true);
        if let Some(runtime) = self.runtime.take() {
            runtime.block_on(self.drain(drain));
            runtime.shutdown_timeout(Duration::from_millis(100));
        }
    }

    /// Stops accepting and waits up to `drain` for in-flight requests to finish.
    pub async fn drain(&mut self, drain: Duration) {
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let _ = tokio::time::timeout(drain, async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

enum Kind {
    Inbound(String),
    OutboundHttp,
    OutboundTcp(String),
    Capture,
}

async fn refresh_dns(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let active = shared.active.load_full();
        for up in active.clusters.values() {
            if let Some((name, port)) = &up.dns {
                if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), *port)).await {
                    let mut found: Vec<String> = addrs.map(|a| a.to_string()).collect();
                    found.sort();
                    found.dedup();
                    up.set_endpoints(found);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(DNS_REFRESH) => {}
            _ = shutdown.changed() => return,
        }
    }
}
