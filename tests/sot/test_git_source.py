"""A SoT read from a git commit by SHA is the same revision as the directory it came from.

The repository is made with the real git CLI; the appliance reads it with dulwich, without
a checkout, through the same loader as a directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from sotcase import BASES

from appliance.cli import main
from appliance.sot.revision import compile_directory, compile_tree
from appliance.source.gittree import GitTree, RevisionNotFound

GIT_ENV = {"GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.test",
           "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.test",
           "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=GIT_ENV, timeout=30).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "sot"
    shutil.copytree(BASES["lab"], work)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "lab site")
    git(work, "tag", "v1")
    os_file = work / "os" / "flatcar-stable.yml"
    os_file.write_text(os_file.read_text().replace(
        "6b7d1c2b8a8e1b5fd0a2b3f2c0e6a1d4f7e9b3c5a8d2f4e6b1c3d5f7a9b2c4e6", "cd" * 32))
    git(work, "commit", "-qam", "flatcar kernel bump")
    return work


def test_commit_reads_like_its_directory(repo: Path, tmp_path: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    from_git = compile_tree(GitTree(repo, "main"))
    assert from_git.sha == head
    export = tmp_path / "export"
    export.mkdir()
    subprocess.run(f"git -C {repo} archive HEAD | tar -x -C {export}", shell=True, check=True)
    from_dir = compile_directory(str(export))
    assert from_git.valid and from_dir.valid
    assert from_dir.sha == git(repo, "rev-parse", "HEAD^{tree}")  # content-addressed too
    assert from_git.result.fingerprints == from_dir.result.fingerprints
    assert sorted(from_git.sot.hosts) == sorted(from_dir.sot.hosts)


def test_revision_names_resolve_to_commits(repo: Path) -> None:
    first = git(repo, "rev-parse", "v1")
    assert GitTree(repo, "v1").sha == first
    assert GitTree(repo, first[:10]).sha == first
    with pytest.raises(RevisionNotFound, match="not a branch, tag or commit"):
        GitTree(repo, "no-such-branch")


def test_cli_validate_and_plan_from_git(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--git", str(repo), "--rev", "main", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["revision"] == git(repo, "rev-parse", "main")
    assert main(["plan", "v1", "main", "--git", str(repo), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["from"] == git(repo, "rev-parse", "v1")
    assert plan["summary"]["reinstall"] == 3
    assert main(["validate", "--git", str(repo), "--rev", "nope"]) == 2
    assert "'nope' is not a branch, tag or commit" in capsys.readouterr().err


def test_bare_repository_without_work_tree(repo: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True,
                   env=GIT_ENV, timeout=30)
    rev = compile_tree(GitTree(bare, "main"))
    assert rev.valid and len(rev.sot.hosts) == 3
