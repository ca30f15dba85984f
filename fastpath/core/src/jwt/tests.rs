//! Tests of JWT verification and of the end-user conditions, with keys made at test time.

use super::*;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header};
use serde_json::json;

const ISS: &str = "https://idp.test";

struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

fn es256(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    Signer {
        kid: kid.into(),
        alg: Algorithm::ES256,
        key,
        jwk,
    }
}

fn ed25519(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
    Signer {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid}),
    }
}

impl Signer {
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    get_current_timestamp()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "sub": "alice", "aud": "orders", "exp": now() + 300});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn authn(signers: &[&Signer], required: bool) -> Authentication {
    let jwks = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
    serde_json::from_value(json!({
        "policy": "b/users",
        "required": required,
        "issuers": [{
            "issuer": ISS,
            "audiences": ["orders"],
            "jwks": jwks,
            "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}],
            "fromCookies": ["session"],
            "fromParams": ["access_token"],
            "forwardClaims": [{"claim": "groups", "header": "x-user-groups"}],
        }],
    }))
    .unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h
}

fn check(a: &Authentication, token: &str) -> Outcome {
    a.authenticate(&bearer(token), &Uri::from_static("/orders"))
}

#[test]
fn a_valid_token_names_its_principal_es256_and_eddsa() {
    for signer in [es256("k1"), ed25519("k2")] {
        let a = authn(&[&signer], true);
        let p = check(&a, &signer.sign(&claims(json!({}))))
            .unwrap()
            .unwrap();
        assert_eq!(p.principal, "https://idp.test/alice");
        assert_eq!(p.claims["aud"], "orders");
    }
}

#[test]
fn every_bad_token_is_refused_with_its_reason() {
    let s = es256("k1");
    let a = authn(&[&s], true);
    let t = now();
    let cases = [
        (claims(json!({"exp": t - 3600})), Refusal::Expired),
        (claims(json!({"nbf": t + 3600})), Refusal::NotYetValid),
        (claims(json!({"aud": "billing"})), Refusal::WrongAudience),
        (
            claims(json!({"iss": "https://evil.test"})),
            Refusal::WrongIssuer,
        ),
    ];
    for (c, want) in cases {
        assert_eq!(check(&a, &s.sign(&c)).unwrap_err(), want, "{c}");
    }
    // Within the leeway an expired token still passes (clock skew between IdP and mesh).
    assert!(check(&a, &s.sign(&claims(json!({"exp": t - 10})))).is_ok());
    // A token without exp never expires: refused.
    let mut no_exp = claims(json!({}));
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(check(&a, &s.sign(&no_exp)).unwrap_err(), Refusal::Expired);
    // Same kid, other key: the signature does not verify.
    let impostor = es256("k1");
    assert_eq!(
        check(&a, &impostor.sign(&claims(json!({})))).unwrap_err(),
        Refusal::BadSignature
    );
    assert_eq!(
        check(&a, &es256("k9").sign(&claims(json!({})))).unwrap_err(),
        Refusal::UnknownKid
    );
    assert_eq!(check(&a, "not.a.token").unwrap_err(), Refusal::Malformed);
}

#[test]
fn hmac_and_none_are_refused() {
    let s = es256("k1");
    let a = authn(&[&s], true);
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    assert_eq!(check(&a, &hs).unwrap_err(), Refusal::AlgorithmNotAllowed);
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "k1"})),
        b64(claims(json!({})))
    );
    assert_eq!(check(&a, &none).unwrap_err(), Refusal::Malformed);
    let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]});
    let err = check_jwks(&oct.to_string()).unwrap_err();
    assert!(err.contains("symmetric"), "{err}");
}

#[test]
fn no_token_is_refused_only_when_required() {
    let s = es256("k1");
    let none = HeaderMap::new();
    let uri = Uri::from_static("/");
    assert_eq!(
        authn(&[&s], true).authenticate(&none, &uri).unwrap_err(),
        Refusal::Missing
    );
    assert!(authn(&[&s], false)
        .authenticate(&none, &uri)
        .unwrap()
        .is_none());
    assert_eq!(
        Refusal::Missing.reason(),
        "no token",
        "the reason clients and logs see"
    );
}

