"""IpmiDriver against OpenIPMI's real BMC simulator, `ipmi_sim`, on loopback.

ipmi_sim models power with its `startcmd`: the process it starts is the machine (power on
starts it, power off kills it). Ours is a `sleep` with an argument unique to the test, so
we can see the "machine" in /proc.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from pyghmi.ipmi.private import session as pyghmi_session

from appliance.power.base import BmcCredentials, BmcTarget, PowerError, PowerState
from appliance.power.ipmi import BmcLimiter, IpmiDriver, make_executor
from tests.support.ipmi_sim_rig import ADDRESSES, PASSWORD, Sim, free_udp_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("ipmi_sim") is None,
                                reason="ipmi_sim (Debian package openipmi) not installed")

@pytest.fixture
def executor() -> Iterator[object]:
    pool = make_executor(8)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def _driver(sim: Sim, executor, limiter: BmcLimiter, address: str = "127.0.0.1",
            password: str = PASSWORD, port: int | None = None, **kw) -> IpmiDriver:
    target = BmcTarget(host="node-1", address=address, credentials="lab-ipmi", type="ipmi",
                       port=port or sim.port)
    return IpmiDriver(target, BmcCredentials("admin", password), executor, limiter, **kw)


async def _wait_state(driver: IpmiDriver, want: PowerState) -> PowerState:
    state = PowerState.UNKNOWN
    for _ in range(40):  # bounded: 40 polls of at most the driver's timeout each
        state = await driver.status()
        if state == want:
            break
        await asyncio.sleep(0.1)
    return state


async def _wait_machine(sim: Sim, running: bool, not_pid: int | None = None) -> list[int]:
    pids: list[int] = []
    for _ in range(100):
        pids = [p for p in sim.machine_pids() if p != not_pid]
        if bool(pids) == running:
            break
        await asyncio.sleep(0.05)
    return pids


async def test_power_on_cycle_off(sim: Sim, executor) -> None:
    driver = _driver(sim, executor, BmcLimiter(max_sessions=2, min_interval=0.05), timeout=10)
    assert await driver.status() == PowerState.OFF
    assert sim.machine_pids() == []

    await driver.on()
    assert await _wait_state(driver, PowerState.ON) == PowerState.ON
    [first] = await _wait_machine(sim, running=True)

    await driver.cycle()  # on -> chassis power cycle: the machine process is restarted
    [second] = await _wait_machine(sim, running=True, not_pid=first)
    assert second != first
    assert await _wait_state(driver, PowerState.ON) == PowerState.ON

    await driver.off()
    assert await _wait_state(driver, PowerState.OFF) == PowerState.OFF
    assert await _wait_machine(sim, running=False) == []

    await driver.cycle()  # off -> on
    assert await _wait_state(driver, PowerState.ON) == PowerState.ON
    assert await _wait_machine(sim, running=True)
    await driver.off()
    assert await _wait_state(driver, PowerState.OFF) == PowerState.OFF


async def test_boot_device_and_soft_off_refused_without_vm(sim: Sim, executor) -> None:
    """ipmi_sim answers "Invalid data field" to set_bootdev and to soft off while no VM is
    attached to its serial (VM codec) port: the driver must turn that into a PowerError that
    names the BMC and the operation, and must not retry it (it is not transient)."""
    driver = _driver(sim, executor, BmcLimiter(min_interval=0.05), timeout=10,
                     retries=2, retry_delay=30)  # a retry would blow the test's bound
    with pytest.raises(PowerError) as err:
        await asyncio.wait_for(driver.set_next_boot("pxe", persistent=False), 20)
    text = str(err.value)
    assert "127.0.0.1" in text and "set boot device network" in text
    assert "Invalid data field" in text
    assert PASSWORD not in text

    await driver.on()
    assert await _wait_state(driver, PowerState.ON) == PowerState.ON
    with pytest.raises(PowerError, match="soft power off failed: Invalid data field"):
        await asyncio.wait_for(driver.soft_off(), 20)
    with pytest.raises(PowerError, match="unknown boot device"):
        await driver.set_next_boot("floppy")


async def test_a_boot_step_refused_at_its_boot_device_never_powers_the_machine(
        sim: Sim, executor) -> None:
    """`boot_into` sets the boot device, reads the power state and powers on, in one session:
    a BMC that refuses the boot device (ipmi_sim without a VM) stops it there, with a
    PowerError naming the part that failed; the machine is never started, and a refusal is
    not retried."""
    driver = _driver(sim, executor, BmcLimiter(min_interval=0.05), timeout=10,
                     retries=2, retry_delay=30)  # a retry would blow the test's bound
    with pytest.raises(PowerError) as err:
        await asyncio.wait_for(driver.boot_into("pxe"), 20)
    text = str(err.value)
    assert "boot from pxe (set boot device network) failed: Invalid data field" in text, text
    assert PASSWORD not in text
    assert await driver.status() == PowerState.OFF
    assert sim.machine_pids() == []


async def test_wrong_password(sim: Sim, executor) -> None:
    wrong = "not-the-Pw-5512"
    driver = _driver(sim, executor, BmcLimiter(min_interval=0.05), password=wrong, timeout=10,
                     retry_delay=30)  # wrong credentials are not transient: no retry
    with pytest.raises(PowerError) as err:
        await asyncio.wait_for(driver.status(), 20)
    text = str(err.value)
    assert "127.0.0.1" in text and "power status failed" in text
    assert "password" in text.lower()
    assert wrong not in text and PASSWORD not in text
    assert wrong not in repr(driver._credentials)


@pytest.mark.slow  # the retry waits for pyghmi's own give-up (about 5 s) on the first try
async def test_unreachable_bmc(executor) -> None:
    port = free_udp_port()  # nothing listens there
    target = BmcTarget(host="node-9", address="127.0.0.1", credentials="lab-ipmi", port=port)
    driver = IpmiDriver(target, BmcCredentials("admin", PASSWORD), executor,
                        BmcLimiter(min_interval=0.05), timeout=1.5, retries=1, retry_delay=0.1)
    with pytest.raises(PowerError) as err:
        await asyncio.wait_for(driver.on(), 30)
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text and "power on failed" in text
    assert "no answer" in text
    assert PASSWORD not in text


class _CountingDriver(IpmiDriver):
    """Counts BMC sessions open at once, across all instances, in the worker threads."""

    lock = threading.Lock()
    active = 0
    peak = 0
    calls = 0

    def _session_call(self, op):
        cls = _CountingDriver
        with cls.lock:
            cls.active += 1
            cls.calls += 1
            cls.peak = max(cls.peak, cls.active)
        try:
            time.sleep(0.2)  # hold the session so that overlaps are certain if allowed
            return super()._session_call(op)
        finally:
            with cls.lock:
                cls.active -= 1


@pytest.mark.parametrize("kind", ["limiter", "semaphore"])
async def test_session_cap_across_drivers(sim: Sim, executor, kind: str) -> None:
    """The cap holds across drivers whether they share a BmcLimiter or, as PowerManager
    gives them, one plain asyncio.Semaphore (then a shared limiter is built around it)."""
    _CountingDriver.active = _CountingDriver.peak = _CountingDriver.calls = 0
    limiter = (BmcLimiter(max_sessions=2, min_interval=0.05) if kind == "limiter"
               else asyncio.Semaphore(2))
    drivers = [_CountingDriver(BmcTarget(host=f"node-{i}", address=ADDRESSES[i % 4],
                                         credentials="lab-ipmi", port=sim.port),
                               BmcCredentials("admin", PASSWORD), executor, limiter,
                               timeout=20)
               for i in range(10)]

    async def twice(d: IpmiDriver) -> list[PowerState]:
        return [await d.status(), await d.status()]

    results = await asyncio.wait_for(asyncio.gather(*(twice(d) for d in drivers)), 45)
    assert results == [[PowerState.OFF, PowerState.OFF]] * 10
    # 20 sessions, plus one for each request the driver had to repeat: a UDP answer can be
    # lost (seen once in a full suite run: "no answer within 20 s", then a retry that worked)
    assert _CountingDriver.calls >= 20
    assert _CountingDriver.peak == 2  # 4 BMCs were available: the cap, not the BMCs, bound it
    if kind == "semaphore":
        assert len({id(d._limiter) for d in drivers}) == 1



class _OrderWatch:
    """Stands in for one of pyghmi's module-level locks and records, per thread, which
    watched lock was already held when it was taken: the same two locks taken in both
    orders (A then B in one place, B then A in another) can deadlock, whether or not this
    run's timing made them meet (lockdep's rule)."""

    pairs: ClassVar[set[tuple[str, str]]] = set()
    _held = threading.local()

    def __init__(self, name: str, lock) -> None:
        self.name, self.lock = name, lock

    def acquire(self, *args, **kwargs) -> bool:
        stack = self._stack()
        for outer in stack:
            if outer is not self:
                _OrderWatch.pairs.add((outer.name, self.name))
        got = self.lock.acquire(*args, **kwargs)
        if got:
            stack.append(self)
        return got

    def release(self) -> None:
        stack = self._stack()
        del stack[len(stack) - 1 - stack[::-1].index(self)]
        self.lock.release()

    def _stack(self) -> list[_OrderWatch]:
        if not hasattr(self._held, "stack"):
            self._held.stack = []
        return self._held.stack


@pytest.fixture
def lossy_ports(sim: Sim) -> Iterator[list[int]]:
    """8 ports in front of the sim, each losing 20% of datagrams either way (a relay process
    of its own, so that it does not compete for the GIL with the threads under test)."""
    relay = subprocess.Popen(
        [sys.executable, "-m", "tests.support.lossy_udp_relay", "127.0.0.1", str(sim.port),
         "8", "0.2", "240"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert relay.stdout is not None
        yield [int(p) for p in relay.stdout.readline().split()]
    finally:
        relay.kill()
        relay.wait(timeout=10)


async def test_concurrent_sessions_over_a_lossy_link_never_wedge(
        sim: Sim, executor, lossy_ports: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight BMC sessions at once through a link that loses 20% of datagrams each way: every
    call comes back (an answer or a PowerError), the worker threads are free afterwards, and
    pyghmi's session-table locks are never taken in two orders. Its retransmissions (after a
    lost datagram) took them in the order opposite to a send's: two threads meeting there
    deadlocked, and with them every later call (a 200-machine rollout's leader lost every BMC
    that way; a timing-only check caught it in 1 run of 3, the order check in every run).
    A switch interval of 10 us makes threads interleave inside short critical sections as
    they do on a loaded peer."""
    watches: dict[int, _OrderWatch] = {}
    for name in ("KEEPALIVE_SESSIONS", "WAITING_SESSIONS"):
        lock = getattr(pyghmi_session, name)
        monkeypatch.setattr(pyghmi_session, name,
                            watches.setdefault(id(lock), _OrderWatch(name, lock)))
    _OrderWatch.pairs.clear()
    switch = sys.getswitchinterval()
    try:
        limiter = BmcLimiter(max_sessions=8, min_interval=0.0)
        drivers = [_driver(sim, executor, limiter, port=p, retries=0) for p in lossy_ports]
        loop = asyncio.get_running_loop()
        end = loop.time() + 20

        async def hammer(driver: IpmiDriver) -> tuple[int, int]:
            answered = failed = 0
            while loop.time() < end:  # bounded in time; each call by the driver's 20 s
                try:
                    assert await driver.status() == PowerState.OFF
                    answered += 1
                except PowerError:
                    failed += 1
            return answered, failed

        sys.setswitchinterval(1e-5)
        results = await asyncio.wait_for(asyncio.gather(*(hammer(d) for d in drivers)), 90)
        sys.setswitchinterval(switch)
        assert sum(a for a, _ in results) >= 8, results
        # nothing left holding a worker or a slot: a session on the clean link still works
        clean = _driver(sim, executor, limiter)
        assert await asyncio.wait_for(clean.status(), 30) == PowerState.OFF
        assert not {(a, b) for a, b in _OrderWatch.pairs if (b, a) in _OrderWatch.pairs}
    finally:
        sys.setswitchinterval(switch)
