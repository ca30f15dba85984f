"""Does a live object already hold what Weft would apply? A structural subset test.

Server-side apply only sets the fields it is given, and the API server adds defaults and other
managers' fields around them, so "in sync" means every field of the applied body is present in
the live object with the same value. Lists of objects are matched by their merge key (`name` for
containers, volumes, env and ports that have one; otherwise the port number and its protocol,
TCP unless given, since UDP and TCP 53 are two items), as the API merges them, not by position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_MERGE_KEYS = ("name", "containerPort", "port")


def differences(desired: Any, live: Any, path: str = "") -> list[str]:
    """Paths (`.spec.template.spec.initContainers[weft-sidecar].image`) where `live` lacks or
    contradicts `desired`; empty when `live` already holds every desired field."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return [path or "."]
        found: list[str] = []
        for key, value in desired.items():
            sub = f"{path}.{key}"
            if key not in live:
                if value not in (None, {}, []):
                    found.append(sub)
                continue
            found += differences(value, live[key], sub)
        return found
    if isinstance(desired, Sequence) and not isinstance(desired, str | bytes):
        if not isinstance(live, Sequence) or isinstance(live, str | bytes):
            return [path]
        key = _merge_key(desired)
        if key is None:
            if len(desired) != len(live):
                return [path]
            found = []
            for i, (d, lv) in enumerate(zip(desired, live, strict=True)):
                found += differences(d, lv, f"{path}[{i}]")
            return found
        by_key = {_key_of(item, key): item for item in live if isinstance(item, Mapping)}
        found = []
        for item in desired:
            name = _key_of(item, key)
            if name not in by_key:
                found.append(f"{path}[{name}]")
            else:
                found += differences(item, by_key[name], f"{path}[{name}]")
        return found
    if _same_scalar(desired, live):
        return []
    return [path or "."]


def _merge_key(items: Sequence[Any]) -> str | None:
    if not items or not all(isinstance(i, Mapping) for i in items):
        return None
    for key in _MERGE_KEYS:
        if all(key in i for i in items):
            return key
    return None


def _key_of(item: Mapping[str, Any], key: str) -> Any:
    """An item's merge key as a path shows it: `http` by name, or a port with its protocol,
    `53/UDP` (TCP where none is given, as the API server defaults it)."""
    if key == "port":
        return f"{item['port']}/{item.get('protocol', 'TCP')}"
    return item.get(key)


def _same_scalar(desired: Any, live: Any) -> bool:
    # The API server echoes scalars as given; the type check keeps True from equalling 1.
    return bool(desired == live and type(desired) is type(live))
