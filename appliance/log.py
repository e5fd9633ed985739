"""structlog setup: JSON lines for machines, `console` for people, one pipeline for both.

Every line carries what was bound for its context (peer and site for the process; request
id, host and revision where they apply) through contextvars, so a line can be traced to the
machine and the boot step it belongs to. aiohttp's and other libraries' stdlib loggers go
through the same renderer.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]


class _IsoUtcStamper:
    """`timestamp` as TimeStamper(fmt="iso", utc=True) writes it ("...T21:50:07.123456Z"),
    with the text up to the second made once a second: a datetime per line cost ~3 µs of the
    boot script route's ~25 µs log line (tools/bench/http_boot.py, py-spy)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _logger: Any, _name: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S",
                                                               time.gmtime(second))
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


# One encoder for every line: json.dumps(..., default=...) builds a new encoder per call,
# and JSONEncoder.encode builds a new C encoder per call; this one is built once (without
# the circular-reference check: a log line's values are not self-referencing).
_ENCODER = json.JSONEncoder(default=repr)
_C_ENCODER = (json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, repr, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    if json.encoder.c_make_encoder is not None else None)  # type: ignore[attr-defined]


def _dumps(obj: Any, **_kw: Any) -> str:
    if _C_ENCODER is not None and type(obj) is dict:
        return "".join(_C_ENCODER(obj, 0))
    return _ENCODER.encode(obj)


class _JsonLine:
    """The JSON chain for our own events as one processor: merge_contextvars, add_log_level,
    the timestamp, StackInfoRenderer and format_exc_info (only when the line asks for a
    stack or an exception), JSONRenderer; the same keys, in the same order. Six processor
    calls per line were a third of a boot.script line's cost (tools/bench/http_boot.py)."""

    def __init__(self) -> None:
        self._stamp = _IsoUtcStamper()
        self._stack = structlog.processors.StackInfoRenderer()

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        event_dict = structlog.contextvars.merge_contextvars(logger, name, event_dict)
        event_dict["level"] = ("warning" if name == "warn" else "error" if name == "exception"
                               else name)
        event_dict = self._stamp(logger, name, event_dict)
        if "stack_info" in event_dict or "exc_info" in event_dict:
            event_dict = structlog.processors.format_exc_info(
                logger, name, self._stack(logger, name, event_dict))
        return _dumps(event_dict)


class TurnBatchedWriter:
    """Writes the lines logged during one event-loop turn together at the end of that turn:
    one write and flush per turn instead of per line, which matters when a boot storm logs
    a line per request (the per-line write and flush were ~5 µs each). Lines logged outside
    the event loop's thread (worker threads, start-up, shutdown) are written at once."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._scheduled = False
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:  # several threads may log (each loop thread, worker threads)
            if loop is None:  # written now, after what is pending, so the order holds
                self._pending.append(message)
                self._write_pending()
                return
            self._pending.append(message)
            if self._scheduled:
                return
            self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            self._scheduled = False
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def configure_logging(fmt: LogFormat = "json", level: str = "info") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _IsoUtcStamper(),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    # Our own events go straight to stdout through our writer: through the stdlib logging
    # machinery a line costs 25-40 us instead of 11-16 us (tools/bench/http_boot.py), which
    # matters on the per-host script path of a boot storm.
    writer = TurnBatchedWriter(sys.stdout)
    structlog.configure(
        processors=[_JsonLine()] if fmt == "json" else [*shared, renderer],
        logger_factory=lambda *_args: writer,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=True,
    )
    # Libraries' stdlib loggers (aiohttp, pysyncobj) get the same rendering.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by our per-step boot log lines.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
