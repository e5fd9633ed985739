"""YAML documents that remember where each value came from.

Validation messages must name file:line, so every mapping, sequence and scalar position is
kept in a side table keyed by its path (`("interfaces", 0, "mac")`). The C loader (libyaml)
composes the node graph; we construct plain Python objects ourselves so we keep the marks
without the per-object overhead of a custom node class. That keeps a 10,000-host SoT fast.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from .slot_pickle import pickled_by_fields

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


class Source:
    """The text of one YAML file, for line lookups. Node trees were half the memory of a
    compiled revision (~200 MB at 10,000 hosts), and only a problem report needs them: they
    are composed again from the text on the first lookup and dropped by `release()`."""

    __slots__ = ("_nodes", "text")

    def __init__(self, text: str | bytes) -> None:
        self.text = text
        self._nodes: list[yaml.Node | None] | None = None

    def node(self, index: int) -> yaml.Node | None:
        if self._nodes is None:
            nodes: list[yaml.Node | None] = []
            loader = _Loader(self.text)
            try:
                while loader.check_node():
                    node = loader.get_node()
                    if node is not None:
                        _Builder(ALIAS_BUDGET).build(node)  # the same flattening as the first parse
                    nodes.append(node)
            finally:
                loader.dispose()
            self._nodes = nodes
        return self._nodes[index] if index < len(self._nodes) else None

    def release(self) -> None:
        self._nodes = None


@pickled_by_fields
@dataclass(slots=True)
class Document:
    """One YAML document: its data, the line it starts on (1-based), and where to find the
    line of any path inside it when a problem needs one (nothing is paid until then)."""

    data: Any
    line: int
    source: Source | None = field(default=None, repr=False, compare=False)
    index: int = 0  # its position among the nodes of `source`

    @property
    def node(self) -> yaml.Node | None:
        return self.source.node(self.index) if self.source is not None else None

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


_scalars = _ScalarMaker()  # merge keys only: flatten_mapping keeps nothing
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_BOOLS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


def _scalar(node: yaml.ScalarNode) -> Any:
    tag = node.tag
    if tag == _STR:
        # Keys and most values repeat across thousands of hosts (field names, subnets,
        # workflows, disks): one object each instead of one per host, in memory and on
        # disk (pickle shares what is shared). Long texts (scripts) are left alone.
        value = node.value
        return sys.intern(value) if len(value) <= 64 else value
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return _BOOLS[node.value.lower()]
    if tag == _TIMESTAMP:  # dates stay strings: a SoT has no use for datetime objects
        return node.value
    try:
        # A constructor of its own each time (as cheap as reusing one: ~2 us): a
        # constructor keeps every node it built in `constructed_objects`, so a shared one
        # kept every number of every file this process ever compiled, marks and all.
        return _ScalarMaker().construct_object(node, deep=True)
    except (ValueError, OverflowError) as exc:  # e.g. an integer of 5,000 digits
        raise YamlError(node.start_mark.line + 1, f"a value that is not a usable number: "
                                                  f"{str(exc)[:100]}") from None


ALIAS_BUDGET = 1_000_000  # nodes a stream may rebuild through aliases and merge keys


class _Builder:
    """Builds Python values from a composed node graph. An alias is the same node reached
    twice; building it again is what makes a few hundred bytes (nine levels of nine aliases)
    expand to 9**9 values. Every node built again through an alias counts against a budget:
    legitimate anchors (`<<: *defaults` on 10,000 hosts) stay far below it, a bomb stops at it
    in well under a second."""

    def __init__(self, budget: int) -> None:
        self.seen: set[int] = set()
        self.budget = budget

    def _charge(self, node: yaml.Node, count: int) -> None:
        self.budget -= count
        if self.budget < 0:
            raise YamlError(node.start_mark.line + 1,
                            f"aliases expand to more than {ALIAS_BUDGET:,} values "
                            f"(an alias bomb?); write the values out or use fewer aliases")

    def build(self, node: yaml.Node, aliased: bool = False) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node)
        key = id(node)
        if aliased or key in self.seen:
            aliased = True
            self._charge(node, 1 + len(node.value))
        else:
            self.seen.add(key)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, aliased) for child in node.value]
        if isinstance(node, yaml.MappingNode):
            if any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
                _scalars.flatten_mapping(node)
                if not aliased:  # merged entries are copies of another mapping's entries
                    self._charge(node, len(node.value))
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise YamlError(key_node.start_mark.line + 1,
                                    "a mapping key must be a scalar")
                k = _scalar(key_node)
                if k in out:
                    raise YamlError(
                        key_node.start_mark.line + 1, f"key {k!r} appears twice in one mapping"
                    )
                out[k] = self.build(value_node, aliased)
            return out
        raise YamlError(node.start_mark.line + 1, f"unsupported YAML node {node.tag}")


def load_documents(text: str | bytes) -> list[Document]:
    """Parse every document of a YAML stream, keeping line numbers. Empty documents are skipped."""
    loader = _Loader(text)
    source = Source(text)
    builder = _Builder(ALIAS_BUDGET)
    docs: list[Document] = []
    index = -1
    try:
        while loader.check_node():
            node = loader.get_node()
            index += 1
            if node is None:
                continue
            data = builder.build(node)
            if data is None:
                continue
            docs.append(Document(data, node.start_mark.line + 1, source, index))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlError(line, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:  # a control character or bad encoding
        head = text[:exc.position] if exc.position is not None else ""
        line = (head.count(b"\n") if isinstance(head, bytes) else head.count("\n")) + 1
        raise YamlError(line, f"not valid YAML: {exc.reason} (character "
                              f"{exc.character!r})") from None
    except yaml.YAMLError as exc:  # anything else the parser refuses is the file's problem
        raise YamlError(1, f"not valid YAML: {exc}") from None
    except RecursionError:
        raise YamlError(1, "not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return docs


_COMMENT_OR_BLANK = re.compile(rb"[ \t]*(#[^\n]*)?")


def split_documents(data: bytes) -> list[tuple[int, bytes]] | None:
    """The stream cut before each `---` line: (0-based line of the cut, bytes up to the next
    one) per piece, for parsing only the documents of a file that changed. What precedes the
    first `---` is a piece of its own unless it holds only comments. None when a cut could
    part what the whole parse joins, or count what it counts otherwise: directives (they
    bind to the next document), anchors and merge keys (aliases cross documents in the
    alias budget), line breaks other than LF (libyaml also breaks lines on CR, NEL, LS, PS).
    Whoever uses the pieces must still parse each changed one to exactly one mapping and
    fall back on anything else: a `---` inside a quoted scalar or a flow collection leaves
    its piece unterminated."""
    if (not data.isascii() or b"\r" in data or b"&" in data or b"<<" in data
            or data.startswith(b"%") or b"\n%" in data):
        return None
    # The cuts are the lines that match `^---(?=[ \t\n]|\Z)`, found by substring search: that
    # regex, tried at every line start, took ten times as long on a 200 KB cluster file.
    cuts = [0]
    start = data.find(b"\n---")
    while start != -1:
        start += 1
        if data[start + 3:start + 4] in (b"", b" ", b"\t", b"\n"):
            cuts.append(start)
        start = data.find(b"\n---", start)
    pieces = []
    line = 0
    for i, start in enumerate(cuts):
        piece = data[start:cuts[i + 1] if i + 1 < len(cuts) else len(data)]
        if i or piece.startswith(b"---") or not all(
                _COMMENT_OR_BLANK.fullmatch(text) for text in piece.split(b"\n")):
            pieces.append((line, piece))
        line += piece.count(b"\n")
    return pieces
