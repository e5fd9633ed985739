"""Redfish power driver: a plain aiohttp client against `/redfish/v1`.

BMCs are slow and fragile: a reset can take a minute to be acknowledged, so every call gets a
generous timeout (90 s by default, per DESIGN.md), and a shared semaphore can cap how many BMC
sessions the peer holds at once. Every failure becomes a `PowerError` that names the BMC and
carries the BMC's own Redfish message, because that message is what an operator needs; the
password only travels in the Authorization header and is scrubbed from any text we report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from appliance.power.base import (
    BmcCredentials,
    BmcTarget,
    BootDevice,
    DriverResources,
    PowerDriver,
    PowerError,
    PowerState,
)

log = structlog.get_logger("vaquero.power")

DEFAULT_TIMEOUT = 90.0
DEFAULT_CONNECT_TIMEOUT = 15.0

_BOOT_TARGETS = {
    BootDevice.PXE: "Pxe",
    BootDevice.DISK: "Hdd",
    BootDevice.CDROM: "Cd",
    BootDevice.BIOS: "BiosSetup",
}

# Transitional states count as where the host is heading, as Ironic does.
_POWER_STATES = {
    "On": PowerState.ON,
    "PoweringOn": PowerState.ON,
    "Off": PowerState.OFF,
    "PoweringOff": PowerState.OFF,
}

_OK = (200, 201, 202, 204)


class RedfishDriver(PowerDriver):
    """One Redfish BMC, reached over HTTPS with basic auth.

    `session_factory` lets the caller share one aiohttp session (and its connection pool)
    between drivers; such a session belongs to the caller and `close()` leaves it open. Without
    a factory the driver makes its own session on first use and closes it in `close()`.
    `limiter` is held for a whole operation (discovery, read, action), so an Off+On fallback
    counts as one BMC session rather than racing other operations for the slot in between.
    """

    def __init__(
        self,
        target: BmcTarget,
        credentials: BmcCredentials,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        limiter: asyncio.Semaphore | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        super().__init__(target)
        self._credentials = credentials
        # Held as a header value so no aiohttp object carries the password in its repr.
        self._auth_header = aiohttp.encode_basic_auth(credentials.user, credentials.password)
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = False
        self._limiter = limiter
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, connect=min(connect_timeout, timeout)
        )
        port = f":{target.port}" if target.port else ""
        self._base = f"https://{_host_for_url(target.address)}{port}"
        self._system_path: str | None = None

    # -- public operations ---------------------------------------------------------------

    async def status(self) -> PowerState:
        async with _Slot(self._limiter):
            system = await self._system("status")
            return _POWER_STATES.get(system.get("PowerState", ""), PowerState.UNKNOWN)

    async def on(self) -> None:
        async with _Slot(self._limiter):
            system = await self._system("on")
            if _POWER_STATES.get(system.get("PowerState", "")) is PowerState.ON:
                return
            await self._reset("on", system, "On")

    async def off(self) -> None:
        async with _Slot(self._limiter):
            system = await self._system("off")
            if _POWER_STATES.get(system.get("PowerState", "")) is PowerState.OFF:
                return
            await self._reset("off", system, "ForceOff")

    async def soft_off(self) -> None:
        async with _Slot(self._limiter):
            system = await self._system("soft_off")
            if _POWER_STATES.get(system.get("PowerState", "")) is PowerState.OFF:
                return
            await self._reset("soft_off", system, "GracefulShutdown")

    async def cycle(self) -> None:
        async with _Slot(self._limiter):
            system = await self._system("cycle")
            if _POWER_STATES.get(system.get("PowerState", "")) is not PowerState.ON:
                await self._reset("cycle", system, "On")
                return
            allowed = _allowed_resets(system)
            # An absent list means the BMC did not say: try the standard value first.
            if allowed is None or "PowerCycle" in allowed:
                await self._reset("cycle", system, "PowerCycle")
            elif "ForceRestart" in allowed:
                await self._reset("cycle", system, "ForceRestart")
            else:
                await self._reset("cycle", system, "ForceOff")
                await self._wait_off("cycle")
                await self._reset("cycle", system, "On")

    async def set_next_boot(
        self,
        device: BootDevice | str = BootDevice.PXE,
        persistent: bool = False,
        uefi: bool | None = None,
    ) -> None:
        redfish_target = _BOOT_TARGETS[BootDevice(device)]
        async with _Slot(self._limiter):
            path = await self._discover("set_next_boot")
            system, etag = await self._get_with_etag("set_next_boot", path)
            boot = system.get("Boot") or {}
            allowed = boot.get("BootSourceOverrideTarget@Redfish.AllowableValues")
            if allowed is not None and redfish_target not in allowed:
                raise PowerError(
                    self.target,
                    "set_next_boot",
                    f"boot target {redfish_target} not offered (BMC allows {allowed})",
                )
            body: dict[str, Any] = {
                "BootSourceOverrideTarget": redfish_target,
                "BootSourceOverrideEnabled": "Continuous" if persistent else "Once",
            }
            if uefi is not None:
                body["BootSourceOverrideMode"] = "UEFI" if uefi else "Legacy"
            # BMCs that version their resources (iLO, iDRAC) refuse a PATCH without If-Match.
            headers = {"If-Match": etag} if etag else None
            await self._request("set_next_boot", "PATCH", path, json={"Boot": body},
                                headers=headers)
            log.info("redfish_next_boot", bmc=self.target.label, target=redfish_target,
                     persistent=persistent, uefi=uefi)

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    # -- internals -----------------------------------------------------------------------

    async def _discover(self, operation: str) -> str:
        """The system's path: configured, or the single member of the Systems collection.
        Several systems behind one BMC without a configured id is ambiguous: refuse rather
        than power-cycle the wrong blade."""
        if self._system_path is not None:
            return self._system_path
        sid = self.target.system_id
        if sid:
            path = sid if sid.startswith("/redfish/") else f"/redfish/v1/Systems/{sid}"
        else:
            collection = await self._request(operation, "GET", "/redfish/v1/Systems")
            members = [m.get("@odata.id") for m in collection.get("Members", [])]
            members = [m for m in members if m]
            if len(members) != 1:
                raise PowerError(
                    self.target,
                    operation,
                    f"found {len(members)} systems, set system_id to choose one",
                )
            path = members[0]
        self._system_path = path
        return path

    async def _system(self, operation: str) -> dict[str, Any]:
        return await self._request(operation, "GET", await self._discover(operation))

    async def _get_with_etag(self, operation: str, path: str) -> tuple[dict[str, Any], str]:
        etag: list[str] = []
        body = await self._request(operation, "GET", path, etag_out=etag)
        return body, etag[0] if etag else ""

    async def _reset(self, operation: str, system: dict[str, Any], reset_type: str) -> None:
        action = (system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        target = action.get("target") or (
            f"{await self._discover(operation)}/Actions/ComputerSystem.Reset"
        )
        allowed = action.get("ResetType@Redfish.AllowableValues")
        if allowed is not None and reset_type not in allowed:
            raise PowerError(
                self.target, operation,
                f"ResetType {reset_type} not offered (BMC allows {allowed})",
            )
        await self._request(operation, "POST", target, json={"ResetType": reset_type})
        log.info("redfish_reset", bmc=self.target.label, reset_type=reset_type)

    async def _wait_off(self, operation: str, attempts: int = 60, interval: float = 2.0) -> None:
        """After ForceOff, wait (bounded) until the BMC reports Off: some BMCs reject On while
        the host is still powering down."""
        for _ in range(attempts):
            system = await self._system(operation)
            if system.get("PowerState") == "Off":
                return
            await asyncio.sleep(interval)
        raise PowerError(self.target, operation, "host did not report Off after ForceOff")

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = aiohttp.ClientSession()
                self._owns_session = True
        return self._session

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        etag_out: list[str] | None = None,
    ) -> dict[str, Any]:
        session = await self._client()
        url = path if path.startswith(("http://", "https://")) else self._base + path
        try:
            async with session.request(
                method,
                url,
                json=json,
                headers={
                    "Accept": "application/json",
                    "Authorization": self._auth_header,
                    **(headers or {}),
                },
                timeout=self._timeout,
                ssl=True if self.target.verify_tls else False,  # noqa: SIM210 - aiohttp's API
                allow_redirects=False,
            ) as resp:
                if resp.status not in _OK:
                    detail = await _error_detail(resp)
                    raise PowerError(
                        self.target, operation,
                        self._scrub(f"{method} {path}: HTTP {resp.status}{detail}"),
                    )
                if etag_out is not None and resp.headers.get("ETag"):
                    etag_out.append(resp.headers["ETag"])
                if resp.status == 204 or method != "GET":
                    return {}
                try:
                    return await resp.json(content_type=None)
                except ValueError as exc:
                    raise PowerError(self.target, operation,
                                     f"{method} {path}: answer is not JSON") from exc
        except PowerError:
            raise
        except TimeoutError as exc:
            raise PowerError(
                self.target, operation,
                f"{method} {path}: no answer within {self._timeout.total:g} s",
            ) from exc
        except aiohttp.ClientError as exc:
            raise PowerError(
                self.target, operation,
                self._scrub(f"{method} {path}: {type(exc).__name__}: {exc}"),
            ) from exc

    def _scrub(self, text: str) -> str:
        secret = self._credentials.password
        return text.replace(secret, "***") if secret else text


class _Slot:
    """`async with` over an optional semaphore."""

    def __init__(self, limiter: asyncio.Semaphore | None) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()

    async def __aexit__(self, *exc: object) -> None:
        if self._limiter is not None:
            self._limiter.release()


def _allowed_resets(system: dict[str, Any]) -> list[str] | None:
    action = (system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
    return action.get("ResetType@Redfish.AllowableValues")


def _host_for_url(address: str) -> str:
    """IPv6 literals need brackets in a URL."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


async def _error_detail(resp: aiohttp.ClientResponse) -> str:
    """The Redfish extended error message when the BMC sent one (it says *why*: property
    not writable, action not allowed in this state), else the reason phrase."""
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return f" {resp.reason}" if resp.reason else ""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return f" {resp.reason}" if resp.reason else ""
    messages = [
        str(info["Message"])
        for info in err.get("@Message.ExtendedInfo") or []
        if isinstance(info, dict) and info.get("Message")
    ]
    text = "; ".join(messages) or err.get("message") or ""
    return f": {text}" if text else ""


def make_driver(target: BmcTarget, credentials: BmcCredentials,
                resources: DriverResources) -> RedfishDriver:
    """The registry's entry for `type: redfish` (see `base.DRIVERS`)."""
    return RedfishDriver(target, credentials, limiter=resources.limiter)
