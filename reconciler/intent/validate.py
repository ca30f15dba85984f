"""Checks across documents: references, duplicates, conflicts and rules that can never match.

Schema validation (in `loader`) sees one document at a time; these checks see the whole
revision. Each finding points at the field that causes it. Features the data plane cannot enforce
yet are refused here, never accepted and ignored.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from typing import Any

import pydantic

from reconciler import _native
from reconciler.intent import model
from reconciler.intent.diagnostics import Diagnostic, Position, Severity
from reconciler.intent.loader import UNREAD as _UNREAD
from reconciler.intent.loader import Loc, did_you_mean, position_of
from reconciler.intent.mesh import Intent, Peers

HEADLESS_SUFFIX = "-weft"


def _error(
    obj: pydantic.BaseModel, loc: Loc, message: str, hint: str | None = None, *, key: bool = False
) -> Diagnostic:
    """An error at the value of `loc`, or at its key (for problems with a whole block)."""
    return Diagnostic(position_of(obj, loc, key=key), Severity.ERROR, message, hint)


def _warning(
    obj: pydantic.BaseModel, loc: Loc, message: str, hint: str | None = None, *, key: bool = False
) -> Diagnostic:
    return Diagnostic(position_of(obj, loc, key=key), Severity.WARNING, message, hint)


def _not_supported(obj: pydantic.BaseModel, loc: Loc, what: str) -> Diagnostic:
    return _error(
        obj,
        loc,
        f"{what} is not supported yet: the data plane cannot enforce it, "
        "so Weft refuses it rather than ignore it",
        key=True,
    )


def _kind_name(obj: pydantic.BaseModel) -> str:
    meta: Any = getattr(obj, "metadata", None)
    ns = getattr(meta, "namespace", None)
    return f"{type(obj).__name__} {ns + '/' if ns else ''}{meta.name if meta else '?'}"


def duplicates(objects: list[pydantic.BaseModel]) -> Iterator[Diagnostic]:
    seen: dict[tuple[str, str | None, str], pydantic.BaseModel] = {}
    for obj in objects:
        meta: Any = getattr(obj, "metadata")  # noqa: B009  # every kind has metadata
        key = (type(obj).__name__, getattr(meta, "namespace", None), meta.name)
        first = seen.setdefault(key, obj)
        if first is not obj:
            yield _error(
                obj,
                ("metadata", "name"),
                f"duplicate {_kind_name(obj)} (first defined at {position_of(first)})",
            )


def meshes(found: list[model.Mesh], revision_root: str) -> Iterator[Diagnostic]:
    if not found:
        yield Diagnostic(
            Position(revision_root),
            Severity.ERROR,
            "no Mesh document: a Weft repository needs exactly one",
            "copy mesh.yaml from mesh-repo-template",
        )
    for extra in found[1:]:
        yield _error(
            extra,
            ("kind",),
            f"more than one Mesh (the first is at {position_of(found[0])}); "
            "a repository has exactly one",
        )


def services(intent: Intent) -> Iterator[Diagnostic]:
    workloads: dict[tuple[str, str, str], model.Service] = {}
    accounts: dict[tuple[str, str], model.Service] = {}
    jobs: dict[str, list[model.Service]] = {}  # by namespace
    for svc in intent.services.values():
        name, ns = svc.metadata.name, svc.metadata.namespace
        if len(name) + len(HEADLESS_SUFFIX) > 63:
            yield _error(
                svc,
                ("metadata", "name"),
                f"service name {name!r} is too long: "
                f"its discovery Service {name}{HEADLESS_SUFFIX} must fit in 63 characters",
            )
        for field in ("name", "port", "targetPort"):
            seen: dict[object, int] = {}
            for i, port in enumerate(svc.spec.ports):
                value = {"name": port.name, "port": port.port, "targetPort": port.app_port}[field]
                if value in seen:
                    yield _error(
                        svc,
                        ("spec", "ports", i, field),
                        f"spec.ports[{i}].{field}: {value!r} is already used by "
                        f"spec.ports[{seen[value]}]",
                    )
                seen.setdefault(value, i)
        subset_seen: set[str] = set()
        for i, subset in enumerate(svc.spec.subsets):
            if subset.name in subset_seen:
                yield _error(
                    svc, ("spec", "subsets", i, "name"), f"duplicate subset {subset.name!r}"
                )
            subset_seen.add(subset.name)
            if len(name) + len(subset.name) + 1 + len(HEADLESS_SUFFIX) > 63:
                yield _error(
                    svc,
                    ("spec", "subsets", i, "name"),
                    f"subset name {subset.name!r} is too long: its discovery Service "
                    f"{name}-{subset.name}{HEADLESS_SUFFIX} must fit in 63 characters",
                )
        for i, subset in enumerate(svc.spec.subsets):
            for label in sorted(subset.labels.keys() & svc.pod_selector.keys()):
                yield _error(
                    svc,
                    ("spec", "subsets", i, "labels", label),
                    f"subset label {label!r} is already in the workload's podSelector: a subset "
                    "narrows the service's pods, it cannot select others",
                )
        tcp = [p.name for p in svc.spec.ports if not p.is_http]
        for field, block in (
            ("circuitBreaker", svc.spec.circuit_breaker),
            ("outlierDetection", svc.spec.outlier_detection),
        ):
            if block is not None and tcp:
                yield _warning(
                    svc,
                    ("spec", field),
                    f"{field} applies to HTTP ports only: tcp port {', '.join(tcp)} of "
                    f"{svc.ref} is neither limited nor watched",
                    key=True,
                )
        key = (ns, svc.spec.workload.kind, svc.workload_name)
        other = workloads.setdefault(key, svc)
        if other is not svc:
            yield _error(
                svc,
                ("spec", "workload"),
                f"{svc.spec.workload.kind} {ns}/{svc.workload_name} is already meshed by "
                f"Service {other.ref} ({position_of(other)})",
            )
        elif svc.spec.workload.kind == "Job":
            # Job pods are meshed as they are created, for the first Service that selects
            # them: two that may select one pod would leave which one to chance.
            found = jobs.setdefault(ns, [])
            for other in found:
                if _may_select_the_same_pods(svc, other):
                    yield _error(
                        svc,
                        ("spec", "workload"),
                        f"the pods of a Job may be selected by this Service and by Service "
                        f"{other.ref} ({position_of(other)}); a Job's pods can belong to one "
                        "meshed Service only",
                        "give one podSelector a label the other has with another value, "
                        "or name each Service's Job (workload.name)",
                        key=True,
                    )
                    break
            found.append(svc)
        owner = accounts.setdefault((ns, svc.service_account), svc)
        if owner is not svc:
            yield _warning(
                svc,
                ("spec", "serviceAccount") if svc.spec.service_account else ("metadata", "name"),
                f"service account {ns}/{svc.service_account} is shared with Service "
                f"{owner.ref}: both get one identity, and policies cannot tell them apart",
                "give each Service its own serviceAccount",
            )


def _may_select_the_same_pods(a: model.Service, b: model.Service) -> bool:
    """Whether one Job's pods could carry both Services' podSelectors (no label both name with
    different values) and be both's Job (by name, when both name theirs)."""
    names = a.spec.workload.name, b.spec.workload.name
    if None not in names and names[0] != names[1]:
        return False
    sa, sb = a.pod_selector, b.pod_selector
    return all(sa[k] == sb[k] for k in sa.keys() & sb.keys())


