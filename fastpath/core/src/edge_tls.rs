//! TLS towards clients outside the mesh, for a gateway's listeners: TLS 1.2 and 1.3, ALPN
//! `h2` and `http/1.1`, no client certificate, the certificate and key read from the files the
//! config names (never carried in it).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::{ConfigError, GatewayListener};

/// What clients may negotiate by ALPN: standard HTTP/2 and HTTP/1.1 (not Weft's mesh names).
const CLIENT_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS server config of each listener, by name.
pub type Acceptors = HashMap<String, Arc<ServerConfig>>;

pub fn acceptors(listeners: &[GatewayListener]) -> Result<Acceptors, ConfigError> {
    listeners
        .iter()
        .map(|l| Ok((l.name.clone(), Arc::new(server_config(l)?))))
        .collect()
}

fn server_config(l: &GatewayListener) -> Result<ServerConfig, ConfigError> {
    let fail = |reason: String| ConfigError::GatewayCertificate {
        listener: l.name.clone(),
        reason,
    };
    let chain_pem = std::fs::read(&l.certificate_file)
        .map_err(|e| fail(format!("{}: {e}", l.certificate_file)))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("{}: {e}", l.certificate_file)))?;
    if chain.is_empty() {
        return Err(fail(format!(
            "{}: no certificate found",
            l.certificate_file
        )));
    }
    let key_pem = std::fs::read(&l.key_file).map_err(|e| fail(format!("{}: {e}", l.key_file)))?;
    // Never echo key bytes: say only which file failed.
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| fail(format!("{}: not a PEM private key", l.key_file)))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| fail(format!("key does not match the certificate: {e}")))?;
    config.alpn_protocols = CLIENT_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_certificate_file_names_the_listener_and_file() {
        let err = acceptors(&[GatewayListener {
            name: "https".into(),
            port: 8443,
            certificate_file: "/nonexistent/tls.crt".into(),
            key_file: "/nonexistent/tls.key".into(),
            authentication: None,
        }])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("https") && err.contains("/nonexistent/tls.crt"),
            "{err}"
        );
    }
}
