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

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

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
    let verifier = Arc::new(ChainOnlyVerifier {
        roots: Arc::new(roots),
        algorithms: provider.signature_verification_algorithms,
        verify,
    });
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

/// Chain verification against the bundle, without a host name check; or, with `Verify::No`,
/// no verification.
#[derive(Debug)]
struct ChainOnlyVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    verify: Verify,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verify == Verify::No {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.verify == Verify::No {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
