import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace

import pytest
from safetensors.torch import load_file

from ctscribe.fixtures.learning import LEARNING_PIXELS, score_on_phantom
from ctscribe.generate.engine import TransformersEngine
from ctscribe.models import DEFAULT_FAMILY, FAMILIES, Family
from ctscribe.recipe import Recipe, RecipeError, load_recipe
from ctscribe.run_folder import COMPLETE_MARKER, RunSummary
from ctscribe.train.native import EpochSeededSampler, LengthGroupedSampler, train, training_arguments


@pytest.mark.slow
def test_the_model_learns_the_body_region_from_the_image(trained_run, tiny_model_dir):
    """The shipped tiny-cpu recipe (400 steps) learns the region from the pixels.

    Margin, measured with 5 training seeds at 400 steps (bench/learning_test_seeds.py,
    bench/results/learning_test_seeds-cpu.json): seeds 42, 1, 2, 3 and 4 all reached region accuracy
    1.00 (n = 90), same-size accuracy 1.00 (n = 62) and shape-only accuracy 0.70, against the
    thresholds 0.95, 0.9 and 0.8 below; 400 steps stays the shipped count.
    """
    untrained = score_on_phantom(TransformersEngine(tiny_model_dir, max_pixels=LEARNING_PIXELS))
    learned = score_on_phantom(TransformersEngine(trained_run / "model", max_pixels=LEARNING_PIXELS))
    assert untrained.region_accuracy <= 0.5
    assert learned.region_accuracy >= 0.95, learned.examples
    assert learned.n >= 80
    # Control: the image's size alone names about 70% of regions (tests/fixtures/test_learning.py).
    # Among the chest and abdomen slices of one shared size, where a rule blind to pixels scores at
    # most the larger region's share (about 0.56), only the pixels can tell them apart.
    assert learned.shape_only_accuracy <= 0.8
    assert learned.same_size_n >= 40 and learned.same_size_accuracy >= 0.9, learned.examples


