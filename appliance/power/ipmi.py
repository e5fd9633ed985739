"""IPMI power driver on pyghmi.

pyghmi is blocking (its own I/O thread and events), so every command runs in a bounded
thread pool, never on the event loop. Each command logs in, does one thing and logs out:
BMCs allow few sessions (often 4 or 5, shared with every other tool), so a session held
idle by a keepalive is a session an operator cannot use. The `BmcLimiter`, shared by every
driver of a peer, caps how many BMC sessions are open at once and keeps a minimum interval
between commands to the same BMC (Ironic does the same: some BMCs fail when commands
arrive too fast).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi.command import Command
from pyghmi.ipmi.private import session as _pyghmi_session
from pyghmi.ipmi.private.session import Session as _Session

from .base import (
    BmcCredentials,
    BmcTarget,
    BootDevice,
    DriverResources,
    PowerDriver,
    PowerError,
    PowerState,
)

log = structlog.get_logger("vaquero.power")

# pyghmi (1.6.19, the newest) guards its class-wide session tables with two locks and takes
# them in both orders: `send_payload` holds KEEPALIVE_SESSIONS and `_xmit_packet` then takes
# WAITING_SESSIONS, while `wait_for_rsp` and `awaitresponse` hold WAITING_SESSIONS and call
# `_timedout` -> `send_payload`, which takes KEEPALIVE_SESSIONS. Two worker threads meeting
# there (a retransmission in one, a send in the other) wait for each other forever: every
# later IPMI call of the peer hangs, its worker threads and BMC slots are never returned.
# Seen as "no answer within 20 s" from every BMC of a 200-machine rollout's leader (py-spy:
# all 8 workers blocked on those two locks). One lock for both tables cannot be taken in two
# orders; both are re-entrant, and pyghmi looks them up by name at each use.
_pyghmi_session.WAITING_SESSIONS = _pyghmi_session.KEEPALIVE_SESSIONS

T = TypeVar("T")

_BOOTDEV = {BootDevice.PXE: "network", BootDevice.DISK: "hd", BootDevice.CDROM: "optical",
            BootDevice.BIOS: "setup"}
# Substrings of pyghmi errors worth one more try: no answer, a dropped session, a busy BMC.
_TRANSIENT = ("timeout", "timed out", "no longer connected", "unable to establish",
              "busy", "session disconnected", "temporarily")
_CHASSIS_CYCLE = 0x02  # IPMI chassis control: power cycle


def make_executor(max_workers: int = 8) -> ThreadPoolExecutor:
    """The pool BMC commands run in. Size it at least to the limiter's session cap, plus
    room for calls abandoned after a timeout that pyghmi is still finishing."""
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vaq-ipmi")


class BmcLimiter:
    """Per-peer BMC admission: at most `max_sessions` commands in flight across all BMCs, one
    at a time per BMC, and `min_interval` seconds between two commands to the same BMC.

    A slot is released when the worker thread really finishes, not when the caller gives up
    on it, so a timed-out call still counts until pyghmi lets go of its session."""

    def __init__(self, max_sessions: int = 4, min_interval: float = 0.5,
                 sessions: asyncio.Semaphore | None = None) -> None:
        self.max_sessions = max_sessions
        self.min_interval = min_interval
        self._sessions = sessions if sessions is not None else asyncio.Semaphore(max_sessions)
        self._per_bmc: dict[tuple[str, int], asyncio.Lock] = {}
        self._last: dict[tuple[str, int], float] = {}

    @classmethod
    def sharing(cls, sessions: asyncio.Semaphore) -> BmcLimiter:
        """The limiter built around a peer's plain session semaphore (the one its Redfish
        drivers take too), the same one for every IPMI driver given that semaphore, so the
        per-BMC order and interval hold across drivers as well."""
        limiter = _SHARED.get(sessions)
        if limiter is None:
            limiter = _SHARED[sessions] = cls(max_sessions=0, sessions=sessions)
        return limiter

    async def acquire(self, key: tuple[str, int]) -> None:
        lock = self._per_bmc.setdefault(key, asyncio.Lock())
        await lock.acquire()
        try:
            wait = self._last.get(key, 0.0) + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._sessions.acquire()
        except BaseException:
            lock.release()
            raise

    def release(self, key: tuple[str, int]) -> None:
        self._last[key] = time.monotonic()
        self._sessions.release()
        self._per_bmc[key].release()


_SHARED: weakref.WeakKeyDictionary[asyncio.Semaphore, BmcLimiter] = weakref.WeakKeyDictionary()


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, (PermissionError, FileNotFoundError)):
        return True
    if isinstance(exc, pyghmi_exc.IpmiException):
        text = str(exc.args[0] if exc.args else "").lower()
        return not text or text == "none" or any(t in text for t in _TRANSIENT)
    return False


class BeforeFailed(Exception):
    """What a `before` hook raised, carried past the retry loop unchanged."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _checked(result: Any) -> Any:
    """pyghmi returns some errors as {'error': ...} instead of raising them."""
    if isinstance(result, dict) and "error" in result:
        raise pyghmi_exc.IpmiException(result["error"])
    return result