Broken = frozenset[tuple[str, str, str]]  # (kind, namespace, name) of documents refused by schema
# In `broken` when a file could not be read to its end (a YAML syntax error): any document may be
# missing, so no "unknown ..." reference is reported; the syntax error is the one to fix.
UNREAD = _UNREAD


def _refused_service(broken: Broken, ns: str, name: str) -> bool:
    return UNREAD in broken or ("Service", ns, name) in broken


def _refused_in(broken: Broken, ns: str | None = None) -> bool:
    """Whether a Service (in `ns`, or anywhere) may be missing only because it was refused."""
    return UNREAD in broken or any(k == "Service" and ns in (None, n) for k, n, _ in broken)


def _for_egress(intent: Intent, gw: model.Gateway) -> bool:
    """Whether some ExternalService leaves through this Gateway."""
    return any(
        intent.gateway(e.spec.egress_gateway, e.metadata.namespace) is gw
        for e in intent.externals
        if e.spec.egress_gateway
    )


def discovery_names(intent: Intent) -> Iterator[Diagnostic]:
    """Two Services must not need the same discovery Service (`api` + subset `v1` vs `api-v1`),
    nor a Service and an egress Gateway (Gateway `api` is addressed as `api-weft`)."""
    owners: dict[tuple[str, str], tuple[model.Service, Loc]] = {}
    for svc in intent.services.values():
        names: list[tuple[str, Loc]] = [(svc.metadata.name + HEADLESS_SUFFIX, ("metadata", "name"))]
        names += [
            (f"{svc.metadata.name}-{s.name}{HEADLESS_SUFFIX}", ("spec", "subsets", i, "name"))
            for i, s in enumerate(svc.spec.subsets)
        ]
        for name, loc in names:
            first, _ = owners.setdefault((svc.metadata.namespace, name), (svc, loc))
            if first is not svc:
                yield _error(
                    svc,
                    loc,
                    f"discovery Service {svc.metadata.namespace}/{name} is also needed by "
                    f"{first.ref} ({position_of(first)})",
                    "rename the service or the subset",
                )
    # An egress gateway is addressed by callers as `<name>-weft` too (a ClusterIP Service).
    for gw in intent.gateways.values():
        if not _for_egress(intent, gw):
            continue
        name = gw.metadata.name + HEADLESS_SUFFIX
        if len(name) > 63:
            yield _error(
                gw,
                ("metadata", "name"),
                f"gateway name {gw.metadata.name!r} is too long: the Service its callers "
                f"address, {name}, must fit in 63 characters",
            )
        other = owners.get((gw.metadata.namespace, name))
        if other is not None:
            yield _error(
                gw,
                ("metadata", "name"),
                f"Service {gw.metadata.namespace}/{name}, which callers of egress Gateway "
                f"{gw.ref} address, is also the discovery Service of {other[0].ref} "
                f"({position_of(other[0])})",
                "rename the gateway",
            )


