"""Generate a large, valid, realistic SoT, and realistic changed copies of it.

Why: the SoT pipeline (load, validate, render every stage, plan) must stay fast at the
scale of a real fleet, and tests of the plan need a change whose consequences are known in
advance. Hand-written examples stop at tens of hosts; this writes thousands in seconds.

The templates, OS and boot definitions are those of `sot_examples/multisite` (copied, so
the generated SoT renders what a real team's would), plus one Flatcar node-pool template.
Sites, cluster files and workflows are generated; output is a pure function of
(hosts, sites, seed, mutation): same arguments, same bytes.

    python tools/gen_sot.py OUT --hosts 10000 --sites 2 --seed 1
    python tools/gen_sot.py OUT2 --hosts 10000 --sites 2 --seed 1 --mutate mixed --json

Addresses: 198.18.0.0/15 is split into one block per site; each block holds the boot
subnet (half), the BMC subnet (a quarter) and the storage subnet (a quarter), so two sites
hold 16,000+ hosts each. MACs are unique (a running counter in the low 24 bits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "sot_examples" / "multisite"
SITE_CODES = ["fra1", "ams1", "lon1", "par1", "waw1", "mad1", "sto1", "dub1"]
RANGE = IPv4Network("198.18.0.0/15")
FIRST_HOST = 16  # boot/oob offsets below this are the gateway, peers, VIP and resolvers
POOL_SIZE = 250  # hosts per node-pool cluster, as teams split them for blast radius
MUTATIONS = ("bump-os", "change-ip", "add-hosts", "remove-hosts", "mixed", "edit-template",
             "ten-hosts")

# kind -> (stages (boot id or None for the local first boot), role, hardware model)
KINDS: dict[str, tuple[tuple[str | None, ...], str, str]] = {
    "etcd": (("flatcar-etcd-install", None), "etcd", "PowerEdge R650"),
    "control-plane": (("fcos-control-plane-install", None), "control-plane", "PowerEdge R650"),
    "flatcar": (("flatcar-node-install", None), "node", "PowerEdge R6615"),
    "ubuntu": (("toolbox-firmware", "ubuntu-worker-install", None), "worker", "SYS-1029U-TN10RT"),
    "storage": (("toolbox-raid", "rocky-storage-install", None), "ceph-osd", "PowerEdge R650"),
    "infra": (("debian-infra-install", None), "bastion", "SYS-1029U-TN10RT"),
}

FLATCAR_NODE_BOOT = """\
# Generated SoT: Flatcar node pools (Ignition), sharing the snippets of the etcd template.
id: {boot_id}
name: Flatcar PXE live image installs a container host
operating_system: {os_id}
unattended:
  type: ignition
  use: flatcar-node-install.ign
metadata:
  etcd_image: quay.io/coreos/etcd:v3.5.15
