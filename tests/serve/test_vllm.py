"""vLLM as the serving engine, end to end, in the environment ``make vllm-env`` builds (.venv-vllm).

A servable fixture (``small``: head_dim 32; vLLM's CPU attention rejects the ``tiny`` fixture's 16)
gets a LoRA and a merged export; vLLM's OpenAI server (float32, as transformers runs on a CPU) serves
first the export and then the base with the LoRA. ``ctscribe predict`` and ``evaluate`` over
``--backend openai`` must then give exactly transformers' greedy texts, and so must the API of
``ctscribe serve --upstream`` in front of vLLM (what the page calls). Each server starts once, for its
class, and is stopped before the next one starts (each takes ~6 GB of memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from ctscribe.fixtures.learning import LEARNING_PIXELS
from support.cli import run_ctscribe
from support.servers import free_port, running_server, vllm_command

# ~7.5 minutes for the whole file on a shared 2-core machine (both vLLM servers, the in-process engine)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CHECKOUT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = CHECKOUT / ".venv-vllm" / "bin" / "python"
RECORDS = 4  # test records described by each path
TOKENS = 32  # longer than the fixture's captions: the stop token is part of what must match
VLLM_START_S = 600  # healthy after ~45-110 s on an idle 2-core machine; shared machines are slower
COMMAND_S = 600
SQUARE = 256  # a plain square's side: above the fixture's budget, within the default one
LORA = [  # rank 8 as in the documented vLLM command (--max-lora-rank 8); language model only
    "finetuning_type=lora",
    "lora_rank=8",
    "lora_alpha=16",
    "freeze_vision_tower=true",
    "freeze_multi_modal_projector=true",
    "max_steps=40",
    "learning_rate=2.0e-3",
    "save_steps=1000",
    "eval_steps=1000",
]


@pytest.fixture(scope="module")
def vllm_python(unavailable) -> Path:
    """The vLLM environment's interpreter; make test builds it (make vllm-env)."""
    if not (VLLM_PYTHON.is_file() and (VLLM_PYTHON.parents[1] / ".installed").is_file()):
        unavailable(f"no {VLLM_PYTHON.parents[1]}: run `make vllm-env`")
    return VLLM_PYTHON


def _train_lora(base: Path, data: Path, out: Path) -> Path:
    """The :data:`LORA` adapter on ``base`` (tiny-cpu recipe); returns the adapter folder."""
    from ctscribe.recipe import load_recipe
    from ctscribe.train.native import train

    recipe = load_recipe(
        "tiny-cpu", LORA, dataset_dir=str(data), output_dir=str(out), model_name_or_path=str(base)
    )
    return train(recipe)


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def small(vllm_python, tmp_path_factory, learning_data) -> SimpleNamespace:
    """The small fixture, a LoRA trained on it, the merged export, and transformers' greedy texts for
    the first test records from each."""
    from ctscribe.export import export_merged
    from ctscribe.fixtures.tiny_model import build_tiny_model
    from ctscribe.generate.engine import TransformersEngine
    from ctscribe.predict import predict

    root = tmp_path_factory.mktemp("vllm")
    base = build_tiny_model(root / "small", size="small")
    _train_lora(base, learning_data, root / "lora")
    merged = root / "merged"
    export_merged(base, root / "lora", merged, dtype="fp32")
    test_json = learning_data / "test.json"
    expected = {}
    for name, model, adapter in (
        ("merged", merged, None),
        ("lora", base, root / "lora"),
        ("base", base, None),
    ):
        engine = TransformersEngine(model, adapter, max_pixels=LEARNING_PIXELS)
        out = root / f"transformers-{name}.jsonl"
        predict(engine, [test_json], out, max_new_tokens=TOKENS, limit=RECORDS, show_progress=False)
        expected[name] = _texts(out)
        del engine
    assert expected["lora"] != expected["base"]  # the adapter matters, so serving it is checked
    return SimpleNamespace(
        base=base, adapter=root / "lora" / "adapter", merged=merged, test_json=test_json, expected=expected
    )


