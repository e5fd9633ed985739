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
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

_STR_TAG = "tag:yaml.org,2002:str"
# YAML 1.1 plain scalars starting with these letters can only be bools or nulls.
_WORD_STARTS = frozenset("yYnNtTfFoO~")
_BOOL_NULL_WORDS = frozenset({
    "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
    "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~"})


class _Loader(_BaseLoader):
    """libyaml calls back into Python to resolve the tag of every scalar, trying each
    implicit resolver's regex (most of the parse time of a large cluster file). A plain
    scalar whose first character starts no implicit type is a string: answer at once, and
    leave everything else to PyYAML's own resolver, so the result is identical."""

    _typed_starts = frozenset(k for k in _BaseLoader.yaml_implicit_resolvers if k)
    _fast = None not in _BaseLoader.yaml_implicit_resolvers and not _BaseLoader.yaml_path_resolvers

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if self._fast and kind is yaml.ScalarNode and value:
            if not implicit[0]:
                return _STR_TAG  # quoted: never implicitly typed
            first = value[0]
            if first not in self._typed_starts:
                return _STR_TAG
            if first in _WORD_STARTS and value not in _BOOL_NULL_WORDS:
                return _STR_TAG
        return super().resolve(kind, value, implicit)

Path = tuple[Any, ...]


class YamlError(Exception):
    """A document that is not YAML at all; carries the 1-based line of the first error."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class Document:
    """One YAML document. Its node tree is kept so the line (1-based) of any path can be
    found when a problem needs it; nothing is paid for lines until then."""

    data: Any
    line: int
    node: yaml.Node | None = field(default=None, repr=False)

    def line_of(self, path: Path) -> int:
        """The line of the deepest prefix of `path` that exists in the document. A mapping
        entry's line is its key's line: that is where a person looks."""
        node, line = self.node, self.line
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and _scalar(key_node) == part:
                        line, node = key_node.start_mark.line + 1, value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    return line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


class _ScalarMaker(yaml.constructor.SafeConstructor):
    """Only for its scalar constructors (ints, bools, floats, timestamps) and merge keys."""


_scalars = _ScalarMaker()
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_BOOLS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


def _scalar(node: yaml.ScalarNode) -> Any:
    tag = node.tag
    if tag == _STR:
        return node.value
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return _BOOLS[node.value.lower()]
    if tag == _TIMESTAMP:  # dates stay strings: a SoT has no use for datetime objects
        return node.value
    return _scalars.construct_object(node, deep=True)


def _build(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return [_build(child) for child in node.value]
    if isinstance(node, yaml.MappingNode):
        if any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
            _scalars.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError(key_node.start_mark.line + 1, "a mapping key must be a scalar")
            key = _scalar(key_node)
            if key in out:
                raise YamlError(
                    key_node.start_mark.line + 1, f"key {key!r} appears twice in one mapping"
                )
            out[key] = _build(value_node)
        return out
    raise YamlError(node.start_mark.line + 1, f"unsupported YAML node {node.tag}")


def load_documents(text: str | bytes) -> list[Document]:
    """Parse every document of a YAML stream, keeping line numbers. Empty documents are skipped."""
    loader = _Loader(text)
    docs: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = _build(node)
            if data is None:
                continue
            docs.append(Document(data, node.start_mark.line + 1, node))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlError(line, f"not valid YAML: {exc.problem or exc}") from None
    finally:
        loader.dispose()
    return docs
