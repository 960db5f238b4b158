"""The import graph of a package's source, read from its AST (nothing is imported).

tests/test_layers.py checks it against the layer order, tests/test_package_users.py that every module
is reached from the command line. Every import counts: module level, inside functions, under
``TYPE_CHECKING``; a module is named by its path below the package (``ct/images``; a package's
``__init__`` as ``ct/``, the root's as ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    """``a/b.py`` -> ``a/b``; ``a/__init__.py`` -> ``a/``; the root's ``__init__.py`` -> ``__init__``."""
    relative = path.relative_to(root).with_suffix("").as_posix()
    if relative.endswith("/__init__"):
        return relative[: -len("__init__")]
    return relative


def imports(path: Path, root: Path, package: str = "ctscribe") -> set[str]:
    """The package's modules that ``path`` imports anywhere, as :func:`module_name` spells them."""
    modules = {module_name(p, root) for p in root.rglob("*.py")}
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = [part for part in module_name(path, root).rstrip("/").split("/") if part != "__init__"]
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(dotted: list[str]) -> str | None:
        """The longest prefix of ``dotted`` (parts below the package) that is a module of the tree."""
        for end in range(len(dotted), -1, -1):
            parts = dotted[:end]
            if not parts:
                return "__init__"
            name = "/".join(parts)
            if name in modules:
                return name
            if name + "/" in modules:
                return name + "/"
        return None

    for node in ast.walk(tree):
        targets: list[list[str]] = []
        if isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == package]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package_parts = here if is_package else here[:-1]
                base = package_parts[: len(package_parts) - (node.level - 1)]
                start = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == package:
                start = node.module.split(".")[1:]
            else:
                continue
            targets = [[*start, alias.name] for alias in node.names]
        for dotted in targets:
            target = resolve(dotted)
            if target is not None:
                found.add(target)
    found.discard(module_name(path, root))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module of the tree under ``root`` -> the tree's modules it imports."""
    return {module_name(p, root): imports(p, root) for p in sorted(root.rglob("*.py"))}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """A small ``ctscribe`` package under ``root`` (file name -> text), for the checks' controls."""
    for name, text in files.items():
        path = root / "ctscribe" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "ctscribe"
