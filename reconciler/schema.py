"""JSON Schemas generated from the models: intent documents (for editors) and ProxyConfig.

`make schema` (python -m reconciler.schema DIR) writes them; a test fails when the committed
files drift from the models, so the schema is never a second source of truth.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import pydantic

from reconciler.compiler import proxyconfig
from reconciler.intent import model

IntentDocument = Annotated[
    model.Mesh
    | model.Service
    | model.AccessPolicy
    | model.Route
    | model.ExternalService
    | model.RequestAuthentication
    | model.Gateway,
    pydantic.Field(discriminator="kind"),
]


def intent_schema() -> dict[str, Any]:
    schema = pydantic.TypeAdapter(IntentDocument).json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Weft intent document (weft.dev/v1alpha1)",
        **schema,
    }


def proxyconfig_schema() -> dict[str, Any]:
    schema = proxyconfig.ADAPTER.json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render() -> dict[str, str]:
    return {
        "intent.schema.json": json.dumps(intent_schema(), indent=2, sort_keys=True) + "\n",
        "proxyconfig.schema.json": json.dumps(proxyconfig_schema(), indent=2, sort_keys=True)
        + "\n",
    }


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "schema")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
