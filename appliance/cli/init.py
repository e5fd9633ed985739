"""`vaq-peer init`: a peer's config and its secrets, written from the SoT, ready to serve.

The SoT already says what a peer needs to know about its site: the peers and their boot
addresses (the Raft group), the HTTP port. What it must never say is a secret, so this
command writes the config, which names secret files, and those files, random and mode 600.
The phone-home key, the Raft password and the admin API token are the same on every peer of
the site: the first `init` writes them, the operator copies them to the other peers, and
`init` there keeps them (a secret that exists is never overwritten). The config is checked at
the end as `vaq-peer serve --check` would.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import Any

from ..config_check import check_config
from .exits import EXIT_OK, EXIT_USAGE

RAFT_PORT = 7650
# The same on every peer of the site: the phone-home key and the Raft password must be, and
# the admin token is, so that one token works against any peer (the CLI, and a peer asking
# another for what only that one holds, such as a console).
SHARED = ("phone-home.key", "raft.key", "ops.token")


class InitError(Exception):
    """Something the operator must change; printed without a traceback, exit 2."""


def _site_peers(args: argparse.Namespace) -> tuple[list[tuple[str, str]], list[str], int]:
    """(name, address) of the site's peers, the BMC credentials names its hosts use, and the
    site's boot HTTP port, from the SoT."""
    from ..sot.revision import compile_tree

    revision = compile_tree(_tree(args))
    if not revision.valid:
        raise InitError(f"{revision.source} is not valid ({len(revision.problems)} "
                        "problem(s)); `vaq-peer validate` it first")
    site = revision.sot.sites.get(args.site)
    if site is None:
        known = ", ".join(sorted(revision.sot.sites)) or "none"
        raise InitError(f"no site {args.site!r} in {revision.source} (sites: {known})")
    peers = [(p.name, str(p.address)) for p in site.peers]
    if args.peer not in {name for name, _ in peers} and args.address is None:
        raise InitError(f"peer {args.peer!r} is not listed in sites/{args.site}/env.yml "
                        f"(peers: {', '.join(n for n, _ in peers) or 'none'}); add it there, "
                        "or give --address")
    credentials = sorted({i.bmc.credentials for e in revision.sot.hosts.values()
                          if e.site == site.id for i in e.host.interfaces
                          if i.bmc is not None and getattr(i.bmc, "credentials", None)})
    return peers, credentials, site.netboot.http_port


def _tree(args: argparse.Namespace) -> Any:
    """The SoT to read: a directory, or a revision of a git repository (by SHA, no checkout)."""
    from ..sot.tree import DirectoryTree

    if args.git:
        from ..source.gittree import GitTree, RevisionNotFound

        try:
            return GitTree(args.git, args.rev)
        except RevisionNotFound as exc:
            raise InitError(str(exc)) from None
    path = Path(args.sot or ".")
    if not path.is_dir():
        raise InitError(f"{path} is not a directory (give --sot PATH or --git REPO)")
    return DirectoryTree(path)


def _write_secret(path: Path) -> str:
    """A new random secret, or the one already there (copied from the first peer)."""
    if path.exists():
        if len(path.read_bytes().strip()) < 16:
            raise InitError(f"{path} exists but holds fewer than 16 bytes; remove it or put "
                            "the site's secret in it")
        return "kept (exists)"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    return "new, mode 600"