def sources(
    intent: Intent, obj: model.Document, sources: list[model.Source], field: str, broken: Broken
) -> Iterator[Diagnostic]:
    """References in a `from` / `allowedFrom` list must name things that exist in this mesh.

    A reference to a Service that exists but was refused is not reported again: its own error
    is the one to fix.
    """
    ns = obj.metadata.namespace
    known_identities = intent.identities
    for i, source in enumerate(sources):
        for j, name in enumerate(source.namespaces or ()):
            if name != "*" and name not in intent.namespaces and not _refused_in(broken, name):
                yield _error(
                    obj,
                    ("spec", field, i, "namespaces", j),
                    f"unknown namespace {name!r}: no Service is declared in it",
                    did_you_mean(name, intent.namespaces),
                )
        for j, ref in enumerate(source.services or ()):
            full = ref if "/" in ref else f"{ns}/{ref}"
            ref_ns, ref_name = full.split("/", 1)
            if intent.service(ref, ns) is None and not _refused_service(broken, ref_ns, ref_name):
                yield _error(
                    obj,
                    ("spec", field, i, "services", j),
                    f"unknown service {full!r}",
                    did_you_mean(full, (f"{a}/{b}" for a, b in intent.services)),
                )
        for j, ref in enumerate(source.gateways or ()):
            if (
                intent.gateway(ref, ns) is None
                and ("Gateway", *_full(ref, ns).split("/")) not in broken
            ):
                yield _error(
                    obj,
                    ("spec", field, i, "gateways", j),
                    f"unknown gateway {_full(ref, ns)!r}",
                    did_you_mean(_full(ref, ns), (f"{a}/{b}" for a, b in intent.gateways)),
                )
        for j, spiffe in enumerate(source.identities or ()):
            domain = spiffe.removeprefix("spiffe://").split("/", 1)[0]
            if domain != intent.spec.trust_domain:
                yield _error(
                    obj,
                    ("spec", field, i, "identities", j),
                    f"identity {spiffe!r} is outside the trust domain "
                    f"{intent.spec.trust_domain!r}: no certificate Weft issues can match it",
                )
            elif spiffe not in known_identities and not _refused_in(broken):
                yield _error(
                    obj,
                    ("spec", field, i, "identities", j),
                    f"no Service runs as {spiffe!r}",
                    did_you_mean(spiffe, known_identities),
                )


def _full(ref: str, namespace: str) -> str:
    return ref if "/" in ref else f"{namespace}/{ref}"


def policies(intent: Intent, broken: Broken) -> Iterator[Diagnostic]:
    for policy in intent.policies:
        ns = policy.metadata.namespace
        spec = policy.spec
        if not intent.services_in(ns):
            if _refused_in(broken, ns):
                continue  # its Services were refused: their own errors are the ones to fix
            yield _error(
                policy,
                ("metadata", "namespace"),
                f"namespace {ns!r} has no Services: this policy governs nothing",
                did_you_mean(ns, intent.namespaces),
            )
            continue
        for i, name in enumerate(spec.to.services or ()):
            if (ns, name) not in intent.services and not _refused_service(broken, ns, name):
                yield _error(
                    policy,
                    ("spec", "to", "services", i),
                    f"unknown service {ns}/{name}",
                    did_you_mean(name, (s.metadata.name for s in intent.services_in(ns))),
                )
        targeted = intent.targets(policy)
        chosen = {n for n in spec.to.services or () if (ns, n) in intent.services}
        chosen |= {svc.metadata.name for svc, _ in targeted}
        echo = (
            _refused_in(broken, ns)
            if spec.to.services is None
            else any(_refused_service(broken, ns, n) for n in spec.to.services)
        )
        for i, ref in enumerate(spec.to.ports or ()):
            if not any(ref in (p.name, p.port) for svc, p in targeted) and not echo:
                ports = sorted(
                    {p.name for n in chosen for p in intent.services[(ns, n)].spec.ports}
                )
                yield _error(
                    policy,
                    ("spec", "to", "ports", i),
                    f"no targeted service has port {ref!r}",
                    did_you_mean(str(ref), ports),
                )
        if spec.when is not None:
            for svc, port in targeted:
                if not port.is_http:
                    yield _error(
                        policy,
                        ("spec", "when"),
                        f"`when` conditions are HTTP-only and can never match tcp port "
                        f"{port.name} of {svc.ref}",
                        "narrow spec.to.ports to HTTP ports",
                        key=True,
                    )
                    break
        if spec.when is not None and spec.when.on_end_user:
            for svc, port in targeted:
                if port.is_http and (svc.key, port.name) not in intent.authentication:
                    yield _error(
                        policy,
                        ("spec", "when"),
                        f"end-user conditions can never match on port {port.name} of {svc.ref}: "
                        "no RequestAuthentication verifies tokens there",
                        "add a RequestAuthentication for it, or narrow spec.to",
                        key=True,
                    )
                    break
        yield from sources(intent, policy, spec.from_, "from", broken)
        if spec.action == "allow" and intent.spec.default_policy == "allow":
            yield _warning(
                policy,
                ("spec", "action"),
                key=True,
                message="this allow has no effect: the Mesh's defaultPolicy is allow, so every "
                "call no deny policy refuses is already allowed",
                hint="set defaultPolicy: deny in the Mesh to make allow policies count",
            )
    yield from shadowed_allows(intent)


def shadowed_allows(intent: Intent) -> Iterator[Diagnostic]:
    """An allow that an unconditional deny fully covers can never match: say so."""
    denies: dict[str, list[tuple[model.AccessPolicy, Peers, set[tuple[tuple[str, str], str]]]]] = (
        collections.defaultdict(list)
    )
    for p in intent.policies:
        if p.spec.action == "deny" and p.spec.when is None:
            covered = {(s.key, port.name) for s, port in intent.targets(p)}
            denies[p.metadata.namespace].append(
                (p, intent.peers(p.spec.from_, p.metadata.namespace), covered)
            )
    for allow in intent.policies:
        candidates = denies.get(allow.metadata.namespace)
        if allow.spec.action != "allow" or not candidates:
            continue
        who = intent.admitted(intent.peers(allow.spec.from_, allow.metadata.namespace))
        pairs = {(s.key, p.name) for s, p in intent.targets(allow)}
        if not who or not pairs:
            continue
        for deny, blocked, covered in candidates:
            if pairs <= covered and all(
                blocked.admits(intent.identity_of(c), c.metadata.namespace) for c in who
            ):
                yield _error(
                    allow,
                    ("spec", "from"),
                    f"this allow can never match: deny policy {deny.ref} "
                    f"({position_of(deny)}) blocks every caller it admits",
                )
                break


