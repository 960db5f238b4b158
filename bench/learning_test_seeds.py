"""The learning test's margin: its figures (tests/train/test_native.py, region accuracy after the shipped
tiny-cpu recipe) for several training seeds, one after another.

Same data and model as tests/conftest.py (learning_data, tiny_model_dir, trained_run); only the
recipe's seed changes. Prints one JSON row per seed and writes them all to --json.

Usage: python bench/learning_test_seeds.py [--steps 400] [--seeds 42 1 2 3 4]
       [--json bench/results/learning_test_seeds-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from ctscribe.atomic import atomic_write_text
from ctscribe.ct.images import ImageOptions
from ctscribe.fixtures.learning import LEARNING_PIXELS, LEARNING_ROI_SHARE, LEARNING_SPLITS, score_on_phantom
from ctscribe.fixtures.phantom import build_phantom
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.engine import TransformersEngine
from ctscribe.prepare.run import StageOptions, run_prepare
from ctscribe.recipe import load_recipe
from ctscribe.train.native import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=load_recipe("tiny-cpu").max_steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    parser.add_argument("--json", type=Path, default=Path("bench/results/learning_test_seeds-cpu.json"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="seeds-"))
    model = build_tiny_model(root / "tiny")
    # As tests/conftest.py's learning_data builds the learning set.
    build_phantom(root / "phantom", rows=400, seed=1, short_captions=True, roi_share=LEARNING_ROI_SHARE)
    stage = StageOptions(image=ImageOptions(max_pixels=LEARNING_PIXELS))
    run_prepare(str(root / "phantom"), root / "data", stage, LEARNING_SPLITS, workers=2, show_progress=False)
    rows = []
    for seed in args.seeds:
        started = time.time()
        run = root / f"run-{seed}"
        recipe = load_recipe(
            "tiny-cpu",
            [f"seed={seed}", f"max_steps={args.steps}"],
            dataset_dir=str(root / "data"),
            output_dir=str(run),
            model_name_or_path=str(model),
        )
        train(recipe)
        score = score_on_phantom(TransformersEngine(run / "model", max_pixels=LEARNING_PIXELS))
        row = {
            "seed": seed,
            "steps": args.steps,
            "region_accuracy": score.region_accuracy,
            "n": score.n,
            "shape_only_accuracy": score.shape_only_accuracy,
            "same_size_n": score.same_size_n,
            "same_size_accuracy": score.same_size_accuracy,
            "seconds": round(time.time() - started),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"machine": platform.platform(), "rows": rows}
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
