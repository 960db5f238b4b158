"""`ctscribe demo`: the pipeline run offline on the built-in fixtures, in minutes on 2 CPU cores.

It builds the fixtures, prepares the phantom set the way MedTrinity-25M is prepared (CT filter,
clean captions, the one image path, de-duplication, splits), trains the tiny model of the default family on
it with the tiny-cpu recipe, and shows what it learned on fresh phantom slices it never saw. The phantom's
CT captions are short ("CT of the chest. ..."), which a 10M-parameter model learns in a few hundred
CPU steps. It ends with `ctscribe evaluate` of the trained model against its untrained base on the test split.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ctscribe import CLINICAL_NOTICE
from ctscribe.ct.images import ImageOptions
from ctscribe.evaluate.report import comparison_rows
from ctscribe.evaluate.run import run_evaluation
from ctscribe.fixtures.learning import LEARNING_PIXELS, LEARNING_SPLITS, PhantomScore, score_on_phantom
from ctscribe.fixtures.options import DemoOptions
from ctscribe.fixtures.phantom import TruthRow, build_phantom, read_truth
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.engine import TransformersEngine
from ctscribe.prepare.run import StageOptions, run_prepare
from ctscribe.recipe import load_recipe
from ctscribe.run_folder import LOSS_PLOT, TRAIN_LOG, read_log
from ctscribe.train.native import train


def ensure_fixtures(out: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """Build the tiny model and the phantom set under ``out`` unless a complete copy is there.

    Both builders write atomically, so a present ``config.json`` / ``truth.jsonl`` means complete.
    """
    model_dir, phantom_dir = out / "tiny-model", out / "phantom"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, size="tiny", seed=seed)
    if not (phantom_dir / "truth.jsonl").is_file():
        build_phantom(phantom_dir, rows=rows, seed=seed, short_captions=True)
    return model_dir, phantom_dir


def _counts_table(title: str, rows: list[tuple[str, int]]) -> Table:
    table = Table(title=title)
    table.add_column("rows")
    table.add_column("count", justify="right")
    for label, n in rows:
        table.add_row(label, str(n))
    return table


def _phantom_rows(truth: list[TruthRow]) -> list[tuple[str, int]]:
    ct = [t for t in truth if t.modality == "CT" and t.duplicate_of is None]
    return [
        *((f"modality {m}", n) for m, n in sorted(Counter(t.modality for t in truth).items())),
        *((f"CT {r}", n) for r, n in sorted(Counter(t.region for t in ct).items())),
        ("CT with a lesion", sum(t.lesion for t in ct)),
        ("green ROI box drawn in", sum(t.roi_box is not None for t in ct)),
        ("corrupt image bytes", sum(t.corrupt for t in truth)),
        ("empty caption", sum(t.empty_caption for t in truth)),
        ("re-encoded / resized duplicate", sum(t.duplicate_of is not None for t in truth)),
    ]


def _prepare_rows(stats: dict) -> list[tuple[str, int]]:
    return [
        ("read", stats["read"]),
        ("kept", stats["kept"]),
        *((f"skipped: {reason.replace('_', ' ')}", n) for reason, n in stats["skipped"].items()),
        *((f"split {split}", n) for split, n in stats["splits"].items()),
        ("green ROI box found and removed", stats["roi_box_found"]),
    ]


def _score_table(before: PhantomScore, after: PhantomScore) -> Table:
    table = Table(title=f"4. What it learned: {after.n} fresh phantom CT slices, never seen in training")
    table.add_column("")
    table.add_column("untrained", justify="right")
    table.add_column("trained", justify="right")
    table.add_row("names the body region", f"{before.region_accuracy:.0%}", f"{after.region_accuracy:.0%}")
    table.add_row("lesion present or not", f"{before.lesion_accuracy:.0%}", f"{after.lesion_accuracy:.0%}")
    return table


def _evaluation_table(metrics: dict, report_dir: Path) -> Table:
    table = Table(
        title=f"5. ctscribe evaluate on the test split ({metrics['n']} records) -> {report_dir / 'report.md'}"
    )
    for column in ("metric (95% interval)", "trained", "untrained", "trained - untrained, p"):
        table.add_column(column)
    for row in comparison_rows(metrics):
        table.add_row(*row)
    return table


def run_demo(
    out: Path,
    rows: int = DemoOptions.rows,
    seed: int = DemoOptions.seed,
    max_steps: int = DemoOptions.max_steps,
    console: Console | None = None,
) -> dict:
    """Build the fixtures, prepare the phantom set, train the tiny model and score what it learned."""
    console = console or Console()
    out = Path(out)
    console.rule("ctscribe demo (offline, built-in fixtures)")
    model_dir, phantom_dir = ensure_fixtures(out, rows, seed)
    console.print(
        _counts_table("1. Phantom data set (MedTrinity-25M schema)", _phantom_rows(read_truth(phantom_dir)))
    )

    data_dir = out / "data"
    stage = StageOptions(image=ImageOptions(max_pixels=LEARNING_PIXELS))
    stats = run_prepare(str(phantom_dir), data_dir, stage, LEARNING_SPLITS, workers=2, show_progress=False)
    console.print(_counts_table(f"2. ctscribe prepare -> {data_dir}", _prepare_rows(stats)))
    record = json.loads((data_dir / "train.json").read_text())[0]
    user, answer = (m["content"] for m in record["messages"])
    console.print(f"[bold]A training record[/]: {user!r} -> {answer!r}")

    run_dir = out / "run"
    recipe = load_recipe(
        "tiny-cpu",
        [f"max_steps={max_steps}"],
        dataset_dir=str(data_dir),
        output_dir=str(run_dir),
        model_name_or_path=str(model_dir),
    )
    trained = run_dir / "model"
    console.print(f"[bold]3. ctscribe train tiny-cpu[/] ({max_steps} steps, full fine-tuning) -> {run_dir}")
    if not (trained / "config.json").is_file():
        train(recipe, resume=any(run_dir.glob("checkpoint-*")))
    losses = [r["loss"] for r in read_log(run_dir / TRAIN_LOG) if "loss" in r]
    console.print(f"   training loss {losses[0]:.2f} -> {losses[-1]:.2f}; curve in {run_dir / LOSS_PLOT}")

    before = score_on_phantom(TransformersEngine(model_dir, max_pixels=LEARNING_PIXELS))
    after = score_on_phantom(TransformersEngine(trained, max_pixels=LEARNING_PIXELS))
    console.print(_score_table(before, after))
    for expected, text in after.examples:
        console.print(f"   [dim]truth[/] {expected:<28} [dim]model[/] {text!r}")
    console.print(
        "   Lesion presence is a small local finding: a model this small stays near chance within a "
        "demo's budget (docs/BENCHMARKS.md has its learning curve)."
    )

    report_dir = out / "report"
    metrics = run_evaluation(
        lambda: TransformersEngine(trained, max_pixels=LEARNING_PIXELS, name="trained"),
        data_dir / "test.json",
        report_dir,
        make_baseline=lambda: TransformersEngine(model_dir, max_pixels=LEARNING_PIXELS, name="untrained"),
        run_dir=run_dir,
        max_new_tokens=32,
        with_meteor=False,  # a JVM start per run is slow; ctscribe evaluate adds METEOR where Java is
    )
    console.print(_evaluation_table(metrics, report_dir))
    console.print(f"[dim]{CLINICAL_NOTICE}[/]", soft_wrap=True)
    return {
        "data": str(data_dir),
        "run": str(run_dir),
        "kept": stats["kept"],
        "report": str(report_dir),
        "region_accuracy": {"untrained": before.region_accuracy, "trained": after.region_accuracy},
        "lesion_accuracy": {"untrained": before.lesion_accuracy, "trained": after.lesion_accuracy},
    }
