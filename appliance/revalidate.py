"""A peer that started from a compiled revision on disk checks it by compiling it again.

The cached revision (appliance/sot/revision_store.py) lets a restarting peer serve boots at
once; it is still only a cache. So the revision is compiled again from its commit in a child
process: that compile's memory (a few hundred MB at 10,000 hosts) is returned to the system
when it exits instead of staying in the serving process's heap. The child writes what it
compiled to the store and prints its verdict; if the verdict differs from the cached one,
the peer serves the fresh revision instead (or nothing stale: the file is removed).

    python -m appliance.revalidate --store DIR --sha SHA (--path SOT | --git REPO)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from appliance.config import SotSource
from appliance.sot.revision import Revision, compile_tree
from appliance.sot.revision_store import RevisionStore, verdict
from appliance.sot.tree import DirectoryTree, Tree

log = structlog.get_logger("vaquero.revalidate")

TIMEOUT = 3600.0  # seconds; a bound for a compile that hangs, not an expectation


class RevalidationError(Exception):
    pass


async def compile_in_child(source: SotSource, sha: str, store: Path,
                           timeout: float = TIMEOUT) -> dict:
    cmd = [sys.executable, "-m", "appliance.revalidate", "--store", str(store), "--sha", sha]
    cmd += ["--path", str(source.path)] if source.path is not None else ["--git", str(source.git)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RevalidationError(err.decode(errors="replace")[-2000:])
    return json.loads(out.decode().strip().rsplit("\n", 1)[-1])  # its last line; logs before


async def confirm(source: SotSource, cached: Revision, known: str, store: RevisionStore,
                  install: Callable[[Revision], Awaitable[None]]) -> None:
    """Compile `cached.sha` again; serve the fresh result if it differs from the cache's."""
    started = time.monotonic()
    try:
        result = await compile_in_child(source, cached.sha, store.directory)
    except RevalidationError as exc:
        log.error("revision.revalidation_failed", revision=cached.sha, error=str(exc))
        return
    fields = {"revision": cached.sha, "seconds": round(time.monotonic() - started, 2),
              "child_peak_rss_mib": result.get("peak_rss_mib")}
    if result.get("verdict") == known:
        log.info("revision.revalidated", same=True, **fields)
        return
    log.warning("revision.revalidated", same=False, valid=result.get("valid"), **fields)
    fresh = await asyncio.to_thread(store.load, cached.sha) if result.get("valid") else None
    if fresh is None:
        store.path(cached.sha).unlink(missing_ok=True)
        log.error("revision.cache_was_wrong", revision=cached.sha,
                  problems=result.get("problems"), action="file removed; restart compiles it")
        return
    await install(fresh[0])


def _tree(args: argparse.Namespace) -> Tree:
    if args.path is not None:
        return DirectoryTree(args.path)
    from appliance.source.gittree import GitTree

    return GitTree(args.git, args.sha)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--sha", required=True)
    p.add_argument("--path", type=Path)
    p.add_argument("--git", type=Path)
    args = p.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    tree = _tree(args)
    if tree.revision_id != args.sha:
        print(f"the tree is now {tree.revision_id}, not {args.sha}", file=sys.stderr)
        return 2
    cpu = time.process_time()
    revision = compile_tree(tree)
    digest = verdict(revision)
    if revision.valid:
        RevisionStore(args.store).save(revision, digest)
    json.dump({"sha": revision.sha, "verdict": digest, "valid": revision.valid,
               "problems": len(revision.problems), "cpu_s": time.process_time() - cpu,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
