//! fastpath: Weft's data-plane core.
//!
//! Everything the sidecar enforces lives here, free of Python, so it can be unit-tested,
//! benchmarked and fuzzed on its own. The pyo3 binding (`fastpath-python`) only converts
//! plain data at the boundary.
#![forbid(unsafe_code)]

pub mod authz;
pub mod body;
pub mod breaker;
pub mod capture;
pub mod clusters;
pub mod config;
pub mod edge_tls;
mod error;
pub mod ewma;
mod exchange;
pub mod fault;
pub mod grpc;
pub mod hash;
mod http;
pub mod inbound;
pub mod jwt;
pub mod mirror;
pub mod outbound;
pub mod outlier;
pub mod path;
pub mod protocol;
pub mod proxy;
pub mod retry;
pub mod route_regex;
pub mod routing;
pub mod sni;
pub mod state;
mod tcp;
pub mod telemetry;
pub mod tls;
pub mod tunables;
mod upgrade;
pub mod upstream;

pub use proxy::{Proxy, ProxyError};
pub use state::Listeners;

/// The version of this crate, reported by `weft version` so a user can tell which data
/// plane a reconciler was built with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
