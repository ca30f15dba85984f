//! Outbound HTTP routing: from (host, port, request) to a route, and from a route to a cluster.
//!
//! Built once per config (regexes compiled, hostnames indexed) so the request path does a hash
//! lookup and a linear scan of one host's routes.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use regex::Regex;

use crate::config::{
    ConfigError, HeaderMatch, HttpHost, HttpRoute, Outbound, RouteMatch, StringMatch,
};
use crate::fault::Fault;
use crate::mirror::{self, Mirror};
use crate::route_regex;

#[derive(Debug)]
enum Text {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Text {
    fn compile(m: &StringMatch, route: &str) -> Result<Option<Text>, ConfigError> {
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) => Some(Text::Exact(e.clone())),
            (_, Some(p), _) => Some(Text::Prefix(p.clone())),
            (_, _, Some(r)) => Some(Text::Regex(route_regex::compile(r).map_err(|e| {
                ConfigError::Regex {
                    route: route.to_owned(),
                    reason: e.reason,
                }
            })?)),
            _ => None,
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Text::Exact(e) => e == value,
            Text::Prefix(p) => value.starts_with(p.as_str()),
            Text::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug)]
struct Header {
    name: http::HeaderName,
    text: Option<Text>, // None: presence only
}

#[derive(Debug, Default)]
struct Match {
    path: Option<Text>,
    headers: Vec<Header>,
    method: Option<http::Method>,
}

impl Match {
    fn compile(m: &RouteMatch, route: &str) -> Result<Match, ConfigError> {
        let path = match &m.path {
            Some(p) => Text::compile(p, route)?,
            None => None,
        };
        let headers = m
            .headers
            .iter()
            .map(|h| Header::compile(h, route))
            .collect::<Result<_, _>>()?;
        let method = m.method.as_deref().and_then(|s| s.parse().ok());
        Ok(Match {
            path,
            headers,
            method,
        })
    }

    fn matches(&self, method: &http::Method, path: &str, headers: &http::HeaderMap) -> bool {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.method.as_ref().is_none_or(|m| m == method)
            && self.path.as_ref().is_none_or(|p| p.matches(path))
            && self.headers.iter().all(|h| h.matches(headers))
    }
}

impl Header {
    fn matches(&self, headers: &http::HeaderMap) -> bool {
        match (headers.get(&self.name), &self.text) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(t)) => v.to_str().is_ok_and(|v| t.matches(v)),
        }
    }

    fn compile(h: &HeaderMatch, route: &str) -> Result<Header, ConfigError> {
        let text = Text::compile(
            &StringMatch {
                exact: h.exact.clone(),
                prefix: h.prefix.clone(),
                regex: h.regex.clone(),
            },
            route,
        )?;
        let name = h.name.parse().map_err(|_| ConfigError::Regex {
            route: route.to_owned(),
            reason: format!("invalid header name {:?}", h.name),
        })?;
        Ok(Header { name, text })
    }
}

/// Header conditions that must all hold, compiled once (a fault's `headers`).
#[derive(Debug, Default)]
pub struct Headers(Vec<Header>);

impl Headers {
    pub fn compile(headers: &[HeaderMatch], route: &str) -> Result<Headers, ConfigError> {
        headers
            .iter()
            .map(|h| Header::compile(h, route))
            .collect::<Result<_, _>>()
            .map(Headers)
    }

    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        self.0.iter().all(|h| h.matches(headers))
    }
}

/// A route ready to match, with its weighted backends.
#[derive(Debug)]
pub struct Route {
    pub config: HttpRoute,
    matches: Vec<Match>,
    total_weight: u32,
    /// A fault and the headers a request must match to get it.
    pub fault: Option<(Fault, Headers)>,
    /// Shared with the copies in flight, which count their own failures.
    pub mirror: Option<Arc<Mirror>>,
}

impl Route {
    pub fn compile(config: &HttpRoute) -> Result<Route, ConfigError> {
        let matches = config
            .matches
            .iter()
            .map(|m| Match::compile(m, &config.name))
            .collect::<Result<_, _>>()?;
        let total_weight = config.backends.iter().map(|b| b.weight).sum();
        let fault = match &config.fault {
            Some(f) => Some((
                Fault::compile(f),
                Headers::compile(&f.headers, &config.name)?,
            )),
            None => None,
        };
        let mirror = config.mirror.as_ref().map(|m| {
            Arc::new(Mirror::new(
                m.cluster.clone(),
                m.percent,
                mirror::MAX_IN_FLIGHT,
            ))
        });
        Ok(Route {
            config: config.clone(),
            matches,
            total_weight,
            fault,
            mirror,
        })
    }

    fn matches(&self, method: &http::Method, path: &str, headers: &http::HeaderMap) -> bool {
        self.matches.is_empty()
            || self
                .matches
                .iter()
                .any(|m| m.matches(method, path, headers))
    }

