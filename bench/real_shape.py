"""The user's path at the real Qwen2-VL-2B shape: seconds and peak memory of each stage.

Runs ``run_real_shape`` from tests/support/real_shape.py (the same function the slow test
tests/support/test_real_shape.py runs): the `2b` fixture built, trained 2 steps at batch 2 with the
shipped default recipe (only size keys set), exported in bf16, one image predicted, one request
served; each stage the real ``ctscribe`` command in its own process. Writes
``bench/results/real_shape-<device>.json`` (``real_shape-<size>-<device>.json`` for another size):

    {"device": ..., "stages": {"fixture"|"train"|"export"|"predict"|"serve":
        {"seconds": ..., "peak_rss_gb": ..., "peak_cuda_gb": ... (GPU only, else null)}},
     "fits_12gb_at_batch_2": ... (GPU only: the train stage's peak CUDA memory <= 12 GB), "meta": {...}}

peak_rss_gb is the largest process of the stage (``ru_maxrss``), GB = 10^9 bytes. The phantom slices
are 256-320 pixels, below the recipe's 512x512 budget: the training samples carry fewer image tokens
than MedTrinity's 512x512 slices would (``meta.mean_image_tokens``).

Usage: python bench/real_shape.py [--size 2b] [--root DIR] [--json PATH]
On this 2-core machine (shared): flock /tmp/ctscribe-heavy.lock python bench/real_shape.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support: test-only helpers
from support.real_shape import SIZE_KEYS, run_real_shape

CARD_GB = 12  # the question: does the default recipe fit a 12 GB card at batch 2?


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="2b", choices=["tiny", "small", "2b"])
    parser.add_argument("--root", type=Path, help="working folder (emptied as it goes); default: a temp dir")
    parser.add_argument("--stage-timeout", type=float, default=900)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    shape = "" if args.size == "2b" else f"{args.size}-"  # other sizes only check this script
    out_json = args.json or Path(f"bench/results/real_shape-{shape}{device.replace(' ', '_')}.json")

    root = args.root or Path(tempfile.mkdtemp(prefix="real-shape-"))
    try:
        result = run_real_shape(root, size=args.size, stage_timeout=args.stage_timeout)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{device}, {args.size} shape, default recipe with {SIZE_KEYS}")
    print(f"{'stage':<8} {'seconds':>8} {'peak RSS GB':>12} {'peak CUDA GB':>13}")
    for name, stage in result.stages.items():
        cuda_gb = f"{stage.peak_cuda_gb:.2f}" if stage.peak_cuda_gb is not None else "-"
        print(f"{name:<8} {stage.seconds:>8.1f} {stage.peak_rss_gb:>12.2f} {cuda_gb:>13}")
    train_cuda = result.stages["train"].peak_cuda_gb
    payload = {
        "device": device,
        "stages": result.stages_json(),
        "fits_12gb_at_batch_2": train_cuda <= CARD_GB if train_cuda is not None else None,
        "meta": {
            "size": args.size,
            "size_keys": SIZE_KEYS,
            "pixel_budget": result.budget,
            "mean_image_tokens": result.mean_image_tokens,
            "train_loss": result.train_summary["train_loss"],
            "feature_cache_seconds": result.train_summary["feature_cache_seconds"],
            "export_dtypes": sorted(result.export_dtypes),
            "serve_prompt_tokens": result.reply["usage"]["prompt_tokens"],
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
