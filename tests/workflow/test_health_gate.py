"""The health gate against real servers on loopback: TCP accept, HTTP status, and the
failures an operator must be able to read (refused, wrong status, gave up after the check's
timeout)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from appliance.sot.models import HealthCheck
from appliance.workflow.health import wait_healthy
from tools.rigs.peer_proc import free_tcp_ports


async def test_tcp_check_passes_once_the_port_listens() -> None:
    (port,) = free_tcp_ports(1)
    check = HealthCheck(type="tcp", port=port, timeout=10)

    async def open_later() -> asyncio.Server:
        await asyncio.sleep(0.5)
        return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)

    opener = asyncio.create_task(open_later())
    ok, detail = await wait_healthy(check, "127.0.0.1", interval=0.2)
    server = await opener
    server.close()
    assert ok and "tcp check passed" in detail, detail


async def test_tcp_check_fails_with_the_reason_after_its_timeout() -> None:
    (port,) = free_tcp_ports(1)
    ok, detail = await wait_healthy(HealthCheck(type="tcp", port=port, timeout=1),
                                    "127.0.0.1", interval=0.2)
    assert not ok
    assert f"health check failed for 1 s: tcp 127.0.0.1:{port}: ConnectionRefusedError" in detail


async def test_http_check_wants_the_expected_status() -> None:
    statuses = iter([503, 503, 204])
    app = web.Application()

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=next(statuses, 204))

    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_tcp_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        check = HealthCheck(type="http", port=port, path="/ready", expect_status=204, timeout=10)
        ok, detail = await wait_healthy(check, "127.0.0.1", interval=0.1)
        assert ok and "after 3 attempt(s)" in detail, detail
        wrong = HealthCheck(type="http", port=port, path="/ready", expect_status=200, timeout=1)
        ok, detail = await wait_healthy(wrong, "127.0.0.1", interval=0.2)
        assert not ok and "status 204, expected 200" in detail, detail
    finally:
        await runner.cleanup()
