"""Compiled revisions on disk, by SHA: a restarting peer serves from one at once.

Compiling a 10,000-host revision takes seconds of CPU; a peer that restarts with the
revision it was serving would make machines wait that long for their first script. So a
valid compiled revision is written here after it is served, and read back at start-up.

What is read is checked before it is trusted: the file names its format, the code that
wrote it (a digest of the SoT package's source: any change to how revisions are compiled
makes old files stale) and the SHA-256 of its body, which is checked before the body is
unpickled; a file that fails any check is logged and ignored. The file only saves time:
the peer compiles the revision again in the background (appliance/revalidate.py) and the
fresh verdict replaces the cached one if they differ.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import structlog

from appliance import __version__

from .revision import Revision, no_cyclic_gc

log = structlog.get_logger("vaquero.sot.store")

FORMAT = 1
KEEP = 3  # files kept: the applied revision and the ones before it
MAX_HEADER = 4096


@functools.cache
def code_version() -> str:
    """The package version and a digest of every source file of the SoT package."""
    h = hashlib.sha256(__version__.encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:32]


def verdict(revision: Revision) -> str:
    """A digest of what a compile decides: the problems, and what every host is served.
    Two compiles of one SHA agree if and only if their verdicts are equal."""
    h = hashlib.sha256(revision.sha.encode())
    for problem in revision.problems:
        h.update(f"\n{problem.file}:{problem.line}:{problem.code}:{problem.message}".encode())
    h.update(f"\nrenders {revision.result.renders}".encode())
    for name in sorted(revision.result.fingerprints):
        fp = revision.result.fingerprints[name]
        stages = ",".join(f"{s.ipxe}/{s.config}" for s in fp.stages)
        h.update(f"\n{name} {fp.dhcp} {stages}".encode())
    return h.hexdigest()


class RevisionStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, sha: str) -> Path:
        if not sha.isalnum() or len(sha) > 64:
            raise ValueError(f"not a revision id: {sha!r}")
        return self.directory / f"{sha}.rev"

    def save(self, revision: Revision, known_verdict: str | None = None) -> Path:
        """Write atomically (a reader sees the old file or the whole new one)."""
        body = pickle.dumps(revision, protocol=5)
        header = {"format": FORMAT, "code": code_version(), "sha": revision.sha,
                  "body_sha256": hashlib.sha256(body).hexdigest(),
                  "verdict": known_verdict or verdict(revision)}
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(revision.sha)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        self._prune(keep=target)
        log.info("revision_store.saved", revision=revision.sha, bytes=len(body))
        return target

    def _prune(self, keep: Path) -> None:
        files = sorted(self.directory.glob("*.rev"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        for old in [f for f in files if f != keep][KEEP - 1:]:
            old.unlink(missing_ok=True)

    def load(self, sha: str) -> tuple[Revision, str] | None:
        """(the revision, its verdict as written), or None: absent, or ignored and logged.
        The body is checked by streaming it, then unpickled from the file: the whole file is
        never held in memory next to what it holds."""
        path = self.path(sha)
        try:
            with open(path, "rb") as f:
                return self._read(path, f, sha)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._ignored(path, f"unreadable: {exc}")

    def _read(self, path: Path, f: io.BufferedReader, sha: str) -> tuple[Revision, str] | None:
        line = f.readline(MAX_HEADER)
        try:
            header = json.loads(line) if line.endswith(b"\n") else None
        except ValueError:
            header = None
        if not isinstance(header, dict):
            return self._ignored(path, "no header: not a revision file, or damaged")
        if header.get("format") != FORMAT:
            return self._ignored(path, f"format {header.get('format')!r}, expected {FORMAT}")
        if header.get("code") != code_version():
            return self._ignored(path, "written by another version of the SoT code")
        start = f.tell()
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != header.get("body_sha256"):
            return self._ignored(path, "its content does not match its checksum (damaged)")
        f.seek(start)
        try:
            with no_cyclic_gc(makes_no_garbage=True):  # ~10^6 objects, as a compile makes
                revision = pickle.load(f)
        except (pickle.UnpicklingError, AttributeError, ImportError, EOFError, TypeError,
                ValueError) as exc:  # checksum matched: a class moved or renamed
            return self._ignored(path, f"cannot be read back: {exc}")
        if not isinstance(revision, Revision) or revision.sha != sha:
            return self._ignored(path, "holds another revision")
        return revision, str(header.get("verdict"))

    @staticmethod
    def _ignored(path: Path, reason: str) -> None:
        log.warning("revision_store.ignored", file=str(path), reason=reason)
        return None
