//! The running proxy: listeners bound once, config and certificates swapped atomically.
//!
//! `Proxy::start` binds every listener before returning, so "started" means "ready". A reload
//! compiles the new config completely before swapping it in; a config that fails to compile is
//! refused and the old one keeps serving. Requests in flight keep the `Active` they started
//! with (an `Arc`), so nothing is dropped by a swap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ProxyConfig;
pub use crate::error::ProxyError;
use crate::state::{Active, Listeners, Shared};
use crate::telemetry::Telemetry;
use crate::tls::Material;
use crate::tunables::DNS_REFRESH;
use crate::upstream::Upstream;
use crate::{capture, inbound, outbound};

pub struct Proxy {
    /// The runtime `start` made; `None` when the caller's runtime runs the tasks (`spawn_on`).
    runtime: Option<Owned>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub bound: HashMap<String, SocketAddr>,
}

impl Proxy {
    /// Starts on a runtime of its own with `workers` threads: what the binding and the
    /// binary use, so the proxy never competes with its host for a runtime. One worker is a
    /// current-thread runtime driven by a thread of its own: the same single thread, without
    /// the work-stealing scheduler's bookkeeping on every wake-up (nothing to steal from).
    pub fn start(
        config_json: &str,
        material: Material,
        listeners: Listeners,
        workers: usize,
    ) -> Result<Proxy, ProxyError> {
        let owned = Owned::new(workers)?;
        let mut proxy = Proxy::spawn_on(owned.handle(), config_json, material, listeners)?;
        proxy.runtime = Some(owned);
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
            telemetry: Arc::new(Telemetry::default()),
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
        for (name, addr) in &listeners.gateway {
            if !config_has_gateway_listener(&shared, name) {
                return Err(ProxyError::Listeners(format!(
                    "no gateway listener named {name:?} in the config"
                )));
            }
            pending.push((
                Kind::Gateway(name.clone()),
                bind(format!("gateway:{name}"), *addr)?,
            ));
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
                    Kind::Gateway(name) => outbound::gateway::serve(shared, name, listener).await,
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

    /// Counters, histograms, and the span and access-log rings, for the agent to read.
    pub fn telemetry(&self) -> &Telemetry {
        &self.shared.telemetry
    }

    /// The revision of the config in force.
    pub fn revision(&self) -> String {
        self.observer().revision()
    }

    /// A cluster of the config in force, with its endpoints' live state (in-flight requests,
    /// health), for admin output and tests.
    pub fn cluster(&self, name: &str) -> Option<Arc<Upstream>> {
        self.shared.active.load().clusters.get(name).cloned()
    }

    /// A read-only view of telemetry and the config in force that outlives the proxy: the
    /// requests that finish during a drain must still reach the logs and metrics.
    pub fn observer(&self) -> Observer {
        Observer(Arc::clone(&self.shared))
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
            runtime.stop();
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

/// See [`Proxy::observer`].
#[derive(Debug, Clone)]
pub struct Observer(Arc<Shared>);

impl Observer {
    pub fn telemetry(&self) -> &Telemetry {
        &self.0.telemetry
    }

    pub fn revision(&self) -> String {
        self.0.active.load().config.revision.clone()
    }

    /// The upstreams in force, as the admin port's `/clusters` shows them (JSON): endpoints,
    /// ejections, circuit breakers and mirrors.
    pub fn clusters_json(&self) -> String {
        crate::clusters::report_json(&self.0.active.load())
    }
}

/// The runtime `Proxy::start` made, and for one worker the thread that drives it.
enum Owned {
    MultiThread(tokio::runtime::Runtime),
    CurrentThread {
        runtime: Arc<tokio::runtime::Runtime>,
        stop: tokio::sync::oneshot::Sender<()>,
        driver: std::thread::JoinHandle<()>,
    },
}

/// Runtimes started in this process so far, to name each one's threads apart.
static RUNTIMES: AtomicUsize = AtomicUsize::new(0);

impl Owned {
    fn new(workers: usize) -> Result<Owned, ProxyError> {
        // `fastpath-N`: every thread of one runtime (workers, the driver, the blocking pool)
        // shares a name no other proxy in the process has, so a process hosting several can
        // tell whose thread is whose (a thread name holds 15 bytes).
        let name = format!(
            "fastpath-{}",
            RUNTIMES.fetch_add(1, Ordering::Relaxed) % 100_000
        );
        if workers > 1 {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name(name)
                .enable_all()
                .build()
                .map_err(ProxyError::Runtime)?;
            return Ok(Owned::MultiThread(runtime));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name(name.clone())
            .enable_all()
            .build()
            .map_err(ProxyError::Runtime)?;
        let runtime = Arc::new(runtime);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let driving = runtime.clone();
        // The one thread that runs every task; `block_on` here is what drives the scheduler
        // and the I/O and timer drivers until `stop`.
        let driver = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                driving.block_on(async {
                    let _ = stopped.await;
                })
            })
            .map_err(ProxyError::Runtime)?;
        Ok(Owned::CurrentThread {
            runtime,
            stop,
            driver,
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match self {
            Owned::MultiThread(runtime) => runtime.handle(),
            Owned::CurrentThread { runtime, .. } => runtime.handle(),
        }
    }

    /// Runs `future` to completion from the calling thread. On the current-thread runtime the
    /// driver thread keeps running the tasks; this thread only waits for `future`.
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        match self {
            Owned::MultiThread(runtime) => runtime.block_on(future),
            Owned::CurrentThread { runtime, .. } => runtime.block_on(future),
        }
    }

    /// Stops every task still running (after the drain) and the threads.
    fn stop(self) {
        match self {
            Owned::MultiThread(runtime) => runtime.shutdown_timeout(Duration::from_millis(100)),
            Owned::CurrentThread {
                runtime,
                stop,
                driver,
            } => {
                let _ = stop.send(());
                let _ = driver.join();
                if let Ok(runtime) = Arc::try_unwrap(runtime) {
                    runtime.shutdown_timeout(Duration::from_millis(100));
                }
            }
        }
    }
}

enum Kind {
    Inbound(String),
    OutboundHttp,
    OutboundTcp(String),
    Capture,
    Gateway(String),
}

fn config_has_gateway_listener(shared: &Shared, name: &str) -> bool {
    shared
        .active
        .load()
        .config
        .gateway
        .iter()
        .any(|l| l.name == name)
}

/// Every [`DNS_REFRESH`]: DNS clusters resolved again, and idle HTTP/1.1 connections the peer
/// has closed meanwhile let go (nothing polls an idle connection, so without this a peer's
/// close would hold a socket until the next request to that endpoint).
async fn refresh_dns(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let active = shared.active.load_full();
        for up in active.clusters.values() {
            up.resolve().await;
        }
        for up in active.clusters.values().chain(active.apps.values()) {
            up.sweep_idle();
        }
        tokio::select! {
            _ = tokio::time::sleep(DNS_REFRESH) => {}
            _ = shutdown.changed() => return,
        }
    }
}
