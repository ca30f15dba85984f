//! The client side of a mesh handshake, as a sidecar would make it: TLS 1.3 only, X25519 only,
//! TLS_AES_128_GCM_SHA256 only (so every server negotiates the same thing), a client
//! certificate always, the server's chain verified against the bundle, and no session
//! resumption, so every connection is a full handshake with both certificates.
//!
//! Server names are not checked: mesh certificates carry a SPIFFE URI SAN, not a DNS name.
//! Under load the server is not verified at all (`Verify::No`): what is measured is the server's
//! cost, and a client that verifies pays as much as the server does and would bind the rate
//! first. One verified connection before the load shows the server's chain is good.

use std::path::Path;
use std::sync::Arc;

use fastpath::tls::{MeshServerVerifier, ServerCheck};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// Where a client's identity and trust come from.
pub struct ClientFiles<'a> {
    pub cert_chain: &'a Path,
    pub key: &'a Path,
    pub bundle: &'a Path,
}

/// Whether the client checks the server's chain and handshake signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    Chain,
    No,
}

pub fn client_config(
    files: &ClientFiles<'_>,
    verify: Verify,
) -> Result<Arc<ClientConfig>, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(files.cert_chain)
        .and_then(|it| it.collect())
        .map_err(|e| file_error(files.cert_chain, e.to_string()))?;
    // A key's parse error could echo key bytes; say only what kind of failure it was.
    let key = PrivateKeyDer::from_pem_file(files.key)
        .map_err(|_| file_error(files.key, "not a PEM private key".into()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(files.bundle)
        .map_err(|e| file_error(files.bundle, e.to_string()))?
    {
        let cert = cert.map_err(|e| file_error(files.bundle, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| file_error(files.bundle, e.to_string()))?;
    }
    let base = aws_lc_rs::default_provider();
    let provider = CryptoProvider {
        cipher_suites: vec![aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![aws_lc_rs::kx_group::X25519],
        ..base
    };
    // fastpath's own verifier: the chain against the bundle (no host name: mesh servers are
    // named by SPIFFE ID), or nothing under load.
    let check = match verify {
        Verify::Chain => ServerCheck::ChainOnly,
        Verify::No => ServerCheck::Nothing,
    };
    let verifier = Arc::new(MeshServerVerifier::new(
        Arc::new(roots),
        provider.signature_verification_algorithms,
        check,
    ));
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // the verifier checks the whole chain; only the name check is skipped
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("mesh.weft.invalid").expect("static name is valid")
}
