"""The LLaMA-Factory engine: the recipe as its YAML, its run laid out like a native one, and the real
round trip (prepare -> llamafactory-cli train -> llamafactory-cli export -> ctscribe predict)."""

import dataclasses
import functools
import json
import sys
from pathlib import Path

import pytest
import yaml

from ctscribe.fixtures.learning import LEARNING_PIXELS
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.recipe import Recipe, RecipeError, load_recipe
from ctscribe.run_folder import RunSummary
from ctscribe.train.llamafactory import (
    NATIVE_ONLY,
    NATIVE_SCORING,
    SAME_NAME,
    TRANSLATED,
    convert_log,
    train,
    train_config,
)
from support.cli import run_ctscribe

_ctscribe = functools.partial(run_ctscribe, timeout=600)  # each command's bound


def _data_dir(tmp_path: Path, val_rows: int = 1) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    info = {
        "ct": {"file_name": "train.json", "formatting": "sharegpt"},
        "ct_val": {"file_name": "val.json", "formatting": "sharegpt"},
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    (data / "train.json").write_text("[{}]")
    (data / "val.json").write_text(json.dumps([{}] * val_rows))
    return data


def test_every_recipe_key_reaches_llamafactory_or_is_translated():
    """A new recipe key must be mapped (or declared native-only), or LLaMA-Factory would silently
    ignore it."""
    keys = [field.name for field in dataclasses.fields(Recipe)]
    assert sorted(SAME_NAME + TRANSLATED + NATIVE_ONLY + NATIVE_SCORING) == sorted(keys)


def test_the_original_recipe_becomes_the_original_train_sh(tmp_path):
    recipe = load_recipe("original", dataset_dir=str(_data_dir(tmp_path)), output_dir=str(tmp_path / "run"))
    config = train_config(recipe, DEFAULT_FAMILY)
    expected = {
        "stage": "sft",
        "do_train": True,
        "template": "qwen2_vl",
        "model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct",
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "learning_rate": 5e-5,
        "num_train_epochs": 3.0,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 8,
        "max_samples": 100000,
        "logging_steps": 5,
        "save_steps": 3000,
        "image_max_pixels": 262144,  # ours, not LLaMA-Factory's 768*768 default
        "dataset": "ct",
        "eval_dataset": "ct_val",
        "eval_steps": 3000,
        "disable_gradient_checkpointing": False,
        "flash_attn": "auto",
        "enable_liger_kernel": False,  # no CLI given: nothing to ask whether Liger is installed
        "overwrite_output_dir": True,
    }
    assert {key: config[key] for key in expected} == expected
    assert config["dataset_dir"] == str((tmp_path / "data").resolve())
    assert config["output_dir"] == str((tmp_path / "run" / "llamafactory").resolve())
    assert "quantization_bit" not in config and "deepspeed" not in config


def test_qlora_eager_attention_and_an_empty_validation_split(tmp_path):
    recipe = load_recipe(
        "original",
        [
            "finetuning_type=qlora",
            "attn_implementation=eager",
            "gradient_checkpointing=false",
            "max_samples=null",
        ],
        dataset_dir=str(_data_dir(tmp_path, val_rows=0)),
        output_dir=str(tmp_path / "run"),
    )
    config = train_config(recipe, DEFAULT_FAMILY)
    assert config["finetuning_type"] == "lora" and config["quantization_bit"] == 4
    assert config["flash_attn"] == "disabled" and config["disable_gradient_checkpointing"] is True
    assert "eval_dataset" not in config and "eval_strategy" not in config and "max_samples" not in config


def test_a_folder_without_dataset_info_is_refused(tmp_path):
    recipe = load_recipe("original", dataset_dir=str(tmp_path), output_dir=str(tmp_path / "run"))
    with pytest.raises(RecipeError, match=r"dataset_info\.json"):
        train_config(recipe, DEFAULT_FAMILY)


# LLaMA-Factory's own sizing of an image: its plugin for the Qwen2-VL template, run in its environment.
LLAMAFACTORY_SIZES = """
import json, sys
from PIL import Image
from transformers import AutoProcessor
from llamafactory.data.mm_plugin import get_mm_plugin
model, budgets, sizes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
processor = AutoProcessor.from_pretrained(model)
plugin = get_mm_plugin("qwen2_vl", image_token="<|image_pad|>")
out = []
for max_pixels, min_pixels in budgets:
    # as LLaMA-Factory's patch_processor sets them
    processor.image_max_pixels, processor.image_min_pixels = max_pixels, min_pixels
    for width, height in sizes:
        _, rows, columns = plugin._get_mm_inputs([Image.new("RGB", (width, height))], [], [], processor)[
            "image_grid_thw"
        ][0].tolist()
        out.append([columns * 14, rows * 14])
print(json.dumps(out))
"""


def test_image_sizes_are_the_ones_llamafactory_gives_the_model(llamafactory_cli, family_model_dir):
    """A pixel box is only right at the size LLaMA-Factory itself resizes to: its floor-rounded
    pre-resize into the recipe's budget, then the processor's resize at the checkpoint's own budget
    (1,000 x 333 at 262,144 pixels ends at 896 x 308, more pixels than the budget)."""
    import subprocess

    from transformers import AutoImageProcessor

    from ctscribe.models import FAMILIES
    from ctscribe.train.llamafactory import llamafactory_image_size

    model = family_model_dir("qwen2_5_vl")
    budgets = [(262144, 3136), (100000, 50000)]
    sizes = [(512, 512), (300, 217), (1000, 333), (61, 97), (700, 400), (2000, 30)]
    script = [str(llamafactory_cli.parent / "python"), "-c", LLAMAFACTORY_SIZES, str(model)]
    run = subprocess.run([*script, json.dumps(budgets), json.dumps(sizes)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = [tuple(size) for size in json.loads(run.stdout.splitlines()[-1])]
    processor_size = AutoImageProcessor.from_pretrained(model).size
    grid = FAMILIES["qwen2_5_vl"].grid
    ours = [
        llamafactory_image_size(*size, *budget, processor_size, grid) for budget in budgets for size in sizes
    ]
    assert ours == theirs
    assert (896, 308) in ours


def test_a_pixel_family_trains_on_its_own_copy_of_the_splits(tmp_path, family_model_dir):
    """LLaMA-Factory trains on answers as written: Qwen2.5-VL gets the splits with its boxes in
    pixels (of the 308 x 224 image LLaMA-Factory makes of a 300 x 217 one), read from the run folder
    with the images still read from the prepared one; Qwen2-VL reads the prepared folder itself."""
    from PIL import Image

    from ctscribe.models import FAMILIES
    from ctscribe.train.llamafactory import family_data

    data = _data_dir(tmp_path)
    (data / "images").mkdir()
    Image.new("RGB", (300, 217), "gray").save(data / "images" / "a.png")
    phrase = "A <|object_ref_start|>lesion<|object_ref_end|>"
    record = {
        "messages": [
            {"role": "user", "content": "<image>Describe."},
            {"role": "assistant", "content": phrase + "<|box_start|>(100,250),(500,1000)<|box_end|>."},
        ],
        "images": ["images/a.png"],
    }
    for split in ("train.json", "val.json"):
        (data / split).write_text(json.dumps([record]))
    for model_type in ("qwen2_vl", "qwen2_5_vl"):
        recipe = load_recipe(
            "original",
            dataset_dir=str(data),
            output_dir=str(tmp_path / model_type),
            model_name_or_path=str(family_model_dir(model_type)),
        )
        family = FAMILIES[model_type]
        splits = family_data(recipe, family)
        config = train_config(recipe, family, splits_dir=splits)
        if model_type == "qwen2_vl":
            assert splits == data and "media_dir" not in config
            continue
        assert splits == tmp_path / model_type / "llamafactory_data"
        assert (config["dataset_dir"], config["media_dir"]) == (str(splits.resolve()), str(data.resolve()))
        assert (splits / "dataset_info.json").read_text() == (data / "dataset_info.json").read_text()
        for split in ("train.json", "val.json"):
            [written] = json.loads((splits / split).read_text())
            assert written["images"] == record["images"]
            assert written["messages"][1]["content"] == phrase + "<|box_start|>(31,56),(154,224)<|box_end|>."
        assert json.loads((data / "train.json").read_text()) == [record]  # the prepared folder is untouched


def test_llamafactory_logs_become_ctscribe_logs(tmp_path):
    trainer_log = tmp_path / "trainer_log.jsonl"
    lines = [
        {"current_steps": 5, "total_steps": 10, "loss": 2.5, "lr": 1e-4, "epoch": 0.5},
        {"current_steps": 10, "total_steps": 10, "eval_loss": 2.0},
        {"current_steps": 10, "total_steps": 10},
    ]
    trainer_log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = convert_log(trainer_log, tmp_path / "train_log.jsonl")
    assert rows == [{"step": 5, "loss": 2.5, "learning_rate": 1e-4}, {"step": 10, "eval_loss": 2.0}]
    assert (tmp_path / "train_log.jsonl").read_text().count("\n") == 2


FAKE_CLI = """#!{python}
# Stands in for llamafactory-cli: writes what LLaMA-Factory writes into output_dir.
import json, pathlib, sys, yaml
config = yaml.safe_load(open(sys.argv[2]))
out = pathlib.Path(config["output_dir"])
(out / "checkpoint-2").mkdir(parents=True, exist_ok=True)
for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "processor_config.json"):
    (out / name).write_text("{{}}")
(out / "trainer_log.jsonl").write_text(json.dumps({{"current_steps": 2, "loss": 1.5, "lr": 0.1}}) + "\\n")
(out / "train_results.json").write_text(json.dumps({{"train_loss": 1.5, "train_samples_per_second": 3.0}}))
(out / "training_loss.png").write_bytes(b"png")
print("resume_from_checkpoint", config.get("resume_from_checkpoint"))
"""


def test_a_run_is_laid_out_like_a_native_one_and_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    cli = tmp_path / "llamafactory-cli"
    cli.write_text(FAKE_CLI.format(python=sys.executable))
    cli.chmod(0o755)
    data, run = _data_dir(tmp_path), tmp_path / "run"
    # The base is read for its family (the template), never loaded: the fake CLI trains nothing.
    recipe = load_recipe(
        "tiny-cpu", dataset_dir=str(data), output_dir=str(run), model_name_or_path=str(tiny_model_dir)
    )
    final = train(recipe, cli=cli)
    assert final == run / "model"  # tiny-cpu is full fine-tuning
    assert sorted(p.name for p in final.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "ctscribe_settings.json",  # the settings the model carries (pixel budget, prompts)
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
    ]
    processor = json.loads((final / "processor_config.json").read_text())["image_processor"]
    assert processor["size"] == {"shortest_edge": 3136, "longest_edge": recipe.image_max_pixels}
    summary = json.loads((run / "run_summary.json").read_text())
    assert list(summary) == [field.name for field in dataclasses.fields(RunSummary)]  # as native's
    assert summary["engine"] == "llamafactory" and summary["train_samples_per_second"] == 3.0
    assert summary["train_loss"] == 1.5 and summary["feature_cache_seconds"] is None
    assert (run / "loss.png").is_file() and (run / "recipe.yaml").read_text() == recipe.to_yaml()
    assert yaml.safe_load((run / "llamafactory_train.yaml").read_text())["stage"] == "sft"

    with pytest.raises(RecipeError, match="--resume"):
        train(recipe, cli=cli)
    train(recipe, resume=True, cli=cli)
    resumed = yaml.safe_load((run / "llamafactory_train.yaml").read_text())
    assert resumed["resume_from_checkpoint"] == str((run / "llamafactory" / "checkpoint-2").resolve())
    assert resumed["overwrite_output_dir"] is False
    assert "resume_from_checkpoint" in (run / "llamafactory.log").read_text()


def _predictions(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(row["status"] == "ok" for row in rows)
    return [row["text"] for row in rows]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # four CLI runs, two of them starting LLaMA-Factory's own environment
def test_llamafactory_trains_exports_and_ctscribe_predicts(
    learning_data, trained_run, llamafactory_cli, tmp_path
):
    """prepare's folder, unchanged -> llamafactory-cli train -> llamafactory-cli export -> predict.

    The base is the trained tiny model, so greedy answers are real text and the comparison between
    the merged model and base + LLaMA-Factory's adapter means something.
    """
    base = trained_run / "model"
    run = tmp_path / "lf-run"
    lora = ["finetuning_type=lora", "lora_rank=16", "lora_alpha=32", "freeze_vision_tower=true"]
    lora += [
        "freeze_multi_modal_projector=true",
        "max_steps=6",
        "save_steps=3",
        "eval_steps=3",
        "logging_steps=2",
    ]
    sets = [arg for setting in lora for arg in ("--set", setting)]
    cli = ["--llamafactory-cli", str(llamafactory_cli)]
    _ctscribe("train", "tiny-cpu", "--engine", "llamafactory", *cli, "--data", str(learning_data),
              "--model", str(base), "--out", str(run), *sets)  # fmt: skip
    config = yaml.safe_load((run / "llamafactory_train.yaml").read_text())
    assert config["image_max_pixels"] == LEARNING_PIXELS and config["dataset"] == "mllm_med"
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [2, 4, 6]
    assert [row["step"] for row in log if "eval_loss" in row] == [3, 6]
    assert (run / "adapter" / "adapter_config.json").is_file()

    merged = tmp_path / "merged"
    _ctscribe("export", "--engine", "llamafactory", *cli, "--base", str(base), "--adapter", str(run),
              "--out", str(merged), "--dtype", "fp32")  # fmt: skip
    assert json.loads((merged / "ctscribe_export.json").read_text())["engine"] == "llamafactory"
    assert (merged / "llamafactory_export.yaml").is_file()

    test_split = str(learning_data / "test.json")
    common = ["--max-pixels", str(LEARNING_PIXELS), "--max-new-tokens", "16", "--limit", "6"]
    _ctscribe("predict", test_split, "--model", str(merged), "--out", str(tmp_path / "merged.jsonl"), *common)
    _ctscribe("predict", test_split, "--model", str(base), "--adapter", str(run),
              "--out", str(tmp_path / "adapter.jsonl"), *common)  # fmt: skip
    from_merged = _predictions(tmp_path / "merged.jsonl")
    assert len(from_merged) == 6 and all(text.startswith("CT of the") for text in from_merged)
    assert _predictions(tmp_path / "adapter.jsonl") == from_merged
