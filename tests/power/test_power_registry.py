"""Drivers are found by BMC type in one registry; a type nobody speaks is a clear error."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.power.base import (
    DRIVERS,
    BmcCredentials,
    BmcTarget,
    DriverResources,
    PowerError,
    make_driver,
)
from appliance.power.ipmi import IpmiDriver
from appliance.power.redfish import RedfishDriver


@pytest.fixture
def resources():
    with ThreadPoolExecutor(1) as executor:
        yield DriverResources(asyncio.Semaphore(2), executor)


@pytest.mark.parametrize(("kind", "cls"), [("ipmi", IpmiDriver), ("redfish", RedfishDriver)])
async def test_each_bmc_type_gets_its_driver(kind: str, cls: type,
                                             resources: DriverResources) -> None:
    target = BmcTarget(host="n1", address="198.18.0.9", credentials="lab", type=kind)
    driver = make_driver(target, BmcCredentials("admin", "pw"), resources)
    assert type(driver) is cls and driver.target is target
    await driver.close()


def test_an_unknown_bmc_type_names_itself_and_the_known_ones(
        resources: DriverResources) -> None:
    target = BmcTarget(host="n1", address="198.18.0.9", credentials="lab",
                       type="amt")  # type: ignore[arg-type]
    with pytest.raises(PowerError, match=r"no driver for BMC type 'amt' \(known: ipmi, redfish\)"):
        make_driver(target, BmcCredentials("admin", "secret-pw"), resources)
    assert sorted(DRIVERS) == ["ipmi", "redfish"]
