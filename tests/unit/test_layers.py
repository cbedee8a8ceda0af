"""The import graph: the packages of src/unmask are its layers, and dependencies point one
way, from the CLI down to `storage` and `errors`.

Every import counts, at module level, inside functions and under TYPE_CHECKING alike. A new
package must be given a layer here, which is where a reviewer sees where it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "unmask"

# Top to bottom: the packages (and the few top-level modules) of src/unmask. A package may
# import from its own layer's packages (without a cycle) or below; inside a package, modules
# may import each other without a cycle. Pretraining reaches downstream scoring only through
# the hook `api.train` hands it (`tasks` sits above `pretrain`, and nothing below imports it).
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__", ""),
    ("serve",),
    ("api",),
    ("tasks",),
    ("pretrain",),
    ("evaluation",),
    ("infer",),
    ("runtime",),
    ("models",),
    ("data",),
    ("config",),
    ("storage",),
    ("errors", "tables"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    """`unmask.runtime.persist` for src/unmask/runtime/persist.py; `` for the package's own __init__."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: its layer's unit."""
    return module.split(".")[0]


def _known(name: str, modules: set[str]) -> str | None:
    """The module an `unmask.X.Y` import reaches (a name inside a module reaches the module)."""
    name = name.removeprefix("unmask").removeprefix(".")
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name if name in modules else None


def all_modules() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py")}


def imports(path: Path, modules: set[str] | None = None) -> set[str]:
    """The unmask modules a file imports, wherever in the file the import is."""
    modules = all_modules() if modules is None else modules
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_known(a.name, modules) for a in node.names if a.name.startswith("unmask")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unmask"):
            for alias in node.names:  # `from unmask.storage import checkpoint` reaches the module, not storage/__init__
                submodule = f"{node.module}.{alias.name}".removeprefix("unmask").removeprefix(".")
                found.add(submodule if submodule in modules else _known(node.module, modules))
    return {name for name in found if name}


def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports. A package's __init__ counts as a module of its own:
    `from unmask.config import X` reaches `config` (its __init__), which re-exports."""
    modules = all_modules()
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        edges.setdefault(name, set()).update(imports(path, modules) - {name})
    return edges


def test_every_package_has_a_layer():
    unplaced = sorted({unit(name) for name in graph()} - set(RANK))
    assert not unplaced, f"give these packages or modules a layer in LAYERS: {unplaced}"


def test_no_package_imports_from_a_layer_above_it():
    upward = [
        f"{source} ({unit(source)}, layer {RANK[unit(source)]}) imports {target} ({unit(target)}, layer {RANK[unit(target)]})"
        for source, targets in graph().items()
        for target in targets
        if source and RANK[unit(target)] < RANK[unit(source)]
    ]
    assert not upward, "\n".join(upward)


def test_the_packages_import_each_other_without_a_cycle():
    """Two packages of one layer may not lean on each other either (a circle of packages)."""
    packages: dict[str, set[str]] = {}
    for source, targets in graph().items():
        if source:
            packages.setdefault(unit(source), set()).update(unit(t) for t in targets if unit(t) != unit(source))
    _assert_acyclic(packages)


def test_the_import_graph_has_no_cycle():
    _assert_acyclic({k: v for k, v in graph().items() if k})


def _assert_acyclic(edges: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(target) :], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path):
    """The checker itself must not miss the imports that hide: a test that could not fail is a defect."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from unmask.pretrain.step import Run\n"
        "def f():\n    from unmask.storage import checkpoint\n    from unmask import errors\n    import unmask.data.store\n"
    )
    assert imports(sample) == {"pretrain.step", "storage.checkpoint", "errors", "data.store"}
