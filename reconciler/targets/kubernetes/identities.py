"""Identity storage on the cluster: the identity store's Secrets (the CA in the system
namespace, each workload's certificate beside it), read and written through the API as
`secretstore.SecretBackend`; and their issuance before a revision's objects are applied.

This module moves Secrets as opaque data; only `reconciler.identity` reads what is in them."""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from typing import Any

from reconciler import identity
from reconciler.compiler import DesiredState
from reconciler.identity import secretstore
from reconciler.targets.kubernetes.api import Api, ApiError, Object


def ensure(
    store: secretstore.SecretStore,
    desired: DesiredState,
    now: datetime.datetime,
    ca_secret: tuple[str, str] | None,
) -> None:
    """A CA (on first start: the user's in `ca_secret`, else generated) and a valid
    certificate for every identity `desired` names; renews what is due."""
    if store.read_state() is None:
        provided = store.provided_ca(*ca_secret, now) if ca_secret else None
        identity.ca.init(store, desired.trust_domain, now, provided=provided)
    identity.ensure(
        store,
        desired.identities,
        trust_domain=desired.trust_domain,
        lifetime=datetime.timedelta(milliseconds=desired.certificate_lifetime_ms),
        now=now,
    )


class SecretBackend:
    """`secretstore.SecretBackend` over the API: whole Secrets, applied by `weft`."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def read_secret(self, namespace: str, name: str) -> secretstore.SecretData | None:
        obj = self.api.get("Secret", namespace, name)
        return None if obj is None else _decode(obj)

    def read_versioned(
        self, namespace: str, name: str
    ) -> tuple[secretstore.SecretData, str] | None:
        obj = self.api.get("Secret", namespace, name)
        return None if obj is None else (_decode(obj), obj["metadata"]["resourceVersion"])

    def list_secrets(self, selector: str) -> dict[tuple[str, str], secretstore.SecretData]:
        return {
            (o["metadata"]["namespace"], o["metadata"]["name"]): _decode(o)
            for o in self.api.list("Secret", selector=selector)
        }

    def write_secret(
        self,
        namespace: str,
        name: str,
        data: secretstore.SecretData,
        labels: Mapping[str, str],
        secret_type: str,
        *,
        resource_version: str | None = None,
    ) -> str:
        if resource_version is None:
            self._refuse_namesake(namespace, name)
        meta: Object = {"name": name, "namespace": namespace, "labels": dict(labels)}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version  # server-side apply's precondition
        try:
            written = self.api.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": secret_type,
                    "metadata": meta,
                    "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
                },
                force=True,  # these Secrets are the identity store's alone
            )
        except ApiError as e:
            if e.conflict and resource_version is not None:
                raise secretstore.ConcurrentChangeError(
                    f"Secret {namespace}/{name} changed while this step ran (another weft);"
                    " nothing was recorded, and the step runs again"
                ) from None
            raise
        return str(written["metadata"]["resourceVersion"])

    def _refuse_namesake(self, namespace: str, name: str) -> Object | None:
        live = self.api.get("Secret", namespace, name)
        if (
            live is not None
            and (live["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") != "weft"
        ):
            raise identity.IdentityError(
                f"Secret {namespace}/{name} exists and is not Weft's (no"
                " app.kubernetes.io/managed-by=weft label); Weft never takes over a Secret"
            )
        return live

    def delete_secret(self, namespace: str, name: str) -> None:
        live = self._refuse_namesake(namespace, name)
        if live is not None:
            self.api.delete("Secret", namespace, name, uid=live["metadata"]["uid"])


def _decode(obj: Mapping[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
