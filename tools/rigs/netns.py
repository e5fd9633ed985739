"""Network namespaces for tests and benchmarks: create them, wire them, always remove them.

Why a rig: tests that use real DHCP/TFTP/HTTP clients and QEMU need a boot network that is
isolated from the host's and from other test runs. Everything created through a `NetnsRig`
is recorded and removed on exit, also when the test fails; processes started through it are
killed first. Names carry the creating process id, so parallel runs never collide, and
`sweep_stale()` removes what a killed run left behind (only namespaces whose creator is gone).

Usage (pytest: see the `netns_rig` fixture in tests/netboot/conftest.py)::

    with NetnsRig() as rig:
        srv = rig.netns("srv")
        rig.bridge(srv, "br0", "198.18.0.1/24")
        cli = rig.netns("cli")
        rig.veth(srv, cli, bridge="br0", cidr_b=None, mac_b="52:54:00:00:00:01")
        cli.run("dhclient", "-1", "eth0")
        with srv.loop_thread() as lt:        # an asyncio loop running inside `srv`
            lt.run(some_coroutine())

Only addresses from 198.18.0.0/15 belong in these namespaces (RFC 2544 benchmarking range).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"
_counter = itertools.count(1)
_NAME_RE = re.compile(r"^(?P<prefix>[a-z]+)-(?P<pid>\d+)-\d+-")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (for pytest.skip), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _ip(*args: str, timeout: float = 10) -> None:
    subprocess.run(["ip", *args], check=True, timeout=timeout, capture_output=True, text=True)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


class LoopThread:
    """An asyncio event loop on its own thread, inside a namespace, for in-process servers.

    Sockets created by coroutines run here live in the namespace. Results and exceptions come
    back to the caller through `run`.
    """

    def __init__(self, ns_path: str) -> None:
        self._ns_path = ns_path
        self.loop = asyncio.new_event_loop()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, name=f"netns:{ns_path}", daemon=True)

    def _main(self) -> None:
        try:
            _setns(self._ns_path)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._ready.set_exception(exc)
            return
        asyncio.set_event_loop(self.loop)
        self._ready.set_result(None)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> LoopThread:
        self._thread.start()
        self._ready.result(timeout=10)
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> LoopThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Netns:
    """One namespace: run commands in it, start tracked processes, host an asyncio loop."""

    def __init__(self, rig: NetnsRig, name: str) -> None:
        self.rig = rig
        self.name = name
        self.path = os.path.join(NETNS_DIR, name)

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        return subprocess.run(self.cmd(*argv), check=check, timeout=timeout, text=True, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process in the namespace; the rig kills it on exit if it still runs."""
        proc = subprocess.Popen(self.cmd(*argv), start_new_session=True, **kw)
        self.rig._procs.append(proc)
        return proc

    def loop_thread(self) -> LoopThread:
        return LoopThread(self.path)

    def socket(self, *args: Any) -> socket.socket:
        """A socket that lives in this namespace, usable from any thread of the caller."""
        box: list[Any] = []

        def make() -> None:
            try:
                _setns(self.path)
                box.append(socket.socket(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box.append(exc)

        t = threading.Thread(target=make, name=f"netns-socket:{self.name}")
        t.start()
        t.join(timeout=10)
        if not box or isinstance(box[0], BaseException):
            raise OSError(f"cannot create a socket in {self.name}") from (box[0] if box else None)
        return box[0]

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"


class NetnsRig:
    """Creates namespaces, bridges and veth pairs, and removes all of them on close()."""

    def __init__(self, prefix: str = "vq") -> None:
        if not prefix.isalpha() or not prefix.islower():
            raise ValueError("prefix: lowercase letters only")
        self.prefix = prefix
        self.namespaces: list[Netns] = []
        self._procs: list[subprocess.Popen[Any]] = []

    def netns(self, label: str) -> Netns:
        """A fresh namespace with loopback up."""
        name = f"{self.prefix}-{os.getpid()}-{next(_counter)}-{label}"
        _ip("netns", "add", name)
        ns = Netns(self, name)
        self.namespaces.append(ns)
        _ip("-n", name, "link", "set", "lo", "up")
        return ns

    def bridge(self, ns: Netns, name: str = "br0", cidr: str | None = None) -> str:
        """A bridge in `ns`, up, with an optional address (the boot network's server side)."""
        _ip("-n", ns.name, "link", "add", name, "type", "bridge")
        # No STP, no forwarding delay: a port forwards as soon as it is up.
        _ip("-n", ns.name, "link", "set", name, "type", "bridge", "forward_delay", "0")
        if cidr:
            _ip("-n", ns.name, "addr", "add", cidr, "dev", name)
        _ip("-n", ns.name, "link", "set", name, "up")
        return name

    def veth(
        self,
        ns_a: Netns,
        ns_b: Netns,
        *,
        name_a: str | None = None,
        name_b: str = "eth0",
        bridge: str | None = None,
        cidr_a: str | None = None,
        cidr_b: str | None = None,
        mac_b: str | None = None,
    ) -> tuple[str, str]:
        """A veth pair between two namespaces; end A optionally enslaved to `bridge` in ns_a."""
        name_a = name_a or f"v{next(_counter)}"
        args = ["-n", ns_a.name, "link", "add", name_a, "type", "veth", "peer", "name", name_b]
        if mac_b:
            args += ["address", mac_b]
        _ip(*args, "netns", ns_b.name)
        if bridge:
            _ip("-n", ns_a.name, "link", "set", name_a, "master", bridge)
        if cidr_a:
            _ip("-n", ns_a.name, "addr", "add", cidr_a, "dev", name_a)
        if cidr_b:
            _ip("-n", ns_b.name, "addr", "add", cidr_b, "dev", name_b)
        _ip("-n", ns_a.name, "link", "set", name_a, "up")
        _ip("-n", ns_b.name, "link", "set", name_b, "up")
        # The kernel reports carrier through linkwatch, up to a second later; a bridge port
        # forwards only after that. Frames sent before are lost, so wait (bounded).
        wait_link(ns_a, name_a, forwarding=bridge is not None)
        wait_link(ns_b, name_b)
        if bridge:
            wait_link(ns_a, bridge)
        return name_a, name_b

    def close(self) -> None:
        """Kill what we started, then delete our namespaces (which deletes their links)."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self._procs.clear()
        for ns in reversed(self.namespaces):
            _kill_namespace_pids(ns.name)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)
        self.namespaces.clear()

    def __enter__(self) -> NetnsRig:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def wait_link(ns: Netns, ifname: str, *, forwarding: bool = False, timeout: float = 10) -> None:
    """Wait until a link is operationally up (and, for a bridge port, forwarding)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["ip", "-n", ns.name, "-d", "-o", "link", "show", "dev", ifname],
            capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip
        if " state UP " in out and (not forwarding or "bridge_slave state forwarding" in out):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ifname} in {ns.name} is not up: {out.strip()}")
        time.sleep(0.02)


def _kill_namespace_pids(name: str) -> None:
    """Processes still inside a namespace we created (daemons that forked away from us)."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10)
    for pid in out.stdout.split():
        if int(pid) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def sweep_stale(prefix: str = "vq") -> list[str]:
    """Delete namespaces left by rigs whose process died without cleaning up."""
    removed: list[str] = []
    if not os.path.isdir(NETNS_DIR):
        return removed
    for name in os.listdir(NETNS_DIR):
        m = _NAME_RE.match(name)
        if not m or m["prefix"] != prefix:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        _kill_namespace_pids(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        removed.append(name)
    return removed


@contextlib.contextmanager
def netns_rig(prefix: str = "vq") -> Iterator[NetnsRig]:
    """`with netns_rig() as rig:` -- everything is removed when the block exits."""
    rig = NetnsRig(prefix)
    try:
        yield rig
    finally:
        rig.close()
