"""`vaq-peer import-vaquero SRC DST`: convert, validate the result, list what is left.

Exit 0 when the import validates with nothing left to decide, 1 while TODO items remain
(IMPORT-TODO.md in DST), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from ..importer.convert import Answers, Converter
from ..importer.todo import Todo, todo_markdown
from ..sot.revision import compile_tree
from ..sot.tree import DirectoryTree
from .exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE

# The files an import wrote, in DST: a new import into DST removes them first.
MARKER = ".vaquero-import"
# Validation problems an earlier TODO already explains (reported once, by its cause).
_EXPLAINED = {"missing-sha256"}


def import_vaquero(src: Path, dst: Path, sha256_dir: Path | None = None,
                   answers: Answers | None = None,
                   secrets_out: Path | None = None) -> tuple[list[Todo], list[Todo]]:
    """Write the converted SoT to `dst`; returns (open TODOs, decided TODOs)."""
    result = Converter(src, sha256_dir, answers).run()
    dst.mkdir(parents=True, exist_ok=True)
    _remove_previous_import(dst)
    (dst / MARKER).write_text("".join(f"{rel}\n" for rel in sorted(result.files)))
    for rel, text in sorted(result.files.items()):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    stale = dst / "IMPORT-TODO.md"
    if stale.exists():
        stale.unlink()
    todos = list(result.todos)
    secrets_path = None
    if result.secrets:
        out = secrets_path = secrets_out or dst.parent / f"{dst.name}.bmc-secrets.yml"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# BMC credentials imported from the original SoT. Copy to each peer's\n"
                    "# bmc.secrets_file (mode 600); never commit this file.\n")
            yaml.safe_dump(result.secrets, f, sort_keys=True)
    revision = compile_tree(DirectoryTree(dst))
    fuze = {t.message.split("serves ", 1)[1].split(",", 1)[0] for t in todos if t.kind == "fuze"}
    for problem in revision.problems:
        if problem.code in _EXPLAINED or problem.file in fuze:
            continue
        todos.append(Todo("", "invalid", f"{problem.file}:{problem.line}",
                          f"the import does not validate: {problem.message}"))
    decided_ids = answers.decided if answers else set()
    open_ = [t for t in todos if t.id not in decided_ids]
    decided = [t for t in todos if t.id in decided_ids]
    if not open_ and not revision.valid:  # what explained them was marked decided
        open_ = [Todo("", "invalid", f"{p.file}:{p.line}",
                      f"the import does not validate: {p.message}") for p in revision.problems]
    (dst / "IMPORT-TODO.md").write_text(todo_markdown(src.name, open_, decided,
                                                      result.notes))
    if not open_ and not decided and not result.notes:
        (dst / "IMPORT-TODO.md").unlink()
    if secrets_path is not None:
        print(f"BMC credentials of the original: {secrets_path} (mode 600, outside the SoT)")
    return open_, decided


def _remove_previous_import(dst: Path) -> None:
    """Importing again into DST replaces what the last import wrote, nothing else."""
    marker = dst / MARKER
    if not marker.is_file():
        return
    root = dst.resolve()
    for rel in marker.read_text().splitlines():
        target = (dst / rel).resolve()
        if root in target.parents and target.is_file():
            target.unlink()


def dst_problem(dst: Path) -> str | None:
    """DST must be new, empty, or a previous import (its files are replaced)."""
    if not dst.exists():
        return None
    if not dst.is_dir():
        return f"{dst} is not a directory"
    if any(dst.iterdir()) and not (dst / MARKER).is_file():
        return (f"{dst} is not empty and holds no previous import ({MARKER}); give a new "
                "or empty directory")
    return None


def cmd_import_vaquero(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        print(f"vaq-peer: {src} is not a directory (the original Vaquero SoT)", file=sys.stderr)
        return EXIT_USAGE
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        print("vaq-peer: DST must not be SRC or inside it", file=sys.stderr)
        return EXIT_USAGE
    problem = dst_problem(dst)
    if problem:
        print(f"vaq-peer: {problem}", file=sys.stderr)
        return EXIT_USAGE
    answers = Answers.load(Path(args.answers)) if args.answers else None
    sha_dir = Path(args.sha256_from) if args.sha256_from else None
    open_, decided = import_vaquero(src, dst, sha_dir, answers)
    for todo in sorted(open_, key=Todo.sort_key):
        where = todo.source or todo.target
        print(f"{where}: {todo.kind}: {todo.message}")
    state = (f"{len(open_)} item(s) to decide, listed in {dst / 'IMPORT-TODO.md'}"
             if open_ else "nothing left to decide; it validates")
    print(f"imported {src} into {dst}: {state}"
          + (f" ({len(decided)} decided by the answers file)" if decided else ""))
    return EXIT_FAILED if open_ else EXIT_OK


def add_import_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-vaquero", help="convert an original Vaquero SoT to this format")
    p.add_argument("src", help="the original SoT (a directory)")
    p.add_argument("dst", help="where to write the converted SoT")
    p.add_argument("--sha256-from", metavar="DIR",
                   help="a directory holding the kernels and initrds: fills their sha256")
    p.add_argument("--answers", metavar="FILE",
                   help="YAML with a person's decisions: sha256 by file name, files written "
                        "over the import, ids of decided TODO items")
    p.set_defaults(func=cmd_import_vaquero)
