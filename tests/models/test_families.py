"""Every registered family's rules equal what transformers and the checkpoint's own files do.

Each family is checked on its tiny fixture (real tokenizer, template and processor config around random
weights): the class it loads, the image grid, the chat template with its answer spans, the layers LoRA
and freezing reach, and the switches it cannot honour.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from PIL import Image

from ctscribe.models import FAMILIES, family_for
from ctscribe.recipe import RecipeError, load_recipe
from ctscribe.train.family_limits import apply_family_limits


@pytest.fixture(scope="module", params=list(FAMILIES))
def checkpoint(request, family_model_dir):
    """(family, folder, processor) of each registered family's tiny fixture."""
    from transformers import AutoProcessor

    folder = family_model_dir(request.param)
    return FAMILIES[request.param], folder, AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def model(checkpoint):
    family, folder, _ = checkpoint
    return family.model_class().from_pretrained(folder, dtype=torch.float32).eval()


def test_the_family_is_read_from_config_json_and_loads_the_auto_class(checkpoint):
    from transformers import AutoConfig, AutoModelForImageTextToText

    family, folder, _ = checkpoint
    assert family_for(folder) is family
    config = AutoConfig.from_pretrained(folder)
    assert AutoModelForImageTextToText._model_mapping[type(config)] is family.model_class()
    vision = json.loads((folder / "config.json").read_text())["vision_config"]
    assert (family.grid.patch, family.grid.merge) == (vision["patch_size"], vision["spatial_merge_size"])


@pytest.mark.parametrize(
    ("size", "budget"), [((512, 512), 512 * 512), ((1024, 512), 256 * 256), ((37, 300), 128 * 128)]
)
def test_the_grid_is_the_processors_own(checkpoint, size, budget):
    family, _, processor = checkpoint
    min_pixels = family.grid.token_side**2
    height, width = family.grid.resize(size[1], size[0], min_pixels, budget)
    out = processor.image_processor(
        images=[Image.new("RGB", size)],
        return_tensors="pt",
        size={"shortest_edge": min_pixels, "longest_edge": budget},
    )
    _, h, w = out["image_grid_thw"][0].tolist()
    assert (h * family.grid.patch, w * family.grid.patch) == (height, width)
    tower = type("Tower", (), {"spatial_merge_size": family.grid.merge})()
    assert family.merged_tokens(tower, out["image_grid_thw"]).tolist() == [
        (height // family.grid.token_side) * (width // family.grid.token_side)
    ]


def _inference_form(messages: list[dict]) -> list[dict]:
    """The messages as a processor's chat template takes them (images as content parts)."""
    out = []
    for message in messages:
        text = message["content"]
        if "<image>" in text:
            content = [{"type": "image"}, {"type": "text", "text": text.replace("<image>", "")}]
        else:
            content = [{"type": "text", "text": text}]
        out.append({"role": message["role"], "content": content})
    return out


@pytest.mark.parametrize("system", [None, "You read CT."])
def test_the_template_is_the_tokenizers_own_with_the_answer_spans(checkpoint, system):
    family, _, processor = checkpoint
    messages = [
        {"role": "user", "content": "<image>Describe this CT image."},
        {"role": "assistant", "content": "Axial CT of the chest."},
        {"role": "user", "content": "Any effusion?"},
        {"role": "assistant", "content": "No pleural effusion."},
    ]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    text, spans = family.template.render(messages, "<image>")
    assert text == processor.apply_chat_template(_inference_form(messages))
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [text[start:end] for start, end in spans] == [f"{answer}<|im_end|>" for answer in answers]
    # The generation prompt continues the rendered prompt of the first turn, as training saw it.
    prompt, _ = family.template.render(messages[: 2 if system else 1], "<image>")
    generation = processor.apply_chat_template(
        _inference_form(messages[: 2 if system else 1]), add_generation_prompt=True
    )
    assert generation.startswith(prompt)
    for token in (family.template.image_pad, family.template.video_pad, family.template.pad):
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id
    grounding = family.grounding
    for marker in (grounding.ref_start, grounding.ref_end, grounding.box_start, grounding.box_end):
        assert marker in processor.tokenizer.get_vocab()


def test_lora_reaches_every_linear_layer_of_the_language_model_and_nothing_else(checkpoint, model):
    family, _, _ = checkpoint
    pattern = re.compile(family.lora_pattern(family.language_linear))
    linear = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    matched = {name for name in linear if pattern.fullmatch(name)}
    language = {name for name in linear if ".language_model." in f".{name}"}
    assert matched == language  # every one (LLaMA-Factory's "all"), never the tower or lm_head
    tower = family.vision_tower(model)
    assert tower is family.core(model).visual
    for name in family.projector_names:
        assert isinstance(getattr(tower, name), torch.nn.Module)


def test_a_switch_the_family_cannot_honour_is_off_under_auto_and_refused_when_true(checkpoint, caplog):
    family = checkpoint[0]
    recipe = load_recipe()
    for key, reason in family.limits.items():
        assert getattr(recipe, key) == "auto"  # the shipped default trains every family as it is
        with caplog.at_level(logging.INFO, logger="ctscribe.train.family_limits"):
            assert getattr(apply_family_limits(recipe, family), key) is False
        assert f"{key} off for {family.name}: {reason}" in caplog.text
        setattr(recipe, key, True)
        with pytest.raises(RecipeError, match=rf"{key}: true is not supported for {re.escape(family.name)}"):
            apply_family_limits(recipe, family)
    applied = apply_family_limits(load_recipe(), family)
    for key in ("packing", "cache_vision_features"):
        if key not in family.limits:
            assert getattr(applied, key) == "auto"  # what the family can do stays as asked
