"""The package map of `appliance/` and the figures an architecture review asks for.

    .venv/bin/python tools/arch_map.py            # figures, layer violations, cycles
    .venv/bin/python tools/arch_map.py --json     # the same, for a script

Layers, lowest first (DESIGN.md and the repository rules): a module may import its own
layer or a lower one, never a higher one.

    0  appliance/__init__, log, tokens, errors, metrics; sot/, cluster/  (pure facts,
                                                   replicated state, shared error types)
    1  config; netboot/, power/, source/; importer/      (the parts that talk to the world,
                                                          and the original SoTs' converter)
    2  workflow/, api/, federation/                       (what drives them)
    3  peer, revalidate, host_archive, lab, upgrade; cli/  (processes and commands)

A package not placed yet (federation/ and image/ were being written when this map was
drawn) is listed as unplaced: place it in LAYERS, then its imports are checked too.

Figures: lines of Python in appliance/, public functions with a docstring, functions over
60 lines (and which of them carry a `# long:` comment saying why), import cycles
(runtime imports only: `if TYPE_CHECKING:` blocks do not count), layer violations.
`tests/test_architecture.py` holds the repository to these.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "appliance"
LONG_FUNCTION = 60
LAYERS: dict[str, int] = {
    "appliance": 0, "appliance.log": 0, "appliance.tokens": 0, "appliance.errors": 0,
    "appliance.metrics": 0,
    "appliance.sot": 0, "appliance.cluster": 0,
    "appliance.config": 1, "appliance.netboot": 1, "appliance.power": 1, "appliance.source": 1,
    "appliance.importer": 1, "appliance.config_check": 2,
    "appliance.workflow": 2, "appliance.api": 2, "appliance.federation": 2,
    "appliance.peer": 3, "appliance.revalidate": 3, "appliance.host_archive": 3,
    "appliance.lab": 3, "appliance.upgrade": 3, "appliance.cli": 3,
}


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    imports: set[str] = field(default_factory=set)  # appliance modules, runtime
    type_imports: set[str] = field(default_factory=set)  # under TYPE_CHECKING


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of a module: its own entry, else its package's (the longest prefix)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None and (n > 1 or module == PACKAGE):
            return layer
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, current: str, is_package: bool
             ) -> Iterator[tuple[str, bool, list[str]]]:
    """(module, under TYPE_CHECKING, imported names) for every import statement."""
    def visit(node: ast.AST, typing_only: bool) -> Iterator[tuple[str, bool, list[str]]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.body:
                    yield from visit(ast.Module(body=[sub], type_ignores=[]), True)
                for sub in child.orelse:
                    yield from visit(ast.Module(body=[sub], type_ignores=[]), typing_only)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, typing_only, []
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = current.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[:len(anchor) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                yield base, typing_only, [a.name for a in child.names]
            else:
                yield from visit(child, typing_only)

    yield from visit(tree, False)


def scan(root: Path = ROOT) -> dict[str, Module]:
    files = sorted((root / PACKAGE).rglob("*.py"))
    names = {module_name(p, root) for p in files}
    modules: dict[str, Module] = {}
    for path in files:
        name = module_name(path, root)
        text = path.read_text()
        mod = Module(name, path, text.count("\n"))
        for base, typing_only, imported in _imports(ast.parse(text), name,
                                                    path.name == "__init__.py"):
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            # `from pkg import sub` names the submodule when there is one.
            targets = [f"{base}.{n}" for n in imported if f"{base}.{n}" in names]
            if len(targets) < len(imported) or not imported:
                targets.append(base)
            for target in targets:
                if target != name and target in names:
                    (mod.type_imports if typing_only else mod.imports).add(target)
        modules[name] = mod
    return modules


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), runtime imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(modules[v].imports):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules) + 100))
    for v in sorted(modules):
        if v not in index:
            strong(v)
    return sorted(found)


def violations(modules: dict[str, Module]) -> list[str]:
    """Imports from a lower layer to a higher one (modules with no layer: see unplaced)."""
    found = []
    for mod in modules.values():
        mine = layer_of(mod.name)
        if mine is None:
            continue
        for target in sorted(mod.imports | mod.type_imports):
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                found.append(f"{mod.name} (layer {mine}) imports {target} (layer {theirs})")
    return found


@dataclass
class Function:
    where: str
    lines: int
    says_why: bool


def _defs(node: ast.AST, private: bool = False
          ) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """Every function and method under `node`, with whether it is public."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            yield from _defs(child, private or child.name.startswith("_"))
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield child, not private and not child.name.startswith("_")
            yield from _defs(child, True)


def functions(modules: dict[str, Module], root: Path = ROOT
              ) -> tuple[list[Function], int, int]:
    """Every function over LONG_FUNCTION lines; public functions with a docstring, of all
    public functions (a public method of a private class counts as private)."""
    long, public, documented = [], 0, 0
    for mod in modules.values():
        source = mod.path.read_text().splitlines()
        for node, is_public in _defs(ast.parse("\n".join(source))):
            if is_public:
                public += 1
                documented += ast.get_docstring(node) is not None
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if size > LONG_FUNCTION:
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                near = source[max(first - 3, 0):node.body[0].lineno + 2]
                long.append(Function(f"{mod.path.relative_to(root)}:{node.lineno} {node.name}",
                                     size, any("# long:" in line for line in near)))
    return long, public, documented


def figures(root: Path = ROOT) -> dict[str, object]:
    """Everything the module docstring lists, for the tree at `root`."""
    modules = scan(root)
    long, public, documented = functions(modules, root)
    return {
        "modules": len(modules),
        "lines": sum(m.lines for m in modules.values()),
        "public_functions": public,
        "public_docstring_pct": round(100 * documented / public, 1) if public else 100.0,
        "functions_over_60": [f"{f.where} ({f.lines} lines)" for f in long],
        "functions_over_60_unexplained": [f"{f.where} ({f.lines} lines)" for f in long
                                          if not f.says_why],
        "cycles": cycles(modules),
        "layer_violations": violations(modules),
        "unplaced": sorted(m for m in modules if layer_of(m) is None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="a checkout to measure (default: this one)")
    args = parser.parse_args(argv)
    result = figures(args.root.resolve())
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for key, value in result.items():
        if isinstance(value, list):
            print(f"{key}: {len(value)}")
            for item in value:
                print(f"  {item}")
        else:
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
