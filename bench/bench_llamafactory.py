"""Benchmark the two training engines: ctscribe's native trainer vs LLaMA-Factory, in one run.

Both train the same model on the same prepared phantom data with the same recipe (the original
recipe, a few optimizer steps; the native engine with its default speed-ups) and the same pixel
budget: LLaMA-Factory gets our ``image_max_pixels`` (its own default, 768*768, would feed it more
image tokens per sample and hand the native engine a win it did not earn). Speed is samples over the
training loop's time as transformers measures it for both (``train_samples_per_second``, model
loading excluded), with the native engine's one-time vision-feature cache build added to its time.
The machines are noisy, so the result is the ratio within one run, not the absolute numbers.

Usage: python bench/bench_llamafactory.py [--rows 96] [--steps 8] [--size tiny] [--json out.json]
Needs LLaMA-Factory's environment (make lf-env).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ctscribe.fixtures.phantom import build_phantom
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.prepare.run import FinalizeOptions, StageOptions, run_prepare
from ctscribe.recipe import load_recipe
from ctscribe.train import llamafactory, native


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=96, help="phantom rows to prepare")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per engine")
    parser.add_argument("--accumulation", type=int, default=4, help="gradient_accumulation_steps")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "2b"])
    parser.add_argument("--llamafactory-cli", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/engines-<device>.json")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", size=args.size)
        build_phantom(root / "phantom", rows=args.rows, seed=5)
        run_prepare(
            str(root / "phantom"),
            root / "data",
            StageOptions(),
            FinalizeOptions(val_fraction=0.05, test_fraction=0.05),
            workers=2,
        )
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
                dataset_dir=str(root / "data"),
                output_dir=str(root / engine),
                model_name_or_path=str(model),
            )
            extra = {"cli": args.llamafactory_cli} if engine == "llamafactory" else {}
            train(recipe, **extra)
            summary = json.loads((root / engine / "run_summary.json").read_text())
            # The native engine's one-time vision-feature cache build counts against it here: a
            # run this short cannot amortise it the way 3 epochs do.
            seconds = summary["train_runtime"] + summary.get("feature_cache_seconds", 0.0)
            samples = summary["train_samples_per_second"] * summary["train_runtime"]
            results[engine] = {
                "samples_per_s": samples / seconds,
                "loop_samples_per_s": summary["train_samples_per_second"],
                "train_runtime_s": summary["train_runtime"],
                "feature_cache_s": summary.get("feature_cache_seconds", 0.0),
                "train_loss": summary["train_loss"],
            }
        recipe_yaml = recipe.to_yaml()

    ratio = results["native"]["samples_per_s"] / results["llamafactory"]["samples_per_s"]
    loop_ratio = results["native"]["loop_samples_per_s"] / results["llamafactory"]["loop_samples_per_s"]
    samples = args.steps * args.accumulation * 2
    print(f"{samples} samples per engine, {device}")
    print(f"{'engine':<14} {'loop samples/s':>15} {'cache build s':>14} {'with the build':>18} {'loss':>7}")
    for engine, row in results.items():
        print(
            f"{engine:<14} {row['loop_samples_per_s']:>15.2f} {row['feature_cache_s']:>14.1f} "
            f"{row['samples_per_s']:>18.2f} {row['train_loss']:>7.3f}"
        )
    print(f"native / llamafactory: {loop_ratio:.2f}x in the loop, {ratio:.2f}x with the cache build")
    out = args.json or Path(f"bench/results/engines-{device.replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"device": device, "size": args.size, "samples": samples, **results}
    record.update(ratio=ratio, loop_ratio=loop_ratio)
    out.write_text(json.dumps({**record, "recipe": recipe_yaml}, indent=2))


if __name__ == "__main__":
    main()
