"""`vaq-peer`: offline commands on a SoT checkout or git repository (validate, plan, render),
running a peer (init, serve), and commands against a running peer's API (status, hosts,
rollout, doctor...). Exit codes: 0 success or valid, 1 invalid SoT or failed check,
2 usage error (bad arguments, bad config, missing path or revision); the API commands add
3 unreachable, 4 token refused, 5 no quorum."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..sot.revision import Revision, compile_tree, empty_revision
from ..sot.tree import DirectoryTree, Tree
from ..upgrade import add_upgrade_command
from .exits import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from .federation import add_federation_commands
from .importer import add_import_command
from .peer import add_peer_commands
from .rollout import add_rollout_commands

EMPTY_NAMES = {"none", "empty"}


class UsageError(Exception):
    """Bad input from the person at the keyboard: printed without a traceback, exit 2."""


def open_tree(path: str | None, git: str | None, rev: str | None) -> Tree:
    """A directory, or a revision of a git repository read by SHA without a checkout."""
    if git is not None:
        from ..source.gittree import GitTree, RevisionNotFound

        try:
            return GitTree(git, rev or "HEAD")
        except RevisionNotFound as exc:
            raise UsageError(str(exc)) from None
    target = Path(path or ".")
    if not target.is_dir():
        raise UsageError(f"{target} is not a directory "
                         "(give a SoT checkout, or --git REPO --rev REV)")
    return DirectoryTree(target)


def load_revision(spec: str, git: str | None) -> Revision:
    if spec.lower() in EMPTY_NAMES:
        return empty_revision()
    if git is not None:
        return compile_tree(open_tree(None, git, spec))
    return compile_tree(open_tree(spec, None, None))


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def cmd_validate(args: argparse.Namespace) -> int:
    if args.path and args.git:
        raise UsageError("give either PATH or --git REPO, not both")
    revision = compile_tree(open_tree(args.path, args.git, args.rev))
    warnings = sorted(revision.result.problems.warnings)
    valid = revision.valid and not (args.strict and warnings)
    if args.json:
        _print_json({"revision": revision.sha, "source": revision.source,
                     "valid": valid, "summary": revision.summary(),
                     "problems": [p.to_json() for p in revision.problems],
                     "warnings": [p.to_json() for p in warnings]})
    else:
        for problem in revision.problems:
            print(problem)
        for warning in warnings:
            print(f"{'error' if args.strict else 'warning'}: {warning}")
        s = revision.summary()
        count = s["problems"] + (len(warnings) if args.strict else 0)
        verdict = "valid" if valid else f"NOT valid: {count} problem(s)"
        if warnings and not args.strict:
            verdict += f", {len(warnings)} warning(s)"
        print(f"{revision.source} ({revision.sha[:12]}): {s['sites']} site(s), {s['clusters']} "
              f"cluster(s), {s['hosts']} host(s), {s['renders']} stage render(s): {verdict}")
    return EXIT_OK if valid else EXIT_INVALID


def cmd_plan(args: argparse.Namespace) -> int:
    from ..sot.plan import make_plan
    from ..sot.plan_text import plan_text

    old = load_revision(args.old, args.git)
    new = load_revision(args.new, args.git)
    invalid = [r for r in (old, new) if not r.valid and r.sha != "0" * 40]
    if invalid and not args.json:
        for r in invalid:
            print(f"{r.source} ({r.sha[:12]}) is not valid ({len(r.problems)} problem(s)); "
                  f"run `vaq-peer validate` on it. The plan below may be incomplete.",
                  file=sys.stderr)
    plan = make_plan(old, new)
    if args.json:
        data = plan.to_json()
        data["valid"] = {"from": old.valid, "to": new.valid}
        _print_json(data)
    else:
        sys.stdout.write(plan_text(plan, max_hosts=args.max_hosts))
    return EXIT_INVALID if invalid else EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from ..sot.render import Renderer, RenderError

    revision = compile_tree(open_tree(args.sot, args.git, args.rev))
    if not revision.valid:
        # An invalid revision is never applied, so no host would receive anything from it.
        for problem in revision.problems[:20]:
            print(problem, file=sys.stderr)
        print(f"{revision.source} is not valid ({len(revision.problems)} problem(s)): nothing "
              "is rendered from an invalid revision; fix it first (`vaq-peer validate`)",
              file=sys.stderr)
        return EXIT_INVALID
    entry = revision.sot.hosts.get(args.host)
    if entry is None:
        known = ", ".join(sorted(revision.sot.hosts)[:10])
        raise UsageError(f"no host named {args.host!r} in {revision.source} (hosts: {known}...)")
    workflow = revision.sot.workflows.get(entry.host.workflow)
    if workflow is None:
        raise UsageError(f"host {args.host!r} names workflow {entry.host.workflow!r}, which "
                         "does not exist; run `vaq-peer validate`")
    stages = [args.stage] if args.stage else list(range(1, len(workflow.stages) + 1))
    renderer = Renderer(revision.sot, revision.sha)
    out: list[dict[str, Any]] = []
    for index in stages:
        try:
            ipxe = renderer.render_ipxe(entry, index)
            config = renderer.render_config(entry, index)
        except IndexError as exc:
            raise UsageError(str(exc)) from None
        except RenderError as exc:
            print(f"{exc.file}:{exc.line}: {exc.message}", file=sys.stderr)
            return EXIT_INVALID
        out.append({"stage": index, "name": workflow.stages[index - 1].label, "ipxe": ipxe,
                    "config_type": config[0] if config else None,
                    "config": config[1] if config else None})
    if args.json:
        _print_json({"host": args.host, "revision": revision.sha, "stages": out})
        return EXIT_OK
    for item in out:
        if args.what in ("all", "ipxe"):
            print(f"### {args.host} stage {item['stage']} ({item['name']}): iPXE script")
            sys.stdout.write(item["ipxe"])
        if args.what in ("all", "config"):
            if item["config"] is None:
                print(f"### {args.host} stage {item['stage']} ({item['name']}): no install config")
            else:
                print(f"### {args.host} stage {item['stage']} ({item['name']}): "
                      f"{item['config_type']} config")
                sys.stdout.write(item["config"] if item["config"].endswith("\n")
                                 else item["config"] + "\n")
    return EXIT_OK


def demo_sot() -> Path:
    return Path(__file__).resolve().parents[2] / "sot_examples" / "lab"  # the checkout


def cmd_demo(args: argparse.Namespace) -> int:
    sot = demo_sot()
    if not sot.is_dir():
        raise UsageError(f"the bundled lab SoT is not at {sot}; run from a checkout")
    print(f"== vaq-peer validate {sot}")
    code = cmd_validate(argparse.Namespace(path=str(sot), git=None, rev=None, json=False,
                                           strict=False))
    if code != EXIT_OK:
        return code
    print(f"\n== vaq-peer plan none {sot}   (the first rollout of the lab site)")
    cmd_plan(argparse.Namespace(old="none", new=str(sot), git=None, json=False, max_hosts=50))
    print(f"\n== vaq-peer render lab-01 --sot {sot}")
    code = cmd_render(argparse.Namespace(host="lab-01", stage=None, sot=str(sot), git=None,
                                         rev=None, what="all", json=False))
    if code != EXIT_OK:
        return code
    print("\n== a peer following the lab SoT in git: plan, approval, the rollout")
    from ..log import configure_logging
    from .demo import run

    configure_logging("console", "warning")
    return run(sot)


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from ..config_check import check_config
    from ..errors import StartupError
    from ..log import configure_logging
    from ..peer import serve

    result = check_config(args.config)
    for finding in result.findings:
        print(finding, file=sys.stderr)
    if not result.ok or result.config is None:
        print(f"vaq-peer serve: {len(result.errors())} problem(s) in {args.config}; nothing "
              "was started", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(f"{args.config}: ok" + (f" ({len(result.findings)} warning(s))"
                                      if result.findings else ""))
        return EXIT_OK
    config = result.config
    configure_logging(args.log_format or config.log_format, config.log_level)
    try:
        asyncio.run(serve(config))
    except StartupError as exc:  # the peer's, its config's, its secrets'...
        print(f"vaq-peer serve: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaq-peer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vaq-peer {__version__}")
    # `vaq-peer --site fra1 hosts`: its own dest, since a subcommand's default would
    # overwrite a shared one (the subcommands take --site too)
    parser.add_argument("--site", dest="site_for_all", metavar="SITE",
                        help="ask about another site (commands against a peer)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="validate a SoT: every problem, with file:line")
    p.add_argument("path", nargs="?", help="SoT directory (default: current directory)")
    p.add_argument("--git", metavar="REPO", help="read a git repository instead of a directory")
    p.add_argument("--rev", default="HEAD", help="branch, tag or SHA with --git (default HEAD)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--strict", action="store_true",
                   help="files and folders the format does not know are errors, not warnings")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="the work a change from OLD to NEW implies")
    p.add_argument("old", help="directory, or revision with --git; 'none' for an empty site")
    p.add_argument("new", help="directory, or revision with --git")
    p.add_argument("--git", metavar="REPO", help="OLD and NEW are revisions of this repository")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-hosts", type=int, default=50, help="hosts listed per section")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("render", help="what a host receives: iPXE script and install config")
    p.add_argument("host")
    p.add_argument("--stage", type=int, help="only this stage (1-based)")
    p.add_argument("--sot", metavar="PATH", help="SoT directory (default: current directory)")
    p.add_argument("--git", metavar="REPO")
    p.add_argument("--rev", default="HEAD")
    p.add_argument("--what", choices=["all", "ipxe", "config"], default="all")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("serve", help="run this peer: DHCP, TFTP and HTTP boot of the site")
    p.add_argument("--config", required=True, help="the peer config file (YAML)")
    p.add_argument("--log-format", choices=["json", "console"], help="override the config")
    p.add_argument("--check", action="store_true", help="check the config and every file it "
                   "names, print each problem with file:line, start nothing (exit 2 on errors)")
    p.set_defaults(func=cmd_serve)

    from .init import add_init_command
    from .lab import add_lab_command

    add_init_command(sub)
    add_lab_command(sub)

    p = sub.add_parser("demo", help="validate, plan and render the bundled lab site")
    p.set_defaults(func=cmd_demo)
    add = add_peer_commands(sub)
    add_rollout_commands(add)
    add_federation_commands(add, sub)
    add_upgrade_command(sub)
    add_import_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"vaq-peer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `vaq-peer plan ... | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
