"""One bounded wait for every test that waits on a peer, a site or a machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(predicate: Callable[[], Any], what: str, timeout: float = 30,
          debug: Callable[[], str] = lambda: "", interval: float = 0.25) -> Any:
    """The predicate's first truthy value; AssertionError (with `debug()`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout} s) waiting for {what}\n{debug()}")
        time.sleep(interval)
