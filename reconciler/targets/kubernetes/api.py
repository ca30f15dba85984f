"""A small, typed REST layer over the official kubernetes client, for the kinds Weft manages.

The generated model classes are bypassed on purpose: listing a thousand ConfigMaps through them
costs seconds of deserialisation, while the reconciler only needs dicts to compare. Requests still
go through `kubernetes.client.ApiClient`, so authentication (kubeconfig, in-cluster token
refresh), TLS and connection pooling are the official client's.

    api = Api.from_kubeconfig(path)          # or Api.in_cluster()
    api.apply(obj, manager="weft")           # server-side apply
    api.list("ConfigMap", selector="app.kubernetes.io/managed-by=weft")
"""

from __future__ import annotations

import dataclasses
import ssl
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig

Object = dict[str, Any]

FIELD_MANAGER = "weft"
TIMEOUT = (5.0, 30.0)  # connect, read: a stopped API server must fail a reconcile, not hang it


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    api_version: str
    plural: str
    namespaced: bool = True

    def base(self) -> str:
        return (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else (f"/apis/{self.api_version}")
        )


KINDS: dict[str, Kind] = {
    "Namespace": Kind("v1", "namespaces", namespaced=False),
    "ConfigMap": Kind("v1", "configmaps"),
    "PodTemplate": Kind("v1", "podtemplates"),
    "Secret": Kind("v1", "secrets"),
    "Service": Kind("v1", "services"),
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "Event": Kind("v1", "events"),
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
    "Deployment": Kind("apps/v1", "deployments"),
    "StatefulSet": Kind("apps/v1", "statefulsets"),
    "DaemonSet": Kind("apps/v1", "daemonsets"),
    "CronJob": Kind("batch/v1", "cronjobs"),
    "Lease": Kind("coordination.k8s.io/v1", "leases"),
}


class ApiError(Exception):
    """A non-2xx answer, with the API's own Status message."""

    def __init__(self, method: str, path: str, status: int, body: Mapping[str, Any]) -> None:
        self.status = status
        self.reason = str(body.get("reason", ""))
        self.message = str(body.get("message", "")) or f"HTTP {status}"
        self.causes: list[Mapping[str, Any]] = list((body.get("details") or {}).get("causes", []))
        super().__init__(f"{method} {path}: {self.message}")

    @property
    def conflict(self) -> bool:
        return self.status == 409


class UnreachableError(Exception):
    """The API server did not answer (connection refused, timeout, a failed TLS handshake)."""


class FencedError(Exception):
    """A write refused before it was sent: this replica no longer holds the leader Lease."""


