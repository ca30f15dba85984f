//! The pyo3 binding of fastpath, imported in Python as `reconciler._native`.
//!
//! Deliberately thin: plain data crosses the boundary (str and bytes in; str, dict or an
//! exception out), the GIL is released whenever Rust does real work, and nothing on a request
//! path ever calls back into Python.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use fastpath::proxy::Observer;
use fastpath::tls::Material;
use fastpath::{Listeners, Proxy, ProxyError};

/// mimalloc for every allocation the data plane makes: a request allocates and frees many small
/// objects (header maps, strings, boxed futures), and glibc malloc/free was about 9 % of a
/// proxy's samples under load (docs/benchmarks.md, "Where the time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

create_exception!(
    _native,
    ConfigError,
    PyValueError,
    "A ProxyConfig or listener set was refused."
);
create_exception!(
    _native,
    CertificateError,
    PyValueError,
    "Certificates or the trust bundle were refused."
);
create_exception!(
    _native,
    BindError,
    PyOSError,
    "A listener could not be bound."
);

fn to_py(e: ProxyError) -> PyErr {
    match e {
        ProxyError::Config(_) | ProxyError::Listeners(_) => ConfigError::new_err(e.to_string()),
        ProxyError::Tls(_) => CertificateError::new_err(e.to_string()),
        ProxyError::Bind { .. } => BindError::new_err(e.to_string()),
        ProxyError::Runtime(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

fn material(chain: &[u8], key: &[u8], bundle: &[u8]) -> PyResult<Material> {
    Material::from_pem(chain, key, bundle).map_err(|e| CertificateError::new_err(e.to_string()))
}

/// The fastpath version this extension was built from.
#[pyfunction]
fn version() -> &'static str {
    fastpath::VERSION
}

/// Checks that `pattern` compiles in the data plane's regex engine; raises ValueError with
/// a one-line reason otherwise.
#[pyfunction]
fn check_route_regex(pattern: &str) -> PyResult<()> {
    fastpath::route_regex::compile(pattern)
        .map(drop)
        .map_err(|e| PyValueError::new_err(e.reason))
}

/// The normal form of a request path, exactly as the sidecar computes it before authorization
/// and routing (`fastpath::path`), so validation can refuse policy paths no request can match.
/// `escaped_slashes` is the intent's `reject`, `keep` or `decode`; raises ValueError with the
/// reason when the path has no normal form.
#[pyfunction]
fn normalize_path(path: &str, escaped_slashes: &str) -> PyResult<String> {
    let mode = fastpath::path::EscapedSlashes::parse(escaped_slashes).ok_or_else(|| {
        PyValueError::new_err(format!("unknown escapedSlashes mode {escaped_slashes:?}"))
    })?;
    fastpath::path::normalize(path, mode)
        .map(|p| p.into_owned())
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// fastpath's inbound authorization, exactly as the sidecar decides one request: `config` is a
/// whole ProxyConfig (checked as `reload` checks it), `port` the inbound port's number, `peer`
/// the caller's SPIFFE ID (None: no identity, a plaintext caller in PERMISSIVE mode), and
/// `method` and `path` the request's (both None: a TCP connection); the path is normalized
/// with the config's rules and loses its query, as inbound does before deciding. Returns
/// whether it is allowed and the policy that decided. ValueError when the sidecar would not
/// decide at all: a peer that is not a workload SPIFFE ID of the config's trust domain (its
/// connection is closed first), or a path with no normal form (answered 400). For tests that
/// prove intent equal to enforcement.
#[pyfunction]
#[pyo3(signature = (config, port, peer, method = None, path = None))]
fn authorize(
    config: &str,
    port: u16,
    peer: Option<&str>,
    method: Option<&str>,
    path: Option<&str>,
) -> PyResult<(bool, String)> {
    let config = fastpath::config::ProxyConfig::parse(config)
        .map_err(|e| ConfigError::new_err(e.to_string()))?;
    let inbound = config
        .inbound
        .iter()
        .find(|p| p.port == port)
        .ok_or_else(|| ConfigError::new_err(format!("no inbound port {port} in the config")))?;
    let peer = match peer {
        None => None,
        Some(id) => Some(
            fastpath::authz::Peer::in_trust_domain(id, &config.trust_domain).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "{id:?} is not a workload SPIFFE ID of trust domain {:?}",
                    config.trust_domain
                ))
            })?,
        ),
    };
    let normal = match path {
        None => None,
        Some(p) => {
            let p = p.split_once('?').map_or(p, |(p, _)| p);
            let p = if p.is_empty() { "/" } else { p }; // as a URI reads an empty path
            Some(
                fastpath::path::normalize(p, config.path_normalization.escaped_slashes).map_err(
                    |e| PyValueError::new_err(format!("path {p:?} is refused with a 400: {e}")),
                )?,
            )
        }
    };
    let decision = fastpath::authz::decide(
        inbound,
        peer.as_ref(),
        fastpath::authz::Request {
            method,
            path: normal.as_deref(),
        },
    );
    Ok((decision.allowed, decision.policy.to_owned()))
}