def _bootdev(target: BmcTarget, device: BootDevice | str) -> str:
    """pyghmi's name for a boot device; a PowerError for one it has none for."""
    try:
        return _BOOTDEV[BootDevice(device)]
    except ValueError:
        raise PowerError(target, "set boot device", f"unknown boot device {device!r}") from None


def _on_or_cycle(c: Command, state: str | None) -> str:
    """Power on a host that is off, else cycle it: chassis control 0x02 is the standard
    power cycle (pyghmi has none), which BMCs refuse for a host that is off."""
    if state == "off":
        _checked(c.set_power("on"))
        return "on"
    _checked(c.raw_command(netfn=0, command=2, data=[_CHASSIS_CYCLE]))
    return "cycle"


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, pyghmi_exc.IpmiException):
        text = exc.args[0] if exc.args else None
        return str(text) if text else "no answer from the BMC (IPMI session timed out)"
    return f"{type(exc).__name__}: {exc}"


class IpmiDriver(PowerDriver):
    def __init__(self, target: BmcTarget, credentials: BmcCredentials, executor: Executor,
                 limiter: BmcLimiter | asyncio.Semaphore, timeout: float = 20.0,
                 retries: int = 2, retry_delay: float = 1.0) -> None:
        super().__init__(target)
        self._credentials = credentials
        self._executor = executor
        if isinstance(limiter, asyncio.Semaphore):
            limiter = BmcLimiter.sharing(limiter)
        self._limiter = limiter
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self._key = (target.address, target.port or 623)

    # -- the blocking side (worker threads) ------------------------------------------------

    def _session_call(self, op: Callable[[Command], T]) -> T:
        """One BMC session: log in, run `op`, log out. Runs in a worker thread."""
        cmd = Command(bmc=self.target.address, userid=self._credentials.user,
                      password=self._credentials.password, port=self.target.port or 623)
        try:
            return _checked(op(cmd))
        finally:
            sess = cmd.ipmi_session
            try:
                sess.logout()
            except Exception:  # noqa: BLE001 - a failed logout must not hide the result
                log.debug("ipmi_logout_failed", bmc=self.target.address)
            # pyghmi 1.6 leaves a logged-out session registered as "initting" under its
            # (bmc, user, password, port, kg) key and hands it to the next Command, which
            # then fails inside pyghmi; forget it so the next command logs in afresh.
            for key, value in list(_Session.initting_sessions.items()):
                if value is sess:
                    _Session.initting_sessions.pop(key, None)

    # -- the async side ------------------------------------------------------------------------

    async def _once(self, op: Callable[[Command], T],
                    before: Callable[[], Awaitable[None]] | None = None) -> T:
        loop = asyncio.get_running_loop()
        await self._limiter.acquire(self._key)
        try:
            if before is not None:
                try:
                    await before()
                except Exception as exc:
                    raise BeforeFailed(exc) from exc
            fut = loop.run_in_executor(self._executor, self._session_call, op)
        except BaseException:
            self._limiter.release(self._key)
            raise
        fut.add_done_callback(lambda _f: self._limiter.release(self._key))
        return await asyncio.wait_for(asyncio.shield(fut), self.timeout)

    async def _run(self, operation: str | Callable[[], str], op: Callable[[Command], T],
                   retry: bool | Callable[[], bool] = True,
                   before: Callable[[], Awaitable[None]] | None = None) -> T:
        """`retry=False` for commands that must not run twice: after a lost answer we cannot
        tell whether the BMC already did it; a callable says whether a retry is still safe
        (nothing that must not run twice was sent yet). A callable `operation` names what
        was under way when it failed. `before`: awaited once, holding the BMC's slot, just
        before the first attempt's session; what it raises is raised as is."""
        attempts = 1 + max(0, self.retries) if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self._once(op, before if attempt == 1 else None)
            except BeforeFailed as exc:
                raise exc.cause from None
            except Exception as exc:  # every failure becomes a PowerError
                doing = operation() if callable(operation) else operation  # this attempt's
                if attempt < attempts and _is_transient(exc) and (
                        not callable(retry) or retry()):
                    log.info("ipmi_retry", bmc=self.target.address, host=self.target.host,
                             operation=doing, attempt=attempt,
                             reason=_reason(exc, self.timeout))
                    await asyncio.sleep(self.retry_delay * attempt)
                    continue
                raise PowerError(self.target, doing, _reason(exc, self.timeout)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def status(self) -> PowerState:
        result: dict[str, Any] = await self._run("power status", lambda c: c.get_power())
        state = result.get("powerstate")
        return PowerState(state) if state in ("on", "off") else PowerState.UNKNOWN

    async def on(self) -> None:
        await self._run("power on", lambda c: c.set_power("on"))

    async def off(self) -> None:
        await self._run("power off", lambda c: c.set_power("off"))

    async def soft_off(self) -> None:
        await self._run("soft power off", lambda c: c.set_power("shutdown"))

    async def cycle(self) -> None:
        def op(c: Command) -> str:  # the state is read in the same session
            return _on_or_cycle(c, c.get_power().get("powerstate"))

        await self._run("power cycle", op, retry=False)  # twice would cycle the host twice

    async def boot_into(self, device: BootDevice | str = BootDevice.PXE,
                        before: Callable[[], Awaitable[None]] | None = None) -> str:
        """Boot device, power status and power on (or cycle) in one session: a login costs
        a BMC more than a command (several round trips, a session slot, our per-BMC
        interval), and a rollout used to pay three per machine and stage. Retried while
        nothing but the boot device and the status went out; once the power command may
        have, never (a lost answer would otherwise cycle the host twice)."""
        bootdev = _bootdev(self.target, device)
        phase = [f"set boot device {bootdev}"]
        powered: list[bool] = []

        def op(c: Command) -> str:
            phase[0] = f"set boot device {bootdev}"
            _checked(c.set_bootdev(bootdev, persist=False))
            phase[0] = "power status"
            state = _checked(c.get_power()).get("powerstate")
            phase[0] = "power on" if state == "off" else "power cycle"
            powered.append(True)  # from here on, not retried
            return _on_or_cycle(c, state)

        return await self._run(lambda: f"boot from {device} ({phase[0]})", op,
                               retry=lambda: not powered, before=before)

    async def set_next_boot(self, device: BootDevice | str = BootDevice.PXE,
                            persistent: bool = False, uefi: bool | None = None) -> None:
        bootdev = _bootdev(self.target, device)
        kwargs: dict[str, Any] = {"persist": persistent}
        if uefi is not None:
            kwargs["uefiboot"] = uefi
        await self._run(f"set boot device {bootdev}",
                        lambda c: c.set_bootdev(bootdev, **kwargs))


def make_driver(target: BmcTarget, credentials: BmcCredentials,
                resources: DriverResources) -> IpmiDriver:
    """The registry's entry for `type: ipmi` (see `base.DRIVERS`)."""
    return IpmiDriver(target, credentials, resources.executor, resources.limiter)
