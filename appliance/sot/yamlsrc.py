"""YAML documents that remember where each value came from.

Validation messages must name file:line, so every mapping, sequence and scalar position is
kept in a side table keyed by its path (`("interfaces", 0, "mac")`). The C loader (libyaml)
composes the node graph; we construct plain Python objects ourselves so we keep the marks
without the per-object overhead of a custom node class. That keeps a 10,000-host SoT fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

try:  # libyaml is an order of magnitude faster; PyYAML's pure loader is the fallback.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

Path = tuple[Any, ...]


class YamlError(Exception):
    """A document that is not YAML at all; carries the 1-based line of the first error."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class Document:
    """One YAML document with the line (1-based) of every path inside it."""

    data: Any
    line: int
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """The line of the deepest prefix of `path` that exists in the document."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(tuple(path[:end]))
            if found is not None:
                return found
        return self.line


class _ScalarMaker(yaml.constructor.SafeConstructor):
    """Only for its scalar constructors (ints, bools, floats, nulls, timestamps)."""

    def __init__(self) -> None:
        super().__init__()


_scalars = _ScalarMaker()


def _build(node: yaml.Node, path: Path, lines: dict[Path, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        _scalars.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _build(key_node, (*path, "\0key"), lines)
            if isinstance(key, list | dict):
                raise YamlError(key_node.start_mark.line + 1, "a mapping key must be a scalar")
            if key in out:
                raise YamlError(
                    key_node.start_mark.line + 1, f"key {key!r} appears twice in one mapping"
                )
            out[key] = _build(value_node, (*path, key), lines)
            # A key's own line is where a person looks, not where its block value starts.
            lines[(*path, key)] = key_node.start_mark.line + 1
        lines.pop((*path, "\0key"), None)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(child, (*path, i), lines) for i, child in enumerate(node.value)]
    # Dates stay strings: a SoT has no use for datetime objects and they do not round-trip.
    if node.tag == "tag:yaml.org,2002:timestamp":
        return node.value
    return _scalars.construct_object(node, deep=True)


def load_documents(text: str | bytes) -> list[Document]:
    """Parse every document of a YAML stream, keeping line numbers. Empty documents are skipped."""
    loader = _Loader(text)
    docs: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines: dict[Path, int] = {}
            data = _build(node, (), lines)
            if data is None:
                continue
            docs.append(Document(data, node.start_mark.line + 1, lines))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlError(line, f"not valid YAML: {exc.problem or exc}") from None
    finally:
        loader.dispose()
    return docs
