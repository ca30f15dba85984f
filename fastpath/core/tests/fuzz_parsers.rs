//! Property-based fuzzing (proptest, on stable Rust) of everything fastpath parses from outside:
//! ProxyConfig JSON, Route regexes, certificates and SPIFFE IDs, request paths (normalization
//! is idempotent), TLS ClientHellos (SNI), JWKS documents and JWTs (`jwt.rs`), and HTTP/1.1
//! and HTTP/2 bytes sent to a running sidecar.
//!
//! Each property feeds generated input (random, or a valid input mutated) and asserts what must
//! hold whatever the bytes: no panic; a refused config leaves the running one in force; a
//! sidecar answers hostile bytes with an HTTP error or a closed connection, and still serves the
//! next client. Cases per property: `WEFT_FUZZ_CASES` (default 64, what `make test` runs;
//! `make fuzz` runs thousands). A failing case proptest finds is saved, shrunk, in
//! `fuzz_parsers.proptest-regressions` beside this file and replayed first on every run after:
//! commit that file and the crash is a regression test. (The cases in it now are from this
//! harness's own early bugs; none is a fastpath defect.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use fastpath::config::ProxyConfig;
use fastpath::jwt::{self, Authentication};
use fastpath::route_regex;
use fastpath::tls::{self, Material};
use fastpath::Proxy;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

use common::mesh::{self, Pki};

fn config() -> Config {
    let cases = std::env::var("WEFT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// Valid configs to mutate: the test mesh's, and every golden ProxyConfig the compiler makes
/// for the template repository.
fn seeds() -> &'static Vec<String> {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let routes = json!([{
            "name": "b/api/default",
            "matches": [{"path": {"prefix": "/"}}],
            "backends": [{"cluster": "b/api", "weight": 100}],
        }]);
        let mut found = vec![
            mesh::api_config(),
            mesh::web_config(
                routes,
                json!([mesh::cluster("b/api", "ROUND_ROBIN", &["127.0.0.1:9"])]),
            ),
        ];
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/golden/template/proxyconfigs");
        // proxyconfigs/<namespace>/<service>.json
        let mut files = Vec::new();
        for namespace in std::fs::read_dir(golden).into_iter().flatten().flatten() {
            for file in std::fs::read_dir(namespace.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                files.push(file.path());
            }
        }
        files.sort();
        for path in files {
            found.push(std::fs::read_to_string(&path).expect("a golden ProxyConfig"));
        }
        found
    })
}

/// Every path to a value inside `v` (object keys and array indexes).
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                prefix.push(k.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(i.to_string());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = v;
    for p in path {
        cur = match cur {
            Value::Object(map) => map.get_mut(p)?,
            Value::Array(items) => items.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(0)),
        ".{0,24}".prop_map(Value::String),
        Just(json!("")),
        Just(json!("(")),
        Just(json!("127.0.0.1:0")),
        Just(json!("b/api")),
        Just(json!("spiffe://test.local/ns/a/sa/web")),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A seed config with up to three of its values replaced, or a key removed or added.
fn mutated_config() -> impl Strategy<Value = String> {
    (0..seeds().len(), edits()).prop_map(|(seed, edits)| {
        let mut v: Value = serde_json::from_str(&seeds()[seed]).expect("seed is JSON");
        mutate(&mut v, edits);
        v.to_string()
    })
}

type Edit = (prop::sample::Index, u8, Value);

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, any_json()), 1..4)
}

