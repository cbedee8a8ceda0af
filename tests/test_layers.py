"""The import graph: dependencies point one way, from commands down to `files` and `errors`.

Every import counts, at module level, inside functions and under TYPE_CHECKING alike. A new
module must be given a layer here, which is where a reviewer sees where it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "unmask"

# Top to bottom. A module may import modules of its own layer (without a cycle) or below.
LAYERS: list[tuple[str, ...]] = [
    ("cli", "__main__"),
    ("commands",),
    ("serve", "serve.app", "serve.walkthrough", "serve.runs"),
    ("train",),
    ("run",),
    ("downstream",),
    ("finetune", "probe"),
    ("persist", "evaluate", "infer", "compare", "charts", "pairs", "tokenizer_training", "data.prepare", "tasks"),
    (
        "model",
        "architectures",
        "optimizer",
        "batching",
        "distributed",
        "checkpoint",
        "masking",
        "data.windows",
        "data.store",
        "data.sources",
        "data.formats",
        "data.mixture",
        "data.records",
        "data.encoding",
    ),
    ("progress", "tracking", "preemption", "cpu_dropout"),
    ("tokenizer", "hardware", "schedule", "config", "tables", "recipes", "data"),
    ("hub", "rundir", "data.layout", "files"),
    ("errors", ""),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    name = ".".join(parts)
    return "config" if name.startswith("config") else name  # the settings package is one unit


def _known(name: str) -> str | None:
    """The graph node an `unmask.X.Y` import reaches, or None for a name inside a module."""
    name = name.removeprefix("unmask").removeprefix(".")
    if name.startswith("config"):
        return "config"
    while name and name not in RANK:
        name = name.rpartition(".")[0]
    return name if name in RANK else None


def imports(path: Path) -> set[str]:
    """The unmask modules a file imports, wherever in the file the import is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_known(a.name) for a in node.names if a.name.startswith("unmask")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unmask"):
            found.add(_known(node.module))
            found |= {_known(f"{node.module}.{a.name}") for a in node.names}  # `from unmask import checkpoint`
    return {name for name in found if name}


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        edges.setdefault(name, set()).update(imports(path) - {name})
    return edges


def test_every_module_has_a_layer():
    unplaced = sorted(set(graph()) - set(RANK))
    assert not unplaced, f"give these modules a layer in LAYERS: {unplaced}"


def test_no_module_imports_from_a_layer_above_it():
    upward = [
        f"{source} (layer {RANK[source]}) imports {target} (layer {RANK[target]})"
        for source, targets in graph().items()
        for target in targets
        if RANK[target] < RANK[source]
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    edges = graph()
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
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from unmask.train import Run\n"
        "def f():\n    from unmask import checkpoint, errors\n    import unmask.data.store\n"
    )
    assert imports(sample) == {"train", "checkpoint", "errors", "data.store"}
