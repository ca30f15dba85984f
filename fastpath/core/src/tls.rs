//! Mutual TLS between sidecars: TLS 1.3 only, a client certificate always, and the peer's
//! SPIFFE ID taken from (and, outbound, pinned in) its certificate's URI SAN.
//!
//! Identity material arrives as PEM from the agent; this module never sees a CA key. A
//! `Material` is immutable: rotation builds a new one and swaps it in, so handshakes in flight
//! finish with the old one and no connection is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::protocol::{HttpVersion, ALPN_H2, ALPN_HTTP1};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate chain: {0}")]
    Chain(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("certificate has no SPIFFE ID (a spiffe:// URI SAN)")]
    NoSpiffeId,
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// What the inbound side offers by ALPN: HTTP/2 first, then Weft's HTTP/1.1. A client chooses
/// by what it offers (see [`HttpVersion::offered`]); a client offering neither is refused, which
/// tells a mesh peer from a client that merely speaks TLS.
pub fn server_alpn() -> Vec<Vec<u8>> {
    vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
}

/// aws-lc-rs, with TLS_AES_128_GCM_SHA256 first among the TLS 1.3 suites (rustls puts
/// AES-256-GCM first). AES-128-GCM is TLS 1.3's mandatory suite and what BoringSSL (Envoy) and
/// Go choose on CPUs with AES instructions; it has four fewer AES rounds per block, which is
/// most of the cost of a large body between two sidecars (bench/proxies.py, bulk transfer).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The SPIFFE ID in a certificate's URI SANs, if exactly one is present.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            Some(u.to_string())
        }
        _ => None,
    });
    let first = ids.next()?;
    ids.next().is_none().then_some(first)
}

/// One workload's identity and trust: its chain and key, and the bundle it trusts.
pub struct Material {
    pub spiffe_id: String,
    pub server: Arc<ServerConfig>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    clients: Mutex<HashMap<(String, HttpVersion), Arc<ClientConfig>>>,
}

impl std::fmt::Debug for Material {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl Material {
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
    ) -> Result<Material, TlsError> {
        let chain: Vec<_> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Chain(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Chain("no certificate found".into()))?;
        let spiffe_id = spiffe_id(leaf).ok_or(TlsError::NoSpiffeId)?;
        // The key's parse error could echo key bytes; say only what kind of failure it was.
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| TlsError::Key("not a PEM private key".into()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle_pem) {
            let cert = cert.map_err(|e| TlsError::Bundle(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Bundle(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Bundle("no CA certificate found".into()));
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Bundle(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Key(format!("does not match the certificate: {e}")))?;
        server.alpn_protocols = server_alpn();
        Ok(Material {
            spiffe_id,
            server: Arc::new(server),
            roots,
            chain,
            key,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// A client config that presents this workload's certificate and accepts only an upstream
    /// whose chain verifies against the bundle and whose SPIFFE ID is exactly `expected`,
    /// offering by ALPN what `version` wants.
    pub fn client_for(
        &self,
        expected: &str,
        version: HttpVersion,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let mut cache = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let key = (expected.to_owned(), version);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let p = provider();
        let verifier = Arc::new(MeshServerVerifier::new(
            self.roots.clone(),
            p.signature_verification_algorithms,
            ServerCheck::Pinned(expected.to_owned()),
        ));
        let mut config = ClientConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous() // the verifier below does full chain verification, plus the SPIFFE pin
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Key(format!("does not match the certificate: {e}")))?;
        config.alpn_protocols = version.offered();
        let config = Arc::new(config);
        cache.insert(key, config.clone());
        Ok(config)
    }

    /// The server name used on mesh connections; identity is checked by SPIFFE ID, not by it.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("mesh.weft.invalid").expect("static name is valid")
    }
}

/// A client config for TLS origination to destinations outside the mesh: the system's trust
/// roots (honouring `SSL_CERT_FILE`/`SSL_CERT_DIR`, like OpenSSL), normal hostname
/// verification, and no client certificate — the mesh identity is not for outsiders.
pub fn egress_client() -> Result<Arc<ClientConfig>, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    for cert in found.certs {
        // One unparsable system certificate must not disable egress for all the others.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(TlsError::Bundle("no system trust roots found".into()));
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What a client checks of a mesh server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCheck {
    /// The chain against the trust bundle, and the SPIFFE ID pinned, so a workload that holds
    /// another service's certificate cannot pose as this one: what every sidecar does.
    Pinned(String),
    /// The chain only: the benchmark load generator's one verified connection.
    ChainOnly,
    /// Nothing: load generation measures the server's cost, not a verifying client's.
    Nothing,
}

/// The one server-certificate verifier of the workspace: sidecars pin, the load generator
/// (bench/loadgen) checks the chain or nothing. TLS 1.3 only, like every mesh hop.
#[derive(Debug)]
pub struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    check: ServerCheck,
}

impl MeshServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        algorithms: WebPkiSupportedAlgorithms,
        check: ServerCheck,
    ) -> MeshServerVerifier {
        MeshServerVerifier {
            roots,
            algorithms,
            check,
        }
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check == ServerCheck::Nothing {
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
        let ServerCheck::Pinned(expected) = &self.check else {
            return Ok(ServerCertVerified::assertion());
        };
        match spiffe_id(end_entity) {
            Some(id) if &id == expected => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!(
                "upstream identity is {id}, expected {expected}"
            ))),
            None => Err(rustls::Error::General(
                "upstream certificate has no SPIFFE ID".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Mesh hops speak TLS 1.3 only; the config never offers 1.2.
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
        if self.check == ServerCheck::Nothing {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_offered_first_and_the_others_stay() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
        assert!(suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    }
}
