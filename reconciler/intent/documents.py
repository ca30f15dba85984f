"""YAML documents with positions: every mapping and list remembers where each value was written.

PyYAML's C parser builds plain Python data fast; our constructors add, at no extra pass, the line
and column of every key and item (`Located*`), so later stages can point at the exact field that
is wrong. Hostile input is refused with a clear error instead of costing time or memory:
duplicate keys (silently last-wins in PyYAML), merge keys (whose expansion is exponential), alias
graphs that expand beyond a node budget (the "billion laughs"), and nesting beyond any sane depth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import yaml

from reconciler.intent.diagnostics import Diagnostic, Position, Severity
from reconciler.intent.files import IntentFile

# A node budget per document, counting every visit through an alias: real intent files hold a few
# hundred thousand nodes at most, a billion-laughs file claims 10^9.
MAX_NODES = 2_000_000
MAX_DEPTH = 64

Mark = tuple[int, int]  # 1-based line, column


def _mark(node: yaml.Node) -> Mark:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class LocatedDict(dict[str, Any]):
    """A YAML mapping that knows where it, each key and each value stand in the file."""

    __slots__ = ("key_marks", "mark", "value_marks")

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.key_marks: dict[str, Mark] = {}
        self.value_marks: dict[str, Mark] = {}


class LocatedList(list[Any]):
    """A YAML sequence that knows where it and each item stand in the file."""

    __slots__ = ("item_marks", "mark")

    def __init__(self, mark: Mark) -> None:
        super().__init__()
        self.mark = mark
        self.item_marks: list[Mark] = []


class YamlInputError(Exception):
    def __init__(self, message: str, mark: Mark, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.mark, self.hint = message, mark, hint


class _Loader(yaml.CSafeLoader):
    yaml_constructors: ClassVar[dict[Any, Any]] = dict(yaml.CSafeLoader.yaml_constructors)
    # Problems that spoil one document but not the parse (a duplicate key): the rest of the file
    # is still read, so its other documents load and nothing else is reported as missing.
    spoiled: list[YamlInputError]


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[LocatedDict]:
    data = LocatedDict(_mark(node))
    yield data
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise YamlInputError(
                "YAML merge keys (<<) are not supported in intent",
                _mark(key_node),
                "write the fields out; merges hide what a policy really says",
            )
        key = loader.construct_object(key_node, deep=False)
        if not isinstance(key, str):
            raise YamlInputError(f"mapping key {key!r} is not a string", _mark(key_node))
        if key in data:
            line, col = data.key_marks[key]
            loader.spoiled.append(
                YamlInputError(
                    f"duplicate key {key!r} (first defined at line {line}, column {col})",
                    _mark(key_node),
                    "YAML would silently keep only the last; remove one",
                )
            )
            continue
        data[key] = loader.construct_object(value_node, deep=False)
        data.key_marks[key] = _mark(key_node)
        data.value_marks[key] = _mark(value_node)


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Iterator[LocatedList]:
    data = LocatedList(_mark(node))
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=False))
        data.item_marks.append(_mark(item))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _check_size(root: LocatedDict, start: Mark) -> None:
    """Refuse documents whose aliases expand past the node budget, or that refer to themselves.

    Consumers see aliased values once per reference, so the expanded size is what costs; it is
    computed with one visit per distinct node (memoised by identity), so a billion-laughs file
    is refused in microseconds instead of being walked.
    """
    expanded: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(value: object, mark: Mark, depth: int) -> int:
        if not isinstance(value, LocatedDict | LocatedList):
            return 1
        key = id(value)
        if key in expanded:
            return expanded[key]
        if key in in_progress:
            raise YamlInputError("document refers to itself through an alias", mark)
        if depth > MAX_DEPTH:
            raise YamlInputError(f"document is nested more than {MAX_DEPTH} levels deep", mark)
        in_progress.add(key)
        if isinstance(value, LocatedDict):
            children = zip(value.values(), value.value_marks.values(), strict=True)
        else:
            children = zip(value, value.item_marks, strict=True)
        total = 1 + sum(size(v, m, depth + 1) for v, m in children)
        in_progress.discard(key)
        if total > MAX_NODES:
            raise YamlInputError(
                f"document expands to more than {MAX_NODES} values (an alias bomb?)",
                mark,
                "intent has no need for YAML anchors that deep",
            )
        expanded[key] = total
        return total

    size(root, start, 0)


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    file: str
    body: LocatedDict
    # Why this document is refused before any schema check (a duplicate key), if it is; it still
    # names what it declares, so references to it are not reported as unknown.
    problems: tuple[Diagnostic, ...] = ()

    def position(self, mark: Mark | None = None) -> Position:
        line, column = mark or self.body.mark
        return Position(self.file, line, column)


def parse(source: IntentFile) -> tuple[list[Document], list[Diagnostic]]:
    """The documents of one file, and the one diagnostic that stopped the parse (every document
    after it is unread), if any. A document with a duplicate key carries its own `problems`."""
    try:
        text = source.data.decode("utf-8")
    except UnicodeDecodeError as e:
        return [], [_error(source.path, (1, 1), f"file is not UTF-8 (byte {e.start})")]
    documents: list[Document] = []
    try:
        loader = _Loader(text)
        loader.spoiled = []
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                body = loader.construct_document(node)
                start = _mark(node)
                if body is None:
                    continue
                if not isinstance(body, LocatedDict):
                    raise YamlInputError(
                        "a document must be a mapping with apiVersion and kind", start
                    )
                _check_size(body, start)
                spoiled = tuple(
                    _error(source.path, e.mark, e.message, e.hint) for e in loader.spoiled
                )
                loader.spoiled.clear()
                documents.append(Document(source.path, body, spoiled))
        finally:
            loader.dispose()
    except YamlInputError as e:
        return documents, [_error(source.path, e.mark, e.message, e.hint)]
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        tab = _tab_problem(text, where)
        if tab is not None:
            return documents, [_error(source.path, where, *tab)]
        problem = e.problem or e.context or "invalid YAML"
        return documents, [_error(source.path, where, f"YAML syntax: {problem}")]
    except (yaml.YAMLError, RecursionError, MemoryError) as e:
        return documents, [_error(source.path, (1, 1), f"YAML syntax: {type(e).__name__}: {e}")]
    return documents, []


def _tab_problem(text: str, where: Mark) -> tuple[str, str] | None:
    """Say "tab" and name the field when a tab is what the parser stumbled on: libyaml's own
    words for it ("found character that cannot start any token") name neither."""
    lines = text.splitlines()
    if not 0 < where[0] <= len(lines):
        return None
    line = lines[where[0] - 1]
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    if "\t" not in indent and line[where[1] - 1 : where[1]] != "\t":
        return None
    content = line.strip().removeprefix("- ").strip()
    key = content.split(":", 1)[0].strip() if ":" in content else ""
    what = f"field {key!r}" if key and not key.startswith("#") else f"line {where[0]}"
    return (
        f"YAML syntax: a tab character indents {what}; YAML indentation must be spaces",
        "replace the tab with spaces",
    )


def _error(path: str, mark: Mark, message: str, hint: str | None = None) -> Diagnostic:
    return Diagnostic(Position(path, *mark), Severity.ERROR, message, hint)
