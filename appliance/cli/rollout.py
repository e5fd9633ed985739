"""`vaq-peer rollout`: where the hardware work of a revision stands, live, and the operator's
hand on it (pause, resume, abort), plus `vaq-peer arm HOST`.

    vaq-peer rollout [REV]                 per wave and cluster: batches, hosts, stages
    vaq-peer rollout [REV] --follow        redraw on every change until the rollout ends
    vaq-peer rollout pause|resume|abort [REV] [--reason TEXT]

REV is a commit SHA, a unique prefix, or `current` (the applied revision; the default).
--follow exits 0 when the rollout is done, 1 when it failed, was aborted or superseded; on
`current` it waits for a first applied revision rather than failing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from .client import ApiError, PeerClient
from .exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .peer import print_json, resolve_revision, short, when

ACTIONS = ("show", "pause", "resume", "abort")
FINAL = {"done": EXIT_OK, "failed": EXIT_FAILED, "aborted": EXIT_FAILED,
         "superseded": EXIT_FAILED}


def _host_line(h: dict[str, Any]) -> str:
    status = h.get("status")
    if status == "pending":
        return f"{h['host']} pending"
    text = f"{h['host']} {status}"
    if h.get("stages"):
        text += f" stage {h.get('stage')}/{h.get('stages')}"
    if h.get("attempt"):
        text += f" (attempt {h['attempt'] + 1})"
    if h.get("message") and status not in ("done",):
        text += f": {h['message']}"
    return text


def render(data: dict[str, Any]) -> str:
    """The progress as an operator reads it: most important first."""
    record = data.get("rollout") or {}
    counts = ", ".join(f"{v} {k}" for k, v in sorted((data.get("counts") or {}).items()))
    lines = [f"rollout {short(data.get('revision'))} (from {short(data.get('base'))}): "
             f"{data.get('state')}, started {when(record.get('started_at'))}",
             f"hosts: {counts or 'none to provision'}"]
    if record.get("reason"):
        lines.append(f"reason: {record['reason']}")
    if data.get("halted"):
        lines.append(f"HALTED: {data['halted']}")
    upcoming: list[str] = []
    for c in data.get("clusters", []):
        batches = c.get("batches") or []
        at = f", batch {c['current_batch']}/{len(batches)}" if c.get("current_batch") else ""
        lines.append(f"wave {c.get('wave')}  cluster {c.get('cluster')} (workflow "
                     f"{c.get('workflow')}, max_fail {c.get('max_fail')}): {c.get('state')}{at}")
        counted = ", ".join(f"{n} {k}" for k, n in sorted((c.get("counts") or {}).items()))
        if counted:
            lines.append(f"  hosts: {counted}")
        for i, batch in enumerate(batches, start=1):
            lines.append(f"  batch {i}: " + "; ".join(_host_line(h) for h in batch))
        current = c.get("current_batch")
        if c.get("state") == "running" and current and current < len(batches):
            following = ", ".join(h["host"] for h in batches[current])
            upcoming.append(f"{following} (cluster {c.get('cluster')} batch {current + 1}, "
                            f"once batch {current} is finished)")
    if data.get("to_arm"):
        label = "arming now" if data.get("state") == "running" else "armed on resume"
        lines.append(f"{label}: " + ", ".join(data["to_arm"]))
    for text in upcoming:
        lines.append(f"next: {text}")
    for f in data.get("failed") or []:
        lines.append(f"FAILED {f.get('host')} (cluster {f.get('cluster')}, stage "
                     f"{f.get('stage')}): {f.get('message')}")
    return "\n".join(lines)


def _target(client: PeerClient, rev: str | None) -> str:
    if rev in (None, "current", "applied"):
        return "current"
    return resolve_revision(client, rev)


def _follow(client: PeerClient, path: str, args: argparse.Namespace,
            out: Callable[[str], None] = print) -> int:
    deadline = time.monotonic() + (args.for_seconds or 3600 * 24 * 365)
    last = None
    while True:
        try:
            data = client.get(path)
        except ApiError as exc:
            # Following the current rollout right after an approval: the peer asked may not
            # have applied the revision yet. Following means waiting for it, not failing.
            if not (path.endswith("/current") and exc.status == 404
                    and time.monotonic() < deadline):
                raise
            if last != exc.message:
                out(f"--- {time.strftime('%H:%M:%S')}\n{exc.message}: waiting for one")
                last = exc.message
            time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
            continue
        text = render(data) if not args.json else None
        if args.json:
            import json

            out(json.dumps(data))
        elif text != last:
            out(f"--- {time.strftime('%H:%M:%S')}\n{text}")
            last = text
        state = data.get("state")
        if state in FINAL:
            return FINAL[state]
        if time.monotonic() >= deadline:
            return EXIT_OK
        time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))


def cmd_rollout(client: PeerClient, args: argparse.Namespace) -> int:
    words = list(args.words)
    action = words.pop(0) if words and words[0] in ACTIONS else "show"
    if len(words) > 1:
        raise ApiError(f"unexpected {' '.join(words[1:])!r}: rollout [ACTION] [REV]", EXIT_USAGE)
    sha = _target(client, words[0] if words else None)
    if action != "show":
        if args.follow:
            raise ApiError("--follow goes with showing a rollout, not with " + action,
                           EXIT_USAGE)
        body = {"reason": args.reason} if args.reason else {}
        result = client.post(f"/v1/rollouts/{sha}/{action}", body)
        if args.json:
            print_json(result)
        else:
            print(f"rollout {sha if sha == 'current' else short(sha)}: {result.get('previous')}"
                  f" -> {result.get('state')}")
            if result.get("retried"):
                print("armed again: " + ", ".join(result["retried"]))
        return EXIT_OK
    path = f"/v1/rollouts/{sha}"
    if args.follow:
        try:
            return _follow(client, path, args)
        except KeyboardInterrupt:
            return EXIT_OK
    data = client.get(path)
    if args.json:
        print_json(data)
    else:
        print(render(data))
    return EXIT_OK


def cmd_arm(client: PeerClient, args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else {}
    result = client.post(f"/v1/hosts/{args.host}/arm", body)
    if args.json:
        print_json(result)
    else:
        print(f"armed {args.host} for the applied revision: the leader walks it through its "
              "workflow (follow it with `vaq-peer rollout --follow` or `vaq-peer host "
              f"{args.host}`)")
    return EXIT_OK


def add_rollout_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("rollout", cmd_rollout, "a rollout's progress (--follow: live), or pause, resume, "
            "abort it (admin token)")
    p.add_argument("words", nargs="*", metavar="[ACTION] [REV]",
                   help="show (default), pause, resume or abort; REV: SHA, prefix or current")
    p.add_argument("--follow", "-f", action="store_true", help="redraw on every change until "
                   "the rollout is done, failed or aborted (exit 0 only when done)")
    p.add_argument("--for", dest="for_seconds", type=float, metavar="SECONDS",
                   help="with --follow: stop after this long")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                   help="with --follow: seconds between looks (default 2)")
    p.add_argument("--reason", help="with pause, resume, abort: recorded in the history")
    p = add("arm", cmd_arm, "arm one host for the applied revision: the leader provisions it "
            "again (admin token)")
    p.add_argument("host")
    p.add_argument("--reason", help="recorded with the host's arming")


__all__ = ["add_rollout_commands", "render"]
