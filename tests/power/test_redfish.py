"""RedfishDriver against a real Redfish service: sushy-tools' emulator (fake system driver,
no libvirt), over HTTPS on loopback with a self-signed certificate and a bcrypt users file."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.power.base import BmcCredentials, BmcTarget, PowerError, PowerState
from appliance.power.redfish import RedfishDriver

pytest.importorskip(
    "sushy_tools",
    reason="sushy-tools (Redfish emulator) not installed: add it to the test extras",
)
bcrypt = pytest.importorskip("bcrypt")

USER = "vaquero"
PASSWORD = "s3cret-Redfish-pw"
SYSTEMS = [
    {"uuid": "11111111-1111-4111-8111-111111111111", "name": "node-a", "power_state": "Off",
     "nics": [{"mac": "52:54:00:00:00:0a", "ip": "198.18.0.10"}]},
    {"uuid": "22222222-2222-4222-8222-222222222222", "name": "node-b", "power_state": "Off",
     "nics": [{"mac": "52:54:00:00:00:0b", "ip": "198.18.0.11"}]},
]
SYS_A = SYSTEMS[0]["uuid"]
SYS_B = SYSTEMS[1]["uuid"]

# The fake driver applies each power transition at int(now) + random.randint(1, 11), like slow
# hardware. Pin the delay to 2 (applied 1 to 2 s later) so the test stays short and a state
# read right after an action still sees the state before the transition lands.
LAUNCH = (
    "import random, sys; random.randint = lambda a, b: a + 1; "
    "from sushy_tools.emulator.main import main; sys.exit(main())"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-bmc")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "bmc.crt", tmp / "bmc.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


@contextlib.contextmanager
def _emulator(tmp: Path, systems: list[dict]) -> Iterator[int]:
    """Run sushy-emulator on loopback over HTTPS with basic auth; yield its port."""
    cert, key = _self_signed(tmp)
    users = tmp / "users"
    users.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
    port = _free_port()
    conf = tmp / "emulator.conf"
    conf.write_text(
        f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
        f"SUSHY_EMULATOR_LISTEN_PORT = {port}\n"
        f"SUSHY_EMULATOR_SSL_CERT = {str(cert)!r}\n"
        f"SUSHY_EMULATOR_SSL_KEY = {str(key)!r}\n"
        f"SUSHY_EMULATOR_AUTH_FILE = {str(users)!r}\n"
        f"SUSHY_EMULATOR_STATE_DIR = {str(tmp / 'state')!r}\n"
        f"SUSHY_EMULATOR_FAKE_DRIVER = True\n"
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
    )
    log = (tmp / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "--config", str(conf), "--fake"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": str(tmp)},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "emulator.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "emulator did not listen within 30 s"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def bmc_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with _emulator(tmp_path_factory.mktemp("sushy"), SYSTEMS) as port:
        yield port


def _driver(port: int, *, system_id: str | None = SYS_A, password: str = PASSWORD,
            verify_tls: bool = False, timeout: float = 20.0) -> RedfishDriver:
    target = BmcTarget(host="node-a", address="127.0.0.1", credentials="bmc-a",
                       type="redfish", port=port, system_id=system_id, verify_tls=verify_tls)
    return RedfishDriver(target, BmcCredentials(USER, password), timeout=timeout,
                         connect_timeout=5.0)


async def _wait_state(driver: RedfishDriver, want: PowerState) -> None:
    """The emulator applies a transition about a second later, like a BMC: poll, bounded."""
    deadline = time.monotonic() + 20
    while (state := await driver.status()) is not want:
        assert time.monotonic() < deadline, f"still {state}, wanted {want}"
        await asyncio.sleep(0.25)


async def _raw_system(driver: RedfishDriver) -> dict:
    return await driver._request("test", "GET", f"/redfish/v1/Systems/{SYS_A}")


async def test_discovery_needs_system_id_when_several(bmc_port: int) -> None:
    driver = _driver(bmc_port, system_id=None)
    try:
        with pytest.raises(PowerError, match="found 2 systems"):
            await driver.status()
    finally:
        await driver.close()


async def test_discovery_of_the_only_system(tmp_path: Path) -> None:
    with _emulator(tmp_path, SYSTEMS[1:]) as port:
        driver = _driver(port, system_id=None)
        try:
            assert await driver.status() is PowerState.OFF
            assert driver._system_path == f"/redfish/v1/Systems/{SYS_B}"
        finally:
            await driver.close()


async def test_discovery_by_id_and_status(bmc_port: int) -> None:
    driver = _driver(bmc_port, system_id=SYS_B)
    try:
        assert await driver.status() is PowerState.OFF
        assert driver._system_path == f"/redfish/v1/Systems/{SYS_B}"
    finally:
        await driver.close()


@pytest.mark.slow
async def test_power_transitions_change_emulated_state(bmc_port: int) -> None:
    driver = _driver(bmc_port)
    try:
        await driver.on()
        await _wait_state(driver, PowerState.ON)
        await driver.on()  # idempotent: already on
        assert await driver.status() is PowerState.ON

        # The emulator offers no PowerCycle: the driver falls back to ForceRestart,
        # which the fake shows as Off at once, then On again.
        assert "PowerCycle" not in (await _raw_system(driver))["Actions"][
            "#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"]
        await driver.cycle()
        assert await driver.status() is PowerState.OFF
        await _wait_state(driver, PowerState.ON)

        await driver.off()
        await _wait_state(driver, PowerState.OFF)
        await driver.off()  # idempotent: already off

        await driver.cycle()  # off host: cycle powers it on
        await _wait_state(driver, PowerState.ON)
        await driver.soft_off()
        await _wait_state(driver, PowerState.OFF)
    finally:
        await driver.close()


async def test_set_next_boot_patches_override(bmc_port: int) -> None:
    driver = _driver(bmc_port)
    try:
        await driver.set_next_boot("disk", uefi=False)
        boot = (await _raw_system(driver))["Boot"]
        assert boot["BootSourceOverrideTarget"] == "Hdd"
        assert boot["BootSourceOverrideMode"] == "Legacy"

        await driver.set_next_boot("pxe", persistent=True, uefi=True)
        boot = (await _raw_system(driver))["Boot"]
        assert boot["BootSourceOverrideTarget"] == "Pxe"
        assert boot["BootSourceOverrideMode"] == "UEFI"

        # BiosSetup is not among the emulator's allowable targets: refused before PATCH.
        with pytest.raises(PowerError, match="BiosSetup not offered"):
            await driver.set_next_boot("bios")
        assert (await _raw_system(driver))["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    finally:
        await driver.close()


async def test_wrong_password_is_power_error_without_password(bmc_port: int) -> None:
    wrong = "wrong-Passw0rd-xyz"
    driver = _driver(bmc_port, password=wrong)
    try:
        with pytest.raises(PowerError) as info:
            await driver.status()
    finally:
        await driver.close()
    text = str(info.value) + repr(info.value) + repr(driver._credentials)
    assert "HTTP 401" in text
    assert "127.0.0.1" in text
    assert wrong not in text


async def test_tls_verification_refuses_self_signed(bmc_port: int) -> None:
    driver = _driver(bmc_port, verify_tls=True)
    try:
        with pytest.raises(PowerError, match=r"127\.0\.0\.1") as info:
            await driver.status()
    finally:
        await driver.close()
    assert "Certificate" in str(info.value) or "SSL" in str(info.value)


async def test_silent_bmc_times_out(tmp_path: Path) -> None:
    # A listener that accepts and never answers, like a hung BMC web server.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    driver = _driver(port, timeout=1.0)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(PowerError, match="no answer within 1 s"):
                await driver.status()
    finally:
        await driver.close()
        server.close()
        await server.wait_closed()


async def test_unreachable_bmc_is_power_error() -> None:
    driver = _driver(_free_port(), timeout=2.0)  # nothing listens there
    try:
        with pytest.raises(PowerError, match="ClientConnectorError"):
            await driver.on()
    finally:
        await driver.close()


async def test_limiter_caps_concurrent_operations(bmc_port: int) -> None:
    limiter = asyncio.Semaphore(1)
    driver_a = _driver(bmc_port)
    driver_b = RedfishDriver(driver_a.target, driver_a._credentials, limiter=limiter)
    try:
        await limiter.acquire()
        task = asyncio.create_task(driver_b.status())
        await asyncio.sleep(0.5)
        assert not task.done()  # waits for the slot, not for the BMC
        limiter.release()
        async with asyncio.timeout(20):
            assert await task in (PowerState.ON, PowerState.OFF)
    finally:
        await driver_a.close()
        await driver_b.close()
