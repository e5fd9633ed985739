"""The health gate against real servers on loopback: TCP accept, HTTP status, and the
failures an operator must be able to read (refused, wrong status, gave up after the check's
timeout)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from appliance.sot.models import HealthCheck, ShutdownHook
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


async def test_a_before_shutdown_hook_makes_its_request_with_its_method() -> None:
    seen: list[str] = []
    app = web.Application()

    async def drain(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.Response(status=202 if request.method == "POST" else 405)

    app.router.add_route("*", "/drain", drain)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_tcp_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        hook = ShutdownHook(name="drain", type="http", port=port, path="/drain",
                            expect_status=202, timeout=5)
        assert hook.method == "POST" and hook.label == f"drain (POST :{port}/drain)"
        ok, detail = await wait_healthy(hook, "127.0.0.1", interval=0.1)
        assert ok and seen == ["POST"], (detail, seen)
        put = ShutdownHook(type="http", method="PUT", port=port, path="/drain",
                           expect_status=202, timeout=1)
        ok, detail = await wait_healthy(put, "127.0.0.1", interval=0.2)
        assert not ok and detail.startswith(
            f"hook failed for 1 s: PUT http://127.0.0.1:{port}/drain: status 405, "
            "expected 202"), detail
    finally:
        await runner.cleanup()
