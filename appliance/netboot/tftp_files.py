"""Where TFTP file data comes from: virtual files first, then read-only roots.

Path checks live here, apart from the protocol, because they are the security boundary of the
server: a requested name must never reach a file outside its root, neither through ".." nor
through a symlink pointing out. Small files (iPXE binaries) are cached as bytes so that a boot
storm of identical fetches costs no file I/O; big files are read block by block with os.pread so
memory stays flat however many transfers run.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.netboot.tftp_wire import to_netascii

VirtualFiles = Callable[[str], bytes | None]


class PathRefused(Exception):
    """The name resolves outside a root, or to something that is not a readable regular file."""


class FileMissing(Exception):
    """No virtual file and no root holds this name."""


class Source:
    """Random access to the bytes of one transfer."""

    size: int

    def read(self, offset: int, length: int) -> bytes | memoryview:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file descriptor, if any."""


class BytesSource(Source):
    """Content held in memory: virtual files, cached files and netascii conversions."""

    def __init__(self, content: bytes) -> None:
        self._view = memoryview(content)
        self.size = len(content)

    def read(self, offset: int, length: int) -> memoryview:
        return self._view[offset : offset + length]


class FdSource(Source):
    """A file too big for the cache: read ahead with os.pread, served from the page cache.

    One pread per 256 KiB instead of per block: a syscall costs more than the Python around it.
    """

    _CHUNK = 256 << 10

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size
        self._start = 0
        self._view = memoryview(b"")

    def read(self, offset: int, length: int) -> memoryview:
        rel = offset - self._start
        if rel < 0 or rel + length > len(self._view):
            self._view = memoryview(os.pread(self._fd, max(self._CHUNK, length), offset))
            self._start, rel = offset, 0
        return self._view[rel : rel + length]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def relative_name(filename: str) -> str:
    """Normalise a requested name to a root-relative path; refuse any ".." component.

    A leading "/" is accepted (many DHCP setups send "/undionly.kpxe"); empty and "."
    components are dropped. ".." is refused outright rather than resolved, because no boot
    client has a reason to send it.
    """
    parts = filename.split("/")
    if ".." in parts:
        raise PathRefused("parent directory reference")
    kept = [p for p in parts if p not in ("", ".")]
    if not kept:
        raise FileMissing("empty path")
    return "/".join(kept)


def _inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


class FileResolver:
    """Resolve names against virtual files and roots and open a Source for them.

    `virtual(name)` receives the normalised root-relative name (no leading "/") and returns the
    content, or None to fall through to the roots. It runs on the event loop: it must be fast
    and must not block.
    """

    def __init__(
        self,
        roots: Sequence[str | os.PathLike[str]] = (),
        virtual: VirtualFiles | None = None,
        *,
        cache_file_max: int = 8 << 20,
        cache_total_max: int = 64 << 20,
    ) -> None:
        self.roots = [os.path.realpath(Path(r)) for r in roots]
        self.virtual = virtual
        self._cache_file_max = cache_file_max
        self._cache_total_max = cache_total_max
        self._cache: OrderedDict[str, tuple[tuple[int, int, int, int], bytes]] = OrderedDict()
        self._cache_total = 0

    def open(self, filename: str, *, netascii: bool = False) -> Source:
        """Return a Source for `filename`; raise PathRefused or FileMissing."""
        name = relative_name(filename)
        if self.virtual is not None:
            content = self.virtual(name)
            if content is not None:
                return BytesSource(to_netascii(content) if netascii else bytes(content))
        for root in self.roots:
            source = self._open_in_root(root, name, netascii)
            if source is not None:
                return source
        raise FileMissing(name)

    def _open_in_root(self, root: str, name: str, netascii: bool) -> Source | None:
        try:
            real = os.path.realpath(os.path.join(root, name), strict=True)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:  # symlink loop, permission on a directory, ...
            raise PathRefused(f"cannot resolve: {exc.strerror}") from exc
        if not _inside(real, root):
            raise PathRefused("resolves outside its root")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PathRefused(f"cannot open: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PathRefused("not a regular file")
            if not netascii and st.st_size > self._cache_file_max:
                source: Source = FdSource(fd, st.st_size)
                fd = -1
                return source
            content = self._cached(real, fd, st)
        finally:
            if fd >= 0:
                os.close(fd)
        return BytesSource(to_netascii(content) if netascii else content)

    def _cached(self, real: str, fd: int, st: os.stat_result) -> bytes:
        """Whole content of a small file, re-read when its identity or mtime changes."""
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._cache.get(real)
        if hit is not None and hit[0] == key:
            self._cache.move_to_end(real)
            return hit[1]
        chunks = []
        offset = 0
        while True:
            chunk = os.pread(fd, max(st.st_size - offset, 1 << 16), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        content = b"".join(chunks)
        if len(content) <= self._cache_file_max:
            if hit is not None:
                self._cache_total -= len(hit[1])
            self._cache[real] = (key, content)
            self._cache_total += len(content)
            while self._cache_total > self._cache_total_max and self._cache:
                _, (_, old) = self._cache.popitem(last=False)
                self._cache_total -= len(old)
        return content
