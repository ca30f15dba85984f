//! Inbound authorization: the decision for one request (or TCP connection) on one port.
//!
//! Order, as the compiler lowers policy: the first matching DENY rule decides; else any matching
//! ALLOW; else the port's default. The decision always names the policy that made it, so a 403
//! can say why.

use crate::config::{Action, AuthzRule, InboundPort, PathPattern};
use crate::jwt::Principal;

/// A verified peer: the SPIFFE ID from its certificate and the namespace that ID names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub spiffe_id: String,
    pub namespace: String,
}

impl Peer {
    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; other shapes carry no namespace a rule can match.
    /// Like `from_spiffe_id`, for a peer that must belong to `trust_domain`: a certificate
    /// from another trust domain names namespaces that are not ours, even if a CA we trust
    /// signed it, so it must not match namespace rules.
    pub fn in_trust_domain(id: &str, trust_domain: &str) -> Option<Peer> {
        let rest = id.strip_prefix("spiffe://")?;
        let (td, _) = rest.split_once('/')?;
        if td != trust_domain {
            return None;
        }
        Peer::from_spiffe_id(id)
    }

    pub fn from_spiffe_id(id: &str) -> Option<Peer> {
        let rest = id.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (_td, ns_kw, ns, sa_kw, sa) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if ns_kw != "ns"
            || sa_kw != "sa"
            || ns.is_empty()
            || sa.is_empty()
            || parts.next().is_some()
        {
            return None;
        }
        Some(Peer {
            spiffe_id: id.to_owned(),
            namespace: ns.to_owned(),
        })
    }
}

/// What a request looks like to authorization: L7 fields are absent for TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    pub policy: &'a str,
}

fn path_matches(patterns: &[PathPattern], path: Option<&str>) -> bool {
    // The caller gives the normalized path without its query (`path.rs`), the spelling
    // policies are written in.
    let Some(path) = path else { return false };
    patterns.iter().any(|p| match (&p.exact, &p.prefix) {
        (Some(exact), _) => exact == path,
        (None, Some(prefix)) => path.starts_with(prefix.as_str()),
        (None, None) => false,
    })
}

fn rule_matches(
    rule: &AuthzRule,
    peer: Option<&Peer>,
    req: Request<'_>,
    user: Option<&Principal>,
) -> bool {
    let Some(peer) = peer else { return false }; // no identity: plaintext in PERMISSIVE mode
    let p = &rule.peers;
    let peer_ok = p.any_identity
        || p.identities.contains(&peer.spiffe_id)
        || p.namespaces.contains(&peer.namespace);
    if !peer_ok {
        return false;
    }
    if !rule.methods.is_empty()
        && !req
            .method
            .is_some_and(|m| rule.methods.iter().any(|r| r == m))
    {
        return false;
    }
    (rule.paths.is_empty() || path_matches(&rule.paths, req.path))
        && rule.principal.as_ref().is_none_or(|m| m.matches(user))
}

pub fn decide<'a>(port: &'a InboundPort, peer: Option<&Peer>, req: Request<'_>) -> Decision<'a> {
    decide_for_user(port, peer, req, None)
}

/// Like `decide`, for a request whose end user (a verified JWT) is `user`.
pub fn decide_for_user<'a>(
    port: &'a InboundPort,
    peer: Option<&Peer>,
    req: Request<'_>,
    user: Option<&Principal>,
) -> Decision<'a> {
    let matching = |action| {
        port.rules
            .iter()
            .find(|r| r.action == action && rule_matches(r, peer, req, user))
    };
    if let Some(rule) = matching(Action::Deny) {
        return Decision {
            allowed: false,
            policy: &rule.policy,
        };
    }
    if let Some(rule) = matching(Action::Allow) {
        return Decision {
            allowed: true,
            policy: &rule.policy,
        };
    }
    Decision {
        allowed: port.default_action == Action::Allow,
        policy: &port.default_policy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PeerMatch, Protocol};

    fn rule(
        policy: &str,
        action: Action,
        ns: &[&str],
        methods: &[&str],
        paths: &[(&str, bool)],
    ) -> AuthzRule {
        AuthzRule {
            policy: policy.into(),
            action,
            peers: PeerMatch {
                namespaces: ns.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            methods: methods.iter().map(|s| s.to_string()).collect(),
            paths: paths
                .iter()
                .map(|(p, exact)| PathPattern {
                    exact: exact.then(|| p.to_string()),
                    prefix: (!exact).then(|| p.to_string()),
                })
                .collect(),
            principal: None,
        }
    }

    fn port(rules: Vec<AuthzRule>, default: Action) -> InboundPort {
        InboundPort {
            name: "http".into(),
            port: 8080,
            target_port: 8080,
            protocol: Protocol::Http,
            rules,
            default_action: default,
            default_policy: "Mesh/mesh defaultPolicy: deny".into(),
            authentication: None,
        }
    }

    fn peer(ns: &str) -> Peer {
        Peer::from_spiffe_id(&format!("spiffe://td/ns/{ns}/sa/web")).unwrap()
    }

    #[test]
    fn deny_wins_over_allow_and_names_its_policy() {
        let p = port(
            vec![
                rule("a/allow-all", Action::Allow, &["c"], &[], &[]),
                rule("a/never-c", Action::Deny, &["c"], &[], &[]),
            ],
            Action::Deny,
        );
        let d = decide(&p, Some(&peer("c")), Request::default());
        assert_eq!(
            d,
            Decision {
                allowed: false,
                policy: "a/never-c"
            }
        );
    }

    #[test]
    fn l7_conditions_need_method_and_path() {
        let p = port(
            vec![rule(
                "c/ledger",
                Action::Allow,
                &["b"],
                &["GET"],
                &[("/entries/", false), ("/entries", true)],
            )],
            Action::Deny,
        );
        let b = peer("b");
        let allowed = |m, path| {
            decide(
                &p,
                Some(&b),
                Request {
                    method: Some(m),
                    path: Some(path),
                },
            )
            .allowed
        };
        assert!(allowed("GET", "/entries"));
        assert!(allowed("GET", "/entries/7"));
        assert!(!allowed("DELETE", "/entries/7"));
        assert!(!allowed("GET", "/entriesX"));
        assert!(!allowed("GET", "/admin"));
        // TCP carries no method or path: an L7 rule cannot allow it
        assert!(!decide(&p, Some(&b), Request::default()).allowed);
    }

    #[test]
    fn no_identity_matches_no_rule_and_gets_the_default() {
        let p = port(
            vec![rule("x/any", Action::Allow, &["b"], &[], &[])],
            Action::Deny,
        );
        let d = decide(&p, None, Request::default());
        assert_eq!(
            d,
            Decision {
                allowed: false,
                policy: "Mesh/mesh defaultPolicy: deny"
            }
        );
    }

    #[test]
    fn spiffe_ids_parse_strictly() {
        assert_eq!(peer("b").namespace, "b");
        assert_eq!(Peer::from_spiffe_id("spiffe://td/ns/b/sa/x/extra"), None);
        assert_eq!(Peer::from_spiffe_id("spiffe://td/sa/x/ns/b"), None);
        assert_eq!(Peer::from_spiffe_id("https://td/ns/b/sa/x"), None);
        assert!(Peer::in_trust_domain("spiffe://td/ns/b/sa/x", "td").is_some());
        assert_eq!(
            Peer::in_trust_domain("spiffe://other/ns/b/sa/x", "td"),
            None
        );
        assert_eq!(Peer::in_trust_domain("spiffe://tdx/ns/b/sa/x", "td"), None);
    }
}
