"""Shared contracts have one owner: checked on the source tree itself, so a copy or a stray import fails.

- Only the fixtures, the demo and the CLI's ``fixtures`` commands import ``ctscribe.fixtures``:
  shipped code never takes a value (a token id, a prompt) from the test model. The CLI reads
  ``ctscribe.fixtures.options`` at module level: the defaults and help of its fixtures and demo
  commands, which it needs when it defines them.
- The default pixel budget, each default prompt and the ``<image>`` placeholder are written once in
  the Python sources; Qwen's special-token ids are not written at all outside the fixtures (they are
  read from the tokenizer or the model config).
- Every default of a command's options is owned by one field of an options dataclass (any
  ``@dataclass`` named ``*Options``): no other default in the package (a parameter, a dataclass
  field, a keyword argument) writes the same literal under the same name, and each ``ctscribe``
  command takes its defaults from the options through ``cli.option`` (None and False, "not given"
  and "off", aside).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

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
FIXTURE_OPTIONS = "ctscribe.fixtures.options"  # the options of `ctscribe fixtures ...` and `ctscribe demo`


def _sources() -> list[tuple[str, ast.Module, str]]:
    return [
        (path.relative_to(SRC).as_posix(), ast.parse(path.read_text(), str(path)), path.read_text())
        for path in sorted(SRC.rglob("*.py"))
    ]


SOURCES = _sources()


def _fixture_imports(tree: ast.Module) -> list[tuple[int, str | None, str]]:
    """(line, enclosing top-level function or None, module) of every import of ``ctscribe.fixtures``."""
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
                found.append((node.lineno, owner, names[0]))
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
        for line, owner, module in _fixture_imports(tree):
            options = name == "cli.py" and module == FIXTURE_OPTIONS
            if name.startswith("fixtures/") or name in FIXTURE_IMPORTERS or owner in commands or options:
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


# Keys whose value is a model's context length in tokens: Qwen3-VL's and Qwen3.5's is 262,144, the same
# number as the pixel budget, and the fixtures that copy those configs must write it.
CONTEXT_LENGTH_KEYS = {"max_position_embeddings", "model_max_length"}


def _context_lengths(tree: ast.Module) -> set[int]:
    """ids of the values given to a context-length key, in a dict literal or as a keyword argument."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            found |= {
                id(value)
                for key, value in zip(node.keys, node.values, strict=True)
                if isinstance(key, ast.Constant) and key.value in CONTEXT_LENGTH_KEYS
            }
        elif isinstance(node, ast.keyword) and node.arg in CONTEXT_LENGTH_KEYS:
            found.add(id(node.value))
    return found


def test_the_default_pixel_budget_is_written_once():
    """One number in code; help text and comments name the constant, not the number (the fixtures,
    which describe their own files, and the owner's reasoning aside; a context length that happens
    to be the same number is not the budget)."""
    spelled = re.compile(r"\b262[,_ ]?144\b|\b512 ?[x\u00d7*] ?512\b")
    numbers, texts = [], []
    for name, tree, text in SOURCES:
        lengths = _context_lengths(tree)
        numbers += [
            f"{name}:{node.lineno}"
            for node, value in _literal_expressions(tree)
            if type(value) is int and value == DEFAULT_MAX_PIXELS and id(node) not in lengths
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


def test_a_context_length_is_not_the_pixel_budget():
    """Control: only the value of a context-length key is let through, not the same number elsewhere."""
    n = DEFAULT_MAX_PIXELS
    tree = ast.parse(f"a = {{'max_position_embeddings': {n}}}\nf(model_max_length={n})\nb = {n}\n")
    lengths = _context_lengths(tree)
    flagged = [
        node.lineno
        for node, value in _literal_expressions(tree)
        if value == DEFAULT_MAX_PIXELS and id(node) not in lengths
    ]
    assert flagged == [3]


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


# ---------------------------------------------------------------------------------------------
# Every default of a command's options has one owner: a field of an options dataclass.

NO_LITERAL = object()


def _literal(node: ast.expr | None) -> object:
    """The value of a literal (``8``, ``"en"``, ``-1``, ``512 * 512``), else NO_LITERAL."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        value = _constant_value(node)
        return NO_LITERAL if value is None else value
    return NO_LITERAL


def _same(a: object, b: object) -> bool:
    """Equal and of one type (``1`` is not ``True``, ``8`` not ``8.0``); an enum member by its value."""
    a, b = (x.value if isinstance(x, enum.Enum) else x for x in (a, b))
    return type(a) is type(b) and a == b


def _is_dataclass(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(target).split(".")[-1] == "dataclass"


def _field_default(value: ast.expr) -> ast.expr | None:
    """A dataclass field's default expression: ``= X`` or ``= field(default=X, ...)``."""
    if isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] == "field":
        return next((k.value for k in value.keywords if k.arg == "default"), None)
    return value


