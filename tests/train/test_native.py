import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from ctscribe.fixtures.learning import LEARNING_PIXELS, score_on_phantom
from ctscribe.generate.engine import TransformersEngine
from ctscribe.recipe import RecipeError, load_recipe
from ctscribe.train.native import COMPLETE_MARKER, EpochSeededSampler, LengthGroupedSampler, train


@pytest.mark.slow
def test_the_model_learns_the_body_region_from_the_image(trained_run, tiny_model_dir):
    untrained = score_on_phantom(TransformersEngine(tiny_model_dir, max_pixels=LEARNING_PIXELS))
    learned = score_on_phantom(TransformersEngine(trained_run / "model", max_pixels=LEARNING_PIXELS))
    assert untrained.region_accuracy <= 0.5
    assert learned.region_accuracy >= 0.95, learned.examples
    assert learned.n >= 80


@pytest.mark.slow
def test_run_dir_holds_the_promised_outputs(trained_run):
    assert (trained_run / "model" / "model.safetensors").is_file()
    assert (trained_run / "model" / "tokenizer.json").is_file()
    recipe = load_recipe(str(trained_run / "recipe.yaml"))
    assert recipe.learning_rate == 1e-3 and recipe.output_dir == str(trained_run)
    rows = [json.loads(line) for line in (trained_run / "train_log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(10, 301, 10))
    assert all({"step", "loss", "learning_rate", "samples_per_s"} <= set(r) for r in train_rows)
    assert [r["step"] for r in rows if "eval_loss" in r] == [100, 200, 300]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] / 2
    assert (trained_run / "loss.png").stat().st_size > 1000
    summary = json.loads((trained_run / "run_summary.json").read_text())
    assert summary["global_step"] == 300 and summary["best_checkpoint"].startswith("checkpoint-")
    assert (trained_run / summary["best_checkpoint"] / COMPLETE_MARKER).is_file()
    assert json.loads((trained_run / "data_stats.json").read_text())["train"] > 250


class _StopAt(TrainerCallback):
    """Kills training (as Ctrl-C would) once a step is done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _lora_recipe(data, model, out, **overrides):
    sets = [
        "finetuning_type=lora",
        "lora_rank=16",
        "lora_alpha=32",
        "learning_rate=1e-3",
        "max_steps=8",
        "save_steps=4",
        "eval_steps=4",
        "logging_steps=1",
        "per_device_train_batch_size=4",
        "gradient_accumulation_steps=1",
        "report_to=none",
    ] + [f"{k}={v}" for k, v in overrides.items()]
    return load_recipe(
        "tiny-cpu", sets, dataset_dir=str(data), output_dir=str(out), model_name_or_path=str(model)
    )


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_resumed_run_ends_where_an_uninterrupted_one_does(learning_data, tiny_model_dir, tmp_path):
    whole = train(_lora_recipe(learning_data, tiny_model_dir, tmp_path / "whole"))
    recipe = _lora_recipe(learning_data, tiny_model_dir, tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        train(recipe, callbacks=(_StopAt(6),))
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-4"]
    # A checkpoint left half-written by a kill must be ignored and removed, not resumed from.
    (tmp_path / "killed" / "checkpoint-5").mkdir()
    (tmp_path / "killed" / "checkpoint-5" / "config.json").write_text("{}")
    with pytest.raises(RecipeError, match="pass --resume"):
        train(recipe)
    resumed = train(recipe, resume=True)
    assert not (tmp_path / "killed" / "checkpoint-5").exists()

    a = load_file(whole / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    # Same sample order: every step's loss matches the uninterrupted run's.
    whole_losses, resumed_losses = _losses(tmp_path / "whole"), _losses(tmp_path / "killed")
    assert sorted(resumed_losses) == list(range(1, 9))
    assert all(abs(whole_losses[s] - resumed_losses[s]) <= 1e-5 for s in whole_losses)


def test_resume_with_another_recipe_is_refused(learning_data, tiny_model_dir, tmp_path):
    recipe = _lora_recipe(learning_data, tiny_model_dir, tmp_path / "run", max_steps=4)
    train(recipe)
    changed = _lora_recipe(learning_data, tiny_model_dir, tmp_path / "run", max_steps=4, lora_rank=8)
    with pytest.raises(RecipeError, match="another recipe"):
        train(changed, resume=True)


@pytest.mark.slow
def test_two_processes_match_one(learning_data, tiny_model_dir, tmp_path):
    def command(out, per_device):
        return [
            "-m",
            "ctscribe",
            "train",
            "tiny-cpu",
            "--data",
            str(learning_data),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--set",
            "max_steps=4",
            "--set",
            "logging_steps=1",
            "--set",
            "report_to=none",
            "--set",
            f"per_device_train_batch_size={per_device}",
            "--set",
            "save_steps=4",
            "--set",
            "eval_steps=4",
        ]

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, *command(tmp_path / "one", 8)], capture_output=True, text=True, env=env
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            *command(tmp_path / "two", 4),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), (step, one, two)
    assert torch.cuda.device_count() == 0 or True  # CPU only by construction (CUDA_VISIBLE_DEVICES="")


def test_length_grouped_order_is_seeded_and_groups_lengths():
    lengths = [5, 90, 12, 40, 77, 3, 64, 18, 51, 29, 8, 70]
    sampler = LengthGroupedSampler(lengths, group=4, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths)))
    assert list(LengthGroupedSampler(lengths, group=4, seed=3)) == first  # a resumed run: same order
    groups = [first[i : i + 4] for i in range(0, len(first), 4)]
    assert all([lengths[i] for i in g] == sorted((lengths[i] for i in g), reverse=True) for g in groups)
    # Same groups as the plain seeded shuffle, only sorted within each.
    plain = list(EpochSeededSampler(len(lengths), seed=3))
    assert [sorted(g) for g in groups] == [sorted(plain[i : i + 4]) for i in range(0, len(plain), 4)]
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_speed_switches_change_speed_not_the_losses(learning_data, tiny_model_dir, tmp_path):
    def run(name, on):
        sets = {
            "freeze_vision_tower": "true",
            "freeze_multi_modal_projector": "true",
            "max_steps": 3,
            "save_steps": 3,
            "eval_steps": 3,
            "group_by_length": "false",  # the one switch that changes which samples share a step
            **{key: on for key in ("loss_on_labelled_only", "packing", "cache_vision_features")},
        }
        train(_lora_recipe(learning_data, tiny_model_dir, tmp_path / name, **sets))
        return _losses(tmp_path / name)

    fast, plain = run("fast", "true"), run("plain", "false")
    assert sorted(fast) == sorted(plain) == [1, 2, 3]
    # Cached features are bf16, the CPU model fp32: equal up to that rounding.
    assert all(fast[s] == pytest.approx(plain[s], rel=5e-3) for s in plain), (fast, plain)
    assert list((tmp_path / "fast" / "feature_cache").glob("*/shard-*.safetensors"))
    assert not (tmp_path / "plain" / "feature_cache").exists()