/// Applies `edits` to `v`: a value replaced, a key or item removed, an array's first item
/// repeated.
fn mutate(v: &mut Value, edits: Vec<Edit>) {
    for (index, op, replacement) in edits {
        let mut all = Vec::new();
        paths(v, &mut Vec::new(), &mut all);
        let path = index.get(&all).clone();
        match op {
            0 => {
                if let Some(slot) = at(v, &path) {
                    *slot = replacement;
                }
            }
            1 => {
                if let Some((last, parent)) = path.split_last() {
                    match at(v, parent) {
                        Some(Value::Object(map)) => {
                            map.remove(last);
                        }
                        Some(Value::Array(items)) => {
                            if let Ok(i) = last.parse::<usize>() {
                                if i < items.len() {
                                    items.remove(i);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {
                if let Some(Value::Array(items)) = at(v, &path) {
                    if let Some(first) = items.first().cloned() {
                        items.push(first); // a duplicate: names must stay unique
                    }
                }
            }
        }
    }
}

/// Byte-level damage to a seed: truncation, a flipped byte, an inserted run.
fn damaged_config() -> impl Strategy<Value = String> {
    damaged(seeds())
}

fn damaged(seeds: &'static [String]) -> impl Strategy<Value = String> {
    (
        0..seeds.len(),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0..3u8,
    )
        .prop_map(move |(seed, index, byte, op)| {
            let mut bytes = seeds[seed].clone().into_bytes();
            let i = index.index(bytes.len().max(1));
            match op {
                0 => bytes.truncate(i),
                1 => {
                    if let Some(b) = bytes.get_mut(i) {
                        *b = byte;
                    }
                }
                _ => bytes
                    .splice(i..i, std::iter::repeat_n(byte, 8))
                    .for_each(drop),
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn proxyconfig_parse_never_panics(text in prop_oneof![
        ".{0,256}",
        mutated_config(),
        damaged_config(),
    ]) {
        let _ = ProxyConfig::parse(&text);
    }

    #[test]
    fn a_parsed_config_parses_again_to_itself(text in mutated_config()) {
        if let Ok(config) = ProxyConfig::parse(&text) {
            let again = ProxyConfig::parse(&text).expect("the same text parses again");
            prop_assert_eq!(config, again);
        }
    }

    #[test]
    fn route_regex_compile_and_match_never_panic(pattern in ".{0,48}", input in ".{0,64}") {
        if let Ok(re) = route_regex::compile(&pattern) {
            let _ = re.is_match(&input);
        }
    }

    #[test]
    fn an_escaped_literal_matches_exactly_itself(literal in ".{0,32}", extra in ".{1,8}") {
        let re = route_regex::compile(&regex::escape(&literal)).expect("an escaped literal compiles");
        prop_assert!(re.is_match(&literal));
        let longer = format!("{literal}{extra}");
        let prefixed = format!("{extra}{literal}");
        prop_assert!(!re.is_match(&longer), "route regexes are full matches");
        prop_assert!(!re.is_match(&prefixed), "route regexes are full matches");
    }

    #[test]
    fn certificate_parsing_never_panics(bytes in cert_bytes()) {
        let _ = tls::spiffe_id(&CertificateDer::from(bytes.clone()));
        let pem = pem_of(&bytes);
        let pki = pki();
        let _ = Material::from_pem(pem.as_bytes(), pki.web.key.as_bytes(), pki.web.bundle.as_bytes());
        let _ = Material::from_pem(pki.web.chain.as_bytes(), pki.web.key.as_bytes(), pem.as_bytes());
    }
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(Pki::new)
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .to_vec()
}

fn pem_of(der: &[u8]) -> String {
    use std::fmt::Write as _;
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Random bytes, or a real leaf certificate (with a SPIFFE ID) with bytes changed.
fn cert_bytes() -> impl Strategy<Value = Vec<u8>> {
    let real = der_of(&pki().web.chain);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            Just(real)
        )
            .prop_map(|(edits, mut der)| {
                for (i, b) in edits {
                    let at = i.index(der.len());
                    der[at] = b;
                }
                der
            }),
    ]
}

// ------------------------------------------------------------------ a running sidecar

/// The revision of the config the shared sidecar runs; no seed has it.
const RUNNING: &str = "running@sha1:00000000000000000000000000000000000000ff";

struct Sidecar {
    runtime: tokio::runtime::Runtime,
    config: String,
    proxy: Proxy,
    outbound: SocketAddr,
    inbound: SocketAddr,
}

/// `a/web`'s sidecar (outbound HTTP listener) and `b/api`'s (inbound mTLS, with no app
/// behind it), on a runtime of their own, shared by every case.
fn sidecar() -> &'static Sidecar {
    static SIDECAR: OnceLock<Sidecar> = OnceLock::new();
    SIDECAR.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (proxy, config, outbound, inbound) = runtime.block_on(async {
            let routes = json!([{
                "name": "b/api/default",
                "matches": [{"path": {"prefix": "/"}}],
                "backends": [{"cluster": "b/api", "weight": 100}],
            }]);
            let mut config: Value = serde_json::from_str(&mesh::web_config(
                routes,
                json!([mesh::cluster("b/api", "ROUND_ROBIN", &[&mesh::dead_addr()])]),
            ))
            .expect("json");
            config["revision"] = json!(RUNNING);
            let config = config.to_string();
            let (web, outbound) = mesh::web_sidecar(pki(), &config);
            let api = mesh::api_endpoint(common::app::App::start("api").await, &pki().api);
            let inbound: SocketAddr = api.addr.parse().expect("address");
            std::mem::forget(api); // lives as long as the test binary
            (web, config, outbound, inbound)
        });
        Sidecar {
            runtime,
            config,
            proxy,
            outbound,
            inbound,
        }
    })
}

/// Sends `bytes` on a fresh connection and reads until the sidecar closes or goes quiet.
/// With `hang_up`, the client's side is shut after the bytes, as a client that sent all it had.
fn exchange(addr: SocketAddr, bytes: &[u8], hang_up: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("the sidecar still accepts connections");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    if hang_up {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

fn still_serves(addr: SocketAddr) -> Result<(), TestCaseError> {
    // Not hung up: hyper drops a request whose client has half-closed before the answer.
    let request = b"GET /healthz HTTP/1.1\r\nHost: api.b:8080\r\nConnection: close\r\n\r\n";
    let answer = exchange(addr, request, false);
    prop_assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "after hostile input a plain request still gets an answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(80)])
    );
    Ok(())
}

fn http1_request() -> impl Strategy<Value = Vec<u8>> {
    let valid = b"GET /x HTTP/1.1\r\nHost: api.b:8080\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "[ -~\r\n]{0,200}".prop_map(String::into_bytes),
        (
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            Just(valid)
        )
            .prop_map(|(edits, mut req)| {
                for (i, b) in edits {
                    let at = i.index(req.len());
                    req[at] = b;
                }
                req
            }),
        (
            "[A-Z]{1,8}",
            "[ -~]{0,40}",
            prop::collection::vec(("[!-9;-~]{1,16}", "[ -~]{0,40}"), 0..6),
        )
            .prop_map(|(method, target, headers)| {
                let mut req = format!("{method} {target} HTTP/1.1\r\n");
                for (k, v) in headers {
                    req.push_str(&format!("{k}: {v}\r\n"));
                }
                req.push_str("\r\n");
                req.into_bytes()
            }),
    ]
}

/// The HTTP/2 client preface followed by random frames (or damaged frame headers).
fn http2_request() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        0..6,
    )
    .prop_map(|frames| {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for (kind, flags, stream, payload) in frames {
            let len = payload.len() as u32;
            out.extend_from_slice(&len.to_be_bytes()[1..]);
            out.push(kind % 12);
            out.push(flags);
            out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
            out.extend_from_slice(&payload);
        }
        out
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_refused_reload_keeps_the_running_config(text in prop_oneof![mutated_config(), damaged_config()]) {
        let s = sidecar();
        prop_assert_eq!(s.proxy.revision(), RUNNING);
        match s.proxy.reload(&text) {
            Err(_) => {
                // No seed carries RUNNING, so a config that got in would show in the revision.
                prop_assert_eq!(s.proxy.revision(), RUNNING, "a refused config must leave the old one in force");
            }
            Ok(revision) => {
                prop_assert_eq!(s.proxy.revision(), revision);
                // Accepted: put the original back so every case starts from the same config.
                s.proxy.reload(&s.config).expect("the original config reloads");
            }
        }
        let _guard = s.runtime.enter();
        still_serves(s.outbound)?;
    }

    #[test]
    fn hostile_http1_bytes_get_an_error_or_a_close(bytes in http1_request()) {
        let s = sidecar();
        let answer = exchange(s.outbound, &bytes, true);
        if !answer.is_empty() {
            prop_assert!(answer.starts_with(b"HTTP/1."), "{:?}", String::from_utf8_lossy(&answer[..answer.len().min(80)]));
        }
        still_serves(s.outbound)?;
    }

    #[test]
    fn hostile_http2_frames_do_not_stop_the_sidecar(bytes in http2_request()) {
        let s = sidecar();
        let _ = exchange(s.outbound, &bytes, true);
        still_serves(s.outbound)?;
    }

    #[test]
    fn hostile_bytes_at_the_mtls_listener_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let s = sidecar();
        let answer = exchange(s.inbound, &bytes, true);
        // Not TLS from a mesh peer: nothing of the app may come back, only a TLS alert or a close.
        prop_assert!(!answer.starts_with(b"HTTP/"), "plaintext answered on the mTLS port");
        still_serves(s.outbound)?;
    }
}

#[test]
fn every_seed_config_parses() {
    // The mutations start from valid configs, or they would only ever test the first error.
    assert!(seeds().len() > 2, "the golden ProxyConfigs are found");
    for (i, seed) in seeds().iter().enumerate() {
        ProxyConfig::parse(seed).unwrap_or_else(|e| panic!("seed {i} is refused: {e}"));
    }
}

// ------------------------------------------------------------------ paths and TLS hellos

fn path_input() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        // Paths built from the pieces that make normalization hard.
        prop::collection::vec(
            prop_oneof![
                Just("/"),
                Just("."),
                Just(".."),
                Just("%2e"),
                Just("%2E"),
                Just("%2F"),
                Just("%5C"),
                Just("\\"),
                Just("%25"),
                Just("%41"),
                Just("%"),
                Just("%zz"),
                Just("a"),
                Just("é"),
                Just("%C3%A9"),
                Just("%FF"),
                Just(";"),
                Just("//"),
            ],
            0..12,
        )
        .prop_map(|parts| format!("/{}", parts.concat())),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_normal_path_is_its_own_normal_form(
        path in path_input(),
        mode in prop_oneof![
            Just(fastpath::path::EscapedSlashes::Reject),
            Just(fastpath::path::EscapedSlashes::Keep),
            Just(fastpath::path::EscapedSlashes::Decode),
        ],
    ) {
        // Deciding on the normal form is only sound if normalizing it again changes nothing:
        // otherwise a path that looks normal to the sidecar means something else one hop on.
        if let Ok(once) = fastpath::path::normalize(&path, mode) {
            let twice = fastpath::path::normalize(&once, mode);
            prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()), "from {:?}", path);
        }
    }

    #[test]
    fn sni_parsing_never_panics_and_a_cut_hello_names_nobody(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cut in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let _ = fastpath::sni::server_name(&bytes);
        let hello = client_hello();
        let named = fastpath::sni::server_name(hello);
        prop_assert_eq!(named.as_deref(), Ok(HELLO_NAME));
        let prefix = &hello[..cut.index(hello.len())];
        prop_assert!(fastpath::sni::server_name(prefix).is_err(), "a cut hello is no answer");
        let mut damaged = hello.to_vec();
        for (i, b) in edits {
            let at = i.index(damaged.len());
            damaged[at] = b;
        }
        let _ = fastpath::sni::server_name(&damaged);
    }
}

const HELLO_NAME: &str = "api.example.com";

/// A real ClientHello, as rustls writes it for `HELLO_NAME`.
fn client_hello() -> &'static [u8] {
    static HELLO: OnceLock<Vec<u8>> = OnceLock::new();
    HELLO.get_or_init(|| {
        let config = tls::egress_client().expect("a client config");
        let name = rustls::pki_types::ServerName::try_from(HELLO_NAME).expect("name");
        let mut conn = rustls::ClientConnection::new(config, name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    })
}

// ------------------------------------------------------------------ JWKS documents and JWTs

const ISS: &str = "https://idp.fuzz";

/// Keys made at test time and tokens signed with them, and the JWKS documents to start from:
/// the keys' own set and the seed corpus the atheris target shares
/// (`tests/fuzz/corpus/jwks/`, made by `tests/fuzz/seeds.py`: RSA, P-256, P-384 and Ed25519
/// keys, encryption keys, refused symmetric and unknown-curve keys).
struct JwtSeeds {
    jwks: Vec<String>,
    authn: Authentication,
    /// Tokens the issuer must accept, and tokens signed by its keys it must refuse (expired,
    /// not yet valid, another audience or issuer, no `exp`).
    good: Vec<String>,
    bad: Vec<String>,
}

fn jwt_seeds() -> &'static JwtSeeds {
    use base64::Engine;
    use jsonwebtoken::{encode, get_current_timestamp, jwk::Jwk, Algorithm, EncodingKey, Header};

    static SEEDS: OnceLock<JwtSeeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut signers: Vec<(Algorithm, EncodingKey, Value)> = Vec::new();
        for (alg, kind) in [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (Algorithm::ES384, &rcgen::PKCS_ECDSA_P384_SHA384),
        ] {
            let pair = rcgen::KeyPair::generate_for(kind).expect("an EC key");
            let key = EncodingKey::from_ec_der(&pair.serialize_der());
            let jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).expect("a JWK"))
                .expect("JSON");
            signers.push((alg, key, jwk));
        }
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key");
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
        signers.push((
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(&pair.serialize_der()),
            json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
        ));
        for (i, (_, _, jwk)) in signers.iter_mut().enumerate() {
            jwk["kid"] = json!(format!("k{i}"));
        }
        let set = json!({"keys": signers.iter().map(|s| s.2.clone()).collect::<Vec<_>>()});
        let authn: Authentication = serde_json::from_value(json!({
            "policy": "b/fuzz",
            "required": true,
            "issuers": [{
                "issuer": ISS,
                "audiences": ["orders"],
                "jwks": set,
                "fromHeaders": [{"name": "authorization", "prefix": "Bearer "}],
                "fromCookies": ["session"],
                "fromParams": ["access_token"],
                "forwardClaims": [{"claim": "groups", "header": "x-user-groups"}],
            }],
        }))
        .expect("the fuzz issuer parses");
        let now = get_current_timestamp();
        let sign = |i: usize, kid: bool, claims: Value| {
            let (alg, key, jwk) = &signers[i];
            let mut header = Header::new(*alg);
            if kid {
                header.kid = jwk["kid"].as_str().map(String::from);
            }
            encode(&header, &claims, key).expect("signs")
        };
        let ok = json!({"iss": ISS, "sub": "alice", "aud": "orders", "exp": now + 86_400,
                        "groups": ["a", "b"]});
        let mut good = Vec::new();
        for i in 0..signers.len() {
            good.push(sign(i, true, ok.clone()));
            good.push(sign(i, false, ok.clone())); // no kid: every key of the alg is tried
        }
        let refused = [
            json!({"iss": ISS, "sub": "alice", "aud": "orders", "exp": now - 3_600}),
            json!({"iss": ISS, "sub": "alice", "aud": "orders", "exp": now + 3_600,
                   "nbf": now + 3_600}),
            json!({"iss": ISS, "sub": "alice", "aud": "billing", "exp": now + 3_600}),
            json!({"iss": "https://other.fuzz", "sub": "alice", "aud": "orders",
                   "exp": now + 3_600}),
            json!({"iss": ISS, "sub": "alice", "aud": "orders"}),
        ];
        let bad = refused
            .iter()
            .enumerate()
            .map(|(n, c)| sign(n % signers.len(), true, c.clone()))
            .collect();
        let mut jwks = vec![set.to_string()];
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/corpus/jwks");
        let mut files: Vec<_> = std::fs::read_dir(&corpus)
            .expect("the JWKS seed corpus (python -m tests.fuzz.seeds)")
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for path in files {
            jwks.push(String::from_utf8_lossy(&std::fs::read(path).expect("a seed")).into_owned());
        }
        JwtSeeds {
            jwks,
            authn,
            good,
            bad,
        }
    })
}

