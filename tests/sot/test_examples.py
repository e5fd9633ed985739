"""The SoTs we ship and generate are valid, and a plan of a generated change says what it must.

Examples are what users copy first: one that does not validate teaches the wrong thing. The
generator feeds the scale benchmark and the plan tests, so its output must be valid at any
size and its mutations must produce exactly the plan they claim. Everything goes through
the real `vaq-peer` console script, as a user or CI would run it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (REPO / "sot_examples").iterdir() if p.is_dir())
VAQ_PEER = Path(sys.executable).parent / "vaq-peer"
GEN_SOT = REPO / "tools" / "gen_sot.py"


def vaq_peer(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VAQ_PEER, *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)


def gen_sot(out: Path, *args: Any) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-P", GEN_SOT, out, *map(str, args), "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def validate_json(path: Path) -> dict[str, Any]:
    proc = vaq_peer("validate", path, "--json")
    report = json.loads(proc.stdout)
    problems = "\n".join(f"{p['file']}:{p['line']}: {p['message']}" for p in report["problems"])
    assert proc.returncode == 0, f"{path} is not valid:\n{problems}"
    assert report["valid"] is True and report["problems"] == []
    return report


def test_examples_are_found() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"lab", "multisite"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_through_the_cli(example: Path) -> None:
    summary = validate_json(example)["summary"]
    assert summary["hosts"] > 0
    assert summary["renders"] >= summary["hosts"]  # every host has at least one stage


# --- the multi-site example ------------------------------------------------------------------


@pytest.fixture(scope="module")
def multisite() -> dict[str, Any]:
    return validate_json(REPO / "sot_examples" / "multisite")


def render(host: str) -> list[dict[str, Any]]:
    proc = vaq_peer("render", host, "--sot", REPO / "sot_examples" / "multisite", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["stages"]


def test_multisite_has_the_shape_it_documents(multisite: dict[str, Any]) -> None:
    s = multisite["summary"]
    assert s["sites"] >= 2 and s["hosts"] >= 60 and s["clusters"] >= 8
    kinds = {p.parent.name for p in (REPO / "sot_examples" / "multisite" / "assets").glob("*/*")
             if p.is_file()}
    assert {"ignition", "cloud-config", "kickstart", "preseed", "untyped", "ipxe"} <= kinds


def _data_url(source: str) -> str:
    assert source.startswith("data:,")
    return urllib.parse.unquote(source[len("data:,"):])


@pytest.mark.parametrize("host", ["fra1-etcd-01", "ams1-cp-02"])
def test_ignition_installs_a_disk_config_that_reports_the_first_boot(host: str) -> None:
    """The validator checks the served config; the config it embeds for the disk is only
    read at first boot, so check it here: spec 3, and it phones home the local stage."""
    stages = render(host)
    assert [s["config_type"] for s in stages] == ["ignition", None]
    live = json.loads(stages[0]["config"])
    assert live["ignition"]["version"].startswith("3.")
    disk_file = next(f for f in live["storage"]["files"] if f["path"] == "/opt/vaquero/disk.ign")
    disk = json.loads(_data_url(disk_file["contents"]["source"]))
    assert disk["ignition"]["version"].startswith("3.")
    units = {u["name"]: u["contents"] for u in disk["systemd"]["units"]}
    assert f"/phone-home/{host}/2/" in units["vaquero-phone-home.service"]
    install = next(u for u in live["systemd"]["units"] if u["name"] == "vaquero-install.service")
    assert f"/phone-home/{host}/1/" in install["contents"]
    assert stages[1]["ipxe"].rstrip().endswith("exit")  # stage 2 boots the disk


def test_worker_stages_firmware_autoinstall_first_boot() -> None:
    import yaml

    stages = render("fra1-worker-017")
    assert [s["config_type"] for s in stages] == ["untyped", "cloud-config", None]
    assert stages[0]["config"].startswith("#!/bin/bash")
    assert "/phone-home/fra1-worker-017/1/" in stages[0]["config"]
    text = stages[1]["config"]
    assert text.startswith("#cloud-config\n")
    auto = yaml.safe_load(text)["autoinstall"]
    assert auto["version"] == 1
    assert auto["network"]["ethernets"]["boot"]["addresses"] == ["198.18.16.117/24"]
    assert "/phone-home/fra1-worker-017/3/" in json.dumps(auto["user-data"]["runcmd"])
    assert "cloud-config-url=" in stages[1]["ipxe"]


def test_storage_raid_stage_uses_the_custom_ipxe_script() -> None:
    stages = render("ams1-ceph-03")
    assert [s["config_type"] for s in stages] == ["untyped", "kickstart", None]
    assert "RAID1 boot volume on PERC H755" in stages[0]["ipxe"]
    assert "vaq.script=" in stages[0]["ipxe"] and ":give_up" in stages[0]["ipxe"]
    ks = stages[1]["config"]
    assert "--mtu=9000" in ks  # the Ceph NIC from the second interface
    assert "/phone-home/ams1-ceph-03/3/" in ks and "/phone-home/ams1-ceph-03/2/" in ks


def test_first_plan_installs_fra1_in_dependency_waves_and_holds_ams1() -> None:
    proc = vaq_peer("plan", "none", REPO / "sot_examples" / "multisite", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    actions = {h["name"]: h["action"] for h in plan["hosts"]}
    assert actions["fra1-etcd-01"] == "install"
    assert actions["ams1-etcd-01"] == "hold"  # AMS1: install_new_hosts is false
    assert actions["fra1-nas-01"] == "hold"  # never_provision
    order = {wf: w["index"] for w in plan["rollout"]["fra1"] for wf in w["workflows"]}
    assert order["etcd"] < order["control-plane"] < order["worker"]


# --- the generator ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gen") / "base"
    return out, gen_sot(out, "--hosts", 200, "--sites", 2, "--seed", 5)


def test_generated_sot_validates(generated: tuple[Path, dict[str, Any]]) -> None:
    path, info = generated
    summary = validate_json(path)["summary"]
    assert summary["hosts"] == info["hosts"] == 200
    assert summary["sites"] == 2
    kinds = {c["kind"] for c in info["clusters"].values()}
    assert {"etcd", "flatcar", "ubuntu", "storage"} <= kinds


def test_generator_is_deterministic_for_a_seed(tmp_path: Path,
                                                generated: tuple[Path, dict[str, Any]]) -> None:
    gen_sot(tmp_path / "same", "--hosts", 200, "--sites", 2, "--seed", 5)
    gen_sot(tmp_path / "other", "--hosts", 200, "--sites", 2, "--seed", 6)

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file()}

    base, same, other = files(generated[0]), files(tmp_path / "same"), files(tmp_path / "other")
    assert base == same
    assert base.keys() == other.keys() and base != other  # same layout, other serials/UUIDs


def _cluster_rollout(plan: dict[str, Any], site_cluster: str) -> dict[str, Any]:
    site, cluster = site_cluster.split("/")
    return next(c for w in plan["rollout"].get(site, []) for c in w["clusters"]
                if c["cluster"] == cluster)


def test_plan_of_a_mixed_change_lists_exactly_the_generated_actions(
        tmp_path: Path, generated: tuple[Path, dict[str, Any]]) -> None:
    base, info = generated
    changed = gen_sot(tmp_path / "changed", "--hosts", 200, "--sites", 2, "--seed", 5,
                      "--mutate", "mixed")
    expect = changed["expect"]
    proc = vaq_peer("plan", base, tmp_path / "changed", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    by_action: dict[str, set[str]] = {}
    for h in plan["hosts"]:
        by_action.setdefault(h["action"], set()).add(h["name"])
    assert by_action.pop("reinstall") == set(expect["reinstall"])
    assert by_action.pop("install") == set(expect["install"])
    assert by_action.pop("remove") == set(expect["remove"])
    assert by_action == {}
    changed_count = len(expect["reinstall"]) + len(expect["install"])
    assert plan["summary"]["unchanged"] == changed["hosts"] - changed_count
    assert "+ os flatcar-4152.2.0 added" in plan["definitions"]

    # The bumped cluster is reinstalled in batches that honour its rollout policy.
    policy = info["clusters"][expect["bumped_cluster"]]
    bumped = _cluster_rollout(plan, expect["bumped_cluster"])
    assert bumped["policy"]["max_concurrent"] == policy["max_concurrent"]
    size = min(policy["max_concurrent"], max(1, policy["hosts"] - policy["min_standing"]))
    assert [len(b) for b in bumped["batches"][:-1]] == [size] * (len(bumped["batches"]) - 1)
    assert len(bumped["batches"]) == math.ceil(policy["hosts"] / size)
    assert sorted(h for b in bumped["batches"] for h in b) == sorted(
        h for h in expect["reinstall"] if h.startswith(expect["bumped_cluster"].replace("/", "-")))

    # New hosts come in their own cluster's rollout; removed hosts are in no batch.
    added = _cluster_rollout(plan, expect["added_to"])
    assert set(expect["install"]) <= {h for b in added["batches"] for h in b}
    scheduled = {h for w in plan["rollout"].values() for wave in w for c in wave["clusters"]
                 for b in c["batches"] for h in b}
    assert not scheduled & set(expect["remove"])
    assert expect["changed_ip"]["host"] in scheduled


@pytest.mark.parametrize("kind", ["bump-os", "change-ip", "add-hosts", "remove-hosts"])
def test_each_mutation_alone_plans_only_its_change(tmp_path: Path, kind: str) -> None:
    gen_sot(tmp_path / "a", "--hosts", 60, "--sites", 1, "--seed", 2)
    expect = gen_sot(tmp_path / "b", "--hosts", 60, "--sites", 1, "--seed", 2,
                     "--mutate", kind)["expect"]
    plan = json.loads(vaq_peer("plan", tmp_path / "a", tmp_path / "b", "--json").stdout)
    counts = plan["summary"]
    assert counts["reinstall"] == len(expect["reinstall"])
    assert counts["install"] == len(expect["install"])
    assert counts["remove"] == len(expect["remove"])
    assert counts["reinstall"] + counts["install"] + counts["remove"] > 0
    assert counts["rerender"] == counts["record"] == counts["hold"] == 0
