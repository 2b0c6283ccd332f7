"""The package's shape, as docs/architecture.md promises it: imports run one way, no module reaches
into another's private names, and every module can be read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "portraitkit"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module, modules: set[str]) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import anywhere in the file, lazy ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("portraitkit"):
            names = [alias.name for alias in node.names]
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in modules]
            found += [(m, []) for m in submodules]
            found.append((node.module, [n for n in names if f"{node.module}.{n}" not in modules]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("portraitkit")]
    return found


def test_imports_inside_the_package_form_no_cycle():
    trees = _modules()
    graph = {name: {m for m, _ in _imports(tree, set(trees)) if m in trees and m != name} for name, tree in trees.items()}
    # A package's __init__ importing nothing, its modules are reached through it: ignore parent packages.
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_no_module_imports_another_modules_private_names():
    trees = _modules()
    offences = []
    for name, tree in trees.items():
        for module, names in _imports(tree, set(trees)):
            offences += [f"{name} imports {module}.{n}" for n in names if n.startswith("_") and module != name]
        # `from portraitkit import plan` then `plan._x`
        aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.module == "portraitkit" for alias in node.names}
        offences += [f"{name} uses {node.value.id}.{node.attr}" for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                     and node.attr.startswith("_")]
    assert not offences, offences


def test_every_module_reads_in_one_sitting():
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_rank_knows_nothing_of_training():
    trees = _modules()
    imported = {m for m, _ in _imports(trees["portraitkit.rank"], set(trees))}
    assert not imported & {"portraitkit.train", "portraitkit.validate", "portraitkit.prep", "portraitkit.plan"}, imported