#[test]
fn tokens_are_found_in_cookies_and_params_too() {
    let s = es256("k1");
    let a = authn(&[&s], true);
    let token = s.sign(&claims(json!({})));
    let mut h = HeaderMap::new();
    h.insert(
        "cookie",
        format!("theme=dark; session={token}").parse().unwrap(),
    );
    let p = a.authenticate(&h, &Uri::from_static("/")).unwrap().unwrap();
    a.prepare_upstream(Some(&p), &mut h);
    assert_eq!(h["cookie"], "theme=dark", "the token cookie is removed");
    let uri: Uri = format!("/x?a=1&access_token={token}").parse().unwrap();
    assert!(a.authenticate(&HeaderMap::new(), &uri).unwrap().is_some());
}

#[test]
fn claims_reach_the_app_only_from_a_verified_token() {
    let s = es256("k1");
    let a = authn(&[&s], true);
    let mut h = bearer(&s.sign(&claims(json!({"groups": ["buyers", "staff"]}))));
    h.insert("x-user-groups", "admins".parse().unwrap()); // a caller's forgery
    let p = a.authenticate(&h, &Uri::from_static("/")).unwrap().unwrap();
    a.prepare_upstream(Some(&p), &mut h);
    assert_eq!(h["x-user-groups"], "buyers,staff");
    assert!(h.get("authorization").is_none(), "the token is stripped");
    let mut anonymous = HeaderMap::new();
    anonymous.insert("x-user-groups", "admins".parse().unwrap());
    a.prepare_upstream(None, &mut anonymous);
    assert!(anonymous.get("x-user-groups").is_none());
}

#[test]
fn principal_and_claim_conditions() {
    let s = es256("k1");
    let a = authn(&[&s], true);
    let c = claims(
        json!({"groups": ["buyers"], "scope": "orders:read orders:write",
                          "realm": {"roles": ["admin"]}}),
    );
    let p = check(&a, &s.sign(&c)).unwrap().unwrap();
    let m = |v: Value| serde_json::from_value::<PrincipalMatch>(v).unwrap();
    assert!(m(json!({"principals": ["https://idp.test/alice"]})).matches(Some(&p)));
    assert!(m(json!({"principals": ["https://idp.test/*"]})).matches(Some(&p)));
    assert!(m(json!({"principals": ["*"]})).matches(Some(&p)));
    assert!(!m(json!({"principals": ["https://idp.test/bob"]})).matches(Some(&p)));
    let groups = m(json!({"claims": [{"path": ["groups"], "values": ["buyers", "x"]}]}));
    assert!(groups.matches(Some(&p)));
    assert!(!groups.matches(None), "no principal matches no condition");
    assert!(!m(json!({"claims": [{"path": ["groups"], "values": ["sellers"]}]})).matches(Some(&p)));
    assert!(m(
        json!({"claims": [{"path": ["scope"], "values": ["orders:write"], "spaceSeparated": true}]})
    )
    .matches(Some(&p)));
    assert!(
        !m(json!({"claims": [{"path": ["scope"], "values": ["orders:write"]}]})).matches(Some(&p)),
        "a space-separated claim is one string unless the rule says otherwise"
    );
    assert!(
        m(json!({"claims": [{"path": ["realm", "roles"], "values": ["admin"]}]})).matches(Some(&p))
    );
    // Conditions AND together.
    assert!(!m(
        json!({"claims": [{"path": ["groups"], "values": ["buyers"]},
                                 {"path": ["aud"], "values": ["billing"]}]})
    )
    .matches(Some(&p)));
}

#[test]
fn rotation_is_a_new_key_set() {
    let old = es256("old");
    let new = es256("new");
    let token = new.sign(&claims(json!({})));
    assert_eq!(
        check(&authn(&[&old], true), &token).unwrap_err(),
        Refusal::UnknownKid
    );
    assert!(check(&authn(&[&old, &new], true), &token).is_ok());
}