def _regex(obj: model.Document, loc: Loc, pattern: str | None) -> Iterator[Diagnostic]:
    if pattern is None:
        return
    try:
        _native.check_route_regex(pattern)
    except ValueError as e:
        yield _error(obj, loc, f"invalid regex {pattern!r}: {e}")


def _normal_path(
    obj: model.Document, loc: Loc, written: str, *, prefix: str | None, escaped: str
) -> Iterator[Diagnostic]:
    """Refuses a path no request can carry: sidecars normalize every request path first
    (fastpath's `path.rs`, called here through the binding), so only a normal form can match.

    `prefix` is None for an exact path, else the suffix that marks the pattern as a prefix
    as the user wrote it ("*" in policies, "" in Routes), so the hint reads like their input.
    """
    # A prefix is probed with a character appended: "/api/" is a fine prefix, while "/a//"
    # or "/a/./" can never begin a normal path.
    probe = written if prefix is None else written + "x"
    shown = written + (prefix or "")
    try:
        normal = _native.normalize_path(probe, escaped)
    except ValueError as e:
        yield _error(obj, loc, f"path {shown!r} can never match a request: {e}")
        return
    if normal != probe:
        fixed = normal if prefix is None else normal[:-1] + prefix
        yield _error(
            obj,
            loc,
            f"path {shown!r} is not in normal form; requests are normalized before they are "
            "matched, so it can never match",
            f"write {fixed!r} (docs/intent.md, Paths)",
        )


def paths(intent: Intent) -> Iterator[Diagnostic]:
    """Policy and Route paths must be in the normal form requests are matched in."""
    escaped = intent.spec.path_normalization.escaped_slashes
    for policy in intent.policies:
        when = policy.spec.when
        for i, pattern in enumerate((when.paths or ()) if when else ()):
            star = pattern.endswith("*")
            yield from _normal_path(
                policy,
                ("spec", "when", "paths", i),
                pattern[:-1] if star else pattern,
                prefix="*" if star else None,
                escaped=escaped,
            )
    for route in intent.routes:
        for r, rule in enumerate(route.spec.rules):
            for m, match in enumerate(rule.matches):
                at: Loc = ("spec", "rules", r, "matches", m, "path")
                if match.path is not None and match.path.exact is not None:
                    yield from _normal_path(
                        route, (*at, "exact"), match.path.exact, prefix=None, escaped=escaped
                    )
                if match.path is not None and match.path.prefix is not None:
                    yield from _normal_path(
                        route, (*at, "prefix"), match.path.prefix, prefix="", escaped=escaped
                    )


def _match_key(match: model.RouteMatch) -> str:
    return match.model_dump_json()


def routes(intent: Intent, broken: Broken = frozenset()) -> Iterator[Diagnostic]:
    claimed: dict[tuple[tuple[str, str], int], model.Route] = {}
    for route in intent.routes:
        ns, spec = route.metadata.namespace, route.spec
        svc = intent.resolve_host(spec.host, ns)
        if svc is None:
            parts = spec.host.split(".")
            if _refused_service(broken, parts[1] if len(parts) > 1 else ns, parts[0]):
                continue  # the Service exists but was refused: its own error is the one to fix
            names = [h for s in intent.services.values() for h in intent.hostnames(s)[:2]]
            yield _error(
                route,
                ("spec", "host"),
                f"host {spec.host!r} is not a Service of this mesh",
                did_you_mean(spec.host, names),
            )
            continue
        ports = intent.route_ports(route, svc)
        if spec.port is not None and not ports:
            found = svc.port(spec.port)
            faulted = any(r.fault is not None for r in spec.rules)
            hashed = any(r.consistent_hash is not None for r in spec.rules)
            yield _error(
                route,
                ("spec", "port"),
                f"{svc.ref} has no port {spec.port!r}"
                if found is None
                else f"port {spec.port!r} of {svc.ref} is tcp; Routes apply to HTTP ports"
                + (" (a fault on a tcp port has no requests to delay or abort)" if faulted else "")
                + (" (a consistentHash on a tcp port has no requests to hash)" if hashed else ""),
                did_you_mean(str(spec.port), [p.name for p in svc.spec.ports])
                if found is None
                else None,
            )
        elif not ports:
            yield _error(
                route, ("spec", "host"), f"{svc.ref} has no HTTP port for a Route to apply to"
            )
        if spec.gateways:
            yield from _gateway_binding(intent, route, svc, ports, broken)
            yield from _route_rules(intent, route, svc)
            continue  # a gateway's Route is not a mesh Route: it claims no mesh host
        for port in ports:
            other = claimed.setdefault((svc.key, port.port), route)
            if other is not route:
                yield _error(
                    route,
                    ("spec", "host"),
                    f"Route {other.ref} ({position_of(other)}) already routes {svc.ref} "
                    f"port {port.name}: two Routes for one host and port leave the order "
                    "of their rules undefined",
                    "merge the rules into one Route",
                )
        yield from _route_rules(intent, route, svc)