/// Checks that `jwks` (a JWKS document, JSON) holds signing keys fastpath accepts; returns
/// how many; raises ValueError with a one-line reason otherwise.
#[pyfunction]
fn check_jwks(jwks: &str) -> PyResult<usize> {
    fastpath::jwt::check_jwks(jwks).map_err(PyValueError::new_err)
}

/// Checks a gateway certificate (PEM chain and key, as a Kubernetes Secret's tls.crt and
/// tls.key hold them) as a listener loads it; returns its DNS names, or raises ValueError
/// naming the part that failed (never the key's bytes).
#[pyfunction]
fn check_edge_certificate(chain: &[u8], key: &[u8]) -> PyResult<Vec<String>> {
    fastpath::edge_tls::check_certificate(chain, key).map_err(PyValueError::new_err)
}

/// Checks a client CA bundle for edge mTLS; returns how many CAs it holds.
#[pyfunction]
fn check_edge_client_ca(pem: &[u8]) -> PyResult<usize> {
    fastpath::edge_tls::check_client_ca(pem).map_err(PyValueError::new_err)
}

/// A running proxy. Its own tokio threads serve traffic; these methods only steer it.
#[pyclass(module = "reconciler._native", name = "Proxy")]
struct PyProxy {
    inner: Mutex<Option<Proxy>>,
    // Telemetry and the config in force stay readable after shutdown: the requests that
    // finish during the drain must still reach the logs and metrics.
    observer: Observer,
}

impl PyProxy {
    fn with<T>(&self, f: impl FnOnce(&mut Proxy) -> PyResult<T>) -> PyResult<T> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(p) => f(p),
            None => Err(PyRuntimeError::new_err("the proxy has been shut down")),
        }
    }
}

#[pymethods]
impl PyProxy {
    /// Swaps in a new ProxyConfig; returns its revision. On error the old config stays.
    fn reload(&self, py: Python<'_>, config: &str) -> PyResult<String> {
        py.detach(|| self.with(|p| p.reload(config).map_err(to_py)))
    }

    /// Swaps in a new certificate chain, key and trust bundle (PEM).
    fn rotate(&self, py: Python<'_>, cert_chain: &[u8], key: &[u8], bundle: &[u8]) -> PyResult<()> {
        let m = py.detach(|| material(cert_chain, key, bundle))?;
        self.with(|p| {
            p.rotate(m);
            Ok(())
        })
    }

