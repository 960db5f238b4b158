"""Only ``ctscribe.models`` (and the fixtures that build a family's test checkpoint) names a model family.

Every family-specific rule lives behind ``ctscribe.models.Family``; a module that names a family's
class (``Qwen2VLForConditionalGeneration``), its ``model_type`` (``qwen2_vl``), its name
(``Qwen2-VL``) or one of its functions (``smart_resize``, ``get_rope_index``) holds that family's
rule instead of asking the family, so adding a family would silently miss it. The whole text of each
module counts: code, help strings, docstrings and comments.

Not scanned: YAML and other data files. The recipes are data that say which checkpoint a run trained
(the ``original`` recipe reproduces train.sh, whose model is the default family's); the LLaMA-Factory
template is no recipe key but the family's (``Family.llamafactory_template``).
"""

from __future__ import annotations

import re
from pathlib import Path

import ctscribe
from support.import_graph import write_tree

SRC = Path(ctscribe.__file__).parent
# Family classes and constants, in the spellings code, docs and Hub ids use: Qwen2VL..., Qwen2_5_VL...,
# Qwen3VL..., Qwen3_5..., qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5, Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
# Qwen3.5, qwen2-vl; and the family functions and attributes ctscribe used to call by name.
FAMILY_NAME = re.compile(
    r"qwen[-_]?[23](?:[._]5)?[-_]?vl|qwen3[._]5|smart_resize|get_rope_index|spatial_merge_size",
    re.IGNORECASE,
)
OWNERS = ("models/", "fixtures/")  # the seam, and the fixtures that build each family's checkpoint


def family_names(root: Path) -> tuple[list[str], list[str]]:
    """(``file:line: name`` outside the owners, the same inside them) for every family name."""
    outside, inside = [], []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in FAMILY_NAME.finditer(line):
                (inside if name.startswith(OWNERS) else outside).append(f"{name}:{number}: {match.group()}")
    return outside, inside


def test_no_module_outside_models_and_fixtures_names_a_family():
    outside, inside = family_names(SRC)
    assert not outside, "family names outside ctscribe.models (ask the Family instead):\n" + "\n".join(
        outside
    )
    # Not vacuous: the scan sees the family's own module and the fixture that builds its checkpoint.
    assert any(entry.startswith("models/qwen2_vl.py:") for entry in inside)
    assert any(entry.startswith("fixtures/tiny_model.py:") for entry in inside)


def test_control_every_spelling_in_code_strings_and_comments_is_found(tmp_path):
    """Control: a planted name is found in each place a module can hold one, and nothing else is."""
    root = write_tree(
        tmp_path,
        {
            "__init__.py": "",
            "train/a.py": "from transformers import Qwen2VLForConditionalGeneration\n",
            "train/b.py": '"""About Qwen2.5-VL."""\nHELP = "a Hub id (Qwen/Qwen3-VL-2B-Instruct)"\n',
            "train/c.py": "x = core.get_rope_index(ids)  # Qwen3.5\nTYPES = ('qwen2_5_vl', 'qwen3_5')\n",
            "train/d.py": "# The Qwen2 tokenizer; Qwen's control tokens; a vision-language model.\n",
            "models/own.py": "TYPE = 'qwen2_vl'\n",
        },
    )
    outside, inside = family_names(root)
    assert [entry.split(": ")[1] for entry in outside] == [
        "Qwen2VL",
        "Qwen2.5-VL",
        "Qwen3-VL",
        "get_rope_index",
        "Qwen3.5",
        "qwen2_5_vl",
        "qwen3_5",
    ]
    assert inside == ["models/own.py:1: qwen2_vl"]
