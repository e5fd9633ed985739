"""Real TFTP clients (curl, tftp-hpa) against our server on loopback; bytes must match.

tftp-hpa 5.2's client has no option support (no blksize command), so it exercises plain
RFC 1350 lockstep transfers; curl exercises blksize and tsize negotiation.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from appliance.netboot.tftp import TftpServer

HOST = "127.0.0.1"
KPXE = Path("/usr/lib/ipxe/undionly.kpxe")
CLIENT_TIMEOUT = 60

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("tftp")), reason="needs curl and tftp-hpa"
)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def run(*argv: str, stdin: bytes | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), CLIENT_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    if KPXE.exists():
        shutil.copyfile(KPXE, r / "undionly.kpxe")
    else:
        (r / "undionly.kpxe").write_bytes(os.urandom(74213))
    (r / "random.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    (r / "notes.txt").write_bytes(b"first line\nsecond line\n" * 50)
    (tmp_path / "secret").write_text("secret")
    return r


@pytest.fixture
async def server(root: Path) -> AsyncIterator[TftpServer]:
    # every client here shares one address (loopback): lift the per-client cap
    srv = TftpServer(roots=[root], host=HOST, port=0, max_per_client=1000)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.mark.parametrize("name", ["undionly.kpxe", "random.bin"])
async def test_tftp_hpa_binary_get(server, root, tmp_path, name) -> None:
    out = tmp_path / "out"
    rc, text = await run("tftp", HOST, str(server.port), "-m", "binary", "-c", "get", name,
                         str(out))
    assert rc == 0, text
    assert sha(out) == sha(root / name)


async def test_tftp_hpa_ascii_get_roundtrips_text(server, root, tmp_path) -> None:
    out = tmp_path / "notes.txt"
    rc, text = await run("tftp", HOST, str(server.port), "-m", "ascii", "-c", "get",
                         "notes.txt", str(out))
    assert rc == 0, text
    assert out.read_bytes() == (root / "notes.txt").read_bytes()


@pytest.mark.parametrize(("name", "asked", "used"), [
    ("undionly.kpxe", None, 512),
    ("random.bin", 1468, 1468),
    ("random.bin", 65464, 1468),  # clamped to the path MTU: curl must accept the smaller block
    ("/undionly.kpxe", 1024, 1024),
])
async def test_curl_get_with_blksize(server, root, tmp_path, name, asked, used) -> None:
    out = tmp_path / "out"
    argv = ["curl", "-sS", "--max-time", str(CLIENT_TIMEOUT), "-o", str(out)]
    if asked:
        argv += ["--tftp-blksize", str(asked)]
    with structlog.testing.capture_logs() as logs:
        rc, text = await run(*argv, f"tftp://{HOST}:{server.port}/{name.lstrip('/')}")
    assert rc == 0, text
    assert sha(out) == sha(root / name.lstrip("/"))
    ends = [e for e in logs if e["event"] == "tftp.transfer.end"]
    assert len(ends) == 1 and ends[0]["status"] == "completed"
    assert ends[0]["blksize"] == used
    assert ends[0]["size"] == (root / name.lstrip("/")).stat().st_size


async def test_curl_errors_for_missing_and_escaping_paths(server) -> None:
    base = f"tftp://{HOST}:{server.port}"
    rc, _ = await run("curl", "-sS", "-o", "/dev/null", f"{base}/nope.efi")
    assert rc == 68  # CURLE_TFTP_NOTFOUND
    rc, _ = await run("curl", "-sS", "--path-as-is", "-o", "/dev/null", f"{base}/../secret")
    assert rc == 69  # CURLE_TFTP_PERM
    assert server.counters.requests_refused == 2
    assert server.counters.transfers_started == 0


@pytest.mark.slow
async def test_200_concurrent_curl_fetches(server, root, tmp_path) -> None:
    outdir = tmp_path / "many"
    outdir.mkdir()
    argv = ["curl", "-sS", "-Z", "--parallel-max", "200", "--max-time", str(CLIENT_TIMEOUT)]
    for i in range(200):
        argv += [f"tftp://{HOST}:{server.port}/undionly.kpxe", "-o", str(outdir / str(i))]
    rc, text = await run(*argv)
    assert rc == 0, text
    want = sha(root / "undionly.kpxe")
    assert sorted(sha(outdir / str(i)) == want for i in range(200)) == [True] * 200
    assert server.counters.transfers_completed == 200
    assert server.counters.transfers_failed == 0
    assert server.counters.active == 0
