"""The package's shape from its source alone (``ast``, nothing imported):

    .venv/bin/python benchmarks/tools/code_shape.py [path/to/scaling_assets]

prints lines per package (a subfolder of ``scaling_assets``; a top-level module counts as its own
node, e.g. ``layout.py``), the package-level import graph (lazy imports inside functions included:
they are dependencies all the same), the cycles between packages, and the modules that import
Dagster (the functional core should not).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = "scaling_assets"


def node_of(root: Path, module: str) -> str:
    """``scaling_assets.models.scvi`` -> ``models/``; ``scaling_assets.layout`` -> ``layout.py``."""
    parts = module.split(".")
    if len(parts) < 2:
        return "__init__.py"
    return f"{parts[1]}/" if (root / parts[1]).is_dir() else f"{parts[1]}.py"


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, this: str, is_package: bool, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = this.split(".")[: len(this.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names}  # ``from pkg import module``
            found |= (submodules & known) or {target}
    return found


def main(root: Path) -> None:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        modules[module_name(root, path)] = path
    names = set(modules)
    lines: dict[str, int] = defaultdict(int)
    files: dict[str, int] = defaultdict(int)
    edges: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], set[str]] = defaultdict(set)  # package edge -> the module imports behind it
    dagster_users = []
    for name, path in modules.items():
        source = path.read_text()
        node = node_of(root, name)
        lines[node] += source.count("\n")
        files[node] += 1
        imports = imported_modules(ast.parse(source), name, path.name == "__init__.py", names)
        if any(m == "dagster" or m.startswith(("dagster.", "dagster_")) for m in imports):
            dagster_users.append(name)
        for target in imports:
            if target not in names:
                continue
            other = node_of(root, target)
            if other != node:
                edges[node].add(other)
                why[node, other].add(f"{name} -> {target}")

    print(f"## Lines per package ({root})")
    for node in sorted(lines, key=lambda n: -lines[n]):
        print(f"  {node:<20} {lines[node]:>6} lines  {files[node]:>3} files")
    print(f"  {'total':<20} {sum(lines.values()):>6} lines  {sum(files.values()):>3} files")

    print("\n## Package import graph (A -> what A imports)")
    for node in sorted(lines):
        print(f"  {node:<20} -> {', '.join(sorted(edges[node])) or '(nothing)'}")

    print("\n## Cycles between packages")
    cycles = [c for c in strongly_connected(sorted(lines), edges) if len(c) > 1]
    for cycle in cycles:
        print("  " + " <-> ".join(sorted(cycle)) + "; through:")
        for (a, b), imports in sorted(why.items()):
            if a in cycle and b in cycle:
                print("    " + "\n    ".join(sorted(imports)))
    if not cycles:
        print("  none")

    print("\n## Modules importing Dagster")
    for name in sorted(dagster_users):
        print(f"  {name}")


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the strongly connected components of the graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in nodes:
        if v not in index:
            visit(v)
    return components


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / PACKAGE).resolve())
