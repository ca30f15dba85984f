//! End-user authentication: JWTs verified against each issuer's keys on the request path.
//!
//! A port's `authentication` (a RequestAuthentication lowered by the compiler) lists the issuers
//! it accepts. Their keys arrive inside the ProxyConfig: written inline in the intent, or put
//! there by the agent that fetched the issuer's JWKS (so key rotation is a config reload and
//! the request path never does I/O). Signatures are checked by `jsonwebtoken` on aws-lc-rs;
//! HMAC and `alg: none` are refused, so a key in the config can only ever verify, never sign.
//! Each issuer keeps the tokens it verified until they expire, so a user's repeated token
//! costs a lookup, not a signature check (Envoy's `jwt_cache_config`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, HeaderValue, Uri};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Clock skew tolerated on `exp` and `nbf` unless the intent says otherwise.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 60;

/// Verified tokens an issuer keeps unless the intent says otherwise (Envoy's default size).
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 100;

/// A port's end-user authentication.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authentication {
    /// The RequestAuthentication this came from, named in 401 replies and access logs.
    pub policy: String,
    /// A request that carries no token is refused (401) instead of going on without a principal.
    pub required: bool,
    pub issuers: Vec<Issuer>,
}

/// One accepted issuer: its `iss`, audiences, keys, and where its tokens are read.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Issuer {
    pub issuer: String,
    /// The token's `aud` must name one of these; empty: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the agent fetches the JWKS (fastpath never does: no I/O on a request).
    pub jwks_uri: Option<String>,
    /// A JWKS file the agent reads (the local runtime's way to give keys without git).
    pub jwks_file: Option<String>,
    /// The agent finds the JWKS through the issuer's OIDC discovery document.
    #[serde(default)]
    pub discovery: bool,
    /// The keys in force; absent until the agent has fetched them, when every token is refused.
    #[serde(default)]
    pub jwks: Keys,
    #[serde(default)]
    pub from_headers: Vec<TokenHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Verified claims copied into request headers for the app.
    #[serde(default)]
    pub forward_claims: Vec<ClaimHeader>,
    /// Pass the token on to the app; by default it is removed once verified.
    #[serde(default)]
    pub forward_token: bool,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// How many verified tokens to keep; 0 checks every request's signature.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: usize,
    #[serde(skip)]
    cache: TokenCache,
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECONDS
}

fn default_token_cache_size() -> usize {
    DEFAULT_TOKEN_CACHE_SIZE
}

/// Tokens an issuer verified, by their text, with their claims and `exp`. Only a token whose
/// signature, issuer and audience checked out goes in, and a hit is refused once past its
/// `exp`, as a fresh check would be. The cache lives in the issuer of one config: new keys
/// (rotation, a key withdrawn) are a new config, so nothing verified by an old key outlives it.
/// A clone of the config shares it: the worker threads of one proxy see one cache.
#[derive(Clone, Default)]
struct TokenCache(Arc<Mutex<HashMap<Box<str>, Verified>>>);

struct Verified {
    claims: Arc<Map<String, Value>>,
    exp: u64,
}

impl TokenCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Verified>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The claims of `token` if it was verified and has not expired (`exp` + leeway).
    fn get(&self, token: &str, now: u64, leeway: u64) -> Option<Arc<Map<String, Value>>> {
        let mut entries = self.entries();
        let hit = entries.get(token)?;
        if hit.exp.saturating_add(leeway) >= now {
            return Some(Arc::clone(&hit.claims));
        }
        entries.remove(token); // expired: the full check below says why it is refused
        None
    }

    /// Keeps a verified token. When full, expired tokens go first, then an arbitrary one:
    /// only tokens the issuer signed can enter, so churn needs the issuer's help.
    fn put(&self, token: &str, claims: &Arc<Map<String, Value>>, capacity: usize, now: u64) {
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let mut entries = self.entries();
        if entries.len() >= capacity {
            entries.retain(|_, v| v.exp >= now);
        }
        if entries.len() >= capacity {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        let claims = Arc::clone(claims);
        entries.insert(token.into(), Verified { claims, exp });
    }

    fn len(&self) -> usize {
        self.entries().len()
    }
}

