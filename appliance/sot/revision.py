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
def no_cyclic_gc(makes_no_garbage: bool = False) -> Iterator[None]:
    """Compiling builds a large graph of long-lived objects (a 10,000-host SoT: ~10^6). The
    cyclic collector would rescan it again and again while it grows, which costs more than
    the compile itself (measured 2.7 s -> 0.5 s for loading 10,000 hosts). Nothing made here
    is cyclic garbage, so the collector is paused for the duration.

    `makes_no_garbage`: what runs inside leaves no cyclic garbage (unpickling a stored
    revision), so the garbage already there is collected before, where the scan is of the
    few objects made since the last freeze, instead of after, where it is of all the new
    ones (~0.09 s of a restarting peer's ~0.3 s load at 10,000 hosts)."""
    was_enabled = gc.isenabled()
    if makes_no_garbage:
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        # What was built lives long (a cached revision): freezing moves it out of the
        # collector's generations, so the next full collection does not rescan it all
        # (~1 s at 10,000 hosts). Refcounting still frees it when the revision is dropped.
        # But first the cyclic garbage of this compile goes (Jinja's contexts and macros
        # form cycles that hold a host's models): frozen, it was never freed, and every
        # compile kept ~110 MiB at 10,000 hosts for good. Only objects made since the last
        # freeze are scanned.
        if not makes_no_garbage:
            gc.collect()
        gc.freeze()
        if was_enabled:
            gc.enable()


def compile_tree(tree: Tree, parent: Revision | None = None) -> Revision:
    """Compile `tree`. With `parent` (a compiled revision, usually the applied one), the
    work whose inputs did not change is taken from it by content (files by their bytes,
    renders by their template's and context's digests): the result is the same revision a
    compile without a parent gives, byte for byte, in a fraction of the time."""
    with no_cyclic_gc():
        sot, problems = load_sot(tree, parent.sot if parent is not None else None)
        result = validate_sot(sot, problems, parent.result if parent is not None else None)
        _release_line_maps(sot)
        return Revision(tree.revision_id, tree.description, sot, result)


def _release_line_maps(sot: Sot) -> None:
    """Line numbers serve only the validation report, now written: the YAML node trees
    behind them were half the memory of a compiled revision (~200 MB at 10,000 hosts).
    They are composed again from the file's text if a later report asks."""
    for unit in sot.units.values():
        if unit.docs and unit.docs[0].source is not None:
            unit.docs[0].source.release()


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

    def get(self, tree: Tree, parent: str | None = None) -> Revision:
        """The compiled revision of `tree`. `parent`: the SHA of a revision it probably
        shares most files with (the applied one); when cached, its work is reused."""
        sha = tree.revision_id
        with self._lock:
            if sha in self._items:
                self._items.move_to_end(sha)
                return self._items[sha]
            base = self._items.get(parent) if parent else None
            if base is None and self._items:
                base = next(reversed(self._items.values()))  # the most recently used
            revision = compile_tree(tree, base)
            self._items[sha] = revision
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return revision


def compile_directory(path: str) -> Revision:
    return compile_tree(DirectoryTree(path))
