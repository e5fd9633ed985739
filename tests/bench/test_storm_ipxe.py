"""The storm client's iPXE interpreter walks a chain the way iPXE does: variables, labels,
`goto`, a failed fetch taking its `||` fallback to the next peer. A real HTTP server on
loopback serves the scripts and files."""

from __future__ import annotations

from aiohttp import web

from tools.bench.storm_client import BootFailed, Http, Ipxe

MAC = "52:54:01:00:00:07"
HOST_SCRIPT = """#!ipxe
:vq-peer-0
set vq-base {dead}
set vq-next vq-peer-1
goto vq-attempt
:vq-peer-1
set vq-base {live}
set vq-next vq-failed
goto vq-attempt
:vq-attempt
kernel ${{vq-base}}/files/vmlinuz vaq.phone_home=${{vq-base}}/ph/m7 || goto ${{vq-next}}
initrd --name initrd.img ${{vq-base}}/files/initrd.img || goto ${{vq-next}}
boot || goto ${{vq-next}}
:vq-failed
echo the chain failed
exit
"""


async def serve() -> tuple[web.AppRunner, int]:
    async def chain(request: web.Request) -> web.Response:
        base = f"http://{request.host}"
        return web.Response(text=f"#!ipxe\nchain --autofree {base}/ipxe?mac=${{netX/mac}} ||\n"
                                 "exit\n")

    async def script(request: web.Request) -> web.Response:
        if request.query.get("mac") != MAC:
            raise web.HTTPNotFound()
        live = f"http://{request.host}"
        return web.Response(text=HOST_SCRIPT.format(dead=f"{live}/gone", live=live))

    async def files(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 4096)

    app = web.Application()
    app.router.add_get("/boot.ipxe", chain)
    app.router.add_get("/ipxe", script)
    app.router.add_get("/files/{name}", files)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def test_a_dead_peer_costs_one_attempt_and_the_chain_boots():
    runner, port = await serve()
    base = f"http://127.0.0.1:{port}"
    http = Http(timeout=10)
    try:
        ipxe = Ipxe(http, MAC, None)
        assert await ipxe.run(f"{base}/boot.ipxe")
        assert ipxe.phone_home() == f"{base}/ph/m7"
        assert ipxe.kernel and ipxe.file_seconds > 0
        other = Ipxe(http, "52:54:01:00:00:99", None)  # not declared: 404, then exit
        try:
            await other.run(f"{base}/boot.ipxe")
            raise AssertionError("an undeclared machine booted")
        except BootFailed as exc:
            assert "exit" in str(exc)
    finally:
        await http.close()
        await runner.cleanup()
