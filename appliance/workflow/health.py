"""The health gate a workflow may name: after a host's last stage reported in, is the
service it runs actually answering? A TCP connect or an HTTP GET, retried until it passes or
the check's own timeout ends. Only the leader runs it, against the host's boot address.
A stage's `before_shutdown` hooks are the same probe with a method of their own (POST by
default): the leader's request to the host before it power-cycles it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import structlog

from appliance.sot.models import HealthCheck, ShutdownHook

log = structlog.get_logger("vaquero.workflow.health")


async def _once(check: HealthCheck, address: str, per_try: float) -> str | None:
    """None when healthy, else what was wrong."""
    if check.type == "tcp":
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, check.port),
                                               per_try)
        except (OSError, TimeoutError) as exc:
            return f"tcp {address}:{check.port}: {exc.__class__.__name__} {exc}".strip()
        writer.close()
        return None
    url = f"http://{address}:{check.port}{check.path}"
    method = check.method if isinstance(check, ShutdownHook) else "GET"
    try:
        timeout = aiohttp.ClientTimeout(total=per_try)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.request(method, url) as resp:
            if resp.status == check.expect_status:
                return None
            return f"{method} {url}: status {resp.status}, expected {check.expect_status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{method} {url}: {exc.__class__.__name__} {exc}".strip()


async def wait_healthy(check: HealthCheck, address: str, *, interval: float = 3.0,
                       timeout: float | None = None) -> tuple[bool, str]:
    """Poll until healthy or `timeout` (default: the check's own) passes; (ok, detail)."""
    deadline = time.monotonic() + (check.timeout if timeout is None else timeout)
    tries, problem = 0, "not checked"
    while True:
        tries += 1
        remaining = deadline - time.monotonic()
        problem = await _once(check, address, max(1.0, min(10.0, remaining))) or ""
        if not problem:
            return True, f"{check.type} check passed after {tries} attempt(s)"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            kind = "hook" if isinstance(check, ShutdownHook) else "health check"
            return False, f"{kind} failed for {check.timeout} s: {problem}"
        log.info("health.retry", address=address, problem=problem, attempt=tries)
        await asyncio.sleep(min(interval, remaining))
