"""Every module under ``src/ctscribe`` is reached from a command a user runs, not only from tests.

A module that only tests or bench/ import belongs in tests/support/ (issue 25): shipped in the
wheel, it would be code no user runs and no user-facing test guards. The entry points are the
console script (pyproject's ``[project.scripts]``), ``python -m ctscribe`` and any module with a
``__main__`` guard; a module is reached when a chain of imports (at any depth, inside functions too,
as tests/support/import_graph.py reads them) leads to it from one of them. Importing ``a/b`` runs
``a/``'s ``__init__`` first, so a reached module reaches its packages too.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import ctscribe
from support.import_graph import import_graph, module_name, write_tree

SRC = Path(ctscribe.__file__).parent
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def entry_points(root: Path, pyproject: Path | None) -> set[str]:
    """The modules a user starts: console scripts, the package's ``__main__``, ``__main__`` guards."""
    found = {"__main__"} if (root / "__main__.py").is_file() else set()
    if pyproject is not None:
        scripts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"].get("scripts", {})
        for target in scripts.values():
            dotted = target.split(":")[0].split(".")
            found.add("/".join(dotted[1:]) if len(dotted) > 1 else "__init__")
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.If)
                and "__name__" in ast.unparse(node.test)
                and "__main__" in ast.unparse(node.test)
            ):
                found.add(module_name(path, root))
    return found


def packages_of(module: str) -> set[str]:
    """The packages whose ``__init__`` runs before ``module``: ``a/b/c`` -> ``a/``, ``a/b/``, ``__init__``."""
    parts = module.rstrip("/").split("/")[:-1]
    return {"__init__"} | {"/".join(parts[: end + 1]) + "/" for end in range(len(parts))}


def unreached(root: Path, pyproject: Path | None) -> set[str]:
    """The tree's modules that no entry point reaches."""
    graph = import_graph(root)
    reached: set[str] = set()
    todo = list(entry_points(root, pyproject))
    while todo:
        module = todo.pop()
        if module in reached or module not in graph:
            continue
        reached.add(module)
        todo.extend(graph[module] | packages_of(module))
    return set(graph) - reached


def test_every_module_is_reached_from_a_command():
    left = unreached(SRC, PYPROJECT)
    assert left == set(), "only tests or bench reach these: move them to tests/support/"
    # Not vacuous: the console script is found and reaches most of the package through cli.
    assert "cli" in entry_points(SRC, PYPROJECT)
    assert len(import_graph(SRC)) - len(left) > 60


def test_control_a_module_only_tests_import_is_found(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n[project.scripts]\nx = "ctscribe.cli:main"\n')
    root = write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "cli.py": "def main():\n    from ctscribe.steps.run import go\n",  # lazily, as the CLI does
            "steps/__init__.py": "",
            "steps/run.py": "from . import helper\n",
            "steps/helper.py": "",
            "page.py": "if __name__ == '__main__':\n    pass\n",  # started with python -m
            "fixtures/__init__.py": "",
            "fixtures/stand_in.py": "from ctscribe.steps import helper\n",  # imports, is not imported
        },
    )
    assert unreached(root, pyproject) == {"fixtures/", "fixtures/stand_in"}
    assert unreached(root, None) == {
        "cli",
        "steps/",
        "steps/run",
        "steps/helper",
        "fixtures/",
        "fixtures/stand_in",
    }
