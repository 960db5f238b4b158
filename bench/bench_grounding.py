"""Grounding learning check: does the tiny model trained on grounded phantom data point at the lesion?

Builds the learning set as the test suite's session fixture does (short-caption phantom CT, every
lesion slice with its green box, prepared with grounding on at the tiny-cpu recipe's budget), trains
the tiny random Qwen2-VL with the tiny-cpu recipe for longer than the suite's 400 steps (a box
follows "A lesion is present", a local finding the tiny model has not learned by then), and scores
the untrained model and every --every-step checkpoint on fresh phantom slices
(ctscribe.fixtures.learning.score_on_phantom): region and lesion accuracy, and on the slices with a
green box the IoU of the model's box with the drawn one, against two baselines on the same slices:
a fixed central box (the truth boxes' mean size, centred) and the mean truth box of the slice's
region and side (what naming region and side right, without finding the lesion, reaches).

Usage: python bench/bench_grounding.py [--steps 1500] [--every 500] [--rows 600] [--score-rows 120]
       [--json bench/results/grounding_learning-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ctscribe.data.images import ImageOptions
from ctscribe.data.prepare import StageOptions, run_prepare
from ctscribe.fixtures.learning import (
    LEARNING_PIXELS,
    LEARNING_ROI_SHARE,
    LEARNING_SPLITS,
    GroundingEngine,
    PhantomScore,
    score_on_phantom,
)
from ctscribe.fixtures.phantom import build_phantom
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.recipe import load_recipe
from ctscribe.train.native import train

COLUMNS = ("region acc", "lesion acc", "box parsed", "mean IoU", "IoU>=0.5", "central IoU", "prior IoU")


def summary(step: int, score: PhantomScore) -> dict:
    return {
        "step": step,
        "region_accuracy": score.region_accuracy,
        "lesion_accuracy": score.lesion_accuracy,
        **{f"box_{key}": value for key, value in asdict(score.box).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps")
    parser.add_argument("--every", type=int, default=500, help="score a checkpoint every N steps")
    parser.add_argument("--rows", type=int, default=600, help="phantom rows to train on")
    parser.add_argument("--score-rows", type=int, default=120, help="fresh phantom rows scored")
    parser.add_argument("--json", type=Path, default=Path("bench/results/grounding_learning-cpu.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model")
        phantom = root / "phantom"
        build_phantom(phantom, rows=args.rows, seed=1, short_captions=True, roi_share=LEARNING_ROI_SHARE)
        stage = StageOptions(image=ImageOptions(max_pixels=LEARNING_PIXELS))
        data = root / "data"
        stats = run_prepare(str(phantom), data, stage, LEARNING_SPLITS, workers=2, show_progress=False)
        recipe = load_recipe(
            "tiny-cpu",
            [
                f"max_steps={args.steps}",
                f"save_steps={args.every}",
                f"eval_steps={args.every}",
                f"save_total_limit={args.steps // args.every + 1}",
            ],
            dataset_dir=str(data),
            output_dir=str(root / "run"),
            model_name_or_path=str(model),
        )
        start = time.perf_counter()
        train(recipe)
        train_s = time.perf_counter() - start
        curve = [(0, score_on_phantom(GroundingEngine(model, max_pixels=LEARNING_PIXELS), args.score_rows))]
        for step in range(args.every, args.steps + 1, args.every):
            checkpoint = GroundingEngine(
                root / "run" / f"checkpoint-{step}", max_pixels=LEARNING_PIXELS, processor=model
            )
            curve.append((step, score_on_phantom(checkpoint, args.score_rows)))

    last = curve[-1][1]
    print(f"{last.box.n} fresh phantom CT slices with a green box (of {last.n} scored); shared machine")
    print(f"{'step':>6} | " + " | ".join(f"{c:>11}" for c in COLUMNS))
    for step, score in curve:
        box = score.box
        values = (score.region_accuracy, score.lesion_accuracy, box.parsed, box.iou, box.hit_rate)
        values += (box.central_iou, box.prior_iou)
        print(f"{step:>6} | " + " | ".join(f"{value:>11.3f}" for value in values))
    print("example answers at the last step:", *last.examples, sep="\n  ")
    result = {
        "command": "python bench/bench_grounding.py "
        f"--steps {args.steps} --every {args.every} --rows {args.rows} --score-rows {args.score_rows}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "rows": args.rows,
        "kept": stats["kept"],
        "grounded_rows": stats["grounded"],
        "steps": args.steps,
        "train_s": round(train_s, 1),
        "scored": last.n,
        "scored_with_box": last.box.n,
        "curve": [summary(step, score) for step, score in curve],
        "examples": last.examples,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"training took {train_s:.0f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