    /// Picks a backend cluster by weight; `roll` in [0, total weight).
    pub fn pick_with(&self, roll: u32) -> &str {
        let mut left = roll;
        for b in &self.config.backends {
            if left < b.weight {
                return &b.cluster;
            }
            left -= b.weight;
        }
        // Unreachable for roll < total; the last backend is a safe answer anyway.
        &self.config.backends[self.config.backends.len() - 1].cluster
    }

    pub fn pick(&self) -> &str {
        self.pick_with(rand::rng().random_range(0..self.total_weight))
    }
}

#[derive(Debug)]
pub struct Host {
    pub service: String,
    pub port: u16,
    pub routes: Vec<Route>,
}

/// Every outbound HTTP host of a config, indexed by (lowercased hostname, port).
#[derive(Debug, Default)]
pub struct Table {
    hosts: Vec<Host>,
    index: HashMap<(String, u16), usize>,
    /// "ns/service:port" -> host, for connections routed by their original destination.
    by_service: HashMap<String, usize>,
    /// Whether any hostname is a wildcard (`*.example.com`, a gateway's): only then does a
    /// miss look for one, so sidecars pay nothing for it.
    wildcards: bool,
}

impl Table {
    pub fn build(hosts: &[HttpHost]) -> Result<Table, ConfigError> {
        let mut table = Table::default();
        for h in hosts {
            let routes = h
                .routes
                .iter()
                .map(Route::compile)
                .collect::<Result<_, _>>()?;
            let i = table.hosts.len();
            table.hosts.push(Host {
                service: h.service.clone(),
                port: h.port,
                routes,
            });
            for name in &h.hostnames {
                table.wildcards |= name.starts_with("*.");
                table.index.insert((name.to_ascii_lowercase(), h.port), i);
            }
            table
                .by_service
                .insert(format!("{}:{}", h.service, h.port), i);
        }
        Ok(table)
    }

    /// The host an `authority` ("api.b:8080", or "api.b" meaning port 80) names.
    /// An exact hostname wins; else the most specific wildcard whose suffix the name has
    /// (`*.b.example.com` before `*.example.com`; a wildcard never matches its bare suffix), as
    /// Istio's Gateway and the Gateway API match listener and route hostnames.
    pub fn host(&self, authority: &str) -> Option<&Host> {
        let (name, port) = split_authority(authority)?;
        let name = name.to_ascii_lowercase();
        if let Some(&i) = self.index.get(&(name.clone(), port)) {
            return Some(&self.hosts[i]);
        }
        if !self.wildcards {
            return None;
        }
        let mut rest = name.as_str();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(&i) = self.index.get(&(format!("*.{suffix}"), port)) {
                return Some(&self.hosts[i]);
            }
            rest = suffix;
        }
        None
    }

    /// Every mirrored route, by route name, for admin output and metrics.
    pub fn mirrors(&self) -> impl Iterator<Item = (&str, &Arc<Mirror>)> {
        self.hosts
            .iter()
            .flat_map(|h| &h.routes)
            .filter_map(|r| Some((r.config.name.as_str(), r.mirror.as_ref()?)))
    }

    /// The host of one service port, named as upstreams are ("ns/service:port").
    pub fn service(&self, key: &str) -> Option<&Host> {
        self.by_service.get(key).map(|&i| &self.hosts[i])
    }
}

impl Host {
    pub fn route(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matches(method, path, headers))
    }
}

/// Why an authority has no route: the deny policies that refuse it, or the Mesh default.
/// A scan, not an index: it runs only for requests that are refused anyway.
pub fn refused_by(outbound: &Outbound, authority: &str) -> String {
    let denied = split_authority(authority).and_then(|(name, port)| {
        outbound
            .denied
            .iter()
            .find(|d| d.port == port && d.hostnames.iter().any(|h| h.eq_ignore_ascii_case(name)))
    });
    match denied {
        Some(d) => format!("denied by {}", d.decided_by.join(", ")),
        None if outbound.default_policy.is_empty() => {
            "it is no Service or ExternalService of this mesh".to_owned()
        }
        None => format!(
            "no policy allows it, so {} decided",
            outbound.default_policy
        ),
    }
}

