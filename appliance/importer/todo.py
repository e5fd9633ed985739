"""The list of what an import could not decide, as IMPORT-TODO.md in the converted SoT.

Each item names where it comes from in the original (file:line) and where it landed in the
import, with a stable id an answers file can mark as decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Todo:
    source: str  # file:line in the original SoT ("" when it is about the import only)
    kind: str  # sha256, fuze, bmc, min-standing, unknown-key, data, template, invalid, ...
    target: str  # file (and line) in the converted SoT
    message: str

    def sort_key(self) -> tuple:
        """File order, then line as a number (`:9` before `:11`)."""
        where = self.source or self.target
        file, _, line = where.rpartition(":")
        if not line.isdigit():
            file, line = where, "0"
        return (self.source == "", file, int(line), self.kind, self.message)

    @property
    def id(self) -> str:
        return f"{self.kind}@{self.source or self.target}"

    def line(self) -> str:
        where = f"`{self.source}`" if self.source else "(import)"
        return f"- [ ] **{self.kind}** {where} -> `{self.target}`: {self.message}  \n" \
               f"  id: `{self.id}`"


def todo_markdown(src_name: str, todos: list[Todo], decided: list[Todo],
                  notes: Sequence[Todo] = ()) -> str:
    lines = [f"# Importing {src_name}: what needs a person", ""]
    if todos:
        lines += [f"{len(todos)} item(s) to decide. Each names the original file:line, where "
                  "it landed in this SoT, and an id; list decided ids under `decided:` in an "
                  "answers file (`vaq-peer import-vaquero SRC DST --answers FILE`), or edit "
                  "this SoT and delete this file.", ""]
        lines += [t.line() for t in sorted(todos, key=Todo.sort_key)]
    else:
        lines.append("Nothing left to decide: this SoT validates.")
    if decided:
        lines += ["", "## Decided (from the answers file)", ""]
        lines += [f"- [x] {t.kind} `{t.source or t.target}`: {t.message}"
                  for t in sorted(decided, key=Todo.sort_key)]
    if notes:
        lines += ["", "## Left out, nothing to decide", ""]
        lines += [f"- {t.kind} `{t.source or t.target}` -> `{t.target}`: {t.message}"
                  for t in sorted(notes, key=Todo.sort_key)]
    return "\n".join(lines) + "\n"