@pytest.mark.slow
def test_run_dir_holds_the_promised_outputs(trained_run):
    assert (trained_run / "model" / "model.safetensors").is_file()
    assert (trained_run / "model" / "tokenizer.json").is_file()
    recipe = load_recipe(str(trained_run / "recipe.yaml"))
    assert recipe.learning_rate == 1e-3 and recipe.output_dir == str(trained_run)
    rows = [json.loads(line) for line in (trained_run / "train_log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(10, 401, 10))
    assert all({"step", "loss", "learning_rate", "samples_per_s"} <= set(r) for r in train_rows)
    assert [r["step"] for r in rows if "eval_loss" in r] == [100, 200, 300, 400]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] / 2
    assert (trained_run / "loss.png").stat().st_size > 1000
    summary = json.loads((trained_run / "run_summary.json").read_text())
    assert list(summary) == [field.name for field in dataclasses.fields(RunSummary)]
    assert (
        summary["engine"] == "native"
        and summary["global_step"] == 400
        and summary["best_checkpoint"].startswith("checkpoint-")
    )
    assert (trained_run / summary["best_checkpoint"] / COMPLETE_MARKER).is_file()
    assert json.loads((trained_run / "data_stats.json").read_text())["train"] > 250


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


# The shipped default recipe sized for the tiny model on 2 CPU cores. Every speed switch keeps its
# default (LoRA, frozen tower and projector, feature cache, packing, labelled-only LM head, length
# grouping, gradient checkpointing); _check_default_switches proves they were on.
DEFAULT_SIZED = {
    "image_max_pixels": LEARNING_PIXELS,
    "cutoff_len": 256,
    "learning_rate": 1e-3,
    "max_steps": 8,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "logging_steps": 1,
    "save_steps": 2,
    "eval_steps": 2,
    "dataloader_num_workers": 0,
    "report_to": "none",
}


def _default_sets(**overrides) -> list[str]:
    return [f"{key}={value}" for key, value in {**DEFAULT_SIZED, **overrides}.items()]


def _cli_train(data, model, out, *extra: str, **overrides) -> list[str]:
    """``ctscribe train`` arguments for the default recipe, sized as DEFAULT_SIZED."""
    sets = [arg for setting in _default_sets(**overrides) for arg in ("--set", setting)]
    return ["train", "--data", str(data), "--model", str(model), "--out", str(out), *sets, *extra]


def _check_default_switches(run_dir, family: Family = DEFAULT_FAMILY) -> None:
    """The default recipe's switches as shipped, but for those ``family`` cannot honour: the run's
    recipe records them off (ctscribe.train.family_limits), and the feature cache is built or not."""
    recipe = load_recipe(str(run_dir / "recipe.yaml"))
    assert recipe.finetuning_type == "lora" and recipe.freeze_vision_tower
    assert recipe.freeze_multi_modal_projector and recipe.loss_on_labelled_only and recipe.group_by_length
    for key in ("cache_vision_features", "packing"):
        assert getattr(recipe, key) == (False if key in family.limits else "auto"), key
    cached = any((run_dir / "feature_cache").glob("*/shard-*.safetensors"))
    assert cached == ("cache_vision_features" not in family.limits), f"feature cache built: {cached}"


def _run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """A command in its own process group: on timeout the whole group (torchrun's workers too) is
    killed and the test fails with the output so far."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate(timeout=30)
            pytest.fail(f"{command[1:4]} ran past {timeout} s:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# `python -c _STOPS_MID_CHECKPOINT N READY train ...` runs `ctscribe train ...`, except that writing
# checkpoint-N stops after the adapter weights (before optimizer, RNG state and the complete marker),
# touches READY and waits there to be killed.
_STOPS_MID_CHECKPOINT = """
import sys, time
from pathlib import Path
from transformers import Trainer
kill_at, ready = int(sys.argv.pop(1)), Path(sys.argv.pop(1))
save = Trainer._save_optimizer_and_scheduler
def stop_here(self, output_dir):
    if self.state.global_step == kill_at:
        ready.write_text(output_dir)
        time.sleep(600)
    save(self, output_dir)
Trainer._save_optimizer_and_scheduler = stop_here
from ctscribe.cli import main
main()
"""


@pytest.mark.slow
def test_a_run_killed_mid_checkpoint_resumes_to_the_uninterrupted_run(
    learning_data, tiny_model_dir, tmp_path, caplog
):
    """SIGKILL a real `ctscribe train` (default recipe, every speed switch on) while it writes
    checkpoint-6; --resume drops that half-written folder, continues from checkpoint-4, and ends
    with the uninterrupted run's losses and adapter."""
    recipe = load_recipe(
        "original",
        _default_sets(),
        dataset_dir=str(learning_data),
        output_dir=str(tmp_path / "killed"),
        model_name_or_path=str(tiny_model_dir),
    )
    whole = train(replace(recipe, output_dir=str(tmp_path / "whole")))

    ready = tmp_path / "writing-checkpoint"
    args = _cli_train(learning_data, tiny_model_dir, tmp_path / "killed")
    command = [sys.executable, "-c", _STOPS_MID_CHECKPOINT, "6", str(ready), *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    output = tmp_path / "killed.log"
    with output.open("w") as sink, subprocess.Popen(command, stdout=sink, stderr=sink, env=env) as process:
        deadline = time.monotonic() + 240
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        process.kill()  # SIGKILL
        process.wait(timeout=30)
    assert ready.exists(), f"it never reached checkpoint-6: {output.read_text()[-3000:]}"
    assert process.returncode == -signal.SIGKILL
    killed = tmp_path / "killed"
    assert (killed / "checkpoint-6" / "adapter_model.safetensors").is_file()
    assert not (killed / "checkpoint-6" / COMPLETE_MARKER).exists()
    assert (killed / "checkpoint-4" / COMPLETE_MARKER).is_file() and not (killed / "adapter").exists()

    with pytest.raises(RecipeError, match="pass --resume"):
        train(recipe)
    with caplog.at_level(logging.INFO, logger="ctscribe.train.native"):
        resumed = train(recipe, resume=True)
    assert "removed half-written checkpoint(s): checkpoint-6" in caplog.text
    assert f"resuming from {killed / 'checkpoint-4'}" in caplog.text
    _check_default_switches(killed)

    a = load_file(whole / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    # Same sample order: every step's loss matches the uninterrupted run's.
    whole_losses, resumed_losses = _losses(tmp_path / "whole"), _losses(killed)
    assert sorted(whole_losses) == sorted(resumed_losses) == list(range(1, 9))
    assert all(abs(whole_losses[s] - resumed_losses[s]) <= 1e-5 for s in whole_losses)


def test_resume_with_another_recipe_is_refused(learning_data, tiny_model_dir, tmp_path):
    recipe = _lora_recipe(learning_data, tiny_model_dir, tmp_path / "run", max_steps=4)
    final = train(recipe)
    assert final == tmp_path / "run" / "adapter" and not (tmp_path / "run" / "adapter.partial").exists()
    assert {"adapter_model.safetensors", "ctscribe_settings.json"} <= {p.name for p in final.iterdir()}
    summary = RunSummary.read(tmp_path / "run")  # every key the LLaMA-Factory engine writes too
    assert (
        summary.engine == "native" and summary.global_step == 4 and summary.best_checkpoint == "checkpoint-4"
    )
    changed = _lora_recipe(learning_data, tiny_model_dir, tmp_path / "run", max_steps=4, lora_rank=8)
    with pytest.raises(RecipeError, match="another recipe"):
        train(changed, resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_two_processes_match_one_and_a_resumed_run_the_whole_one(
    model_type, learning_data, family_model_dir, tmp_path
):
    """torchrun with 2 CPU processes (gloo) at half the per-process batch logs the single process's
    losses, with the default recipe's speed switches on (those a family cannot honour off), per family.

    On each family but the default (whose killed-mid-checkpoint resume has its own test above), the
    single run is also resumed from its step-2 checkpoint, as after a kill once that checkpoint was
    complete: it must log the same losses and end with the same adapter."""
    model = family_model_dir(model_type)

    def args(out, per_device):
        return _cli_train(
            learning_data, model, out, max_steps=4, save_steps=2, eval_steps=2,
            per_device_train_batch_size=per_device,
        )  # fmt: skip

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    single = _run([sys.executable, "-m", "ctscribe", *args(tmp_path / "one", 8)], timeout=240, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    # --standalone: the rendezvous takes a free port of its own.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = _run([*torchrun, "-m", "ctscribe", *args(tmp_path / "two", 4)], timeout=240, env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    for run in ("one", "two"):
        _check_default_switches(tmp_path / run, FAMILIES[model_type])
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), (step, one, two)
    if FAMILIES[model_type] is DEFAULT_FAMILY:
        return

    whole = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    shutil.rmtree(tmp_path / "one" / "adapter")
    shutil.rmtree(tmp_path / "one" / "checkpoint-4")
    resumed = _run(
        [sys.executable, "-m", "ctscribe", *args(tmp_path / "one", 8), "--resume"], timeout=240, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = " ".join((resumed.stdout + resumed.stderr).split())  # the log line, however it was wrapped
    assert "resuming from" in said and "checkpoint-2" in said, said[-3000:]
    again = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    assert again.keys() == whole.keys()
    assert max(float((again[k] - whole[k]).abs().max()) for k in whole) <= 1e-5
    after = _losses(tmp_path / "one")  # steps 3 and 4 logged again, by the resumed run
    assert sorted(after) == [1, 2, 3, 4]
    assert all(after[step] == pytest.approx(one[step], abs=1e-5) for step in (3, 4)), (after, one)


def test_a_bad_recipe_built_in_code_fails_before_data_or_model_load(tmp_path):
    """dataclasses.replace skips validation; train() validates before it opens data or a model."""
    recipe = replace(
        Recipe(),
        dataset_dir=str(tmp_path / "no-data"),
        output_dir=str(tmp_path / "run"),
        model_name_or_path=str(tmp_path / "no-model"),
        eval_steps=7,
    )
    with pytest.raises(RecipeError, match=r"save_steps \(3000\) must be a multiple of eval_steps \(7\)"):
        train(recipe)
    with pytest.raises(RecipeError, match="needs dataset_dir"):
        train(replace(recipe, eval_steps=None, dataset_dir=None))
    assert not (tmp_path / "run").exists()


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


def test_a_checkpointed_lora_run_warns_of_no_deprecated_checkpointing_name(
    learning_data, tiny_model_dir, tmp_path
):
    """transformers 5.24 renamed ``gradient_checkpointing`` to ``activation_checkpointing``: the old
    argument, and peft's read of the model's old ``is_gradient_checkpointing``, each printed a
    FutureWarning on every run."""
    recipe = _lora_recipe(
        learning_data,
        tiny_model_dir,
        tmp_path / "run",
        gradient_checkpointing="true",
        max_steps=1,
        save_steps=1,
        eval_steps=1,
    )
    assert training_arguments(recipe, tmp_path / "args", evaluate=False).activation_checkpointing is True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(recipe)
    assert _losses(tmp_path / "run").keys() == {1}
    deprecated = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    assert not deprecated, deprecated
