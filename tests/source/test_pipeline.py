"""The revision pipeline on a real (one-peer) Raft group, reading commits made with git.

An invalid commit is rejected with its report and never applied; a valid one waits for
approval, then becomes the applied revision; with `approval: auto_rerender` a change that
touches no hardware applies by itself; a required status context holds a revision back.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.cluster import Cluster
from appliance.source.gittree import GitTree
from appliance.source.pipeline import PipelineSettings, RevisionPipeline

REPO = Path(__file__).resolve().parents[2]
ENV = {"GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.test",
       "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.test",
       "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=ENV, timeout=30).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def edit(repo: Path, path: str, old: str, new: str) -> None:
    target = repo / path
    text = target.read_text()
    assert old in text, (path, old)
    target.write_text(text.replace(old, new, 1))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "sot"
    shutil.copytree(REPO / "sot_examples" / "lab", work)
    git(work, "init", "-q", "-b", "main")
    return work


async def until(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def state(cluster: Cluster, sha: str) -> str | None:
    record = cluster.revision(sha)
    return record["state"] if record else None


async def test_invalid_rejected_valid_approved_then_applied(cluster: Cluster, repo: Path) -> None:
    pipeline = RevisionPipeline(cluster, lambda sha: GitTree(repo, sha),
                                PipelineSettings(site="lab", poll=0.1))
    task = asyncio.create_task(pipeline.run())
    try:
        good = commit(repo, "lab site")
        await pipeline.observe(good, "test")
        await until(lambda: state(cluster, good) == "awaiting_approval")
        planned = cluster.revision(good)["summaries"]["planned"]
        assert planned["counts"] == {"install": 3} and planned["touches_hardware"]
        assert cluster.applied_revision() is None  # nothing reaches machines unapproved

        edit(repo, "sites/lab/cluster-lab.yml", '"52:54:00:18:00:12"', '"52:54:00:18:00:11"')
        bad = commit(repo, "duplicate MAC")
        await pipeline.observe(bad, "test")
        await until(lambda: state(cluster, bad) == "rejected")
        report = cluster.revision(bad)["summaries"]["rejected"]
        assert report["problems"] == 1 and "already used by host 'lab-01'" in report["first"][0]

        await cluster.approve_revision(good, by="ops", note="first install")
        pipeline.wake()
        await until(lambda: cluster.applied_revision() == good)
        history = [h["state"] for h in cluster.revision(good)["history"]]
        assert history == ["observed", "validated", "planned", "awaiting_approval", "approved",
                           "applying", "applied"]
        assert state(cluster, bad) == "rejected" and cluster.applied_revision() == good
    finally:
        task.cancel()


async def test_auto_rerender_applies_by_itself_and_status_gate_holds(cluster: Cluster,
                                                                     repo: Path) -> None:
    edit(repo, "sites/lab/env.yml", "approval: manual", "approval: auto_rerender")
    first = commit(repo, "lab site")
    contexts_ok = {"value": False}

    async def status_gate(sha: str) -> tuple[bool, list[str]]:
        return contexts_ok["value"], [] if contexts_ok["value"] else ["ci/tests"]

    reported: list[tuple[str, str]] = []
    descriptions: list[str] = []

    async def report(sha: str, github_state: str, description: str) -> None:
        reported.append((sha, github_state))
        descriptions.append(description)

    pipeline = RevisionPipeline(cluster, lambda sha: GitTree(repo, sha), PipelineSettings(
        site="lab", poll=0.1, status_gate=status_gate, report_status=report))
    task = asyncio.create_task(pipeline.run())
    try:
        await pipeline.observe(first, "test")
        await until(lambda: state(cluster, first) == "awaiting_approval")  # installs hosts
        await cluster.approve_revision(first, by="ops")
        pipeline.wake()
        await until(lambda: state(cluster, first) == "approved")
        await asyncio.sleep(0.5)
        assert state(cluster, first) == "approved"  # held: required context not green
        contexts_ok["value"] = True
        await until(lambda: cluster.applied_revision() == first)

        edit(repo, "sites/lab/env.yml", "    lease_time: 3600\n",
             "    lease_time: 3600\n    dhcp_options:\n"
             "      - {option: 119, type: string, value: lab.vaquero.test}\n")
        rerender = commit(repo, "search domain option")
        await pipeline.observe(rerender, "test")
        await until(lambda: cluster.applied_revision() == rerender)
        assert "awaiting_approval" not in [h["state"] for h in
                                           cluster.revision(rerender)["history"]]
        assert state(cluster, first) == "superseded"
        assert (first, "success") in reported and (rerender, "success") in reported
        # the commit status carries the verdict: validation passed and the plan's counts
        assert "planned: valid; plan: 3 install; touches hardware" in descriptions
    finally:
        task.cancel()


async def test_rollback_is_rearming_and_approving_an_older_revision(cluster: Cluster,
                                                                    repo: Path) -> None:
    pipeline = RevisionPipeline(cluster, lambda sha: GitTree(repo, sha),
                                PipelineSettings(site="lab", poll=0.1))
    task = asyncio.create_task(pipeline.run())
    try:
        old = commit(repo, "lab site")
        await pipeline.observe(old)
        await until(lambda: state(cluster, old) == "awaiting_approval")
        await cluster.approve_revision(old, by="ops")
        pipeline.wake()
        await until(lambda: cluster.applied_revision() == old)
        edit(repo, "os/debian-12.yml",
             "d8808aa4ca188560da1e6d749dcb930c87a5fd8b11ebff1f3fa6d728af35203d", "cd" * 32)
        new = commit(repo, "kernel bump")
        await pipeline.observe(new)
        await until(lambda: state(cluster, new) == "awaiting_approval")
        await cluster.approve_revision(new, by="ops")
        pipeline.wake()
        await until(lambda: cluster.applied_revision() == new)
        assert state(cluster, old) == "superseded"

        # roll back: re-arm the old revision; it is planned against what is applied now
        await cluster.transition_revision(old, "validated", by="ops", reason="rollback")
        pipeline.wake()
        await until(lambda: state(cluster, old) == "awaiting_approval")
        replanned = cluster.revision(old)["summaries"]["planned"]
        assert replanned["from"] == new and replanned["counts"] == {"reinstall": 3}
        await cluster.approve_revision(old, by="ops", note="roll back the kernel")
        pipeline.wake()
        await until(lambda: cluster.applied_revision() == old)
        assert state(cluster, new) == "superseded"
    finally:
        task.cancel()
