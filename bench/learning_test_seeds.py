"""The learning test's margin: its figures (tests/train/test_native.py, region accuracy after the shipped
tiny-cpu recipe) for several training seeds and base families, one after another.

Same data as tests/conftest.py (learning_data); the model is each family's tiny fixture (qwen2_vl:
tiny_model_dir, what trained_run trains); only the recipe's seed and the base change. Prints one JSON
row per (family, seed), then a table with each family's accuracy over the first family's in this run,
and writes them all to --json.

Usage: python bench/learning_test_seeds.py [--steps 400] [--seeds 42 1 2 3 4]
       [--families qwen2_vl qwen2_5_vl qwen3_vl qwen3_5] [--json bench/results/learning_test_seeds-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from ctscribe.atomic import atomic_write_text
from ctscribe.ct.images import ImageOptions
from ctscribe.fixtures.families import build_family_model
from ctscribe.fixtures.learning import LEARNING_PIXELS, LEARNING_ROI_SHARE, LEARNING_SPLITS, score_on_phantom
from ctscribe.fixtures.phantom import build_phantom
from ctscribe.generate.engine import TransformersEngine
from ctscribe.prepare.run import StageOptions, run_prepare
from ctscribe.recipe import load_recipe
from ctscribe.train.native import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support: test-only helpers
from support.bench_options import add_families_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=load_recipe("tiny-cpu").max_steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    add_families_option(parser)
    parser.add_argument("--json", type=Path, default=Path("bench/results/learning_test_seeds-cpu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seeds-") as tmp:
        rows = run_all(Path(tmp), args)
    print_table(rows)
    result = {"machine": platform.platform(), "rows": rows}
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


def run_all(root: Path, args: argparse.Namespace) -> list[dict]:
    """One JSON row per (family, seed), each trained and scored under ``root``."""
    # As tests/conftest.py's learning_data builds the learning set.
    build_phantom(root / "phantom", rows=400, seed=1, short_captions=True, roi_share=LEARNING_ROI_SHARE)
    stage = StageOptions(image=ImageOptions(max_pixels=LEARNING_PIXELS))
    run_prepare(str(root / "phantom"), root / "data", stage, LEARNING_SPLITS, workers=2, show_progress=False)
    rows = []
    for family in args.families:
        model = build_family_model(root / family, family, "tiny")
        for seed in args.seeds:
            started = time.time()
            run = root / f"run-{family}-{seed}"
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
                "family": family,
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
    return rows


def print_table(rows: list[dict]) -> None:
    """Mean accuracies per family, and the region accuracy as a ratio of the first family's."""
    means = {}
    for family in dict.fromkeys(row["family"] for row in rows):
        own = [row for row in rows if row["family"] == family]
        means[family] = {
            key: sum(row[key] for row in own) / len(own)
            for key in ("region_accuracy", "same_size_accuracy", "seconds")
        }
    first = next(iter(means.values()))["region_accuracy"]
    print(f"{'family':<12} {'region':>7} {'same-size':>9} {'vs first':>8} {'s/run':>6}")
    for family, mean in means.items():
        ratio = mean["region_accuracy"] / first if first else float("nan")
        print(
            f"{family:<12} {mean['region_accuracy']:>7.3f} {mean['same_size_accuracy']:>9.3f} "
            f"{ratio:>8.2f} {mean['seconds']:>6.0f}"
        )


if __name__ == "__main__":
    main()
