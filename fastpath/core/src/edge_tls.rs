//! TLS towards clients outside the mesh, for a gateway's HTTPS listeners: TLS 1.2 and 1.3, ALPN
//! `h2` and `http/1.1`, the certificate chosen by the client's SNI among the listener's
//! certificates, and optionally a client certificate required (edge mTLS). Certificates, keys
//! and client CAs are read from the files the config names (never carried in it).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ConfigError, EdgeCertificate, GatewayListener, ListenerProtocol};

/// What clients may negotiate by ALPN: standard HTTP/2 and HTTP/1.1 (not Weft's mesh names).
const CLIENT_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS server config of each HTTPS listener, by name.
pub type Acceptors = HashMap<String, Arc<ServerConfig>>;

pub fn acceptors(listeners: &[GatewayListener]) -> Result<Acceptors, ConfigError> {
    listeners
        .iter()
        .filter(|l| l.protocol == ListenerProtocol::Https)
        .map(|l| Ok((l.name.clone(), Arc::new(server_config(l)?))))
        .collect()
}

fn server_config(l: &GatewayListener) -> Result<ServerConfig, ConfigError> {
    let fail = |reason: String| ConfigError::GatewayCertificate {
        listener: l.name.clone(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    if l.certificates.is_empty() {
        return Err(fail("an HTTPS listener needs a certificate".into()));
    }
    let certs = l
        .certificates
        .iter()
        .map(|c| load(c, &provider).map_err(&fail))
        .collect::<Result<Vec<_>, _>>()?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail(e.to_string()))?;
    let builder = match &l.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(file) => {
            let roots = client_roots(file)
                .map_err(|e| match &l.client_ca_secret {
                    Some(secret) => format!("Secret {secret}: {e}"),
                    None => e,
                })
                .map_err(&fail)?;
            // Required, not optional: a client without a certificate fails the handshake.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail(format!("client CA {file}: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni { certs }));
    config.alpn_protocols = CLIENT_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Where a certificate came from, for errors: the Secret it was mounted from, else its file.
fn origin(c: &EdgeCertificate, file: &str) -> String {
    match &c.secret {
        Some(secret) => format!("Secret {secret} ({file})"),
        None => file.to_owned(),
    }
}

fn load(c: &EdgeCertificate, provider: &CryptoProvider) -> Result<Named, String> {
    let chain_pem = std::fs::read(&c.certificate_file)
        .map_err(|e| format!("{}: {e}", origin(c, &c.certificate_file)))?;
    let key_pem =
        std::fs::read(&c.key_file).map_err(|e| format!("{}: {e}", origin(c, &c.key_file)))?;
    parse(&chain_pem, &key_pem, provider).map_err(|(which, e)| {
        let file = if which == Part::Key {
            &c.key_file
        } else {
            &c.certificate_file
        };
        format!("{}: {e}", origin(c, file))
    })
}

#[derive(Debug, PartialEq)]
enum Part {
    Chain,
    Key,
}

fn parse(
    chain_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Named, (Part, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| (Part::Chain, e.to_string()))?;
    if chain.is_empty() {
        return Err((Part::Chain, "no certificate found".into()));
    }
    // A PEM block that is not DER of a certificate is the chain's fault, not the key's (which
    // the key comparison below would otherwise be blamed for).
    if let Some(bad) = chain
        .iter()
        .position(|c| x509_parser::parse_x509_certificate(c.as_ref()).is_err())
    {
        return Err((Part::Chain, format!("certificate {bad} is not X.509 DER")));
    }
    // Never echo key bytes: say only which part failed.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| (Part::Key, "not a PEM private key".to_owned()))?;
    let names = dns_names(&chain[0]);
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        (
            Part::Key,
            format!("key does not match the certificate: {e}"),
        )
    })?;
    Ok(Named {
        names,
        key: Arc::new(key),
    })
}

/// Checks a PEM chain and key as a gateway listener loads them, for a target to check a
/// Secret before pods mount it; returns the DNS names the certificate is valid for.
pub fn check_certificate(chain_pem: &[u8], key_pem: &[u8]) -> Result<Vec<String>, String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    parse(chain_pem, key_pem, &provider)
        .map(|n| n.names)
        .map_err(|(which, e)| match which {
            Part::Chain => format!("tls.crt: {e}"),
            Part::Key => format!("tls.key: {e}"),
        })
}

/// Checks a PEM CA bundle as an edge-mTLS listener loads it; returns how many CAs it holds.
pub fn check_client_ca(pem: &[u8]) -> Result<usize, String> {
    roots_from(pem).map(|r| r.len())
}

