"""Lowering AccessPolicies into the inbound authorization rules a sidecar evaluates.

Each inbound port gets its rules (denies first, then allows, each sorted by policy) and a
default, so the sidecar needs no knowledge of policy semantics beyond "first matching deny,
else any matching allow, else the default". `policy` decides the same questions from intent;
tests check the two agree.
"""

from __future__ import annotations

from reconciler.compiler import proxyconfig as pc
from reconciler.compiler.policy import Selection
from reconciler.intent import model


def _paths(patterns: list[str] | None) -> list[pc.PathPattern]:
    result = [
        pc.PathPattern(prefix=p[:-1]) if p.endswith("*") else pc.PathPattern(exact=p)
        for p in patterns or ()
    ]
    return sorted(result, key=lambda p: (p.exact is None, p.exact or p.prefix or ""))


def _principal(when: model.Conditions | None) -> pc.PrincipalMatch | None:
    if when is None or not when.on_end_user:
        return None
    claims = [pc.ClaimMatch(path=c.path, values=sorted(c.values)) for c in when.claims or ()]
    if when.scopes:
        claims.append(
            pc.ClaimMatch(path=["scope"], values=sorted(when.scopes), space_separated=True)
        )
    return pc.PrincipalMatch(principals=sorted(when.request_principals or ()), claims=claims)


# With no location given, a token is read where OAuth 2.0 bearer tokens travel (RFC 6750).
DEFAULT_TOKEN_HEADER = pc.TokenHeader(name="authorization", prefix="Bearer ")


def authentication(ra: model.RequestAuthentication) -> pc.Authentication:
    return pc.Authentication(
        policy=f"RequestAuthentication {ra.ref}",
        required=ra.spec.required,
        issuers=[
            pc.JwtIssuer(
                issuer=i.issuer,
                audiences=list(i.audiences),
                jwks_uri=i.jwks_uri,
                jwks_file=i.jwks_file,
                discovery=i.discovers,
                jwks=i.jwks,
                from_headers=[
                    pc.TokenHeader(name=h.name.lower(), prefix=h.prefix) for h in i.from_headers
                ]
                or ([] if i.from_params or i.from_cookies else [DEFAULT_TOKEN_HEADER]),
                from_params=list(i.from_params),
                from_cookies=list(i.from_cookies),
                forward_claims=[
                    pc.ClaimHeader(claim=c.claim, header=c.header.lower()) for c in i.forward_claims
                ],
                forward_token=i.forward_token,
                leeway_seconds=i.clock_skew // 1000,
                token_cache_size=i.token_cache_size,
            )
            for i in ra.spec.issuers
        ],
    )


def rule(selection: Selection, policy: model.AccessPolicy) -> pc.AuthzRule:
    peers = selection.peers[policy.ref]
    when = policy.spec.when
    return pc.AuthzRule(
        policy=policy.ref,
        action="ALLOW" if policy.spec.action == "allow" else "DENY",
        peers=pc.PeerMatch(
            identities=sorted(peers.identities),
            namespaces=sorted(peers.namespaces),
            any_identity=peers.any_identity,
        ),
        methods=sorted(when.methods or ()) if when else [],
        paths=_paths(when.paths) if when else [],
        principal=_principal(when),
    )


def inbound(selection: Selection, service: model.Service) -> list[pc.InboundPort]:
    default = selection.default()
    ports = []
    for port in sorted(service.spec.ports, key=lambda p: p.port):
        governing = selection.governing.get((service.key, port.name), [])
        rules = sorted(
            (rule(selection, g.policy) for g in governing),
            key=lambda r: (r.action != "DENY", r.policy),
        )
        ports.append(
            pc.InboundPort(
                name=port.name,
                port=port.port,
                target_port=port.app_port,
                protocol=port.protocol,
                rules=rules,
                default_action="ALLOW" if default.decision == "allow" else "DENY",
                default_policy=default.policies[0],
                authentication=authentication(ra)
                if (ra := selection.intent.authentication.get((service.key, port.name)))
                else None,
            )
        )
    return ports
