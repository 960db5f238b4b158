"""Learning curve of the tiny model on phantom data: region and lesion accuracy over training steps.

Trains the tiny random Qwen2-VL (full fine-tuning, the tiny-cpu recipe) on short-caption phantom CT
and scores every checkpoint on fresh phantom slices against their known facts. Step 0 (untrained)
is the baseline of the same run. The body region is a global property and is learned quickly; lesion
presence is a small local finding and is the harder benchmark.

Usage: python bench/bench_learning.py [--steps 1500] [--every 100] [--rows 600] [--json bench-learning.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ctscribe.data.images import ImageOptions
from ctscribe.data.prepare import FinalizeOptions, StageOptions, run_prepare
from ctscribe.fixtures.learning import LEARNING_PIXELS as PIXELS
from ctscribe.fixtures.learning import score_on_phantom
from ctscribe.fixtures.phantom import build_phantom
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.engine import TransformersEngine
from ctscribe.recipe import load_recipe
from ctscribe.train.native import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--json", type=Path, default=Path("bench-learning.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", size=args.size)
        build_phantom(root / "phantom", rows=args.rows, seed=1, short_captions=True)
        stage = StageOptions(image=ImageOptions(max_pixels=PIXELS))
        run_prepare(
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
        rows = []
        base = score_on_phantom(TransformersEngine(model, max_pixels=PIXELS))
        rows.append(
            {"step": 0, "region_accuracy": base.region_accuracy, "lesion_accuracy": base.lesion_accuracy}
        )
        for step in range(args.every, args.steps + 1, args.every):
            checkpoint = root / "run" / f"checkpoint-{step}"
            score = score_on_phantom(TransformersEngine(checkpoint, max_pixels=PIXELS, processor=model))
            rows.append(
                {
                    "step": step,
                    "region_accuracy": score.region_accuracy,
                    "lesion_accuracy": score.lesion_accuracy,
                }
            )
        n = base.n

    print(f"{'step':>6} {'region acc':>11} {'lesion acc':>11}   (n={n} fresh phantom CT slices)")
    for r in rows:
        print(f"{r['step']:>6} {r['region_accuracy']:>11.3f} {r['lesion_accuracy']:>11.3f}")
    result = {
        "size": args.size,
        "rows": args.rows,
        "steps": args.steps,
        "train_s": round(train_s, 1),
        "n": n,
        "curve": rows,
    }
    args.json.write_text(json.dumps(result, indent=2))
    print(f"training took {train_s:.0f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
