"""Dialogue on phantom CT: does the tiny model, trained with ``prepare --dialogue``, answer closed
questions above chance?

Trains the tiny random Qwen2-VL (full fine-tuning, the tiny-cpu recipe) on short-caption phantom CT
prepared with follow-up turns, then runs ``ctscribe evaluate``'s own code on the test split for the
trained model and its untrained base: each answers the follow-ups after its own description. Closed
questions are balanced yes/no, so chance is 0.5; modality questions of a CT-only set can be answered
from the question alone, so the accuracy without them is reported too.

Usage: python bench/bench_dialogue.py [--steps 400] [--batch-size 8] [--rows 600]
                                      [--json bench/results/dialogue.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from ctscribe.ct.images import ImageOptions
from ctscribe.evaluate.run import run_evaluation
from ctscribe.evaluate.scores import read_predictions
from ctscribe.fixtures.learning import LEARNING_PIXELS as PIXELS
from ctscribe.fixtures.learning import LEARNING_SPLITS
from ctscribe.fixtures.phantom import build_phantom
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.engine import TransformersEngine
from ctscribe.prepare.run import StageOptions, run_prepare
from ctscribe.recipe import load_recipe
from ctscribe.train.native import train

IMAGE_FREE_TOPICS = ("modality",)  # answerable from the question alone in a CT-only data set


def closed_without(rows: list[dict], topics: tuple[str, ...]) -> dict:
    """Closed-question accuracy over the topics that need the image."""
    from ctscribe.evaluate.dialogue import yes_or_no

    closed = [t for row in rows for t in row["turns"] if t["kind"] == "closed" and t["topic"] not in topics]
    hits = sum(yes_or_no(t["prediction"]) == t["expected"] for t in closed)
    return {"n": len(closed), "acc": round(hits / len(closed), 4) if closed else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--json", type=Path, default=Path("bench/results/dialogue.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model")
        build_phantom(root / "phantom", rows=args.rows, seed=1, short_captions=True)
        stage = StageOptions(image=ImageOptions(max_pixels=PIXELS))
        finalize = dataclasses.replace(LEARNING_SPLITS, dialogue=True)
        stats = run_prepare(
            str(root / "phantom"), root / "data", stage, finalize, workers=2, show_progress=False
        )
        recipe = load_recipe(
            "tiny-cpu",
            # a dialogue is ~230 tokens: room for all its turns
            [
                f"max_steps={args.steps}",
                f"save_steps={args.steps}",
                f"eval_steps={args.steps}",
                "cutoff_len=512",
            ],
            dataset_dir=str(root / "data"),
            output_dir=str(root / "run"),
            model_name_or_path=str(model),
        )
        start = time.perf_counter()
        trained = train(recipe)
        train_s = time.perf_counter() - start
        metrics = run_evaluation(
            lambda: TransformersEngine(trained, max_pixels=PIXELS),
            root / "data" / "test.json",
            root / "report",
            make_baseline=lambda: TransformersEngine(model, max_pixels=PIXELS),
            batch_size=16,
            max_new_tokens=24,
            with_meteor=False,
        )
        systems = {"trained": (metrics, ""), "untrained": (metrics["baseline"], "baseline_")}
        result = {
            "rows": args.rows,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "train_s": round(train_s, 1),
            "train_records": stats["splits"]["train"],
            "test_records": stats["splits"]["test"],
            "prepared_dialogue": stats["dialogue"],
            "chance": 0.5,
        }
        for name, (block, prefix) in systems.items():
            rows = read_predictions(root / "report" / f"{prefix}dialogue_predictions.jsonl")
            result[name] = {
                **{k: block["dialogue"][k] for k in ("closed_n", "closed_expected_yes", "closed_acc")},
                "closed_acc_ci95": block["dialogue"]["ci95"].get("closed_acc"),
                "closed_acc_without_modality": closed_without(rows, IMAGE_FREE_TOPICS),
                "closed_acc_by_topic": block["dialogue"]["closed_acc_by_topic"],
                "open_recall": block["dialogue"]["open_recall"],
                "region_acc_description": block["findings"]["region_acc"],
                "example": rows[0]["turns"] if rows else [],
            }

    print(f"trained {args.steps} steps in {train_s:.0f} s on {result['train_records']} dialogue records")
    print(f"{'':<12}{'closed acc':>12}{'w/o modality':>14}{'open recall':>13}   (chance 0.5)")
    for name in systems:
        r = result[name]
        print(
            f"{name:<12}{r['closed_acc']:>12.3f}{r['closed_acc_without_modality']['acc']:>14.3f}"
            f"{r['open_recall']:>13.3f}   by topic: "
            + ", ".join(f"{t} {v['acc']:.2f} (n={v['n']})" for t, v in r["closed_acc_by_topic"].items())
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