#[test]
fn issuers_without_keys_yet_refuse_every_token() {
    let s = es256("k1");
    let mut a = authn(&[&s], true);
    a.issuers[0].jwks = Keys::default();
    assert_eq!(
        check(&a, &s.sign(&claims(json!({})))).unwrap_err(),
        Refusal::NoKeys
    );
}

fn cached(a: &Authentication) -> usize {
    a.issuers[0].cache.len()
}

#[test]
fn a_verified_token_is_kept_and_a_refused_one_never_is() {
    let s = es256("k1");
    let a = authn(&[&s], true);
    let token = s.sign(&claims(json!({"groups": ["buyers"]})));
    let first = check(&a, &token).unwrap().unwrap();
    assert_eq!(cached(&a), 1);
    let again = check(&a, &token).unwrap().unwrap();
    assert!(
        Arc::ptr_eq(&first.claims, &again.claims),
        "the second came from the cache"
    );
    assert_eq!(again.principal, "https://idp.test/alice");
    // A forged copy differs in its bytes, so it is a miss, and checked, and refused.
    let forged = es256("k1").sign(&claims(json!({"groups": ["buyers"]})));
    assert_eq!(check(&a, &forged).unwrap_err(), Refusal::BadSignature);
    let late = s.sign(&claims(json!({"exp": now() - 3600})));
    assert_eq!(check(&a, &late).unwrap_err(), Refusal::Expired);
    assert_eq!(check(&a, &late).unwrap_err(), Refusal::Expired);
    assert_eq!(cached(&a), 1, "only the verified token is kept");
}

#[test]
fn a_kept_token_is_refused_once_it_expires() {
    let cache = TokenCache::default();
    let claims: Arc<Map<String, Value>> =
        Arc::new(serde_json::from_value(json!({"exp": 1_000})).unwrap());
    cache.put("t", &claims, 10, 900);
    assert!(
        cache.get("t", 1_000, 0).is_some(),
        "valid through its exp second"
    );
    assert!(
        cache.get("t", 1_030, 60).is_some(),
        "and through the leeway"
    );
    assert!(cache.get("t", 1_061, 60).is_none(), "then refused");
    assert_eq!(cache.len(), 0, "and dropped");
}

#[test]
fn the_cache_holds_at_most_its_size_expired_tokens_leaving_first() {
    let cache = TokenCache::default();
    let exp = |e: u64| Arc::new(serde_json::from_value(json!({"exp": e})).unwrap());
    cache.put("old", &exp(100), 2, 50);
    cache.put("live", &exp(10_000), 2, 50);
    cache.put("new", &exp(10_000), 2, 500); // full: "old" has expired by now, so it goes
    assert_eq!(cache.len(), 2);
    assert!(cache.get("old", 500, 0).is_none());
    assert!(cache.get("live", 500, 0).is_some() && cache.get("new", 500, 0).is_some());
    cache.put("newer", &exp(10_000), 2, 500); // full of live tokens: one makes room
    assert_eq!(cache.len(), 2);
    assert!(cache.get("newer", 500, 0).is_some());
}

#[test]
fn a_cache_size_of_zero_checks_every_request() {
    let s = es256("k1");
    let mut a = authn(&[&s], true);
    a.issuers[0].token_cache_size = 0;
    let token = s.sign(&claims(json!({})));
    let first = check(&a, &token).unwrap().unwrap();
    let again = check(&a, &token).unwrap().unwrap();
    assert!(!Arc::ptr_eq(&first.claims, &again.claims));
    assert_eq!(cached(&a), 0);
}

#[test]
fn new_keys_start_an_empty_cache_so_a_withdrawn_key_verifies_nothing() {
    let (old, new) = (es256("k1"), es256("k2"));
    let before = authn(&[&old], true);
    let token = old.sign(&claims(json!({})));
    assert!(check(&before, &token).is_ok());
    assert_eq!(cached(&before), 1);
    // The agent's reload after rotation: the config read again, with only the new key.
    let after = authn(&[&new], true);
    assert_eq!(check(&after, &token).unwrap_err(), Refusal::UnknownKid);
    assert_eq!(cached(&after), 0);
}
