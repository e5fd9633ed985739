"""Problems found in a SoT revision, each pinned to the file and line a person must edit.

A validation run collects every problem instead of stopping at the first: an engineer fixing
a broken push wants the whole list in one go, and CI wants it as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a revision.

    `code` is a stable machine-readable kind (tests and tooling match on it); `message` is
    the sentence for a person, saying what is wrong and what to do about it.
    """

    file: str
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Problems:
    """An append-only, de-duplicated list of problems in file order."""

    items: list[Problem] = field(default_factory=list)
    _seen: set[Problem] = field(default_factory=set, repr=False)
    # Not errors: what the format does not know (a file it ignores). `validate --strict`
    # refuses them too. They never make a revision invalid by themselves.
    warnings: list[Problem] = field(default_factory=list)

    def warn(self, file: str, line: int | None, code: str, message: str) -> None:
        problem = Problem(file or "<sot>", line or 0, code, message)
        if problem not in self.warnings:
            self.warnings.append(problem)

    def add(self, file: str, line: int | None, code: str, message: str) -> None:
        problem = Problem(file or "<sot>", line or 0, code, message)
        if problem not in self._seen:
            self._seen.add(problem)
            self.items.append(problem)

    def extend(self, other: Problems) -> None:
        for p in other.items:
            self.add(p.file, p.line, p.code, p.message)

    def sorted(self) -> list[Problem]:
        return sorted(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)
