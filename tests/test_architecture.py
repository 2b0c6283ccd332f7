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
        # `from portraitkit.models import lora` then `lora._x`
        aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.module and node.module.startswith("portraitkit") for alias in node.names
                   if f"{node.module}.{alias.name}" in trees}
        offences += [f"{name} uses {node.value.id}.{node.attr}" for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                     and node.attr.startswith("_")]
    assert not offences, offences


def test_every_module_reads_in_one_sitting():
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _stage(module: str) -> str:
    """The folder (stage) a module belongs to; a module at the package's top is its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _stage_graph() -> dict[str, set[str]]:
    trees = _modules()
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        graph.setdefault(_stage(name), set()).update(
            _stage(m) for m, _ in _imports(tree, set(trees)) if m in trees and _stage(m) != _stage(name))
    return graph


def test_stages_import_one_way():
    """Between folders as between files: no circle (train may read pick's likeness, never the reverse)."""
    graph = _stage_graph()
    done, path = set(), []

    def visit(stage):
        if stage in path:
            raise AssertionError("stage cycle: " + " -> ".join(path[path.index(stage):] + [stage]))
        if stage not in done:
            path.append(stage)
            for dep in sorted(graph.get(stage, ())):
                visit(dep)
            path.pop()
            done.add(stage)

    for stage in sorted(graph):
        visit(stage)


def test_the_layers_stay_in_their_place():
    graph = _stage_graph()
    assert graph["core"] == set(), graph["core"]  # the floor everything stands on
    assert graph["faces"] <= {"core"}, graph["faces"]
    assert not graph["pick"] & {"train", "prep", "plan", "sample"}, graph["pick"]  # a ranker knows nothing of training
    assert "train" not in graph["plan"], graph["plan"]  # the planner reads the trainer's settings; the trainer decides
    users = {stage for stage, deps in graph.items() if deps & {"widgets", "cli"}}
    assert users <= {"__main__", "widgets"}, users  # only notebooks and the entry point use panels and the CLI


def test_every_stage_is_a_folder():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in {"__init__", "__main__"})
    assert top == ["classroom", "cli", "colab", "demo"], top  # the apps; everything else lives in its stage's folder


def test_only_the_family_folder_tells_the_model_families_apart():
    """What differs between Stable Diffusion, SDXL and FLUX.2 lives in models/families; everywhere
    else code asks the family object (`families.of(pipe)`, `families.named(name)`). A comparison of
    a family's name (`family == "flux2"`, `arch["family"] != "sdxl"`, `"flux2" in (...)` about a
    family) or a guess from a pipeline's parts (`hasattr(pipe, "transformer")`) outside that
    folder fails."""
    names = {"sd", "sdxl", "flux2"}
    offences = []
    for module, tree in _modules().items():
        if module.startswith("portraitkit.models.families"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                literals = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
                if literals & names and "family" in ast.unparse(node):
                    offences.append(f"{module}: {ast.unparse(node)}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr" \
                    and len(node.args) == 2 and isinstance(node.args[1], ast.Constant) \
                    and node.args[1].value in {"transformer", "unet", "text_encoder_2"}:
                offences.append(f"{module}: {ast.unparse(node)}")
    assert not offences, offences
