"""Choosing the best checkpoint by a clinical score: the native engine describes the validation
subset at each evaluation, logs the scores, and best_checkpoint follows the recipe's metric."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from ctscribe.evaluate.checkpoint_scores import checkpoint_scores
from ctscribe.fixtures.learning import LEARNING_PIXELS
from ctscribe.generate.engine import GenerationResult, TransformersEngine
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.recipe import CLINICAL_METRICS, RecipeError, load_recipe
from ctscribe.run_folder import RunSummary
from ctscribe.train.llamafactory import train as train_with_llamafactory
from ctscribe.train.llamafactory import train_config
from ctscribe.train.native import train

SETTINGS = {
    "image_max_pixels": LEARNING_PIXELS,
    "cutoff_len": 256,
    "learning_rate": 1e-3,
    "max_steps": 4,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "logging_steps": 1,
    "save_steps": 2,
    "eval_steps": 2,
    "dataloader_num_workers": 0,
    "report_to": "tensorboard",
    "metric_for_best_model": "abnormality_f1",
    "generation_eval_samples": 12,
}


def test_every_clinical_metric_of_the_recipe_is_scored():
    scores = checkpoint_scores(
        ["CT of the chest. A lesion is present."], ["CT of the chest. No lesion is seen."]
    )
    assert set(scores) == set(CLINICAL_METRICS)
    assert scores["region_acc"] == 1.0 and scores["abnormality_f1"] == 0.0


def test_llamafactory_refuses_a_clinical_metric_before_anything_starts(tmp_path):
    recipe = load_recipe(
        "tiny-cpu",
        ["metric_for_best_model=region_acc"],
        dataset_dir=str(tmp_path / "data"),
        output_dir=str(tmp_path / "run"),
    )
    for start in (
        lambda: train_config(recipe, DEFAULT_FAMILY),
        lambda: train_with_llamafactory(recipe, cli=tmp_path / "none"),
    ):
        with pytest.raises(RecipeError, match="metric_for_best_model=region_acc needs the native engine"):
            start()
    assert not (tmp_path / "run").exists()


class _FindingsRightFirst(TrainerCallback):
    """After the first evaluation, the stand-in descriptions stop naming the lesion."""

    first = True

    def on_evaluate(self, args, state, control, **kwargs):
        type(self).first = False


def test_best_checkpoint_follows_findings_f1_where_eval_loss_would_pick_another(
    learning_data, tiny_model_dir, tmp_path, monkeypatch
):
    """The model really generates at each evaluation (through the engine, on the model being trained);
    its texts are then replaced so that findings F1 is best at the first evaluation, while the
    validation loss keeps falling and would choose the last checkpoint."""
    generate = TransformersEngine.generate
    calls = []

    def stand_in(self, requests):
        results = generate(self, requests)  # the real generation runs, then its words are replaced
        calls.append(len(requests))
        text = "CT of the chest. A lesion is present." if _FindingsRightFirst.first else "No lesion is seen."
        return [GenerationResult(text, r.prompt_tokens, r.completion_tokens, "stop", 0.0) for r in results]

    monkeypatch.setattr(TransformersEngine, "generate", stand_in)
    run_dir = tmp_path / "run"
    recipe = load_recipe(
        "original",
        [f"{key}={value}" for key, value in SETTINGS.items()],
        dataset_dir=str(learning_data),
        output_dir=str(run_dir),
        model_name_or_path=str(tiny_model_dir),
    )
    train(recipe, callbacks=(_FindingsRightFirst(),))

    assert sum(calls) == 2 * SETTINGS["generation_eval_samples"]  # the same subset at both evaluations
    rows = {r["step"]: r for r in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines())}
    first, last = rows[2], rows[4]
    assert first["eval_abnormality_f1"] > 0 and last["eval_abnormality_f1"] == 0.0
    assert last["eval_loss"] < first["eval_loss"]  # eval loss would have chosen checkpoint-4
    assert {f"eval_{name}" for name in CLINICAL_METRICS} <= first.keys()
    summary = RunSummary.read(run_dir)
    assert summary.best_checkpoint == "checkpoint-2" and summary.best_metric == "abnormality_f1"
    assert summary.best_score == pytest.approx(first["eval_abnormality_f1"])
    assert summary.best_eval_loss == pytest.approx(last["eval_loss"])
    assert (run_dir / "checkpoint-2").is_dir()  # rotation keeps the best

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("eval/abnormality_f1")]
    assert steps == [2, 4]
