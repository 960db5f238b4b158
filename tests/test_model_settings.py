"""The settings a model carries: recorded where plain transformers reads them, resolved in one place
for predict, evaluate and serve, and the user's path from train to serve without a budget flag."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from ctscribe.conversation.prompts import DEFAULT_PROMPTS
from ctscribe.conversation.records import user_message
from ctscribe.generate.openai_engine import image_data_url
from ctscribe.model_settings import (
    DEFAULT_MAX_PIXELS,
    ModelSettings,
    check_data_budget,
    data_settings,
    inference_settings,
    read_settings,
    record_settings,
    resolve_adapter,
)
from support.cli import run_ctscribe

BUDGET_224 = 224 * 224  # 64 image tokens for a square image


def _image_tokens(processor, image: Image.Image) -> int:
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"]
    return int(grid.prod()) // processor.image_processor.merge_size**2


def _noise(side: int) -> Image.Image:
    """A grey image with no black border, so the image path's background crop leaves it whole."""
    grey = np.random.default_rng(0).integers(60, 200, (side, side), dtype=np.uint8)
    return Image.fromarray(grey).convert("RGB")


@pytest.fixture
def saved_processor(tiny_model_dir, tmp_path) -> Path:
    """A folder holding the tiny model's processor as transformers saves it (budget 12,845,056)."""
    AutoProcessor.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _stats(folder: Path, **stats) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stats.json").write_text(json.dumps(stats))
    return folder


def test_a_recorded_budget_is_what_plain_transformers_uses(saved_processor):
    assert _image_tokens(AutoProcessor.from_pretrained(saved_processor), _noise(1024)) > 1000
    record_settings(saved_processor, ModelSettings(max_pixels=BUDGET_224))
    assert _image_tokens(AutoProcessor.from_pretrained(saved_processor), _noise(1024)) == 64
    flat = json.loads((saved_processor / "preprocessor_config.json").read_text())  # older readers, vLLM
    assert (flat["min_pixels"], flat["max_pixels"]) == (3136, BUDGET_224)
    assert flat["size"] == {"shortest_edge": 3136, "longest_edge": BUDGET_224}
    assert read_settings(saved_processor) == ModelSettings(max_pixels=BUDGET_224)


def test_without_a_record_inference_uses_the_default_never_the_checkpoints_budget(saved_processor):
    assert read_settings(saved_processor) is None
    assert inference_settings(saved_processor).max_pixels == DEFAULT_MAX_PIXELS == 262144


def test_the_recorded_budget_wins_and_a_differing_flag_overrides_it_with_a_warning(saved_processor, caplog):
    record_settings(saved_processor, ModelSettings(max_pixels=BUDGET_224))
    with caplog.at_level(logging.WARNING, logger="ctscribe"):
        assert inference_settings(saved_processor).max_pixels == BUDGET_224
        assert inference_settings(saved_processor, max_pixels=BUDGET_224).max_pixels == BUDGET_224
        assert not caplog.records
        assert inference_settings(saved_processor, max_pixels=100352).max_pixels == 100352
    (warning,) = caplog.records
    assert "100352" in warning.getMessage() and str(BUDGET_224) in warning.getMessage()


def test_a_remote_model_cannot_be_read_so_the_flag_or_the_default_decides(saved_processor):
    record_settings(saved_processor, ModelSettings(max_pixels=BUDGET_224))
    assert inference_settings(saved_processor, remote=True).max_pixels == DEFAULT_MAX_PIXELS
    assert inference_settings(saved_processor, max_pixels=BUDGET_224, remote=True).max_pixels == BUDGET_224


def test_over_openai_images_leave_already_fitted_to_the_flags_budget(saved_processor):
    from ctscribe.generate.openai_engine import OpenAIEngine

    record_settings(saved_processor, ModelSettings(max_pixels=12544))  # not readable through a server
    settings = inference_settings(saved_processor, max_pixels=BUDGET_224, remote=True)
    # verify=False: no request is made, so no server is needed
    engine = OpenAIEngine("http://127.0.0.1:9/v1", "served", max_pixels=settings.max_pixels, verify=False)
    assert engine.prepare(_noise(1024)).image.size == (224, 224)


def test_the_adapter_record_wins_over_the_base_models(saved_processor, tmp_path):
    record_settings(saved_processor, ModelSettings(max_pixels=BUDGET_224))
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "processor_config.json").write_text("{}")
    record_settings(run / "adapter", ModelSettings(max_pixels=12544, language="zh"))
    settings = inference_settings(saved_processor, run)
    assert (settings.max_pixels, settings.language) == (12544, "zh")
    assert settings.prompt("zh") == DEFAULT_PROMPTS["zh"]