def _config_text(args: argparse.Namespace, peers: list[tuple[str, str]], http_port: int
                 ) -> str:
    me = dict(peers).get(args.peer)
    address = args.address or me
    raft_self = f"{address}:{RAFT_PORT}"
    if args.alone:
        raft = f'raft:\n  address: "{raft_self}"\n  password_file: secrets/raft.key\n'
    else:
        members = ", ".join(f'"{a}:{RAFT_PORT}"' for _, a in peers)
        if args.address is not None and me is not None:
            members = members.replace(f'"{me}:{RAFT_PORT}"', f'"{raft_self}"')
        raft = (f'raft:\n  address: "{raft_self}"      # this peer on the peer network\n'
                f"  peers: [{members}]\n  password_file: secrets/raft.key   # same on every "
                "peer of the site\n")
    if args.follow:
        source = f"source: {{url: {args.follow!r}, ref: {args.ref}}}\n"
    else:
        where = f"git: {Path(args.git).resolve()}, rev: {args.rev}" if args.git else \
            f"path: {Path(args.sot or '.').resolve()}"
        source = f"sot: {{{where}}}        # a fixed revision; `source:` follows a git remote\n"
    lines = [
        f"# Written by `vaq-peer init` for peer {args.peer} of site {args.site}; see docs/peer.md",
        f"site: {args.site}",
        f"peer: {args.peer}",
        f"data_dir: {args.data_dir}",
        f"interface: {args.interface}           # the boot network interface",
    ]
    if args.address is not None:
        lines.append(f"address: {args.address}         # instead of env.yml's {me or 'none'}")
    text = "\n".join(lines) + "\n" + source + raft
    text += "token_secret_file: secrets/phone-home.key   # same on every peer of the site\n"
    # Explicit: a peer following a remote has no revision at start to read the port from.
    text += (f"http: {{port: {http_port}}}              # the site's netboot.http_port; "
             "the API is served on it too\n"
             "api:\n  tokens:\n    - {name: ops, role: admin, file: secrets/ops.token}\n")
    return text


def cmd_init(args: argparse.Namespace) -> int:
    if args.sot and args.git:
        raise InitError("give either --sot PATH or --git REPO, not both")
    directory = Path(args.dir)
    config = directory / "peer.yaml"
    if config.exists():
        raise InitError(f"{config} exists; not overwritten (remove it, or give another --dir)")
    peers, credentials, http_port = _site_peers(args)
    secrets = directory / "secrets"
    secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
    secrets.chmod(0o700)
    written = {name: _write_secret(secrets / name) for name in SHARED}
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(_config_text(args, peers, http_port))
    print(f"wrote {config}")
    for name, how in written.items():
        print(f"  {secrets / name}: {how}")
    others = [f"{n} ({a})" for n, a in peers if n != args.peer]
    if others and not args.alone:
        print(f"\nCopy these to the other peers of site {args.site} ({', '.join(others)}), to "
              "the same paths, before running `vaq-peer init` there (it keeps them):")
        for name in SHARED:
            print(f"  {secrets / name}")
    if credentials:
        print(f"\nThe site's hosts name BMC credentials {', '.join(credentials)}: to power "
              "them, write a secrets file (docs/peer.md, `bmc:`) and add "
              "`bmc: {secrets_file: secrets/bmc.yml}` to the config.")
    result = check_config(config)
    for finding in result.findings:
        print(finding)
    verdict = "ready" if result.ok else "NOT ready: fix the problems above"
    print(f"\n{config}: {verdict}; start it with `vaq-peer serve --config {config}`")
    return EXIT_OK


def add_init_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a peer's config and its secret files from the SoT",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sot", metavar="PATH", help="the SoT directory (default: current)")
    p.add_argument("--git", metavar="REPO", help="or a git repository of the SoT")
    p.add_argument("--rev", default="HEAD", help="with --git: branch, tag or SHA")
    p.add_argument("--site", required=True, help="the site in the SoT this peer serves")
    p.add_argument("--peer", required=True, help="this peer's name in the site's env.yml")
    p.add_argument("--interface", required=True, help="the boot network interface")
    p.add_argument("--dir", default="/etc/vaquero", help="where peer.yaml and secrets/ go "
                   "(default /etc/vaquero)")
    p.add_argument("--data-dir", default="/var/lib/vaquero", help="the peer's state "
                   "(default /var/lib/vaquero)")
    p.add_argument("--address", help="this peer's boot address, instead of env.yml's")
    p.add_argument("--alone", action="store_true", help="a group of one peer (a trial)")
    p.add_argument("--follow", metavar="URL", help="follow this git remote (`source:`) "
                   "instead of serving the given SoT as a fixed revision")
    p.add_argument("--ref", default="main", help="with --follow: the branch (default main)")
    p.set_defaults(func=_run_init)


def _run_init(args: argparse.Namespace) -> int:
    try:
        return cmd_init(args)
    except InitError as exc:
        print(f"vaq-peer init: {exc}", file=sys.stderr)
        return EXIT_USAGE
