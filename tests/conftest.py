"""Shared fixtures: the template repository and small helpers to write intent on the fly; and
the markers that say what a test needs (pyproject.toml lists them), so `make test-fast` can run
only the tests that need none of the heavy components."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from reconciler import intent
from tests.hydra import hydra  # noqa: F401  # a real OIDC provider (ORY Hydra), built if missing
from tests.jaeger import jaeger  # noqa: F401  # session fixture: a real Jaeger, built if missing
from tests.kube import kube, namespace  # noqa: F401  # a real kube-apiserver, built if missing
from tests.kubeapps import template_cluster  # noqa: F401  # the template's apps on it
from tests.node import node  # noqa: F401  # a real single-node cluster (containerd, kubelet)

# A test that uses one of these fixtures (directly or through another) needs that component:
# marked here, so a new test cannot forget it.
NEEDS = {
    "kube": {"kube", "namespace", "template_cluster"},
    "jaeger": {"jaeger"},
    "idp": {"hydra"},
    "node": {"node"},
}
HEAVY = ("kube", "jaeger", "idp", "netns", "slow", "node")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        for marker, needing in NEEDS.items():
            if fixtures & needing:
                item.add_marker(marker)
        if not any(item.get_closest_marker(m) for m in HEAVY):
            item.add_marker("unit")


ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "mesh-repo-template"

MESH = """\
apiVersion: weft.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {trustDomain: test.local}
"""


@pytest.fixture
def template() -> Path:
    return TEMPLATE


def write_repo(root: Path, files: dict[str, str]) -> Path:
    """Write a small intent repository; text is dedented so tests can indent YAML inline."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def load(root: Path, revision: str | None = None) -> intent.Intent:
    snapshot = intent.files.from_directory(root)
    if revision is not None:
        snapshot = dataclasses.replace(snapshot, revision=revision)
    return intent.load(snapshot)
