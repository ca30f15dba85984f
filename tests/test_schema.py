"""The committed JSON Schemas are generated from the models and accept the template."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from reconciler import schema
from tests.conftest import ROOT


def test_committed_schemas_are_current() -> None:
    for name, text in schema.render().items():
        committed = (ROOT / "schema" / name).read_text()
        assert committed == text, f"schema/{name} is stale: run `make schema`"


def test_template_documents_validate_against_the_intent_schema(template: Path) -> None:
    validator = jsonschema.Draft202012Validator(
        json.loads((ROOT / "schema" / "intent.schema.json").read_text())
    )
    docs = [
        d for f in sorted(template.rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]
    assert len(docs) == 16
    for doc in docs:
        assert not list(validator.iter_errors(doc)), doc["metadata"]


def test_the_schema_refuses_what_the_loader_refuses() -> None:
    validator = jsonschema.Draft202012Validator(
        json.loads((ROOT / "schema" / "intent.schema.json").read_text())
    )
    bad = {
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "Service",
        "metadata": {"name": "x", "namespace": "y"},
        "spec": {"ports": [{"name": "http", "port": 8080}], "serviceAcount": "x"},
    }
    assert list(validator.iter_errors(bad))


def test_compiled_proxyconfigs_validate_against_their_schema(
    template: Path, tmp_path: Path
) -> None:
    from reconciler import compiler, intent  # noqa: PLC0415

    validator = jsonschema.Draft202012Validator(
        json.loads((ROOT / "schema" / "proxyconfig.schema.json").read_text())
    )
    desired = compiler.compile(intent.load(intent.files.from_directory(template)))
    for config in desired.proxy_configs.values():
        assert not list(validator.iter_errors(json.loads(config.to_json())))