    /// Cumulative request and TCP counters, as JSON.
    fn stats(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| Ok(self.observer.telemetry().snapshot_json()))
    }

    /// The upstreams in force: endpoints, ejections, circuit breakers and mirrors, as JSON.
    fn clusters(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| Ok(self.observer.clusters_json()))
    }

    /// Up to `max` finished spans, oldest first, as a JSON list.
    #[pyo3(signature = (max = 1024))]
    fn drain_spans(&self, py: Python<'_>, max: usize) -> PyResult<String> {
        py.detach(|| {
            let spans = self.observer.telemetry().drain_spans(max);
            serde_json::to_string(&spans).map_err(|e| PyRuntimeError::new_err(e.to_string()))
        })
    }

    /// Keep finished spans for `drain_spans` (the default) or not: a sidecar with no span
    /// exporter turns this off, so no ring of unread spans grows in its memory.
    fn record_spans(&self, on: bool) {
        self.observer.telemetry().record_spans(on);
    }

    /// Up to `max` access log entries, oldest first, as a JSON list.
    #[pyo3(signature = (max = 4096))]
    fn drain_access_log(&self, py: Python<'_>, max: usize) -> PyResult<String> {
        py.detach(|| {
            let entries = self.observer.telemetry().drain_access_log(max);
            serde_json::to_string(&entries).map_err(|e| PyRuntimeError::new_err(e.to_string()))
        })
    }

    /// Up to `max` access log entries, oldest first, as JSON lines ready to write: each object
    /// begins with `"event":"access"`. Serialised here, without the GIL, so the agent's only
    /// work per entry is a write: decoding and re-encoding thousands of entries in Python every
    /// 0.2 s took the sidecar's core away from the proxy in bursts (its p99 tail).
    #[pyo3(signature = (max = 4096))]
    fn drain_access_log_lines(&self, py: Python<'_>, max: usize) -> PyResult<String> {
        py.detach(|| {
            let mut out = String::new();
            for entry in self.observer.telemetry().drain_access_log(max) {
                let json = serde_json::to_string(&entry)
                    .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
                out.push_str("{\"event\":\"access\"");
                // `json` is a non-empty object: "{...}"; splice the event field in front.
                if json.len() > 2 {
                    out.push(',');
                }
                out.push_str(&json[1..]);
                out.push('\n');
            }
            Ok(out)
        })
    }

    /// Where each listener is bound ("inbound:<port>", "outbound:http", "outbound:<svc:port>").
    fn bound(&self) -> PyResult<HashMap<String, String>> {
        self.with(|p| {
            Ok(p.bound
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect())
        })
    }

    /// The revision of the config in force.
    fn revision(&self) -> PyResult<String> {
        Ok(self.observer.revision())
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain_timeout` seconds.
    #[pyo3(signature = (drain_timeout = 5.0))]
    fn shutdown(&self, py: Python<'_>, drain_timeout: f64) -> PyResult<()> {
        let taken = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut proxy) = taken {
            py.detach(|| proxy.shutdown(Duration::from_secs_f64(drain_timeout.max(0.0))));
        }
        Ok(())
    }
}

/// Starts a proxy: every listener is bound before this returns, so it is ready when it does.
#[pyfunction]
#[pyo3(signature = (config, cert_chain, key, bundle, listeners, workers = 1))]
fn start(
    py: Python<'_>,
    config: &str,
    cert_chain: &[u8],
    key: &[u8],
    bundle: &[u8],
    listeners: &str,
    workers: usize,
) -> PyResult<PyProxy> {
    let listeners: Listeners = serde_json::from_str(listeners)
        .map_err(|e| ConfigError::new_err(format!("invalid listeners: {e}")))?;
    let proxy = py.detach(|| {
        let m = material(cert_chain, key, bundle)?;
        Proxy::start(config, m, listeners, workers).map_err(to_py)
    })?;
    let observer = proxy.observer();
    Ok(PyProxy {
        inner: Mutex::new(Some(proxy)),
        observer,
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(check_route_regex, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_path, m)?)?;
    m.add_function(wrap_pyfunction!(check_jwks, m)?)?;
    m.add_function(wrap_pyfunction!(check_edge_certificate, m)?)?;
    m.add_function(wrap_pyfunction!(check_edge_client_ca, m)?)?;
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(authorize, m)?)?;
    m.add_class::<PyProxy>()?;
    m.add("ConfigError", m.py().get_type::<ConfigError>())?;
    m.add("CertificateError", m.py().get_type::<CertificateError>())?;
    m.add("BindError", m.py().get_type::<BindError>())?;
    Ok(())
}