def _route_rules(intent: Intent, route: model.Route, svc: model.Service) -> Iterator[Diagnostic]:
    catch_all: int | None = None
    seen: dict[str, int] = {}
    for r, rule in enumerate(route.spec.rules):
        at: Loc = ("spec", "rules", r)
        if catch_all is not None:
            yield _error(
                route,
                (*at,),
                f"spec.rules[{r}] can never match: spec.rules[{catch_all}] above matches "
                "every request",
                "put the catch-all rule last",
            )
        for m, match in enumerate(rule.matches):
            key = _match_key(match)
            if key in seen:
                yield _error(
                    route,
                    (*at, "matches", m),
                    f"this match can never apply: spec.rules[{seen[key]}] has the same match above",
                )
            seen.setdefault(key, r)
            if match == model.RouteMatch():
                catch_all = r if catch_all is None else catch_all
            if match.path is not None:
                yield from _regex(route, (*at, "matches", m, "path", "regex"), match.path.regex)
            for h, header in enumerate(match.headers):
                yield from _regex(route, (*at, "matches", m, "headers", h, "regex"), header.regex)
        if not rule.matches and catch_all is None:
            catch_all = r
        yield from _backends(route, svc, rule, at)
        yield from _per_try_timeout(route, at, rule.retries, rule.timeout, "the rule's")
        if rule.mirror is not None:
            yield from _mirror(intent, route, svc, rule, (*at, "mirror"))
        if rule.fault is not None:
            yield from _fault(intent, route, svc, rule.fault, (*at, "fault"))


def _per_try_timeout(
    owner: model.Document, at: Loc, retries: model.Retries | None, timeout: int | None, whose: str
) -> Iterator[Diagnostic]:
    """Retries whose per-try timeout is not shorter than the whole request's can never retry."""
    if (
        retries
        and retries.attempts
        and retries.per_try_timeout
        and timeout
        and retries.per_try_timeout >= timeout
    ):
        yield _error(
            owner,
            (*at, "retries", "perTryTimeout"),
            f"perTryTimeout is not shorter than {whose} timeout: a retry can never happen",
        )


def _mirror(
    intent: Intent, route: model.Route, svc: model.Service, rule: model.RouteRule, at: Loc
) -> Iterator[Diagnostic]:
    mirror = rule.mirror
    assert mirror is not None
    for port in intent.route_ports(route, svc):
        target, target_port = intent.mirror_target(route, mirror, port)
        if target is None:
            yield _error(
                route,
                (*at, "service"),
                f"unknown service {mirror.service!r}",
                did_you_mean(str(mirror.service), (f"{a}/{b}" for a, b in intent.services)),
            )
            return
        if mirror.subset is not None and target.subset(mirror.subset) is None:
            yield _error(
                route,
                (*at, "subset"),
                f"{target.ref} has no subset {mirror.subset!r}",
                did_you_mean(mirror.subset, [s.name for s in target.spec.subsets]),
            )
            return
        if target_port is None or not target_port.is_http:
            what = f"port {mirror.port!r}" if mirror.port is not None else f"port {port.name}"
            yield _error(
                route,
                (*at, "port") if mirror.port is not None else (*at,),
                f"{target.ref} has no HTTP {what} to mirror {svc.ref} port {port.name} to",
                did_you_mean(str(mirror.port or port.name), [p.name for p in target.spec.ports]),
                key=mirror.port is None,
            )
            return
        # A canary split may mirror to one of its backends (copies of the other's share);
        # mirroring to the one destination every request already goes to only doubles load.
        if (
            target is svc
            and target_port == port
            and all(b.subset == mirror.subset for b in rule.backends)
        ):
            where = f"subset {mirror.subset!r}" if mirror.subset else "the whole service"
            yield _error(
                route,
                (*at,),
                f"this mirror sends copies to {where} of {svc.ref}, where the rule sends every "
                "request already: a mirror must be another destination",
                "mirror to another subset or service",
                key=True,
            )
            return


def _fault(
    intent: Intent, route: model.Route, svc: model.Service, fault: model.Fault, at: Loc
) -> Iterator[Diagnostic]:
    for h, header in enumerate(fault.headers):
        yield from _regex(route, (*at, "headers", h, "regex"), header.regex)
    if fault.abort is not None and fault.abort.grpc_status is not None:
        for port in intent.route_ports(route, svc):
            if port.protocol != "grpc":
                yield _error(
                    route,
                    (*at, "abort", "grpcStatus"),
                    f"grpcStatus aborts gRPC calls, but port {port.name} of {svc.ref} is "
                    f"{port.protocol}",
                    "use httpStatus, or set spec.port to a grpc port",
                )
                return


def _backends(
    route: model.Route, svc: model.Service, rule: model.RouteRule, at: Loc
) -> Iterator[Diagnostic]:
    seen: set[str | None] = set()
    for b, backend in enumerate(rule.backends):
        if backend.subset is not None and svc.subset(backend.subset) is None:
            yield _error(
                route,
                (*at, "backends", b, "subset"),
                f"{svc.ref} has no subset {backend.subset!r}",
                did_you_mean(backend.subset, [s.name for s in svc.spec.subsets]),
            )
        if backend.subset in seen:
            yield _error(route, (*at, "backends", b), "the same backend is listed twice")
        seen.add(backend.subset)
    weights = [b.weight for b in rule.backends]
    if len(weights) == 1 and weights[0] is None:
        return
    if any(w is None for w in weights):
        missing = weights.index(None)
        yield _error(
            route, (*at, "backends", missing), "with several backends every one needs a weight"
        )
        return
    total = sum(w or 0 for w in weights)
    if total != 100:
        yield _error(
            route, (*at, "backends"), f"backend weights sum to {total}; they must sum to 100"
        )