fn client_roots(file: &str) -> Result<RootCertStore, String> {
    let pem = std::fs::read(file).map_err(|e| format!("client CA {file}: {e}"))?;
    roots_from(&pem).map_err(|e| format!("client CA {file}: {e}"))
}

fn roots_from(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate found".into());
    }
    Ok(roots)
}

/// The DNS names a certificate is valid for (its SANs), lowercased.
fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

#[derive(Debug)]
struct Named {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks the certificate for the client's SNI: one naming it exactly, else one whose wildcard
/// SAN covers it (`*.example.com` covers one label, as clients check), else the first (the
/// default, also for clients that send no SNI).
#[derive(Debug)]
struct BySni {
    certs: Vec<Named>,
}

impl BySni {
    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let chosen = sni.map(str::to_ascii_lowercase).and_then(|name| {
            let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            self.certs
                .iter()
                .find(|c| c.names.contains(&name))
                .or_else(|| {
                    let w = wildcard?;
                    self.certs.iter().find(|c| c.names.contains(&w))
                })
        });
        &chosen.unwrap_or(&self.certs[0]).key
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(cert: &str, key: &str) -> GatewayListener {
        GatewayListener {
            name: "https".into(),
            port: 8443,
            protocol: ListenerProtocol::Https,
            certificates: vec![EdgeCertificate {
                certificate_file: cert.into(),
                key_file: key.into(),
                secret: None,
            }],
            client_ca_file: None,
            client_ca_secret: None,
            https_redirect: None,
            authentication: None,
        }
    }

    #[test]
    fn a_missing_certificate_file_names_the_listener_and_file() {
        let err = acceptors(&[listener("/nonexistent/tls.crt", "/nonexistent/tls.key")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("https") && err.contains("/nonexistent/tls.crt"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_secret_is_named() {
        let mut l = listener("/nonexistent/tls.crt", "/nonexistent/tls.key");
        l.certificates[0].secret = Some("edge/shop-tls".into());
        let err = acceptors(&[l]).unwrap_err().to_string();
        assert!(err.contains("Secret edge/shop-tls"), "{err}");
    }

    #[test]
    fn a_secrets_pem_is_checked_like_the_files() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let (chain, pem) = (cert.pem(), key.serialize_pem());
        assert_eq!(
            check_certificate(chain.as_bytes(), pem.as_bytes()).unwrap(),
            ["shop.example.com"]
        );
        let err = check_certificate(chain.as_bytes(), other.serialize_pem().as_bytes());
        assert!(err.unwrap_err().starts_with("tls.key: key does not match"));
        let err = check_certificate(b"nonsense", pem.as_bytes()).unwrap_err();
        assert_eq!(err, "tls.crt: no certificate found");
        let garbled = b"-----BEGIN CERTIFICATE-----\nbm90IG9uZQ==\n-----END CERTIFICATE-----\n";
        let err = check_certificate(garbled, pem.as_bytes()).unwrap_err();
        assert_eq!(err, "tls.crt: certificate 0 is not X.509 DER");
        assert_eq!(check_client_ca(chain.as_bytes()), Ok(1));
        assert!(check_client_ca(b"").is_err());
    }

    #[test]
    fn plain_http_listeners_need_no_certificate() {
        let mut l = listener("/x", "/y");
        l.protocol = ListenerProtocol::Http;
        l.certificates.clear();
        assert!(acceptors(&[l]).unwrap().is_empty());
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let make = |names: &[&str]| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            let cert = params.self_signed(&key).unwrap();
            let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            let chain = vec![cert.der().clone()];
            Named {
                names: dns_names(&chain[0]),
                key: Arc::new(CertifiedKey::from_der(chain, der, &provider).unwrap()),
            }
        };
        let sni = BySni {
            certs: vec![
                make(&["default.example"]),
                make(&["*.example.test"]),
                make(&["api.example.test"]),
            ],
        };
        let which = |name: Option<&str>| {
            let key = sni.pick(name);
            sni.certs
                .iter()
                .position(|c| Arc::ptr_eq(&c.key, key))
                .unwrap()
        };
        assert_eq!(which(Some("api.example.test")), 2, "exact beats wildcard");
        assert_eq!(which(Some("WWW.example.test")), 1);
        assert_eq!(
            which(Some("a.b.example.test")),
            0,
            "a wildcard covers one label"
        );
        assert_eq!(which(Some("other.org")), 0);
        assert_eq!(which(None), 0);
    }
}