def default_positions(tree: ast.Module) -> Iterator[tuple[int, str | None, str, ast.expr]]:
    """(line, enclosing class or None, name, expression) of every default a module writes: parameter
    defaults (keyword-only ones too) and class-level annotated fields (``= X``, ``field(default=X)``).

    A keyword argument of a call is no default: ``build_tiny_model(out, size="tiny")`` chooses."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [*zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)]
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                yield default.lineno, None, arg.arg, default
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value:
                    default = _field_default(item.value)
                    if default is not None:
                        yield item.lineno, node.name, item.target.id, default


def _module_of(file: str) -> str:
    return "ctscribe." + file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def options_classes(sources) -> dict[tuple[str, str], ast.ClassDef]:
    """Every top-level ``@dataclass`` whose name ends in ``Options``, by (file, class)."""
    return {
        (name, node.name): node
        for name, tree, _ in sources
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and node.name.endswith("Options")
        and any(_is_dataclass(d) for d in node.decorator_list)
    }


def owned_defaults(sources=SOURCES) -> list[tuple[str, str, str, object]]:
    """(file, class, field, default) of every options field whose default is checked for copies.

    Not checked: None, and the zero of a type (0, 0.0, False, ""), everyone's "not given", "first" or
    "off", which unrelated parameters share by nature (a bootstrap's seed is no fixture's seed); and a
    default computed by a call (``max(1, os.cpu_count() - 1)``), which no literal can copy.
    """
    owned = []
    for (file, name), node in options_classes(sources).items():
        cls = getattr(importlib.import_module(_module_of(file)), name)
        written = {
            item.target.id: _field_default(item.value)
            for item in node.body
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value
        }
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING or not f.default or isinstance(written.get(f.name), ast.Call):
                continue
            owned.append((file, name, f.name, f.default))
    return owned


class Copy(NamedTuple):
    file: str
    line: int
    name: str
    value: object
    owners: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.name}={self.value!r} copies {self.owners}"


def copied_defaults(owned, sources) -> tuple[list[Copy], set[tuple[str, str, str]]]:
    """Literal defaults written under an options field's name with its value, anywhere but as the
    literal of the one field that owns it; and the (file, class, field) owners whose literal was seen.

    A literal default of an options field is its owner; a second options field with the same name
    and literal is a copy too (it must read the first, as ``ExportOptions.engine`` reads
    ``TrainOptions.engine``)."""
    options = set(options_classes(sources))
    copies, seen = [], set()
    for file, tree, _ in sources:
        for line, cls, name, node in default_positions(tree):
            value = _literal(node)
            if value is NO_LITERAL:
                continue
            matches = [o for o in owned if o[2] == name and _same(value, o[3])]
            if not matches:
                continue
            owner = (file, cls) in options and any(o[:2] == (file, cls) for o in matches)
            if owner and not any(s[2] == name and _same(value, s[3]) for s in seen):
                seen.add((file, cls, name, value))
                continue
            copies.append(Copy(file, line, name, value, ", ".join(f"{o[1]}.{o[2]}" for o in matches)))
    return copies, {s[:3] for s in seen}


OWNED = owned_defaults()
# Defaults that share an options field's name and value but are another option, each with the reason.
INDEPENDENT = {
    (
        "fixtures/learning.py",
        "batch_size",
        16,
    ): "the learning score's generation batch, not translate's",
}


def test_no_default_of_an_option_is_copied():
    copies, seen = copied_defaults(OWNED, SOURCES)
    found = [copy for copy in copies if (copy.file, copy.name, copy.value) not in INDEPENDENT]
    assert not found, "a default written again instead of read from its options field:\n" + "\n".join(
        map(str, found)
    )
    # Each exception still names a default the scan finds: the list cannot go stale.
    assert {(copy.file, copy.name, copy.value) for copy in copies} == set(INDEPENDENT)
    # Not vacuous: the options are found, and the scan sees each owner's own literal default.
    classes = {name for _, name in options_classes(SOURCES)}
    assert {
        "ImageOptions",
        "StageOptions",
        "FinalizeOptions",
        "TranslateOptions",
        "GenerateOptions",
    } <= classes
    assert {"val_fraction", "test_fraction", "name", "batch_size", "max_tokens"} <= {f for _, _, f in seen}
    # A default held by a constant is checked too: 256 is GenerateOptions.max_new_tokens's value.
    assert ("generate/options.py", "GenerateOptions", "max_new_tokens", 256) in OWNED


COPIES = """
from dataclasses import dataclass, field

