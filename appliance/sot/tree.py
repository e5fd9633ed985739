"""Where a revision's files come from: a directory or a git tree, behind one small interface.

The loader reads only through `Tree`, so a working copy and a commit read by SHA take the
same code path and give the same model (DESIGN.md: everything is a pure function of a commit).
"""

from __future__ import annotations

import os
import stat
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

    def content_id(self, path: str) -> str:
        """The git blob id of a file, known without reading it where the tree can tell (a
        commit lists it; a directory hashed each file once for its own id): a file whose id
        equals the parent revision's is not read or parsed again."""
        ...


def blob_id(data: bytes) -> str:
    """Git's id of a blob with these bytes (what `git hash-object` prints)."""
    return Blob.from_string(data).id.decode()


_SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules"}


class UnsafeEntry(OSError):
    """A tree entry that is not a regular file inside the tree (a symlink, a device, a FIFO,
    a path with `..`). A commit is input: reading through one would put any file the peer
    can read (`/etc/shadow`, its own token files) into errors and rendered configs."""


class DirectoryTree:
    """A SoT checkout on disk. Its id is the git tree hash of its files, so an unchanged
    working copy and the commit it came from are recognisably the same content."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root} is not a directory")
        self._files: list[str] | None = None
        self._tree_id: str | None = None
        self._blob_ids: dict[str, str] = {}

    @property
    def description(self) -> str:
        return str(self.root)

    def files(self) -> Iterator[str]:
        """Regular files only, as git sees a tree: symlinks (to files or directories),
        devices and FIFOs are not content and are never followed (`followlinks=False`)."""
        if self._files is None:
            found = []
            for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
                rel = Path(dirpath).relative_to(self.root)
                for name in sorted(filenames):
                    if stat.S_ISREG(os.lstat(os.path.join(dirpath, name)).st_mode):
                        found.append((rel / name).as_posix())
            self._files = found
        return iter(self._files)

    def read(self, path: str) -> bytes:
        """The bytes of a regular file of the tree. Every component is opened without
        following links (O_NOFOLLOW, relative to the directory opened before it), so a link
        swapped in after `files()` listed the tree cannot lead outside it either."""
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise UnsafeEntry(f"{path}: not a plain path inside the tree")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.root, flags | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
                except OSError as exc:
                    raise UnsafeEntry(f"{path}: {part} is not a directory of the tree "
                                      f"({exc.strerror})") from None
                os.close(fd)
                fd = nxt
            try:
                leaf = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
            except OSError as exc:
                raise UnsafeEntry(f"{path}: not a regular file of the tree "
                                  f"({exc.strerror})") from None
        finally:
            os.close(fd)
        with os.fdopen(leaf, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UnsafeEntry(f"{path}: not a regular file of the tree")
            return f.read()

    @property
    def revision_id(self) -> str:
        if self._tree_id is None:
            self._tree_id = self._hash_tree()
        return self._tree_id

    def content_id(self, path: str) -> str:
        if self._tree_id is None:  # hashing the tree hashes every file once, and keeps ids
            self._tree_id = self._hash_tree()
        return self._blob_ids[path]

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
            blob = Blob.from_string(self.read(path)).id
            self._blob_ids[path] = blob.decode()
            node[leaf] = (mode, blob)

        def build(node: dict) -> ObjectID:
            tree = GitTreeObject()
            for name, entry in node.items():
                if isinstance(entry, dict):
                    tree.add(name.encode(), 0o040000, build(entry))
                else:
                    tree.add(name.encode(), entry[0], entry[1])
            return tree.id

        return build(nested).decode()
