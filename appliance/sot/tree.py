"""Where a revision's files come from: a directory or a git tree, behind one small interface.

The loader reads only through `Tree`, so a working copy and a commit read by SHA take the
same code path and give the same model (DESIGN.md: everything is a pure function of a commit).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from dulwich.objects import Blob, ObjectID
from dulwich.objects import Tree as GitTreeObject


class Tree(Protocol):
    """A read-only file tree; paths are POSIX-style and relative to the SoT root."""

    @property
    def revision_id(self) -> str:
        """The commit SHA, or for a directory the git tree id of its content."""
        ...

    @property
    def description(self) -> str: ...

    def files(self) -> Iterator[str]: ...

    def read(self, path: str) -> bytes: ...


_SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules"}


class DirectoryTree:
    """A SoT checkout on disk. Its id is the git tree hash of its files, so an unchanged
    working copy and the commit it came from are recognisably the same content."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a directory")
        self._files: list[str] | None = None
        self._tree_id: str | None = None

    @property
    def description(self) -> str:
        return str(self.root)

    def files(self) -> Iterator[str]:
        if self._files is None:
            found = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
                rel = Path(dirpath).relative_to(self.root)
                for name in sorted(filenames):
                    found.append((rel / name).as_posix())
            self._files = found
        return iter(self._files)

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    @property
    def revision_id(self) -> str:
        if self._tree_id is None:
            self._tree_id = self._hash_tree()
        return self._tree_id

    def _hash_tree(self) -> str:
        """Git's tree id for the directory's files (empty directories do not count, as in git)."""
        nested: dict = {}
        for path in self.files():
            node = nested
            *dirs, leaf = path.split("/")
            for d in dirs:
                node = node.setdefault(d, {})
            full = self.root / path
            mode = 0o100755 if os.access(full, os.X_OK) else 0o100644
            node[leaf] = (mode, Blob.from_string(full.read_bytes()).id)

        def build(node: dict) -> ObjectID:
            tree = GitTreeObject()
            for name, entry in node.items():
                if isinstance(entry, dict):
                    tree.add(name.encode(), 0o040000, build(entry))
                else:
                    tree.add(name.encode(), entry[0], entry[1])
            return tree.id

        return build(nested).decode()
