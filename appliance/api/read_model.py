"""What the API shows of this peer beyond the replicated state: the applied revision's facts
about a host, the sites it declares, the boot network as this peer serves it, and power.

Kept out of the peer's wiring so the process that starts things does not also answer
questions about them: the peer hands over where its current boot table is and what it
started, and the API reads through this. Everything is read at request time (the table is
swapped in one reference when a revision is applied).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.config import PeerConfig
from appliance.errors import ApiError
from appliance.netboot.boottable import BootTable
from appliance.netboot.progress import LocalProgress, ReplicatedProgress
from appliance.power.base import PowerError
from appliance.power.manager import NoBmc, PowerManager

if TYPE_CHECKING:
    from appliance.cluster import Cluster

__all__ = ["PeerReadModel", "PowerActions"]


class PeerReadModel:
    """The API's read model of one peer (see the module docstring)."""

    def __init__(self, config: PeerConfig, table: Callable[[], BootTable | None],
                 progress: ReplicatedProgress, local_progress: LocalProgress,
                 http_port: Callable[[], int],
                 source_info: Callable[[], dict[str, Any] | None]) -> None:
        self.config = config
        self._table = table
        self._progress = progress
        self._local_progress = local_progress
        self._http_port = http_port
        self._source_info = source_info

    def host_facts(self, name: str) -> dict[str, Any] | None:
        """What the applied revision says of a host, and how far this peer saw it get."""
        table = self._table()
        if table is None or name not in table.hosts:
            return None
        entry = table.hosts[name]
        record = self._progress.record(name)
        return {
            "site": entry.site, "cluster": entry.cluster, "workflow": entry.host.workflow,
            "never_provision": entry.host.never_provision, "stages": table.stages(name),
            "stages_done_here": record.done if record else 0,
            "interfaces": [{"type": i.type, "mac": i.mac, "ipv4": str(i.ipv4),
                            "subnet": i.subnet} for i in entry.host.interfaces],
            "revision": table.sha,
        }

    def host_names(self) -> list[str]:
        table = self._table()
        return list(table.hosts) if table is not None else []

    def local_done(self) -> dict[str, int]:
        """Stages done as this peer serves them, for the hosts it holds local reports of."""
        out = {}
        for name in self._local_progress.hosts():
            record = self._progress.record(name)
            if record is not None and record.done:
                out[name] = record.done
        return out

    def sites(self) -> list[dict[str, Any]]:
        table = self._table()
        if table is None:
            return []
        revision = table.revision
        out = []
        for site in revision.sot.sites.values():
            hosts = sum(1 for e in revision.sot.hosts.values() if e.site == site.id)
            out.append({"id": site.id, "name": site.name, "local": site.id == self.config.site,
                        "hosts": hosts, "peers": [{"name": p.name, "address": str(p.address)}
                                                  for p in site.peers],
                        "subnets": [str(s.cidr) for s in site.subnets],
                        "dhcp_mode": site.netboot.dhcp_mode})
        return out

    def boot_info(self) -> dict[str, Any]:
        """The boot network as this peer serves it (None for what is switched off)."""
        cfg, table, http_port = self.config, self._table(), self._http_port()
        return {
            "interface": cfg.interface,
            "address": table.dhcp.server.next_server if table else None,
            "http_port": http_port or None,
            "api_port": cfg.api.port or http_port or None,
            "tftp_port": cfg.tftp.port if cfg.tftp.enabled else None,
            "dhcp_port": cfg.dhcp.port if cfg.dhcp.enabled else None,
            "proxy_port": (cfg.dhcp.proxy_port if cfg.dhcp.enabled and table
                           and table.site.netboot.dhcp_mode == "proxy" else None),
            "dhcp_mode": table.site.netboot.dhcp_mode if table else None,
            "revision": table.sha if table else None,
            "mode": "source" if cfg.source is not None else "sot",
            "source": self._source_info(),
        }

    def api_url(self) -> str:
        """The URL other peers and operators reach this peer's API at."""
        cfg = self.config
        if cfg.api.url:
            return cfg.api.url.rstrip("/")
        host = (self.boot_info()["address"] or
                (str(cfg.address) if cfg.address else None) or
                cfg.raft.address.rpartition(":")[0].strip("[]") or "127.0.0.1")
        return f"http://{host}:{cfg.api.port or self._http_port()}"


class PowerActions:
    """Power through the API. Reads on any peer; actions only on the leader, each logged as
    an intent before it runs and as a result after (DESIGN.md). Every refusal is an
    ApiError: no such host 404, no BMC 409, the BMC failed 502."""

    def __init__(self, cluster: Cluster, manager: PowerManager,
                 table: Callable[[], BootTable | None]) -> None:
        self.cluster = cluster
        self.manager = manager
        self._table = table

    async def __call__(self, name: str, action: str) -> dict[str, Any]:
        table = self._table()
        if table is None or name not in table.hosts:
            raise ApiError(404, "not_found", f"no host {name!r} in the applied revision")
        entry = table.hosts[name]
        try:
            if action == "status":
                return await self.manager.run(entry, action)
            intent = await self.cluster.record_intent(name, f"power.{action}",
                                                      revision=table.sha)
            try:
                result = await self.manager.run(entry, action)
            except Exception as exc:
                await self.cluster.record_result(intent, False, str(exc)[:1000])
                raise
        except NoBmc as exc:
            raise ApiError(409, "no_bmc", str(exc)) from None
        except PowerError as exc:
            raise ApiError(502, "bmc_error", str(exc)) from None
        done = result.get("done", action)  # pxe_boot: "on" or "cycle", as the workflow says
        await self.cluster.record_result(intent, True, f"power {done}")
        return {**result, "intent": intent}
