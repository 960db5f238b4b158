"""models: the one seam between ctscribe and a base model family.

Everything that differs between vision-language families lives behind :class:`Family`, one module per
family (``models/<model_type>.py``), so that no other module names a family: which class loads the
weights, which modules are the vision tower and its projector, what LoRA adapts, how positions are
computed for packed rows, the image grid and its resize, the chat template with answer spans, the
grounding text, and the LLaMA-Factory template name. :func:`family_for` picks the family from a
checkpoint's ``config.json`` (its ``model_type``), reading that one file only, so an unsupported
checkpoint is refused before any weight loads.

Torch-free at import (``ct/options.py`` and the CLI import this at definition time): a family module
imports transformers inside its functions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctscribe.models import qwen2_5_vl, qwen2_vl, qwen3_5, qwen3_vl
from ctscribe.models.family import Family, UnsupportedModelError

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "SMALLEST_TOKEN_PIXELS",
    "Family",
    "UnsupportedModelError",
    "family_for",
    "read_config",
]


FAMILIES: Mapping[str, Family] = {
    family.model_type: family
    for family in (qwen2_vl.FAMILY, qwen2_5_vl.FAMILY, qwen3_vl.FAMILY, qwen3_5.FAMILY)
}
# The family of the seed's checkpoint: what docs and the ``original`` recipe use, and what code that
# runs before any model is chosen (prepare's grounded answers, the image budget's floor) assumes.
DEFAULT_FAMILY: Family = FAMILIES["qwen2_vl"]
# Pixels of the smallest image token of any supported family: a pixel budget's floor, checked before
# the model (hence its family) is known.
SMALLEST_TOKEN_PIXELS = min(family.grid.token_side**2 for family in FAMILIES.values())


def read_config(source: str | Path) -> dict:
    """A checkpoint's ``config.json``: from a local folder, else from the Hub (that one file only).

    A PEFT adapter folder (which transformers loads onto its base) gives its base's config.
    """
    folder = Path(source)
    if folder.is_dir():
        path = folder / "config.json"
        adapter = folder / "adapter_config.json"
        if not path.is_file() and adapter.is_file():
            return read_config(json.loads(adapter.read_text(encoding="utf-8"))["base_model_name_or_path"])
        if not path.is_file():
            raise UnsupportedModelError(f"{folder} has no config.json: not a model checkpoint folder")
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(str(source), "config.json"))
        except Exception as error:  # offline, no such repo, no access: each its own hub exception
            raise UnsupportedModelError(
                f"cannot read config.json of {source} (neither a folder nor a reachable Hub model): {error}"
            ) from None
    return json.loads(path.read_text(encoding="utf-8"))


def family_for(source: str | Path | Mapping | Any) -> Family:
    """The family of a checkpoint (a folder or Hub id), a ``config.json`` dict or a loaded config.

    Raises :class:`UnsupportedModelError` naming the supported families for any other ``model_type``.
    """
    if isinstance(source, str | Path):
        source = read_config(source)
    model_type = (
        source.get("model_type") if isinstance(source, Mapping) else getattr(source, "model_type", None)
    )
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        supported = ", ".join(f"{f.model_type} ({f.name})" for f in FAMILIES.values())
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not a supported base; supported: {supported}"
        )
    return family