def _vllm_server(python: Path, log: Path, *args: str) -> Iterator[str]:
    """vLLM's OpenAI server on a free port; yields its API root (.../v1) and stops it afterwards."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with running_server(vllm_command(python, port, *args), port, log, start_s=VLLM_START_S, env=env) as url:
        yield f"{url}/v1"


def _ctscribe(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}  # for --backend vllm
    return run_ctscribe(*args, python=python, env=env, timeout=COMMAND_S)


def _predict(small, url: str, model: str, out: Path) -> list[str]:
    _ctscribe(
        "predict", str(small.test_json), "--model", model, "--out", str(out), "--backend", "openai",
        "--base-url", url, "--max-pixels", str(LEARNING_PIXELS), "--max-new-tokens", str(TOKENS),
        "--limit", str(RECORDS),
    )  # fmt: skip
    return _texts(out)


def _evaluate(small, url: str, model: str, out: Path, *extra: str) -> None:
    _ctscribe(
        "evaluate", "--model", model, "--data", str(small.test_json), "--out", str(out),
        "--backend", "openai", "--base-url", url, "--max-pixels", str(LEARNING_PIXELS),
        "--max-new-tokens", str(TOKENS), "--limit", str(RECORDS), *extra,
    )  # fmt: skip


class TestMergedExport:
    @pytest.fixture(scope="class")
    def url(self, small, vllm_python, tmp_path_factory) -> Iterator[str]:
        log = tmp_path_factory.mktemp("vllm-merged") / "vllm.log"
        yield from _vllm_server(vllm_python, log, "--model", str(small.merged), "--served-model-name", "ct")

    def test_predict_and_evaluate_over_openai_equal_transformers(self, small, url, tmp_path):
        assert _predict(small, url, "ct", tmp_path / "preds.jsonl") == small.expected["merged"]
        _evaluate(small, url, "ct", tmp_path / "report")
        assert _texts(tmp_path / "report" / "predictions.jsonl") == small.expected["merged"]

    def test_vllm_uses_the_pixel_budget_the_export_records(self, small, url):
        """No --max-pixels anywhere: vLLM reads the budget from the export's processor config, and the
        prompt tokens it reports for a plain 256-pixel square are those of that budget (16 image
        tokens at 112x112), not of the processor's default (a 256x256 image: 81)."""
        import httpx

        from ctscribe.model_settings import DEFAULT_MAX_PIXELS, read_settings
        from support.real_shape import expected_prompt_tokens, request

        budget = read_settings(small.merged).max_pixels
        body = {**request(SQUARE), "model": "ct", "max_tokens": 1}
        usage = httpx.post(f"{url}/chat/completions", json=body, timeout=COMMAND_S).json()["usage"]
        expected = expected_prompt_tokens(small.merged, body, SQUARE, budget)
        assert usage["prompt_tokens"] == expected, (usage, budget)
        assert expected != expected_prompt_tokens(
            small.merged, body, SQUARE, DEFAULT_MAX_PIXELS
        )  # not vacuous

    def test_the_page_api_through_serve_upstream_answers_the_same(self, small, url, tmp_path, start_server):
        from openai import OpenAI

        from ctscribe.generate.openai_engine import image_data_url

        record = json.loads(small.test_json.read_text(encoding="utf-8"))[0]
        image = Image.open(small.test_json.parent / record["images"][0]).convert("RGB")
        (prompt,) = (m["content"] for m in record["messages"] if m["role"] == "user")
        prompt = prompt.replace("<image>", "").strip()
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(image)}},
            {"type": "text", "text": prompt},
        ]
        front = start_server("ct", tmp_path / "front.log", "--upstream", url, "--api-key", "k")
        try:
            client = OpenAI(base_url=f"{front.url}/v1", api_key="k")
            messages = [{"role": "user", "content": content}]
            whole = client.chat.completions.create(model="ct", messages=messages, max_tokens=TOKENS)
            streamed = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in client.chat.completions.create(
                    model="ct", messages=messages, max_tokens=TOKENS, stream=True
                )
                if chunk.choices
            )
        finally:
            front.stop()
        assert whole.choices[0].message.content == streamed == small.expected["merged"][0]
        assert whole.model_extra["clinical_notice"]


