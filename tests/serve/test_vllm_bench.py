"""``vllm bench serve``, vLLM's own load-test client, against ``ctscribe serve``: it must count the
tokens the server reports.

The client reads the prompt and completion tokens from the usage chunk that ``stream_options.
include_usage`` asks for (one chunk with no choices, just before ``[DONE]``); before ctscribe sent it
that way, the usage rode on the finish chunk, which the client skips, and it counted the prompt with
its own tokenizer, text only (5,120 prompt tokens for 160 requests that held 21,440). Random images
and text (vLLM's offline ``random-mm`` data set) on the tiny fixture; ``--ignore-eos`` makes every
reply the requested length, which the server must honour (vLLM's extension).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest

from ctscribe.fixtures.learning import LEARNING_PIXELS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

VLLM = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "vllm"
PROMPTS, OUTPUT_TOKENS, TEXT_TOKENS, IMAGE_SIDE = 8, 8, 16, 224
COMMAND_S = 900
BENCH = shlex.split("""bench serve --backend openai-chat --endpoint /v1/chat/completions --model tiny --seed 0
    --dataset-name random-mm --random-range-ratio 0 --random-mm-base-items-per-request 1 --ignore-eos
    --max-concurrency 4 --disable-tqdm --save-result --result-filename bench.json""")


@pytest.fixture(scope="module")
def vllm(unavailable) -> Path:
    """vLLM's ``vllm`` command in .venv-vllm, which starts (make vllm-env names the distribution)."""
    if not VLLM.is_file():
        unavailable(f"no {VLLM}: run `make vllm-env`")
    probe = subprocess.run([VLLM, "--version"], capture_output=True, text=True, timeout=COMMAND_S)
    if probe.returncode != 0:
        unavailable(f"`{VLLM} --version` fails ({probe.stderr.strip()[-200:]}): run `make vllm-env`")
    return VLLM


def test_vllm_bench_serve_counts_the_tokens_the_server_reports(vllm, tiny_model_dir, start_server, tmp_path):
    server = start_server(tiny_model_dir, tmp_path / "serve.log", max_pixels=LEARNING_PIXELS)
    try:
        sizes = [f"--num-prompts={PROMPTS}", f"--random-input-len={TEXT_TOKENS}"]
        sizes += [f"--random-output-len={OUTPUT_TOKENS}", f"--tokenizer={tiny_model_dir}"]
        images = ['--random-mm-limit-mm-per-prompt={"image": 1, "video": 0}']
        images += [f"--random-mm-bucket-config={{({IMAGE_SIDE}, {IMAGE_SIDE}, 1): 1.0}}"]
        result = subprocess.run(
            [vllm, *BENCH, f"--base-url={server.url}", f"--result-dir={tmp_path}", *sizes, *images],
            capture_output=True,
            text=True,
            timeout=COMMAND_S,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        tokens = httpx.get(f"{server.url}/health", timeout=30).json()["tokens"]
    finally:
        server.stop()
    bench = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert bench["completed"] == PROMPTS and bench["failed"] == 0
    counted = bench["total_input_tokens"], bench["total_output_tokens"]
    assert counted == (tokens["prompt"], tokens["completion"])
    assert tokens["completion"] == PROMPTS * OUTPUT_TOKENS  # ignore_eos honoured
    # Not vacuous: the prompts held their images (one token per 28x28 pixels at the budget), which
    # a count of the text alone would miss.
    assert tokens["prompt"] >= PROMPTS * (TEXT_TOKENS + LEARNING_PIXELS // 28**2)