impl PartialEq for TokenCache {
    fn eq(&self, _: &TokenCache) -> bool {
        true // what was verified is state, not configuration
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenCache({} tokens)", self.len())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenHeader {
    pub name: String,
    /// Stripped before the token (compared without case); e.g. "Bearer ".
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimHeader {
    pub claim: String,
    pub header: String,
}

/// One verification key with the algorithms it may verify.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// A JWKS, parsed once when the config is read. Compared by its document, so a reload with
/// the same keys is recognisably the same config.
#[derive(Clone, Default)]
pub struct Keys {
    set: Option<JwkSet>,
    keys: Vec<Key>,
}

impl PartialEq for Keys {
    fn eq(&self, other: &Keys) -> bool {
        self.set == other.set
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("Keys").field("kids", &kids).finish()
    }
}

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

impl Keys {
    /// Keys from a JWKS document. Encryption keys are skipped (an IdP may publish them beside
    /// its signing keys); symmetric keys and unsupported curves are refused outright.
    pub fn from_set(set: JwkSet) -> Result<Keys, String> {
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone();
            let name = kid.as_deref().unwrap_or("without kid");
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let by_type: Vec<Algorithm> = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => RSA_ALGORITHMS.to_vec(),
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    ref other => {
                        return Err(format!("key {name}: curve {other:?} is not supported"))
                    }
                },
                AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                    vec![Algorithm::EdDSA]
                }
                AlgorithmParameters::OctetKeyPair(okp) => {
                    return Err(format!(
                        "key {name}: curve {:?} is not supported",
                        okp.curve
                    ))
                }
                AlgorithmParameters::OctetKey(_) => {
                    return Err(format!(
                        "key {name}: symmetric (oct) keys are refused: a shared secret in a \
                         sidecar could sign tokens"
                    ))
                }
            };
            let algorithms = match jwk.common.key_algorithm {
                None => by_type,
                Some(alg) => match signing_algorithm(alg) {
                    Some(a) if by_type.contains(&a) => vec![a],
                    Some(a) => return Err(format!("key {name}: alg {a:?} does not fit its kty")),
                    None if matches!(
                        alg,
                        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256
                    ) =>
                    {
                        continue; // an encryption key
                    }
                    None => return Err(format!("key {name}: alg {alg} is not allowed")),
                },
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {name}: {e}"))?;
            keys.push(Key {
                kid,
                algorithms,
                key,
            });
        }
        Ok(Keys {
            set: Some(set),
            keys,
        })
    }
}

/// The asymmetric signing algorithm a JWK's `alg` names; None for HMAC and encryption.
fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
        let set = JwkSet::deserialize(d)?;
        Keys::from_set(set).map_err(serde::de::Error::custom)
    }
}

/// Parses a JWKS document as fastpath would; for validating inline keys at `weft validate`.
pub fn check_jwks(json: &str) -> Result<usize, String> {
    let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys = Keys::from_set(set)?;
    if keys.keys.is_empty() {
        return Err("the JWKS holds no signing key".into());
    }
    Ok(keys.keys.len())
}

/// Why a token was refused. The reason goes to the client and the access log; the token
/// itself never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    AlgorithmNotAllowed,
    NoKeys,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "no token",
            Refusal::Malformed => "malformed token",
            Refusal::AlgorithmNotAllowed => "algorithm not allowed",
            Refusal::NoKeys => "no keys for the issuer yet",
            Refusal::UnknownKid => "unknown signing key (kid)",
            Refusal::BadSignature => "bad signature",
            Refusal::Expired => "token expired",
            Refusal::NotYetValid => "token not yet valid",
            Refusal::WrongIssuer => "wrong issuer",
            Refusal::WrongAudience => "wrong audience",
        }
    }

    /// Lower is more telling: when several issuers fail, report the best-informed failure
    /// (an issuer whose key verified the signature knows more than one without the kid).
    fn rank(self) -> u8 {
        match self {
            Refusal::UnknownKid => 3,
            Refusal::NoKeys => 4,
            Refusal::Missing => 5,
            _ => 0,
        }
    }
}

