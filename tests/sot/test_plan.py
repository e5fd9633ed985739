"""Plans of realistic changes read like a change review and classify hosts correctly."""

from __future__ import annotations

from pathlib import Path

from sotcase import materialise

from appliance.cli import main
from appliance.sot.plan import make_plan
from appliance.sot.plan_text import plan_text
from appliance.sot.revision import compile_directory, empty_revision

NEW_KERNEL = "ab" * 32


def _revision(tmp_path: Path, name: str, base: str = "lab", **edits: object):
    case = {"base": base, **edits}
    rev = compile_directory(str(materialise(case, tmp_path / name)))
    assert rev.valid, [str(p) for p in rev.problems]
    return rev


def _actions(plan) -> dict[str, str]:
    return {h.name: h.action for h in plan.hosts}


def test_first_plan_installs_every_host_in_policy_batches(tmp_path: Path) -> None:
    plan = make_plan(empty_revision(), _revision(tmp_path, "lab"))
    assert _actions(plan) == {"lab-01": "install", "lab-02": "install", "lab-03": "install"}
    (wave,) = plan.waves["lab"]
    assert wave.clusters[0].batches == [["lab-01"], ["lab-02"], ["lab-03"]]
    assert plan.touches_hardware
    assert all("next boot PXE once, power on" in p.steps[0] for p in plan.power)


def test_os_upgrade_reinstalls_one_host_at_a_time_keeping_min_standing(tmp_path: Path) -> None:
    old = _revision(tmp_path, "old")
    new = _revision(tmp_path, "new", patch=[{
        "file": "os/flatcar-stable.yml",
        "old": "6b7d1c2b8a8e1b5fd0a2b3f2c0e6a1d4f7e9b3c5a8d2f4e6b1c3d5f7a9b2c4e6",
        "new": NEW_KERNEL}])
    plan = make_plan(old, new)
    assert set(_actions(plan).values()) == {"reinstall"}
    host = plan.hosts[0]
    assert "stage 1 (install): iPXE script changed (kernel, initrd or cmdline)" in host.changes
    assert any(d.startswith("~ os flatcar-4081: boot.kernel.sha256") for d in plan.definitions)
    assert plan.waves["lab"][0].clusters[0].batches == [["lab-01"], ["lab-02"], ["lab-03"]]
    text = plan_text(plan)
    assert "Hosts to reinstall (3):" in text
    assert "batch 3: lab-03" in text
    assert "3 PXE boots through their BMC" in text


def test_unused_metadata_is_record_only_and_dhcp_option_is_rerender(tmp_path: Path) -> None:
    old = _revision(tmp_path, "old")
    new = _revision(tmp_path, "new", patch=[
        {"file": "sites/lab/cluster-lab.yml", "old": "  role: worker\n---",
         "new": "  role: storage\n---"},
        {"file": "sites/lab/env.yml", "old": "    lease_time: 3600\n",
         "new": "    lease_time: 3600\n    dhcp_options:\n"
                "      - {option: 119, type: string, value: lab.vaquero.test}\n"}])
    plan = make_plan(old, new)
    actions = _actions(plan)
    assert actions["lab-01"] == "rerender"
    assert actions["lab-02"] == "rerender"  # DHCP changed; its metadata change is listed too
    lab02 = next(h for h in plan.hosts if h.name == "lab-02")
    assert "metadata.role: \"worker\" -> \"storage\"" in lab02.changes
    assert not plan.touches_hardware
    assert plan.power == [] and plan.waves == {}

    only_metadata = _revision(tmp_path, "meta", patch=[
        {"file": "sites/lab/cluster-lab.yml", "old": "  role: worker\n---",
         "new": "  role: storage\n---"}])
    plan = make_plan(old, only_metadata)
    assert _actions(plan) == {"lab-02": "record"}
    assert plan.unchanged == 2


def test_added_removed_and_never_provision_hosts(tmp_path: Path) -> None:
    old = _revision(tmp_path, "old")
    lab = (tmp_path / "old" / "sites" / "lab" / "cluster-lab.yml").read_text()
    docs = lab.split("---\n")
    added = docs[2].replace("lab-03", "lab-04").replace(":13", ":14").replace(".13", ".14")
    added = added.replace("3103", "3104").replace("LAB0003", "LAB0004")
    held = docs[1].replace("workflow: flatcar-install",
                           "workflow: flatcar-install\nnever_provision: true")
    held = held.replace("role: worker", "role: db")
    new = _revision(tmp_path, "new", replace={
        "sites/lab/cluster-lab.yml": "---\n".join([docs[0], held, added])}, patch=[
        # two provisionable hosts left: min_standing 2 would leave none to update
        {"file": "workflows/flatcar-install.yml", "old": "min_standing: 2",
         "new": "min_standing: 1"}])
    plan = make_plan(old, new)
    assert _actions(plan) == {"lab-04": "install", "lab-03": "remove", "lab-02": "hold"}
    removed = next(h for h in plan.hosts if h.name == "lab-03")
    assert "not powered off or wiped" in removed.reason
    assert [p.host for p in plan.power] == ["lab-04"]


def test_dependencies_order_waves_and_rerender_policy(tmp_path: Path) -> None:
    plan = make_plan(empty_revision(), _revision(tmp_path, "kinds", base="kinds"))
    waves = plan.waves["kinds"]
    assert [w.workflows for w in waves] == [["debian", "fcos", "rocky", "ubuntu"],
                                            ["raid-then-rocky"]]
    assert waves[1].clusters[0].policy["depends_on"] == ["rocky"]
    tool = next(p for p in plan.power if p.host == "tool-01")
    assert len(tool.steps) == 3 and "boots its disk" in tool.steps[2]

    old = _revision(tmp_path, "old", base="kinds")
    new = _revision(tmp_path, "new", base="kinds", patch=[
        {"file": "assets/cloud-config/user-data.yml", "old": "username: ops",
         "new": "username: admin"},
        {"file": "workflows/all.yml", "old": "rollout: {max_concurrent: 2}",
         "new": "rollout: {max_concurrent: 2, on_change: rerender}"}])
    plan = make_plan(old, new)
    assert _actions(plan) == {"ub-01": "rerender"}
    assert "stage 1 (install): rendered install config changed" in plan.hosts[0].changes


def test_plan_cli_text_and_json(tmp_path: Path, capsys) -> None:
    old = materialise({"base": "lab"}, tmp_path / "old")
    new = materialise({"base": "lab", "patch": [{
        "file": "os/flatcar-stable.yml",
        "old": "6b7d1c2b8a8e1b5fd0a2b3f2c0e6a1d4f7e9b3c5a8d2f4e6b1c3d5f7a9b2c4e6",
        "new": NEW_KERNEL}]}, tmp_path / "new")
    assert main(["plan", str(old), str(new)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Plan ")
    assert "3 to reinstall; 0 unchanged" in text
    assert main(["plan", str(old), str(new), "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["reinstall"] == 3
    assert data["rollout"]["lab"][0]["clusters"][0]["batches"] == [["lab-01"], ["lab-02"],
                                                                  ["lab-03"]]
