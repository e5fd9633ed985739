"""Read a SoT commit straight from a git object store, by SHA, with no work tree.

Peers never check out the SoT: they read the tree of the commit the group agreed on, so
two peers with the same SHA necessarily see the same bytes.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.objects import Blob, Commit, Tag, Tree
from dulwich.repo import Repo


class RevisionNotFound(LookupError):
    """The name does not resolve to a commit in this repository."""


def open_repo(path: str | Path) -> Repo:
    try:
        return Repo(str(path))
    except NotGitRepository:
        raise RevisionNotFound(f"{path} is not a git repository") from None


def resolve_commit(repo: Repo, rev: str) -> str:
    """A branch, tag, `HEAD`, full or abbreviated SHA -> the full commit SHA."""
    candidates = [rev.encode()]
    if not rev.startswith("refs/"):
        candidates += [f"refs/heads/{rev}".encode(), f"refs/tags/{rev}".encode(),
                       f"refs/remotes/{rev}".encode()]
    for ref in candidates:
        try:
            obj = repo[ref]
        except (KeyError, ValueError):
            continue
        return _peel(repo, obj).id.decode()
    if 4 <= len(rev) < 40 and all(c in "0123456789abcdef" for c in rev.lower()):
        matches = [sha for sha in repo.object_store if sha.decode().startswith(rev.lower())]
        commits = [sha for sha in matches if isinstance(repo[sha], Commit)]
        if len(commits) == 1:
            return commits[0].decode()
        if len(commits) > 1:
            raise RevisionNotFound(f"{rev!r} is ambiguous: {len(commits)} commits start with it")
    raise RevisionNotFound(f"{rev!r} is not a branch, tag or commit in {repo.path}")


def _peel(repo: Repo, obj: object) -> Commit:
    while isinstance(obj, Tag):
        obj = repo[obj.object[1]]
    if not isinstance(obj, Commit):
        raise RevisionNotFound(f"{obj.id.decode()} is not a commit")  # type: ignore[attr-defined]
    return obj


class GitTree:
    """The files of one commit. `revision_id` is the commit SHA itself."""

    def __init__(self, repo: Repo | str | Path, rev: str) -> None:
        self.repo = repo if isinstance(repo, Repo) else open_repo(repo)
        self.sha = resolve_commit(self.repo, rev)
        self._commit: Commit = self.repo[self.sha.encode()]  # type: ignore[assignment]
        self._blobs: dict[str, bytes] | None = None

    @property
    def revision_id(self) -> str:
        return self.sha

    @property
    def description(self) -> str:
        return f"{self.repo.path}@{self.sha[:12]}"

    @property
    def commit(self) -> Commit:
        return self._commit

    def _index(self) -> dict[str, bytes]:
        if self._blobs is None:
            blobs: dict[str, bytes] = {}
            stack = [("", self._commit.tree)]
            while stack:
                prefix, tree_id = stack.pop()
                tree = self.repo[tree_id]
                assert isinstance(tree, Tree)
                for entry in tree.items():
                    name = prefix + entry.path.decode()
                    if stat.S_ISDIR(entry.mode):
                        stack.append((name + "/", entry.sha))
                    elif stat.S_ISREG(entry.mode):
                        blobs[name] = entry.sha
            self._blobs = dict(sorted(blobs.items()))
        return self._blobs

    def files(self) -> Iterator[str]:
        return iter(self._index())

    def read(self, path: str) -> bytes:
        blob = self.repo[self._index()[path]]
        assert isinstance(blob, Blob)
        return blob.data

    def content_id(self, path: str) -> str:
        return self._index()[path].decode()
