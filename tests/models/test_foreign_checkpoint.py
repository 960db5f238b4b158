"""A checkpoint ctscribe did not build trains, exports and describes an image, for every family.

ctscribe's own fixtures (ctscribe.fixtures) write each checkpoint as the Hub has it: the published
config fields, ``preprocessor_config.json``, vocab.json and merges.txt. A user's checkpoint may instead be
one that transformers saved: its class defaults for every field ctscribe's fixtures set by hand (token
ids, rope, tied embeddings), and a ``processor_config.json`` with the image processor inside it and no
``preprocessor_config.json``. Here each family's checkpoint is made with transformers alone:
``AutoConfig.for_model`` with only the layer sizes shrunk, ``AutoModelForImageTextToText.from_config``,
and the real tokenizer files and processor (those of the family's fixture) loaded and saved again by
``AutoProcessor``. The real CLI then trains it in each engine with the shipped default recipe (sizes
only), exports it and describes an image.
"""

import json
from pathlib import Path

import pytest

from ctscribe.models import FAMILIES
from support.cli import run_ctscribe

# Layer sizes only; every other field is the config class's default. Where the default position rule
# needs it, the rotary sections are set to fit the shrunk head (they must sum to half of it).
_TEXT = {"intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}
_QWEN3_TOWER = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
SIZES = {
    "qwen2_vl": {
        "text_config": {
            **_TEXT,
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        "vision_config": {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": 256},
    },
    "qwen2_5_vl": {
        "text_config": {
            **_TEXT,
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 256,
        },
    },
    "qwen3_vl": {
        "text_config": {**_TEXT, "hidden_size": 64, "num_hidden_layers": 2},
        "vision_config": {**_QWEN3_TOWER, "deepstack_visual_indexes": [0, 1]},
    },
    "qwen3_5": {
        # four layers: three Gated DeltaNet layers and one of full attention, the default interleave
        "text_config": {
            **_TEXT,
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 2,
            "linear_key_head_dim": 32,
            "linear_value_head_dim": 32,
        },
        "vision_config": _QWEN3_TOWER,
    },
}
SIZE_KEYS = ["max_samples=4", "max_steps=1", "per_device_train_batch_size=2", "gradient_accumulation_steps=1"]


def test_every_family_has_sizes_here():
    assert set(SIZES) == set(FAMILIES)


def build_with_transformers(out: Path, model_type: str, tokenizer_source: Path) -> Path:
    """A random checkpoint of ``model_type`` written by transformers alone (see the module docstring)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **SIZES[model_type])
    AutoModelForImageTextToText.from_config(config).save_pretrained(out)
    AutoProcessor.from_pretrained(tokenizer_source).save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["native", "llamafactory"])
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_checkpoint_transformers_saved_trains_exports_and_describes(
    model_type, engine, family_model_dir, default_data, tmp_path, request
):
    base = build_with_transformers(tmp_path / "base", model_type, family_model_dir(model_type))
    # what makes it another layout than the fixtures': transformers' processor file, no vocab.json
    assert (base / "processor_config.json").is_file()
    assert not (base / "preprocessor_config.json").exists() and not (base / "vocab.json").exists()

    run, merged, predictions = tmp_path / "run", tmp_path / "merged", tmp_path / "predictions.jsonl"
    sets = [arg for key in SIZE_KEYS for arg in ("--set", key)]
    engine_args = ["--engine", engine]
    if engine == "llamafactory":
        engine_args += ["--llamafactory-cli", str(request.getfixturevalue("llamafactory_cli"))]
    run_ctscribe(
        "train", *engine_args, "--data", str(default_data), "--model", str(base), "--out", str(run), *sets
    )
    assert json.loads((run / "run_summary.json").read_text())["global_step"] == 1
    if engine != "native":
        return  # export and predict read the adapter alone, whichever engine wrote it
    run_ctscribe(
        "export",
        "--base",
        str(base),
        "--adapter",
        str(run / "adapter"),
        "--out",
        str(merged),
        "--dtype",
        "fp32",
    )
    image = default_data / json.loads((default_data / "train.json").read_text())[0]["images"][0]
    run_ctscribe(
        "predict", str(image), "--model", str(merged), "--out", str(predictions), "--max-new-tokens", "8"
    )
    [line] = predictions.read_text().splitlines()
    record = json.loads(line)
    assert record["status"] == "ok", record
