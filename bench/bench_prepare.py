"""Benchmark `ctscribe prepare` rows/s against a bare decode + re-encode loop over the same images.

The bare loop is the floor of any preparation: read each parquet row, decode the image, convert to
RGB and encode it as PNG. The ratio says what the CT filter, caption cleaning, ROI-box detection,
background crop, resize, perceptual hash and bookkeeping cost on top, measured in one run on one
machine (these machines are noisy; absolute numbers are not comparable between runs).

Usage: python bench/bench_prepare.py [--rows 2000] [--workers 1 2] [--json bench/results/prepare-cpu.json]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from ctscribe.fixtures.phantom import build_phantom
from ctscribe.prepare.run import FinalizeOptions, StageOptions, run_prepare


def bare_loop(files: list[Path]) -> int:
    """Decode and re-encode every image; count rows."""
    rows = 0
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(columns=["image"], batch_size=256):
            for cell in batch.column("image").to_pylist():
                rows += 1
                try:
                    image = Image.open(io.BytesIO(cell["bytes"]))
                    image.load()
                except OSError:
                    continue
                image.convert("RGB").save(io.BytesIO(), format="PNG")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=Path("bench/results/prepare-cpu.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        phantom = build_phantom(Path(tmp) / "phantom", rows=args.rows, seed=0)
        files = sorted((phantom / "25M_demo").glob("*.parquet"))
        results = []
        start = time.perf_counter()
        n = bare_loop(files)
        baseline = n / (time.perf_counter() - start)
        results.append({"run": "bare decode + PNG re-encode", "workers": 1, "rows_per_s": baseline})
        for workers in args.workers:
            start = time.perf_counter()
            stats = run_prepare(
                str(phantom),
                Path(tmp) / f"out-{workers}",
                StageOptions(),
                FinalizeOptions(),
                workers=workers,
                show_progress=False,
            )
            rate = stats["read"] / (time.perf_counter() - start)
            results.append({"run": "ctscribe prepare", "workers": workers, "rows_per_s": rate})

    print(f"{'run':<30} {'workers':>7} {'rows/s':>9} {'vs bare':>8}")
    for r in results:
        r["ratio_vs_bare"] = r["rows_per_s"] / baseline
        print(f"{r['run']:<30} {r['workers']:>7} {r['rows_per_s']:>9.1f} {r['ratio_vs_bare']:>8.2f}")
    args.json.write_text(json.dumps({"rows": args.rows, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