def test_the_data_gives_the_language_and_the_plain_prompt_it_was_trained_on(tmp_path):
    prepared = _stats(tmp_path / "zh-prompts", options={"image": {"max_pixels": 262144}, "lang": "zh"})
    assert data_settings(prepared) == (262144, "en", {"en": "请用英文描述这张CT图像，并给出诊断印象。"})
    translated = _stats(tmp_path / "translated", answers={"zh": 5, "en": 0}, options={"lang": "zh"})
    assert data_settings(translated) == (None, "zh", {"zh": DEFAULT_PROMPTS["zh"]})
    assert data_settings(tmp_path / "elsewhere") == (None, "en", DEFAULT_PROMPTS)


def test_a_budget_above_the_prepared_one_is_refused_naming_both(tmp_path):
    data = _stats(tmp_path / "data", options={"image": {"max_pixels": 262144}})
    check_data_budget(262144, data)
    with pytest.raises(ValueError, match=r"1,000,000 pixels.*262,144 pixels"):
        check_data_budget(1_000_000, data)


@pytest.mark.parametrize("engine", ["native", "llamafactory"])
def test_train_refuses_a_budget_above_the_datas_before_loading_the_model(engine, tmp_path):
    """The model path does not exist: an error about it would mean the model was reached first."""
    data = _stats(tmp_path / "data", options={"image": {"max_pixels": 262144}})
    never_run = tmp_path / "llamafactory-cli"
    never_run.write_text("#!/bin/sh\necho ran > ran.txt\n")
    never_run.chmod(0o755)
    command = [
        sys.executable,
        "-m",
        "ctscribe",
        "train",
        "--engine",
        engine,
        "--llamafactory-cli",
        str(never_run),
    ]
    command += ["--data", str(data), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "run")]
    command += ["--set", "image_max_pixels=1000000"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "1,000,000 pixels" in done.stderr and "262,144 pixels" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "ran.txt").exists()
    assert not (tmp_path / "run").exists()


def _prompt_tokens(url: str, image: Image.Image, prompt: str) -> int:
    content = [
        {"type": "image_url", "image_url": {"url": image_data_url(image)}},
        {"type": "text", "text": prompt},
    ]
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 1}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()["usage"]["prompt_tokens"]


@pytest.mark.slow
def test_train_at_224_export_and_the_budget_reaches_transformers_predict_and_serve(
    default_data, tiny_model_dir, tmp_path, start_server
):
    """The default LoRA recipe at a 224x224 budget (size keys only), the default (bf16) export, then no
    budget flag anywhere: plain transformers, predict and serve all use the 224x224 budget."""
    run, export = tmp_path / "run", tmp_path / "export"
    sets = ["max_samples=8", "max_steps=8", "per_device_train_batch_size=2", "gradient_accumulation_steps=1"]
    sets += [f"image_max_pixels={BUDGET_224}"]
    run_ctscribe("train", "--data", default_data, "--model", tiny_model_dir, "--out", run,
                 *[arg for key in sets for arg in ("--set", key)])  # fmt: skip
    run_ctscribe("export", "--base", tiny_model_dir, "--adapter", run, "--out", export)
    assert json.loads((export / "ctscribe_export.json").read_text())["dtype"] == "bf16"

    processor = AutoProcessor.from_pretrained(export)  # no ctscribe code
    image = _noise(1024)
    assert _image_tokens(processor, image) == 64
    prompt = read_settings(export).prompt("en")
    rendered = processor.apply_chat_template([user_message(prompt)], add_generation_prompt=True)
    expected = len(processor(text=[rendered], images=[image], return_tensors="pt")["input_ids"][0])

    recorded = start_server(export, tmp_path / "recorded.log", max_pixels=None)
    flagged = start_server(export, tmp_path / "flagged.log", max_pixels=BUDGET_224)
    assert (
        _prompt_tokens(recorded.url, image, prompt) == _prompt_tokens(flagged.url, image, prompt) == expected
    )

    image.save(tmp_path / "slice.png")
    run_ctscribe("predict", tmp_path / "slice.png", "--model", export, "--out", tmp_path / "p.jsonl",
                 "--max-new-tokens", "2")  # fmt: skip
    (record,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["prompt"] == prompt
    assert record["prompt_tokens"] == expected  # the export's 224x224 budget: 64 image tokens


def test_resolve_adapter_accepts_the_run_dir_or_the_adapter(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert resolve_adapter(tmp_path) == tmp_path / "adapter"
    assert resolve_adapter(tmp_path / "adapter") == tmp_path / "adapter"
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        resolve_adapter(tmp_path / "nothing")
