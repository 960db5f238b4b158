"""Benchmark `ctscribe predict`: batched vs one-image-at-a-time generation on the same inputs.

Both runs go through :func:`ctscribe.predict.predict` (image path, engine, JSONL writing) over the
same phantom CT slices with the same model, so the ratio isolates what batching with left padding
buys. The absolute numbers depend on the machine (noisy); the ratio, measured in one run, does not.

Usage: python bench/bench_predict.py [--images 32] [--batch-size 8] [--size tiny] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ctscribe.fixtures.learning import clean_ct_rows
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.engine import TransformersEngine
from ctscribe.predict import predict


def run(engine: TransformersEngine, images: list[Path], batch_size: int, out: Path) -> dict:
    engine.batches.clear()
    start = time.perf_counter()
    summary = predict(engine, images, out, batch_size=batch_size, max_new_tokens=32, show_progress=False)
    seconds = time.perf_counter() - start
    assert summary.written == len(images), summary
    return {"batch_size": batch_size, "seconds": seconds, "images_per_s": len(images) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "2b"])
    parser.add_argument("--json", type=Path, default=Path("bench/results/predict_batching.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "model", size=args.size)
        images = []
        for _, data in clean_ct_rows(args.images * 3, seed=3)[: args.images]:
            images.append(root / f"{len(images):03d}.png")
            images[-1].write_bytes(data)
        engine = TransformersEngine(model)
        run(engine, images[:2], 2, root / "warmup.jsonl")  # first calls pay for lazy initialisation
        single = run(engine, images, 1, root / "single.jsonl")
        batched = run(engine, images, args.batch_size, root / "batched.jsonl")

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    ratio = batched["images_per_s"] / single["images_per_s"]
    print(f"{'mode':<12} {'batch':>5} {'images/s':>9} {'seconds':>8}   ({len(images)} images, {device})")
    for name, row in (("one-by-one", single), ("batched", batched)):
        print(f"{name:<12} {row['batch_size']:>5} {row['images_per_s']:>9.2f} {row['seconds']:>8.1f}")
    print(f"batched / one-by-one: {ratio:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "device": device,
        "size": args.size,
        "images": len(images),
        "single": single,
        "batched": batched,
    }
    args.json.write_text(json.dumps({**result, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
