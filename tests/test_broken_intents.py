"""A corpus of broken intents: every problem Weft must refuse, and exactly what it says about it.

Each case is a directory under `tests/corpus/` holding a small, complete repository (a mesh.yaml
plus whatever the case needs) with exactly one deliberate problem, named by the comment on the
first line of every file. The table below lists, per case, the full list of diagnostics expected:
file, line, column, severity, message and hint, compared with equality, so a missing diagnostic, an
extra one (a cascade), a moved position or a reworded message all fail. The last tests run the
`weft validate` command line over the same corpus.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from reconciler import cli, intent
from reconciler.intent import Diagnostic, Severity

CORPUS = Path(__file__).parent / "corpus"

ERROR = Severity.ERROR
WARNING = Severity.WARNING

NOT_SUPPORTED = (
    " is not supported yet: the data plane cannot enforce it, "
    "so Weft refuses it rather than ignore it"
)
DUPLICATE_KEY_HINT = "YAML would silently keep only the last; remove one"
SUMMARY = re.compile(r"workdir@sha256:[0-9a-f]{64}: (?P<rest>.*)")


class Expected(NamedTuple):
    """One diagnostic as a plain tuple: (file, line, column, severity, message, hint)."""

    file: str
    line: int
    column: int
    severity: Severity
    message: str
    hint: str | None = None


def observed(d: Diagnostic) -> Expected:
    return Expected(
        d.position.file, d.position.line, d.position.column, d.severity, d.message, d.hint
    )


def check(case_dir: Path) -> tuple[intent.Intent | None, list[Expected]]:
    mesh, diagnostics = intent.check(intent.files.from_directory(case_dir))
    return mesh, [observed(d) for d in diagnostics]


def error(where: str, message: str, hint: str | None = None) -> Expected:
    """An expected error at `where`, written `file:line:column` as `weft validate` prints it."""
    file, line, column = where.rsplit(":", 2)
    return Expected(file, int(line), int(column), ERROR, message, hint)


def warning(where: str, message: str, hint: str | None = None) -> Expected:
    file, line, column = where.rsplit(":", 2)
    return Expected(file, int(line), int(column), WARNING, message, hint)


def case(name: str, *expected: Expected, marks: Any = ()) -> Any:
    """A table row: the case directory and every diagnostic it must produce, in order."""
    return pytest.param(CORPUS / name, list(expected), id=name, marks=marks)


CASES = [
    case("clean"),
    # ------------------------------------------------------------ YAML and hostile input
    case(
        "yaml-syntax-error",
        error(
            "services.yaml:5:12",
            "YAML syntax: mapping values are not allowed in this context",
        ),
    ),
    case(
        "duplicate-yaml-key",
        error(
            "services.yaml:11:7",
            "duplicate key 'port' (first defined at line 10, column 7)",
            DUPLICATE_KEY_HINT,
        ),
    ),
    # The cause alone: no "unknown namespace 'web'" or "unknown service" for what the refused
    # document declares, and the file's other document (shop/api) still loads.
    case(
        "duplicate-key-hides-a-namespace",
        error(
            "services.yaml:11:7",
            "duplicate key 'port' (first defined at line 10, column 7)",
            DUPLICATE_KEY_HINT,
        ),
    ),
    # A syntax error leaves the rest of its file unread: nothing it might declare is "unknown".
    case(
        "syntax-error-hides-references",
        error("services.yaml:9:1", "YAML syntax: did not find expected ',' or ']'"),
    ),
    case(
        "tab-indentation",
        error(
            "services.yaml:10:1",
            "YAML syntax: a tab character indents field 'port'; YAML indentation must be spaces",
            "replace the tab with spaces",
        ),
    ),
    case(
        "merge-key",
        error(
            "services.yaml:12:7",
            "YAML merge keys (<<) are not supported in intent",
            "write the fields out; merges hide what a policy really says",
        ),
    ),
    case(
        "alias-bomb",
        error(
            "bomb.yaml:8:4",
            "document expands to more than 2000000 values (an alias bomb?)",
            "intent has no need for YAML anchors that deep",
        ),
    ),
    case(
        "non-mapping-document",
        error("services.yaml:2:1", "a document must be a mapping with apiVersion and kind"),
    ),
    # ------------------------------------------------------------ envelope and schema
    case(
        "unknown-kind",
        error(
            "services.yaml:3:7",
            "unknown kind 'Servce'; Weft kinds are Mesh, Service, AccessPolicy, Route, "
            "ExternalService, RequestAuthentication, Gateway",
            "did you mean 'Service'?",
        ),
    ),
    case(
        "wrong-api-version",
        error(
            "services.yaml:2:13",
            "apiVersion is 'weft.dev/v1'; every document in a Weft repository must be "
            "weft.dev/v1alpha1",
            "did you mean 'weft.dev/v1alpha1'?",
        ),
    ),
    case(
        "unknown-field",
        error(
            "services.yaml:8:3",
            "unknown field 'spec.serviceAcount'",
            "did you mean 'serviceAccount'?",
        ),
    ),
    case(
        "port-as-string",
        error(
            "services.yaml:10:13",
            "spec.ports[0].port: expected an integer, got a string '8080'",
        ),
    ),
    case(
        "duration-without-unit",
        error(
            "routes.yaml:12:16",
            "spec.rules[0].timeout: a duration is a string with a unit, like '500ms' or '2s' "
            "(got 5)",
        ),
    ),
    case(
        "duration-bad-unit",
        error(
            "routes.yaml:12:16",
            "spec.rules[0].timeout: '2x' is not a duration; write it like '500ms', '2s', '1m' "
            "or '1h30m'",
        ),
    ),
    case(
        "port-out-of-range",
        error(
            "services.yaml:10:13",
            "spec.ports[0].port: 70000 is out of range (must be at most 65535)",
        ),
    ),
    case(
        "uppercase-name",
        error(
            "services.yaml:5:9",
            "metadata.name: 'Api' is not a valid name (lowercase letters, digits and '-', "
            "at most 63 characters)",
        ),
    ),
    # ------------------------------------------------------------ the Mesh document
    case(
        "two-meshes",
        error(
            "other-mesh.yaml:3:7",
            "more than one Mesh (the first is at mesh.yaml:2:1); a repository has exactly one",
        ),
    ),
    case(
        "no-mesh",
        error(
            "<repository>:1:1",
            "no Mesh document: a Weft repository needs exactly one",
            "copy mesh.yaml from mesh-repo-template",
        ),
    ),
    case(
        "mesh-field-typo",
        error(
            "mesh.yaml:8:9",
            "spec.mtls: must be one of STRICT, PERMISSIVE (got a string 'STRIC')",
            "did you mean 'STRICT'?",
        ),
    ),
    # ------------------------------------------------------------ across documents
    case(
        "duplicate-service",
        error(
            "services-2.yaml:5:9",
            "duplicate Service shop/api (first defined at services-1.yaml:2:1)",
        ),
    ),
    case(
        "job-selectors-overlap",
        error(
            "services.yaml:24:3",
            "the pods of a Job may be selected by this Service and by Service shop/export "
            "(services.yaml:2:1); a Job's pods can belong to one meshed Service only",
            "give one podSelector a label the other has with another value, "
            "or name each Service's Job (workload.name)",
        ),
    ),
    case(
        "unknown-service-in-policy",
        error(
            "policies.yaml:11:18",
            "unknown service 'web/frontnd'",
            "did you mean 'web/frontend'?",
        ),
    ),
    case(
        "unknown-namespace-in-policy",
        error(
            "policies.yaml:9:20",
            "unknown namespace 'webb': no Service is declared in it",
            "did you mean 'web'?",
        ),
    ),
    case(
        "identity-outside-trust-domain",
        error(
            "policies.yaml:9:20",
            "identity 'spiffe://cluster.local/ns/web/sa/frontend' is outside the trust domain "
            "'weft.local': no certificate Weft issues can match it",
        ),
    ),
    case(
        "allow-shadowed-by-deny",
        error(
            "policies.yaml:9:5",
            "this allow can never match: deny policy shop/deny-web (policies.yaml:11:1) blocks "
            "every caller it admits",
        ),
    ),
    case(
        "when-on-tcp-port",
        error(
            "policies.yaml:10:3",
            "`when` conditions are HTTP-only and can never match tcp port postgres of shop/db",
            "narrow spec.to.ports to HTTP ports",
        ),
    ),
    case(
        "external-address-not-an-ip",
        error(
            "external.yaml:7:27",
            "spec.addresses[1]: 'api2.partner.example' is not an IPv4 or IPv6 address",
        ),
    ),
    # ------------------------------------------------------------ egress gateways
    case(
        "egress-gateway-unknown",
        error("egress.yaml:9:18", "unknown gateway 'shop/egress'"),
    ),
    case(
        "egress-gateway-tcp-port",
        error(
            "egress.yaml:12:34",
            "port 5432 is tcp: an egress gateway carries protocol: http (with tlsOrigination "
            "for https outside)",
        ),
    ),
    case(
        "egress-gateway-shared-port",
        error(
            "egress.yaml:21:18",
            "port 80 of Gateway shop/egress already carries ExternalService shop/partner "
            "(egress.yaml:7:1)",
            "give one of them another port",
        ),
    ),
    case(
        "egress-gateway-mixed-callers",
        error(
            "egress.yaml:22:16",
            "Gateway shop/egress also carries ExternalService shop/partner (egress.yaml:7:1), "
            "which admits other callers: the gateway cannot keep them apart",
            "give them the same allowedFrom, or separate egress gateways",
        ),
    ),
    case(
        "gateway-ingress-and-egress",
        error(
            "egress.yaml:6:3",
            "Gateway shop/edge has listeners and ExternalServices leave through it: a gateway "
            "is for ingress or for egress, not both",
            "use a second Gateway for egress",
        ),
    ),
    case(
        "gateway-without-listeners",
        error(
            "egress.yaml:5:1",
            "Gateway shop/egress has no listeners and no ExternalService leaves through it",
            "add spec.listeners, or name it in an ExternalService's egressGateway",
        ),
    ),
    # ------------------------------------------------------------ end-user authentication
    case(
        "jwks-uri-not-https",
        error(
            "authn.yaml:10:16",
            "'http://idp.example/keys' is plain http: an issuer and its keys must be https "
            "(http is accepted on loopback only)",
        ),
    ),
    case(
        "issuer-not-https",
        error(
            "authn.yaml:9:15",
            "'http://idp.example' is plain http: an issuer and its keys must be https "
            "(http is accepted on loopback only)",
        ),
    ),
    case(
        "issuer-not-a-url-for-discovery",
        error(
            "authn.yaml:9:15",
            "issuer 'idp.example' gives no jwksUri, jwks or jwksFile, so its keys are discovered "
            "from <issuer>/.well-known/openid-configuration: it must be an https URL",
            "give the keys with jwksUri, jwks or jwksFile",
        ),
    ),
    case(
        "request-authentication-unknown-gateway",
        error("authn.yaml:8:19", "unknown gateway 'shop/public'"),
    ),
    case(
        "jwks-symmetric-key",
        error(
            "authn.yaml:11:9",
            "invalid JWKS: key shared: symmetric (oct) keys are refused: a shared secret in a "
            "sidecar could sign tokens",
        ),
    ),
    case(
        "claims-without-request-authentication",
        error(
            "policies.yaml:10:3",
            "end-user conditions can never match on port http of shop/api: no "
            "RequestAuthentication verifies tokens there",
            "add a RequestAuthentication for it, or narrow spec.to",
        ),
    ),
    case(
        "two-request-authentications",
        error(
            "authn.yaml:17:3",
            "port http of shop/api is already authenticated by RequestAuthentication "
            "shop/customers (authn.yaml:2:1)",
            "list both issuers in one RequestAuthentication",
        ),
    ),
    # ------------------------------------------------------------ routes
    case(
        "unknown-subset",
        error(
            "routes.yaml:13:19",
            "shop/api has no subset 'canry'",
            "did you mean 'canary'?",
        ),
    ),
    case(
        "weights-not-100",
        error("routes.yaml:11:9", "backend weights sum to 110; they must sum to 100"),
    ),
    case(
        "two-routes-one-host",
        error(
            "routes.yaml:19:9",
            "Route shop/api-a (routes.yaml:2:1) already routes shop/api port http: two Routes "
            "for one host and port leave the order of their rules undefined",
            "merge the rules into one Route",
        ),
    ),
    case(
        "rule-after-catch-all",
        error(
            "routes.yaml:12:7",
            "spec.rules[1] can never match: spec.rules[0] above matches every request",
            "put the catch-all rule last",
        ),
    ),
    case(
        "duplicate-match",
        error(
            "routes.yaml:15:11",
            "this match can never apply: spec.rules[0] has the same match above",
        ),
    ),
    case(
        "path-not-normal",
        error(
            "policies.yaml:12:13",
            "path '//admin/*' is not in normal form; requests are normalized before they are "
            "matched, so it can never match",
            "write '/admin/*' (docs/intent.md, Paths)",
        ),
        error(
            "policies.yaml:12:35",
            "path '/a%zz' can never match a request: malformed percent-encoding at byte 2",
        ),
        error(
            "policies.yaml:12:44",
            "path '/v1/./items' is not in normal form; requests are normalized before they are "
            "matched, so it can never match",
            "write '/v1/items' (docs/intent.md, Paths)",
        ),
        error(
            "routes.yaml:12:21",
            "path '/v2/../v3' is not in normal form; requests are normalized before they are "
            "matched, so it can never match",
            "write '/v3' (docs/intent.md, Paths)",
        ),
    ),
    case(
        "route-regex-look-ahead",
        error(
            "routes.yaml:12:20",
            "invalid regex '^/v(?=2)': look-around, including look-ahead and look-behind, "
            "is not supported",
        ),
    ),
    case(
        "per-try-timeout-not-shorter",
        error(
            "routes.yaml:15:24",
            "perTryTimeout is not shorter than the rule's timeout: a retry can never happen",
        ),
    ),
    case(
        "external-retries-out-of-place",
        error(
            "external.yaml:10:7",
            "spec.ports[0]: timeout and retries apply to HTTP requests the sidecar forwards; "
            "they need protocol: http",
        ),
    ),
    case(
        "external-per-try-timeout-not-shorter",
        error(
            "external.yaml:15:24",
            "perTryTimeout is not shorter than the port's timeout: a retry can never happen",
        ),
    ),
    # ------------------------------------------------------------ resilience
    case(
        "mirror-to-own-destination",
        error(
            "routes.yaml:12:7",
            "this mirror sends copies to subset 'stable' of shop/api, where the rule sends "
            "every request already: a mirror must be another destination",
            "mirror to another subset or service",
        ),
    ),
    case(
        "hash-key-on-tcp-port",
        error(
            "routes.yaml:9:9",
            "port 'postgres' of shop/db is tcp; Routes apply to HTTP ports (a consistentHash on "
            "a tcp port has no requests to hash)",
        ),
    ),
    case(
        "mirror-unknown-service",
        error("routes.yaml:13:18", "unknown service 'shop/api-shadw'", "did you mean 'shop/api'?"),
    ),
    case(
        "fault-percent-out-of-range",
        error(
            "routes.yaml:15:20",
            "spec.rules[0].fault.abort.percent: 150 is out of range (must be at most 100.0)",
        ),
    ),
    case(
        "grpc-abort-on-http-port",
        error(
            "routes.yaml:14:23",
            "grpcStatus aborts gRPC calls, but port http of shop/api is http",
            "use httpStatus, or set spec.port to a grpc port",
        ),
    ),
    case(
        "fault-on-tcp-port",
        error(
            "routes.yaml:9:9",
            "port 'postgres' of shop/db is tcp; Routes apply to HTTP ports (a fault on a tcp "
            "port has no requests to delay or abort)",
        ),
    ),
    # ------------------------------------------------------------ refused, not ignored
    case(
        "two-gateways-one-host",
        error(
            "gateway.yaml:23:32",
            "shop.example.com:443 is already served by Gateway shop/public (gateway.yaml:2:1)",
            "give each host:port to one Gateway",
        ),
    ),
    case(
        "gateway-wildcard-overlap",
        error(
            "gateway.yaml:23:34",
            "*.example.com:443 covers shop.example.com, which Gateway shop/public already "
            "serves on this port (gateway.yaml:2:1)",
            "give each host:port to one Gateway",
        ),
    ),
    case(
        "egress-gateway-service-type",
        error(
            "egress.yaml:6:29",
            "Gateway shop/egress is an egress gateway: its Service is always a ClusterIP, "
            "reached only by the mesh's sidecars",
            "remove serviceType; it is for an ingress gateway's listeners",
        ),
    ),
    case(
        "route-unknown-gateway",
        error("routes.yaml:21:14", "unknown gateway 'shop/publik'", "did you mean 'shop/public'?"),
    ),
    case(
        "gateway-https-without-certificate",
        error(
            "gateway.yaml:14:7", "spec.listeners[1]: an HTTPS listener needs tls: its certificate"
        ),
    ),
    # ------------------------------------------------------------ several at once
    case(
        "several-errors",
        error(
            "policies.yaml:11:20",
            "unknown namespace 'shopp': no Service is declared in it",
            "did you mean 'shop'?",
        ),
        error(
            "services.yaml:10:13",
            "spec.ports[0].port: 80800 is out of range (must be at most 65535)",
        ),
        error(
            "services.yaml:18:3",
            "unknown field 'spec.serviceAcount'",
            "did you mean 'serviceAccount'?",
        ),
    ),
    # ------------------------------------------------------------ warnings: still loads
    case(
        "warning-shared-service-account",
        warning(
            "services.yaml:19:19",
            "service account shop/shared is shared with Service shop/api: both get one identity, "
            "and policies cannot tell them apart",
            "give each Service its own serviceAccount",
        ),
    ),
    case(
        "warning-gateway-route-unopened",
        warning(
            "routes.yaml:21:14",
            "Gateway shop/public routes to shop/api:http, which no AccessPolicy opens to it: "
            "under defaultPolicy deny every request will be refused",
            "add an AccessPolicy in shop with from: [{gateways: [shop/public]}]",
        ),
    ),
    case(
        "warning-external-without-allowed-from",
        warning(
            "external.yaml:5:9",
            "no source may use ExternalService shop/payments",
            "add spec.allowedFrom",
        ),
    ),
    case(
        "warning-egress-gateway-bypassed",
        warning(
            "egress.yaml:14:18",
            "shop/api also calls ExternalService shop/payments directly, so its pods may leave "
            "the cluster: NetworkPolicy cannot hold it to the gateway",
            "give shop/payments an egressGateway too",
        ),
    ),
]


@pytest.mark.parametrize(("case_dir", "expected"), CASES)
def test_broken_intent(case_dir: Path, expected: list[Expected]) -> None:
    mesh, diagnostics = check(case_dir)
    assert diagnostics == expected
    # Errors refuse the revision; warnings alone never do.
    refused = any(d.severity is ERROR for d in expected)
    assert (mesh is None) == refused


def test_alias_bomb_is_refused_without_expanding_it() -> None:
    # A walk of the expanded document would visit 10^9 values and take minutes.
    start = time.perf_counter()
    mesh, diagnostics = check(CORPUS / "alias-bomb")
    elapsed = time.perf_counter() - start
    assert mesh is None
    assert [d.message for d in diagnostics] == [
        "document expands to more than 2000000 values (an alias bomb?)"
    ]
    assert elapsed < 2.0


def test_file_over_4_mib_is_refused_unread(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(CORPUS / "clean", repo)
    limit = 4 * 1024 * 1024
    header = b"# Broken: this file is one byte over the 4 MiB limit.\n"
    (repo / "big.yaml").write_bytes(header + b"#" * (limit + 1 - len(header) - 1) + b"\n")
    assert (repo / "big.yaml").stat().st_size == limit + 1

    mesh, diagnostics = check(repo)

    assert diagnostics == [
        Expected(
            "big.yaml",
            1,
            1,
            ERROR,
            "file is 4194305 bytes; intent files are limited to 4194304 bytes",
            "split it into several files",
        )
    ]
    assert mesh is None


def test_every_case_directory_is_in_the_table() -> None:
    on_disk = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    in_table = {p.id for p in CASES}
    assert on_disk == in_table


def test_every_fixture_file_says_what_is_broken() -> None:
    files = sorted(CORPUS.rglob("*.y*ml"))
    assert files
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# "), f"{path.relative_to(CORPUS)} must start with a comment"


# ---------------------------------------------------------------- the command line


def test_cli_prints_every_error_under_the_directory_argument(
    capsys: pytest.CaptureFixture[str],
) -> None:
    case_dir = CORPUS / "several-errors"

    code = cli.main(["validate", str(case_dir)])

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    *lines, summary = err.splitlines()
    assert lines == [
        f"{case_dir}/policies.yaml:11:20: error: unknown namespace 'shopp': no Service is "
        "declared in it (hint: did you mean 'shop'?)",
        f"{case_dir}/services.yaml:10:13: error: spec.ports[0].port: 80800 is out of range "
        "(must be at most 65535)",
        f"{case_dir}/services.yaml:18:3: error: unknown field 'spec.serviceAcount' (hint: did "
        "you mean 'serviceAccount'?)",
    ]
    match = SUMMARY.fullmatch(summary)
    assert match is not None, summary
    assert match["rest"] == "3 error(s), 0 warning(s)"


def test_cli_accepts_a_clean_repository(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["validate", str(CORPUS / "clean")])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    match = SUMMARY.fullmatch(out.strip())
    assert match is not None, out
    assert match["rest"] == (
        "2 files, 1 services, 0 policies, 0 routes, 0 external services: valid"
    )


def test_cli_warnings_pass_unless_strict(capsys: pytest.CaptureFixture[str]) -> None:
    case_dir = CORPUS / "warning-external-without-allowed-from"
    warning = (
        f"{case_dir}/external.yaml:5:9: warning: no source may use ExternalService "
        "shop/payments (hint: add spec.allowedFrom)"
    )

    lenient = cli.main(["validate", str(case_dir)])
    out, err = capsys.readouterr()
    assert lenient == 0
    assert err.splitlines() == [warning]
    assert out.rstrip().endswith(": valid with 1 warning(s)")

    strict = cli.main(["validate", "--strict", str(case_dir)])
    out, err = capsys.readouterr()
    assert strict == 1
    assert err.splitlines() == [warning]
    assert out.rstrip().endswith(": warnings refused (--strict)")


def test_cli_roots_positions_inside_messages_like_the_diagnostics_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    case_dir = CORPUS / "duplicate-service"

    assert cli.main(["validate", str(case_dir)]) == 1

    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (
        f"{case_dir}/services-2.yaml:5:9: error: duplicate Service shop/api "
        f"(first defined at {case_dir}/services-1.yaml:2:1)"
    )