def externals(intent: Intent, broken: Broken) -> Iterator[Diagnostic]:
    mesh_hosts = {h for s in intent.services.values() for h in intent.hostnames(s)[1:]}
    claimed: dict[tuple[str, int], model.ExternalService] = {}
    egress_ports: dict[tuple[tuple[str, str], int], model.ExternalService] = {}
    for ext in intent.externals:
        spec = ext.spec
        if spec.host in mesh_hosts:
            yield _error(
                ext, ("spec", "host"), f"{spec.host!r} is a mesh Service, not an external one"
            )
        for i, port in enumerate(spec.ports):
            if any(p.port == port.port for p in spec.ports[:i]):
                yield _error(ext, ("spec", "ports", i, "port"), f"port {port.port} is listed twice")
                continue
            other = claimed.setdefault((spec.host, port.port), ext)
            if other is not ext:
                yield _error(
                    ext,
                    ("spec", "ports", i, "port"),
                    f"{spec.host}:{port.port} is already declared by ExternalService "
                    f"{other.ref} ({position_of(other)})",
                )
            yield from _per_try_timeout(
                ext, ("spec", "ports", i), port.retries, port.timeout, "the port's"
            )
        yield from sources(intent, ext, spec.allowed_from, "allowedFrom", broken)
        yield from _egress_gateway(intent, ext, broken, egress_ports)
        if not spec.allowed_from:
            yield _warning(
                ext,
                ("spec", "allowedFrom")
                if "allowed_from" in ext.spec.model_fields_set
                else ("metadata", "name"),
                f"no source may use ExternalService {ext.ref}",
                "add spec.allowedFrom",
            )


def egress_bypass(intent: Intent) -> Iterator[Diagnostic]:
    """A caller of an ExternalService behind an egress gateway that also calls another one
    directly: its pods must be let out of the cluster, so NetworkPolicy cannot hold it to the
    gateway (its sidecar still does)."""
    direct = [e for e in intent.externals if e.spec.egress_gateway is None]
    for ext in intent.externals:
        if ext.spec.egress_gateway is None:
            continue
        peers = intent.peers(ext.spec.allowed_from, ext.metadata.namespace)
        for svc in intent.services.values():
            spiffe, ns = intent.identity_of(svc), svc.metadata.namespace
            if not peers.admits(spiffe, ns):
                continue
            other = next(
                (
                    d
                    for d in direct
                    if intent.peers(d.spec.allowed_from, d.metadata.namespace).admits(spiffe, ns)
                ),
                None,
            )
            if other is not None:
                yield _warning(
                    ext,
                    ("spec", "egressGateway"),
                    f"{svc.ref} also calls ExternalService {other.ref} directly, so its pods "
                    "may leave the cluster: NetworkPolicy cannot hold it to the gateway",
                    f"give {other.ref} an egressGateway too",
                )
                break


def _egress_gateway(
    intent: Intent,
    ext: model.ExternalService,
    broken: Broken,
    claimed: dict[tuple[tuple[str, str], int], model.ExternalService],
) -> Iterator[Diagnostic]:
    """An ExternalService leaving through a gateway: the gateway exists, the ports are HTTP
    (the gateway reads the Host to pick the destination), and no other ExternalService shares
    one of its ports there (the port's AccessPolicy is this ExternalService's allowedFrom)."""
    ref, ns = ext.spec.egress_gateway, ext.metadata.namespace
    if ref is None:
        return
    gw = intent.gateway(ref, ns)
    if gw is None:
        if ("Gateway", *_full(ref, ns).split("/")) not in broken:
            yield _error(
                ext,
                ("spec", "egressGateway"),
                f"unknown gateway {_full(ref, ns)!r}",
                did_you_mean(_full(ref, ns), (f"{a}/{b}" for a, b in intent.gateways)),
            )
        return
    for i, port in enumerate(ext.spec.ports):
        if port.protocol != "http":
            yield _error(
                ext,
                ("spec", "ports", i, "protocol"),
                f"port {port.port} is {port.protocol}: an egress gateway carries protocol: http "
                "(with tlsOrigination for https outside)",
            )
            continue
        other = claimed.setdefault((gw.key, port.port), ext)
        if other is not ext:
            yield _error(
                ext,
                ("spec", "ports", i, "port"),
                f"port {port.port} of Gateway {gw.ref} already carries ExternalService "
                f"{other.ref} ({position_of(other)})",
                "give one of them another port",
            )
    # The gateway picks the destination by Host, whatever port a request came in on: one
    # ExternalService's callers could name another's host there. Harmless only if they may
    # call both, so every ExternalService leaving through one gateway must admit the same.
    peers = intent.peers(ext.spec.allowed_from, ns)
    first = next(
        (
            e
            for e in intent.externals
            if e.spec.egress_gateway
            and intent.gateway(e.spec.egress_gateway, e.metadata.namespace) is gw
        ),
        ext,
    )
    if (
        first is not ext
        and intent.peers(first.spec.allowed_from, first.metadata.namespace) != peers
    ):
        yield _error(
            ext,
            ("spec", "allowedFrom") if ext.spec.allowed_from else ("spec", "egressGateway"),
            f"Gateway {gw.ref} also carries ExternalService {first.ref} ({position_of(first)}), "
            "which admits other callers: the gateway cannot keep them apart",
            "give them the same allowedFrom, or separate egress gateways",
        )


