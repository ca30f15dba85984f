"""From intent files to typed documents, turning every schema violation into a positioned error.

`read` parses all files and validates each document against `model`; it never stops at the first
problem, so one run of `weft validate` reports everything wrong with a revision.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import pydantic
from pydantic.alias_generators import to_camel

from reconciler.intent import documents, model
from reconciler.intent.diagnostics import Diagnostic, Position, Severity
from reconciler.intent.documents import LocatedDict, LocatedList, Mark
from reconciler.intent.files import IntentFile

UNREAD = ("*", "*", "*")  # in `broken`: a file was not read to its end (see validate.UNREAD)

Loc = tuple[int | str, ...]


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid spelling of `word`, for "did you mean" hints."""
    options = list(choices)
    lowered = {c.lower(): c for c in options}
    if word.lower() in lowered:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    guess = nearest(word, choices)
    return f"did you mean {guess!r}?" if guess else None


def locate(body: LocatedDict, loc: Loc, *, key: bool = False) -> Mark:
    """The mark of the value at `loc`, or with `key` of its key (for a problem with a whole
    block); when `loc` goes deeper than the document, the deepest part that exists."""
    node: Any = body
    mark = key_mark = body.mark
    for part in loc:
        if isinstance(node, LocatedDict) and isinstance(part, str) and part in node:
            mark, key_mark = node.value_marks[part], node.key_marks[part]
            node = node[part]
        elif isinstance(node, LocatedList) and isinstance(part, int) and 0 <= part < len(node):
            mark = key_mark = node.item_marks[part]
            node = node[part]
        else:
            break
    return key_mark if key else mark


