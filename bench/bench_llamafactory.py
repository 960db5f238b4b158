"""Benchmark the two training engines: ctscribe's native trainer vs LLaMA-Factory, in one run.

Both train the same model on the same prepared phantom data with the same recipe (the original
recipe, a few optimizer steps; the native engine with its default speed-ups) and the same pixel
budget: LLaMA-Factory gets our ``image_max_pixels`` (its own default, 768*768, would feed it more
image tokens per sample and hand the native engine a win it did not earn). Speed is samples over the
training loop's time as transformers measures it for both (``train_samples_per_second``, model
loading excluded), with the native engine's one-time vision-feature cache build added to its time.
The machines are noisy, so the result is the ratio within one run, not the absolute numbers.

With ``--families``, each base family's fixture of ``--size`` goes through both engines, one family after
another, each with its own ratio.

Usage: python bench/bench_llamafactory.py [--rows 96] [--steps 8] [--size tiny]
       [--families qwen2_vl qwen2_5_vl qwen3_vl qwen3_5] [--json out.json]
Needs LLaMA-Factory's environment (make lf-env).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from ctscribe.fixtures.families import build_family_model
from ctscribe.fixtures.phantom import build_phantom
from ctscribe.models import DEFAULT_FAMILY
from ctscribe.prepare.run import FinalizeOptions, StageOptions, run_prepare
from ctscribe.recipe import load_recipe
from ctscribe.train import llamafactory, native

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support: test-only helpers
from support.bench_options import add_families_option


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=96, help="phantom rows to prepare")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per engine")
    parser.add_argument("--accumulation", type=int, default=4, help="gradient_accumulation_steps")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "real", "2b"], help="2b: real")
    add_families_option(parser)
    parser.add_argument("--llamafactory-cli", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/engines-<device>.json")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"

    samples = args.steps * args.accumulation * 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_phantom(root / "phantom", rows=args.rows, seed=5)
        run_prepare(
            str(root / "phantom"),
            root / "data",
            StageOptions(),
            FinalizeOptions(val_fraction=0.05, test_fraction=0.05),
            workers=2,
        )
        families = {}
        for family in args.families:
            model = build_family_model(root / family, family, "real" if args.size == "2b" else args.size)
            families[family], recipe_yaml = compare_engines(model, root / "data", root / family, args)

    print(f"{samples} samples per engine, {device}")
    print(
        f"{'family':<12} {'engine':<14} {'loop samples/s':>15} {'cache build s':>14} "
        f"{'with the build':>18} {'loss':>7}"
    )
    for family, results in families.items():
        for engine in ("native", "llamafactory"):
            row = results[engine]
            print(
                f"{family:<12} {engine:<14} {row['loop_samples_per_s']:>15.2f} "
                f"{row['feature_cache_s']:>14.1f} {row['samples_per_s']:>18.2f} {row['train_loss']:>7.3f}"
            )
        print(
            f"{family}: native / llamafactory {results['loop_ratio']:.2f}x in the loop, "
            f"{results['ratio']:.2f}x with the cache build"
        )
    out = args.json or Path(f"bench/results/engines-{device.replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if list(families) == [DEFAULT_FAMILY.model_type]:  # the layout of the earlier single-family files
        record = {
            "device": device,
            "size": args.size,
            "samples": samples,
            **families[DEFAULT_FAMILY.model_type],
        }
    else:
        record = {"device": device, "size": args.size, "samples": samples, "families": families}
    out.write_text(json.dumps({**record, "recipe": recipe_yaml}, indent=2))


def compare_engines(model: Path, data: Path, out: Path, args: argparse.Namespace) -> tuple[dict, str]:
    """Both engines' speed on ``model`` with the original recipe, a few steps each, and their ratio
    (with the recipe as it ran)."""
    overrides = [
        f"max_steps={args.steps}",
        f"gradient_accumulation_steps={args.accumulation}",
        "save_steps=100000",
        "logging_steps=1",
        "report_to=none",
        "dataloader_num_workers=0",
    ]
    results = {}
    for engine, train in (("native", native.train), ("llamafactory", llamafactory.train)):
        recipe = load_recipe(
            "original",
            overrides,
            dataset_dir=str(data),
            output_dir=str(out / engine),
            model_name_or_path=str(model),
        )
        extra = {"cli": args.llamafactory_cli} if engine == "llamafactory" else {}
        train(recipe, **extra)
        summary = json.loads((out / engine / "run_summary.json").read_text())
        # The native engine's one-time vision-feature cache build counts against it here: a
        # run this short cannot amortise it the way 3 epochs do.
        seconds = summary["train_runtime"] + (summary.get("feature_cache_seconds") or 0.0)
        samples = summary["train_samples_per_second"] * summary["train_runtime"]
        results[engine] = {
            "samples_per_s": samples / seconds,
            "loop_samples_per_s": summary["train_samples_per_second"],
            "train_runtime_s": summary["train_runtime"],
            "feature_cache_s": (summary.get("feature_cache_seconds") or 0.0),
            "train_loss": summary["train_loss"],
        }
    results["ratio"] = results["native"]["samples_per_s"] / results["llamafactory"]["samples_per_s"]
    results["loop_ratio"] = (
        results["native"]["loop_samples_per_s"] / results["llamafactory"]["loop_samples_per_s"]
    )
    return results, recipe.to_yaml()


if __name__ == "__main__":
    main()
