"""A revision: a tree read, validated and rendered once, then shared by everything after.

Everything the SoT implies is a pure function of a commit, so compiled revisions are cached
by SHA: the plan of a change reuses the fingerprints computed when each side was validated.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .loader import Sot, load_sot
from .problems import Problem
from .tree import DirectoryTree, Tree
from .validate import ValidationResult, validate_sot


@dataclass
class Revision:
    """`sha` is the commit SHA (or a directory's git tree id); `source` says where it came from."""

    sha: str
    source: str
    sot: Sot
    result: ValidationResult

    @property
    def problems(self) -> list[Problem]:
        return self.result.problems.sorted()

    @property
    def valid(self) -> bool:
        return not self.result.problems

    def summary(self) -> dict[str, int]:
        return {
            "sites": len(self.sot.sites), "hosts": len(self.sot.hosts),
            "clusters": len(self.sot.clusters()), "os": len(self.sot.os),
            "boots": len(self.sot.boots), "workflows": len(self.sot.workflows),
            "assets": len(self.sot.assets), "renders": self.result.renders,
            "problems": len(self.result.problems),
        }


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Compiling builds a large graph of long-lived objects (a 10,000-host SoT: ~10^6). The
    cyclic collector would rescan it again and again while it grows, which costs more than
    the compile itself (measured 2.7 s -> 0.5 s for loading 10,000 hosts). Nothing made here
    is cyclic garbage, so the collector is paused for the duration."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What was built lives long (a cached revision): freezing moves it out of the
        # collector's generations, so the next full collection does not rescan it all
        # (~1 s at 10,000 hosts). Refcounting still frees it when the revision is dropped.
        gc.freeze()
        if was_enabled:
            gc.enable()


def compile_tree(tree: Tree) -> Revision:
    with no_cyclic_gc():
        sot, problems = load_sot(tree)
        result = validate_sot(sot, problems)
        _release_line_maps(sot)
        return Revision(tree.revision_id, tree.description, sot, result)


def _release_line_maps(sot: Sot) -> None:
    """Line numbers serve only the validation report, now written: the YAML node trees
    behind them were half the memory of a compiled revision (~200 MB at 10,000 hosts)."""
    for located in sot.at.values():
        located.doc.node = None
    for entry in sot.hosts.values():
        entry.at.doc.node = None


def empty_revision() -> Revision:
    """The state before anything was applied: the base of a site's first plan."""
    from .problems import Problems

    return Revision("0" * 40, "(nothing applied)", Sot(), ValidationResult(Problems()))


class RevisionCache:
    """Compiled revisions by SHA, least recently used evicted. Thread-safe: the API and the
    pipeline may ask for the same SHA at once; it is compiled once."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[str, Revision] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tree: Tree) -> Revision:
        sha = tree.revision_id
        with self._lock:
            if sha in self._items:
                self._items.move_to_end(sha)
                return self._items[sha]
            revision = compile_tree(tree)
            self._items[sha] = revision
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return revision


def compile_directory(path: str) -> Revision:
    return compile_tree(DirectoryTree(path))
