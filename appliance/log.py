"""structlog setup: JSON lines for machines, `console` for people, one pipeline for both.

Every line carries what was bound for its context (peer and site for the process; request
id, host and revision where they apply) through contextvars, so a line can be traced to the
machine and the boot step it belongs to. aiohttp's and other libraries' stdlib loggers go
through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["json", "console"]


def configure_logging(fmt: LogFormat = "json", level: str = "info") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    # Our own events go straight to stdout through structlog's writer: through the stdlib
    # logging machinery a line costs 25-40 us instead of 11-16 us (tools/bench/http_boot.py),
    # which matters on the per-host script path of a boot storm.
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
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