/// Where a verified token was found, so it can be removed before the app.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Header(String),
    Cookie(String),
    Param,
}

/// A verified end user: `iss/sub` and every claim of the token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub principal: String,
    /// Shared with the issuer's cache of verified tokens.
    pub claims: Arc<Map<String, Value>>,
    issuer: usize,
    location: Location,
}

/// The outcome for one request: a principal, none (no token, not required), or a refusal.
pub type Outcome = Result<Option<Principal>, Refusal>;

impl Authentication {
    pub fn authenticate(&self, headers: &HeaderMap, uri: &Uri) -> Outcome {
        let mut refusal: Option<Refusal> = None;
        for (i, issuer) in self.issuers.iter().enumerate() {
            let Some((token, location)) = issuer.locate(headers, uri) else {
                continue;
            };
            match issuer.verify(token) {
                Ok(claims) => {
                    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
                    return Ok(Some(Principal {
                        principal: format!("{}/{sub}", issuer.issuer),
                        claims,
                        issuer: i,
                        location,
                    }));
                }
                Err(r) => {
                    if refusal.is_none_or(|old| r.rank() < old.rank()) {
                        refusal = Some(r);
                    }
                }
            }
        }
        match refusal {
            Some(r) => Err(r),
            None if self.required => Err(Refusal::Missing),
            None => Ok(None),
        }
    }

    /// Shapes the request for the app: claim headers only ever from a verified token (a
    /// caller's own copies are removed), and the token removed unless the issuer forwards it.
    pub fn prepare_upstream(&self, principal: Option<&Principal>, headers: &mut HeaderMap) {
        for issuer in &self.issuers {
            for fc in &issuer.forward_claims {
                headers.remove(fc.header.as_str());
            }
        }
        let Some(p) = principal else { return };
        let issuer = &self.issuers[p.issuer];
        for fc in &issuer.forward_claims {
            let Some(text) = p.claims.get(&fc.claim).and_then(claim_text) else {
                continue;
            };
            if let Ok(v) = HeaderValue::from_str(&text) {
                headers.insert(
                    http::HeaderName::try_from(fc.header.as_str())
                        .unwrap_or(http::HeaderName::from_static("x-weft-invalid")),
                    v,
                );
            }
        }
        if !issuer.forward_token {
            match &p.location {
                Location::Header(name) => {
                    headers.remove(name.as_str());
                }
                Location::Cookie(name) => strip_cookie(headers, name),
                Location::Param => {} // the query is the app's URL: left as it came
            }
        }
    }
}

/// A claim as header text: strings as they are, lists joined with commas, other JSON as JSON.
fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
        ),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = cookies(headers)
        .filter(|(k, _)| *k != name)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(http::header::COOKIE, v);
        }
    }
}