class TestBaseWithLora:
    @pytest.fixture(scope="class")
    def url(self, small, vllm_python, tmp_path_factory) -> Iterator[str]:
        log = tmp_path_factory.mktemp("vllm-lora") / "vllm.log"
        yield from _vllm_server(
            vllm_python, log, "--model", str(small.base), "--served-model-name", "base",
            "--enable-lora", "--lora-modules", f"ct={small.adapter}", "--max-lora-rank", "8",
        )  # fmt: skip

    def test_the_adapter_and_the_base_over_openai_equal_transformers(self, small, url, tmp_path):
        assert _predict(small, url, "ct", tmp_path / "preds.jsonl") == small.expected["lora"]
        _evaluate(small, url, "ct", tmp_path / "report", "--baseline", "base")  # one server, both models
        assert _texts(tmp_path / "report" / "predictions.jsonl") == small.expected["lora"]
        assert _texts(tmp_path / "report" / "baseline_predictions.jsonl") == small.expected["base"]


def test_the_in_process_vllm_backend_equals_transformers(small, vllm_python, tmp_path):
    """``--backend vllm`` (VLLMEngine) run from .venv-vllm; its ``auto`` dtype is float32 on a CPU."""
    out = tmp_path / "preds.jsonl"
    _ctscribe(
        "predict", str(small.test_json), "--model", str(small.merged), "--out", str(out), "--backend", "vllm",
        "--max-pixels", str(LEARNING_PIXELS), "--max-new-tokens", str(TOKENS), "--limit", str(RECORDS),
        python=str(vllm_python),
    )  # fmt: skip
    assert _texts(out) == small.expected["merged"]


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_vllm_greedy_texts_equal_transformers_on_another_family(
    model_type, vllm_python, learning_data, tmp_path
):
    """A newer family's small random fixture with a LoRA through ``--backend vllm`` (base + adapter, as
    vLLM loads an adapter) gives transformers' greedy texts, and the adapter changes them.

    The raw base records no budget, and Qwen3-VL's processor config says a 65,536-pixel floor, above
    the 12,544-pixel budget here: the engine must hand vLLM's processor the budget, or vLLM enlarges
    every image and sees other tokens.

    Qwen3.5 is not compared: vLLM's CPU backend runs its Gated DeltaNet layers in bf16 only (it stops
    with "CPU GDN attention requires BF16"), and bf16 texts are not transformers' fp32 ones
    (docs/SERVE.md).
    """
    from ctscribe.fixtures.families import build_family_model
    from ctscribe.generate.engine import TransformersEngine
    from ctscribe.predict import predict

    base = build_family_model(tmp_path / "small", model_type, "small")
    adapter = _train_lora(base, learning_data, tmp_path / "lora")
    test_json = learning_data / "test.json"
    raw = {}
    for name, lora in (("base", None), ("lora", adapter)):
        engine = TransformersEngine(base, lora, max_pixels=LEARNING_PIXELS)
        out = tmp_path / f"transformers-{name}.jsonl"
        predict(engine, [test_json], out, max_new_tokens=TOKENS, limit=RECORDS, show_progress=False)
        raw[name] = [json.loads(line)["raw_text"] for line in out.read_text().splitlines()]
        del engine
    assert len(raw["lora"]) == RECORDS and raw["lora"] != raw["base"]  # the adapter matters
    out = tmp_path / "vllm.jsonl"
    _ctscribe(
        "predict", str(test_json), "--model", str(base), "--adapter", str(adapter), "--out", str(out),
        "--backend", "vllm", "--max-pixels", str(LEARNING_PIXELS), "--max-new-tokens", str(TOKENS),
        "--limit", str(RECORDS),
        python=str(vllm_python),
    )  # fmt: skip
    assert [json.loads(line)["raw_text"] for line in out.read_text().splitlines()] == raw["lora"]