fn jwks_seeds() -> &'static [String] {
    &jwt_seeds().jwks
}

/// A seed JWKS with some of its values replaced or removed.
fn mutated_jwks() -> impl Strategy<Value = String> {
    (0..jwks_seeds().len(), edits()).prop_map(|(seed, edits)| {
        match serde_json::from_str::<Value>(&jwks_seeds()[seed]) {
            Ok(mut v) => {
                mutate(&mut v, edits);
                v.to_string()
            }
            Err(_) => jwks_seeds()[seed].clone(), // a corpus file that is not JSON on purpose
        }
    })
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Tokens: random text; three segments of base64url JSON with every `alg` (HMAC and `none`
/// among them) and kids; signed tokens cut, with a character changed, with segments swapped
/// between tokens, or re-headed with another `alg` over the same signature.
fn tokens() -> impl Strategy<Value = String> {
    let seeds = || {
        let s = jwt_seeds();
        s.good.iter().chain(&s.bad).cloned().collect::<Vec<_>>()
    };
    prop_oneof![
        ".{0,160}",
        (
            token_header(),
            any_json(),
            prop::collection::vec(any::<u8>(), 0..96)
        )
            .prop_map(|(h, claims, sig): (String, Value, Vec<u8>)| {
                let claims = claims.to_string();
                format!(
                    "{}.{}.{}",
                    b64(h.as_bytes()),
                    b64(claims.as_bytes()),
                    b64(&sig)
                )
            }),
        (
            prop::sample::select(seeds()),
            any::<prop::sample::Index>(),
            any::<char>(),
            0..3u8
        )
            .prop_map(|(t, index, c, op)| {
                let mut chars: Vec<char> = t.chars().collect();
                let i = index.index(chars.len());
                match op {
                    0 => chars.truncate(i),
                    1 => chars[i] = c,
                    _ => chars.insert(i, c),
                }
                chars.into_iter().collect()
            }),
        (
            prop::sample::select(seeds()),
            prop::sample::select(seeds()),
            0..3usize
        )
            .prop_map(|(a, b, keep)| {
                let a: Vec<&str> = a.split('.').collect();
                let b: Vec<&str> = b.split('.').collect();
                (0..3)
                    .map(|i| if i == keep { a[i] } else { b[i] })
                    .collect::<Vec<_>>()
                    .join(".")
            }),
        (prop::sample::select(seeds()), token_header()).prop_map(|(t, h)| {
            let rest = t.split_once('.').map_or("", |(_, r)| r);
            format!("{}.{rest}", b64(h.as_bytes()))
        }),
    ]
}

/// A JOSE header with any `alg` (HMAC and `none` among them), a kid or none, and noise.
fn token_header() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "ES256", "ES384", "EdDSA", "RS256", "PS256", "HS256", "none", "None", "", "ES512",
        ]),
        prop::option::of(prop::sample::select(vec!["k0", "k1", "k2", "k9", ""])),
        any_json(),
    )
        .prop_map(|(alg, kid, extra)| {
            let mut h = json!({"alg": alg, "typ": "JWT", "x": extra});
            if let Some(kid) = kid {
                h["kid"] = json!(kid);
            }
            h.to_string()
        })
}

