"""Serve load: requests/s and latency of `ctscribe serve` and of vLLM on the same model, in one run.

Three servers, one after the other (each holds its model in memory), get the same requests at 1, 8
and 32 concurrent clients: `ctscribe serve` (static batches of up to 8 on the transformers engine),
vLLM's OpenAI server from .venv-vllm (continuous batching), and `ctscribe serve --upstream` in front of
that vLLM (what the clinicians' page uses: key check, validation and image preparation, then
forwarding). Every request is greedy with the same images and token limit and both engines run
float32; the tokens each server generated are counted (tok/s), and whether the servers' texts agree
is reported (a random-weight model never stops early, so every request runs to the limit, but its
near-tied logits can flip between batch shapes). The vLLM/ctscribe ratio at each concurrency is the
result. Absolute numbers depend on the machine, and on a shared machine on its neighbours too:
compare the ratios of one run.

Usage (from .venv; needs make vllm-env):
  python bench/serve_load.py [--model DIR] [--concurrency 1 8 32] [--rounds 2] [--tokens 32]
      [--max-pixels 50176] [--json bench/results/serve_load-cpu.json]
Without --model, the `small` fixture (random weights, real tokenizer) is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from ctscribe.ct.images import ImageOptions, prepare_image
from ctscribe.fixtures.learning import clean_ct_rows
from ctscribe.fixtures.tiny_model import build_tiny_model
from ctscribe.generate.openai_engine import image_data_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support: test-only helpers
from support.servers import free_port, running_server, vllm_command

VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
START_S = 900  # vLLM on a busy 2-core machine
REQUEST_S = 900
PROMPT = "Describe this CT image."
SERVED = "m"  # the model's name on every server


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _request(url: str, image: str, tokens: int) -> tuple[float, str, int]:
    body = {
        "model": SERVED,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": PROMPT},
                ],
            }
        ],
        "max_tokens": tokens,
        "temperature": 0,
    }
    start = time.perf_counter()
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=REQUEST_S)
    response.raise_for_status()
    answer = response.json()
    return (
        time.perf_counter() - start,
        answer["choices"][0]["message"]["content"],
        answer["usage"]["completion_tokens"],
    )


def _level(url: str, images: list[str], clients: int, requests: int, tokens: int) -> dict:
    """``requests`` requests from ``clients`` concurrent clients, each sending its next one when the
    last is answered."""
    order = [images[i % len(images)] for i in range(requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda image: _request(url, image, tokens), order))
    seconds = time.perf_counter() - start
    latencies = [latency for latency, _, _ in results]
    return {
        "clients": clients,
        "requests": requests,
        "seconds": seconds,
        "requests_per_s": requests / seconds,
        "tokens_per_s": sum(count for _, _, count in results) / seconds,
        "p50_s": statistics.median(latencies),
        "p95_s": _percentile(latencies, 0.95),
        "texts": {i % len(images): text for i, (_, text, _) in enumerate(results)},
    }


def _measure(url: str, images: list[str], args: argparse.Namespace) -> list[dict]:
    _level(url, images[:2], 2, 2, args.tokens)  # first requests pay for lazy initialisation
    return [
        _level(url, images, clients, max(clients * args.rounds, 4), args.tokens)
        for clients in args.concurrency
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a model folder (default: the small fixture)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--max-pixels", type=int, default=224 * 224)
    parser.add_argument("--json", type=Path, default=Path("bench/results/serve_load-cpu.json"))
    args = parser.parse_args()
    if not VLLM_PYTHON.is_file():
        raise SystemExit(f"no {VLLM_PYTHON}: run make vllm-env first")

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = Path(tmp)
        model = args.model or build_tiny_model(root / "small", size="small")
        options = ImageOptions(max_pixels=args.max_pixels)
        images = [
            image_data_url(prepare_image(Image.open(io.BytesIO(data)).convert("RGB"), options).image)
            for _, data in clean_ct_rows(48, seed=5)[:16]
        ]
        ctscribe = [sys.executable, "-m", "ctscribe", "serve", "--model", str(model)]
        ctscribe += ["--served-model-name", SERVED, "--max-pixels", str(args.max_pixels), "--no-web"]
        runs: dict[str, list[dict]] = {}
        port = free_port()
        with running_server(
            [*ctscribe, "--port", str(port)], port, root / "ctscribe.log", start_s=START_S
        ) as url:
            runs["ctscribe"] = _measure(url, images, args)
        port = free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
        vllm = vllm_command(VLLM_PYTHON, port, "--model", str(model), "--served-model-name", SERVED)
        with running_server(vllm, port, root / "vllm.log", start_s=START_S, env=env) as vllm_url:
            runs["vllm"] = _measure(vllm_url, images, args)
            front = [
                sys.executable,
                "-m",
                "ctscribe",
                "serve",
                "--upstream",
                f"{vllm_url}/v1",
                "--model",
                SERVED,
            ]
            front_port = free_port()
            front += ["--max-pixels", str(args.max_pixels), "--no-web", "--port", str(front_port)]
            with running_server(front, front_port, root / "front.log", start_s=START_S) as url:
                runs["ctscribe --upstream vllm"] = _measure(url, images, args)

    same = all(
        a["texts"] == b["texts"] for name in runs for a, b in zip(runs["ctscribe"], runs[name], strict=True)
    )
    print(
        f"{'server':<26} {'clients':>7} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7} {'x ctscribe':>9}"
    )
    for name, levels in runs.items():
        for level, base in zip(levels, runs["ctscribe"], strict=True):
            ratio = level["requests_per_s"] / base["requests_per_s"]
            print(
                f"{name:<26} {level['clients']:>7} {level['requests_per_s']:>7.2f} "
                f"{level['tokens_per_s']:>7.1f} {level['p50_s']:>7.2f} {level['p95_s']:>7.2f} {ratio:>8.2f}x"
            )
    print(f"same texts from every server: {same}")
    for levels in runs.values():
        for level in levels:
            level.pop("texts")
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs: compare ratios)",
        "model": str(args.model or "small fixture (random weights)"),
        "max_pixels": args.max_pixels,
        "tokens": args.tokens,
        "same_texts": same,
        "runs": runs,
        "requests_per_s_ratio_vllm_over_ctscribe": {
            str(v["clients"]): v["requests_per_s"] / c["requests_per_s"]
            for v, c in zip(runs["vllm"], runs["ctscribe"], strict=True)
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
