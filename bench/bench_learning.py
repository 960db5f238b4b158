"""Learning curve of the tiny model on phantom data: region and lesion accuracy over training steps.

Trains the tiny random Qwen2-VL (full fine-tuning, the tiny-cpu recipe) on short-caption phantom CT
and scores every checkpoint on fresh phantom slices against their known facts. Step 0 (untrained)
is the baseline of the same run. The body region is a global property and is learned quickly; lesion
presence is a small local finding and is the harder benchmark.

With --grounding, every lesion slice has its green box (as in the test suite's learning set), so
every "A lesion is present" answer is grounded, and each checkpoint is also scored on where it puts
the region of interest: on the slices with a green box, the IoU of the model's box with the drawn one
(0 where it writes none), against two baselines on the same slices: a fixed central box (the truth
boxes' mean size, centred) and the mean truth box of the slice's region and side (what naming the
region and side right, without finding the lesion, reaches). Generation keeps the grounding tokens.

Usage: python bench/bench_learning.py [--steps 1500] [--every 100] [--rows 600] [--grounding]
       [--json bench-learning.json]
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
from ctscribe.data.prepare import FinalizeOptions, StageOptions, run_prepare
from ctscribe.fixtures.learning import LEARNING_PIXELS as PIXELS
from ctscribe.fixtures.learning import LEARNING_ROI_SHARE, PhantomScore, score_on_phantom
from ctscribe.fixtures.phantom import ROI_SHARE, build_phantom
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.engine import TransformersEngine
from ctscribe.recipe import load_recipe
from ctscribe.train.native import train

BOX_COLUMNS = ("box parsed", "mean IoU", "IoU>=0.5", "central IoU", "prior IoU")


def curve_row(step: int, score: PhantomScore, grounding: bool) -> dict:
    row = {"step": step, "region_accuracy": score.region_accuracy, "lesion_accuracy": score.lesion_accuracy}
    if grounding:
        row.update({f"box_{key}": value for key, value in asdict(score.box).items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--grounding", action="store_true", help="box every lesion slice; score box IoU")
    parser.add_argument("--json", type=Path, default=Path("bench-learning.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", size=args.size)
        roi_share = LEARNING_ROI_SHARE if args.grounding else ROI_SHARE
        build_phantom(root / "phantom", rows=args.rows, seed=1, short_captions=True, roi_share=roi_share)
        stage = StageOptions(image=ImageOptions(max_pixels=PIXELS))
        stats = run_prepare(
            str(root / "phantom"), root / "data", stage, FinalizeOptions(), workers=2, show_progress=False
        )
        recipe = load_recipe(
            "tiny-cpu",
            [
                f"max_steps={args.steps}",
                f"save_steps={args.every}",
                f"eval_steps={args.every}",
                f"save_total_limit={args.steps // args.every + 1}",
            ],
            dataset_dir=str(root / "data"),
            output_dir=str(root / "run"),
            model_name_or_path=str(model),
        )
        start = time.perf_counter()
        train(recipe)
        train_s = time.perf_counter() - start
        scores = [(0, score_on_phantom(TransformersEngine(model, max_pixels=PIXELS), roi_share=roi_share))]
        for step in range(args.every, args.steps + 1, args.every):
            checkpoint = TransformersEngine(
                root / "run" / f"checkpoint-{step}", max_pixels=PIXELS, processor=model
            )
            scores.append((step, score_on_phantom(checkpoint, roi_share=roi_share)))

    last = scores[-1][1]
    columns = ("region acc", "lesion acc", *(BOX_COLUMNS if args.grounding else ()))
    boxed = f", {last.box.n} with a green box" if args.grounding else ""
    print(f"n={last.n} fresh phantom CT slices{boxed}; machine shared with other jobs")
    print(f"{'step':>6} | " + " | ".join(f"{column:>11}" for column in columns))
    for step, score in scores:
        values = [score.region_accuracy, score.lesion_accuracy]
        if args.grounding:
            box = score.box
            values += [box.parsed, box.iou, box.hit_rate, box.central_iou, box.prior_iou]
        print(f"{step:>6} | " + " | ".join(f"{value:>11.3f}" for value in values))
    print("example answers at the last step:", *last.examples, sep="\n  ")
    result = {
        "size": args.size,
        "rows": args.rows,
        "kept": stats["kept"],
        "grounded_rows": stats["grounded"],
        "steps": args.steps,
        "train_s": round(train_s, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
        "n": last.n,
        "curve": [curve_row(step, score, args.grounding) for step, score in scores],
        "examples": last.examples,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"training took {train_s:.0f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
