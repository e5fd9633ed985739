"""Run a render pass in a child process with a memory limit and a wall clock.

The in-template budgets (`render_budget`) stop loops, recursion and the allocating
operators; what they cannot see (a C call that allocates without an integer argument) must
still not take the peer down. So a revision's renders run in a forked child: it shares the
compiled SoT copy-on-write (nothing is pickled in), its address space may grow by a bounded
amount (RLIMIT_AS: past it, allocation fails with MemoryError inside the child), and the
parent kills it past the revision's time budget. Only the (small) result is pickled back.
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .render_budget import enable_alarm

T = TypeVar("T")


class WorkerFailed(Exception):
    """The render pass did not finish: past its time or memory budget, or it crashed."""


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(fn: Callable[..., Any], args: tuple[Any, ...], memory_bytes: int, out: int) -> None:
    try:
        enable_alarm()
        limit = _address_space() + memory_bytes
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        try:
            payload = pickle.dumps(("ok", fn(*args)), protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            payload = pickle.dumps(("error", f"rendering used more than its memory budget "
                                             f"({memory_bytes >> 20} MiB)"))
        except Exception as exc:  # noqa: BLE001 - reported to the parent as WorkerFailed
            payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
        view = memoryview(payload)
        while view:
            view = view[os.write(out, view):]
    finally:
        os._exit(0)


def run_bounded(fn: Callable[..., T], *args: Any, seconds: float, memory_bytes: int) -> T:
    """`fn(*args)` in a forked child; its result, or WorkerFailed. Blocking: call it from a
    thread (the peer does, through `asyncio.to_thread`), never on the event loop."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        os.close(read_end)
        _child(fn, args, memory_bytes, write_end)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise WorkerFailed(f"rendering ran past its time budget ({seconds:g} s)")
            chunk = os.read(read_end, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    if not chunks:
        raise WorkerFailed("the render worker died without an answer (killed for memory?)")
    status, value = pickle.loads(b"".join(chunks))
    if status != "ok":
        raise WorkerFailed(value)
    return value