/// The request a token arrives on: the Authorization header, the session cookie, or the
/// access_token parameter (when the token can be put there at all).
fn request_with(token: &str, place: u8) -> Option<(http::HeaderMap, http::Uri)> {
    let mut headers = http::HeaderMap::new();
    let mut uri: http::Uri = "/orders".parse().expect("a path");
    match place {
        0 => {
            let v = http::HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
            headers.insert(http::header::AUTHORIZATION, v);
        }
        1 => {
            let v = http::HeaderValue::from_str(&format!("theme=dark; session={token}")).ok()?;
            headers.insert(http::header::COOKIE, v);
        }
        _ => uri = format!("/orders?x=1&access_token={token}").parse().ok()?,
    }
    Some((headers, uri))
}

#[test]
fn every_good_seed_token_is_accepted_and_every_bad_one_refused() {
    let s = jwt_seeds();
    for t in &s.good {
        let (headers, uri) = request_with(t, 0).expect("a token fits a header");
        let p = s.authn.authenticate(&headers, &uri).expect("a good token");
        assert_eq!(p.expect("a principal").principal, format!("{ISS}/alice"));
    }
    for t in &s.bad {
        let (headers, uri) = request_with(t, 0).expect("a token fits a header");
        assert!(s.authn.authenticate(&headers, &uri).is_err(), "{t}");
    }
    for doc in &s.jwks {
        let _ = jwt::check_jwks(doc);
    }
    assert!(
        jwt::check_jwks(&s.jwks[0]).is_ok(),
        "the keys' own set parses"
    );
}

