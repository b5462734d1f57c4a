"""The house's layout: imports run one way and never in a circle (docs/architecture.md, Layout).

The graph is read from the source with ``ast``, so it holds every import: module level,
inside functions (the lazy ones that keep start-up fast) and under ``TYPE_CHECKING``. A
lazy import still ties two modules together: a cycle through one only waits for the
first call to break.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trendloop", "pipelines", "serving", "active_learning", "infra", "feature_repo", "components")

# Which parts of the project each part may import (besides itself). The face and the
# pipelines may use everything; serving and active learning use the steps; the steps'
# stages run data -> features -> model -> monitor (-> privacy) and never back.
BASE = {"components.errors", "components.files"}
ALLOWED: dict[str, set[str]] = {
    "components.errors": set(),
    "components.files": set(),
    "components.data": BASE,
    "components.simulator": BASE | {"components.data"},
    "components.features": BASE | {"components.data", "feature_repo"},
    "components.model": BASE | {"components.data", "components.features"},
    "components.monitor": BASE | {"components.data", "components.features", "components.model"},
    # forgetting reaches every store: the snapshots, Feast's online rows, the registry's versions
    "components.privacy": BASE | {"components.data", "components.features", "components.model"},
    "feature_repo": set(),
    "infra": BASE,
    "active_learning": BASE | {"components.data", "components.features", "components.model"},
    "serving": BASE
    | {"components.data", "components.features", "components.model", "components.monitor", "components.simulator"},
    "pipelines": {"*"},
    "trendloop": {"*"},
}


def modules() -> dict[str, Path]:
    """Every module of the project's packages by dotted name (a package by its ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Every dotted name ``module`` imports, wherever the import sits; ``from a import b`` yields ``a.b``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: counted from the importing module's package
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project's modules it imports (a name is cut back to the longest module it names)."""

    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in found.items():
        targets = {resolve(name) for name in imported_names(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, 1972), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def part(module: str) -> str:
    """The part of the layout a module belongs to: a top-level package, or a stage of ``components``."""
    pieces = module.split(".")
    return ".".join(pieces[:2]) if pieces[0] == "components" and len(pieces) > 1 else pieces[0]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(modules())


def test_the_cycle_finder_finds_a_circle_through_a_lazy_import(tmp_path):
    """The checks below are only as good as the reader: a planted circle must be seen."""
    package = tmp_path / "components"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model" / "__init__.py").write_text("")
    (package / "model" / "a.py").write_text("from components.model.b import f\n")
    (package / "model" / "b.py").write_text("def f():\n    from . import c\n")
    (package / "model" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import components.model.a\n"
    )
    found = {
        name: package / path
        for name, path in {
            "components": "__init__.py",
            "components.model": "model/__init__.py",
            "components.model.a": "model/a.py",
            "components.model.b": "model/b.py",
            "components.model.c": "model/c.py",
        }.items()
    }
    graph = import_graph(found)
    assert graph["components.model.b"] == {"components.model.c"}
    assert cycles(graph) == [["components.model.a", "components.model.b", "components.model.c"]]
    graph["components.model.c"] = set()
    assert cycles(graph) == []


def test_no_module_imports_itself_back_through_others(graph):
    assert cycles(graph) == []


def test_imports_run_one_way_between_the_parts_of_the_layout(graph):
    def allowed(module: str, target: str) -> bool:
        may = ALLOWED[part(module)]
        return part(target) == part(module) or "*" in may or part(target) in may

    broken = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets if not allowed(m, t))
    assert broken == []


def test_every_part_of_the_layout_is_declared(graph):
    """A new package or stage must say what it may import before the rule above can hold it."""
    assert {part(module) for module in graph} - {"components"} == set(ALLOWED)


def test_components_keeps_its_modules_in_stages():
    top = sorted(path.stem for path in (ROOT / "components").glob("*.py") if path.stem != "__init__")
    assert top == ["errors", "files"]


@pytest.mark.parametrize("stage", ["data", "features", "model", "monitor", "simulator"])
def test_each_stage_says_what_it_owns_and_imports_nothing_on_its_own(stage):
    """A stage's ``__init__`` is its docstring: importing one step never loads its neighbours."""
    tree = ast.parse((ROOT / "components" / stage / "__init__.py").read_text())
    doc = ast.get_docstring(tree)
    assert doc and len(doc.split()) >= 8
    assert [type(node).__name__ for node in tree.body] == ["Expr"]