def path_of(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    k = KINDS[kind]
    path = k.base()
    if k.namespaced and namespace:
        path += f"/namespaces/{urllib.parse.quote(namespace)}"
    path += f"/{k.plural}"
    if name:
        path += f"/{urllib.parse.quote(name)}"
    return path


def ref_of(obj: Mapping[str, Any]) -> str:
    """`Kind/namespace/name` (or `Kind/name`): how plans, inventories and logs name an object."""
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{obj['kind']}/{ns}/{meta['name']}" if ns else f"{obj['kind']}/{meta['name']}"


def split_ref(ref: str) -> tuple[str, str | None, str]:
    parts = ref.split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (parts[0], None, parts[1])


class Api:
    def __init__(
        self, api_client: kclient.ApiClient, timeout: tuple[float, float] = TIMEOUT
    ) -> None:
        self.client = api_client
        self.timeout = timeout
        # Asked before every write: False stops it (see leader.LeaderElector.holds). A replica
        # that lost the Lease mid-reconcile must not keep writing beside the new leader.
        self.fence: Callable[[], bool] | None = None

    def with_timeout(self, timeout: tuple[float, float]) -> Api:
        """The same connection settings, another timeout (leader election's requests must
        fail well inside a renew deadline)."""
        return Api(self.client, timeout)

    @classmethod
    def from_kubeconfig(cls, path: str | Path | None = None, context: str | None = None) -> Api:
        cfg = kclient.Configuration()
        kconfig.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(path) if path else None,
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )
        return cls(_client(cfg))

    @classmethod
    def in_cluster(cls) -> Api:
        cfg = kclient.Configuration()
        kconfig.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cls(_client(cfg))

    @classmethod
    def with_token(cls, host: str, token: str, ca_file: str | None) -> Api:
        """For tests and tools that hold a bearer token (a ServiceAccount's, say)."""
        cfg = kclient.Configuration(host=host, api_key={"BearerToken": token})
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        if ca_file:
            cfg.ssl_ca_cert = ca_file
        return cls(_client(cfg))

    @property
    def host(self) -> str:
        return str(self.client.configuration.host)

    # ------------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Object:
        if method != "GET" and self.fence is not None and not self.fence():
            raise FencedError(f"{method} {path}: this replica no longer leads; not writing")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, hdrs, _, _ = self.client.param_serialize(
            method,
            path,
            query_params=query or None,
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        try:
            # A dict body is sent as JSON, which the apply-patch+yaml content type accepts too.
            resp = self.client.call_api(m, url, hdrs, body, _request_timeout=self.timeout)
            data = resp.read()  # type: ignore[no-untyped-call]
        except kclient.ApiException as e:
            if not e.status:
                raise UnreachableError(f"{method} {path}: {e.reason}") from None
            raise ApiError(method, path, int(e.status), _json(e.body)) from None
        except ssl.SSLError as e:
            # Usually configuration (a wrong CA, an expired certificate), not an outage: say so.
            raise UnreachableError(
                f"{method} {path}: TLS with the API server failed: {e}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise UnreachableError(f"{method} {path}: {type(e).__name__}: {e}") from None
        if resp.status >= 400:
            raise ApiError(method, path, resp.status, _json(data))
        return _json(data)

    def get(self, kind: str, namespace: str | None, name: str) -> Object | None:
        try:
            return self.request("GET", path_of(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(
        self, kind: str, *, namespace: str | None = None, selector: str | None = None
    ) -> Iterator[Object]:
        """Every object of a kind (across namespaces unless one is given), paged."""
        token = ""
        while True:
            query = [("limit", "500")]
            if selector:
                query.append(("labelSelector", selector))
            if token:
                query.append(("continue", token))
            page = self.request("GET", path_of(kind, namespace), query=query)
            for item in page.get("items", []):
                # Items of a list carry neither kind nor apiVersion; restore them.
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", KINDS[kind].api_version)
                yield item
            token = page.get("metadata", {}).get("continue", "")
            if not token:
                return

    def apply(
        self,
        obj: Mapping[str, Any],
        *,
        force: bool = False,
        dry_run: bool = False,
        manager: str = FIELD_MANAGER,
    ) -> Object:
        """Server-side apply, as field manager `weft` unless told otherwise."""
        meta = obj["metadata"]
        query = [("fieldManager", manager)]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request(
            "PATCH",
            path_of(obj["kind"], meta.get("namespace"), meta["name"]),
            query=query,
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: Mapping[str, Any]) -> Object:
        meta = obj["metadata"]
        return self.request("POST", path_of(obj["kind"], meta.get("namespace")), body=obj)

    def replace(self, obj: Mapping[str, Any]) -> Object:
        """PUT with the object's resourceVersion: optimistic concurrency (leases)."""
        meta = obj["metadata"]
        return self.request(
            "PUT", path_of(obj["kind"], meta.get("namespace"), meta["name"]), body=obj
        )

    def delete(
        self, kind: str, namespace: str | None, name: str, *, uid: str | None = None
    ) -> bool:
        """Delete; with `uid`, only that very object (a precondition), never a namesake that
        replaced it. Returns False when it was already gone."""
        body: Object = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", path_of(kind, namespace, name), body=body)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True


def _client(cfg: kclient.Configuration) -> kclient.ApiClient:
    cfg.retries = 0  # the loop retries with back-off; urllib3 retries would hide an outage
    return kclient.ApiClient(cfg)


def _json(data: bytes | str | None) -> Object:
    if not data:
        return {}
    try:
        # orjson: listing a thousand Weft objects is megabytes of JSON, and decoding it with the
        # standard library was the largest part of a no-op reconcile.
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        return {"message": text.strip()[:500]}
    return value if isinstance(value, dict) else {"items": value}
