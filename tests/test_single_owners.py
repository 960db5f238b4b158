"""Shared contracts have one owner: checked on the source tree itself, so a copy or a stray import fails.

- Only the fixtures, the demo and the CLI's ``fixtures`` commands import ``ctscribe.fixtures``:
  shipped code never takes a value (a token id, a prompt) from the test model.
- The default pixel budget, each default prompt and the ``<image>`` placeholder are written once in
  the Python sources; Qwen's special-token ids are not written at all outside the fixtures (they are
  read from the tokenizer or the model config).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

import ctscribe
from ctscribe.conversation.prompts import DEFAULT_PROMPTS
from ctscribe.conversation.records import IMAGE_PLACEHOLDER
from ctscribe.model_settings import DEFAULT_MAX_PIXELS

SRC = Path(ctscribe.__file__).parent
FIXTURE_IMPORTERS = {"demo.py"}  # besides fixtures/ itself and cli.py's fixtures commands
# Qwen2's special tokens: <|endoftext|> 151643 ... <|video_pad|> 151656.
SPECIAL_TOKEN_IDS = range(151643, 151657)
FIXTURES_COMMAND = "fixtures_app.command"  # cli.py's decorator of the `ctscribe fixtures ...` commands


def _sources() -> list[tuple[str, ast.Module, str]]:
    return [
        (path.relative_to(SRC).as_posix(), ast.parse(path.read_text(), str(path)), path.read_text())
        for path in sorted(SRC.rglob("*.py"))
    ]


SOURCES = _sources()


def _fixture_imports(tree: ast.Module) -> list[tuple[int, str | None]]:
    """(line, enclosing top-level function or None) of every import of ``ctscribe.fixtures``."""
    found = []
    for top in tree.body:
        owner = top.name if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef) else None
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            if any(name == "ctscribe.fixtures" or name.startswith("ctscribe.fixtures.") for name in names):
                found.append((node.lineno, owner))
    return found


def _fixtures_commands(tree: ast.Module) -> set[str]:
    """Top-level functions decorated ``@fixtures_app.command(...)``: the CLI's ``fixtures`` group."""
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(
            isinstance(d, ast.Call) and ast.unparse(d.func) == "fixtures_app.command"
            for d in node.decorator_list
        )
    }


def test_only_fixtures_demo_and_the_fixtures_commands_import_the_fixtures():
    stray, allowed = [], []
    for name, tree, _ in SOURCES:
        commands = _fixtures_commands(tree) if name == "cli.py" else set()
        for line, owner in _fixture_imports(tree):
            if name.startswith("fixtures/") or name in FIXTURE_IMPORTERS or owner in commands:
                allowed.append(f"{name}:{line}")
            else:
                stray.append(f"{name}:{line} ({owner or 'module level'})")
    assert not stray, f"shipped code imports ctscribe.fixtures: {stray}"
    # The detector sees the imports that are allowed (so it would see a stray one too).
    assert any(entry.startswith("cli.py:") for entry in allowed)
    assert any(entry.startswith("demo.py:") for entry in allowed)


ARITHMETIC = (ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop)


def _constant_value(node: ast.BinOp) -> object:
    """The value of arithmetic on literals only (``512 * 512``), else None."""
    if not all(isinstance(part, ARITHMETIC) for part in ast.walk(node)):
        return None  # a name, a call, anything not made of literals
    try:
        return eval(compile(ast.Expression(node), "<expr>", "eval"), {"__builtins__": {}})
    except Exception:  # literals that do not combine ("a" * -1.5)
        return None


def _literal_expressions(tree: ast.Module):
    """Constants and the largest constant-only arithmetic expressions (not their parts) of a module."""
    inside_arithmetic = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and id(node) not in inside_arithmetic:
            value = _constant_value(node)
            if value is not None:
                inside_arithmetic.update(id(child) for child in ast.walk(node) if child is not node)
                yield node, value
        elif isinstance(node, ast.Constant) and id(node) not in inside_arithmetic:
            yield node, node.value


def _comments(text: str) -> list[str]:
    return [
        tok.string
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type == tokenize.COMMENT
    ]


def test_the_default_pixel_budget_is_written_once():
    """One number in code; help text and comments name the constant, not the number (the fixtures,
    which describe their own files, and the owner's reasoning aside)."""
    spelled = re.compile(r"\b262[,_ ]?144\b|\b512 ?[x\u00d7*] ?512\b")
    numbers, texts = [], []
    for name, tree, text in SOURCES:
        numbers += [
            f"{name}:{node.lineno}"
            for node, value in _literal_expressions(tree)
            if type(value) is int and value == DEFAULT_MAX_PIXELS
        ]
        if name == "model_settings.py" or name.startswith("fixtures/"):
            continue
        texts += [
            f"{name}:{node.lineno}"
            for node, value in _literal_expressions(tree)
            if isinstance(value, str) and spelled.search(value)
        ]
        texts += [f"{name}: {comment}" for comment in _comments(text) if spelled.search(comment)]
    assert numbers == [f"model_settings.py:{_line_of('model_settings.py', 'DEFAULT_MAX_PIXELS =')}"]
    assert not texts, f"the budget spelled out instead of DEFAULT_MAX_PIXELS: {texts}"


def _line_of(file: str, start: str) -> int:
    text = next(text for name, _, text in SOURCES if name == file)
    return next(number for number, line in enumerate(text.splitlines(), 1) if line.startswith(start))


@pytest.mark.parametrize(
    ("value", "owner"),
    [
        *[(prompt, "conversation/prompts.py") for prompt in DEFAULT_PROMPTS.values()],
        (IMAGE_PLACEHOLDER, "conversation/records.py"),
    ],
)
def test_the_default_prompts_and_the_placeholder_are_written_once(value, owner):
    where = [
        f"{name}:{node.lineno}"
        for name, tree, _ in SOURCES
        for node, constant in _literal_expressions(tree)
        if isinstance(constant, str) and (constant == value or (len(value) > 10 and value in constant))
    ]
    assert len(where) == 1 and where[0].startswith(f"{owner}:"), where


def test_special_token_ids_are_read_not_written_outside_the_fixtures():
    written = [
        f"{name}:{node.lineno} ({value})"
        for name, tree, _ in SOURCES
        if not name.startswith("fixtures/")
        for node, value in _literal_expressions(tree)
        if type(value) is int and value in SPECIAL_TOKEN_IDS
    ]
    assert not written, f"token ids written as numbers (read them from the tokenizer or config): {written}"
    # The fixtures do write them, and the check sees that: it is not vacuous.
    assert any(
        type(value) is int and value in SPECIAL_TOKEN_IDS
        for name, tree, _ in SOURCES
        if name == "fixtures/tiny_model.py"
        for _, value in _literal_expressions(tree)
    )