def _gateway_binding(
    intent: Intent,
    route: model.Route,
    svc: model.Service,
    ports: list[model.ServicePort],
    broken: Broken,
) -> Iterator[Diagnostic]:
    ns, spec = route.metadata.namespace, route.spec
    if len(ports) > 1:
        yield _error(
            route,
            ("spec", "host"),
            f"{svc.ref} has several HTTP ports: a Route bound to a gateway names one in spec.port",
        )
    hosts: set[str] = set()
    for i, ref in enumerate(spec.gateways):
        gw = intent.gateway(ref, ns)
        if gw is None:
            if ("Gateway", *_full(ref, ns).split("/")) not in broken:
                yield _error(
                    route,
                    ("spec", "gateways", i),
                    f"unknown gateway {_full(ref, ns)!r}",
                    did_you_mean(_full(ref, ns), (f"{a}/{b}" for a, b in intent.gateways)),
                )
            continue
        hosts |= {h for listener in gw.spec.listeners for h in listener.hosts}
        if ports:
            yield from _unopened(intent, route, gw, svc, ports[0])
    for i, name in enumerate(spec.hostnames):
        if hosts and not any(model.covers(h, name) for h in hosts):
            yield _error(
                route,
                ("spec", "hostnames", i),
                f"{name!r} is not a host of the bound gateways' listeners",
                did_you_mean(name, sorted(hosts)),
            )


def _unopened(
    intent: Intent,
    route: model.Route,
    gw: model.Gateway,
    svc: model.Service,
    port: model.ServicePort,
) -> Iterator[Diagnostic]:
    """Default deny holds at the edge too: a Gateway routing to a port no allow policy opens
    to the gateway's identity serves only 403s. Legal (the policy may come in a later change),
    so a warning."""
    if intent.spec.default_policy == "allow":
        return
    spiffe, ns = intent.identity_of(gw), gw.metadata.namespace
    for policy in intent.policies:
        if policy.spec.action != "allow":
            continue
        if not intent.peers(policy.spec.from_, policy.metadata.namespace).admits(spiffe, ns):
            continue
        if any(s is svc and p.name == port.name for s, p in intent.targets(policy)):
            return
    i = next(
        i
        for i, ref in enumerate(route.spec.gateways)
        if intent.gateway(ref, route.metadata.namespace) is gw
    )
    yield _warning(
        route,
        ("spec", "gateways", i),
        f"Gateway {gw.ref} routes to {svc.ref}:{port.name}, which no AccessPolicy opens to it:"
        " under defaultPolicy deny every request will be refused",
        f"add an AccessPolicy in {svc.metadata.namespace} with from: [{{gateways: [{gw.ref}]}}]",
    )


def gateways(intent: Intent) -> Iterator[Diagnostic]:
    """Gateways: listener names and ports unique; no two gateways answering one host:port,
    whether they name it or a wildcard of theirs covers it."""
    claimed: dict[int, list[tuple[str, model.Gateway]]] = {}
    for gw in intent.gateways.values():
        egress = _for_egress(intent, gw)
        if (
            egress
            and not gw.spec.listeners
            and "service_type" in gw.spec.kubernetes.model_fields_set
        ):
            yield _error(
                gw,
                ("spec", "kubernetes", "serviceType"),
                f"Gateway {gw.ref} is an egress gateway: its Service is always a ClusterIP, "
                "reached only by the mesh's sidecars",
                "remove serviceType; it is for an ingress gateway's listeners",
            )
        if gw.spec.listeners and egress:
            # Its egress callers could name an ingress Route's host and reach the mesh as it.
            yield _error(
                gw,
                ("spec", "listeners"),
                f"Gateway {gw.ref} has listeners and ExternalServices leave through it: a "
                "gateway is for ingress or for egress, not both",
                "use a second Gateway for egress",
                key=True,
            )
        if not gw.spec.listeners and not egress:
            yield _error(
                gw,
                ("spec",),
                f"Gateway {gw.ref} has no listeners and no ExternalService leaves through it",
                "add spec.listeners, or name it in an ExternalService's egressGateway",
                key=True,
            )
        names: set[str] = set()
        ports: set[int] = set()
        for i, listener in enumerate(gw.spec.listeners):
            at: Loc = ("spec", "listeners", i)
            if listener.name in names:
                yield _error(gw, (*at, "name"), f"listener name {listener.name!r} is used twice")
            if listener.port in ports:
                yield _error(gw, (*at, "port"), f"port {listener.port} is used twice")
            names.add(listener.name)
            ports.add(listener.port)
            on_port = claimed.setdefault(listener.port, [])
            for j, host in enumerate(listener.hosts):
                for theirs, other in on_port:
                    if not (model.covers(theirs, host) or model.covers(host, theirs)):
                        continue
                    if theirs == host:
                        what = f"{host}:{listener.port} is already served by Gateway {other.ref}"
                    elif model.covers(theirs, host):
                        what = (
                            f"{host}:{listener.port} is already served by Gateway {other.ref} "
                            f"through its {theirs}"
                        )
                    else:
                        what = (
                            f"{host}:{listener.port} covers {theirs}, which Gateway {other.ref} "
                            "already serves on this port"
                        )
                    yield _error(
                        gw,
                        (*at, "hosts", j),
                        f"{what} ({position_of(other)})",
                        "give each host:port to one Gateway",
                    )
                    break
            on_port.extend((host, gw) for host in listener.hosts)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


