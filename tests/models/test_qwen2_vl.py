"""The Qwen2-VL family: chosen from a checkpoint's config.json, and its rules equal transformers' own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from ctscribe.models import DEFAULT_FAMILY, FAMILIES, UnsupportedModelError, family_for, qwen2_vl


def test_the_tiny_fixture_is_a_qwen2_vl_checkpoint(tiny_model_dir):
    family = family_for(tiny_model_dir)
    assert family is qwen2_vl.FAMILY is FAMILIES["qwen2_vl"] is DEFAULT_FAMILY
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert family_for(config) is family  # a config.json dict
    from transformers import AutoConfig, AutoModelForImageTextToText

    loaded = AutoConfig.from_pretrained(tiny_model_dir)
    assert family_for(loaded) is family  # a loaded config, as a model carries it
    # The class the family loads is the one transformers' auto class picks for this config.
    assert AutoModelForImageTextToText._model_mapping[type(loaded)] is family.model_class()
    assert family.grid.patch == config["vision_config"]["patch_size"]
    assert family.grid.merge == config["vision_config"]["spatial_merge_size"]


def test_an_unknown_model_type_is_refused_naming_the_families_before_any_weight_loads(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))  # a folder with no weights
    with pytest.raises(
        UnsupportedModelError,
        match=r"model_type 'llava' is not a supported base; supported: "
        r"qwen2_vl \(Qwen2-VL\), qwen2_5_vl \(Qwen2.5-VL\), qwen3_vl \(Qwen3-VL\), qwen3_5 \(Qwen3.5\)",
    ):
        family_for(folder)
    assert isinstance(UnsupportedModelError("x"), ValueError)  # the CLI prints it as one line
    with pytest.raises(UnsupportedModelError, match=r"has no config\.json"):
        family_for(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"model_type None"):
        family_for({"architectures": ["X"]})
    # Deciding loads neither torch nor transformers: in a fresh interpreter, only config.json is read.
    code = (
        "import sys\nfrom ctscribe.models import family_for\n"
        f"try:\n    family_for({str(folder)!r})\nexcept ValueError as error:\n    print(error)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines()[-2:] == [
        "model_type 'llava' is not a supported base; supported: qwen2_vl (Qwen2-VL), "
        "qwen2_5_vl (Qwen2.5-VL), qwen3_vl (Qwen3-VL), qwen3_5 (Qwen3.5)",
        "False False",
    ]


def test_an_unknown_base_is_refused_by_training_before_the_run_folder_is_touched(tmp_path):
    """The native engine asks the family with its first checks: nothing of the checkpoint loads and
    no run folder is written."""
    from ctscribe.recipe import load_recipe
    from ctscribe.train.native import NativeTrainingRecipe

    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    recipe = load_recipe(dataset_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "run"))
    recipe.model_name_or_path = str(folder)
    with pytest.raises(UnsupportedModelError, match="supported: qwen2_vl"):
        NativeTrainingRecipe(recipe).setup()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("size", "budget"),
    [((512, 512), 512 * 512), ((1024, 512), 512 * 512), ((37, 300), 512 * 512), ((600, 90), 128 * 128)],
)
def test_the_grid_is_the_processors_own(processor, size, budget):
    """Resized size and token count equal what transformers' Qwen2-VL image processor makes of the
    image under the same budget."""
    grid = DEFAULT_FAMILY.grid
    width, height = size
    min_pixels = 56 * 56
    new_height, new_width = grid.resize(height, width, min_pixels, budget)
    image_processor = processor.image_processor
    out = image_processor(
        images=[Image.new("RGB", size)],
        return_tensors="pt",
        size={"shortest_edge": min_pixels, "longest_edge": budget},
    )
    t, h, w = out["image_grid_thw"][0].tolist()
    assert (h * grid.patch, w * grid.patch) == (new_height, new_width)
    assert (
        grid.token_side == grid.patch * grid.merge == image_processor.patch_size * image_processor.merge_size
    )
    tokens = (new_height // grid.token_side) * (new_width // grid.token_side)
    assert tokens == t * h * w // grid.merge**2
    model_tower_tokens = DEFAULT_FAMILY.merged_tokens(
        type("Tower", (), {"spatial_merge_size": grid.merge})(), out["image_grid_thw"]
    )
    assert model_tower_tokens.tolist() == [tokens]


def test_the_lora_pattern_reaches_the_language_model_only(tiny_model_dir):
    import re

    tiny_model = DEFAULT_FAMILY.model_class().from_pretrained(tiny_model_dir)
    pattern = re.compile(DEFAULT_FAMILY.lora_pattern(("q_proj", "v_proj")))
    matched = [name for name, _ in tiny_model.named_modules() if pattern.fullmatch(name)]
    assert matched and all("language_model" in name for name in matched)
    assert not any(DEFAULT_FAMILY.tower_name in name for name in matched)
    tower = DEFAULT_FAMILY.vision_tower(tiny_model)
    assert tower is tiny_model.model.visual
    assert [name for name, _ in tower.named_children() if name in DEFAULT_FAMILY.projector_names] == [
        "merger"
    ]


def test_an_adapter_folder_is_of_its_bases_family(tmp_path, tiny_model_dir):
    """transformers loads a PEFT adapter folder onto its base, so the family is the base's."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    assert family_for(adapter) is DEFAULT_FAMILY
