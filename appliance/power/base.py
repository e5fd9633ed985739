"""The power interfaces: `PowerControl`, what the workflow engine, the host runners and the
API need from a peer's power (one action on one host), and `PowerDriver`, what that needs
from any BMC protocol (one BMC).

Drivers are async; the protocol modules (`ipmi`, `redfish`) decide how they do I/O, and are
found by BMC type in `DRIVERS` (a module per protocol, imported on first use, each with a
`make_driver`). Errors always name the BMC, never the password, because they end up in
events and logs that operators read.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import importlib
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from appliance.sot.loader import HostEntry


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class BootDevice(enum.StrEnum):
    """Next-boot targets we use; PXE is the one that matters for provisioning."""

    PXE = "pxe"
    DISK = "disk"
    CDROM = "cdrom"
    BIOS = "bios"


@dataclass(frozen=True)
class BmcCredentials:
    """A user and password from the peer's secrets file. The repr hides the password so a
    stray log line or traceback cannot leak it."""

    user: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"BmcCredentials(user={self.user!r}, password='***')"

    __str__ = __repr__


@dataclass(frozen=True)
class BmcTarget:
    """Where a host's BMC is, as the SoT declares it (credentials by name only)."""

    host: str
    address: str
    credentials: str
    type: Literal["ipmi", "redfish"] = "ipmi"
    port: int | None = None  # default: 623 for IPMI, 443 for Redfish
    system_id: str | None = None  # Redfish system id; found if absent
    verify_tls: bool = True

    @property
    def label(self) -> str:
        """How errors and logs name this BMC."""
        port = f":{self.port}" if self.port else ""
        return f"{self.type} BMC {self.address}{port} (host {self.host})"


class PowerError(Exception):
    """A BMC command failed. The message names the BMC and the operation, never a secret."""

    def __init__(self, target: BmcTarget, operation: str, reason: str) -> None:
        self.target = target
        self.operation = operation
        self.reason = reason
        super().__init__(f"{target.label}: {operation} failed: {reason}")


class PowerDriver(abc.ABC):
    """One BMC. Every method is idempotent where the hardware allows it: `on()` on a host
    that is already on succeeds, so a new Raft leader can replay an intent safely."""

    def __init__(self, target: BmcTarget) -> None:
        self.target = target

    @abc.abstractmethod
    async def status(self) -> PowerState: ...

    @abc.abstractmethod
    async def on(self) -> None: ...

    @abc.abstractmethod
    async def off(self) -> None:
        """Hard power off (no OS shutdown)."""

    @abc.abstractmethod
    async def soft_off(self) -> None:
        """Ask the OS to shut down (ACPI power button); returns once the BMC accepted it."""

    @abc.abstractmethod
    async def cycle(self) -> None:
        """Power the host on if it is off, else reset it: either way it boots again."""

    @abc.abstractmethod
    async def set_next_boot(self, device: BootDevice | str = BootDevice.PXE,
                            persistent: bool = False, uefi: bool | None = None) -> None:
        """Set the boot device for the next boot (or every boot when `persistent`).
        `uefi=None` leaves the BIOS/UEFI mode as the BMC has it."""

    async def boot_into(self, device: BootDevice | str = BootDevice.PXE,
                        before: Callable[[], Awaitable[None]] | None = None) -> str:
        """Boot the host once from `device`: set it as the next boot, then power the host on
        if it is off, else cycle it; returns "on" or "cycle". This is the workflow's one
        power step per stage. A driver whose protocol pays per session (IPMI logs in for
        each) does it all in one; this default makes the separate calls. `before` is awaited
        once, just before the first command goes out (after any wait for a BMC slot): the
        workflow records its intent there, so a step still queued when its leader dies was
        never recorded, and the next leader runs it instead of waiting for evidence."""
        if before is not None:
            await before()
        await self.set_next_boot(device)
        if await self.status() == PowerState.OFF:
            await self.on()
            return "on"
        await self.cycle()  # on if it went off meanwhile, else reset
        return "cycle"

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release sessions or connections; the default driver holds none."""


class PowerControl(Protocol):
    """A peer's power, as its callers use it (`appliance.power.manager.PowerManager`)."""

    async def run(self, entry: HostEntry, action: str,
                  before: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Run one action (status, on, off, soft_off, cycle, pxe, pxe_persistent, pxe_boot)
        on the host's BMC: {host, action, state?, done?}; `pxe_boot` (next boot PXE, then
        on or cycle) says in `done` which of "on" and "cycle" it did. `before` (pxe_boot
        only): see `PowerDriver.boot_into`. Raises PowerError, or LookupError when the host
        declares no BMC."""
        ...


@dataclass(frozen=True)
class DriverResources:
    """What every driver of one peer shares: a cap on concurrent BMC sessions, and the
    thread pool for protocols whose library blocks (pyghmi)."""

    limiter: asyncio.Semaphore
    executor: Executor


# BMC type (the SoT's `bmc.type`) -> the module that speaks it. Each module has
# `make_driver(target, credentials, resources) -> PowerDriver`; importing it on first use
# keeps pyghmi out of peers that only speak Redfish.
DRIVERS: dict[str, str] = {
    "ipmi": "appliance.power.ipmi",
    "redfish": "appliance.power.redfish",
}


def make_driver(target: BmcTarget, credentials: BmcCredentials,
                resources: DriverResources) -> PowerDriver:
    """The driver for `target.type`; a type without a driver is a PowerError naming it."""
    module = DRIVERS.get(target.type)
    if module is None:
        raise PowerError(target, "driver", f"no driver for BMC type {target.type!r} "
                         f"(known: {', '.join(sorted(DRIVERS))})")
    driver: PowerDriver = importlib.import_module(module).make_driver(
        target, credentials, resources)
    return driver
