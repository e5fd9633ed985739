"""The peer's power control: a driver per host, built from what the applied revision says of
its BMC and the credentials the peer's secrets file holds under the name the SoT gives.

One manager per peer, so the cap on concurrent BMC sessions and the thread pool for blocking
IPMI calls are shared by every caller (the API and the workflow engine). Hardware
actions are the leader's: each is written to Raft as an intent before it runs and as
a result after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from appliance.power.base import (
    BmcTarget,
    BootDevice,
    DriverResources,
    PowerDriver,
    PowerError,
    make_driver,
)
from appliance.power.secrets import BmcSecrets, load_bmc_secrets
from appliance.sot.loader import HostEntry

log = structlog.get_logger("vaquero.power")

ACTIONS = ("status", "on", "off", "soft_off", "cycle", "pxe", "pxe_persistent", "pxe_boot")


class NoBmc(LookupError):
    """The host declares no BMC: it can only be powered by hand."""


def target_for(entry: HostEntry) -> BmcTarget:
    """Where the host's BMC is, from its SoT entry; NoBmc when it declares none."""
    iface = entry.host.bmc_interface()
    if iface is None or iface.bmc is None:
        raise NoBmc(f"host {entry.host.name!r} declares no BMC interface; power it by hand")
    bmc = iface.bmc
    return BmcTarget(host=entry.host.name, address=bmc.address or str(iface.ipv4),
                     credentials=bmc.credentials, type=bmc.type, port=bmc.port,
                     system_id=bmc.system_id, verify_tls=bmc.verify_tls)


class PowerManager:
    """The peer's `PowerControl`: a driver per action, from the registry by BMC type."""

    def __init__(self, secrets_file: Path | None, max_sessions: int = 8) -> None:
        self.secrets: BmcSecrets | None = None
        if secrets_file is not None:
            self.secrets = load_bmc_secrets(secrets_file)
        self.limiter = asyncio.Semaphore(max_sessions)
        self.executor = ThreadPoolExecutor(max_sessions, thread_name_prefix="bmc")

    def driver(self, entry: HostEntry) -> PowerDriver:
        """A driver for the host's BMC, with its credentials; close it after use."""
        target = target_for(entry)
        if self.secrets is None:
            raise PowerError(target, "credentials", "the peer config names no BMC secrets file")
        credentials = self.secrets.lookup(target.credentials)
        return make_driver(target, credentials, DriverResources(self.limiter, self.executor))

    async def run(self, entry: HostEntry, action: str,
                  before: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Run one action; returns {host, action, state?, done?}. Raises PowerError or
        NoBmc. `before`: see `PowerDriver.boot_into` (pxe_boot only)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown power action {action!r} (one of {', '.join(ACTIONS)})")
        driver = self.driver(entry)
        try:
            if action == "status":
                return {"host": entry.host.name, "action": action,
                        "state": str(await driver.status())}
            if action == "pxe_boot":
                done = await driver.boot_into(BootDevice.PXE, before=before)
                log.info("power.action", host=entry.host.name, action=action, done=done,
                         bmc=driver.target.label)
                return {"host": entry.host.name, "action": action, "done": done}
            if action in ("pxe", "pxe_persistent"):
                await driver.set_next_boot(BootDevice.PXE, persistent=action == "pxe_persistent")
            else:
                await getattr(driver, action)()
            log.info("power.action", host=entry.host.name, action=action,
                     bmc=driver.target.label)
            return {"host": entry.host.name, "action": action}
        finally:
            await driver.close()

    def close(self) -> None:
        """Stop the BMC worker threads (blocking calls in flight are abandoned)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