"""

FLATCAR_NODE_TEMPLATE = """\
{#- Flatcar node pool: the live image writes Flatcar to disk with the node's final config. -#}
{%- import "snippets/common.j2" as common with context -%}
{%- set disk_config -%}
{
  "ignition": {"version": "3.4.0"},
  "passwd": {% include "snippets/passwd.json" %},
  "storage": {"files": [{% include "snippets/network-files.json" %}]},
  "systemd": {"units": [{{ common.first_boot_phone_home_unit() }}]}
}
{%- endset -%}
{
  "ignition": {"version": "3.4.0"},
  "passwd": {% include "snippets/passwd.json" %},
  "storage": {"files": [{"path": "/opt/vaquero/disk.ign", "mode": 384,
                         "contents": {"source": {{ common.data_url(disk_config) }}}}]},
  "systemd": {"units": [
    {{ common.install_unit("/usr/bin/flatcar-install -d " ~ host.metadata.disks.os
       ~ " -C stable -V " ~ os.major_version ~ "." ~ os.minor_version ~ " -b "
       ~ site.metadata.mirror ~ "/flatcar/amd64-usr -i /opt/vaquero/disk.ign") }}
  ]}
}
"""

NEXT_FLATCAR = ("4152.2.0", "flatcar-4152.2.0")


@dataclass
class Host:
    name: str
    serial: str
    uuid: str
    offset: int  # address offset inside the site's subnets
    mac: str
    bmc_mac: str
    storage_mac: str | None
    rack: str
    rack_unit: int


@dataclass
class Cluster:
    site: str
    name: str
    kind: str
    hosts: list[Host]
    boot_overrides: dict[str, str] = field(default_factory=dict)
    planned: int = 0  # the size its rollout policy was written for (kept when hosts change)

    def __post_init__(self) -> None:
        self.planned = self.planned or len(self.hosts)

    @property
    def workflow(self) -> str:
        return f"{self.site}-{self.name}"


@dataclass
class Site:
    id: str
    index: int
    block: IPv4Network
    peers: int

    @property
    def boot(self) -> IPv4Network:
        return next(self.block.subnets(1))

    @property
    def oob(self) -> IPv4Network:
        return list(self.block.subnets(2))[2]

    @property
    def storage(self) -> IPv4Network:
        return list(self.block.subnets(2))[3]


@dataclass
class Spec:
    """The whole generated SoT before it is written; mutations edit it."""

    sites: list[Site]
    clusters: list[Cluster]
    rng: random.Random
    counter: int = 0
    extra_os: list[str] = field(default_factory=list)
    ip_overrides: dict[str, int] = field(default_factory=dict)  # host name -> boot offset
    edit_template: bool = False  # the Flatcar node-pool template is changed

    def new_host(self, site: Site, cluster: str, number: int, offset: int, storage: bool) -> Host:
        self.counter += 1
        c, salt = self.counter, site.index
        mac = f"02:5a:{salt:02x}:{c >> 16 & 255:02x}:{c >> 8 & 255:02x}:{c & 255:02x}"
        alnum = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
        return Host(
            name=f"{site.id}-{cluster}-{number:04d}",
            serial="".join(self.rng.choice(alnum) for _ in range(10)),
            uuid=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            offset=offset, mac=mac,
            bmc_mac="06" + mac[2:], storage_mac=("0a" + mac[2:]) if storage else None,
            rack=f"R{(offset - FIRST_HOST) // 20 + 1:03d}", rack_unit=2 * ((offset % 20) + 1),
        )


def _site_blocks(count: int) -> list[IPv4Network]:
    extra = math.ceil(math.log2(count)) if count > 1 else 0
    return list(RANGE.subnets(extra))[:count]


def _split(n: int) -> list[tuple[str, str, int]]:
    """A site's n hosts -> (cluster name, kind, size): control plane first, then ~10%
    storage, and node pools of at most POOL_SIZE, Ignition and cloud-config half and half."""
    out: list[tuple[str, str, int]] = []
    left = n
    for name, kind, size in (("etcd", "etcd", 3), ("control-plane", "control-plane", 3)):
        take = min(size, left)
        if take:
            out.append((name, kind, take))
            left -= take
    if left >= 100:
        out.append(("infra", "infra", 2))
        left -= 2
    storage = left // 10 if left >= 20 else 0
    rest = left - storage
    flatcar, ubuntu = rest // 2, rest - rest // 2
    for label, kind, total in (("nodes", "flatcar", flatcar), ("workers", "ubuntu", ubuntu),
                               ("ceph", "storage", storage)):
        pools = max(1, math.ceil(total / POOL_SIZE)) if total else 0
        for p in range(pools):
            size = total // pools + (1 if p < total % pools else 0)
            out.append((f"{label}-{p + 1:02d}" if pools > 1 else label, kind, size))
    return out


def build(hosts: int, sites: int = 2, seed: int = 0) -> Spec:
    if not 1 <= sites <= len(SITE_CODES):
        raise ValueError(f"--sites must be 1..{len(SITE_CODES)}")
    blocks = _site_blocks(sites)
    spec = Spec([Site(SITE_CODES[i], i, blocks[i], 5 if i % 2 else 3) for i in range(sites)],
                [], random.Random(seed))
    for i, site in enumerate(spec.sites):
        n = hosts // sites + (1 if i < hosts % sites else 0)
        capacity = site.oob.num_addresses - FIRST_HOST - 2
        if n > capacity:
            raise ValueError(f"{n} hosts do not fit site {site.id} ({capacity} at most)")
        offset = FIRST_HOST
        for name, kind, size in _split(n):
            members = []
            for k in range(size):
                members.append(spec.new_host(site, name, k + 1, offset, kind == "storage"))
                offset += 1
            spec.clusters.append(Cluster(site.id, name, kind, members))
    return spec


# --- mutations -------------------------------------------------------------------------------


def _first(spec: Spec, kind: str, skip: tuple[Cluster, ...] = ()) -> Cluster | None:
    return next((c for c in spec.clusters if c.kind == kind and c not in skip and c.hosts), None)


def mutate(spec: Spec, kind: str) -> dict[str, object]:
    """Apply a realistic change; returns what the plan must show (host names per action)."""
    if kind not in MUTATIONS:
        raise ValueError(f"unknown mutation {kind!r}; use one of {', '.join(MUTATIONS)}")
    expect: dict[str, object] = {"mutation": kind, "reinstall": [], "install": [], "remove": []}
    kinds = ("bump-os", "change-ip", "add-hosts", "remove-hosts") if kind == "mixed" else (kind,)
    bumped = _first(spec, "flatcar") or _first(spec, "etcd")
    workers = [c for c in spec.clusters if c.kind == "ubuntu" and c.hosts]
    grow = workers[-1] if workers else bumped
    shrink = workers[0] if workers else bumped
    if "bump-os" in kinds and bumped is not None:
        # Canary a new Flatcar release on one cluster: a new os + boot, its workflow moves.
        spec.extra_os.append(NEXT_FLATCAR[1])
        install_boot = _stages(bumped)[0]
        bumped.boot_overrides[install_boot] = f"{install_boot}-{NEXT_FLATCAR[0]}"
        expect["bumped_cluster"] = f"{bumped.site}/{bumped.name}"
        expect["bumped_workflow"] = bumped.workflow
        expect["reinstall"] += [h.name for h in bumped.hosts]  # type: ignore[operator]
    if "remove-hosts" in kinds and shrink is not None:
        count = max(1, min(len(shrink.hosts) // 100, len(shrink.hosts) - _min_standing(
            shrink.kind, shrink.planned) - 1))
        removed = shrink.hosts[-count:]
        del shrink.hosts[-count:]
        expect["remove"] += [h.name for h in removed]  # type: ignore[operator]
        expect["removed_from"] = f"{shrink.site}/{shrink.name}"
    if "change-ip" in kinds and shrink is not None and shrink.hosts:
        host = spec.rng.choice(shrink.hosts)
        site = next(s for s in spec.sites if s.id == shrink.site)
        used = {h.offset for c in spec.clusters if c.site == site.id for h in c.hosts}
        free = max(used) + 1000
        while free in used:
            free += 1
        spec.ip_overrides[host.name] = free
        expect["reinstall"] += [host.name]  # type: ignore[operator]
        expect["changed_ip"] = {"host": host.name, "to": str(site.boot[free])}
    if kind == "edit-template":
        # One template edit: the Flatcar node pools' installed system gets a changed file
        # mode; every host rendered from it has a new config and is reinstalled.
        spec.edit_template = True
        expect["reinstall"] += [h.name for c in spec.clusters  # type: ignore[operator]
                                if c.kind == "flatcar" for h in c.hosts]
    if kind == "ten-hosts":
        # Ten hosts, each in a different cluster file, move to a new address.
        site_of = {s.id: s for s in spec.sites}
        for cluster in [c for c in spec.clusters if c.hosts and c.kind != "infra"][:10]:
            host = cluster.hosts[len(cluster.hosts) // 2]
            used = {h.offset for c in spec.clusters if c.site == cluster.site for h in c.hosts}
            free = max([*used, *spec.ip_overrides.values()]) + 1000
            spec.ip_overrides[host.name] = free
            expect["reinstall"] += [host.name]  # type: ignore[operator]
            assert free < site_of[cluster.site].boot.num_addresses - 1
    if "add-hosts" in kinds and grow is not None:
        site = next(s for s in spec.sites if s.id == grow.site)
        offset = max(h.offset for c in spec.clusters if c.site == site.id for h in c.hosts) + 1
        count = max(1, len(grow.hosts) // 50)
        start = max(int(h.name.rsplit("-", 1)[1]) for h in grow.hosts) + 1
        added = [spec.new_host(site, grow.name, start + k, offset + k, grow.kind == "storage")
                 for k in range(count)]
        grow.hosts += added
        expect["install"] += [h.name for h in added]  # type: ignore[operator]
        expect["added_to"] = f"{grow.site}/{grow.name}"
    return expect


# --- writing ---------------------------------------------------------------------------------


def _stages(cluster: Cluster) -> tuple[str | None, ...]:
    return KINDS[cluster.kind][0]


def _min_standing(kind: str, members: int) -> int:
    want = {"etcd": 2, "control-plane": 2, "storage": max(1, members * 2 // 3),
            "infra": 0}.get(kind, members // 2)
    return max(0, min(want, members - 1))


def _max_concurrent(kind: str, members: int) -> int:
    if kind in ("etcd", "control-plane", "storage", "infra"):
        return 1
    return max(1, members // 10)


def _depends(cluster: Cluster, spec: Spec) -> list[str]:
    names = {c.name for c in spec.clusters if c.site == cluster.site}
    want = {"control-plane": ["etcd"], "flatcar": ["control-plane"],
            "ubuntu": ["control-plane"]}.get(cluster.kind, [])
    return [f"{cluster.site}-{n}" for n in want if n in names]


def _workflow_yaml(cluster: Cluster, spec: Spec) -> str:
    members = cluster.planned
    lines = [f"# {cluster.site}/{cluster.name}: {len(cluster.hosts)} hosts ({cluster.kind})",
             f"id: {cluster.workflow}", f"name: {cluster.kind} pool {cluster.site}/{cluster.name}",
             "stages:"]
    for i, boot in enumerate(_stages(cluster)):
        if boot is None:
            lines += ["  - name: first-boot", "    local: true", "    timeout: 1200"]
            continue
        name = "install" if i == len(_stages(cluster)) - 2 else boot.split("-")[1]
        lines += [f"  - name: {name}", f"    boot: {cluster.boot_overrides.get(boot, boot)}",
                  "    timeout: 3600"]
    health = {"etcd": ("http", 2381, "/health"), "control-plane": ("tcp", 6443, None),
              "storage": ("http", 9100, "/metrics"), "infra": ("tcp", 22, None)}.get(
        cluster.kind, ("http", 10248, "/healthz"))
    lines += ["rollout:", f"  max_concurrent: {_max_concurrent(cluster.kind, members)}",
              f"  min_standing: {_min_standing(cluster.kind, members)}",
              f"  max_fail: {0 if cluster.kind in ('etcd', 'control-plane', 'storage') else 2}",
              f"  on_change: {'rerender' if cluster.kind == 'infra' else 'reinstall'}",
              "  health:", f"    type: {health[0]}", f"    port: {health[1]}"]
    if health[2]:
        lines.append(f"    path: {health[2]}")
    deps = _depends(cluster, spec)
    if deps:
        lines.append(f"depends_on: [{', '.join(deps)}]")
    return "\n".join(lines) + "\n"


def _env_yaml(site: Site) -> str:
    boot, oob, storage = site.boot, site.oob, site.storage
    peers = "\n".join(f"  - name: {site.id}-vaq-{i}\n    address: {boot[1 + i]}"
                      for i in range(1, site.peers + 1))
    return f"""# Generated site {site.id}: boot {boot}, BMCs {oob}, Ceph {storage}.
id: {site.id}
name: Generated site {site.id}
subnets:
  - id: boot
    cidr: {boot}
    gateway: {boot[1]}
    dns: [{boot[10]}, {boot[11]}]
    ntp: [ntp1.{site.id}.example.net, ntp2.{site.id}.example.net]
    domain: {site.id}.example.net
    lease_time: 43200
    dhcp_options:
      - option: 101
        type: string
        value: Europe/Berlin
  - id: oob
    cidr: {oob}
    gateway: {oob[1]}
    dns: [{boot[10]}, {boot[11]}]
  - id: storage
    cidr: {storage}
    mtu: 9000
peers:
{peers}
netboot:
  boot_url: http://boot.{site.id}.example.net
policy:
  install_new_hosts: true
  approval: manual
metadata:
  timezone: Europe/Berlin
  mirror: http://mirror.{site.id}.example.net
  syslog: {boot[12]}:514
  ssh_authorized_keys:
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGen0example0key0for0benchmarks0only0aaaa ops@example.net
"""


def _host_yaml(host: Host, cluster: Cluster, site: Site, spec: Spec) -> str:
    _, role, model = KINDS[cluster.kind]
    boot_offset = spec.ip_overrides.get(host.name, host.offset)
    storage = cluster.kind == "storage"
    out = [f"name: {host.name}\nworkflow: {cluster.workflow}\nuuid: {host.uuid}\n"
           f"serial: {host.serial}\ninterfaces:\n"
           f"  - type: physical\n    mac: \"{host.mac}\"\n    subnet: boot\n"
           f"    ipv4: {site.boot[boot_offset]}\n"]
    if host.storage_mac:
        out.append(f"  - type: physical\n    mac: \"{host.storage_mac}\"\n    subnet: storage\n"
                   f"    ipv4: {site.storage[host.offset]}\n    ignore_dhcp: true\n")
    bmc = ("      type: ipmi\n      credentials: " + site.id + "-ipmi\n"
           if model.startswith("SYS") else
           "      type: redfish\n      credentials: " + site.id + "-idrac\n"
           "      system_id: System.Embedded.1\n")
    out.append(f"  - type: bmc\n    mac: \"{host.bmc_mac}\"\n    subnet: oob\n"
               f"    ipv4: {site.oob[host.offset]}\n    bmc:\n{bmc}")
    out.append(f"metadata:\n  model: {model}\n  role: {role}\n  rack: {host.rack}\n"
               f"  rack_unit: {host.rack_unit}\n")
    if storage:
        out.append("  raid: {controller: PERC H755, boot_slots: [0, 1]}\n"
                   "  disks: {os: /dev/sda, data: [/dev/sdb, /dev/sdc, /dev/sdd, /dev/sde], "
                   "data_size: 7.68TB}\n")
    else:
        disk = "/dev/sda" if cluster.kind == "infra" else "/dev/nvme0n1"
        out.append(f"  disks: {{os: {disk}}}\n")
    return "".join(out)


def write(spec: Spec, out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    for folder in ("os", "boot", "assets"):
        shutil.copytree(EXAMPLE / folder, out / folder)
    flatcar_os = (EXAMPLE / "os" / "flatcar.yml").read_text()
    old_id = "flatcar-4081.2.0"
    (out / "boot" / "flatcar-node.yml").write_text(
        FLATCAR_NODE_BOOT.format(boot_id="flatcar-node-install", os_id=old_id))
    template = FLATCAR_NODE_TEMPLATE
    if spec.edit_template:
        template = template.replace('"mode": 384', '"mode": 256')
    (out / "assets" / "ignition" / "flatcar-node-install.ign").write_text(template)
    if NEXT_FLATCAR[1] in spec.extra_os:
        version, new_id = NEXT_FLATCAR
        text = flatcar_os.replace("4081.2.0", version)
        text = text.replace('major_version: "4081"', f'major_version: "{version.split(".")[0]}"')
        # New release, new files: the placeholder sums change with the URLs.
        lines = []
        url = ""
        for line in text.splitlines():
            if "url:" in line:
                url = line.split("url:", 1)[1].strip()
            if line.strip().startswith("sha256:"):
                digest = hashlib.sha256(("placeholder:" + url).encode()).hexdigest()
                line = line.split("sha256:")[0] + "sha256: " + digest
            lines.append(line)
        (out / "os" / f"{new_id}.yml").write_text("\n".join(lines) + "\n")
        boots = {b for c in spec.clusters for b in c.boot_overrides.values()}
        for boot_id in sorted(boots):
            src = boot_id.rsplit("-", 1)[0]
            text = (FLATCAR_NODE_BOOT.format(boot_id=boot_id, os_id=new_id)
                    if src == "flatcar-node-install" else
                    (EXAMPLE / "boot" / "etcd.yml").read_text().replace(
                        "id: flatcar-etcd-install", f"id: {boot_id}").replace(old_id, new_id))
            (out / "boot" / f"{boot_id}.yml").write_text(text)
    (out / "workflows").mkdir()
    sites = {s.id: s for s in spec.sites}
    for site in spec.sites:
        (out / "sites" / site.id).mkdir(parents=True)
        (out / "sites" / site.id / "env.yml").write_text(_env_yaml(site))
    for cluster in spec.clusters:
        if not cluster.hosts:
            continue
        site = sites[cluster.site]
        docs = [_host_yaml(h, cluster, site, spec) for h in cluster.hosts]
        header = f"# Generated cluster {cluster.site}/{cluster.name}: {len(docs)} hosts\n"
        (out / "sites" / site.id / f"cluster-{cluster.name}.yml").write_text(
            header + "---\n".join(docs))
        (out / "workflows" / f"{cluster.workflow}.yml").write_text(_workflow_yaml(cluster, spec))


def generate(out: Path, hosts: int, sites: int = 2, seed: int = 0,
             mutation: str | None = None) -> dict[str, object]:
    """Write a SoT (optionally mutated) to `out`; returns a summary and, for a mutation,
    the expected plan (host names per action)."""
    spec = build(hosts, sites, seed)
    expect = mutate(spec, mutation) if mutation else {}
    write(spec, out)
    summary: dict[str, object] = {
        "hosts": sum(len(c.hosts) for c in spec.clusters), "sites": len(spec.sites),
        "clusters": {f"{c.site}/{c.name}": {"kind": c.kind, "hosts": len(c.hosts),
                                            "workflow": c.workflow,
                                            "max_concurrent": _max_concurrent(c.kind, c.planned),
                                            "min_standing": _min_standing(c.kind, c.planned)}
                     for c in spec.clusters if c.hosts},
    }
    if expect:
        summary["expect"] = expect
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output directory (created; must be empty)")
    p.add_argument("--hosts", type=int, required=True)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mutate", choices=MUTATIONS,
                   help="write the SoT after this change (same seed: compare with the original)")
    p.add_argument("--json", action="store_true", help="print the summary and expectations")
    args = p.parse_args(argv)
    if args.hosts < 1:
        p.error("--hosts must be at least 1")
    try:
        summary = generate(args.out, args.hosts, args.sites, args.seed, args.mutate)
    except (ValueError, FileExistsError) as exc:
        print(f"gen_sot: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{args.out}: {summary['hosts']} hosts, {summary['sites']} site(s), "
              f"{len(summary['clusters'])} clusters")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