impl Issuer {
    fn locate<'a>(&self, headers: &'a HeaderMap, uri: &'a Uri) -> Option<(&'a str, Location)> {
        for h in &self.from_headers {
            let Some(value) = headers.get(h.name.as_str()).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let n = h.prefix.len();
            if value.len() >= n && value.as_bytes()[..n].eq_ignore_ascii_case(h.prefix.as_bytes()) {
                return Some((value[n..].trim(), Location::Header(h.name.clone())));
            }
        }
        for name in &self.from_cookies {
            if let Some((_, v)) = cookies(headers).find(|(k, _)| k == name) {
                return Some((v, Location::Cookie(name.clone())));
            }
        }
        let query = uri.query()?;
        for name in &self.from_params {
            let found = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k == name);
            if let Some((_, v)) = found {
                return Some((v, Location::Param));
            }
        }
        None
    }

    fn verify(&self, token: &str) -> Result<Arc<Map<String, Value>>, Refusal> {
        if self.token_cache_size == 0 {
            return self.check(token).map(Arc::new);
        }
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(claims) = self.cache.get(token, now, self.leeway_seconds) {
            return Ok(claims);
        }
        let claims = Arc::new(self.check(token)?);
        self.cache.put(token, &claims, self.token_cache_size, now);
        Ok(claims)
    }

    /// The full check: header, key, signature and claims.
    fn check(&self, token: &str) -> Result<Map<String, Value>, Refusal> {
        // An unknown `alg` (such as "none") fails to parse here: malformed, never accepted.
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        if header.alg.family() == AlgorithmFamily::Hmac {
            return Err(Refusal::AlgorithmNotAllowed);
        }
        if self.jwks.keys.is_empty() {
            return Err(Refusal::NoKeys);
        }
        let by_kid: Vec<&Key> = self
            .jwks
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if by_kid.is_empty() {
            return Err(Refusal::UnknownKid);
        }
        let candidates: Vec<&Key> = by_kid
            .into_iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .collect();
        if candidates.is_empty() {
            return Err(Refusal::AlgorithmNotAllowed);
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway_seconds;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        let mut required: HashSet<String> = ["exp", "iss"].map(String::from).into();
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
            required.insert("aud".into());
        }
        v.required_spec_claims = required;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v) {
                Ok(data) => return Ok(data.claims),
                // Without a kid several keys may be tried; only a signature check failing
                // means "not this key".
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(refusal(e.kind())),
            }
        }
        Err(Refusal::BadSignature)
    }
}

fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::InvalidAlgorithm => Refusal::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => Refusal::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => Refusal::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "exp" => Refusal::Expired,
        _ => Refusal::Malformed,
    }
}

impl Refusal {
    /// The `WWW-Authenticate` challenge of a 401 for this refusal (RFC 6750): the reason, never
    /// the token; a missing token gets no error code, as the RFC asks.
    pub fn challenge(self, realm: &str) -> String {
        match self {
            Refusal::Missing => format!("Bearer realm=\"{realm}\""),
            r => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                r.reason()
            ),
        }
    }
}

/// A rule's end-user conditions: all must hold, and they never hold without a principal.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrincipalMatch {
    /// `iss/sub` patterns: exact, `*` (any principal), `prefix*` or `*suffix`.
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub claims: Vec<ClaimMatch>,
}

/// A claim (at a path into nested objects) that must hold one of `values`. A list claim holds
/// a value if any element equals it; a string claim read `spaceSeparated` (OAuth `scope`)
/// holds each of its words.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimMatch {
    pub path: Vec<String>,
    pub values: Vec<String>,
    #[serde(default)]
    pub space_separated: bool,
}

fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

impl ClaimMatch {
    fn matches(&self, claims: &Map<String, Value>) -> bool {
        let Some((first, rest)) = self.path.split_first() else {
            return false;
        };
        let mut value = claims.get(first);
        for part in rest {
            value = value.and_then(|v| v.get(part));
        }
        let holds = |s: &str| self.values.iter().any(|v| v == s);
        match value {
            Some(Value::String(s)) if self.space_separated => s.split(' ').any(holds),
            Some(Value::String(s)) => holds(s),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(holds),
            Some(Value::Bool(b)) => holds(if *b { "true" } else { "false" }),
            Some(Value::Number(n)) => holds(&n.to_string()),
            _ => false,
        }
    }
}

impl PrincipalMatch {
    pub fn matches(&self, principal: Option<&Principal>) -> bool {
        let Some(p) = principal else { return false };
        (self.principals.is_empty()
            || self
                .principals
                .iter()
                .any(|pat| pattern_matches(pat, &p.principal)))
            && self.claims.iter().all(|c| c.matches(&p.claims))
    }
}

#[cfg(test)]
mod tests;