def loc_text(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _model_at(root: type[pydantic.BaseModel], loc: Loc) -> type[pydantic.BaseModel] | None:
    """The model class that describes the mapping at `loc`, to list its valid field names."""
    current: Any = root
    for part in loc:
        current = _unwrap_model(current, part)
        if current is None:
            return None
    return _as_model(current)


def _as_model(tp: Any) -> type[pydantic.BaseModel] | None:
    for candidate in _alternatives(tp):
        if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
            return candidate
    return None


def _alternatives(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _alternatives(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(tp) for a in _alternatives(arg)]
    return [tp]


def _unwrap_model(tp: Any, part: int | str) -> Any:
    if isinstance(part, int):
        for alt in _alternatives(tp):
            if typing.get_origin(alt) is list:
                return typing.get_args(alt)[0]
        return None
    cls = _as_model(tp)
    if cls is None:
        return None
    for name, field in cls.model_fields.items():
        if part in (field.alias, name):
            return field.annotation
    return None


def field_names(cls: type[pydantic.BaseModel]) -> list[str]:
    return [f.alias or to_camel(n) for n, f in cls.model_fields.items()]


_TYPE_WORDS = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


_BOUNDS = {
    "less_than_equal": "at most",
    "greater_than_equal": "at least",
    "less_than": "less than",
    "greater_than": "more than",
}


def _describe(value: Any) -> str:
    kind = {
        dict: "a mapping",
        list: "a list",
        bool: "a boolean",
        int: "an integer",
        str: "a string",
        float: "a number",
        type(None): "null",
    }
    for tp, word in kind.items():
        if isinstance(value, tp):
            shown = "" if tp in (dict, list, type(None)) else f" {value!r}"
            return f"{word}{shown}"
    return type(value).__name__


def _diagnostic(doc: documents.Document, cls: type[pydantic.BaseModel], error: Any) -> Diagnostic:
    loc: Loc = tuple(p for p in error["loc"] if not _is_union_tag(p))
    kind = error["type"]
    where = loc_text(loc)
    hint = None
    if kind == "extra_forbidden":
        parent = _model_at(cls, loc[:-1])
        valid = field_names(parent) if parent else []
        field = str(loc[-1])
        hint = did_you_mean(field, valid) or (
            f"valid fields here: {', '.join(valid)}" if valid else None
        )
        return Diagnostic(
            doc.position(locate(doc.body, loc, key=True)),
            Severity.ERROR,
            f"unknown field {where!r}",
            hint,
        )
    if kind == "missing":
        return Diagnostic(
            doc.position(locate(doc.body, loc[:-1])),
            Severity.ERROR,
            f"missing required field {where!r}",
        )
    mark = locate(doc.body, loc)
    if kind == "literal_error":
        allowed = [str(v).strip("'") for v in error["ctx"]["expected"].split(" or ")]
        allowed = [a.strip().strip("'") for part in allowed for a in part.split(",") if a.strip()]
        got = error["input"]
        hint = did_you_mean(str(got), allowed) if isinstance(got, str) else None
        message = f"{where}: must be one of {', '.join(allowed)} (got {_describe(got)})"
    elif kind in _TYPE_WORDS:
        message = f"{where}: expected {_TYPE_WORDS[kind]}, got {_describe(error['input'])}"
    elif kind == "string_pattern_mismatch":
        message = f"{where}: {error['input']!r} is not a valid {_pattern_name(loc)}"
    elif kind in _BOUNDS:
        word, bound = _BOUNDS[kind], next(iter(error["ctx"].values()))
        message = f"{where}: {error['input']!r} is out of range (must be {word} {bound})"
    elif kind == "value_error":
        message = (
            f"{where}: {error['msg'].removeprefix('Value error, ')}"
            if where
            else (error["msg"].removeprefix("Value error, "))
        )
    else:
        message = f"{where}: {error['msg'][0].lower()}{error['msg'][1:]}"
    return Diagnostic(doc.position(mark), Severity.ERROR, message, hint)


def _is_union_tag(part: int | str) -> bool:
    # pydantic names union members in locations ("int", "constrained-str", "literal['*']");
    # they mean nothing to someone reading YAML.
    return isinstance(part, str) and (
        part in ("int", "str", "constrained-str", "function-after[_path_pattern(), str]")
        or part.startswith(("literal[", "function-"))
    )


def _pattern_name(loc: Loc) -> str:
    field = next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")
    names = {
        "name": "name (lowercase letters, digits and '-', at most 63 characters)",
        "namespace": "namespace name (lowercase letters, digits and '-')",
        "identities": "SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)",
        "services": "service reference ('name' or 'namespace/name')",
        "service": "service reference ('name' or 'namespace/name')",
        "host": "DNS name",
        "hosts": "DNS name",
        "trustDomain": "trust domain (a DNS name)",
        "clusterDomain": "DNS name",
        "otlpEndpoint": "OTLP endpoint URL (http://host:port)",
    }
    return names.get(field, f"{field} value")


def validate_document(
    doc: documents.Document,
) -> tuple[pydantic.BaseModel | None, list[Diagnostic]]:
    """Check one document's envelope and schema; return the typed object or its diagnostics."""
    body = doc.body
    api_version = body.get("apiVersion")
    if api_version != model.API_VERSION:
        mark = locate(body, ("apiVersion",)) if "apiVersion" in body else body.mark
        got = "missing" if api_version is None else repr(api_version)
        ours = isinstance(api_version, str) and api_version.startswith("weft.dev/")
        return None, [
            Diagnostic(
                doc.position(mark),
                Severity.ERROR,
                f"apiVersion is {got}; every document in a Weft repository "
                f"must be {model.API_VERSION}",
                f"did you mean {model.API_VERSION!r}?"
                if ours
                else "keep other tools' YAML in a folder whose name starts with '.'",
            )
        ]
    kind = body.get("kind")
    cls = model.KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        mark = locate(body, ("kind",)) if "kind" in body else body.mark
        hint = did_you_mean(kind, model.KINDS) if isinstance(kind, str) else None
        return None, [
            Diagnostic(
                doc.position(mark),
                Severity.ERROR,
                f"unknown kind {kind!r}; Weft kinds are {', '.join(model.KINDS)}"
                if kind is not None
                else "missing required field 'kind'",
                hint,
            )
        ]
    try:
        obj = cls.model_validate(body)
    except pydantic.ValidationError as e:
        return None, [_diagnostic(doc, cls, err) for err in e.errors(include_url=False)]
    obj._source = doc
    return obj, []


def declared_name(doc: documents.Document) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of a document as written, even if it failed validation."""
    meta = doc.body.get("metadata")
    kind = doc.body.get("kind")
    if isinstance(meta, dict) and isinstance(kind, str) and isinstance(meta.get("name"), str):
        ns = meta.get("namespace")
        return (kind, ns if isinstance(ns, str) else "", meta["name"])
    return None


def read(
    files: Iterable[IntentFile], broken: set[tuple[str, str, str]] | None = None
) -> tuple[list[pydantic.BaseModel], list[Diagnostic]]:
    """Every valid document, and a diagnostic for every problem.

    `broken` collects (kind, namespace, name) of documents that were refused, so later checks
    can leave out "unknown service" errors that are only echoes of the real one; and
    `validate.UNREAD` when a file could not be read to its end, so any document may be missing.
    """
    objects: list[pydantic.BaseModel] = []
    diagnostics: list[Diagnostic] = []
    for f in files:
        docs, problems = documents.parse(f)
        diagnostics.extend(problems)
        if problems and broken is not None:
            broken.add(UNREAD)
        for doc in docs:
            obj, problems = (None, list(doc.problems)) if doc.problems else validate_document(doc)
            diagnostics.extend(problems)
            if obj is not None:
                objects.append(obj)
            elif broken is not None and (name := declared_name(doc)) is not None:
                broken.add(name)
    return objects, diagnostics


def position_of(obj: pydantic.BaseModel, loc: Loc = (), *, key: bool = False) -> Position:
    """Where a field of a loaded object was written: what semantic errors point at."""
    doc: documents.Document | None = getattr(obj, "_source", None)
    if doc is None:
        return Position("<unknown>")
    return doc.position(locate(doc.body, loc, key=key))
