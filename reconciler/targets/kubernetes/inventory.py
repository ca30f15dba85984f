"""The inventory: ConfigMap `weft-inventory` in the system namespace, the refs of every object
Weft created. Pruning deletes only what carries Weft's label AND is recorded here, so an object
someone labelled by hand, or another installation's, is never deleted."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterable

from reconciler.targets.kubernetes import objects
from reconciler.targets.kubernetes.api import Api


def read(api: Api, namespace: str) -> set[str]:
    cm = api.get("ConfigMap", namespace, objects.INVENTORY)
    if cm is None:
        return set()
    packed = (cm.get("binaryData") or {}).get("objects.gz")
    text = (
        gzip.decompress(base64.b64decode(packed)).decode()
        if packed
        else cm.get("data", {}).get("objects", "")
    )
    return {line for line in text.splitlines() if line}


def write(api: Api, namespace: str, refs: Iterable[str]) -> None:
    """One ref per line, gzipped: a ConfigMap holds at most 1 MiB, which plain text would
    reach at a few thousand services; compressed, refs (alike but for names) take ~10x less."""
    text = "".join(f"{r}\n" for r in sorted(refs)).encode()
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": objects.INVENTORY,
                "namespace": namespace,
                "labels": objects.labels("inventory"),
            },
            "binaryData": {"objects.gz": base64.b64encode(gzip.compress(text, mtime=0)).decode()},
        },
        force=True,
    )
