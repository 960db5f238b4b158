"""Every shipped recipe trains in every engine, unchanged but for size keys; the default recipe also
trains every supported family in every engine, and its model exports and describes an image.

A recipe key that needs a package an engine's environment lacks (``report_to: tensorboard`` in
``.venv-lf``, say) fails here rather than in a user's first run. Each run is the real CLI on the tiny
model and data prepared with prepare's defaults; the keys set below only shrink the run. The folder
each run leaves must carry the recipe's pixel budget for plain transformers (ctscribe.model_settings).
"""

import json

import httpx
import pytest
from PIL import Image
from transformers import AutoProcessor

from ctscribe import CLINICAL_NOTICE
from ctscribe.generate.openai_engine import image_data_url
from ctscribe.model_settings import read_settings
from ctscribe.models import DEFAULT_FAMILY, FAMILIES
from ctscribe.recipe import RECIPES_DIR, load_recipe
from support.cli import run_ctscribe

RECIPES = sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))
# (recipe, family): every shipped recipe on the default family, the default recipe on every family.
CELLS = [(recipe, DEFAULT_FAMILY.model_type) for recipe in RECIPES] + [
    ("original", model_type) for model_type in FAMILIES if model_type != DEFAULT_FAMILY.model_type
]
# Size keys only: how many samples and steps, and how many samples a step takes.
SIZE_KEYS = ["max_samples=8", "max_steps=2", "per_device_train_batch_size=2", "gradient_accumulation_steps=1"]


def test_the_shipped_recipes_are_the_ones_tested():
    assert RECIPES == ["original", "tiny-cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["native", "llamafactory"])
@pytest.mark.parametrize(("recipe", "model_type"), CELLS)
def test_a_shipped_recipe_trains_in_an_engine(
    recipe, model_type, engine, default_data, family_model_dir, tmp_path, request
):
    engine_args = []
    if engine == "llamafactory":
        engine_args = ["--llamafactory-cli", str(request.getfixturevalue("llamafactory_cli"))]
    run = tmp_path / "run"
    sets = [arg for key in SIZE_KEYS for arg in ("--set", key)]
    base = family_model_dir(model_type)
    run_ctscribe("train", recipe, "--engine", engine, *engine_args,
                 "--data", default_data, "--model", base, "--out", run, *sets)  # fmt: skip

    settings = load_recipe(recipe)
    final = run / ("model" if settings.finetuning_type == "full" else "adapter")
    assert json.loads((run / "run_summary.json").read_text())["global_step"] == 2
    if settings.report_to == "tensorboard":
        assert any(run.rglob("events.out.tfevents.*")), "report_to: tensorboard wrote no event file"
    # The model carries the budget it was trained at, for plain transformers and for ctscribe.
    size = AutoProcessor.from_pretrained(final).image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (
        settings.image_min_pixels,
        settings.image_max_pixels,
    )
    recorded = read_settings(final)
    assert (recorded.max_pixels, recorded.language) == (settings.image_max_pixels, "en")
    if settings.finetuning_type == "full":
        return
    # The adapter merges into its base, and the merged model describes an image (fp32: two steps' update
    # is below bf16's rounding, which export refuses).
    merged, predictions = tmp_path / "merged", tmp_path / "predictions.jsonl"
    run_ctscribe("export", "--base", base, "--adapter", final, "--out", merged, "--dtype", "fp32")
    image = default_data / json.loads((default_data / "train.json").read_text())[0]["images"][0]
    run_ctscribe("predict", "--model", merged, "--out", predictions, image)
    [line] = predictions.read_text().splitlines()
    assert json.loads(line)["status"] == "ok"
    if engine != "native":
        return  # serving a merged model does not depend on the engine that trained it
    # One request to ctscribe serve on the merged model, with the image.
    server = request.getfixturevalue("start_server")(merged, tmp_path / "serve.log", max_pixels=None)
    content = [
        {"type": "image_url", "image_url": {"url": image_data_url(Image.open(image).convert("RGB"))}},
        {"type": "text", "text": "Describe this CT image."},
    ]
    body = {"model": "ct", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
    server.stop()
    assert reply.status_code == 200, reply.text
    assert (
        reply.json()["usage"]["completion_tokens"] > 0 and reply.json()["clinical_notice"] == CLINICAL_NOTICE
    )
