//! Why a proxy could not start or a config could not be swapped in: the one error type the
//! lifecycle (`proxy`) and the compiled state (`state`) share, kept apart so neither imports
//! the other for it.

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::tls::TlsError;

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
