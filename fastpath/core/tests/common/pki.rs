//! A test PKI made at test time: a P-256 CA and workload certificates carrying a SPIFFE ID,
//! shaped like the ones `weft ca` issues (URI SAN, serverAuth + clientAuth).

use fastpath::tls::Material;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// One workload's PEM files, as the agent hands them to fastpath.
#[derive(Clone)]
pub struct Identity {
    pub chain: String,
    pub key: String,
    pub bundle: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
        Ca { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn issue(&self, spiffe_id: &str) -> Identity {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id.try_into().expect("a SPIFFE ID is IA5"),
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Identity {
            chain: cert.pem(),
            key: key.serialize_pem(),
            bundle: self.pem(),
        }
    }
}

impl Identity {
    pub fn material(&self) -> Material {
        Material::from_pem(
            self.chain.as_bytes(),
            self.key.as_bytes(),
            self.bundle.as_bytes(),
        )
        .expect("test material is valid")
    }
}
