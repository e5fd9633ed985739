"""A host's history (GET /v1/hosts/<name>/events, `vaq-peer host NAME --events`), from a real
peer following a real git remote: etcd-1 installed under a first revision and armed again
under a second; work-1 failing its stage. Each peer keeps it in its own archive on disk."""

from __future__ import annotations

import pytest
from test_rollout_by_hand import (
    HOSTS,
    api,
    approve_when_planned,
    following,
    lab_repo,
    push,
    record,
    run_stages,
    until,
    vaq,
)

pytestmark = pytest.mark.slow


def test_history_through_two_revisions_and_a_failed_stage(tmp_path) -> None:
    work, bare, rev1 = lab_repo(tmp_path, HOSTS[:2], "etcd-1 and work-1", stage_timeout=10,
                                retries=0)
    with following(tmp_path, bare) as peer:
        base = peer.base
        approve_when_planned(base, rev1)
        run_stages(base, "etcd-1")
        # work-1 is armed next and never phones home: its stage fails
        until(lambda: record(base, "work-1").get("state") == "failed", "work-1 failed", 40)
        (work / "notes").mkdir()
        (work / "notes" / "README.md").write_text("second revision\n")
        rev2 = push(work, "a second revision")
        approve_when_planned(base, rev2)
        until(lambda: api(base, "/v1/status")["boot"]["revision"] == rev2, "rev2 served")
        assert vaq(base, "arm", "etcd-1", "--reason", "reinstall").returncode == 0
        run_stages(base, "etcd-1")

        def history(name: str) -> list[dict]:
            return api(base, f"/v1/hosts/{name}/events?limit=1000")["events"]

        until(lambda: [e["revision"] for e in history("etcd-1") if e["kind"] == "host.armed"]
              == [rev1, rev2], "etcd-1's second arming archived")
        events = history("etcd-1")
        assert all(e["host"] == "etcd-1" for e in events)
        kinds = [e["kind"] for e in events]
        assert kinds.count("host.stage_done") >= 4, kinds  # two stages, twice
        assert kinds.count("host.done") == 2, kinds
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)

        failed = [e for e in history("work-1") if e["kind"] == "host.failed"]
        assert failed and "no phone-home within 10 s" in failed[0]["message"], history("work-1")

        shown = vaq(base, "host", "etcd-1", "--events")
        assert shown.returncode == 0, shown
        assert f"rev={rev1[:12]}" in shown.stdout and f"rev={rev2[:12]}" in shown.stdout
        assert "reinstall" in shown.stdout, shown.stdout
        page = vaq(base, "host", "etcd-1", "--events", "--limit", "2")
        assert page.stdout.count("host=etcd-1") == 2 and "(more: --after" in page.stdout
        assert vaq(base, "host", "no-such-host", "--events").returncode == 1
        # on disk, in the peer's data dir, beyond the replicated journal
        archived = list((tmp_path / "data0" / "hosts").glob("*.jsonl"))
        assert {p.stem for p in archived} >= {"etcd-1", "work-1"}, archived