def _plain_http_outside_loopback(url: str) -> bool:
    """An http:// URL is accepted only on loopback (tests, a local IdP); keys fetched in the
    clear elsewhere could be swapped by anyone on the path."""
    if not url.startswith("http://"):
        return False
    host = url.removeprefix("http://").split("/", 1)[0]
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return host not in LOOPBACK_HOSTS


def _gateway_authentication(
    intent: Intent,
    ra: model.RequestAuthentication,
    broken: Broken,
    claimed: dict[tuple[tuple[str, str], str], model.RequestAuthentication],
) -> Iterator[Diagnostic]:
    """A RequestAuthentication `to: gateways`: each gateway exists, has listeners to read
    tokens on, and is authenticated by this one RequestAuthentication only."""
    ns = ra.metadata.namespace
    for i, ref in enumerate(ra.spec.to.gateways or ()):
        gw = intent.gateway(ref, ns)
        at: Loc = ("spec", "to", "gateways", i)
        if gw is None:
            if ("Gateway", *_full(ref, ns).split("/")) not in broken:
                yield _error(
                    ra,
                    at,
                    f"unknown gateway {_full(ref, ns)!r}",
                    did_you_mean(_full(ref, ns), (f"{a}/{b}" for a, b in intent.gateways)),
                )
            continue
        if not gw.spec.listeners:
            yield _error(
                ra, at, f"Gateway {gw.ref} has no listeners: tokens are read on its listeners"
            )
        other = claimed.setdefault((gw.key, "gateway"), ra)
        if other is not ra:
            yield _error(
                ra,
                at,
                f"Gateway {gw.ref} is already authenticated by RequestAuthentication "
                f"{other.ref} ({position_of(other)})",
                "list both issuers in one RequestAuthentication",
            )


def authentications(intent: Intent, broken: Broken) -> Iterator[Diagnostic]:
    """RequestAuthentications: what they target exists and is HTTP, one per port, keys sound."""
    claimed: dict[tuple[tuple[str, str], str], model.RequestAuthentication] = {}
    for ra in intent.authentications:
        ns, spec = ra.metadata.namespace, ra.spec
        if spec.to.gateways is not None:
            yield from _gateway_authentication(intent, ra, broken, claimed)
        elif not intent.services_in(ns):
            yield _error(
                ra,
                ("metadata", "namespace"),
                f"namespace {ns!r} has no Services: this RequestAuthentication governs nothing",
                did_you_mean(ns, intent.namespaces),
            )
            continue
        for i, name in enumerate(spec.to.services or ()):
            if (ns, name) not in intent.services and ("Service", ns, name) not in broken:
                yield _error(
                    ra,
                    ("spec", "to", "services", i),
                    f"unknown service {ns}/{name}",
                    did_you_mean(name, (s.metadata.name for s in intent.services_in(ns))),
                )
        targeted = intent.targets(ra)
        for i, ref in enumerate(spec.to.ports or ()):
            found = [p for _, p in targeted if ref in (p.name, p.port)]
            if not found:
                yield _error(
                    ra, ("spec", "to", "ports", i), f"no targeted service has port {ref!r}"
                )
            elif not any(p.is_http for p in found):
                yield _error(
                    ra,
                    ("spec", "to", "ports", i),
                    f"port {ref!r} is tcp: tokens are read from HTTP requests only",
                )
        for svc, port in targeted:
            if not port.is_http:
                continue
            other = claimed.setdefault((svc.key, port.name), ra)
            if other is not ra:
                yield _error(
                    ra,
                    ("spec", "to"),
                    f"port {port.name} of {svc.ref} is already authenticated by "
                    f"RequestAuthentication {other.ref} ({position_of(other)})",
                    "list both issuers in one RequestAuthentication",
                    key=True,
                )
        seen: dict[str, int] = {}
        for i, issuer in enumerate(spec.issuers):
            at: Loc = ("spec", "issuers", i)
            if issuer.issuer in seen:
                yield _error(
                    ra,
                    (*at, "issuer"),
                    f"issuer {issuer.issuer!r} is already listed at "
                    f"spec.issuers[{seen[issuer.issuer]}]",
                )
            seen.setdefault(issuer.issuer, i)
            if "://" in issuer.issuer and not issuer.issuer.startswith(("https://", "http://")):
                yield _error(ra, (*at, "issuer"), f"issuer {issuer.issuer!r} is not an https URL")
            elif issuer.discovers and not issuer.issuer.startswith(("https://", "http://")):
                yield _error(
                    ra,
                    (*at, "issuer"),
                    f"issuer {issuer.issuer!r} gives no jwksUri, jwks or jwksFile, so its keys "
                    "are discovered from <issuer>/.well-known/openid-configuration: it must "
                    "be an https URL",
                    "give the keys with jwksUri, jwks or jwksFile",
                )
            for field, url in (("issuer", issuer.issuer), ("jwksUri", issuer.jwks_uri)):
                if url is not None and _plain_http_outside_loopback(url):
                    yield _error(
                        ra,
                        (*at, field),
                        f"{url!r} is plain http: an issuer and its keys must be https "
                        "(http is accepted on loopback only)",
                    )
            if issuer.jwks is not None:
                try:
                    _native.check_jwks(json.dumps(issuer.jwks))
                except ValueError as e:
                    yield _error(ra, (*at, "jwks"), f"invalid JWKS: {e}")