proptest! {
    #![proptest_config(config())]

    /// A JWKS document is parsed or refused with a reason, never a panic; one `check_jwks`
    /// (what `weft validate` and the agent run) accepts, fastpath's config accepts too.
    #[test]
    fn jwks_parsing_refuses_and_never_panics(text in prop_oneof![
        ".{0,256}",
        mutated_jwks(),
        damaged(jwks_seeds()),
    ]) {
        let checked = jwt::check_jwks(&text);
        if let Err(reason) = &checked {
            prop_assert!(!reason.is_empty(), "a refusal says why");
        }
        if let Ok(set) = serde_json::from_str::<Value>(&text) {
            let parsed = serde_json::from_value::<Authentication>(json!({
                "policy": "b/fuzz",
                "required": false,
                "issuers": [{"issuer": ISS, "jwks": set}],
            }));
            if checked.is_ok() {
                prop_assert!(parsed.is_ok(), "check_jwks accepted what the config refuses: {:?}", parsed.err());
            }
        }
    }

    /// Whatever the token and wherever it arrives, verification answers a principal or a
    /// refusal, never a panic, and only the good tokens themselves are accepted.
    #[test]
    fn token_verification_refuses_and_never_panics(token in tokens(), place in 0..3u8) {
        let s = jwt_seeds();
        if let Some((mut headers, uri)) = request_with(&token, place) {
            let outcome = s.authn.authenticate(&headers, &uri);
            match &outcome {
                Ok(principal) => {
                    let principal = principal.as_ref().expect("required: a principal or a refusal");
                    prop_assert!(
                        s.good.iter().any(|g| g == token.trim()),
                        "accepted a token never signed as good: {}", token
                    );
                    prop_assert_eq!(&principal.principal, &format!("{ISS}/alice"));
                }
                Err(refusal) => prop_assert!(!refusal.reason().is_empty()),
            }
            s.authn.prepare_upstream(outcome.ok().flatten().as_ref(), &mut headers);
        }
    }
}
