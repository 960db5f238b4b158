"""The training run folder: one owner for the files both engines write and export/evaluate read.

A consumer never imports a training engine to read a run, so this module imports neither torch nor
transformers (matplotlib only inside :func:`plot_loss`). RUN_DIR, as both engines leave it::

    recipe.yaml           the resolved recipe (``write_recipe``); --resume compares against it
    data_stats.json       samples used and dropped, by reason (native engine; ``write_data_stats``)
    train_log.jsonl       one object per logged step: step, loss, learning_rate, samples_per_s, eval_loss
    loss.png              training (and validation) loss, drawn from train_log.jsonl
    run_summary.json      :class:`RunSummary`, the same keys for either engine
    checkpoint-N/         a checkpoint; it counts only once it holds ``checkpoint_complete.json``
    adapter/ (or model/)  the final adapter or full model, written into FINAL.partial and renamed
    eval/metrics.json     the latest ``ctscribe evaluate --run-dir RUN_DIR`` results; the export's
                          model card reads them

Every file here is written through :mod:`ctscribe.atomic` (a reader sees the old file or the new
one), except that train_log.jsonl grows by appended lines during training: :func:`read_log` skips a
last line a killed process left half-written, and the rewrites (resume, conversion) are atomic.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

from ctscribe.atomic import atomic_write_bytes, atomic_write_text
from ctscribe.recipe import Recipe, RecipeError

RECIPE = "recipe.yaml"
DATA_STATS = "data_stats.json"
TRAIN_LOG = "train_log.jsonl"
LOSS_PLOT = "loss.png"
SUMMARY = "run_summary.json"
COMPLETE_MARKER = "checkpoint_complete.json"
EVALUATION = Path("eval") / "metrics.json"


def claim_run_dir(recipe: Recipe, resume: bool, started: bool) -> bool:
    """Whether to resume the run in ``output_dir``; refuses to mix two runs in one folder.

    A folder holding a ``started`` run is trained into again only with ``--resume`` and the recipe
    it was started with: anything else would overwrite or blend two runs. Both engines use this.
    """
    run_dir = Path(recipe.output_dir)
    if not started:
        return False
    if not resume:
        raise RecipeError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose a new --out"
        )
    saved = run_dir / RECIPE
    if saved.exists() and saved.read_text() != recipe.to_yaml():
        raise RecipeError(
            f"{run_dir} was trained with another recipe; resume with the same recipe and options"
        )
    return True


def write_recipe(run_dir: Path, recipe: Recipe) -> None:
    atomic_write_text(run_dir / RECIPE, recipe.to_yaml())


def _write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False))


def _read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is missing or unreadable (the model card skips it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_data_stats(run_dir: Path, stats: dict) -> None:
    _write_json(run_dir / DATA_STATS, stats)


def read_data_stats(run_dir: Path) -> dict | None:
    return _read_json(run_dir / DATA_STATS)


def final_folder(run_dir: Path, recipe: Recipe) -> Path:
    """Where the result goes: ``model/`` for full fine-tuning, else ``adapter/`` (LoRA, QLoRA)."""
    return run_dir / ("model" if recipe.finetuning_type == "full" else "adapter")


def staging_folder(final: Path) -> Path:
    """An empty ``FINAL.partial`` to write the result into before :func:`publish` renames it."""
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, final: Path) -> None:
    """Replace ``final`` by the complete ``staging`` folder: adapter/ (or model/) appears whole or not
    at all, as every single file of the run folder does."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


# -- checkpoints ---------------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int:
    """N of ``checkpoint-N``."""
    return int(path.name.split("-")[1])


def mark_checkpoint_complete(folder: Path, step: int) -> None:
    """Written last into a checkpoint: a trainer writes its folder file by file, and a process
    killed midway leaves a folder that looks like a checkpoint. This marker is what --resume trusts."""
    atomic_write_text(folder / COMPLETE_MARKER, json.dumps({"step": step}))


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints whose writing finished, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=checkpoint_step)


def remove_incomplete_checkpoints(run_dir: Path) -> list[str]:
    """Delete checkpoints a killed run left half-written; they must never be resumed from."""
    removed = []
    for path in run_dir.glob("checkpoint-*"):
        if path.is_dir() and not (path / COMPLETE_MARKER).is_file():
            shutil.rmtree(path)
            removed.append(path.name)
    return removed


# -- train_log.jsonl -------------------------------------------------------------------------------


def read_log(path: Path) -> list[dict]:
    """The rows of a train_log.jsonl ([] when absent); a torn last line (killed writer) is skipped."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not JSON") from None
    return rows


def write_log(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def append_log(path: Path, row: dict) -> None:
    """One line more: the log grows during training, so it is appended to rather than rewritten."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_log(path: Path, last_step: int) -> None:
    """On resume, drop log lines of steps after the checkpoint: the resumed run logs them again."""
    if path.exists():
        write_log(path, [row for row in read_log(path) if row["step"] <= last_step])


def plot_loss(log_path: Path, png: Path) -> None:
    """``loss.png``: training loss per logged step, validation loss where evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    figure, axes = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        axes.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(png, buffer.getvalue())


# -- run_summary.json ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """``run_summary.json``: how a run ended, with the same keys whichever engine trained it.

    A value an engine does not know is None (LLaMA-Factory names no best checkpoint; it has no
    feature cache), never a missing key, so readers need not know which engine wrote the file.
    """

    engine: str
    """``native`` or ``llamafactory``."""
    final: str
    """The folder of the result inside RUN_DIR: ``adapter`` (LoRA, QLoRA) or ``model`` (full)."""
    global_step: int | None
    """Optimizer steps taken."""
    train_loss: float | None
    """Mean training loss over the run, as the trainer reports it."""
    best_checkpoint: str | None
    """``checkpoint-N`` with the best ``best_metric`` (kept by rotation), when known."""
    best_eval_loss: float | None
    """The lowest validation loss, when a validation split was evaluated."""
    train_samples_per_second: float | None
    """transformers' own measure (samples over the train loop's time), as LLaMA-Factory reports it."""
    train_runtime: float | None
    """Seconds in the train loop."""
    feature_cache_seconds: float | None
    """Building (or reusing) the vision-feature cache before the loop; None where there is none."""
    best_metric: str | None = None
    """The score that chose ``best_checkpoint``: the recipe's ``metric_for_best_model``."""
    best_score: float | None = None
    """``best_checkpoint``'s value of ``best_metric``."""

    def write(self, run_dir: Path) -> None:
        _write_json(run_dir / SUMMARY, dataclasses.asdict(self))

    @classmethod
    def read(cls, run_dir: Path) -> RunSummary | None:
        """The run's summary, or None when it has none (or an unreadable one)."""
        found = _read_json(run_dir / SUMMARY)
        if found is None:
            return None
        names = {field.name for field in dataclasses.fields(cls)}
        # Summaries written before the keys were shared lack some of them: those read as None.
        return cls(**{name: found.get(name) for name in names})


# -- evaluation results ----------------------------------------------------------------------------


def write_evaluation(run_dir: Path, metrics: dict) -> Path:
    """Keep an evaluation's metrics.json in the run folder (``eval/metrics.json``), where the model
    card of a later export reads them; a newer evaluation replaces an older one."""
    path = run_dir / EVALUATION
    _write_json(path, metrics)
    return path


def read_evaluation(run_dir: Path) -> dict | None:
    return _read_json(run_dir / EVALUATION)
