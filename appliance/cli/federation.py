"""`vaq-peer sites`: every site of the federation as the asked peer knows it (its last
verified summary, its age, its place in the rollout order and what it waits for);
`vaq-peer override REV`: let this site apply a revision without waiting for the sites before
it; `vaq-peer federation-key FILE`: a new site signing key (offline)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import PeerClient
from .exits import EXIT_OK, EXIT_USAGE
from .peer import duration, print_json, resolve_revision, short, table


def _rollout(summary: dict[str, Any] | None) -> str:
    r = (summary or {}).get("rollout")
    if not r:
        return "-"
    return (f"{r['state']} {short(r['revision'])} ({r['done']} done, {r['failed']} failed, "
            f"{r['in_flight']} in flight)")


def cmd_sites(client: PeerClient, args: argparse.Namespace) -> int:
    data = client.get("/v1/federation")
    if args.json:
        print_json(data)
        return EXIT_OK
    print(f"site {data.get('site')}; revision {short(data.get('revision'))}"
          + (f"; gate overridden by {data['override']['by']}" if data.get("override") else ""))
    for line in data.get("order_text") or ["no cross-site rollout order (federation.yml)"]:
        print(line.strip())
    rows = []
    for s in data.get("sites", []):
        summary = s.get("summary") or {}
        age = "never" if s.get("age") is None else duration(s["age"])
        rows.append((s["site"] + (" *" if s.get("local") else ""), s.get("position", 0) + 1,
                     s.get("state"), short(summary.get("applied")), _rollout(summary),
                     age + (" STALE" if s.get("stale") else ""), s.get("seq") or "-",
                     ", ".join(s.get("waits_for") or []) or "-", (s.get("reason") or "")[:70]))
    print(table(["SITE", "POS", "STATE", "APPLIED", "ROLLOUT", "AGE", "SEQ", "WAITS FOR",
                 "WHY"], rows))
    refused = data.get("refused") or {}
    if refused:
        print("refused summaries: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
    return EXIT_OK


def cmd_override(client: PeerClient, args: argparse.Namespace) -> int:
    sha = resolve_revision(client, args.rev)
    result = client.post(f"/v1/federation/override/{sha}", {"reason": args.reason})
    if args.json:
        print_json(result)
    else:
        print(f"{short(sha)}: this site no longer waits for the sites before it (journal "
              f"event {result.get('seq')})")
    return EXIT_OK


def cmd_federation_key(args: argparse.Namespace) -> int:
    from ..federation.keys import generate_signing_key

    path = Path(args.file)
    if path.exists():
        print(f"vaq-peer: {path} exists; a site key is never overwritten", file=sys.stderr)
        return EXIT_USAGE
    key = generate_signing_key(path)
    print(key.public_text())
    print(f"# private key in {path} (mode 600): copy it to every peer of the site and name it "
          "in the peer config (federation: {key_file: ...}); declare the line above in the "
          "site's env.yml under federation.keys", file=sys.stderr)
    return EXIT_OK


def add_federation_commands(add: Callable[..., argparse.ArgumentParser],
                            subparsers: argparse._SubParsersAction) -> None:
    add("sites", cmd_sites, "every site of the federation: last verified summary, age, place "
        "in the rollout order, what it waits for")
    p = add("override", cmd_override, "let this site apply REV without waiting for the sites "
            "before it in the order (admin token; recorded in the journal)")
    p.add_argument("rev", metavar="REV", help="commit SHA or a unique prefix")
    p.add_argument("--reason", help="why (recorded in the journal)")
    p = subparsers.add_parser("federation-key", help="write a new site signing key to FILE and "
                              "print its public key for the site's env.yml")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_federation_key)