@dataclass
class LocalOptions:
    batch_size: int = field(default=8, metadata={"help": "Images generated together."})
    name: str = NAME

@dataclass
class OtherOptions:
    batch_size: int = 8
    name: str = field(default="mllm_med")

def run(x, batch_size=8, *, name: str = "mllm_med", seed: int = 0, size: int = 9):
    return run(x, batch_size=8, name="other")

step = lambda batch_size=8: batch_size
"""


def test_the_copy_detector_finds_each_kind_of_copy():
    """Control: a copy in each kind of default position is found (a second options field, a class
    field, a parameter, a keyword-only parameter, a lambda's), and nothing else: not a call's
    keyword argument, another name or another value."""
    sources = [("local.py", ast.parse(COPIES), COPIES)]
    owned = [("local.py", "LocalOptions", "batch_size", 8), ("local.py", "LocalOptions", "name", "mllm_med")]
    copies, seen = copied_defaults(owned, sources)
    assert sorted(copy.line for copy in copies) == [11, 12, 14, 14, 17], copies
    assert seen == {("local.py", "LocalOptions", "batch_size")}


def _command_parameters(tree: ast.Module) -> Iterator[tuple[str, ast.arg, ast.expr]]:
    """(command, parameter, default) of every ``@<typer app>.command`` function's defaulted parameter."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call) and ast.unparse(d.func).endswith(".command") for d in node.decorator_list
        ):
            args = node.args.args
            for arg, default in zip(
                args[len(args) - len(node.args.defaults) :], node.args.defaults, strict=True
            ):
                yield node.name, arg, default


def _option_call(annotation: ast.expr | None, aliases: dict[str, ast.expr]) -> ast.Call | None:
    """The ``option(X, "field", ...)`` inside ``Annotated[...]``, following a module-level alias."""
    if isinstance(annotation, ast.Name) and annotation.id in aliases:
        annotation = aliases[annotation.id]
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
        for part in annotation.slice.elts[1:]:  # type: ignore[attr-defined]
            if isinstance(part, ast.Call) and ast.unparse(part.func) == "option":
                return part
    return None


def cli_defaults_not_from_options(tree: ast.Module) -> tuple[dict[str, list[str]], list[str]]:
    """Per command, the parameters whose default is neither None, False nor ``X.field`` of their
    ``option(X, "field")``; and the parameters that take theirs from an option (for the control)."""
    aliases = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    stray: dict[str, list[str]] = {}
    owned = []
    for command, arg, default in _command_parameters(tree):
        stray.setdefault(command, [])
        if isinstance(default, ast.Constant) and (default.value is None or default.value is False):
            continue
        call = _option_call(arg.annotation, aliases)
        wanted = f"{ast.unparse(call.args[0])}.{_literal(call.args[1])}" if call else None
        if wanted is not None and ast.unparse(default) == wanted:
            owned.append(f"{command}.{arg.arg}")
        else:
            want = f"= {wanted}" if wanted else 'from option(XOptions, "field") = XOptions.field'
            stray[command].append(f"{command}({arg.arg}={ast.unparse(default)}): want the default {want}")
    return stray, owned


CLI = next(tree for name, tree, _ in SOURCES if name == "cli.py")
STRAY, FROM_OPTIONS = cli_defaults_not_from_options(CLI)


@pytest.mark.parametrize("command", sorted(STRAY))
def test_the_cli_takes_every_default_from_an_options_field(command):
    assert not STRAY[command], "\n".join(STRAY[command])


def test_the_cli_check_sees_the_options_and_the_commands():
    """Not vacuous: the commands are found, and options read through aliases and directly are seen."""
    assert {"prepare", "prepare_merge", "translate", "train", "export", "predict", "evaluate", "demo"} <= set(
        STRAY
    )
    assert {"fixtures_tiny_model", "fixtures_phantom"} <= set(STRAY)
    assert {
        "predict.max_new_tokens",  # through the MaxNewTokens alias
        "evaluate.max_new_tokens",
        "prepare_merge.val_fraction",
        "translate.name",  # directly
        "fixtures_phantom.rows",
    } <= set(FROM_OPTIONS)
