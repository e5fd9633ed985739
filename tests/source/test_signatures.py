"""Signed commits: SSH signatures made by the real git CLI, verified against trusted keys;
with `signed_commits: true` the pipeline rejects anything else before validating it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from test_pipeline import ENV, REPO, state, until

from appliance.source.gittree import GitTree
from appliance.source.pipeline import PipelineSettings, RevisionPipeline
from appliance.source.signatures import CommitVerifier, SigningKeysError, load_signing_keys
from tests.support.waiting import until as wait_until

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True, timeout=30)
    return key, (directory / f"{name}.pub").read_text().strip()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=ENV, timeout=30).stdout.strip()


def signed_commit(repo: Path, message: str, key: Path | None) -> str:
    git(repo, "add", "-A")
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"] if key else []
    git(repo, *sign, "commit", "-q", *(["-S"] if key else []), "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    trusted, trusted_pub = keypair(tmp_path, "ops")
    other, _ = keypair(tmp_path, "intruder")
    keys_file = tmp_path / "signing-keys"
    keys_file.write_text(f"# the ops team\n{trusted_pub}\n")
    return trusted, other, keys_file


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "sot"
    shutil.copytree(REPO / "sot_examples" / "lab", work)
    git(work, "init", "-q", "-b", "main")
    return work


def test_verifier_accepts_only_trusted_ssh_signatures(keys, repo: Path, tmp_path: Path) -> None:
    trusted, other, keys_file = keys
    verifier = CommitVerifier(load_signing_keys(keys_file))
    good = signed_commit(repo, "signed by ops", trusted)
    assert verifier.verify(repo, good) is None
    (repo / "README").write_text("x\n")
    unsigned = signed_commit(repo, "not signed", None)
    assert verifier.verify(repo, unsigned) == "the commit is not signed"
    (repo / "README").write_text("y\n")
    intruder = signed_commit(repo, "signed by someone else", other)
    assert "not by a trusted key" in verifier.verify(repo, intruder)
    bad = tmp_path / "bad-keys"
    bad.write_text("not a key\n")
    with pytest.raises(SigningKeysError, match="is not an SSH public key"):
        load_signing_keys(bad)


async def test_pipeline_rejects_unsigned_commits_when_the_site_demands_them(
        cluster, keys, repo: Path) -> None:
    trusted, other, keys_file = keys
    (repo / "sites/lab/env.yml").write_text((repo / "sites/lab/env.yml").read_text().replace(
        "approval: manual", "approval: manual\n  signed_commits: true"))
    verifier = CommitVerifier(load_signing_keys(keys_file))
    pipeline = RevisionPipeline(cluster, lambda sha: GitTree(repo, sha), PipelineSettings(
        site="lab", poll=0.1, verify_signature=lambda sha: verifier.verify(repo, sha)))
    task = asyncio.create_task(pipeline.run())
    try:
        unsigned = signed_commit(repo, "unsigned", None)
        await pipeline.observe(unsigned)
        await until(lambda: state(cluster, unsigned) == "rejected")
        assert "signature: the commit is not signed" in \
            cluster.revision(unsigned)["history"][-1]["reason"]
        (repo / "README").write_text("z\n")
        forged = signed_commit(repo, "intruder", other)
        await pipeline.observe(forged)
        await until(lambda: state(cluster, forged) == "rejected")
        (repo / "README").write_text("w\n")
        good = signed_commit(repo, "ops", trusted)
        await pipeline.observe(good)
        await until(lambda: state(cluster, good) == "awaiting_approval")
    finally:
        task.cancel()


def gpg(home: Path, *args: str, **run: object) -> subprocess.CompletedProcess:
    """gpg on the test's own keyring: GNUPGHOME and --homedir both name it, so no gpg
    here (nor the agent it starts) ever touches the user's ~/.gnupg."""
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", *args], check=True,
                          capture_output=True, env={**ENV, "GNUPGHOME": str(home)}, **run)


def gpg_agents(under: Path) -> list[str]:
    """The gpg-agent processes serving a keyring under `under`, as their command lines."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if argv and argv[0].endswith(b"gpg-agent") and str(under).encode() in b" ".join(argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


@pytest.fixture
def gnupg_homes(tmp_path: Path):
    """Keyrings of the test's own, each with the agent gpg starts for it killed at the end
    (`gpgconf --kill all`): an agent outlives the test and its keyring otherwise."""
    homes: list[Path] = []
    yield homes
    for home in homes:
        if home.is_dir():
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                           capture_output=True, env={**ENV, "GNUPGHOME": str(home)},
                           timeout=30)
    # `--kill` asks the agent to exit and returns before it has: wait for it, bounded
    wait_until(lambda: not gpg_agents(tmp_path), "the keyrings' gpg-agents to exit", 10,
               lambda: str(gpg_agents(tmp_path)), interval=0.1)


def gpg_key(home: Path, uid: str) -> str:
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never",
        timeout=120)
    out = gpg(home, "--with-colons", "--list-keys", uid, text=True, timeout=30).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def gpg_signed_commit(repo: Path, message: str, home: Path, fpr: str) -> str:
    env = {**ENV, "GNUPGHOME": str(home)}
    for args in (["add", "-A"], ["-c", f"user.signingkey={fpr}", "-c", "gpg.format=openpgp",
                                 "commit", "-q", "-S", "-m", message]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                       env=env, timeout=60)
    return git(repo, "rev-parse", "HEAD")


@pytest.mark.skipif(shutil.which("gpg") is None, reason="no gpg")
def test_gpg_signatures_against_a_private_keyring(repo: Path, tmp_path: Path,
                                                  gnupg_homes: list[Path]) -> None:
    from appliance.source.signatures import import_gpg_keys

    ops_home, intruder_home = tmp_path / "ops-gnupg", tmp_path / "intruder-gnupg"
    gnupg_homes += [ops_home, intruder_home, tmp_path / "trusted", tmp_path / "other"]
    ops = gpg_key(ops_home, "Ops <ops@example.test>")
    intruder = gpg_key(intruder_home, "Intruder <x@example.test>")
    armored = tmp_path / "trusted.asc"
    armored.write_bytes(gpg(ops_home, "--armor", "--export", ops, timeout=30).stdout)
    assert import_gpg_keys(armored, tmp_path / "trusted") == [ops]
    verifier = CommitVerifier([], tmp_path / "trusted")
    good = gpg_signed_commit(repo, "ops", ops_home, ops)
    assert verifier.verify(repo, good) is None
    (repo / "README").write_text("x\n")
    forged = gpg_signed_commit(repo, "intruder", intruder_home, intruder)
    assert "not by a trusted key" in verifier.verify(repo, forged)
    bad = tmp_path / "bad.asc"
    bad.write_text("not a key\n")
    with pytest.raises(SigningKeysError, match="no OpenPGP public key"):
        import_gpg_keys(bad, tmp_path / "other")
