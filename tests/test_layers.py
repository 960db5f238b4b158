"""The layer order of docs/ARCHITECTURE.md holds for every import in ``src/ctscribe``.

Every import counts: module level, inside functions, under ``TYPE_CHECKING``. The table in the doc
is the single statement of the order; this test parses it. Controls run the same checks on small
trees written here, so a check that could not fail would fail them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ctscribe
from support.import_graph import import_graph, write_tree

SRC = Path(ctscribe.__file__).parent
DOC = Path(__file__).parents[1] / "docs" / "ARCHITECTURE.md"


def layer_table(doc: Path = DOC) -> list[tuple[str, list[str]]]:
    """(layer name, module patterns) in order, from the doc's table; a pattern ending in / is a package."""
    rows = []
    for line in doc.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`"):
            rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


def layer_of(module: str, table: list[tuple[str, list[str]]]) -> int:
    """The index of the most specific row whose pattern names ``module``."""
    best: tuple[int, int] | None = None  # (pattern length, row)
    for row, (_, patterns) in enumerate(table):
        for pattern in patterns:
            hit = module == pattern or (pattern.endswith("/") and module.startswith(pattern))
            if hit and (best is None or len(pattern) > best[0]):
                best = (len(pattern), row)
    if best is None:
        raise AssertionError(f"{module} is in no layer of {DOC.name}: add it to the table")
    return best[1]


def against_the_order(graph: dict[str, set[str]], table) -> list[str]:
    """Every import from a layer to a later one, as ``source (layer) -> target (layer)``."""
    bad = []
    for source, targets in graph.items():
        mine = layer_of(source, table)
        for target in sorted(targets):
            theirs = layer_of(target, table)
            if theirs > mine:
                bad.append(f"{source} ({table[mine][0]}) -> {target} ({table[theirs][0]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Imports between packages (a top-level module is a package of its own)."""

    def package(module: str) -> str:
        return module.split("/")[0] + "/" if "/" in module else module

    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        mine = package(source)
        packages.setdefault(mine, set()).update(package(t) for t in targets if package(t) != mine)
    return packages


GRAPH = import_graph(SRC)
TABLE = layer_table()


def test_the_table_names_every_module_and_no_pattern_in_vain():
    assert len(TABLE) >= 10
    for module in GRAPH:
        layer_of(module, TABLE)  # raises for a module in no layer
    used = {pattern for _, patterns in TABLE for pattern in patterns}
    named = {p for p in used if any(m == p or (p.endswith("/") and m.startswith(p)) for m in GRAPH)}
    assert named == used, f"patterns that name no module: {sorted(used - named)}"


def test_no_import_goes_against_the_layer_order():
    assert against_the_order(GRAPH, TABLE) == []
    # Not vacuous: the graph holds imports, within layers and down the order.
    assert sum(len(targets) for targets in GRAPH.values()) > 150
    assert "ct/images" in GRAPH["generate/engine"]


def test_no_two_files_and_no_two_packages_import_each_other():
    assert cycles(GRAPH) == []
    assert cycles(package_graph(GRAPH)) == []


# ------------------------------------------------------------------------------------------------
# Controls: the same checks on trees with the faults they look for.


@pytest.fixture
def control(tmp_path) -> tuple[Path, list]:
    root = write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "def f():\n    from ctscribe.high import b\n",  # upward, inside a function
            "low/c.py": "import typing\nif typing.TYPE_CHECKING:\n    from ctscribe.low.d import X\n",
            "low/d.py": "from . import c\n",  # with c: two files importing each other
            "high/__init__.py": "",
            "high/b.py": "from ctscribe.low import a\n",
        },
    )
    doc = tmp_path / "layers.md"
    doc.write_text(
        "| layer | modules | owns |\n| --- | --- | --- |\n| low | `__init__`, `low/` | x |\n"
        "| high | `high/` | y |\n"
    )
    return root, layer_table(doc)


def test_control_an_upward_import_inside_a_function_is_found(control):
    root, table = control
    graph = import_graph(root)
    assert against_the_order(graph, table) == ["low/a (low) -> high/b (high)"]


def test_control_file_and_package_cycles_are_found(control):
    root, _ = control
    graph = import_graph(root)
    assert ["low/c", "low/d"] in cycles(graph)  # a TYPE_CHECKING import and a relative import
    assert ["high/", "low/"] in cycles(package_graph(graph))