pub fn split_authority(authority: &str) -> Option<(&str, u16)> {
    match authority.rsplit_once(':') {
        Some((name, port)) => Some((name, port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority, 80)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DeniedHost, WeightedCluster};

    #[test]
    fn a_refusal_names_the_deny_policy_else_the_mesh_default() {
        let mut out = Outbound {
            denied: vec![DeniedHost {
                service: "c/ledger".into(),
                hostnames: vec!["ledger.c".into()],
                port: 8080,
                decided_by: vec!["c/never-from-a".into()],
            }],
            default_policy: "Mesh/mesh defaultPolicy: deny".into(),
            ..Outbound::default()
        };
        assert_eq!(
            refused_by(&out, "Ledger.C:8080"),
            "denied by c/never-from-a"
        );
        assert_eq!(
            refused_by(&out, "ledger.c:9090"),
            "no policy allows it, so Mesh/mesh defaultPolicy: deny decided"
        );
        out.default_policy.clear();
        assert_eq!(
            refused_by(&out, "example.com"),
            "it is no Service or ExternalService of this mesh"
        );
    }

    fn route(name: &str, matches: Vec<RouteMatch>, backends: &[(&str, u32)]) -> HttpRoute {
        HttpRoute {
            name: name.into(),
            matches,
            backends: backends
                .iter()
                .map(|(c, w)| WeightedCluster {
                    cluster: c.to_string(),
                    weight: *w,
                })
                .collect(),
            timeout_ms: None,
            retries: None,
            mirror: None,
            fault: None,
            consistent_hash: None,
        }
    }

    fn canary_host() -> HttpHost {
        HttpHost {
            service: "b/api".into(),
            hostnames: vec!["api.b".into(), "api.b.svc.cluster.local".into()],
            port: 8080,
            routes: vec![
                route(
                    "b/api-canary#0",
                    vec![RouteMatch {
                        headers: vec![HeaderMatch {
                            name: "x-canary".into(),
                            exact: Some("always".into()),
                            prefix: None,
                            regex: None,
                            present: None,
                        }],
                        ..Default::default()
                    }],
                    &[("v2", 100)],
                ),
                route(
                    "b/api-canary#1",
                    vec![RouteMatch {
                        path: Some(StringMatch {
                            regex: Some("/v[0-9]+/.*".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    &[("v1", 90), ("v2", 10)],
                ),
                route("default", vec![], &[("all", 100)]),
            ],
        }
    }

    #[test]
    fn an_exact_hostname_beats_a_wildcard_and_the_longer_wildcard_wins() {
        let host = |service: &str, name: &str| HttpHost {
            service: service.into(),
            hostnames: vec![name.into()],
            port: 443,
            routes: vec![route("default", vec![], &[("all", 100)])],
        };
        let t = Table::build(&[
            host("a/any", "*.example.test"),
            host("a/deep", "*.b.example.test"),
            host("a/exact", "api.example.test"),
        ])
        .unwrap();
        let service = |authority: &str| t.host(authority).map(|h| h.service.as_str());
        assert_eq!(service("api.example.test:443"), Some("a/exact"));
        assert_eq!(service("Shop.Example.test:443"), Some("a/any"));
        assert_eq!(service("x.b.example.test:443"), Some("a/deep"));
        assert_eq!(service("x.y.example.test:443"), Some("a/any"));
        assert_eq!(service("example.test:443"), None, "not the bare suffix");
        assert_eq!(service("api.example.test:80"), None);
    }

    #[test]
    fn hosts_are_found_by_any_name_and_port_case_insensitively() {
        let t = Table::build(&[canary_host()]).unwrap();
        assert_eq!(t.host("API.b:8080").unwrap().service, "b/api");
        assert_eq!(
            t.host("api.b.svc.cluster.local:8080").unwrap().service,
            "b/api"
        );
        assert!(t.host("api.b").is_none(), "no port means 80");
        assert!(t.host("api.c:8080").is_none());
    }

    #[test]
    fn first_matching_route_wins() {
        let t = Table::build(&[canary_host()]).unwrap();
        let host = t.host("api.b:8080").unwrap();
        let mut headers = http::HeaderMap::new();
        let get = http::Method::GET;
        assert_eq!(
            host.route(&get, "/v1/users", &headers).unwrap().config.name,
            "b/api-canary#1"
        );
        assert_eq!(
            host.route(&get, "/x/v1/users", &headers)
                .unwrap()
                .config
                .name,
            "default",
            "regex is anchored"
        );
        headers.insert("x-canary", "always".parse().unwrap());
        assert_eq!(
            host.route(&get, "/v1/users", &headers).unwrap().config.name,
            "b/api-canary#0"
        );
    }

    #[test]
    fn weights_split_exactly_over_the_whole_range() {
        let r = Route::compile(&route("r", vec![], &[("v1", 90), ("v2", 10)])).unwrap();
        let picks: Vec<&str> = (0..100).map(|roll| r.pick_with(roll)).collect();
        assert_eq!(picks.iter().filter(|c| **c == "v1").count(), 90);
        assert_eq!(picks.iter().filter(|c| **c == "v2").count(), 10);
    }

    #[test]
    fn header_conditions_must_all_hold() {
        let when = Headers::compile(
            &[HeaderMatch {
                name: "x-chaos".into(),
                exact: Some("yes".into()),
                prefix: None,
                regex: None,
                present: None,
            }],
            "r",
        )
        .unwrap();
        let mut h = http::HeaderMap::new();
        assert!(!when.matches(&h));
        h.insert("x-chaos", "no".parse().unwrap());
        assert!(!when.matches(&h));
        h.insert("x-chaos", "yes".parse().unwrap());
        assert!(when.matches(&h));
        assert!(Headers::default().matches(&http::HeaderMap::new()));
    }

    #[test]
    fn a_bad_regex_is_refused_naming_the_route() {
        let bad = route(
            "b/r#0",
            vec![RouteMatch {
                path: Some(StringMatch {
                    regex: Some("(".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            &[("c", 1)],
        );
        let err = Route::compile(&bad).unwrap_err().to_string();
        assert!(err.starts_with("route \"b/r#0\": invalid regex"), "{err}");
    }
}
