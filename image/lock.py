"""Regenerates image/requirements.txt: the appliance's runtime dependencies, pinned.

Why from an installed venv: the versions the test suite ran against are the ones to ship.
Walks the installed metadata from vaquero-appliance down, without the `test` extra.

    .venv/bin/python image/lock.py > image/requirements.txt
"""

from __future__ import annotations

import importlib.metadata as metadata

from packaging.requirements import Requirement


def closure(root: str) -> dict[str, str]:
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    del seen[root]
    return seen


if __name__ == "__main__":
    print("# The appliance's runtime Python dependencies, pinned (the image's venv installs "
          "exactly these).\n# Regenerate: .venv/bin/python image/lock.py > image/requirements.txt")
    for name, version in sorted(closure("vaquero-appliance").items()):
        print(f"{name}=={version}")
